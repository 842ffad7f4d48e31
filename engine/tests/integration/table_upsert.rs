//! Upsert tables and tables from collections: random upsert streams with tombstones,
//! re-deliveries, retractions and late records, at 1, 2 and 4 workers, compared with the latest
//! record per key computed from scratch; the stream–table round trip; released state.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tideline::prelude::*;
use tideline::runtime::metrics::StateMetrics;
use tideline::sink::Collected;

use crate::common::*;

#[test]
fn upsert_tables_match_the_oracle() {
    let lateness = 60;
    let upserts = Arc::new(random_upserts(51, 800, 12, lateness));
    let states = upsert_reference(&upserts, lateness);
    let want = changelog(changelog_from_states(states.clone(), |k, v| (*k, v)));
    let want_changes = changelog(states.iter().flat_map(|(key, by_time)| {
        let mut previous = None;
        by_time
            .iter()
            .filter_map(move |(time, value)| {
                let changed = *value != previous;
                previous = *value;
                changed.then_some((Event::new(*time, *key, *value), *time, 1))
            })
            .collect::<Vec<_>>()
    }));
    let want_late = changelog(upserts.iter().filter(|(e, at, _)| *at > e.time + lateness).cloned());
    assert!(!want_late.is_empty(), "the stream has too-late records");
    assert!(want.iter().any(|(_, _, d)| *d < 0), "values get replaced or deleted");
    let final_keys = states.values().filter(|by_time| by_time.values().last().is_some_and(|v| v.is_some())).count();
    for workers in [1, 2, 4] {
        let (table, changes, round_trip, late) =
            (Collected::new(), Collected::new(), Collected::new(), Collected::new());
        let metrics = StateMetrics::new();
        let (t, c, r, l, m) = (table.clone(), changes.clone(), round_trip.clone(), late.clone(), Arc::clone(&metrics));
        run_two(workers, 5, &upserts, &Arc::new(Vec::<(u8, Time, isize)>::new()), move |upserts, _| {
            let (upserted, too_late) = upserts
                .upsert()
                .allowed_lateness(Duration::from_millis(lateness))
                .state_metrics(Arc::clone(&m))
                .table_with_late();
            upserted.collection().collect_into(&t);
            too_late.collect_into(&l);
            let changelog = upserted.changelog();
            changelog.clone().collect_into(&c);
            // The stream-table duality: the table's changelog, upserted, is the table again.
            changelog.upsert().table().into_collection().collect_into(&r);
        });
        let context = format!("workers {workers}");
        assert_eq!(table.changelog(), want, "{context}: table");
        assert_eq!(changes.changelog(), want_changes, "{context}: changelog stream");
        assert_eq!(round_trip.changelog(), want, "{context}: changelog upserted again");
        assert_eq!(late.changelog(), want_late, "{context}: too-late records");
        assert_eq!(metrics.total() as usize, final_keys, "{context}: one record per key with a value is kept");
        assert!(metrics.late_skipped() > 0, "{context}: too-late records counted");
    }
}

#[test]
fn tables_of_collections_hold_each_keys_greatest_value() {
    let mut rng = SmallRng::seed_from_u64(52);
    let mut updates: Updates<(u32, i64)> = Vec::new();
    for time in 0..300 {
        let record = (rng.gen_range(0..5), rng.gen_range(0..6));
        updates.push((record, time * 3, 1));
        if rng.gen_ratio(1, 2) {
            updates.push((record, time * 3 + rng.gen_range(0..200), -1));
        }
    }
    let mut states: BTreeMap<u32, BTreeMap<Time, Option<i64>>> = BTreeMap::new();
    for ((key, _), at, _) in &updates {
        let mut values: BTreeMap<i64, isize> = BTreeMap::new();
        for ((_, v), _, d) in updates.iter().filter(|((k, _), t, _)| k == key && t <= at) {
            *values.entry(*v).or_default() += d;
        }
        let value = values.iter().rev().find(|(_, c)| **c > 0).map(|(v, _)| *v);
        states.entry(*key).or_default().insert(*at, value);
    }
    let want = changelog(changelog_from_states(states, |k, v| (*k, v)));
    let updates = Arc::new(updates);
    for workers in [1, 3] {
        let table = Collected::new();
        let t = table.clone();
        run_two(workers, 3, &updates, &Arc::new(Vec::<(u8, Time, isize)>::new()), move |values, _| {
            values.to_table().into_collection().collect_into(&t);
        });
        assert_eq!(table.changelog(), want, "workers {workers}");
    }
}
