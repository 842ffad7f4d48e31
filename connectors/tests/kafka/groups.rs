//! Group misuse against the real broker (issue 13): two independent runs of one job with the
//! same group id are detected instead of each silently writing every result; a group with an
//! active member (a consumer that subscribed with the group id) fails the source with a clear
//! message instead of every commit failing while a bounded run hangs.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use tideline::prelude::*;
use tideline::runtime::metrics::SourceMetrics;
use tideline::runtime::{Cluster, execute};
use tideline::sink::{SinkHandle, SinkParallelism, SinkWriter};
use tideline::source::SourceConfig;
use tideline_connectors::kafka::{KafkaConfig, KafkaSource};

use crate::common::{Reading, brokers, create, produce_readings, readings, unique, within};

/// A sink that takes its time, so that a run lasts long enough to commit many times.
struct Slow;

impl SinkWriter<Reading> for Slow {
    fn write(&mut self, _time: Time, _updates: &[(Reading, isize)]) -> tideline::Result<()> {
        std::thread::sleep(Duration::from_millis(2));
        Ok(())
    }

    fn advance(&mut self, _frontier: Option<Time>) -> tideline::Result<()> {
        Ok(())
    }
}

/// A bounded run of `topic` with group `group` on its own thread; returns its source metrics
/// when it ends.
fn run(brokers: &str, topic: &str, group: &str) -> std::thread::JoinHandle<Arc<SourceMetrics>> {
    let source = KafkaSource::<Reading>::json(KafkaConfig::new(brokers))
        .topic(topic)
        .group_id(group)
        .record_event_time()
        .bounded()
        .commit_interval(Duration::from_millis(20))
        .finish_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let metrics = SourceMetrics::new("readings");
    let m = Arc::clone(&metrics);
    std::thread::spawn(move || {
        execute(&Cluster::threads(1), move |worker| {
            let (source, m) = (source.clone(), Arc::clone(&m));
            worker.dataflow::<Time, _, _>(move |scope| {
                let config = SourceConfig::new("readings").batch_size(50).metrics(m);
                let handle = SinkHandle::new("slow");
                source.read(scope, config).data.sink_with(&handle, SinkParallelism::PerWorker, |_, _| Some(Slow));
            });
        })
        .unwrap();
        metrics
    })
}

#[test]
fn two_independent_runs_with_one_group_are_detected() {
    let _serial = crate::common::serial();
    let Some(brokers) = brokers("two_independent_runs_with_one_group_are_detected") else { return };
    let (topic, group) = (unique("groups-in"), unique("groups-group"));
    create(&brokers, &topic, 1);
    produce_readings(&brokers, &topic, &readings(3, 1, 3_000, 50));
    let errors = within(Duration::from_secs(120), move || {
        let (first, second) = (run(&brokers, &topic, &group), run(&brokers, &topic, &group));
        let mut errors = first.join().unwrap().errors();
        errors.extend(second.join().unwrap().errors());
        errors
    });
    assert!(
        errors.iter().any(|e| e.contains("another run of this job") && e.contains("give each its own group")),
        "two runs committing to one group are reported: {errors:?}"
    );
}

#[test]
fn a_group_with_an_active_member_fails_clearly_instead_of_hanging() {
    let _serial = crate::common::serial();
    let Some(brokers) = brokers("a_group_with_an_active_member_fails_clearly_instead_of_hanging") else { return };
    let (topic, group) = (unique("member-in"), unique("member-group"));
    create(&brokers, &topic, 1);
    produce_readings(&brokers, &topic, &readings(4, 1, 500, 50));
    // Another application subscribes with the same group id and stays a member.
    let member: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", &group)
        .set("session.timeout.ms", "30000")
        .create()
        .unwrap();
    member.subscribe(&[topic.as_str()]).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while member.assignment().map(|a| a.count()).unwrap_or(0) == 0 {
        assert!(std::time::Instant::now() < deadline, "the other member joined the group");
        let _ = member.poll(Duration::from_millis(100));
    }
    let b = brokers.clone();
    let errors = within(Duration::from_secs(60), move || run(&b, &topic, &group).join().unwrap().errors());
    assert!(
        errors.iter().any(|e| e.contains("refuses the commit") && e.contains("needs a group of its own")),
        "{errors:?}"
    );
    drop(member);
}
