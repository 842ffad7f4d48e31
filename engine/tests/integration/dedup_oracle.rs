//! Oracle tests for dedup: random out-of-order streams with records behind the watermark, at
//! 1, 2 and 4 workers, both kept occurrences, every emission mode, late policy and allowed
//! lateness, compared with a from-scratch computation of the documented definition: which
//! records are late (their horizon group, or the group they would start, has expired), and the
//! groups of the others.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tideline::prelude::*;
use tideline::time::late::LatePolicy;

use crate::common::*;

/// The horizon groups of a key's distinct events, in `(time, value)` order: the first group
/// starts at the first event, a group starting at `a` holds the events before `a + within`,
/// and the next starts at the first event after that. Each as `(start, first, last)`.
fn groups_of(events: &BTreeSet<(Time, i64)>, within: u64) -> Vec<(Time, (Time, i64), (Time, i64))> {
    let mut groups: Vec<(Time, (Time, i64), (Time, i64))> = Vec::new();
    for event in events {
        match groups.last_mut() {
            Some((start, _, last)) if event.0 < *start + within => *last = *event,
            _ => groups.push((event.0, *event, *event)),
        }
    }
    groups
}

/// Which records are late, from scratch (DESIGN §3): a record arriving at `τ` is late if the
/// group of its key covering its time — among the groups of the records applied before it —
/// can no longer be corrected (`start + within + lateness ≤ τ`), or, if no group covers it, if
/// the group it would start could not (`t + within + lateness ≤ τ`). Returns the applied
/// records and the late ones.
fn apply(arrivals: &[(Ev, Time)], within: u64, lateness: u64) -> (Vec<(Ev, Time)>, Vec<(Ev, Time)>) {
    let mut ordered: Vec<&(Ev, Time)> = arrivals.iter().collect();
    ordered.sort_by_key(|(event, at)| (*at, event.time, event.key, event.value));
    let mut applied_by_key: BTreeMap<u32, BTreeSet<(Time, i64)>> = BTreeMap::new();
    let (mut applied, mut late) = (Vec::new(), Vec::new());
    for (event, at) in ordered {
        let events = applied_by_key.entry(event.key).or_default();
        let groups = groups_of(events, within);
        let covering = groups.iter().rev().find(|(start, _, _)| *start <= event.time).map(|(start, _, _)| *start);
        let start = covering.filter(|start| event.time < start + within).unwrap_or(event.time);
        if start + within + lateness <= *at {
            late.push((event.clone(), *at));
        } else {
            events.insert((event.time, event.value));
            applied.push((event.clone(), *at));
        }
    }
    (applied, late)
}

/// The dedup output, from scratch, at every time it can change.
fn dedup_from_scratch(applied: &[(Ev, Time)], within: u64, keep: Keep, emit: Emit) -> Vec<(Ev, Time, isize)> {
    let mut by_key: BTreeMap<u32, Vec<(Time, Time, i64)>> = BTreeMap::new();
    for (event, at) in applied {
        by_key.entry(event.key).or_default().push((*at, event.time, event.value));
    }
    let mut out = Vec::new();
    for (key, records) in by_key {
        let as_of = |tau: Time| {
            let events = records.iter().filter(|(at, _, _)| *at <= tau).map(|(_, t, v)| (*t, *v)).collect();
            groups_of(&events, within)
        };
        let mut times: BTreeSet<Time> = records.iter().map(|(at, _, _)| *at).collect();
        if keep == Keep::Last && emit == Emit::Final {
            for at in times.clone() {
                times.extend(as_of(at).iter().map(|(start, _, _)| start + within - 1));
            }
        }
        let mut snapshots = BTreeMap::new();
        for tau in times {
            let rows: BTreeSet<Ev> = as_of(tau)
                .into_iter()
                .filter_map(|(start, first, last)| match keep {
                    Keep::First => Some(first),
                    Keep::Last => (emit == Emit::Updates || start + within - 1 <= tau).then_some(last),
                })
                .map(|(time, value)| Event::new(time, key, value))
                .collect();
            snapshots.insert(tau, rows);
        }
        out.extend(changelog_from_snapshots(&snapshots));
    }
    sort_changelog(&mut out);
    out
}

fn check(seed: u64, within: u64, lateness: Option<u64>) {
    check_stream(random_partitions(seed, 3, 400, 6, 60, 12), seed, within, lateness, 97);
}

fn check_stream(partitions: Vec<Vec<Ev>>, seed: u64, within: u64, lateness: Option<u64>, batch: usize) {
    let strategy = WatermarkStrategy::bounded_out_of_orderness(Duration::from_millis(60));
    let partitions = Arc::new(partitions);
    let arrivals = model_source(&partitions, &strategy);
    let latenesses = match lateness {
        Some(lateness) => vec![lateness],
        None => vec![0, 150],
    };
    for lateness in latenesses {
        let (applied, late) = apply(&arrivals.records, within, lateness);
        let mut corrections = 0;
        for keep in [Keep::First, Keep::Last] {
            for emit in [Emit::Final, Emit::Updates] {
                let want = dedup_from_scratch(&applied, within, keep, emit);
                let kept: isize = want.iter().map(|(_, _, diff)| diff).sum();
                assert!((kept as usize) < applied.len(), "the stream should have duplicates");
                corrections += want.iter().filter(|(_, _, diff)| *diff < 0).count();
                for policy in [LatePolicy::Drop, LatePolicy::SideOutput] {
                    for workers in [1, 2, 4] {
                        let got = run_operator(workers, &partitions, &strategy, batch, move |events, state| {
                            events
                                .dedup(Duration::from_millis(within))
                                .keep(keep)
                                .emit(emit)
                                .allowed_lateness(Duration::from_millis(lateness))
                                .late(policy)
                                .state_metrics(state)
                                .build_with_late()
                        });
                        let context = format!(
                            "seed {seed} within {within} L {lateness} {policy:?} {keep:?} {emit:?} workers {workers}"
                        );
                        assert_eq!(got.results.len(), want.len(), "{context}: changelog length");
                        assert_eq!(got.results, want, "{context}: changelog");
                        assert_eq!(got.operator_late, late_output(&late, policy), "{context}: operator late output");
                        assert_eq!(got.state.late_skipped() as usize, late.len(), "{context}: late records counted");
                        assert_eq!(got.state.total(), 0, "{context}: all state released at the end");
                    }
                }
            }
        }
        if lateness > 0 {
            assert!(corrections > 0, "seed {seed}: the oracle should see late corrections");
        }
    }
}

#[test]
fn dedup_with_a_horizon_longer_than_the_lateness_matches_the_oracle() {
    check(21, 200, None);
}

#[test]
fn dedup_with_a_horizon_shorter_than_the_lateness_matches_the_oracle() {
    // Late records (up to 150 ms) can start a group that re-forms several 30 ms groups after
    // it, from retained events.
    check(22, 30, None);
}

#[test]
fn dedup_with_records_too_late_for_the_operator_matches_the_oracle() {
    check(23, 70, Some(40));
}

#[test]
fn dedup_of_sparse_keys_matches_the_oracle() {
    // Keys see an event every ~160 ms, so their groups have gaps between them: late records
    // land in the gaps and start groups that take over later ones, whose events are pruned.
    check_stream(random_partitions(24, 3, 400, 24, 60, 6), 24, 120, None, 97);
}

#[test]
fn dedup_with_records_at_the_edge_of_the_lateness_matches_the_oracle() {
    // One partition read one record at a time, so the operator's frontier follows the
    // partition's watermark record by record, and a third of the records are about 150 ms
    // behind the watermark (which is 60 ms behind the newest record): they start groups whose
    // boundaries fall right where retained events begin, or are late.
    let mut rng = SmallRng::seed_from_u64(25);
    let mut clock = 1_000u64;
    let events = (0..1_000)
        .map(|_| {
            clock += rng.gen_range(1..5);
            let time = if rng.gen_ratio(1, 3) { clock - 210 + rng.gen_range(0..2) } else { clock };
            Event::new(time, rng.gen_range(0..2), rng.gen_range(0..4))
        })
        .collect();
    check_stream(vec![events], 25, 30, Some(150), 1);
}

#[test]
fn a_late_record_reforms_the_groups_after_it() {
    // Horizon 100: groups start at 100 and 200 (the record at 150 is a duplicate of 100).
    // A record at 60 arrives late: groups now start at 60 (taking in 100 and 150) and at the
    // first event at or after 160, which is 200 again. So 100 is retracted, 60 inserted.
    let partitions = Arc::new(vec![vec![
        Event::new(100, 1u32, 1i64),
        Event::new(150, 1, 2),
        Event::new(200, 1, 3),
        Event::new(300, 2, 4),
        Event::new(60, 1, 5),
    ]]);
    let got = run_operator(2, &partitions, &WatermarkStrategy::monotonic(), 1, |events, _| {
        events.dedup(Duration::from_millis(100)).allowed_lateness(Duration::from_millis(300)).build_with_late()
    });
    assert_eq!(
        got.results,
        vec![
            (Event::new(100, 1, 1), 100, 1),
            (Event::new(200, 1, 3), 200, 1),
            (Event::new(60, 1, 5), 300, 1),
            (Event::new(100, 1, 1), 300, -1),
            (Event::new(300, 2, 4), 300, 1),
        ]
    );
}

#[test]
fn pruning_keeps_the_events_a_record_at_the_edge_of_the_lateness_needs() {
    // Horizon 30, lateness 150. Groups of key 1 start at 1000, 1060 (with 1080 a duplicate)
    // and 1200; the watermark is then 1200. A record at 1050 arrives behind it: its group
    // [1050, 1080) is correctable until 1080 + 150 > 1200, so it starts a group that takes
    // over 1060, and the next group starts at the first event at or after 1080: the duplicate
    // at 1080, which must still be retained.
    let partitions = Arc::new(vec![vec![
        Event::new(1_000, 1u32, 0i64),
        Event::new(1_060, 1, 0),
        Event::new(1_080, 1, 0),
        Event::new(1_200, 1, 0),
        Event::new(1_050, 1, 0),
        Event::new(5_000, 2, 0),
    ]]);
    let got = run_operator(1, &partitions, &WatermarkStrategy::monotonic(), 1, |events, _| {
        events.dedup(Duration::from_millis(30)).allowed_lateness(Duration::from_millis(150)).build_with_late()
    });
    assert_eq!(
        got.results,
        vec![
            (Event::new(1_000, 1, 0), 1_000, 1),
            (Event::new(1_060, 1, 0), 1_060, 1),
            (Event::new(1_050, 1, 0), 1_200, 1),
            (Event::new(1_060, 1, 0), 1_200, -1),
            (Event::new(1_080, 1, 0), 1_200, 1),
            (Event::new(1_200, 1, 0), 1_200, 1),
            (Event::new(5_000, 2, 0), 5_000, 1),
        ]
    );
}
