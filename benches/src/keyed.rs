//! Sessions (Nexmark q11's shape) and dedup (q18's shape) three ways.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tideline::differential_dataflow::input::Input;
use tideline::keyed::process::{Context, KeyedProcessFunction};
use tideline::prelude::*;
use tideline::runtime::metrics::StateMetrics;
use tideline::runtime::{Cluster, execute};
use tideline::source::{SourceConfig, memory};
use tideline::timely::dataflow::operators::probe::Handle;
use tideline::window::aggregate::Count;

use crate::{BOUND_MS, Bid, Digest, DigestInto, JITTER_MS, PARTITIONS, RoundRobin};

/// Session gap and dedup horizon (ms).
pub const GAP_MS: u64 = 10_000;

fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// `events` bids, 100 000 per second of event time, from users active for 30 s at a time
/// (1 000 active at once, so each user's session closes 10 s after their last bid); the value
/// is an item (100 per user), so dedup by (user, item) finds repeats.
pub fn generate(events: u64) -> Vec<Vec<Bid>> {
    let rate = 100_000;
    (0..PARTITIONS as u64)
        .map(|p| {
            let count = events / PARTITIONS as u64 + u64::from(p < events % PARTITIONS as u64);
            (0..count)
                .map(|i| {
                    let global = i * PARTITIONS as u64 + p;
                    let offset = global * 1_000 / rate;
                    let time = (1_767_225_600_000 + offset).saturating_sub(mix(global ^ 1) % JITTER_MS);
                    let user = (offset / 30_000) * 1_000 + mix(global ^ 2) % 1_000;
                    Event::new(time, user, mix(global ^ 3) % 100)
                })
                .collect()
        })
        .collect()
}

/// Which keyed operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Sessions per user, counted: rows `[start, end, user, count]`.
    Sessions,
    /// The last bid of each (user, item) per horizon: rows `[user, item, time, 0]`.
    Dedup,
}

fn config() -> SourceConfig {
    SourceConfig::new("bids").watermarks(WatermarkStrategy::bounded_out_of_orderness(Duration::from_millis(BOUND_MS)))
}

/// E: the Tideline pipeline.
pub fn engine(op: Op, input: &Arc<Vec<Vec<Bid>>>, workers: usize) -> (Digest, u64) {
    let results = Digest::default();
    let state = StateMetrics::named("bench-keyed");
    let (r, s, input) = (results.clone(), Arc::clone(&state), Arc::clone(input));
    execute(&Cluster::threads(workers), move |worker| {
        let (r, s, input) = (r.clone(), Arc::clone(&s), Arc::clone(&input));
        worker.dataflow::<Time, _, _>(move |scope| {
            let bids = memory::from_partitions(scope, config(), input).data;
            match op {
                Op::Sessions => bids
                    .sessions(Duration::from_millis(GAP_MS))
                    .state_metrics(s)
                    .aggregate(Count)
                    .map(|r| [r.window.start, r.window.end, r.key, r.value as u64])
                    .digest_into(&r),
                Op::Dedup => bids
                    .map(|b| Event::new(b.time, (b.key, b.value), ()))
                    .dedup(Duration::from_millis(GAP_MS))
                    .keep(Keep::Last)
                    .state_metrics(s)
                    .build()
                    .map(|e| [e.key.0, e.key.1, e.time, 0])
                    .digest_into(&r),
            }
        });
        while worker.step_or_park(None) {}
    })
    .expect("engine run");
    (results, state.peak_per_worker() * workers as u64)
}

/// The sessions workload as a user's keyed process function: per user, the open session and
/// the timer that closes it (a state machine Flink or Kafka Streams users write by hand).
struct SessionMachine;

/// A user's open session.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
struct OpenSession {
    /// `(start, last, count)`.
    session: Option<(Time, Time, u64)>,
    timer: Option<Time>,
}

impl KeyedProcessFunction<u64, u64> for SessionMachine {
    type State = OpenSession;
    type Output = [u64; 4];

    fn on_event(&self, event: &Bid, state: &mut OpenSession, ctx: &mut Context<'_, u64, [u64; 4]>) {
        let t = event.time;
        match &mut state.session {
            // Events come in time order (all on time in this workload): a gap of at most
            // GAP_MS extends the session.
            Some((_, last, count)) if t <= *last + GAP_MS => {
                *last = (*last).max(t);
                *count += 1;
            }
            open => {
                if let Some((start, last, count)) = open.take() {
                    ctx.emit([start, last + GAP_MS, event.key, count]);
                }
                *open = Some((t, t, 1));
            }
        }
        let (_, last, _) = state.session.expect("just set");
        if let Some(timer) = state.timer.take() {
            ctx.delete_timer(timer);
        }
        state.timer = Some(ctx.set_timer(last + GAP_MS + 1));
    }

    fn on_timer(&self, _at: Time, key: &u64, state: &mut OpenSession, ctx: &mut Context<'_, u64, [u64; 4]>) {
        if let Some((start, last, count)) = state.session {
            ctx.emit([start, last + GAP_MS, *key, count]);
        }
        ctx.clear();
    }
}

/// E for the `process` workload: sessions by a keyed process function (`SessionMachine`).
pub fn process_sessions(input: &Arc<Vec<Vec<Bid>>>, workers: usize) -> (Digest, u64) {
    let results = Digest::default();
    let state = StateMetrics::named("bench-process");
    let (r, s, input) = (results.clone(), Arc::clone(&state), Arc::clone(input));
    execute(&Cluster::threads(workers), move |worker| {
        let (r, s, input) = (r.clone(), Arc::clone(&s), Arc::clone(&input));
        worker.dataflow::<Time, _, _>(move |scope| {
            memory::from_partitions(scope, config(), input)
                .data
                .process(SessionMachine)
                .state_metrics(s)
                .build()
                .digest_into(&r);
        });
        while worker.step_or_park(None) {}
    })
    .expect("engine run");
    (results, state.peak_per_worker() * workers as u64)
}

/// Sessions of sorted times: `(start, last, count)`.
fn split_sessions(times: &[Time]) -> Vec<(Time, Time, u64)> {
    let mut out: Vec<(Time, Time, u64)> = Vec::new();
    for &t in times {
        match out.last_mut() {
            Some((_, last, count)) if t - *last <= GAP_MS => {
                *last = t;
                *count += 1;
            }
            _ => out.push((t, t, 1)),
        }
    }
    out
}

/// The last event of each horizon group of sorted, distinct times.
fn last_per_horizon(times: &[Time]) -> Vec<Time> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < times.len() {
        let start = times[i];
        let mut j = i;
        while j + 1 < times.len() && times[j + 1] < start + GAP_MS {
            j += 1;
        }
        out.push(times[j]);
        i = j + 1;
    }
    out
}

/// D: written directly against differential: each worker feeds its partitions into an input
/// session at the watermark (coarse times keep differential's work per time down), and a
/// `reduce` per key recomputes the key's sessions (or horizon groups) from its history.
pub fn differential(op: Op, input: &Arc<Vec<Vec<Bid>>>, workers: usize) -> Digest {
    let results = Digest::default();
    let (r, input) = (results.clone(), Arc::clone(input));
    execute(&Cluster::threads(workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let r = r.clone();
        let probe = Handle::new();
        let mut session = worker.dataflow::<Time, _, _>(|scope| {
            let (session, events) = scope.new_collection::<(u64, Time), isize>();
            let rows = events.reduce(move |key, times, out: &mut Vec<([u64; 4], isize)>| match op {
                Op::Sessions => {
                    let times: Vec<Time> =
                        times.iter().flat_map(|(t, n)| std::iter::repeat_n(**t, (*n).max(0) as usize)).collect();
                    for (start, last, count) in split_sessions(&times) {
                        out.push(([start, last + GAP_MS, key >> 8, count], 1));
                    }
                }
                Op::Dedup => {
                    let times: Vec<Time> = times.iter().map(|(t, _)| **t).collect();
                    for time in last_per_horizon(&times) {
                        out.push(([key >> 8, key & 0xff, time, 0], 1));
                    }
                }
            });
            rows.map(|(_, row)| row).probe_with(&probe).digest_into(&r);
            session
        });
        let mut reader = RoundRobin::new(input.iter().enumerate().filter(|(p, _)| p % peers == index).map(|(_, v)| v));
        loop {
            let any = reader.round(|event| {
                let key = match op {
                    Op::Sessions => event.key << 8,
                    Op::Dedup => (event.key << 8) | event.value,
                };
                // At the current input time: coarse times keep differential's work per time down.
                let at = *session.time();
                session.update_at((key, event.time), at, 1);
            });
            let watermark = reader.watermark().unwrap_or(u64::MAX - 1);
            if watermark > *session.time() {
                session.advance_to(watermark);
            }
            session.flush();
            worker.step();
            while probe.less_than(&session.time().saturating_sub(4 * GAP_MS)) {
                worker.step();
            }
            if !any {
                break;
            }
        }
        drop(session);
        while !probe.done() {
            worker.step();
        }
    })
    .expect("differential run");
    results
}

type Fast = foldhash::fast::FixedState;

/// H: a hand-written single-threaded loop with per-partition watermarks: per user, its open
/// sessions (merged as out-of-order bids arrive), emitted once the watermark passes
/// `last + gap`; per (user, item), its horizon groups, emitted once the watermark passes
/// their end.
pub fn hand_written(op: Op, input: &Arc<Vec<Vec<Bid>>>) -> Digest {
    let out = Digest::default();
    // Sessions: user → sorted open sessions (start, last, count).
    let mut open: HashMap<u64, Vec<(Time, Time, u64)>, Fast> = HashMap::default();
    // Dedup: (user, item) → sorted distinct times not yet emitted.
    let mut groups: HashMap<(u64, u64), Vec<Time>, Fast> = HashMap::default();
    // When to look at a key again.
    let mut timers: BTreeMap<Time, Vec<(u64, u64)>> = BTreeMap::new();
    let mut reader = RoundRobin::new(input.iter());
    loop {
        let any = reader.round(|event| {
            match op {
                Op::Sessions => {
                    let sessions = open.entry(event.key).or_default();
                    let t = event.time;
                    // Merge every open session within the gap of `t`.
                    let mut merged = (t, t, 1u64);
                    sessions.retain(|&(start, last, count)| {
                        let touches = t + GAP_MS >= start && last + GAP_MS >= t;
                        if touches {
                            merged = (merged.0.min(start), merged.1.max(last), merged.2 + count);
                        }
                        !touches
                    });
                    let position = sessions.partition_point(|s| s.0 < merged.0);
                    sessions.insert(position, merged);
                    timers.entry(merged.1 + GAP_MS + 1).or_default().push((event.key, 0));
                }
                Op::Dedup => {
                    let times = groups.entry((event.key, event.value)).or_default();
                    if let Err(position) = times.binary_search(&event.time) {
                        times.insert(position, event.time);
                        if times.len() == 1 {
                            timers.entry(event.time + GAP_MS).or_default().push((event.key, event.value));
                        }
                    }
                }
            }
        });
        let watermark = reader.watermark().unwrap_or(u64::MAX);
        while let Some(entry) = timers.first_entry() {
            if *entry.key() > watermark {
                break;
            }
            for (key, value) in entry.remove() {
                match op {
                    Op::Sessions => {
                        let Some(sessions) = open.get_mut(&key) else { continue };
                        // Close the sessions whose gap the watermark has passed.
                        sessions.retain(|&(start, last, count)| {
                            if last + GAP_MS < watermark {
                                out.add(&[start, last + GAP_MS, key, count], 1);
                                false
                            } else {
                                true
                            }
                        });
                        if sessions.is_empty() {
                            open.remove(&key);
                        }
                    }
                    Op::Dedup => {
                        let Some(times) = groups.get_mut(&(key, value)) else { continue };
                        // Emit the complete horizon groups from the front.
                        while let Some(&start) = times.first() {
                            if start + GAP_MS > watermark {
                                timers.entry(start + GAP_MS).or_default().push((key, value));
                                break;
                            }
                            let end = times.partition_point(|t| *t < start + GAP_MS);
                            out.add(&[key, value, times[end - 1], 0], 1);
                            times.drain(..end);
                        }
                        if times.is_empty() {
                            groups.remove(&(key, value));
                        }
                    }
                }
            }
        }
        if !any {
            break;
        }
    }
    out
}
