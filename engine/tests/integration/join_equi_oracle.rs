//! Oracle tests for equi-joins: random keyed collections with insertions and retractions,
//! updates arriving out of order, at 1, 2 and 4 workers, every kind, compared with the join of
//! the inputs as they stand at every time, computed from scratch.

use std::collections::BTreeMap;
use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tideline::prelude::*;
use tideline::runtime::metrics::{LiveRecords, StateMetrics};
use tideline::sink::Collected;

use crate::common::*;

type Kv = (u32, i64);

/// Insertions at increasing times, a third of them retracted later, some inserted twice.
fn random_keyed(seed: u64, records: usize, keys: u32) -> Updates<Kv> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut clock = 0;
    let mut updates = Vec::new();
    for _ in 0..records {
        clock += rng.gen_range(0..15);
        let record = (rng.gen_range(0..keys), rng.gen_range(0..4));
        updates.push((record, clock, 1));
        if rng.gen_ratio(1, 10) {
            updates.push((record, clock + rng.gen_range(0..50), 1));
        }
        if rng.gen_ratio(1, 3) {
            updates.push((record, clock + rng.gen_range(0..400), -1));
        }
    }
    updates
}

type Row = (u32, (Option<i64>, Option<i64>));

/// The join of the inputs as they stand at `time`: pairs, and the unmatched records of the
/// requested sides.
fn join_at(a: &Updates<Kv>, b: &Updates<Kv>, time: Time, outer_left: bool, outer_right: bool) -> BTreeMap<Row, isize> {
    let as_of = |updates: &Updates<Kv>| {
        let mut contents: BTreeMap<u32, BTreeMap<i64, isize>> = BTreeMap::new();
        for ((k, v), _, d) in updates.iter().filter(|(_, t, _)| *t <= time) {
            *contents.entry(*k).or_default().entry(*v).or_default() += d;
        }
        contents
    };
    let (left, right) = (as_of(a), as_of(b));
    let present = |side: &BTreeMap<u32, BTreeMap<i64, isize>>, k: &u32| {
        side.get(k).is_some_and(|values| values.values().sum::<isize>() != 0)
    };
    let mut rows = BTreeMap::new();
    for (k, values) in &left {
        for (v1, c1) in values {
            for (v2, c2) in right.get(k).into_iter().flatten() {
                *rows.entry((*k, (Some(*v1), Some(*v2)))).or_default() += c1 * c2;
            }
            if outer_left && !present(&right, k) {
                *rows.entry((*k, (Some(*v1), None))).or_default() += c1;
            }
        }
    }
    if outer_right {
        for (k, values) in &right {
            for (v2, c2) in values {
                if !present(&left, k) {
                    *rows.entry((*k, (None, Some(*v2)))).or_default() += c2;
                }
            }
        }
    }
    rows.retain(|_, c| *c != 0);
    rows
}

fn reference(a: &Updates<Kv>, b: &Updates<Kv>, outer_left: bool, outer_right: bool) -> Updates<Row> {
    let mut times: Vec<Time> = a.iter().chain(b.iter()).map(|(_, t, _)| *t).collect();
    times.sort();
    times.dedup();
    let mut previous: BTreeMap<Row, isize> = BTreeMap::new();
    let mut out = Vec::new();
    for time in times {
        let now = join_at(a, b, time, outer_left, outer_right);
        for (row, count) in &now {
            out.push((*row, time, *count));
        }
        for (row, count) in &previous {
            out.push((*row, time, -*count));
        }
        previous = now;
    }
    changelog(out)
}

#[test]
fn equi_joins_match_the_oracle() {
    let a = Arc::new(random_keyed(41, 400, 8));
    let b = Arc::new(random_keyed(42, 400, 8));
    let inner = reference(&a, &b, false, false);
    let left = reference(&a, &b, true, false);
    let right = reference(&a, &b, false, true);
    let full = reference(&a, &b, true, true);
    assert!(left.iter().any(|((_, (_, r)), _, d)| r.is_none() && *d < 0), "outer rows become matched rows");
    assert!(left.iter().any(|((_, (_, r)), _, d)| r.is_none() && *d > 0), "and back");
    for workers in [1, 2, 4] {
        let outputs = (Collected::new(), Collected::new(), Collected::new(), Collected::new());
        let o = outputs.clone();
        let gauges = (StateMetrics::new(), StateMetrics::new());
        let g = gauges.clone();
        run_two(workers, 7, &a, &b, move |a, b| {
            let (a, b) = (a.live_records(Arc::clone(&g.0)), b.live_records(Arc::clone(&g.1)));
            a.clone().inner_join(b.clone()).map(|(k, (v1, v2))| (k, (Some(v1), Some(v2)))).collect_into(&o.0);
            a.clone().left_join(b.clone()).map(|(k, (v1, v2))| (k, (Some(v1), v2))).collect_into(&o.1);
            a.clone().right_join(b.clone()).map(|(k, (v1, v2))| (k, (v1, Some(v2)))).collect_into(&o.2);
            a.full_join(b).collect_into(&o.3);
        });
        assert_eq!(outputs.0.changelog(), inner, "inner, workers {workers}");
        assert_eq!(outputs.1.changelog(), left, "left, workers {workers}");
        assert_eq!(outputs.2.changelog(), right, "right, workers {workers}");
        assert_eq!(outputs.3.changelog(), full, "full, workers {workers}");
        // The join's state is both inputs' live records: what the gauges report at the end.
        let live = |updates: &Updates<Kv>| updates.iter().map(|(_, _, d)| *d).sum::<isize>() as u64;
        assert_eq!((gauges.0.total(), gauges.1.total()), (live(&a), live(&b)), "live records, workers {workers}");
    }
}
