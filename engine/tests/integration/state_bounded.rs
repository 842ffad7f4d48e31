//! Bounded state and hot keys: live entries stay flat over long streams for sessions, dedup
//! and top-N, and a key with a million events costs about as much per event as cold keys.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tideline::prelude::*;
use tideline::runtime::metrics::StateMetrics;
use tideline::runtime::{Cluster, execute};
use tideline::sink::Collected;
use tideline::source::{SourceConfig, memory};
use tideline::window::aggregate::{AllStats, Count, Stats};

use crate::common::Ev;

/// What a run over a generated stream produced.
struct Generated<R> {
    /// The output collection at the end, `(data, multiplicity)`.
    contents: Vec<(R, isize)>,
    state: Arc<StateMetrics>,
    elapsed: Duration,
}

/// Runs `build` on one worker over `count` generated events (event `i` is `event(i)`), with
/// watermarks 20 ms behind the newest event, read `batch` events at a time.
fn run_generated<R, F>(count: u64, batch: usize, event: fn(u64) -> Ev, build: F) -> Generated<R>
where
    R: tideline::ExchangeData,
    F: for<'s> Fn(VecCollection<'s, Time, Ev>, Arc<StateMetrics>) -> VecCollection<'s, Time, R> + Send + Sync + 'static,
{
    let state = StateMetrics::new();
    let results = Collected::new();
    let (s, r) = (state.clone(), results.clone());
    let build = Arc::new(build);
    let started = Instant::now();
    execute(&Cluster::threads(1), move |worker| {
        let config = SourceConfig::new("generated")
            .watermarks(WatermarkStrategy::bounded_out_of_orderness(Duration::from_millis(20)))
            .batch_size(batch);
        let (s, r, build) = (s.clone(), r.clone(), Arc::clone(&build));
        worker.dataflow::<Time, _, _>(move |scope| {
            let events = memory::from_generators(scope, config, 1, move |_| (0..count).map(event)).data;
            build(events, s).collect_into(&r);
        });
        while worker.step_or_park(None) {}
    })
    .unwrap();
    Generated { contents: results.contents(), state, elapsed: started.elapsed() }
}

/// Checks that the peak of live entries does not grow with the stream: the same operator
/// over 8x the events (400 000 of them) peaks about as high, under `bound`, and far below
/// what it emitted.
fn assert_flat<R: tideline::ExchangeData>(what: &str, bound: u64, run: impl Fn(u64) -> Generated<R>) {
    let short = run(50_000);
    let long = run(400_000);
    let (short_peak, long_peak) = (short.state.peak_per_worker(), long.state.peak_per_worker());
    assert!(short_peak > 0, "{what}: the gauge should report live entries");
    assert!(long_peak <= bound, "{what}: peak {long_peak} live entries, bound {bound}");
    assert!(
        long_peak <= short_peak + short_peak / 4,
        "{what}: peak grew from {short_peak} to {long_peak} over 8x the events"
    );
    assert!((long.contents.len() as u64) > 20 * long_peak, "{what}: {} results, peak {long_peak}", long.contents.len());
    assert_eq!(long.state.total(), 0, "{what}: everything released at the end");
}

/// Key `i / 5 % 200`: runs of 5 events 1 ms apart per key, each key every second.
fn bursts(i: u64) -> Ev {
    Event::new(i, (i / 5 % 200) as u32, (i % 97) as i64)
}

#[test]
fn session_state_stays_bounded() {
    // Live sessions are those within gap + lateness + one batch (256 ms) of the frontier:
    // about (50 + 100 + 256 + 20) / 5 sessions; allow twice that.
    assert_flat("sessions", 2 * (50 + 100 + 256 + 20) / 5, |count| {
        run_generated(count, 256, bursts, |events, state| {
            events
                .sessions(Duration::from_millis(50))
                .allowed_lateness(Duration::from_millis(100))
                .state_metrics(state)
                .aggregate(Count)
        })
    });
}

#[test]
fn dedup_state_stays_bounded() {
    // Groups of 200 ms per key, held 100 ms longer: live groups are those that started in
    // the last 300 ms + one batch + out-of-orderness, one group per 5 ms at most.
    for keep in [Keep::First, Keep::Last] {
        assert_flat("dedup", 2 * (200 + 100 + 256 + 20) / 5, move |count| {
            run_generated(count, 256, bursts, move |events, state| {
                events
                    .dedup(Duration::from_millis(200))
                    .keep(keep)
                    .allowed_lateness(Duration::from_millis(100))
                    .state_metrics(state)
                    .build()
            })
        });
    }
}

#[test]
fn top_n_state_stays_bounded() {
    // Windows of 100 ms hold 20 keys' results each; a window's results are held until its
    // end + 100 ms, so live inputs are those of the windows in the last 200 ms + one batch.
    assert_flat("top-n", 2 * 20 * (200 + 256 + 20) / 100, |count| {
        run_generated(count, 256, bursts, |events, state| {
            events
                .tumbling(Duration::from_millis(100))
                .allowed_lateness(Duration::from_millis(100))
                .aggregate(Count)
                .top_n(3, |r: &WindowResult<u32, i64>| r.window, |r| r.value)
                .release_at(|window| window.end + 100)
                .state_metrics(state)
                .build()
        })
    });
}

/// Half the events on key 0, 2 ms apart (one session that never ends), with distinct values;
/// the other half over 1000 cold keys.
fn hot_key(i: u64) -> Ev {
    let key = if i.is_multiple_of(2) { 0 } else { 1 + (i / 2 % 1_000) as u32 };
    Event::new(i, key, i as i64)
}

/// The same events, spread over 1001 keys.
fn spread(i: u64) -> Ev {
    Event::new(i, (i % 1_001) as u32, i as i64)
}

/// Events per hot-key run: 2.2M, half of them (1.1M) on the hot key, in every profile (about
/// three minutes in a debug build); the environment variable `TIDELINE_HOT_KEY_EVENTS`
/// overrides it for quick local runs.
fn hot_key_events() -> u64 {
    std::env::var("TIDELINE_HOT_KEY_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(2_200_000)
}

#[test]
fn a_hot_key_costs_no_more_per_event_than_cold_keys() {
    let count = hot_key_events();
    let sessions = |event: fn(u64) -> Ev| {
        run_generated(count, 1_024, event, |events, state| {
            events.sessions(Duration::from_millis(50)).state_metrics(state).aggregate(AllStats)
        })
    };
    let (hot, cold) = (sessions(hot_key), sessions(spread));
    let hot_session = hot.contents.iter().find(|(r, _)| r.key == 0).expect("the hot key has a session");
    let expected = Stats {
        count: count.div_ceil(2) as i64,
        sum: i128::from((0..count).step_by(2).sum::<u64>()),
        min: 0,
        max: ((count - 1) / 2 * 2) as i64,
    };
    assert_eq!(hot_session.0.value, expected, "the hot key's events form one session");
    assert!(
        hot.elapsed < 4 * cold.elapsed,
        "sessions: {count} events with a hot key took {:?}, spread over keys {:?}",
        hot.elapsed,
        cold.elapsed
    );

    let dedup = |event: fn(u64) -> Ev| {
        run_generated(count, 1_024, event, |events, state| {
            events.dedup(Duration::from_millis(50)).keep(Keep::Last).state_metrics(state).build()
        })
    };
    let (hot, cold) = (dedup(hot_key), dedup(spread));
    assert!(
        hot.elapsed < 4 * cold.elapsed,
        "dedup: {count} events with a hot key took {:?}, spread over keys {:?}",
        hot.elapsed,
        cold.elapsed
    );
}
