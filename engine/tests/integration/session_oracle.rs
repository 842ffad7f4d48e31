//! Oracle tests for session windows: random out-of-order streams with late records, at 1, 2
//! and 4 workers, every emission mode and late policy, compared with a from-scratch
//! computation (sort and split per key) over the records the operator applies.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tideline::prelude::*;
use tideline::time::late::LatePolicy;
use tideline::window::aggregate::{AllStats, Count, DistinctCount, Stats};

use crate::common::*;

/// The sessions of a key's events, by sorting and splitting where consecutive times are
/// `gap` or more apart: each with its window and its values.
fn sessions_of(mut events: Vec<(Time, i64)>, gap: u64) -> Vec<(Window, Vec<i64>)> {
    events.sort();
    let mut sessions: Vec<(Window, Vec<i64>)> = Vec::new();
    for (time, value) in events {
        match sessions.last_mut() {
            Some((window, values)) if time < window.end => {
                window.end = time + gap;
                values.push(value);
            }
            _ => sessions.push((Window { start: time, end: time + gap }, vec![value])),
        }
    }
    sessions
}

/// The session results, from scratch: the sessions of the records at times `≤ τ` (in `Final`
/// mode only those whose last instant is `≤ τ`), at every time they can change.
pub(crate) fn sessions_from_scratch<O: Ord + Clone>(
    applied: &[(Ev, Time)],
    gap: u64,
    emit: Emit,
    finish: impl Fn(&[i64]) -> O,
) -> Vec<(WindowResult<u32, O>, Time, isize)> {
    let mut by_key: BTreeMap<u32, Vec<(Time, Time, i64)>> = BTreeMap::new();
    for (event, at) in applied {
        by_key.entry(event.key).or_default().push((*at, event.time, event.value));
    }
    let mut out = Vec::new();
    for (key, records) in by_key {
        let as_of = |tau: Time| {
            sessions_of(records.iter().filter(|(at, _, _)| *at <= tau).map(|(_, t, v)| (*t, *v)).collect(), gap)
        };
        let mut times: BTreeSet<Time> = records.iter().map(|(at, _, _)| *at).collect();
        if emit == Emit::Final {
            for at in times.clone() {
                times.extend(as_of(at).iter().map(|(window, _)| window.end - 1));
            }
        }
        let mut snapshots = BTreeMap::new();
        for tau in times {
            let rows: BTreeSet<_> = as_of(tau)
                .into_iter()
                .filter(|(window, _)| emit == Emit::Updates || window.end - 1 <= tau)
                .map(|(window, values)| WindowResult { window, key, value: finish(&values) })
                .collect();
            snapshots.insert(tau, rows);
        }
        out.extend(changelog_from_snapshots(&snapshots));
    }
    sort_changelog(&mut out);
    out
}

/// Checks sessions with `aggregator` (computed from scratch by `finish`) for a seed, gap and
/// operator lateness (`None`: the source's), against every policy, mode and worker count.
fn check<A, F>(seed: u64, gap: u64, operator_lateness: Option<u64>, aggregator: A, finish: F)
where
    A: tideline::window::aggregate::Aggregator<i64> + Send + Sync,
    A::Output: Ord,
    F: Fn(&[i64]) -> A::Output + Copy,
{
    check_stream(random_partitions(seed, 3, 400, 6, 60, 12), seed, gap, operator_lateness, aggregator, finish);
}

fn check_stream<A, F>(
    partitions: Vec<Vec<Ev>>,
    seed: u64,
    gap: u64,
    operator_lateness: Option<u64>,
    aggregator: A,
    finish: F,
) where
    A: tideline::window::aggregate::Aggregator<i64> + Send + Sync,
    A::Output: Ord,
    F: Fn(&[i64]) -> A::Output + Copy,
{
    let strategy = WatermarkStrategy::bounded_out_of_orderness(Duration::from_millis(60));
    let partitions = Arc::new(partitions);
    let policies =
        [LatePolicy::Drop, LatePolicy::SideOutput, LatePolicy::Accept { allowed_lateness: Duration::from_millis(150) }];
    for policy in policies {
        let expected = model_source(&partitions, &strategy, policy);
        let lateness = operator_lateness.unwrap_or(policy.allowed_lateness_ms());
        let (applied, too_late) = split_too_late(&expected.accepted, lateness);
        let late_total =
            expected.late.len() + expected.dropped + expected.accepted.iter().filter(|(e, t)| e.time != *t).count();
        assert!(late_total > 0, "the stream should have late records");
        for emit in [Emit::Final, Emit::Updates] {
            let want = sessions_from_scratch(&applied, gap, emit, finish);
            if emit == Emit::Updates || matches!(policy, LatePolicy::Accept { .. }) {
                assert!(want.iter().any(|(_, _, diff)| *diff < 0), "the oracle should see corrections");
            }
            for workers in [1, 2, 4] {
                let aggregator = aggregator.clone();
                let got = run_operator(workers, &partitions, &strategy, policy, 97, move |events, state| {
                    events
                        .sessions(Duration::from_millis(gap))
                        .emit(emit)
                        .allowed_lateness(Duration::from_millis(lateness))
                        .state_metrics(state)
                        .aggregate_with_late(aggregator.clone())
                });
                let context = format!("seed {seed} gap {gap} {policy:?} L {lateness} {emit:?} workers {workers}");
                assert_eq!(got.results.len(), want.len(), "{context}: changelog length");
                assert_eq!(got.results, want, "{context}: changelog");
                assert_eq!(got.late, expected.late, "{context}: source late output");
                assert_eq!(got.operator_late, too_late, "{context}: operator late output");
                assert_eq!(got.state.late_skipped() as usize, too_late.len(), "{context}: too-late records counted");
                assert_eq!(got.late_counted as usize, late_total, "{context}: late records counted");
                assert_eq!(got.state.total(), 0, "{context}: all state released at the end");
            }
        }
    }
}

#[test]
fn sessions_match_the_oracle() {
    check(11, 60, None, AllStats, stats_of);
}

#[test]
fn sessions_with_records_too_late_for_the_operator_match_the_oracle() {
    // The source accepts records up to 150 ms late, the operator only 40 ms: the rest goes to
    // its late output.
    check(12, 45, Some(40), AllStats, stats_of);
}

#[test]
fn session_distinct_counts_match_the_oracle() {
    check(13, 80, None, DistinctCount, |values: &[i64]| values.iter().collect::<BTreeSet<_>>().len() as i64);
}

#[test]
fn sessions_over_bursts_of_late_records_match_the_oracle() {
    // Every other record is late, on two keys, with a small gap: many late records of a key
    // arrive at the same watermark and are pre-aggregated into runs before the exchange.
    check_stream(random_partitions(15, 2, 300, 2, 30, 2), 15, 6, None, AllStats, stats_of);
}

#[test]
fn a_late_record_merges_two_final_sessions() {
    // Key 1: sessions [0, 50] and [150, 160] with gap 100; a record at 100 arrives late (the
    // watermark is at 300 by then) and bridges them.
    let partitions = Arc::new(vec![vec![
        Event::new(0, 1u32, 1i64),
        Event::new(50, 1, 2),
        Event::new(150, 1, 3),
        Event::new(160, 1, 4),
        Event::new(400, 2, 5),
        Event::new(100, 1, 6),
    ]]);
    let policy = LatePolicy::Accept { allowed_lateness: Duration::from_millis(300) };
    let got = run_operator(2, &partitions, &WatermarkStrategy::monotonic(), policy, 1, |events, _| {
        events
            .sessions(Duration::from_millis(100))
            .allowed_lateness(Duration::from_millis(300))
            .aggregate_with_late(Count)
    });
    let row = |start, end, key, value| WindowResult { window: Window { start, end }, key, value };
    assert_eq!(
        got.results,
        vec![
            (row(0, 150, 1, 2), 149, 1),
            (row(150, 260, 1, 2), 259, 1),
            (row(0, 150, 1, 2), 400, -1),
            (row(0, 260, 1, 5), 400, 1),
            (row(150, 260, 1, 2), 400, -1),
            (row(400, 500, 2, 1), 499, 1),
        ]
    );
    assert!(got.operator_late.is_empty());
}

#[test]
fn final_sessions_are_emitted_once_without_late_data() {
    let strategy = WatermarkStrategy::bounded_out_of_orderness(Duration::from_millis(60));
    let partitions = Arc::new(random_partitions(14, 2, 300, 4, 60, 0));
    let got = run_operator(2, &partitions, &strategy, LatePolicy::Drop, 97, |events, _| {
        events.sessions(Duration::from_millis(50)).aggregate_with_late(AllStats)
    });
    assert!(!got.results.is_empty());
    let mut seen = BTreeSet::new();
    for (row, time, diff) in &got.results {
        assert_eq!((*diff, *time), (1, row.window.end - 1), "{row:?}");
        assert!(seen.insert((row.key, row.window.start)), "session emitted twice: {row:?}");
        let _: &Stats = &row.value;
    }
}
