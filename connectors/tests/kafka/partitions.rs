//! Partition assignment against the real broker: with several topics and workers, every
//! partition is read by exactly one worker, and partitions added while the source runs are
//! found by the metadata refresh and read too. A bounded read of a topic that does not exist
//! fails instead of finishing empty.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tideline::prelude::*;
use tideline::runtime::{Cluster, execute};
use tideline::source::SourceConfig;
use tideline_connectors::kafka::{KafkaConfig, KafkaSource};

use crate::common::{Reading, add_partitions, brokers, create, flush, producer, send, unique, within};

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
struct Tag {
    topic: String,
    partition: i32,
    offset: i64,
    time: Time,
}

type Seen = Arc<Mutex<BTreeMap<(String, i32, i64), usize>>>;

fn produce(brokers: &str, topic: &str, partition: i32, times: std::ops::Range<u64>) {
    let producer = producer(brokers);
    for time in times {
        let reading = Reading { time, key: "k".into(), value: 0 };
        send(&producer, topic, partition, None, Some(&serde_json::to_vec(&reading).unwrap()), None);
    }
    flush(&producer);
}

fn wait_for(seen: &Seen, partitions: &[(&str, i32)], count: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen = seen.lock().unwrap();
        let done =
            partitions.iter().all(|(t, p)| seen.keys().filter(|(st, sp, _)| st == t && sp == p).count() >= count);
        if done {
            return;
        }
        drop(seen);
        assert!(Instant::now() < deadline, "partitions {partitions:?} were not read");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn every_partition_is_read_by_one_worker_and_new_partitions_are_found() {
    let _serial = crate::common::serial();
    let test = "every_partition_is_read_by_one_worker_and_new_partitions_are_found";
    let Some(brokers) = brokers(test) else { return };
    let (a, b) = (unique("assign-a"), unique("assign-b"));
    create(&brokers, &a, 2);
    create(&brokers, &b, 1);
    for (topic, partition) in [(&a, 0), (&a, 1), (&b, 0)] {
        produce(&brokers, topic, partition, 1_000..1_100);
    }
    let source = KafkaSource::with_decoder(KafkaConfig::new(&brokers), |m| {
        let reading: Reading = m.value_json()?;
        Ok(Tag { topic: m.topic.to_string(), partition: m.partition, offset: m.offset, time: reading.time })
    })
    .topics([&a, &b])
    .event_time(|t: &Tag| t.time)
    .metadata_refresh(Duration::from_millis(200))
    .build()
    .unwrap();
    assert_eq!(source.partition_id(&b, 2), Some((1 << 32) | 2));
    assert_eq!(source.topic_partition((1 << 32) | 2), Some((b.as_str(), 2)));
    let stats = Arc::clone(source.stats());

    // Every record read counted by where it came from.
    let seen: Seen = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let (s, st) = (Arc::clone(&seen), Arc::clone(&stop));
    let run = std::thread::spawn(move || {
        execute(&Cluster::threads(3), move |worker| {
            let (source, seen) = (source.clone(), Arc::clone(&s));
            let id = worker.next_dataflow_index();
            worker.dataflow::<Time, _, _>(move |scope| {
                let streams = source.read(scope, SourceConfig::new("tags"));
                streams.data.inspect(move |(t, _, _)| {
                    *seen.lock().unwrap().entry((t.topic.clone(), t.partition, t.offset)).or_default() += 1;
                });
            });
            while !st.load(Ordering::Relaxed) {
                worker.step_or_park(Some(Duration::from_millis(1)));
            }
            worker.drop_dataflow(id);
        })
        .unwrap();
    });
    wait_for(&seen, &[(&a, 0), (&a, 1), (&b, 0)], 100);

    // Two new partitions of b, while the source runs.
    add_partitions(&brokers, &b, 3);
    for partition in [1, 2] {
        produce(&brokers, &b, partition, 2_000..2_100);
    }
    wait_for(&seen, &[(&b, 1), (&b, 2)], 100);
    stop.store(true, Ordering::Relaxed);
    within(Duration::from_secs(30), move || run.join().unwrap());

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 500, "every record read");
    assert!(seen.values().all(|n| *n == 1), "no record read twice (by two workers)");
    let assignment = stats.assignment();
    assert_eq!(assignment.len(), 5, "{assignment:?}");
    let workers: std::collections::BTreeSet<usize> = assignment.values().copied().collect();
    assert!(workers.len() >= 2, "the partitions are spread over the workers: {assignment:?}");
}

#[test]
fn a_bounded_read_of_a_missing_topic_fails_and_names_it() {
    let _serial = crate::common::serial();
    let test = "a_bounded_read_of_a_missing_topic_fails_and_names_it";
    let Some(brokers) = brokers(test) else { return };
    let missing = unique("missing");
    let source = KafkaSource::<Reading>::json(KafkaConfig::new(&brokers))
        .topic(&missing)
        .record_event_time()
        .bounded()
        .request_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let metrics = tideline::runtime::metrics::SourceMetrics::new("readings");
    let m = Arc::clone(&metrics);
    // Not an empty result: a bounded read that finished at once would look like one.
    within(Duration::from_secs(30), move || {
        execute(&Cluster::threads(2), move |worker| {
            let (source, metrics) = (source.clone(), Arc::clone(&m));
            worker.dataflow::<Time, _, _>(move |scope| {
                source.read(scope, SourceConfig::new("readings").metrics(metrics));
            });
        })
        .unwrap();
    });
    let errors = metrics.errors();
    assert_eq!(errors.len(), 2, "each worker's reader stops: {errors:?}");
    assert!(errors.iter().all(|e| e.contains(&missing) && e.contains("a bounded read needs its topics")), "{errors:?}");
}
