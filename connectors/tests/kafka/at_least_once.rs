//! At-least-once against the real broker: while a slow sink writes, the group's committed
//! offsets never run ahead of what the sink has durably written; after the job is killed, a
//! restart from the committed offsets loses nothing, and repeats only records after the last
//! commit (the duplicates at-least-once allows).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tideline::prelude::*;
use tideline::runtime::{Cluster, execute};
use tideline::sink::{Collected, SinkHandle, SinkParallelism, SinkWriter};
use tideline::source::SourceConfig;
use tideline_connectors::kafka::{KafkaConfig, KafkaSource, StartOffsets};

use crate::common::{Reading, brokers, committed, create, produce_readings, unique, within};

/// A record tagged with where it came from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
struct Tagged {
    partition: i32,
    offset: i64,
    time: Time,
}

fn tagged_source(brokers: &str, topic: &str, group: &str) -> tideline_connectors::kafka::KafkaSourceBuilder<Tagged> {
    KafkaSource::with_decoder(KafkaConfig::new(brokers), |m| {
        let reading: Reading = m.value_json()?;
        Ok(Tagged { partition: m.partition, offset: m.offset, time: reading.time })
    })
    .topic(topic)
    .group_id(group)
    .event_time(|t: &Tagged| t.time)
    .commit_interval(Duration::from_millis(20))
}

/// A sink that takes its time (3 ms per event time) and counts a record as durable only once
/// `advance` returned.
struct Slow {
    pending: Vec<(i32, i64)>,
    durable: Arc<Mutex<BTreeSet<(i32, i64)>>>,
}

impl SinkWriter<Tagged> for Slow {
    fn write(&mut self, _time: Time, updates: &[(Tagged, isize)]) -> tideline::Result<()> {
        std::thread::sleep(Duration::from_millis(3));
        self.pending.extend(updates.iter().map(|(t, _)| (t.partition, t.offset)));
        Ok(())
    }

    fn advance(&mut self, _frontier: Option<Time>) -> tideline::Result<()> {
        self.durable.lock().unwrap().extend(self.pending.drain(..));
        Ok(())
    }
}

const PER_PARTITION: i64 = 3_000;

#[test]
fn committed_offsets_never_pass_the_durable_output_and_a_restart_loses_nothing() {
    let _serial = crate::common::serial();
    let test = "committed_offsets_never_pass_the_durable_output_and_a_restart_loses_nothing";
    let Some(brokers) = brokers(test) else { return };
    let (topic, group) = (unique("alo-in"), unique("alo-group"));
    create(&brokers, &topic, 2);
    // Increasing times, 10 ms apart: every record is its own event time.
    let input: Vec<Vec<Reading>> = (0..2)
        .map(|p| {
            (0..PER_PARTITION)
                .map(|i| Reading { time: 1_000_000 + i as u64 * 10 + p, key: format!("k{}", i % 5), value: i })
                .collect()
        })
        .collect();
    produce_readings(&brokers, &topic, &input);

    // Run 1: unbounded, with the slow sink; killed (its dataflow dropped) half-way.
    let durable = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let source = tagged_source(&brokers, &topic, &group).build().unwrap();
    let first_run = Arc::clone(source.stats());
    let (d, s) = (Arc::clone(&durable), Arc::clone(&stop));
    let run = std::thread::spawn(move || {
        execute(&Cluster::threads(2), move |worker| {
            let (source, durable, stop) = (source.clone(), Arc::clone(&d), Arc::clone(&s));
            let id = worker.next_dataflow_index();
            worker.dataflow::<Time, _, _>(move |scope| {
                let config = SourceConfig::new("tagged").batch_size(100).max_in_flight(500);
                source.read(scope, config).data.sink_with(
                    &SinkHandle::new("slow"),
                    SinkParallelism::PerWorker,
                    move |_, _| Some(Slow { pending: Vec::new(), durable }),
                );
            });
            while !stop.load(Ordering::Relaxed) {
                worker.step_or_park(Some(Duration::from_millis(1)));
            }
            worker.drop_dataflow(id);
        })
        .unwrap();
    });

    // While it runs: every committed offset is covered by what the sink has durably written.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut checks_mid_run = 0;
    loop {
        let commits = committed(&brokers, &group, &topic, 2);
        let written = durable.lock().unwrap().clone();
        for (p, commit) in commits.iter().enumerate() {
            let Some(commit) = *commit else { continue };
            let missing: Vec<i64> = (0..commit).filter(|o| !written.contains(&(p as i32, *o))).take(5).collect();
            assert!(missing.is_empty(), "partition {p}: committed {commit}, but offsets {missing:?} are not durable");
            if commit > 0 && commit < PER_PARTITION {
                checks_mid_run += 1;
            }
        }
        if written.len() as i64 >= PER_PARTITION {
            break;
        }
        assert!(Instant::now() < deadline, "the slow sink wrote only {} records", written.len());
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(checks_mid_run >= 3, "commits were seen mid-run ({checks_mid_run} checks)");
    stop.store(true, Ordering::Relaxed);
    within(Duration::from_secs(30), move || run.join().unwrap());
    // Once the run has stopped, its committed offsets no longer move: a commit in flight at the
    // kill has completed, and requests not yet sent were discarded.
    let at_kill: Vec<i64> = committed(&brokers, &group, &topic, 2).into_iter().map(|c| c.unwrap_or(0)).collect();
    std::thread::sleep(Duration::from_secs(1));
    let later: Vec<i64> = committed(&brokers, &group, &topic, 2).into_iter().map(|c| c.unwrap_or(0)).collect();
    assert_eq!(later, at_kill, "no commit lands after the run has stopped");
    let written = durable.lock().unwrap().clone();
    for (p, commit) in at_kill.iter().enumerate() {
        assert!((0..*commit).all(|o| written.contains(&(p as i32, o))), "partition {p}: committed {commit}");
    }
    assert!(at_kill.iter().all(|c| *c > 0) && at_kill.iter().any(|c| *c < PER_PARTITION), "{at_kill:?}");

    // Run 2: restart from the committed offsets, read to the end.
    let source = tagged_source(&brokers, &topic, &group).start(StartOffsets::Committed).bounded().build().unwrap();
    let collected = Collected::new();
    let (c, stats) = (collected.clone(), Arc::clone(source.stats()));
    let metrics = tideline::runtime::metrics::SourceMetrics::new("tagged");
    let m = Arc::clone(&metrics);
    within(Duration::from_secs(60), move || {
        execute(&Cluster::threads(2), move |worker| {
            let (source, collected, metrics) = (source.clone(), c.clone(), Arc::clone(&m));
            worker.dataflow::<Time, _, _>(move |scope| {
                source
                    .read(scope, SourceConfig::new("tagged").metrics(metrics))
                    .data
                    .map(|t| (t.partition, t.offset))
                    .collect_into(&collected);
            });
        })
        .unwrap();
    });
    let rerun: BTreeSet<(i32, i64)> = collected.contents().into_iter().map(|(r, _)| r).collect();
    let expected_rerun: BTreeSet<(i32, i64)> =
        (0..2).flat_map(|p| (at_kill[p as usize]..PER_PARTITION).map(move |o| (p, o))).collect();
    let extra: Vec<_> = rerun.difference(&expected_rerun).take(5).collect();
    let missing: Vec<_> = expected_rerun.difference(&rerun).take(5).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "the restart reads exactly what was not committed ({at_kill:?}): extra {extra:?}, missing {missing:?} \
         ({} missing in all; the restart read {:?}, assigned {:?}, positions {:?}, committed {:?}, errors {:?} {:?}; \
         the first run's errors {:?})",
        expected_rerun.difference(&rerun).count(),
        metrics.partitions(),
        stats.assignment(),
        stats.positions(),
        stats.committed(),
        stats.recent_errors(),
        metrics.errors(),
        first_run.recent_errors(),
    );
    let all: BTreeSet<(i32, i64)> = written.union(&rerun).copied().collect();
    assert_eq!(all.len() as i64, 2 * PER_PARTITION, "nothing is lost");
    let duplicates = written.intersection(&rerun).count();
    eprintln!("{test}: committed at the kill {at_kill:?}; {duplicates} records written twice (after the last commit)");
    assert_eq!(committed(&brokers, &group, &topic, 2), vec![Some(PER_PARTITION); 2]);
}
