//! Oracle tests for as-of joins: random event streams and upsert tables, both with
//! retractions and late records, at 1, 2 and 4 workers, compared with a from-scratch lookup of
//! each event's key in the table as of the event's time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tideline::prelude::*;
use tideline::runtime::metrics::StateMetrics;
use tideline::sink::Collected;

use crate::common::*;

#[test]
fn asof_joins_match_the_oracle() {
    let lateness = 60;
    let events = Arc::new(random_event_updates(61, 600, 6, lateness));
    let upserts = Arc::new(random_upserts(62, 300, 6, lateness));
    let table = upsert_reference(&upserts, lateness);
    // Each admitted event update, with its key's value as of the event's event time.
    let admitted: Vec<_> = events.iter().filter(|(e, at, _)| *at <= e.time + lateness).collect();
    let left = changelog(admitted.iter().map(|(e, at, d)| ((e.clone(), value_as_of(&table, e.key, e.time)), *at, *d)));
    let inner = changelog(left.iter().filter_map(|((e, v), t, d)| v.map(|v| ((e.clone(), v), *t, *d))));
    let late = changelog(events.iter().filter(|(e, at, _)| *at > e.time + lateness).cloned());
    assert!(!late.is_empty(), "the stream has too-late records");
    assert!(left.iter().any(|((_, v), _, _)| v.is_none()) && !inner.is_empty());
    // The past is not rewritten: some late event sees the old value though a newer table record
    // (by event time) had arrived before it.
    assert!(
        admitted.iter().any(|(e, at, _)| value_as_of(&table, e.key, e.time) != value_as_of(&table, e.key, *at)),
        "the test covers events whose result differs from the table at their arrival"
    );
    for workers in [1, 2, 4] {
        let (left_rows, inner_rows, late_rows) = (Collected::new(), Collected::new(), Collected::new());
        let metrics = StateMetrics::new();
        let (l, i, x, m) = (left_rows.clone(), inner_rows.clone(), late_rows.clone(), Arc::clone(&metrics));
        run_two(workers, 9, &events, &upserts, move |events, upserts| {
            let table = upserts.upsert().allowed_lateness(Duration::from_millis(lateness)).table();
            let join = || {
                events
                    .clone()
                    .asof_join(table.clone())
                    .allowed_lateness(Duration::from_millis(lateness))
                    .state_metrics(Arc::clone(&m))
            };
            let (joined, too_late) = join().left_with_late();
            joined.collect_into(&l);
            too_late.collect_into(&x);
            join().inner().collect_into(&i);
        });
        let context = format!("workers {workers}");
        assert_eq!(left_rows.changelog(), left, "{context}: left");
        assert_eq!(inner_rows.changelog(), inner, "{context}: inner");
        assert_eq!(late_rows.changelog(), late, "{context}: too-late events");
        assert!(metrics.late_skipped() > 0, "{context}: too-late events counted");
    }
}

/// A table from a collection (say, an aggregation), with several values per key: events see
/// each key's greatest value as of their time.
#[test]
fn asof_joins_see_tables_of_collections_as_of_each_event() {
    let events = Arc::new(random_event_updates(63, 300, 4, 0));
    let rows: Updates<(u32, i64)> = random_event_updates(64, 200, 4, 0)
        .into_iter()
        .filter(|(e, at, _)| e.time == *at)
        .map(|(e, at, d)| ((e.key, e.value), at, d))
        .collect();
    let value_at = |key: u32, time: Time| {
        let mut values: BTreeMap<i64, isize> = BTreeMap::new();
        for ((_, v), _, d) in rows.iter().filter(|((k, _), t, _)| *k == key && *t <= time) {
            *values.entry(*v).or_default() += d;
        }
        values.iter().rev().find(|(_, c)| **c > 0).map(|(v, _)| *v)
    };
    let want = changelog(
        events
            .iter()
            .filter(|(e, at, _)| *at <= e.time)
            .map(|(e, at, d)| ((e.clone(), value_at(e.key, e.time)), *at, *d)),
    );
    let rows = Arc::new(rows);
    for workers in [1, 2] {
        let joined = Collected::new();
        let j = joined.clone();
        run_two(workers, 4, &events, &rows, move |events, rows| {
            events.asof_join(rows.to_table()).left().collect_into(&j);
        });
        assert_eq!(joined.changelog(), want, "workers {workers}");
    }
}
