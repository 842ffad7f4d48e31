//! Window state stays bounded under a long stream: state is released as windows expire,
//! and the release never shows up downstream as a retraction.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tideline::prelude::*;
use tideline::runtime::metrics::StateMetrics;
use tideline::runtime::{Cluster, execute};
use tideline::sink::Collected;
use tideline::source::{SourceConfig, memory};
use tideline::timely::dataflow::operators::probe::Handle;
use tideline::window::aggregate::Count;

const KEYS: u64 = 100;
/// Flow control: records per read and records in flight ahead of the sinks, per worker.
const BATCH: usize = 1_000;
const IN_FLIGHT: u64 = 2_000;
/// Event time a worker can run ahead of the sinks: what it has in flight plus a batch (one
/// event per ms per partition, one partition per worker), plus out-of-orderness.
const AHEAD_MS: u64 = IN_FLIGHT + BATCH as u64 + 60;

/// `events` events per partition, one per ms of event time, out of order by up to 50 ms.
fn stream(partition: u64, events: u64) -> impl Iterator<Item = Event<u64, u64>> {
    (0..events).map(move |i| {
        let jitter = (i * 7919 + partition * 104_729) % 50;
        Event::new(i + 50 - jitter, (i * 31 + partition) % KEYS, 1)
    })
}

fn run(
    spec: WindowSpec,
    lateness: Duration,
    events_per_partition: u64,
) -> (u64, u64, Vec<(WindowResult<u64, i64>, isize)>) {
    let state = StateMetrics::new();
    let peak = Arc::new(AtomicU64::new(0));
    let results = Collected::new();
    let (s, p, r) = (Arc::clone(&state), Arc::clone(&peak), results.clone());
    execute(&Cluster::threads(2), move |worker| {
        let probe = Handle::new();
        let (metrics, r) = (Arc::clone(&s), r.clone());
        worker.dataflow::<Time, _, _>(|scope| {
            let config = SourceConfig::new("long")
                .watermarks(WatermarkStrategy::bounded_out_of_orderness(Duration::from_millis(60)))
                .batch_size(BATCH)
                .max_in_flight(IN_FLIGHT);
            let counts =
                memory::from_generators(scope, config, 2, move |partition| stream(partition, events_per_partition))
                    .data
                    .windows(spec)
                    .allowed_lateness(lateness)
                    .state_metrics(metrics)
                    .aggregate(Count)
                    .probe_with(&probe);
            counts.collect_into(&r);
        });
        while !probe.done() {
            worker.step();
            p.fetch_max(s.total(), Ordering::Relaxed);
        }
    })
    .unwrap();
    (peak.load(Ordering::Relaxed), state.total(), results.contents())
}

#[test]
fn tumbling_window_state_stays_bounded_over_millions_of_events() {
    let events = 1_500_000;
    let spec = WindowSpec::tumbling(Duration::from_millis(100)).unwrap();
    let (peak, end, results) = run(spec, Duration::from_millis(200), events);
    // Live windows: those the source can be ahead of the sinks, plus the allowed lateness;
    // each holds at most every key.
    let bound = (AHEAD_MS + 200) / 100 * KEYS + 2 * KEYS;
    assert!(peak > 0, "state was observed");
    assert!(peak <= bound, "live window state peaked at {peak} entries, above {bound}");
    assert_eq!(end, 0, "all state is released when the input ends");
    // Every event is counted once, in a final (never retracted) result.
    assert!(results.iter().all(|(_, diff)| *diff == 1));
    let total: i64 = results.iter().map(|(r, _)| r.value).sum();
    assert_eq!(total as u64, 2 * events);
}

#[test]
fn sliding_window_state_stays_bounded() {
    let events = 400_000;
    let spec = WindowSpec::sliding(Duration::from_millis(100), Duration::from_millis(20)).unwrap();
    let (peak, end, results) = run(spec, Duration::ZERO, events);
    let bound = (AHEAD_MS + 100) / 20 * KEYS + 5 * KEYS;
    assert!(peak <= bound, "live window state peaked at {peak} entries, above {bound}");
    assert_eq!(end, 0);
    let total: i64 = results.iter().map(|(r, _)| r.value).sum();
    let memberships: u64 = (0..2).flat_map(|p| stream(p, events)).map(|e| spec.windows_of(e.time).count() as u64).sum();
    assert!(memberships > 2 * events * 49 / 10);
    assert_eq!(total as u64, memberships, "each event is counted in each of its windows");
}
