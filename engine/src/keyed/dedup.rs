//! Deduplication by key within a horizon: the first (or last) occurrence of each key, by
//! event time (DESIGN §4–5; the shape of Nexmark q18).
//!
//! ```
//! use std::time::Duration;
//! use tideline::prelude::*;
//! use tideline::source::{SourceConfig, memory};
//!
//! let events = vec![
//!     Event::new(1_000, 7u32, 'a'),
//!     Event::new(1_200, 7, 'b'), // within 1 s of the kept 'a': a duplicate
//!     Event::new(1_500, 8, 'c'),
//!     Event::new(2_100, 7, 'd'), // 1.1 s after 'a': kept anew
//! ];
//! let kept = tideline::runtime::collect(2, move |scope| {
//!     let events = events.clone();
//!     memory::from_iter(scope, SourceConfig::new("events"), move || events.into_iter())
//!         .data
//!         .dedup(Duration::from_secs(1))
//!         .build()
//! });
//! let values: Vec<char> = kept.iter().map(|(event, _time, _diff)| event.value).collect();
//! assert_eq!(values, vec!['a', 'c', 'd']);
//! ```
//!
//! # Event time
//!
//! Per key, the distinct events (identical events count once) are ordered by
//! `(event time, value)` and cut into *horizon groups*: the first group starts at the key's
//! earliest event; a group starting at time `a` holds the events with times in
//! `[a, a + within)`, and the next group starts at the first event at or after `a + within`.
//! [`Keep::First`] keeps each group's first event (the smallest `(time, value)`), so an event
//! less than `within` after a kept one is a duplicate; [`Keep::Last`] keeps each group's last
//! event (the largest `(time, value)`). Ties are broken by the value's order.
//!
//! Let `R≤τ` be the input records at dataflow times `≤ τ`. With [`Emit::Updates`] the output
//! as of `τ` is the kept event of every group of `R≤τ`. With [`Emit::Final`] (the default)
//! it is, for [`Keep::Last`], the kept events of the groups whose horizon has passed
//! (`a + within - 1 ≤ τ`): each appears at its group's last instant, once no on-time record
//! can join the group. For [`Keep::First`] the two modes coincide: a group's first event is
//! settled at its own time, since an on-time record cannot precede it. Either way the output
//! is a deterministic function of the input collection: identical for any number of workers.
//!
//! # Late data
//!
//! A record accepted late by its source arrives at the watermark `W` with event time `t < W`.
//! It may join a group (and become its first or last event), or start a new group that
//! takes over the groups starting less than `within` after it, and so on down the key's
//! groups: the output retracts the kept events that changed at `W` and inserts the new ones.
//! A record at dataflow time `τ > t + allowed_lateness` is too late: it goes to the late
//! output ([`DedupCollection::build_with_late`]) and is counted in
//! [`StateMetrics::late_skipped`]. Retractions (negative diffs) are not applied either: they
//! go to the late output too. Source collections never carry retractions.
//!
//! # State
//!
//! Per key: the groups whose horizon plus the allowed lateness has not passed (start, first
//! and last event), the events a late record could still promote to the start of a group
//! (those after `frontier - allowed_lateness + within`: none when `within` is at least the
//! lateness), and the latest event before them. A group is released when the frontier passes
//! `a + within + allowed_lateness - 1`, and a key with it when it has no group left, without
//! any retraction downstream. A record costs `O(log n)`; a late record that starts a group
//! also re-forms the groups after it, at most `allowed_lateness / within + 1`. Live entries
//! (groups and retained events) are reported to [`StateMetrics`] if one is attached.
//!
//! # Checkpointing
//!
//! Dedup state is a function of the input records of live groups; a checkpoint records those
//! inputs (DESIGN §8).

use std::collections::BTreeMap;
use std::ops::Bound::Excluded;
use std::sync::Arc;
use std::time::Duration;

use differential_dataflow::VecCollection;
use differential_dataflow::hashable::Hashable;

use crate::error::{Error, Result};
use crate::runtime::ExchangeData;
use crate::runtime::metrics::StateMetrics;
use crate::state::FastMap;
use crate::state::driver::{KeyedLogic, StepOutput, keyed_operator, split_applicable};
use crate::time::{Event, Time, millis};
use crate::window::Emit;

/// Which occurrence of a key [`Dedup`] keeps in each horizon group.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Keep {
    /// The group's earliest event: later ones within the horizon are duplicates.
    #[default]
    First,
    /// The group's latest event.
    Last,
}

/// Deduplication on collections of [`Event`]s.
///
/// The exact definition, emission, late data and state: see the
/// [module documentation](self).
pub trait Dedup<'scope, K, V> {
    /// Deduplicates each key's events within horizon `within`. Panics if `within` is zero;
    /// use [`Dedup::try_dedup`] for horizons that come from user input.
    fn dedup(self, within: Duration) -> DedupCollection<'scope, K, V>;

    /// Deduplicates each key's events within `within`, or an error if it is less than 1ms.
    fn try_dedup(self, within: Duration) -> Result<DedupCollection<'scope, K, V>>;
}

impl<'scope, K, V> Dedup<'scope, K, V> for VecCollection<'scope, Time, Event<K, V>>
where
    K: ExchangeData,
    V: ExchangeData,
{
    fn dedup(self, within: Duration) -> DedupCollection<'scope, K, V> {
        self.try_dedup(within).expect("dedup horizon must be at least 1ms")
    }

    fn try_dedup(self, within: Duration) -> Result<DedupCollection<'scope, K, V>> {
        let within = millis(within);
        if within == 0 {
            return Err(Error::Config("dedup horizon must be at least 1ms".into()));
        }
        Ok(DedupCollection {
            events: self,
            within,
            keep: Keep::First,
            emit: Emit::Final,
            allowed_lateness: 0,
            name: None,
            state: None,
        })
    }
}

/// A deduplication, configured fluently and then built.
pub struct DedupCollection<'scope, K: 'static, V: 'static> {
    events: VecCollection<'scope, Time, Event<K, V>>,
    within: u64,
    keep: Keep,
    emit: Emit,
    allowed_lateness: u64,
    name: Option<String>,
    state: Option<Arc<StateMetrics>>,
}

impl<'scope, K, V> DedupCollection<'scope, K, V>
where
    K: ExchangeData,
    V: ExchangeData,
{
    /// Which occurrence to keep (default [`Keep::First`]).
    pub fn keep(mut self, keep: Keep) -> Self {
        self.keep = keep;
        self
    }

    /// Sets the emission mode (default [`Emit::Final`]).
    pub fn emit(mut self, emit: Emit) -> Self {
        self.emit = emit;
        self
    }

    /// Keeps each group's state for `lateness` after its horizon, to apply late corrections.
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

    /// Reports live entries (groups and retained events) and too-late records to `metrics`.
    pub fn state_metrics(mut self, metrics: Arc<StateMetrics>) -> Self {
        self.state = Some(metrics);
        self
    }

    /// The kept events, each with multiplicity one.
    pub fn build(self) -> VecCollection<'scope, Time, Event<K, V>> {
        self.build_with_late().0
    }

    /// The kept events, and the records that could not be applied, unchanged: those too late
    /// (at a time after `event time + allowed_lateness`) and retractions.
    pub fn build_with_late(
        self,
    ) -> (VecCollection<'scope, Time, Event<K, V>>, VecCollection<'scope, Time, Event<K, V>>) {
        let DedupCollection { events, within, keep, emit, allowed_lateness, name, state } = self;
        let name = name.unwrap_or_else(|| format!("Dedup(within={within}ms, keep={keep:?})"));
        let (applicable, late) = split_applicable(events, &name, allowed_lateness, state.clone());
        let logic = DedupLogic {
            within,
            allowed_lateness,
            keep,
            emit,
            keys: FastMap::default(),
            expiries: BTreeMap::new(),
            prunes: BTreeMap::new(),
            dirty: Vec::new(),
            swallowed: Vec::new(),
            live: 0,
        };
        let kept = keyed_operator(applicable, &name, |event: &Event<K, V>| event.key.hashed(), logic, state);
        (kept, late)
    }
}

/// One horizon group `[start, start + within)` of a key.
struct Group<V> {
    /// The value of the group's first event (at the group's start).
    first: V,
    /// The group's last event.
    last: (Time, V),
    /// The event downstream currently holds for this group, if any.
    emitted: Option<(Time, V)>,
}

struct KeyState<V> {
    /// Groups by start.
    groups: BTreeMap<Time, Group<V>>,
    /// Retained events: every event a late record could still make the start of a group.
    events: BTreeMap<Time, Values<V>>,
    /// The latest event no longer retained.
    latest_pruned: Option<(Time, V)>,
    /// The prune bucket the key was last filed under.
    prune_bucket: Option<Time>,
}

impl<V> Default for KeyState<V> {
    fn default() -> Self {
        KeyState { groups: BTreeMap::new(), events: BTreeMap::new(), latest_pruned: None, prune_bucket: None }
    }
}

struct DedupLogic<K, V> {
    within: u64,
    allowed_lateness: u64,
    keep: Keep,
    emit: Emit,
    keys: FastMap<K, KeyState<V>>,
    /// When groups may be released: `(key, start)` by `start + within + allowed_lateness - 1`.
    expiries: BTreeMap<Time, Vec<(K, Time)>>,
    /// Keys with retained events, by event time.
    prunes: BTreeMap<Time, Vec<K>>,
    /// Groups whose kept event may have changed in the current step.
    dirty: Vec<(K, Time)>,
    swallowed: Vec<Time>,
    /// Groups plus retained events.
    live: usize,
}

impl<K: ExchangeData, V: ExchangeData> DedupLogic<K, V> {
    /// Applies one event. Keeps the invariant: a key's groups are exactly the horizon groups
    /// of all its applied events.
    fn insert(&mut self, time: Time, event: Event<K, V>, out: &mut StepOutput<(K, Time), Event<K, V>>) {
        let Event { time: t, key, value } = event;
        let within = self.within;
        let state = self.keys.entry(key.clone()).or_default();
        // An event that the next release would prune anyway is not retained: it only counts
        // as the latest pruned event. `time` is at most every future frontier and step time,
        // so `prunable` against it is what `release` would decide. (Events at a time that
        // already has retained events stay together with them.)
        if !prunable(t, Some(time), within, self.allowed_lateness) || state.events.contains_key(&t) {
            if !state.events.entry(t).or_default().insert(value.clone()) {
                return; // an identical event is retained: nothing changes
            }
            self.live += 1;
            // Keys to prune are filed by buckets of event time (by the bucket's last instant, so
            // a bucket is pruned only once all of it may be), once per key and bucket.
            let bucket = t | (PRUNE_BUCKET_MS - 1);
            if state.prune_bucket != Some(bucket) {
                state.prune_bucket = Some(bucket);
                self.prunes.entry(bucket).or_default().push(key.clone());
            }
        } else if state.latest_pruned.as_ref().is_none_or(|p| (p.0, &p.1) < (t, &value)) {
            state.latest_pruned = Some((t, value.clone()));
        }

        // Inside an existing group: only its first or last event can change.
        if let Some((start, group)) = state.groups.range_mut(..=t).next_back()
            && t < start.saturating_add(within)
        {
            // Mark the group dirty only if what it shows can change now: its first event
            // (`Keep::First`), or its last one (`Keep::Last`; in `Final` mode only once its
            // horizon has passed, before that its timer will show it).
            let mut changed = false;
            if t == *start && value < group.first {
                group.first = value.clone();
                changed |= self.keep == Keep::First;
            }
            if (t, &value) > (group.last.0, &group.last.1) {
                group.last = (t, value);
                changed |=
                    self.keep == Keep::Last && (self.emit == Emit::Updates || start.saturating_add(within) - 1 <= time);
            }
            if changed {
                self.dirty.push((key, *start));
            }
            return;
        }

        // `t` starts a group. It takes over the groups starting within its horizon, and the
        // next group starts at the first event after it; repeat until a group starts where
        // one started before: from there on, the groups are unchanged.
        //
        // Every event read here is retained: group starts after the first are at or after
        // `t + within`, and `t ≥ frontier - allowed_lateness` (the record is not too late),
        // while events are pruned only below `frontier - allowed_lateness + within`.
        //
        // The new event may not be retained (see above): it is then the first group's start
        // and a candidate for its last event. No other event has time `t` (a group would
        // cover `t`), so it is also the group's first event.
        let mut start = t;
        let mut first = state.events.get(&t).and_then(Values::first).unwrap_or(&value).clone();
        let mut new_event = Some((t, value));
        loop {
            let end = start.saturating_add(within);
            self.swallowed.clear();
            if end > start {
                self.swallowed.extend(state.groups.range((Excluded(start), Excluded(end))).map(|(s, _)| *s));
            }
            for old in self.swallowed.drain(..) {
                let group = state.groups.remove(&old).expect("swallowed group is live");
                self.live -= 1;
                if let Some((time, value)) = group.emitted {
                    out.give(Event::new(time, key.clone(), value), -1);
                }
            }
            // The group's last event: the latest event before `end`, retained or pruned.
            let retained = state
                .events
                .range(start..end)
                .next_back()
                .map(|(time, values)| (*time, values.last().expect("retained times have events").clone()));
            let mut last = match (retained, new_event.take()) {
                (Some(retained), Some(new)) => retained.max(new),
                (Some(event), None) | (None, Some(event)) => event,
                (None, None) => unreachable!("a group's start is retained or the new event"),
            };
            if let Some(pruned) = &state.latest_pruned
                && pruned.0 >= start
                && pruned.0 < end
                && *pruned > last
            {
                last = pruned.clone();
            }
            state.groups.insert(start, Group { first, last, emitted: None });
            self.live += 1;
            self.dirty.push((key.clone(), start));
            if self.keep == Keep::Last && self.emit == Emit::Final && end - 1 > time {
                out.schedule(end - 1, (key.clone(), start));
            }
            // Filed by bucket (rounded up), so that one expiry entry serves many groups: a group
            // released a little later than it could be changes nothing downstream.
            let release = (end.saturating_add(self.allowed_lateness) - 1) | (PRUNE_BUCKET_MS - 1);
            self.expiries.entry(release).or_default().push((key.clone(), start));

            let Some((next, values)) = state.events.range(end..).next() else { break };
            if state.groups.contains_key(next) {
                break;
            }
            start = *next;
            first = values.first().expect("retained times have events").clone();
        }
    }
}

/// Width of the time buckets retained events are pruned by (a power of two).
const PRUNE_BUCKET_MS: Time = 64;

/// The distinct values of a key's events at one time, sorted: almost always one.
struct Values<V>(Vec<V>);

impl<V> Default for Values<V> {
    fn default() -> Self {
        Values(Vec::new())
    }
}

impl<V: Ord> Values<V> {
    /// Adds `value`; false if it was present.
    fn insert(&mut self, value: V) -> bool {
        match self.0.binary_search(&value) {
            Ok(_) => false,
            Err(position) => {
                self.0.insert(position, value);
                true
            }
        }
    }

    fn first(&self) -> Option<&V> {
        self.0.first()
    }

    fn last(&self) -> Option<&V> {
        self.0.last()
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn into_iter(self) -> std::vec::IntoIter<V> {
        self.0.into_iter()
    }
}

/// Whether a retained event at `t` can be pruned: no record at or after `frontier` can make
/// it the start of a group, since new group starts are at a late record's own time or at or
/// after `frontier - allowed_lateness + within`. (The latest pruned event is still kept, as
/// the last event of a group a late record may start before it.)
fn prunable(t: Time, frontier: Option<Time>, within: u64, allowed_lateness: u64) -> bool {
    frontier.is_none_or(|f| u128::from(t) + u128::from(allowed_lateness) < u128::from(f) + u128::from(within))
}

impl<K: ExchangeData, V: ExchangeData> KeyedLogic for DedupLogic<K, V> {
    type Input = Event<K, V>;
    type Timer = (K, Time);
    type Output = Event<K, V>;

    fn step(
        &mut self,
        time: Time,
        inputs: Vec<(Event<K, V>, isize)>,
        timers: Vec<(K, Time)>,
        out: &mut StepOutput<(K, Time), Event<K, V>>,
    ) {
        for (event, _diff) in inputs {
            self.insert(time, event, out);
        }
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.extend(timers);
        dirty.sort_unstable();
        dirty.dedup();
        for (key, start) in dirty.drain(..) {
            let Some(group) = self.keys.get_mut(&key).and_then(|state| state.groups.get_mut(&start)) else {
                continue;
            };
            let now = match self.keep {
                Keep::First => Some((start, group.first.clone())),
                Keep::Last => match self.emit {
                    Emit::Updates => Some(group.last.clone()),
                    Emit::Final => (start.saturating_add(self.within) - 1 <= time).then(|| group.last.clone()),
                },
            };
            if now != group.emitted {
                if let Some((t, value)) = group.emitted.take() {
                    out.give(Event::new(t, key.clone(), value), -1);
                }
                if let Some((t, value)) = &now {
                    out.give(Event::new(*t, key.clone(), value.clone()), 1);
                }
                group.emitted = now;
            }
        }
        self.dirty = dirty;
    }

    fn release(&mut self, frontier: Option<Time>) {
        // Prune retained events no late record can promote.
        let (within, lateness) = (self.within, self.allowed_lateness);
        while let Some(entry) = self.prunes.first_entry() {
            if !prunable(*entry.key(), frontier, within, lateness) {
                break;
            }
            let keys = entry.remove();
            for key in keys {
                let Some(state) = self.keys.get_mut(&key) else { continue };
                while let Some(first) = state.events.first_entry() {
                    let t = *first.key();
                    if !prunable(t, frontier, within, lateness) {
                        break;
                    }
                    let values = first.remove();
                    self.live -= values.len();
                    let latest = (t, values.into_iter().next_back().expect("retained times have events"));
                    if state.latest_pruned.as_ref().is_none_or(|p| *p < latest) {
                        state.latest_pruned = Some(latest);
                    }
                }
            }
        }
        // Release groups no record can reach any more: once the frontier passes
        // `start + within + L - 1`, every record that is not too late has
        // `t ≥ frontier - L ≥ start + within`, so it can neither join the group nor start a
        // group before it.
        while let Some(entry) = self.expiries.first_entry() {
            if frontier.is_some_and(|f| f <= *entry.key()) {
                break;
            }
            for (key, start) in entry.remove() {
                let Some(state) = self.keys.get_mut(&key) else { continue };
                if state.groups.remove(&start).is_some() {
                    self.live -= 1;
                }
                if state.groups.is_empty() {
                    // Every event belongs to a group, so once all of a key's groups are
                    // released its retained events can no longer matter either (pruning, done
                    // in buckets of event time, may not have reached them yet).
                    self.live -= state.events.values().map(Values::len).sum::<usize>();
                    self.keys.remove(&key);
                }
            }
        }
    }

    fn live_entries(&self) -> usize {
        self.live
    }
}
