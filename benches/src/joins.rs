//! Joins three ways: a window join (Nexmark q8's shape: new keys and the records that reference
//! them, in the same tumbling window) and an unbounded join (q20's shape).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tideline::differential_dataflow::input::Input;
use tideline::prelude::*;
use tideline::runtime::metrics::StateMetrics;
use tideline::runtime::{Cluster, execute};
use tideline::source::{SourceConfig, memory};
use tideline::timely::dataflow::operators::probe::Handle;

use crate::{BOUND_MS, Digest, DigestInto, JITTER_MS, Kind, PARTITIONS, RoundRobin};

/// A record of either side: `(is_left, value)`; left records introduce a key (a new person,
/// a new auction), right records reference a recent one (an auction's seller, a bid's
/// auction).
pub type Ref = Event<u64, (bool, u64)>;

fn mix(mut x: u64) -> u64 {
    // splitmix64: a deterministic hash of the global event number.
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn is_left(global: u64) -> bool {
    mix(global).is_multiple_of(10)
}

/// `events` records over [`PARTITIONS`] partitions, 100 000 per second of event time: one in
/// ten is a left record with a fresh key (its global number), the others reference one of the
/// left records among the previous ~2 000 events (or, rarely, none).
pub fn generate(events: u64) -> Vec<Vec<Ref>> {
    let rate = 100_000;
    (0..PARTITIONS as u64)
        .map(|p| {
            let count = events / PARTITIONS as u64 + u64::from(p < events % PARTITIONS as u64);
            (0..count)
                .map(|i| {
                    let global = i * PARTITIONS as u64 + p;
                    let time = (1_767_225_600_000 + global * 1_000 / rate).saturating_sub(mix(global ^ 1) % JITTER_MS);
                    let value = mix(global ^ 2) % 10_000;
                    if is_left(global) {
                        return Event::new(time, global, (true, value));
                    }
                    let mut target = global.saturating_sub(1 + mix(global ^ 3) % 2_000);
                    while target > 0 && !is_left(target) {
                        target -= 1;
                    }
                    Event::new(time, target, (false, value))
                })
                .collect()
        })
        .collect()
}

fn config() -> SourceConfig {
    SourceConfig::new("refs").watermarks(WatermarkStrategy::bounded_out_of_orderness(Duration::from_millis(BOUND_MS)))
}

/// E: the Tideline pipeline. Returns the rows and, where the operator reports it, its peak
/// live state entries.
pub fn engine(kind: Kind, input: &Arc<Vec<Vec<Ref>>>, workers: usize) -> (Digest, Option<u64>) {
    let results = Digest::default();
    let state = StateMetrics::named("bench-join");
    let (r, s, input) = (results.clone(), Arc::clone(&state), Arc::clone(input));
    execute(&Cluster::threads(workers), move |worker| {
        let (r, s, input) = (r.clone(), Arc::clone(&s), Arc::clone(&input));
        worker.dataflow::<Time, _, _>(move |scope| {
            let data = memory::from_partitions(scope, config(), input).data;
            let left = data.clone().filter(|e| e.value.0).map(|e| Event::new(e.time, e.key, e.value.1));
            let right = data.filter(|e| !e.value.0).map(|e| Event::new(e.time, e.key, e.value.1));
            match kind {
                Kind::WindowJoin(size) => left
                    .window_join(right, WindowSpec::tumbling(Duration::from_millis(size)).expect("valid"))
                    .state_metrics(s)
                    .inner()
                    .map(|(w, l, r)| [w.start, l.key, l.value, r.value])
                    .digest_into(&r),
                Kind::Join => left
                    .map(|e| (e.key, e.value))
                    .inner_join(right.map(|e| (e.key, e.value)))
                    .map(|(key, (l, r))| [key, l, r, 0])
                    .digest_into(&r),
                _ => unreachable!("not a join"),
            }
        });
        while worker.step_or_park(None) {}
    })
    .expect("engine run");
    let rows = results;
    let entries = matches!(kind, Kind::WindowJoin(_)).then(|| state.peak_per_worker() * workers as u64);
    (rows, entries)
}

/// D: the same computation written directly against differential: input sessions fed per
/// worker with per-partition watermarks, and `join`.
pub fn differential(kind: Kind, input: &Arc<Vec<Vec<Ref>>>, workers: usize) -> Digest {
    let results = Digest::default();
    let (r, input) = (results.clone(), Arc::clone(input));
    execute(&Cluster::threads(workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let r = r.clone();
        let probe = Handle::new();
        let (mut lefts, mut rights) = worker.dataflow::<Time, _, _>(|scope| {
            let (lefts, left) = scope.new_collection::<((u64, u64), u64), isize>();
            let (rights, right) = scope.new_collection::<((u64, u64), u64), isize>();
            let rows = left.join(right);
            match kind {
                Kind::Join => rows.map(|((key, _), (l, r))| [key, l, r, 0]).probe_with(&probe).digest_into(&r),
                _ => rows.map(|((key, start), (l, r))| [start, key, l, r]).probe_with(&probe).digest_into(&r),
            }
            (lefts, rights)
        });
        let mut reader = RoundRobin::new(input.iter().enumerate().filter(|(p, _)| p % peers == index).map(|(_, v)| v));
        loop {
            let any = reader.round(|event| {
                // The window join keys by (key, window) at the window's last instant; the
                // unbounded join keys by key (window 0) at the event's own time.
                let (start, at) = match kind {
                    Kind::WindowJoin(size) => {
                        let start = event.time - event.time % size;
                        (start, start + size - 1)
                    }
                    _ => (0, event.time),
                };
                let session = if event.value.0 { &mut lefts } else { &mut rights };
                session.update_at(((event.key, start), event.value.1), at, 1);
            });
            let watermark = reader.watermark().unwrap_or(u64::MAX - 1);
            for session in [&mut lefts, &mut rights] {
                if watermark > *session.time() {
                    session.advance_to(watermark);
                }
                session.flush();
            }
            worker.step();
            while probe.less_than(&lefts.time().saturating_sub(40_000)) {
                worker.step();
            }
            if !any {
                break;
            }
        }
        drop((lefts, rights));
        while !probe.done() {
            worker.step();
        }
    })
    .expect("differential run");
    results
}

type Fast = foldhash::fast::FixedState;

/// A join row: `[window start, key, left, right]`, or `[key, left, right, 0]` for the unbounded
/// join, whose rows carry no window.
fn row(kind: Kind, [start, key]: [u64; 2], left: u64, right: u64) -> [u64; 4] {
    if kind == Kind::Join { [key, left, right, 0] } else { [start, key, left, right] }
}

/// H: a hand-written single-threaded loop: partitions read round-robin with per-partition
/// watermarks; a symmetric hash join (per window for the window join, whose windows are
/// emitted and dropped as the watermark passes their end).
pub fn hand_written(kind: Kind, input: &Arc<Vec<Vec<Ref>>>) -> Digest {
    let out = Digest::default();
    // Per window start (0 for the unbounded join): key → (left values, right values).
    let mut state: BTreeMap<u64, HashMap<u64, (Vec<u64>, Vec<u64>), Fast>> = BTreeMap::new();
    let mut reader = RoundRobin::new(input.iter());
    loop {
        let any = reader.round(|event| {
            let start = match kind {
                Kind::WindowJoin(size) => event.time - event.time % size,
                _ => 0,
            };
            let (lefts, rights) = state.entry(start).or_default().entry(event.key).or_default();
            let (value, start_key) = (event.value.1, [start, event.key]);
            if event.value.0 {
                rights.iter().for_each(|r| out.add(&row(kind, start_key, value, *r), 1));
                lefts.push(value);
            } else {
                lefts.iter().for_each(|l| out.add(&row(kind, start_key, *l, value), 1));
                rights.push(value);
            }
        });
        if let Kind::WindowJoin(size) = kind {
            let watermark = reader.watermark().unwrap_or(u64::MAX);
            while let Some(entry) = state.first_entry() {
                if entry.key() + size > watermark {
                    break;
                }
                entry.remove();
            }
        }
        if !any {
            break;
        }
    }
    out
}
