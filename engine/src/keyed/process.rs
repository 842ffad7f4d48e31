//! Keyed process functions: user code with per-key state and event-time timers (Flink's
//! `KeyedProcessFunction`, Kafka Streams' `Processor` with punctuators), on the same temporal
//! driver as every built-in stateful operator.
//!
//! A [`KeyedProcessFunction`] sees each event of a key with the key's state (a plain serde type
//! of the user's), and a [`Context`] to emit output, emit to named side outputs, set and delete
//! event-time and processing-time timers, and clear the key. Its [`on_timer`](KeyedProcessFunction::on_timer)
//! callback runs when a timer is due.
//!
//! ```
//! use std::time::Duration;
//! use serde::{Deserialize, Serialize};
//! use tideline::keyed::process::{Context, KeyedProcessFunction, Process};
//! use tideline::prelude::*;
//! use tideline::source::{SourceConfig, memory};
//!
//! /// Counts each user's clicks, and reports a user idle one second after their last click.
//! struct Activity;
//!
//! #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
//! struct Clicks {
//!     count: u64,
//!     /// The idle timer currently set.
//!     timer: Option<Time>,
//! }
//!
//! impl KeyedProcessFunction<u32, ()> for Activity {
//!     type State = Clicks;
//!     type Output = (u32, String);
//!
//!     fn on_event(&self, event: &Event<u32, ()>, state: &mut Clicks, ctx: &mut Context<'_, u32, (u32, String)>) {
//!         state.count += 1;
//!         ctx.emit((event.key, format!("click {}", state.count)));
//!         if let Some(timer) = state.timer.take() {
//!             ctx.delete_timer(timer);
//!         }
//!         state.timer = Some(ctx.set_timer(event.time + 1_000));
//!     }
//!
//!     fn on_timer(&self, _at: Time, key: &u32, state: &mut Clicks, ctx: &mut Context<'_, u32, (u32, String)>) {
//!         ctx.emit((*key, format!("idle after {}", state.count)));
//!         ctx.clear(); // forget the user: their state entry is released
//!     }
//! }
//!
//! let clicks = vec![
//!     Event::new(1_000, 7u32, ()),
//!     Event::new(1_200, 8, ()),
//!     Event::new(1_500, 7, ()),
//!     Event::new(5_000, 7, ()),
//! ];
//! let out = tideline::runtime::collect(2, move |scope| {
//!     let clicks = clicks.clone();
//!     memory::from_iter(scope, SourceConfig::new("clicks"), move || clicks.into_iter())
//!         .data
//!         .process(Activity)
//!         .name("activity")
//!         .build()
//! });
//! let rows: Vec<(Time, u32, &str)> = out.iter().map(|((key, what), time, _)| (*time, *key, what.as_str())).collect();
//! assert_eq!(
//!     rows,
//!     vec![
//!         (1_000, 7, "click 1"),
//!         (1_200, 8, "click 1"),
//!         (1_500, 7, "click 2"),
//!         (2_200, 8, "idle after 1"), // timers fire once the watermark passes them
//!         (2_500, 7, "idle after 2"), // the timer for 2 000 was deleted
//!         (5_000, 7, "click 1"),
//!         (6_000, 7, "idle after 1"), // the end of the input passes every timer
//!     ]
//! );
//! ```
//!
//! # Event time
//!
//! The input is a collection of [`Event`]s whose dataflow time is the record's arrival time:
//! its event time, or the watermark `W` it arrived at if it was behind it (DESIGN §3). The
//! function runs, for each key, at each dataflow time `τ` at which the key has events or a
//! timer, once the frontier has passed `τ`, in increasing order of `τ`. At `τ`:
//!
//! 1. the key's events arriving at `τ` are applied one by one, in `(event time, value)` order
//!    (an event present `n` times is applied `n` times);
//! 2. then its timer for `τ`, if one is set: [`on_timer`](KeyedProcessFunction::on_timer) runs
//!    with `at == τ` (and again if it sets a timer for `τ` anew: a function that always does
//!    never finishes the step);
//! 3. then, with a [TTL](ProcessCollection::ttl), the key's state is reset to
//!    `State::default()` if its latest event time (since it was last reset or released) plus
//!    the TTL is at most `τ`.
//!
//! Everything a callback emits is emitted at `τ`. Keys are independent, so the output is a
//! deterministic function of the input collection: identical for any number of workers, however
//! records are batched. A timer for `at` never fires before the frontier passes `at`; a timer
//! set for a time before `τ` (say for `event.time + 50` of a record far behind the watermark)
//! is set for `τ` and fires in step 2 of the same time: [`Context::set_timer`] returns the time
//! it was set for. Timers are per key and time: setting one twice sets it once. At the end of
//! a bounded input the frontier passes every time, and every timer set fires.
//!
//! # Processing-time timers
//!
//! [`Context::set_processing_timer`] sets a timer on the operator's clock
//! ([`ProcessCollection::clock`], the system clock by default) on an event-time stream: both
//! clocks in one function, as Flink's `TimerService` has them. It fires — runs
//! [`on_processing_timer`](KeyedProcessFunction::on_processing_timer) — once the clock reads
//! its time, whatever the watermark does: alerting on silence works on a stream whose watermark
//! stands still. Due timers fire in clock order, then by key, at every activation of the
//! operator (checked at least every 100 ms), and what they emit is emitted at the operator's
//! input frontier then: every event before it has been applied, none after. Their output
//! depends on when the clock runs, so it is not a function of the input (a replay or a backlog
//! fires them at other points of the stream). A timer still set when the input ends does not
//! fire. Checkpoints hold them with the key's state.
//!
//! (Alternatively, on a stream read at ingestion time
//! ([`SourceConfig::ingestion_time`](crate::source::SourceConfig::ingestion_time), with
//! [`at_ingestion_time`](crate::time::clock::AtIngestionTime::at_ingestion_time)) the watermark
//! follows the clock, so event-time timers are processing-time timers.)
//!
//! # Late data
//!
//! A process function sees every event: a record behind the watermark arrives at `W` with its
//! own, earlier event time, and it is the function's business what to do with it — compare
//! `event.time` with [`Context::time`] (which is `W` for such a record, and the event's own
//! time for a record on time), and, for instance, emit it on a side output. Nothing is counted
//! late by the operator, and the shared late policy and allowed lateness do not apply.
//! Retractions (negative diffs) cannot be applied to a process function: the input must be
//! append-only, as every source is; a retraction panics.
//!
//! # State
//!
//! Per key: the function's `State`, the key's timers, and its TTL clock. A key's entry is
//! created by its first event, and dropped as soon as its state equals `State::default()` and
//! no timer of it is set — after [`Context::clear`], after its TTL expired and its timers
//! fired, or when the function leaves the state at its default. Without a TTL and without
//! clearing, state is kept forever: with many keys, declare a [TTL](ProcessCollection::ttl) or
//! clear keys from a timer. Live keys per worker are reported to the operator's
//! [`StateMetrics`](crate::runtime::metrics::StateMetrics). For at-least-once sources a key's
//! entry holds back acknowledgement of the inputs from the dataflow time it was created at,
//! until it is dropped.
//!
//! Flink's state primitives are fields of the `State` type: `ValueState<T>` is an `Option<T>`,
//! `ListState<T>` a `Vec<T>`, `MapState<K, V>` a `BTreeMap<K, V>`; `state.clear()` is
//! [`Context::clear`] (which also deletes the key's timers) or `*state = Default::default()`.
//!
//! # Checkpointing
//!
//! The state type is serde data: a checkpoint holds each key's state and timers as of its
//! snapshot time, and a restore loads them (on the worker that now owns the key) and reads the
//! input again from that time only. Where another operator of the dataflow cannot take its
//! state, checkpoints replay instead, and since user state may reflect any earlier input of
//! its key, a process function then holds the replay time at the start: a restore re-reads the
//! whole input (see [`crate::checkpoint`]).

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
use std::time::Duration;

use differential_dataflow::VecCollection;
use differential_dataflow::hashable::Hashable;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::runtime::ExchangeData;
use crate::state::driver::{Holds, Step, TemporalLogic, unary};
use crate::state::{FastMap, Temporal, temporal_builder};
use crate::time::clock::Clock;
use crate::time::{Event, Time, millis};

/// What a process function's per-key state must be: plain serde data (so checkpoints can hold
/// it) with a default (a key's state before its first event, and after it is cleared) and
/// equality (a key whose state is back at its default, with no timer set, is released).
pub trait ProcessState: Serialize + DeserializeOwned + Default + Clone + PartialEq + 'static {}
impl<T: Serialize + DeserializeOwned + Default + Clone + PartialEq + 'static> ProcessState for T {}

/// User logic with per-key state and event-time timers, applied by [`Process::process`].
///
/// When the callbacks run, in which order, and what their output means: see the
/// [module documentation](self).
pub trait KeyedProcessFunction<K, V>: 'static {
    /// The state kept per key (`State::default()` before the key's first event).
    type State: ProcessState;
    /// What it emits, on the main output and on side outputs.
    type Output: ExchangeData;

    /// Applies one event of the key `event.key` to its `state`.
    fn on_event(&self, event: &Event<K, V>, state: &mut Self::State, ctx: &mut Context<'_, K, Self::Output>);

    /// Runs when the timer `key` set for `at` is due (`at == ctx.time()`). Does nothing by
    /// default.
    fn on_timer(&self, at: Time, key: &K, state: &mut Self::State, ctx: &mut Context<'_, K, Self::Output>) {
        let _ = (at, key, state, ctx);
    }

    /// Runs when the processing-time timer `key` set for `at` is due: once the operator's
    /// clock ([`ProcessCollection::clock`]) reads `at` or later. What it emits is emitted at
    /// [`Context::time`], the operator's input frontier when it runs. Does nothing by default.
    fn on_processing_timer(&self, at: Time, key: &K, state: &mut Self::State, ctx: &mut Context<'_, K, Self::Output>) {
        let _ = (at, key, state, ctx);
    }
}

/// What a callback of a [`KeyedProcessFunction`] may do besides changing its state: emit, set
/// and delete timers, clear its key.
pub struct Context<'a, K, O> {
    key: &'a K,
    time: Time,
    timers: &'a mut BTreeSet<Time>,
    scheduled: &'a mut Vec<Time>,
    processing: &'a mut BTreeSet<Time>,
    processing_scheduled: &'a mut Vec<Time>,
    clock: &'a Clock,
    output: &'a mut Vec<(O, isize)>,
    side: &'a mut Vec<((String, O), isize)>,
    cleared: bool,
}

impl<K, O> Context<'_, K, O> {
    /// The key being processed.
    pub fn key(&self) -> &K {
        self.key
    }

    /// The current dataflow time `τ`: the arrival time of the events being applied — an
    /// on-time event's own time, or the watermark at which a record behind it arrived — or the
    /// time of the timer firing. Everything emitted is emitted at this time.
    pub fn time(&self) -> Time {
        self.time
    }

    /// Emits `value` on the main output, at [`Context::time`].
    pub fn emit(&mut self, value: O) {
        self.output.push((value, 1));
    }

    /// Retracts `value` from the main output, at [`Context::time`]: the output is a changelog,
    /// and a function may withdraw what it emitted before (e.g. a key's previous summary).
    pub fn retract(&mut self, value: O) {
        self.output.push((value, -1));
    }

    /// Emits `value` on the side output, tagged with `name`, at [`Context::time`]
    /// ([`ProcessCollection::build_with_side`]).
    pub fn side(&mut self, name: impl Into<String>, value: O) {
        self.side.push(((name.into(), value), 1));
    }

    /// Sets the key's timer for event time `at` (for the current time if `at` is earlier), and
    /// returns the time it is set for. It fires once the frontier passes that time, after the
    /// key's events of that time. Setting a timer that is set does nothing.
    pub fn set_timer(&mut self, at: Time) -> Time {
        let at = at.max(self.time);
        if self.timers.insert(at) && at > self.time {
            self.scheduled.push(at);
        }
        at
    }

    /// Deletes the key's timer for `at` (the time [`Context::set_timer`] returned), if set.
    pub fn delete_timer(&mut self, at: Time) {
        self.timers.remove(&at);
    }

    /// The times of the key's timers that are set, in increasing order.
    pub fn timers(&self) -> impl Iterator<Item = Time> + '_ {
        self.timers.iter().copied()
    }

    /// The operator's processing time: its clock's reading now, in ms
    /// ([`ProcessCollection::clock`]; the system clock by default).
    pub fn processing_time(&self) -> Time {
        self.clock.now()
    }

    /// Sets the key's processing-time timer for `at` (clock ms) and returns `at`: once the
    /// operator's clock reads `at` or later,
    /// [`on_processing_timer`](KeyedProcessFunction::on_processing_timer) runs — whatever the
    /// watermark does, on a silent stream too. It is checked at least every 100 ms. A timer
    /// still set when the input ends does not fire (as in Flink: a bounded job ends).
    pub fn set_processing_timer(&mut self, at: Time) -> Time {
        if self.processing.insert(at) {
            self.processing_scheduled.push(at);
        }
        at
    }

    /// Deletes the key's processing-time timer for `at`, if set.
    pub fn delete_processing_timer(&mut self, at: Time) {
        self.processing.remove(&at);
    }

    /// The times of the key's processing-time timers that are set, in increasing order.
    pub fn processing_timers(&self) -> impl Iterator<Item = Time> + '_ {
        self.processing.iter().copied()
    }

    /// Forgets the key when the callback returns: its state is reset to `State::default()`,
    /// its timers (of both clocks) are deleted and its TTL clock stopped, so its entry is released. Changes the
    /// callback makes to the state and timers after `clear` are discarded too; what it emits
    /// is not.
    pub fn clear(&mut self) {
        self.cleared = true;
    }
}

/// Keyed process functions on collections of [`Event`]s.
pub trait Process<'scope, K, V> {
    /// Applies `function` to each key's events and timers (see the
    /// [module documentation](self)); configure it and [`build`](ProcessCollection::build).
    fn process<F: KeyedProcessFunction<K, V>>(self, function: F) -> ProcessCollection<'scope, K, V, F>;
}

impl<'scope, K, V> Process<'scope, K, V> for VecCollection<'scope, Time, Event<K, V>>
where
    K: ExchangeData,
    V: ExchangeData,
{
    fn process<F: KeyedProcessFunction<K, V>>(self, function: F) -> ProcessCollection<'scope, K, V, F> {
        ProcessCollection { events: self, function, ttl: None, clock: Clock::system(), temporal: Temporal::default() }
    }
}

/// A keyed process function, configured fluently and then built.
///
/// Of the shared options ([`TemporalBuilder`](crate::state::TemporalBuilder)) the name and the
/// metrics apply; the emission mode, the allowed lateness and the late policy do not (the
/// function decides what it emits and what it does with records behind the watermark).
pub struct ProcessCollection<'scope, K: 'static, V: 'static, F> {
    events: VecCollection<'scope, Time, Event<K, V>>,
    function: F,
    ttl: Option<u64>,
    clock: Clock,
    temporal: Temporal,
}

temporal_builder!(ProcessCollection<'scope, K, V, F>);

impl<'scope, K, V, F> ProcessCollection<'scope, K, V, F>
where
    K: ExchangeData,
    V: ExchangeData,
    F: KeyedProcessFunction<K, V>,
{
    /// Resets a key's state to `State::default()` once no event of it newer than its latest
    /// one came for `ttl` of event time: at the first time `τ ≥ latest event time + ttl`,
    /// after that time's events and timers (the latest event time since the key was last reset,
    /// cleared or released). Timers still set fire afterwards, with the reset
    /// state. Without a TTL, state is kept until the function clears it.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(millis(ttl));
        self
    }

    /// The clock processing-time timers follow (default [`Clock::system`]; a
    /// [`Clock::manual`] one in tests).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The main output: everything the function emitted, at the times it emitted it.
    pub fn build(self) -> VecCollection<'scope, Time, F::Output> {
        self.build_with_side().0
    }

    /// The main output, and the side output: what the function emitted with
    /// [`Context::side`], tagged with the name it gave.
    #[allow(clippy::type_complexity)]
    pub fn build_with_side(
        self,
    ) -> (VecCollection<'scope, Time, F::Output>, VecCollection<'scope, Time, (String, F::Output)>) {
        let ProcessCollection { events, function, ttl, clock, temporal } = self;
        let name = temporal.name_or(|| match ttl {
            Some(ttl) => format!("Process(ttl={ttl}ms)"),
            None => "Process".to_string(),
        });
        let logic = ProcessLogic {
            function,
            ttl,
            keys: FastMap::default(),
            holds: Holds::default(),
            keyed: Vec::new(),
            scheduled: Vec::new(),
            clock,
            processing: BinaryHeap::new(),
            processing_scheduled: Vec::new(),
            output: Vec::new(),
            side: Vec::new(),
        };
        unary(events.inner, temporal.driven(name), |event: &Event<K, V>| event.key.hashed(), logic)
    }
}

/// One key's entry.
#[derive(Serialize, serde::Deserialize)]
struct Entry<S> {
    state: S,
    /// The timers set (each has an entry in the driver's timer queue, or is for the time being
    /// applied).
    timers: BTreeSet<Time>,
    /// The processing-time timers set (each has an entry in the operator's queue).
    processing: BTreeSet<Time>,
    /// With a TTL: when the state expires (latest event time + TTL), if it reflects events.
    expires: Option<Time>,
    /// The time of the TTL visit queued for the key, if any.
    ttl_queued: Option<Time>,
    /// The dataflow time the entry was created at.
    since: Time,
}

struct ProcessLogic<K, V, F: KeyedProcessFunction<K, V>> {
    function: F,
    ttl: Option<u64>,
    keys: FastMap<K, Entry<F::State>>,
    holds: Holds,
    /// The step's events, and keys to visit (timer entries carry no event).
    keyed: Vec<(K, Option<Event<K, V>>, isize)>,
    scheduled: Vec<Time>,
    clock: Clock,
    /// Processing-time timers by due time (an entry whose key no longer has the timer set is
    /// skipped).
    processing: BinaryHeap<Reverse<(Time, K)>>,
    processing_scheduled: Vec<Time>,
    output: Vec<(F::Output, isize)>,
    side: Vec<((String, F::Output), isize)>,
}

impl<K, V, F> ProcessLogic<K, V, F>
where
    K: ExchangeData,
    V: ExchangeData,
    F: KeyedProcessFunction<K, V>,
{
    /// Applies everything that happens to `key` at `time`: `events` (sorted), its timer, its
    /// TTL — or, with `processing`, its processing-time timer for that clock time only.
    fn visit(
        &mut self,
        key: &K,
        events: &[(K, Option<Event<K, V>>, isize)],
        time: Time,
        processing: Option<Time>,
        step: &mut Step<'_, Self>,
    ) {
        let ProcessLogic {
            function,
            ttl,
            keys,
            holds,
            scheduled,
            clock,
            processing: queue,
            processing_scheduled,
            output,
            side,
            ..
        } = self;
        let has_events = events.iter().any(|(_, event, _)| event.is_some());
        let entry = if has_events {
            keys.entry(key.clone()).or_insert_with(|| {
                holds.hold(time);
                Entry {
                    state: F::State::default(),
                    timers: BTreeSet::new(),
                    processing: BTreeSet::new(),
                    expires: None,
                    ttl_queued: None,
                    since: time,
                }
            })
        } else {
            // A timer or TTL visit: the key may have been released since (a stale visit).
            match keys.get_mut(key) {
                Some(entry) => entry,
                None => return,
            }
        };
        let mut ctx = Context {
            key,
            time,
            timers: &mut entry.timers,
            scheduled,
            processing: &mut entry.processing,
            processing_scheduled,
            clock,
            output,
            side,
            cleared: false,
        };
        // Applies a callback's `clear`.
        fn settle<S: Default>(
            state: &mut S,
            ctx: &mut Context<'_, impl Sized, impl Sized>,
            expires: &mut Option<Time>,
        ) {
            if std::mem::take(&mut ctx.cleared) {
                *state = S::default();
                ctx.timers.clear();
                ctx.processing.clear();
                *expires = None;
            }
        }
        for (_, event, diff) in events {
            let Some(event) = event else { continue };
            assert!(*diff >= 0, "a process function takes append-only input: a retraction reached it at {time}");
            for _ in 0..*diff {
                if let Some(ttl) = ttl {
                    let expires = event.time.saturating_add(*ttl);
                    entry.expires = Some(entry.expires.map_or(expires, |e| e.max(expires)));
                }
                function.on_event(event, &mut entry.state, &mut ctx);
                settle(&mut entry.state, &mut ctx, &mut entry.expires);
            }
        }
        if let Some(at) = processing {
            if ctx.processing.remove(&at) {
                function.on_processing_timer(at, key, &mut entry.state, &mut ctx);
                settle(&mut entry.state, &mut ctx, &mut entry.expires);
            }
        } else {
            while ctx.timers.remove(&time) {
                function.on_timer(time, key, &mut entry.state, &mut ctx);
                settle(&mut entry.state, &mut ctx, &mut entry.expires);
            }
        }
        match entry.expires {
            _ if processing.is_some() => {}
            Some(expires) if expires <= time => {
                entry.state = F::State::default();
                entry.expires = None;
            }
            // One TTL visit queued per key, re-queued lazily when it finds the key's latest
            // event moved the expiry on; earlier if the expiry moved back (the state was reset,
            // and newer events came with earlier times).
            Some(expires) if entry.ttl_queued.is_none_or(|queued| queued <= time || queued > expires) => {
                entry.ttl_queued = Some(expires);
                step.schedule(expires, key.clone());
            }
            _ => {}
        }
        // Timers deleted (or cleared) in the same visit need no queue entry.
        for at in scheduled.drain(..) {
            if entry.timers.contains(&at) {
                step.schedule(at, key.clone());
            }
        }
        for at in processing_scheduled.drain(..) {
            if entry.processing.contains(&at) {
                queue.push(Reverse((at, key.clone())));
            }
        }
        // An event-time timer a processing-time callback set for the current time fires in
        // the step of that time, once the frontier passes it (events of that time may come).
        if processing.is_some() && entry.timers.contains(&time) {
            step.schedule(time, key.clone());
        }
        for (value, diff) in output.drain(..) {
            step.give(value, diff);
        }
        for (value, diff) in side.drain(..) {
            step.side(value, diff);
        }
        if entry.timers.is_empty() && entry.processing.is_empty() && entry.state == F::State::default() {
            holds.release(entry.since);
            keys.remove(key);
        }
    }
}

impl<K, V, F> TemporalLogic for ProcessLogic<K, V, F>
where
    K: ExchangeData,
    V: ExchangeData,
    F: KeyedProcessFunction<K, V>,
{
    // User state may reflect any earlier input of its key.
    const REPLAY_EXACT: bool = false;

    type Input = Event<K, V>;
    type Timer = K;
    type Output = F::Output;
    type Late = (String, F::Output);

    fn step(
        &mut self,
        inputs: &mut Vec<(Self::Input, isize)>,
        timers: &mut Vec<Self::Timer>,
        step: &mut Step<'_, Self>,
    ) {
        let time = step.time();
        let mut keyed = std::mem::take(&mut self.keyed);
        keyed.extend(inputs.drain(..).map(|(event, diff)| (event.key.clone(), Some(event), diff)));
        keyed.extend(timers.drain(..).map(|key| (key, None, 0)));
        // By key, then (event time, value); a key's timer visits sort last (`None` orders
        // first, so compare on the reverse) and change nothing about the order of its events.
        keyed.sort_unstable_by(|(ka, ea, _), (kb, eb, _)| {
            ka.cmp(kb).then_with(|| match (ea, eb) {
                (Some(a), Some(b)) => (a.time, &a.value).cmp(&(b.time, &b.value)),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            })
        });
        let mut start = 0;
        while start < keyed.len() {
            let mut end = start + 1;
            while end < keyed.len() && keyed[end].0 == keyed[start].0 {
                end += 1;
            }
            let key = keyed[start].0.clone();
            self.visit(&key, &keyed[start..end], time, None, step);
            start = end;
        }
        keyed.clear();
        self.keyed = keyed;
    }

    fn release(&mut self, _frontier: Option<Time>) {}

    fn live_entries(&self) -> usize {
        self.keys.len()
    }

    fn oldest(&self) -> Option<Time> {
        self.holds.oldest()
    }

    const CLOCK: bool = true;

    fn on_clock(&mut self, step: &mut Step<'_, Self>) {
        // Called at every activation: no clock read for a function without processing timers.
        if self.processing.is_empty() {
            return;
        }
        let now = self.clock.now();
        let mut due = Vec::new();
        while self.processing.peek().is_some_and(|Reverse((at, _))| *at <= now) {
            let Reverse(timer) = self.processing.pop().expect("peeked");
            due.push(timer);
        }
        // In clock order, then by key: the same whatever order they were set in.
        due.sort_unstable();
        due.dedup();
        let time = step.time();
        for (at, key) in due {
            self.visit(&key, &[], time, Some(at), step);
        }
    }

    fn clock_wakeup(&self) -> Option<Duration> {
        let Reverse((at, _)) = self.processing.peek()?;
        Some(Duration::from_millis(at.saturating_sub(self.clock.now())))
    }

    // User state is serde data: checkpoints hold it, and a restore need not replay.
    const SNAPSHOTS: bool = true;

    fn save(&self, timers: Vec<(Time, &Self::Timer)>) -> Result<Vec<u8>, String> {
        bincode::serialize(&(&self.keys, &self.holds, timers)).map_err(|e| e.to_string())
    }

    fn load(&mut self, parts: &[&[u8]], keep: &dyn Fn(u64) -> bool) -> Result<Vec<(Time, Self::Timer)>, String> {
        type Saved<K, S> = (FastMap<K, Entry<S>>, Holds, Vec<(Time, K)>);
        let mut all_timers = Vec::new();
        for part in parts {
            let (keys, _, timers): Saved<K, F::State> = bincode::deserialize(part).map_err(|e| e.to_string())?;
            for (key, entry) in keys.into_iter().filter(|(key, _)| keep(key.hashed())) {
                self.holds.hold(entry.since);
                self.processing.extend(entry.processing.iter().map(|at| Reverse((*at, key.clone()))));
                self.keys.insert(key, entry);
            }
            all_timers.extend(timers.into_iter().filter(|(_, key)| keep(key.hashed())));
        }
        Ok(all_timers)
    }
}
