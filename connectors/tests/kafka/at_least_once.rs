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

/// A sink of text rows that takes its time (2 ms per event time) and counts a row as durable
/// only once `advance` returned.
struct SlowRows {
    pending: Vec<String>,
    durable: Arc<Mutex<BTreeSet<String>>>,
}

impl SinkWriter<String> for SlowRows {
    fn write(&mut self, _time: Time, updates: &[(String, isize)]) -> tideline::Result<()> {
        std::thread::sleep(Duration::from_millis(2));
        self.pending.extend(updates.iter().filter(|(_, diff)| *diff > 0).map(|(row, _)| row.clone()));
        Ok(())
    }

    fn advance(&mut self, _frontier: Option<Time>) -> tideline::Result<()> {
        self.durable.lock().unwrap().extend(self.pending.drain(..));
        Ok(())
    }
}

/// Session gap, dedup horizon and join bound of the stateful pipeline (ms).
const GAP_MS: u64 = 300;
const HORIZON_MS: u64 = 150;
const JOIN_MS: u64 = 100;

/// Sessions (count per key), dedup (first of each (key, value mod 7) within a horizon) and an
/// interval join (even values with the odd ones of their key up to 100 ms later), as text rows.
fn stateful_pipeline<'scope>(readings: VecCollection<'scope, Time, Reading>) -> VecCollection<'scope, Time, String> {
    let events = readings.map(|r| Event::new(r.time, r.key, r.value));
    let sessions = events
        .clone()
        .sessions(Duration::from_millis(GAP_MS))
        .aggregate(tideline::window::aggregate::Count)
        .map(|r| format!("session {} [{}, {}) {}", r.key, r.window.start, r.window.end, r.value));
    let firsts = events
        .clone()
        .map(|e| Event::new(e.time, (e.key, e.value % 7), ()))
        .dedup(Duration::from_millis(HORIZON_MS))
        .build()
        .map(|e| format!("dedup {} {} {}", e.key.0, e.key.1, e.time));
    let even = events.clone().filter(|e| e.value % 2 == 0);
    let odd = events.filter(|e| e.value % 2 == 1);
    let pairs = even
        .interval_join(odd, IntervalBounds::after(Duration::from_millis(JOIN_MS)))
        .inner()
        .map(|(a, b)| format!("join {} {} {}", a.key, a.time, b.time));
    sessions.concat(firsts).concat(pairs)
}

#[test]
fn sessions_dedup_and_a_join_between_source_and_sink_lose_nothing_across_a_kill() {
    let _serial = crate::common::serial();
    let test = "sessions_dedup_and_a_join_between_source_and_sink_lose_nothing_across_a_kill";
    let Some(brokers) = brokers(test) else { return };
    let (topic, group) = (unique("alo-stateful-in"), unique("alo-stateful-group"));
    create(&brokers, &topic, 2);
    // Increasing times, 10 ms apart per partition; a key holds for 100 records (1 s), then the
    // next of 8 keys takes over: a session lives 1.3 s, much longer than a dedup group (about
    // 300 ms) or a join buffer (100 ms), so only the sessions' own retention keeps commits
    // behind their records (with the sessions' retention switched off, this test fails: the
    // session open at the kill is lost).
    const RECORDS: i64 = 3_000;
    let input: Vec<Vec<Reading>> = (0..2)
        .map(|p| {
            (0..RECORDS)
                .map(|i| Reading {
                    time: 1_000_000 + i as u64 * 10 + p,
                    key: format!("k{}", (i / 100) % 8),
                    value: i * 3 + p as i64,
                })
                .collect()
        })
        .collect();
    produce_readings(&brokers, &topic, &input);

    // Every final row, from the same pipeline over the whole input in memory.
    let partitions = Arc::new(input);
    // Per session row, the first offset of its records on each partition: once a commit
    // passes it, the row must already be durable (a restart would not see those records).
    let first_offsets = |row: &str| -> Option<[i64; 2]> {
        let parts: Vec<&str> = row.split_whitespace().collect();
        let (key, start, end) = (parts[1], parts[2].trim_matches(['[', ',']), parts[3].trim_end_matches(')'));
        let (start, end): (Time, Time) = (start.parse().ok()?, end.parse().ok()?);
        let first = |p: usize| {
            partitions[p]
                .iter()
                .position(|r| r.key == key && r.time >= start && r.time + GAP_MS <= end)
                .map_or(i64::MAX, |i| i as i64)
        };
        Some([first(0), first(1)])
    };
    let p = Arc::clone(&partitions);
    let expected: BTreeSet<String> = tideline::runtime::collect(2, move |scope| {
        stateful_pipeline(
            tideline::source::memory::from_partitions(scope, SourceConfig::new("readings"), Arc::clone(&p)).data,
        )
    })
    .into_iter()
    .map(|(row, _, diff)| {
        assert_eq!(diff, 1, "final rows only: {row}");
        row
    })
    .collect();
    let sessions: Vec<(String, [i64; 2])> = expected
        .iter()
        .filter(|row| row.starts_with("session"))
        .map(|row| (row.clone(), first_offsets(row).expect("a session row parses")))
        .collect();
    for kind in ["session", "dedup", "join"] {
        assert!(expected.iter().filter(|r| r.starts_with(kind)).count() >= 30, "the input gives {kind} rows");
    }

    // Run 1: unbounded, with the slow sink; killed (its dataflow dropped) once offsets have
    // been committed and part of the output is durable.
    let durable = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let source = KafkaSource::<Reading>::json(KafkaConfig::new(&brokers))
        .topic(&topic)
        .group_id(&group)
        .record_event_time()
        .commit_interval(Duration::from_millis(20))
        .build()
        .unwrap();
    let (d, s) = (Arc::clone(&durable), Arc::clone(&stop));
    let run = std::thread::spawn(move || {
        execute(&Cluster::threads(2), move |worker| {
            let (source, durable, stop) = (source.clone(), Arc::clone(&d), Arc::clone(&s));
            let id = worker.next_dataflow_index();
            worker.dataflow::<Time, _, _>(move |scope| {
                let config = SourceConfig::new("readings").batch_size(50).max_in_flight(200);
                stateful_pipeline(source.read(scope, config).data).sink_with(
                    &SinkHandle::new("slow"),
                    SinkParallelism::PerWorker,
                    move |_, _| Some(SlowRows { pending: Vec::new(), durable }),
                );
            });
            while !stop.load(Ordering::Relaxed) {
                worker.step_or_park(Some(Duration::from_millis(1)));
            }
            worker.drop_dataflow(id);
        })
        .unwrap();
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut sessions_checked = 0;
    loop {
        // Commits first, then what is durable: a commit seen was made when at most this much
        // was durable. A session whose first records are behind a commit is durable already.
        let commits = committed(&brokers, &group, &topic, 2);
        let written_rows = durable.lock().unwrap().clone();
        for (row, first) in &sessions {
            let behind = (0..2).any(|p| commits[p].is_some_and(|c| first[p] < c));
            assert!(
                !behind || written_rows.contains(row),
                "committed {commits:?} past the first records {first:?} of {row}, which is not durable yet"
            );
            sessions_checked += usize::from(behind);
        }
        let written = written_rows.len();
        if commits.iter().all(|c| c.is_some_and(|c| c > 0)) && written >= expected.len() / 3 {
            break;
        }
        assert!(Instant::now() < deadline, "no commits in 90 s ({commits:?}; {written} rows written)");
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    within(Duration::from_secs(30), move || run.join().unwrap());
    let at_kill: Vec<i64> = committed(&brokers, &group, &topic, 2).into_iter().map(|c| c.unwrap_or(0)).collect();
    assert!(at_kill.iter().all(|c| *c > 0 && *c < RECORDS), "killed mid-way: committed {at_kill:?}");
    assert!(sessions_checked > 0, "commits passed the records of some sessions while the job ran");
    let first: BTreeSet<String> = durable.lock().unwrap().clone();

    // Run 2: restart from the committed offsets, read to the end.
    let source = KafkaSource::<Reading>::json(KafkaConfig::new(&brokers))
        .topic(&topic)
        .group_id(&group)
        .record_event_time()
        .start(StartOffsets::Committed)
        .bounded()
        .build()
        .unwrap();
    let collected = Collected::new();
    let c = collected.clone();
    within(Duration::from_secs(60), move || {
        execute(&Cluster::threads(2), move |worker| {
            let (source, collected) = (source.clone(), c.clone());
            worker.dataflow::<Time, _, _>(move |scope| {
                stateful_pipeline(source.read(scope, SourceConfig::new("readings")).data).collect_into(&collected);
            });
        })
        .unwrap();
    });
    let second: BTreeSet<String> = collected.contents().into_iter().map(|(row, _)| row).collect();

    // Nothing lost: every final row was durably written before the kill or by the restart.
    let missing: Vec<&String> = expected.iter().filter(|row| !first.contains(*row) && !second.contains(*row)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} rows lost across the kill (committed {at_kill:?}), e.g. {:?}",
        missing.len(),
        expected.len(),
        &missing[..missing.len().min(5)]
    );
    // And the restart did not start over: it skipped what was committed.
    let reread = expected.iter().filter(|row| second.contains(*row)).count();
    assert!(reread < expected.len(), "the restart recomputed everything ({reread} rows)");
    eprintln!(
        "{test}: committed at the kill {at_kill:?}; {} rows before the kill, {} after, {} expected",
        first.len(),
        second.len(),
        expected.len()
    );
}
