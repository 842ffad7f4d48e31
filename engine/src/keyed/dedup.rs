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
//! Lateness is decided per horizon group (DESIGN §3). A record behind the watermark arrives at
//! the watermark `W` with event time `t < W`. If a group of its key covers `t` (`a ≤ t < a +
//! within`), the record joins it while the group is correctable — `W < a + within +
//! allowed_lateness` — and is late otherwise. If none does, it starts a group `[t, t + within)`
//! — which takes over the groups starting less than `within` after it, and so on down the key's
//! groups — unless that group would already have expired (`t + within + allowed_lateness ≤
//! W`): then it is late. Joining or re-forming groups retracts the kept events that changed at
//! `W` and inserts the new ones. [`Keep::First`] shows a group's first event as soon as it is
//! known, so a record behind the watermark that becomes a group's first event corrects it,
//! whatever the allowed lateness, as long as the group is correctable; [`Keep::Last`] with
//! [`Emit::Final`] shows the last event at the group's last instant, and a record joining a group
//! before then does so silently. Late records go to the late output
//! ([`DedupCollection::build_with_late`], per the [`LatePolicy`](crate::time::late::LatePolicy))
//! and are counted in [`StateMetrics::late_skipped`](crate::runtime::metrics::StateMetrics::late_skipped).
//! Retractions (negative diffs) are not applied: they go to the late output too (uncounted).
//! Source collections never carry retractions.
//!
//! # State
//!
//! Per key: the groups a record that is not late could still reach (start, first and last
//! event), the events a record behind the watermark could still promote to the start of a
//! group (those after `frontier - allowed_lateness`), and the latest event before them. A
//! group `[a, a + within)` takes records until `a + within + allowed_lateness - 1`; it is kept
//! `within` longer, until the frontier passes `a + 2·within + allowed_lateness - 1`, so that a
//! record of its horizon arriving in between is known to be late (a record after that is
//! late for its own horizon too), and a key is released with its last group, without any
//! retraction downstream. A record costs `O(log n)`; a record behind the watermark that starts
//! a group also re-forms the groups after it, at most `allowed_lateness / within + 2`. Live
//! entries (groups and retained events) are reported to the operator's
//! [`StateMetrics`](crate::runtime::metrics::StateMetrics).
//!
//! # Checkpointing
//!
//! A horizon group starts where its key's previous group ended, so a replay from a later time
//! would cut groups differently: in a checkpointed dataflow dedup holds the replay time at the
//! start, and a restore re-reads the whole input (see [`crate::checkpoint`]).

use std::collections::BTreeMap;
use std::ops::Bound::Excluded;
use std::time::Duration;

use differential_dataflow::AsCollection;
use differential_dataflow::VecCollection;
use differential_dataflow::hashable::Hashable;
use timely::dataflow::operators::Concat;
use timely::dataflow::operators::core::OkErr;

use crate::error::{Error, Result};
use crate::runtime::ExchangeData;
use crate::state::FastMap;
use crate::state::driver::{Holds, Step, TemporalLogic, unary};
use crate::state::{Temporal, temporal_builder};
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
        Ok(DedupCollection { events: self, within, keep: Keep::First, temporal: Temporal::default() })
    }
}

/// A deduplication, configured fluently (emission, allowed lateness, late policy, name,
/// metrics: [`TemporalBuilder`](crate::state::TemporalBuilder)) and then built.
pub struct DedupCollection<'scope, K: 'static, V: 'static> {
    events: VecCollection<'scope, Time, Event<K, V>>,
    within: u64,
    keep: Keep,
    temporal: Temporal,
}

temporal_builder!(DedupCollection<'scope, K, V>);

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

    /// The kept events, each with multiplicity one.
    pub fn build(self) -> VecCollection<'scope, Time, Event<K, V>> {
        self.build_with_late().0
    }

    /// The kept events, and the records that could not be applied, unchanged: late ones and
    /// retractions.
    pub fn build_with_late(
        self,
    ) -> (VecCollection<'scope, Time, Event<K, V>>, VecCollection<'scope, Time, Event<K, V>>) {
        let DedupCollection { events, within, keep, temporal } = self;
        let name = temporal.name_or(|| format!("Dedup(within={within}ms, keep={keep:?})"));
        let (insertions, retractions) = events.inner.ok_err::<Vec<_>, _, Vec<_>, _, _>(|(event, at, diff)| {
            if diff < 0 { Err((event, at, diff)) } else { Ok((event, at, diff)) }
        });
        let logic = DedupLogic {
            within,
            allowed_lateness: temporal.allowed_lateness,
            keep,
            emit: temporal.emit,
            keys: FastMap::default(),
            expiries: BTreeMap::new(),
            prunes: BTreeMap::new(),
            dirty: Vec::new(),
            swallowed: Vec::new(),
            live: 0,
            holds: Holds::default(),
        };
        let (kept, late) = unary(insertions, temporal.driven(name), |event: &Event<K, V>| event.key.hashed(), logic);
        (kept, late.inner.concat(retractions).as_collection())
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
    /// The dataflow time it was formed at (what at-least-once sources may not acknowledge).
    since: Time,
}

struct KeyState<V> {
    /// Groups by start.
    groups: BTreeMap<Time, Group<V>>,
    /// Retained events: every event a late record could still make the start of a group.
    events: BTreeMap<Time, Values<V>>,
    /// The latest event no longer retained, and the dataflow time it arrived at.
    latest_pruned: Option<(Time, V, Time)>,
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
    /// When groups may be released: `(key, start)` by `start + 2·within + allowed_lateness - 1`.
    expiries: BTreeMap<Time, Vec<(K, Time)>>,
    /// Keys with retained events, by event time.
    prunes: BTreeMap<Time, Vec<K>>,
    /// Groups whose kept event may have changed in the current step.
    dirty: Vec<(K, Time)>,
    swallowed: Vec<Time>,
    /// Groups plus retained events.
    live: usize,
    holds: Holds,
}

impl<K: ExchangeData, V: ExchangeData> DedupLogic<K, V> {
    /// Applies one event arriving at `time`, or reports it late. Keeps the invariant: a key's
    /// groups are exactly the horizon groups of all its applied events.
    fn insert(&mut self, time: Time, event: Event<K, V>, step: &mut Step<'_, Self>) {
        let Event { time: t, key, value } = event;
        let (within, lateness) = (self.within, self.allowed_lateness);
        let state = self.keys.entry(key.clone()).or_default();
        // Late unless the group covering `t` — or, if none does, the group `t` would start —
        // can still be corrected at `time`.
        let covering =
            state.groups.range(..=t).next_back().map(|(start, _)| *start).filter(|s| t < s.saturating_add(within));
        let start = covering.unwrap_or(t);
        if start.saturating_add(within).saturating_add(lateness) <= time {
            if state.groups.is_empty() && state.events.is_empty() && state.latest_pruned.is_none() {
                self.keys.remove(&key);
            }
            step.late(Event::new(t, key, value), 1);
            return;
        }
        // An event that the next release would prune anyway is not retained: it only counts
        // as the latest pruned event. `time` is at most every future frontier and step time,
        // so `prunable` against it is what `release` would decide. (Events at a time that
        // already has retained events stay together with them.)
        if !prunable(t, Some(time), lateness) || state.events.contains_key(&t) {
            let values = state.events.entry(t).or_insert_with(|| {
                self.holds.hold(time);
                Values { values: Vec::new(), at: time }
            });
            if !values.insert(value.clone()) {
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
            if let Some((_, _, at)) = state.latest_pruned.replace((t, value.clone(), time)) {
                self.holds.release(at);
            }
            self.holds.hold(time);
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
        // `t + within > time - allowed_lateness` (the record is not late), while events are
        // pruned only at or below `frontier - allowed_lateness`.
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
            let mut since = time;
            for old in self.swallowed.drain(..) {
                let group = state.groups.remove(&old).expect("swallowed group is live");
                self.live -= 1;
                self.holds.release(group.since);
                since = since.min(group.since);
                if let Some((time, value)) = group.emitted {
                    step.give(Event::new(time, key.clone(), value), -1);
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
            if let Some((pruned_time, pruned_value, _)) = &state.latest_pruned
                && *pruned_time >= start
                && *pruned_time < end
                && (*pruned_time, pruned_value) > (last.0, &last.1)
            {
                last = (*pruned_time, pruned_value.clone());
            }
            state.groups.insert(start, Group { first, last, emitted: None, since });
            self.holds.hold(since);
            self.live += 1;
            self.dirty.push((key.clone(), start));
            if self.keep == Keep::Last && self.emit == Emit::Final && end - 1 > time {
                step.schedule(end - 1, (key.clone(), start));
            }
            // Kept `within` after it can no longer be corrected, so that a record of its horizon
            // arriving then finds it and is late. Filed by bucket (rounded up), so that one
            // expiry entry serves many groups: a group released a little later than it could be
            // changes nothing downstream.
            let release =
                (end.saturating_add(within).saturating_add(self.allowed_lateness) - 1) | (PRUNE_BUCKET_MS - 1);
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

/// The distinct values of a key's events at one time, sorted (almost always one), and the
/// earliest dataflow time one of them arrived at.
struct Values<V> {
    values: Vec<V>,
    at: Time,
}

impl<V: Ord> Values<V> {
    /// Adds `value`; false if it was present.
    fn insert(&mut self, value: V) -> bool {
        match self.values.binary_search(&value) {
            Ok(_) => false,
            Err(position) => {
                self.values.insert(position, value);
                true
            }
        }
    }

    fn first(&self) -> Option<&V> {
        self.values.first()
    }

    fn last(&self) -> Option<&V> {
        self.values.last()
    }

    fn len(&self) -> usize {
        self.values.len()
    }
}

/// Whether a retained event at `t` can be pruned: no record arriving at or after `frontier`
/// can make it the start of a group. A record arriving at `τ ≥ frontier` is not late only if
/// its group ends after `τ - allowed_lateness`, and the group after it starts at or after that
/// end: at or after `frontier - allowed_lateness + 1`. (The latest pruned event is still kept,
/// as the last event of a group a record behind the watermark may start before it.)
fn prunable(t: Time, frontier: Option<Time>, allowed_lateness: u64) -> bool {
    frontier.is_none_or(|f| u128::from(t) + u128::from(allowed_lateness) <= u128::from(f))
}

impl<K: ExchangeData, V: ExchangeData> TemporalLogic for DedupLogic<K, V> {
    // A horizon group's start depends on the key's earlier groups: a replay from a later
    // time would cut groups differently.
    const REPLAY_EXACT: bool = false;

    type Input = Event<K, V>;
    type Timer = (K, Time);
    type Output = Event<K, V>;
    type Late = Event<K, V>;

    fn step(
        &mut self,
        inputs: &mut Vec<(Self::Input, isize)>,
        timers: &mut Vec<Self::Timer>,
        step: &mut Step<'_, Self>,
    ) {
        let time = step.time();
        for (event, _diff) in inputs.drain(..) {
            self.insert(time, event, step);
        }
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.append(timers);
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
                    step.give(Event::new(t, key.clone(), value), -1);
                }
                if let Some((t, value)) = &now {
                    step.give(Event::new(*t, key.clone(), value.clone()), 1);
                }
                group.emitted = now;
            }
        }
        self.dirty = dirty;
    }

    fn release(&mut self, frontier: Option<Time>) {
        // Prune retained events no record behind the watermark can promote.
        let lateness = self.allowed_lateness;
        while let Some(entry) = self.prunes.first_entry() {
            if !prunable(*entry.key(), frontier, lateness) {
                break;
            }
            let keys = entry.remove();
            for key in keys {
                let Some(state) = self.keys.get_mut(&key) else { continue };
                while let Some(first) = state.events.first_entry() {
                    let t = *first.key();
                    if !prunable(t, frontier, lateness) {
                        break;
                    }
                    let mut values = first.remove();
                    self.live -= values.len();
                    let latest = values.values.pop().expect("retained times have events");
                    if state.latest_pruned.as_ref().is_none_or(|p| (p.0, &p.1) < (t, &latest)) {
                        if let Some((_, _, at)) = state.latest_pruned.replace((t, latest, values.at)) {
                            self.holds.release(at);
                        }
                    } else {
                        self.holds.release(values.at);
                    }
                }
            }
        }
        // Release groups no record can reach any more: once the frontier passes
        // `start + 2·within + L - 1`, a record of the group's horizon (`t < start + within`) is
        // late for its own horizon too (`t + within + L ≤ frontier`), so the group need not be
        // known to find it late, and a record that is not late has `t ≥ start + within`: it
        // can neither join the group nor start a group before it.
        while let Some(entry) = self.expiries.first_entry() {
            if frontier.is_some_and(|f| f <= *entry.key()) {
                break;
            }
            for (key, start) in entry.remove() {
                let Some(state) = self.keys.get_mut(&key) else { continue };
                if let Some(group) = state.groups.remove(&start) {
                    self.live -= 1;
                    self.holds.release(group.since);
                }
                if state.groups.is_empty() {
                    // Every event belongs to a group, so once all of a key's groups are
                    // released its retained events can no longer matter either (pruning, done
                    // in buckets of event time, may not have reached them yet).
                    for values in state.events.values() {
                        self.live -= values.len();
                        self.holds.release(values.at);
                    }
                    if let Some((_, _, at)) = state.latest_pruned {
                        self.holds.release(at);
                    }
                    self.keys.remove(&key);
                }
            }
        }
    }

    fn live_entries(&self) -> usize {
        self.live
    }

    fn oldest(&self) -> Option<Time> {
        self.holds.oldest()
    }
}
