//! Bounded state: over a long stream, the live state of interval, window and as-of joins and of
//! upsert tables stays flat — it does not grow with the length of the stream — and is released
//! entirely (or down to the table's contents) when the input ends.

use std::sync::Arc;
use std::time::Duration;

use tideline::prelude::*;
use tideline::runtime::metrics::StateMetrics;
use tideline::sink::Collected;

use crate::common::*;

struct Peaks {
    interval: u64,
    window: u64,
    asof: u64,
    upsert: u64,
}

fn run(records: usize) -> Peaks {
    let lateness = 60;
    let events = Arc::new(random_event_updates(81, records, 8, lateness));
    let others = Arc::new(random_event_updates(82, records, 8, lateness));
    let metrics: Vec<Arc<StateMetrics>> = (0..4).map(|_| StateMetrics::new()).collect();
    let m = metrics.clone();
    run_two(2, 8, &events, &others, move |events, others| {
        let lateness = Duration::from_millis(lateness);
        events
            .clone()
            .interval_join(others.clone(), IntervalBounds::new(-30, 50).unwrap())
            .allowed_lateness(lateness)
            .state_metrics(Arc::clone(&m[0]))
            .full()
            .collect_into(&Collected::new());
        events
            .clone()
            .window_join(
                others.clone(),
                WindowSpec::sliding(Duration::from_millis(100), Duration::from_millis(50)).unwrap(),
            )
            .allowed_lateness(lateness)
            .state_metrics(Arc::clone(&m[1]))
            .full()
            .collect_into(&Collected::new());
        let table = others
            .map(|e| Event::new(e.time, e.key, (e.value != 0).then_some(e.value)))
            .upsert()
            .allowed_lateness(lateness)
            .state_metrics(Arc::clone(&m[3]))
            .table();
        events
            .asof_join(table)
            .allowed_lateness(lateness)
            .state_metrics(Arc::clone(&m[2]))
            .left()
            .collect_into(&Collected::new());
    });
    let (interval, window, asof, upsert) = (&metrics[0], &metrics[1], &metrics[2], &metrics[3]);
    assert_eq!(interval.total(), 0, "interval join state released at the end");
    assert_eq!(window.total(), 0, "window join state released at the end");
    assert!(asof.total() <= 2 * 8, "as-of join keeps at most each key's value and last change at the end");
    assert!(upsert.total() <= 8, "upsert table keeps at most one record per key at the end");
    Peaks {
        interval: interval.peak_per_worker(),
        window: window.peak_per_worker(),
        asof: asof.peak_per_worker(),
        upsert: upsert.peak_per_worker(),
    }
}

#[test]
fn temporal_join_and_table_state_stays_flat_over_a_long_stream() {
    let (short_len, long_len) = (5_000, 40_000);
    let short = run(short_len);
    let long = run(long_len);
    for (name, short, long) in [
        ("interval join", short.interval, long.interval),
        ("window join", short.window, long.window),
        ("as-of join", short.asof, long.asof),
        ("upsert table", short.upsert, long.upsert),
    ] {
        assert!(short > 0, "{name}: state is reported");
        // Eight times the stream, about the same peak: state depends on the horizon, not the length.
        assert!(long <= short * 2, "{name}: peak {long} over {long_len} records, {short} over {short_len}");
        assert!(long < (long_len / 20) as u64, "{name}: peak {long} is a small fraction of {long_len} records");
    }
}
