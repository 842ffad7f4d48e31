//! Session windows by key: maximal runs of a key's events separated by less than a gap
//! (DESIGN §4–5).
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
//!     Event::new(2_500, 1, 1),
//!     Event::new(9_000, 1, 1),
//! ];
//! let sessions = tideline::runtime::collect(2, move |scope| {
//!     let events = events.clone();
//!     memory::from_iter(scope, SourceConfig::new("events"), move || events.into_iter())
//!         .data
//!         .sessions(Duration::from_secs(5))
//!         .aggregate(Count)
//! });
//! // (session start = first event, session end = last event + gap, key, count), and when.
//! let rows: Vec<_> =
//!     sessions.iter().map(|(r, time, diff)| (r.window.start, r.window.end, r.key, r.value, *time, *diff)).collect();
//! assert_eq!(rows, vec![
//!     (1_500, 6_500, 2, 1, 6_499, 1),
//!     (1_000, 7_500, 1, 2, 7_499, 1),
//!     (9_000, 14_000, 1, 1, 13_999, 1),
//! ]);
//! ```
//!
//! # Event time
//!
//! A session of a key is a maximal set of its events, by the event time in their data
//! ([`Event::time`]), whose consecutive times are less than `gap` apart. Its result is a
//! [`WindowResult`] whose window is `[first event, last event + gap)`: the first event time is
//! `window.start` and the last is `window.end - gap`. Events may arrive in any order: an event
//! that falls between two sessions and is less than `gap` from both merges them into one.
//!
//! Let `R≤τ` be the input records at dataflow times `≤ τ`. With [`Emit::Updates`] the output
//! as of `τ` is every session of `R≤τ`, open ones included; with [`Emit::Final`] (the
//! default) it is the sessions `s` of `R≤τ` with `s.end - 1 ≤ τ`: a session appears once, at
//! its last instant `last + gap - 1`, when no on-time record can extend it any more. The
//! output changes only at record times and at those instants, and is a deterministic
//! function of the input collection: identical for any number of workers.
//!
//! # Late data
//!
//! A record accepted late by its source arrives at the watermark `W` with event time `t < W`.
//! If it extends sessions or merges them, the output retracts the old sessions at `W` and
//! inserts the new one, at `W` if its last instant has passed, otherwise at its last instant
//! (with [`Emit::Final`]). A record at dataflow time `τ > t + allowed_lateness` is too late:
//! it goes to the operator's late output ([`SessionCollection::aggregate_with_late`]) and is
//! counted in [`StateMetrics::late_skipped`]. With a source policy
//! `LatePolicy::Accept { allowed_lateness }` and the same lateness here that never happens.
//!
//! Sessions are defined over insertions: a retraction (negative diff) could split a session,
//! which would require keeping every event. Records with negative diffs are not applied;
//! they go to the late output too. Source collections never carry retractions.
//!
//! # State
//!
//! Per key, its live sessions in a map ordered by start, each with a mergeable accumulator;
//! a new record touches at most the two sessions around it, so its cost does not depend on
//! how many events the key has seen. Records are pre-aggregated into runs per key and time
//! before the exchange, so a hot key does not serialize the pipeline. A session is released
//! when the frontier passes `last + gap + allowed_lateness - 1`, without any retraction
//! downstream. Live sessions are reported to [`StateMetrics`] if one is attached.
//!
//! # Checkpointing
//!
//! Session state is a function of the input records of live sessions; a checkpoint records
//! those inputs (DESIGN §8).

use std::collections::{BTreeMap, HashMap};
use std::marker::PhantomData;
use std::ops::Bound::Excluded;
use std::sync::Arc;
use std::time::Duration;

use differential_dataflow::hashable::Hashable;
use differential_dataflow::{AsCollection, VecCollection};
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use crate::error::{Error, Result};
use crate::runtime::ExchangeData;
use crate::runtime::metrics::StateMetrics;
use crate::state::driver::{KeyedLogic, StepOutput, is_applicable, keyed_operator};
use crate::time::{Event, Time, millis};
use crate::window::aggregate::Aggregator;
use crate::window::{Emit, Window, WindowResult};

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
        Ok(SessionCollection { events: self, gap, emit: Emit::Final, allowed_lateness: 0, name: None, state: None })
    }
}

/// A collection in session windows, configured fluently and then aggregated.
pub struct SessionCollection<'scope, K: 'static, V: 'static> {
    events: VecCollection<'scope, Time, Event<K, V>>,
    gap: u64,
    emit: Emit,
    allowed_lateness: u64,
    name: Option<String>,
    state: Option<Arc<StateMetrics>>,
}

impl<'scope, K, V> SessionCollection<'scope, K, V>
where
    K: ExchangeData,
    V: ExchangeData,
{
    /// Sets the emission mode (default [`Emit::Final`]).
    pub fn emit(mut self, emit: Emit) -> Self {
        self.emit = emit;
        self
    }

    /// Keeps session state for `lateness` after the session's end, to apply late corrections.
    /// Match the source's `LatePolicy::Accept { allowed_lateness }`.
    pub fn allowed_lateness(mut self, lateness: Duration) -> Self {
        self.allowed_lateness = millis(lateness);
        self
    }

    /// Names the operator (for logs, diagnostics and metrics).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Reports live sessions (and records too late to apply) to `metrics`.
    pub fn state_metrics(mut self, metrics: Arc<StateMetrics>) -> Self {
        self.state = Some(metrics);
        self
    }

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
    /// those too late (at a time after `event time + allowed_lateness`) and retractions.
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

/// Events of one key inserted at one time whose consecutive event times are less than the
/// gap apart: always part of a single session, so they travel pre-aggregated.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub(crate) struct Run<K, A> {
    key: K,
    first: Time,
    last: Time,
    count: i64,
    acc: A,
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
    let SessionCollection { events, gap, emit, allowed_lateness, name, state } = sessions;
    let name = name.unwrap_or_else(|| format!("Sessions(gap={gap}ms)"));

    // Stage 1 (local): split off what cannot be applied, and pre-aggregate runs per key and
    // time within each batch.
    let scope = events.inner.scope();
    let mut builder = OperatorBuilder::new(format!("{name}: pre-aggregate"), scope);
    let mut input = builder.new_input(events.inner, Pipeline);
    let (runs_output, runs) = builder.new_output();
    let (late_output, late) = builder.new_output();
    let mut runs_output = OutputBuilder::<_, CapacityContainerBuilder<Vec<Update<Run<K, A::Acc>>>>>::from(runs_output);
    let mut late_output = OutputBuilder::<_, CapacityContainerBuilder<Vec<Update<Event<K, V>>>>>::from(late_output);
    let combiner = aggregator.clone();
    let late_metrics = state.clone();
    builder.build(move |_capabilities| {
        let mut records: Vec<(K, Time, Time, V, isize)> = Vec::new();
        let mut rejected: Vec<Update<Event<K, V>>> = Vec::new();
        move |_frontiers| {
            let mut runs_handle = runs_output.activate();
            let mut late_handle = late_output.activate();
            input.for_each(|cap, data| {
                let mut too_late = 0;
                for (event, at, diff) in data.drain(..) {
                    if is_applicable(event.time, at, diff, allowed_lateness) {
                        records.push((event.key, at, event.time, event.value, diff));
                    } else if diff != 0 {
                        too_late += u64::from(diff > 0);
                        rejected.push((event, at, diff));
                    }
                }
                if !rejected.is_empty() {
                    late_handle.session(&cap).give_container(&mut rejected);
                    rejected.clear();
                }
                if let Some(metrics) = &late_metrics {
                    metrics.add_late_skipped(too_late);
                }
                records.sort_unstable_by(|a, b| (&a.0, a.1, a.2).cmp(&(&b.0, b.1, b.2)));
                let mut session = runs_handle.session(&cap);
                let mut current: Option<(Run<K, A::Acc>, Time)> = None;
                for (key, at, time, value, diff) in records.drain(..) {
                    if let Some((run, run_at)) = current.as_mut()
                        && *run_at == at
                        && run.key == key
                        && time - run.last < gap
                    {
                        run.last = time;
                        run.count += diff as i64;
                        combiner.add(&mut run.acc, &value, diff);
                        continue;
                    }
                    if let Some((run, run_at)) = current.take() {
                        session.give((run, run_at, 1));
                    }
                    let mut acc = A::Acc::default();
                    combiner.add(&mut acc, &value, diff);
                    current = Some((Run { key, first: time, last: time, count: diff as i64, acc }, at));
                }
                if let Some((run, run_at)) = current {
                    session.give((run, run_at, 1));
                }
            });
        }
    });

    // Stage 2 (by key): sessions, emission as the frontier passes, release.
    let logic = SessionLogic {
        aggregator,
        gap,
        allowed_lateness,
        emit,
        keys: HashMap::new(),
        expiries: BTreeMap::new(),
        dirty: Vec::new(),
        touching: Vec::new(),
        live: 0,
        values: PhantomData,
    };
    let results = keyed_operator(runs, &name, |run: &Run<K, A::Acc>| run.key.hashed(), logic, state);
    (results, late.as_collection())
}

/// The last instant at which a record that is not too late can still touch a session
/// whose last event is at `last`.
///
/// A record at dataflow time `τ` with event time `t` is applied only if
/// `τ ≤ t + allowed_lateness`. Once the frontier has passed `last + gap + L - 1`, every
/// future record has `τ ≥ last + gap + L`, hence `t ≥ τ - L ≥ last + gap`: it is at least
/// `gap` after the session's last event (and after its start), so it can neither extend
/// the session nor merge with it. The session's final result was emitted at
/// `last + gap - 1`, before that point.
fn release_time(last: Time, gap: u64, allowed_lateness: u64) -> Time {
    last.saturating_add(gap).saturating_add(allowed_lateness) - 1
}

struct Session<Acc, O> {
    last: Time,
    count: i64,
    acc: Acc,
    /// The result downstream currently holds for this session, if any.
    emitted: Option<(Window, O)>,
}

struct SessionLogic<K, V, A: Aggregator<V>> {
    aggregator: A,
    gap: u64,
    allowed_lateness: u64,
    emit: Emit,
    /// Per key, its sessions by start.
    keys: HashMap<K, BTreeMap<Time, Session<A::Acc, A::Output>>>,
    /// When sessions may be released: `(key, start)` by release time. Entries of sessions
    /// that have since grown are stale and skipped.
    expiries: BTreeMap<Time, Vec<(K, Time)>>,
    /// Sessions whose result may have changed in the current step.
    dirty: Vec<(K, Time)>,
    touching: Vec<Time>,
    live: usize,
    values: PhantomData<fn(V)>,
}

impl<K, V, A> SessionLogic<K, V, A>
where
    K: ExchangeData,
    V: ExchangeData,
    A: Aggregator<V>,
{
    /// Merges a run into its key's sessions: it absorbs every session less than `gap` away.
    fn absorb(&mut self, time: Time, run: Run<K, A::Acc>, out: &mut StepOutput<(K, Time), WindowResult<K, A::Output>>) {
        let Run { key, first, last, count, acc } = run;
        let gap = self.gap;
        let sessions = self.keys.entry(key.clone()).or_default();

        // Sessions are at least `gap` apart, so the ones the run touches are: the last one
        // starting at or before `first`, if it ends less than `gap` before it, and those
        // starting in `(first, last + gap)`.
        self.touching.clear();
        if let Some((start, session)) = sessions.range(..=first).next_back()
            && session.last.saturating_add(gap) > first
        {
            self.touching.push(*start);
        }
        let upper = last.saturating_add(gap);
        if upper > first {
            self.touching.extend(sessions.range((Excluded(first), Excluded(upper))).map(|(start, _)| *start));
        }

        let mut merged = Session { last, count, acc, emitted: None };
        let mut start = first;
        for absorbed_start in self.touching.drain(..) {
            let absorbed = sessions.remove(&absorbed_start).expect("touching session is live");
            self.live -= 1;
            if let Some((window, value)) = absorbed.emitted {
                out.give(WindowResult { window, key: key.clone(), value }, -1);
            }
            start = start.min(absorbed_start);
            merged.last = merged.last.max(absorbed.last);
            // Merge the smaller accumulator into the larger, so that a growing session is
            // never copied: the cost of a run does not grow with the session.
            let mut other = absorbed.acc;
            if absorbed.count > merged.count {
                std::mem::swap(&mut merged.acc, &mut other);
            }
            self.aggregator.merge(&mut merged.acc, other);
            merged.count += absorbed.count;
        }

        let end = merged.last.saturating_add(gap);
        let release = release_time(merged.last, gap, self.allowed_lateness);
        sessions.insert(start, merged);
        self.live += 1;
        if self.emit == Emit::Final && end - 1 > time {
            out.schedule(end - 1, (key.clone(), start));
        }
        self.expiries.entry(release).or_default().push((key.clone(), start));
        self.dirty.push((key, start));
    }
}

impl<K, V, A> KeyedLogic for SessionLogic<K, V, A>
where
    K: ExchangeData,
    V: ExchangeData,
    A: Aggregator<V>,
{
    type Input = Run<K, A::Acc>;
    type Timer = (K, Time);
    type Output = WindowResult<K, A::Output>;

    fn step(
        &mut self,
        time: Time,
        inputs: Vec<(Run<K, A::Acc>, isize)>,
        timers: Vec<(K, Time)>,
        out: &mut StepOutput<(K, Time), WindowResult<K, A::Output>>,
    ) {
        for (run, diff) in inputs {
            assert_eq!(diff, 1, "session runs travel with multiplicity one");
            self.absorb(time, run, out);
        }
        // Timers mark sessions whose last instant is now: they may become visible.
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.extend(timers);
        dirty.sort_unstable();
        dirty.dedup();
        for (key, start) in dirty.drain(..) {
            let Some(session) = self.keys.get_mut(&key).and_then(|sessions| sessions.get_mut(&start)) else {
                continue;
            };
            let window = Window { start, end: session.last.saturating_add(self.gap) };
            let visible = match self.emit {
                Emit::Updates => true,
                Emit::Final => window.max_time() <= time,
            };
            let now = visible.then(|| (window, self.aggregator.finish(&session.acc, session.count)));
            if now != session.emitted {
                if let Some((window, value)) = session.emitted.take() {
                    out.give(WindowResult { window, key: key.clone(), value }, -1);
                }
                if let Some((window, value)) = &now {
                    out.give(WindowResult { window: *window, key: key.clone(), value: value.clone() }, 1);
                }
                session.emitted = now;
            }
        }
        self.dirty = dirty;
    }

    fn release(&mut self, frontier: Option<Time>) {
        let (gap, lateness) = (self.gap, self.allowed_lateness);
        while let Some(entry) = self.expiries.first_entry() {
            if frontier.is_some_and(|f| f <= *entry.key()) {
                break;
            }
            for (key, start) in entry.remove() {
                let Some(sessions) = self.keys.get_mut(&key) else { continue };
                if let Some(session) = sessions.get(&start)
                    && frontier.is_none_or(|f| release_time(session.last, gap, lateness) < f)
                {
                    sessions.remove(&start);
                    self.live -= 1;
                }
                if sessions.is_empty() {
                    self.keys.remove(&key);
                }
            }
        }
    }

    fn live_entries(&self) -> usize {
        self.live
    }
}
