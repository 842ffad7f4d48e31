//! Session windows by key: maximal runs of a key's events at most a gap apart (DESIGN §3–5).
//!
//! ```
//! use std::time::Duration;
//! use tideline::prelude::*;
//! use tideline::source::{SourceConfig, memory};
//! use tideline::window::aggregate::Count;
//!
//! let events = vec![
//!     Event::new(1_000, 1u32, 1i64),
//!     Event::new(1_500, 2, 1),
//!     Event::new(6_000, 1, 1),
//!     Event::new(11_001, 1, 1),
//! ];
//! let sessions = tideline::runtime::collect(2, move |scope| {
//!     let events = events.clone();
//!     memory::from_iter(scope, SourceConfig::new("events"), move || events.into_iter())
//!         .data
//!         .sessions(Duration::from_secs(5))
//!         .aggregate(Count)
//! });
//! // (session start = first event, session end = last event + gap, key, count), and when:
//! // 1_000 and 6_000 are exactly one gap apart, so they share a session.
//! let rows: Vec<_> =
//!     sessions.iter().map(|(r, time, diff)| (r.window.start, r.window.end, r.key, r.value, *time, *diff)).collect();
//! assert_eq!(rows, vec![
//!     (1_500, 6_500, 2, 1, 6_500, 1),
//!     (1_000, 11_000, 1, 2, 11_000, 1),
//!     (11_001, 16_001, 1, 1, 16_001, 1),
//! ]);
//! ```
//!
//! # Event time
//!
//! A session of a key is a maximal set of its events, by the event time in their data
//! ([`Event::time`]), whose consecutive times are **at most** `gap` apart (as in Flink and
//! Kafka Streams). Its result is a [`WindowResult`] whose window is `[first event, last event +
//! gap)`: the first event time is `window.start` and the last is `window.end - gap`. Events may
//! arrive in any order: an event that falls between two sessions and is at most `gap` from both
//! merges them into one.
//!
//! A session is complete once the frontier has passed `last + gap` (an event at exactly
//! `last + gap` still joins it): with [`Emit::Final`] (the default) its result carries the
//! timestamp `last + gap = window.end`. With [`Emit::Updates`] every session is in the output
//! from the time of its first record, refined (retraction and insertion) at every time it
//! changes. Either way the output is a deterministic function of the input collection:
//! identical for any number of workers.
//!
//! # Late data
//!
//! A record behind the watermark arrives at the watermark `W` with event time `t < W`
//! (DESIGN §3). It joins the sessions it is at most `gap` from that are still live — not yet
//! emitted (`W ≤ last + gap`), or emitted and still correctable (`W ≤ last + gap +
//! allowed_lateness`) — merging them if it bridges several. A session not yet emitted takes it
//! silently; merging or extending an emitted session is a correction: the old results are
//! retracted at `W` and the new session inserted at `W` if it is complete, otherwise when it
//! completes. A record that reaches no live session starts one, `[t, t + gap)`; if that session
//! would already have expired (`t + gap + allowed_lateness < W`) the record is **late**: it
//! goes to the operator's late output ([`SessionCollection::aggregate_with_late`], per its
//! [`LatePolicy`](crate::time::late::LatePolicy)) and is counted in
//! [`StateMetrics::late_skipped`](crate::runtime::metrics::StateMetrics::late_skipped).
//!
//! For example, with a gap of 5 s and no allowed lateness, a session `{1 000}` is emitted at
//! 6 000; a record at 5 500 arriving at watermark 5 800 joins it silently (`[1 000, 10 500)`
//! is emitted at 10 500); a record at 3 000 arriving at watermark 7 000 finds `{1 000}`
//! emitted and not correctable, and `[3 000, 8 000)` already expired: it is late.
//!
//! Sessions are defined over insertions: a retraction (negative diff) could split a session,
//! which would require keeping every event. Records with negative diffs are not applied;
//! they go to the late output too (without being counted as late). Source collections never
//! carry retractions.
//!
//! # State
//!
//! Per key, its live sessions ordered by start (almost always one), each with a mergeable
//! accumulator; a new record touches at most the sessions around it, so its cost does not
//! depend on how many events the key has seen. Consecutive records of a key at the same time
//! are combined before the exchange. A session is released when the frontier passes
//! `last + gap + allowed_lateness`, without any retraction downstream. Live sessions are
//! reported to the operator's [`StateMetrics`](crate::runtime::metrics::StateMetrics).
//!
//! # Checkpointing
//!
//! A checkpoint holds every live session (its window, accumulator, count and what was emitted)
//! and its timers as of the snapshot time, and a restore reads the input again from that time
//! only, however long a session has been open. Where another operator of the dataflow cannot
//! take its state, checkpoints replay instead: a restore then re-reads the input from the oldest
//! record of a live session (see [`crate::checkpoint`]) — for a key that is never quiet for a
//! gap, from its first record.

use std::time::Duration;

use differential_dataflow::hashable::Hashable;
use differential_dataflow::{AsCollection, VecCollection};
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Concat;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use crate::error::{Error, Result};
use crate::runtime::ExchangeData;
use crate::state::driver::{Holds, Step, TemporalLogic, unary};
use crate::state::{Emit, FastMap, Temporal, temporal_builder};
use crate::time::{Event, Time, millis};
use crate::window::aggregate::Aggregator;
use crate::window::{Window, WindowResult};

/// Session windows on collections of [`Event`]s.
///
/// Event time, emission, late data and state: see the [module documentation](self).
pub trait Sessions<'scope, K, V> {
    /// Session windows with inactivity `gap`, to aggregate with
    /// [`SessionCollection::aggregate`]. Panics if `gap` is zero; use
    /// [`Sessions::try_sessions`] for gaps that come from user input.
    fn sessions(self, gap: Duration) -> SessionCollection<'scope, K, V>;

    /// Session windows with inactivity `gap`, or an error if `gap` is less than 1ms.
    fn try_sessions(self, gap: Duration) -> Result<SessionCollection<'scope, K, V>>;
}

impl<'scope, K, V> Sessions<'scope, K, V> for VecCollection<'scope, Time, Event<K, V>>
where
    K: ExchangeData,
    V: ExchangeData,
{
    fn sessions(self, gap: Duration) -> SessionCollection<'scope, K, V> {
        self.try_sessions(gap).expect("session gap must be at least 1ms")
    }

    fn try_sessions(self, gap: Duration) -> Result<SessionCollection<'scope, K, V>> {
        let gap = millis(gap);
        if gap == 0 {
            return Err(Error::Config("session gap must be at least 1ms".into()));
        }
        Ok(SessionCollection { events: self, gap, temporal: Temporal::default() })
    }
}

/// A collection in session windows, configured fluently (emission, allowed lateness, late
/// policy, name, metrics: [`TemporalBuilder`](crate::state::TemporalBuilder)) and then
/// aggregated.
pub struct SessionCollection<'scope, K: 'static, V: 'static> {
    events: VecCollection<'scope, Time, Event<K, V>>,
    gap: u64,
    temporal: Temporal,
}

temporal_builder!(SessionCollection<'scope, K, V>);

impl<'scope, K, V> SessionCollection<'scope, K, V>
where
    K: ExchangeData,
    V: ExchangeData,
{
    /// The inactivity gap: a session's window ends `gap` after its last event.
    pub fn gap(&self) -> Duration {
        Duration::from_millis(self.gap)
    }

    /// Aggregates each session with `aggregator`.
    pub fn aggregate<A>(self, aggregator: A) -> VecCollection<'scope, Time, WindowResult<K, A::Output>>
    where
        A: Aggregator<V>,
    {
        self.aggregate_with_late(aggregator).0
    }

    /// Aggregates each session, and returns the records that could not be applied, unchanged:
    /// late ones (see the [module documentation](self)) and retractions.
    pub fn aggregate_with_late<A>(
        self,
        aggregator: A,
    ) -> (VecCollection<'scope, Time, WindowResult<K, A::Output>>, VecCollection<'scope, Time, Event<K, V>>)
    where
        A: Aggregator<V>,
    {
        session_aggregate(self, aggregator)
    }
}

type Update<D> = (D, Time, isize);

/// Records of one key at one dataflow time, combined: `count` records with event times in
/// `[first, last]`, at most `gap` apart. A record behind the watermark travels alone, with its
/// value (`raw`), so that it can go to the late output unchanged.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub(crate) struct Run<K, A, V> {
    key: K,
    first: Time,
    last: Time,
    count: i64,
    acc: A,
    raw: Option<V>,
}

fn session_aggregate<'scope, K, V, A>(
    sessions: SessionCollection<'scope, K, V>,
    aggregator: A,
) -> (VecCollection<'scope, Time, WindowResult<K, A::Output>>, VecCollection<'scope, Time, Event<K, V>>)
where
    K: ExchangeData,
    V: ExchangeData,
    A: Aggregator<V>,
{
    let SessionCollection { events, gap, temporal } = sessions;
    let name = temporal.name_or(|| format!("Sessions(gap={gap}ms)"));

    // Stage 1 (local): set aside retractions, and combine consecutive on-time records of a key
    // at one time (bursts of a hot key) into runs.
    let scope = events.inner.scope();
    let mut builder = OperatorBuilder::new(format!("{name}: runs"), scope);
    let mut input = builder.new_input(events.inner, Pipeline);
    let (runs_output, runs) = builder.new_output();
    let (rejected_output, rejected) = builder.new_output();
    let mut runs_output =
        OutputBuilder::<_, CapacityContainerBuilder<Vec<Update<Run<K, A::Acc, V>>>>>::from(runs_output);
    let mut rejected_output =
        OutputBuilder::<_, CapacityContainerBuilder<Vec<Update<Event<K, V>>>>>::from(rejected_output);
    let combiner = aggregator.clone();
    builder.build(move |_capabilities| {
        let mut runs: Vec<Update<Run<K, A::Acc, V>>> = Vec::new();
        let mut rejected: Vec<Update<Event<K, V>>> = Vec::new();
        move |_frontiers| {
            let mut runs_handle = runs_output.activate();
            let mut rejected_handle = rejected_output.activate();
            input.for_each(|cap, data| {
                for (event, at, diff) in data.drain(..) {
                    if diff <= 0 {
                        if diff < 0 {
                            rejected.push((event, at, diff));
                        }
                        continue;
                    }
                    let Event { time, key, value } = event;
                    if at == time
                        && let Some((run, run_at, _)) = runs.last_mut()
                        && *run_at == at
                        && run.raw.is_none()
                        && run.key == key
                    {
                        run.count += diff as i64;
                        combiner.add(&mut run.acc, &value, diff);
                        continue;
                    }
                    let mut acc = A::Acc::default();
                    combiner.add(&mut acc, &value, diff);
                    let raw = (at != time).then_some(value);
                    runs.push((Run { key, first: time, last: time, count: diff as i64, acc, raw }, at, 1));
                }
                if !runs.is_empty() {
                    runs_handle.session(&cap).give_container(&mut runs);
                    runs.clear();
                }
                if !rejected.is_empty() {
                    rejected_handle.session(&cap).give_container(&mut rejected);
                    rejected.clear();
                }
            });
        }
    });

    // Stage 2 (by key): sessions, emission as the frontier passes, release.
    let logic = SessionLogic {
        aggregator,
        gap,
        lateness: temporal.allowed_lateness,
        emit: temporal.emit,
        keys: FastMap::default(),
        dirty: Vec::new(),
        expiring: Vec::new(),
        touching: Vec::new(),
        live: 0,
        holds: Holds::default(),
    };
    let (results, late) = unary(runs, temporal.driven(name), |run: &Run<K, A::Acc, V>| run.key.hashed(), logic);
    (results, late.inner.concat(rejected).as_collection())
}

/// What a session timer does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
enum Due {
    /// The session is complete: show it (Final).
    Complete,
    /// The session can no longer be corrected: release it.
    Expire,
}

#[derive(Serialize, Deserialize)]
struct Session<Acc, O> {
    last: Time,
    count: i64,
    acc: Acc,
    /// The earliest dataflow time of the records folded in (what at-least-once sources may not
    /// acknowledge while the session lives).
    since: Time,
    /// The result downstream currently holds for this session, if any.
    emitted: Option<(Window, O)>,
}

/// A key's live sessions, by start: almost always one.
type KeySessions<Acc, O> = Vec<(Time, Session<Acc, O>)>;

struct SessionLogic<K, V, A: Aggregator<V>> {
    aggregator: A,
    gap: u64,
    lateness: u64,
    emit: Emit,
    keys: FastMap<K, KeySessions<A::Acc, A::Output>>,
    /// Sessions (key, start) whose result may have changed in the current step.
    dirty: Vec<(K, Time)>,
    /// Sessions to release at the end of the current step.
    expiring: Vec<(K, Time)>,
    touching: Vec<usize>,
    live: usize,
    holds: Holds,
}

impl<K, V, A> SessionLogic<K, V, A>
where
    K: ExchangeData,
    V: ExchangeData,
    A: Aggregator<V>,
{
    /// The time a session whose last event is at `last` is complete (its Final result's time).
    fn complete_at(&self, last: Time) -> Time {
        last.saturating_add(self.gap)
    }

    /// Whether a cluster of runs of `key` — runs at most `gap` apart, covering `[first, last]` —
    /// arriving at `at` is late: it reaches no live session of its key, and its own session
    /// would already have expired (`last + gap + L < at`).
    fn is_late(&self, key: &K, first: Time, last: Time, at: Time) -> bool {
        if last.saturating_add(self.gap).saturating_add(self.lateness) >= at {
            return false;
        }
        let gap = self.gap;
        !self.keys.get(key).is_some_and(|sessions| {
            sessions
                .iter()
                .any(|(start, session)| *start <= last.saturating_add(gap) && session.last.saturating_add(gap) >= first)
        })
    }

    /// Merges a run arriving at `at` into its key's sessions: it absorbs every live session at
    /// most `gap` away. (Whether it is late was decided for its cluster: see `step`.)
    fn absorb(&mut self, at: Time, run: Run<K, A::Acc, V>, step: &mut Step<'_, Self>) {
        let Run { key, first, last, count, acc, raw: _ } = run;
        let (gap, lateness) = (self.gap, self.lateness);
        let sessions = self.keys.entry(key.clone()).or_default();

        // Live sessions are more than `gap` apart, and a session that has expired (`last + gap
        // + L < at`) has been released by an earlier step's timer, so the sessions the run
        // touches are exactly those with `start - gap ≤ last` and `first ≤ session.last + gap`.
        self.touching.clear();
        let upper = last.saturating_add(gap);
        for (i, (start, session)) in sessions.iter().enumerate() {
            if *start > upper {
                break;
            }
            if session.last.saturating_add(gap) >= first {
                self.touching.push(i);
            }
        }

        let mut merged = Session { last, count, acc, since: at, emitted: None };
        let mut start = first;
        // Remove back to front, so that the indices stay valid.
        for &i in self.touching.iter().rev() {
            let (absorbed_start, absorbed) = sessions.remove(i);
            self.live -= 1;
            self.holds.release(absorbed.since);
            if let Some((window, value)) = absorbed.emitted {
                step.give(WindowResult { window, key: key.clone(), value }, -1);
            }
            start = start.min(absorbed_start);
            merged.last = merged.last.max(absorbed.last);
            merged.since = merged.since.min(absorbed.since);
            // Merge the smaller accumulator into the larger, so that a growing session is
            // never copied: the cost of a run does not grow with the session.
            let mut other = absorbed.acc;
            if absorbed.count > merged.count {
                std::mem::swap(&mut merged.acc, &mut other);
            }
            self.aggregator.merge(&mut merged.acc, other);
            merged.count += absorbed.count;
        }
        self.holds.hold(merged.since);

        let complete = merged.last.saturating_add(gap);
        let position = sessions.partition_point(|(s, _)| *s < start);
        sessions.insert(position, (start, merged));
        self.live += 1;
        let expire = complete.saturating_add(lateness);
        if self.emit == Emit::Final && complete > at {
            step.schedule(complete, (Due::Complete, key.clone(), start));
        }
        if expire <= at {
            // Correctable until now only (the run reached a session at the last instant it
            // could): shown, then released, at the end of this step.
            self.expiring.push((key.clone(), start));
        } else if !(self.emit == Emit::Final && expire == complete) {
            step.schedule(expire, (Due::Expire, key.clone(), start));
        }
        self.dirty.push((key, start));
    }
}

impl<K, V, A> TemporalLogic for SessionLogic<K, V, A>
where
    K: ExchangeData,
    V: ExchangeData,
    A: Aggregator<V>,
{
    type Input = Run<K, A::Acc, V>;
    type Timer = (Due, K, Time);
    type Output = WindowResult<K, A::Output>;
    type Late = Event<K, V>;

    fn step(
        &mut self,
        inputs: &mut Vec<(Self::Input, isize)>,
        timers: &mut Vec<Self::Timer>,
        step: &mut Step<'_, Self>,
    ) {
        let time = step.time();
        // The runs of a key arriving together are taken together: sorted by start, they form
        // clusters of runs at most `gap` apart, and a cluster is late — every run of it — only
        // if, as a whole, it reaches no live session and its own session would have expired.
        // (Deciding run by run would depend on the order they arrive in.)
        inputs.sort_unstable_by(|(a, _), (b, _)| (&a.key, a.first).cmp(&(&b.key, b.first)));
        let mut runs = inputs.drain(..).map(|(run, _)| run).peekable();
        let mut cluster = Vec::new();
        while let Some(run) = runs.next() {
            let (first, mut last) = (run.first, run.last);
            cluster.push(run);
            while let Some(next) =
                runs.next_if(|next| next.key == cluster[0].key && next.first <= last.saturating_add(self.gap))
            {
                last = last.max(next.last);
                cluster.push(next);
            }
            if self.is_late(&cluster[0].key, first, last, time) {
                for run in cluster.drain(..) {
                    if let Some(value) = run.raw {
                        step.late(Event::new(run.first, run.key, value), 1);
                    }
                }
            } else {
                for run in cluster.drain(..) {
                    self.absorb(time, run, step);
                }
            }
        }
        // A `Complete` timer makes its session visible; an `Expire` timer (or a `Complete` one
        // when nothing can correct the session afterwards) releases it after it is shown.
        let mut expired = std::mem::take(&mut self.expiring);
        for (due, key, start) in timers.drain(..) {
            let Some(session) =
                self.keys.get(&key).and_then(|sessions| sessions.iter().find(|(s, _)| *s == start)).map(|(_, s)| s)
            else {
                continue;
            };
            let complete = self.complete_at(session.last);
            let expire = complete.saturating_add(self.lateness);
            match due {
                Due::Complete if complete == time => {
                    self.dirty.push((key.clone(), start));
                    if expire == time {
                        expired.push((key, start));
                    }
                }
                Due::Expire if expire == time => expired.push((key, start)),
                _ => {} // the session has grown since: a later timer stands for it
            }
        }
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        for (key, start) in dirty.drain(..) {
            let Some(session) = self
                .keys
                .get_mut(&key)
                .and_then(|sessions| sessions.iter_mut().find(|(s, _)| *s == start))
                .map(|(_, s)| s)
            else {
                continue;
            };
            let window = Window { start, end: session.last.saturating_add(self.gap) };
            let visible = match self.emit {
                Emit::Updates => true,
                Emit::Final => window.end <= time,
            };
            let now = visible.then(|| (window, self.aggregator.finish(&session.acc, session.count)));
            if now != session.emitted {
                if let Some((window, value)) = session.emitted.take() {
                    step.give(WindowResult { window, key: key.clone(), value }, -1);
                }
                if let Some((window, value)) = &now {
                    step.give(WindowResult { window: *window, key: key.clone(), value: value.clone() }, 1);
                }
                session.emitted = now;
            }
        }
        self.dirty = dirty;
        let (gap, lateness) = (self.gap, self.lateness);
        for (key, start) in expired.drain(..) {
            let Some(sessions) = self.keys.get_mut(&key) else { continue };
            // Only if it is still expired: a run of this step may have extended it since it
            // was listed (its start unchanged), and then its own `Expire` timer stands for it.
            if let Some(i) = sessions.iter().position(|(s, session)| {
                *s == start && session.last.saturating_add(gap).saturating_add(lateness) <= time
            }) {
                let (_, session) = sessions.remove(i);
                self.holds.release(session.since);
                self.live -= 1;
            }
            if sessions.is_empty() {
                self.keys.remove(&key);
            }
        }
        self.expiring = expired;
    }

    fn release(&mut self, _frontier: Option<Time>) {
        // Sessions are released by their `Expire` (or `Complete`) timers, in time order.
    }

    fn live_entries(&self) -> usize {
        self.live
    }

    fn oldest(&self) -> Option<Time> {
        self.holds.oldest()
    }

    const SNAPSHOTS: bool = true;

    fn save(&self, timers: Vec<(Time, &Self::Timer)>) -> Result<Vec<u8>, String> {
        bincode::serialize(&(&self.keys, &self.holds, self.live, timers)).map_err(|e| e.to_string())
    }

    fn load(&mut self, parts: &[&[u8]], keep: &dyn Fn(u64) -> bool) -> Result<Vec<(Time, Self::Timer)>, String> {
        type Saved<K, Acc, O> = (FastMap<K, KeySessions<Acc, O>>, Holds, usize, Vec<(Time, (Due, K, Time))>);
        let mut all_timers = Vec::new();
        for part in parts {
            let (keys, _, _, timers): Saved<K, A::Acc, A::Output> =
                bincode::deserialize(part).map_err(|e| e.to_string())?;
            for (key, sessions) in keys.into_iter().filter(|(key, _)| keep(key.hashed())) {
                for (_, session) in &sessions {
                    self.holds.hold(session.since);
                    self.live += 1;
                }
                self.keys.insert(key, sessions);
            }
            all_timers.extend(timers.into_iter().filter(|(_, (_, key, _))| keep(key.hashed())));
        }
        Ok(all_timers)
    }
}
