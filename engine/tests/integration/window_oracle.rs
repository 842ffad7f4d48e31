//! Oracle tests for tumbling and sliding windows: random out-of-order streams with late
//! records, at 1, 2 and 4 workers, every emission mode and late policy, compared with a
//! from-scratch computation over the records the source accepted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tideline::prelude::*;
use tideline::runtime::{Cluster, execute};
use tideline::sink::Collected;
use tideline::source::{SourceConfig, memory};
use tideline::time::late::{LatePolicy, LateRecord};
use tideline::window::aggregate::{AllStats, Stats};

use crate::common::*;

type Row = WindowResult<u32, Stats>;

struct Run {
    results: Vec<(Row, Time, isize)>,
    late: Vec<(LateRecord<Ev>, Time, isize)>,
    operator_late: Vec<(Ev, Time, isize)>,
    late_counted: u64,
}

fn run(
    workers: usize,
    partitions: &Arc<Vec<Vec<Ev>>>,
    strategy: &WatermarkStrategy,
    policy: LatePolicy,
    spec: WindowSpec,
    emit: Emit,
) -> Run {
    let results = Collected::new();
    let late = Collected::new();
    let operator_late = Collected::new();
    let metrics = tideline::runtime::metrics::SourceMetrics::new("events");
    let (r, l, o, m) = (results.clone(), late.clone(), operator_late.clone(), metrics.clone());
    let (partitions, strategy) = (Arc::clone(partitions), strategy.clone());
    execute(&Cluster::threads(workers), move |worker| {
        let (r, l, o) = (r.clone(), l.clone(), o.clone());
        let config =
            SourceConfig::new("events").watermarks(strategy.clone()).late(policy).metrics(m.clone()).batch_size(97);
        let partitions = Arc::clone(&partitions);
        worker.dataflow::<Time, _, _>(move |scope| {
            let source = memory::from_partitions(scope, config, partitions);
            let (windows, too_late) = source
                .data
                .windows(spec)
                .emit(emit)
                .allowed_lateness(Duration::from_millis(policy.allowed_lateness_ms()))
                .aggregate_with_late(AllStats);
            windows.collect_into(&r);
            source.late.collect_into(&l);
            too_late.collect_into(&o);
        });
        while worker.step_or_park(None) {}
    })
    .unwrap();
    Run {
        results: results.changelog(),
        late: late.changelog(),
        operator_late: operator_late.changelog(),
        late_counted: metrics.totals().late(),
    }
}

/// The window results, computed from scratch: for every window and key, its value at every
/// time anything in it changes.
fn oracle(accepted: &[(Ev, Time)], spec: WindowSpec, emit: Emit, lateness: u64) -> Vec<(Row, Time, isize)> {
    let mut groups: BTreeMap<(Window, u32), Vec<(Time, i64)>> = BTreeMap::new();
    for (event, at) in accepted {
        let mut start = 0;
        while start <= event.time {
            let window = Window { start, end: start + spec.size() };
            if window.contains(event.time) {
                let time = match emit {
                    Emit::Final => (*at).max(window.end - 1),
                    Emit::Updates => *at,
                };
                if time < window.end + lateness {
                    groups.entry((window, event.key)).or_default().push((time, event.value));
                }
            }
            start += spec.slide();
        }
    }
    let mut states = BTreeMap::new();
    for (group, records) in groups {
        let mut by_time = BTreeMap::new();
        for (time, _) in &records {
            let values: Vec<i64> = records.iter().filter(|(t, _)| t <= time).map(|(_, v)| *v).collect();
            let stats = Stats {
                count: values.len() as i64,
                sum: values.iter().sum(),
                min: *values.iter().min().unwrap(),
                max: *values.iter().max().unwrap(),
            };
            by_time.insert(*time, Some(stats));
        }
        states.insert(group, by_time);
    }
    changelog_from_states(states, |g, o| (*g, o))
        .into_iter()
        .map(|(((window, key), value), time, diff)| (WindowResult { window, key, value }, time, diff))
        .collect()
}

/// Several random streams per window kind: `(seed, partitions, records per partition, keys)`.
const STREAMS: [(u64, usize, usize, u32); 3] = [(1, 3, 400, 6), (7, 1, 900, 3), (13, 5, 250, 20)];

fn check(seed: u64, spec: WindowSpec) {
    for (offset, partitions, per_partition, keys) in STREAMS {
        check_stream(seed + offset, partitions, per_partition, keys, spec);
    }
}

fn check_stream(seed: u64, partitions: usize, per_partition: usize, keys: u32, spec: WindowSpec) {
    let strategy = WatermarkStrategy::bounded_out_of_orderness(Duration::from_millis(60));
    let partitions = Arc::new(random_partitions(seed, partitions, per_partition, keys, 60, 12));
    let policies =
        [LatePolicy::Drop, LatePolicy::SideOutput, LatePolicy::Accept { allowed_lateness: Duration::from_millis(150) }];
    for policy in policies {
        let expected = model_source(&partitions, &strategy, policy);
        let late_total =
            expected.late.len() + expected.dropped + expected.accepted.iter().filter(|(e, t)| e.time != *t).count();
        assert!(late_total > 0, "the stream should have late records");
        for emit in [Emit::Final, Emit::Updates] {
            let want = oracle(&expected.accepted, spec, emit, policy.allowed_lateness_ms());
            for workers in [1, 2, 4] {
                let got = run(workers, &partitions, &strategy, policy, spec, emit);
                let context = format!("seed {seed} {spec:?} {policy:?} {emit:?} workers {workers}");
                assert_eq!(got.results.len(), want.len(), "{context}: changelog length");
                assert_eq!(got.results, want, "{context}: changelog");
                assert_eq!(got.late, expected.late, "{context}: late side output");
                assert!(got.operator_late.is_empty(), "{context}: nothing is too late for the windows");
                assert_eq!(got.late_counted as usize, late_total, "{context}: late records counted");
            }
        }
    }
}

#[test]
fn tumbling_windows_match_the_oracle() {
    check(1, WindowSpec::tumbling(Duration::from_millis(100)).unwrap());
}

#[test]
fn sliding_windows_match_the_oracle() {
    check(2, WindowSpec::sliding(Duration::from_millis(100), Duration::from_millis(40)).unwrap());
}

#[test]
fn final_mode_emits_each_window_once_without_late_data() {
    let strategy = WatermarkStrategy::bounded_out_of_orderness(Duration::from_millis(60));
    let partitions = Arc::new(random_partitions(3, 2, 300, 4, 60, 0));
    let spec = WindowSpec::tumbling(Duration::from_millis(100)).unwrap();
    let got = run(2, &partitions, &strategy, LatePolicy::Drop, spec, Emit::Final);
    assert!(got.results.iter().all(|(row, time, diff)| *diff == 1 && *time == row.window.end - 1));
    let mut seen = std::collections::BTreeSet::new();
    for (row, _, _) in &got.results {
        assert!(seen.insert((row.window, row.key)), "window emitted twice: {row:?}");
    }
}
