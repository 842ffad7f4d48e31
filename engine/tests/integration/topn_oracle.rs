//! Oracle tests for top-N: per window over all keys (ranking window results, a changelog with
//! late corrections) and per key and window (the `Top` aggregator), plus distinct counts per
//! window; random out-of-order streams, 1, 2 and 4 workers, every emission mode and allowed
//! lateness, compared with from-scratch computations.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tideline::prelude::*;
use tideline::window::aggregate::{DistinctCount, Sum, Top};

use crate::common::*;

type Row = WindowResult<u32, i128>;

/// The top `n` rows of each window, from scratch, at every time the input changes: rows by
/// value, highest first, ties by the row's own order.
fn ranking_from_scratch(input: &[(Row, Time, isize)], n: usize) -> Vec<(Ranked<Window, Row>, Time, isize)> {
    let mut by_window: BTreeMap<Window, Vec<(Row, Time, isize)>> = BTreeMap::new();
    for update in input {
        by_window.entry(update.0.window).or_default().push(update.clone());
    }
    let mut out = Vec::new();
    for (window, updates) in by_window {
        let times: BTreeSet<Time> = updates.iter().map(|(_, time, _)| *time).collect();
        let mut snapshots = BTreeMap::new();
        for tau in times {
            let mut contents: BTreeMap<Row, isize> = BTreeMap::new();
            for (row, _, diff) in updates.iter().filter(|(_, time, _)| *time <= tau) {
                *contents.entry(row.clone()).or_default() += diff;
            }
            let mut rows: Vec<Row> = Vec::new();
            for (row, count) in contents {
                assert!(count >= 0, "window results never go negative");
                rows.extend(std::iter::repeat_n(row, count as usize));
            }
            rows.sort_by_key(|row| (Reverse(row.value), row.clone()));
            let ranked: BTreeSet<_> = rows
                .into_iter()
                .take(n)
                .enumerate()
                .map(|(i, record)| Ranked { group: window, rank: i + 1, record })
                .collect();
            snapshots.insert(tau, ranked);
        }
        out.extend(changelog_from_snapshots(&snapshots));
    }
    sort_changelog(&mut out);
    out
}

/// Ranks the 3 largest window sums of each tumbling window, with the groups released at
/// `end + topn_lateness` (the windows' own lateness if `None`).
fn check_ranking(seed: u64, topn_lateness: Option<u64>) {
    let strategy = WatermarkStrategy::bounded_out_of_orderness(Duration::from_millis(60));
    let partitions = Arc::new(random_partitions(seed, 3, 400, 6, 60, 12));
    let spec = WindowSpec::tumbling(Duration::from_millis(100)).unwrap();
    let arrivals = model_source(&partitions, &strategy);
    for window_lateness in [0, 150] {
        let release_lateness = topn_lateness.unwrap_or(window_lateness);
        for emit in [Emit::Final, Emit::Updates] {
            let (windows, _) = windows_from_scratch(&arrivals.records, spec, emit, window_lateness, |values| {
                values.iter().map(|v| i128::from(*v)).sum::<i128>()
            });
            let (input, too_late): (Vec<_>, Vec<_>) =
                windows.into_iter().partition(|(row, time, _)| *time < row.window.end + release_lateness);
            let want = ranking_from_scratch(&input, 3);
            let mut want_late: Vec<(Ev, Time, isize)> = too_late
                .iter()
                .map(|(row, time, diff)| (Event::new(row.window.start, row.key, row.value as i64), *time, *diff))
                .collect();
            sort_changelog(&mut want_late);
            if emit == Emit::Updates || (window_lateness > 0 && topn_lateness.is_none()) {
                assert!(want.iter().any(|(_, _, diff)| *diff < 0), "the ranking should change");
            }
            if window_lateness > 0 && topn_lateness.is_some() {
                assert!(!want_late.is_empty(), "some corrections should come after the release");
            }
            for workers in [1, 2, 4] {
                let got = run_operator(workers, &partitions, &strategy, 97, move |events, state| {
                    let (ranked, late) = events
                        .windows(spec)
                        .emit(emit)
                        .allowed_lateness(Duration::from_millis(window_lateness))
                        .aggregate(Sum)
                        .top_n(3, |r: &Row| r.window, |r| r.value)
                        .release_at(move |window| window.end + release_lateness)
                        .state_metrics(state)
                        .build_with_late();
                    (ranked, late.map(|r| Event::new(r.window.start, r.key, r.value as i64)))
                });
                let context = format!(
                    "seed {seed} window L {window_lateness} release L {release_lateness} {emit:?} workers {workers}"
                );
                assert_eq!(got.results.len(), want.len(), "{context}: changelog length");
                assert_eq!(got.results, want, "{context}: changelog");
                assert_eq!(got.operator_late, want_late, "{context}: too-late updates");
                assert_eq!(got.state.late_skipped() as usize, too_late.len(), "{context}: too-late updates counted");
                assert_eq!(got.state.total(), 0, "{context}: all state released at the end");
            }
        }
    }
}

#[test]
fn top_n_per_window_matches_the_oracle() {
    check_ranking(31, None);
}

#[test]
fn top_n_with_updates_after_the_release_matches_the_oracle() {
    // Windows accept corrections for 150 ms after their end, but the ranking releases its
    // groups at the window's end: corrections go to its late output.
    check_ranking(32, Some(0));
}

#[test]
fn top_n_without_release_matches_the_oracle() {
    let strategy = WatermarkStrategy::bounded_out_of_orderness(Duration::from_millis(60));
    let partitions = Arc::new(random_partitions(33, 3, 300, 6, 60, 12));
    let spec = WindowSpec::tumbling(Duration::from_millis(100)).unwrap();
    let arrivals = model_source(&partitions, &strategy);
    let (windows, _) = windows_from_scratch(&arrivals.records, spec, Emit::Updates, 150, |values| {
        values.iter().map(|v| i128::from(*v)).sum::<i128>()
    });
    let want = ranking_from_scratch(&windows, 2);
    for workers in [1, 3] {
        let got = run_operator(workers, &partitions, &strategy, 97, move |events, state| {
            let no_late = events.clone().filter(|_| false);
            let ranked = events
                .windows(spec)
                .emit(Emit::Updates)
                .allowed_lateness(Duration::from_millis(150))
                .aggregate(Sum)
                .top_n(2, |r: &Row| r.window, |r| r.value)
                .state_metrics(state)
                .build();
            (ranked, no_late)
        });
        assert_eq!(got.results, want, "workers {workers}");
        let inputs: isize = windows.iter().map(|(_, _, diff)| diff).sum();
        assert_eq!(got.state.total() as isize, inputs, "without release, every live input is held");
    }
}

/// `Top` per key and window, and distinct counts, against the window oracle, for every allowed
/// lateness and emission mode.
#[test]
fn top_and_distinct_count_per_key_and_window_match_the_oracle() {
    let strategy = WatermarkStrategy::bounded_out_of_orderness(Duration::from_millis(60));
    let partitions = Arc::new(random_partitions(34, 3, 400, 4, 60, 12));
    let tumbling = WindowSpec::tumbling(Duration::from_millis(100)).unwrap();
    let sliding = WindowSpec::sliding(Duration::from_millis(100), Duration::from_millis(40)).unwrap();
    let arrivals = model_source(&partitions, &strategy);
    for lateness in [0, 150] {
        for emit in [Emit::Final, Emit::Updates] {
            let top = |values: &[i64]| {
                let mut sorted = values.to_vec();
                sorted.sort_by_key(|v| Reverse(*v));
                sorted.truncate(3);
                sorted
            };
            let (want_top, late_top) = windows_from_scratch(&arrivals.records, tumbling, emit, lateness, top);
            let distinct = |values: &[i64]| values.iter().collect::<BTreeSet<_>>().len() as i64;
            let (want_distinct, late_distinct) =
                windows_from_scratch(&arrivals.records, sliding, emit, lateness, distinct);
            for workers in [1, 2, 4] {
                let context = format!("L {lateness} {emit:?} workers {workers}");
                let got = run_operator(workers, &partitions, &strategy, 97, move |events, _| {
                    events
                        .windows(tumbling)
                        .emit(emit)
                        .allowed_lateness(Duration::from_millis(lateness))
                        .aggregate_with_late(Top::new(3))
                });
                assert_eq!(got.results, want_top, "top: {context}");
                assert_eq!(got.operator_late, late_output(&late_top, LatePolicy::SideOutput), "top late: {context}");
                let got = run_operator(workers, &partitions, &strategy, 97, move |events, _| {
                    events
                        .windows(sliding)
                        .emit(emit)
                        .allowed_lateness(Duration::from_millis(lateness))
                        .aggregate_with_late(DistinctCount)
                });
                assert_eq!(got.results, want_distinct, "distinct: {context}");
                assert_eq!(
                    got.operator_late,
                    late_output(&late_distinct, LatePolicy::SideOutput),
                    "distinct late: {context}"
                );
            }
        }
    }
}

#[test]
fn ties_go_to_the_smaller_record_and_updates_at_the_release_time_are_late() {
    let partitions = Arc::new(vec![vec![
        Event::new(10, 1u32, 5i64),
        Event::new(20, 1, 5),
        Event::new(30, 1, 7),
        Event::new(99, 1, 1),
        Event::new(100, 1, 9),
    ]]);
    let got = run_operator(2, &partitions, &WatermarkStrategy::monotonic(), 1, |events, state| {
        events.top_n(2, |e: &Ev| e.key, |e| e.value).release_at(|_| 100).state_metrics(state).build_with_late()
    });
    let ranked = |rank, time| Ranked { group: 1, rank, record: Event::new(time, 1, if time == 30 { 7 } else { 5 }) };
    assert_eq!(
        got.results,
        vec![
            (ranked(1, 10), 10, 1),
            (ranked(2, 20), 20, 1),
            (ranked(1, 10), 30, -1),
            (ranked(1, 30), 30, 1),
            (ranked(2, 10), 30, 1),
            (ranked(2, 20), 30, -1),
        ]
    );
    assert_eq!(got.operator_late, vec![(Event::new(100, 1, 9), 100, 1)]);
    assert_eq!(got.state.late_skipped(), 1);
    assert_eq!(got.state.total(), 0);
}
