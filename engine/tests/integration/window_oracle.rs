//! Oracle tests for tumbling and sliding windows: random out-of-order streams with records far
//! behind the watermark, at 1, 2 and 4 workers, every emission mode, late policy and an allowed
//! lateness of 0 and 150 ms, compared with a from-scratch computation by the per-window rule
//! (DESIGN §3): a record behind the watermark counts in every window of it that has not
//! expired, and is late only if all have.

use std::sync::Arc;
use std::time::Duration;

use tideline::prelude::*;
use tideline::window::aggregate::AllStats;

use crate::common::*;

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
    let arrivals = model_source(&partitions, &strategy);
    assert!(arrivals.behind > 0, "the stream should have records behind the watermark");
    for lateness in [0, 150] {
        for emit in [Emit::Final, Emit::Updates] {
            let (want, late) = windows_from_scratch(&arrivals.records, spec, emit, lateness, stats_of);
            assert!(!late.is_empty(), "the stream should have late records");
            assert!(late.len() < arrivals.behind, "some records behind the watermark should still count");
            for policy in [LatePolicy::Drop, LatePolicy::SideOutput] {
                for workers in [1, 2, 4] {
                    let got = run_operator(workers, &partitions, &strategy, 97, move |events, state| {
                        events
                            .windows(spec)
                            .emit(emit)
                            .allowed_lateness(Duration::from_millis(lateness))
                            .late(policy)
                            .state_metrics(state)
                            .aggregate_with_late(AllStats)
                    });
                    let context = format!("seed {seed} {spec:?} L={lateness} {policy:?} {emit:?} workers {workers}");
                    assert_eq!(got.results.len(), want.len(), "{context}: changelog length");
                    assert_eq!(got.results, want, "{context}: changelog");
                    assert_eq!(got.operator_late, late_output(&late, policy), "{context}: late output");
                    assert_eq!(got.state.late_skipped() as usize, late.len(), "{context}: late records counted");
                    assert_eq!(got.behind_counted as usize, arrivals.behind, "{context}: behind the watermark");
                    assert_eq!(got.state.total(), 0, "{context}: every window released at the end");
                }
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
    let got = run_operator(2, &partitions, &strategy, 97, move |events, _| {
        events.windows(spec).aggregate_with_late(AllStats)
    });
    assert!(got.results.iter().all(|(row, time, diff)| *diff == 1 && *time == row.window.end - 1));
    let mut seen = std::collections::BTreeSet::new();
    for (row, _, _) in &got.results {
        assert!(seen.insert((row.window, row.key)), "window emitted twice: {row:?}");
    }
}
