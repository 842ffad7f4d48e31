//! The keyed operator behind the interval and window joins.
//!
//! Both joins reduce to the same problem once each record is assigned to its *groups* (the key
//! for interval joins, the key and a window for window joins): within a group, a left record at
//! event time `a` and a right record at event time `b` match when `lower ≤ b − a ≤ upper`.
//! A family-specific pre-stage ([`prepare`]) assigns groups, retimes records (`Final` window
//! joins move them to the window's last instant), splits off too-late records, and computes for
//! each record two times that only depend on its group and event time:
//!
//! - `close`: from this dataflow time on, the record is reported unmatched (outer joins) if it has
//!   no partner;
//! - `release`: the last dataflow time at which a partner of the record can arrive; its state
//!   is dropped once the frontier has passed it. The family guarantees that no admitted update
//!   of a partner arrives after it, and that `release` does not decrease with event time within
//!   a group and side. An admitted update of the record itself may arrive later (a retraction):
//!   it re-creates the record's entry with its own count, which, all partners being held still
//!   and final, updates pairs and unmatched rows exactly (both are linear in the count), and
//!   is released again at once.
//!
//! The keyed logic ([`temporal_join`], on the temporal driver) applies, once the frontier has
//! passed a time, that time's updates in order and emits the change of the join's output at
//! that time: new pairs (`ΔL ⋈ R_old + L_new ⋈ ΔR`), and for outer sides the change of
//! each affected record's unmatched row. The output is thereby a deterministic function of the
//! timestamped inputs, identical for any number of workers.

use std::collections::hash_map::Entry as HashEntry;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use differential_dataflow::consolidation::consolidate;
use differential_dataflow::hashable::Hashable;
use differential_dataflow::{AsCollection, VecCollection};
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use crate::runtime::ExchangeData;
use crate::runtime::metrics::StateMetrics;
use crate::state::FastMap;
use crate::state::driver::{Driven, Holds, Side, Step, TemporalLogic, binary};
use crate::time::Time;
use crate::time::late::LatePolicy;

pub(crate) type Update<D> = (D, Time, isize);

/// One record of one side of a temporal join, assigned to a group.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub(crate) struct Item<G, V> {
    pub(crate) group: G,
    /// The record's event time: what the match condition compares.
    pub(crate) time: Time,
    pub(crate) value: V,
    /// From this dataflow time on, an unmatched record shows as an unmatched row.
    pub(crate) close: Time,
    /// The last dataflow time at which a partner of the record can arrive.
    pub(crate) release: Time,
}

/// The match condition and which sides are outer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shape {
    /// Partners satisfy `lower ≤ right.time − left.time ≤ upper`.
    pub(crate) lower: i64,
    pub(crate) upper: i64,
    pub(crate) outer_left: bool,
    pub(crate) outer_right: bool,
}

/// `time + by`, or `None` if that is negative; saturates at `Time::MAX`.
pub(crate) fn shift(time: Time, by: i64) -> Option<Time> {
    let shifted = i128::from(time) + i128::from(by);
    if shifted < 0 { None } else { Some(Time::try_from(shifted).unwrap_or(Time::MAX)) }
}

/// Event times `[lo, hi]` of partners of a record at `time`, for partners at `time + [lower, upper]`.
fn partner_range(time: Time, lower: i64, upper: i64) -> Option<(Time, Time)> {
    let hi = shift(time, upper)?;
    Some((shift(time, lower).unwrap_or(0), hi))
}

/// The family pre-stage: maps every record to the items it contributes (with their dataflow
/// times, possibly delayed) and says how many of its groups admitted it. A record no group
/// admits is late: counted in `metrics`, and sent unchanged to the returned late collection
/// unless the policy drops it.
pub(crate) fn prepare<'scope, D, G, V, L>(
    input: VecCollection<'scope, Time, D>,
    name: &str,
    metrics: Arc<StateMetrics>,
    policy: LatePolicy,
    mut logic: L,
) -> (StreamVec<'scope, Time, Update<Item<G, V>>>, VecCollection<'scope, Time, D>)
where
    D: ExchangeData,
    G: ExchangeData,
    V: ExchangeData,
    L: FnMut(&D, Time, &mut Vec<(Item<G, V>, Time)>) -> usize + 'static,
{
    let scope = input.inner.scope();
    let mut builder = OperatorBuilder::new(name.to_string(), scope);
    let mut input = builder.new_input(input.inner, Pipeline);
    let (items_output, items) = builder.new_output();
    let (late_output, late) = builder.new_output();
    let mut items_output = OutputBuilder::<_, CapacityContainerBuilder<Vec<Update<Item<G, V>>>>>::from(items_output);
    let mut late_output = OutputBuilder::<_, CapacityContainerBuilder<Vec<Update<D>>>>::from(late_output);
    builder.build(move |_capabilities| {
        let mut assigned = Vec::new();
        move |_frontiers| {
            let mut items_handle = items_output.activate();
            let mut late_handle = late_output.activate();
            let mut late = 0;
            input.for_each(|cap, data| {
                let mut items_session = items_handle.session(&cap);
                let mut too_late = Vec::new();
                for (record, at, diff) in data.drain(..) {
                    let admitted = logic(&record, at, &mut assigned);
                    items_session.give_iterator(assigned.drain(..).map(|(item, time)| (item, time, diff)));
                    if admitted == 0 {
                        late += 1;
                        if policy == LatePolicy::SideOutput {
                            too_late.push((record, at, diff));
                        }
                    }
                }
                if !too_late.is_empty() {
                    late_handle.session(&cap).give_container(&mut too_late);
                }
            });
            metrics.add_late_skipped(late);
        }
    });
    (items, late.as_collection())
}

#[derive(Debug)]
struct Entry {
    /// The record's multiplicity.
    count: isize,
    /// The summed multiplicities of its partners on the other side.
    partners: isize,
    close: Time,
    release: Time,
    /// The dataflow time it arrived at (what at-least-once sources may not acknowledge while
    /// it is held).
    since: Time,
}

impl Entry {
    /// The multiplicity of the record's unmatched row, if the record is closed.
    fn unmatched(&self, closed: bool) -> isize {
        if closed && self.partners <= 0 { self.count } else { 0 }
    }
}

/// One side's records of a group, sorted by (event time, value). Most groups hold a handful of
/// records arriving roughly in time order, so a sorted deque beats nested maps (whose nodes
/// allocate room for eleven entries each) in both time and memory.
struct SideState<V> {
    entries: VecDeque<(Time, V, Entry)>,
}

impl<V> Default for SideState<V> {
    fn default() -> Self {
        SideState { entries: VecDeque::new() }
    }
}

impl<V: Ord> SideState<V> {
    fn search(&self, time: Time, value: &V) -> Result<usize, usize> {
        self.entries.binary_search_by(|(t, v, _)| (*t, v).cmp(&(time, value)))
    }

    fn get(&self, time: Time, value: &V) -> Option<&Entry> {
        self.search(time, value).ok().map(|i| &self.entries[i].2)
    }

    /// Entries with event times in `[lo, hi]`.
    fn range_mut(&mut self, lo: Time, hi: Time) -> impl Iterator<Item = &mut (Time, V, Entry)> {
        let start = self.entries.partition_point(|(t, _, _)| *t < lo);
        let end = self.entries.partition_point(|(t, _, _)| *t <= hi);
        self.entries.range_mut(start..end.max(start))
    }

    /// Adds `diff` to the record's count, creating it with `entry` if absent; `found` is
    /// [`SideState::search`]'s answer for the record, unchanged since. Returns the entry it
    /// removed, if its count fell to zero.
    fn update(
        &mut self,
        found: Result<usize, usize>,
        time: Time,
        value: V,
        diff: isize,
        entry: impl FnOnce() -> Entry,
    ) -> Option<Entry> {
        match found {
            Err(position) => {
                self.entries.insert(position, (time, value, entry()));
                None
            }
            Ok(found) => {
                self.entries[found].2.count += diff;
                if self.entries[found].2.count == 0 {
                    self.entries.remove(found).map(|(_, _, entry)| entry)
                } else {
                    None
                }
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

struct Group<V1, V2> {
    left: SideState<V1>,
    right: SideState<V2>,
    /// The latest release time the group is filed under in `JoinState::expiry`: a record
    /// releasable no later is released then (a little late at worst, which changes nothing
    /// downstream), so the group is filed once per release time, not once per record. (Filing
    /// times before the time being processed may have been handled already: those do not
    /// count.)
    filed: Option<Time>,
}

impl<V1, V2> Default for Group<V1, V2> {
    fn default() -> Self {
        Group { left: SideState::default(), right: SideState::default(), filed: None }
    }
}

/// A record of an outer side whose unmatched row may appear at a later time.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Closing<G, V1, V2> {
    Left(G, Time, V1),
    Right(G, Time, V2),
}

struct JoinState<G, V1, V2> {
    shape: Shape,
    groups: FastMap<G, Group<V1, V2>>,
    /// Groups with entries to release at (after) each time; may hold stale duplicates.
    expiry: BTreeMap<Time, Vec<G>>,
    live: usize,
    holds: Holds,
}

/// Whether the frontier has passed `time`.
fn passed(time: Time, frontier: Option<Time>) -> bool {
    frontier.is_none_or(|f| time < f)
}

/// Where the join emits a row: `(group, left, right, diff)`.
type Emit<'a, G, V1, V2> = dyn FnMut(&G, Option<(Time, &V1)>, Option<(Time, &V2)>, isize) + 'a;

impl<G: ExchangeData, V1: ExchangeData, V2: ExchangeData> JoinState<G, V1, V2> {
    /// Applies the updates and closings of time `at`, emits the output's change at `at`, and
    /// returns the closings it files for later times.
    fn process(
        &mut self,
        at: Time,
        (mut left, mut right): (Vec<(Item<G, V1>, isize)>, Vec<(Item<G, V2>, isize)>),
        (close_left, close_right): (Vec<(G, Time, V1)>, Vec<(G, Time, V2)>),
        emit: &mut Emit<'_, G, V1, V2>,
    ) -> Vec<(Time, Closing<G, V1, V2>)> {
        let shape = self.shape;
        // Consolidation only matters when updates may cancel; insert-only batches (the common
        // case) are applied as they come, which gives the same output.
        if left.iter().any(|(_, diff)| *diff < 0) {
            consolidate(&mut left);
        }
        if right.iter().any(|(_, diff)| *diff < 0) {
            consolidate(&mut right);
        }
        // The unmatched-row contribution of each affected record of an outer side, before `at`.
        let mut before_left: BTreeMap<(G, Time, V1), isize> = BTreeMap::new();
        let mut before_right: BTreeMap<(G, Time, V2), isize> = BTreeMap::new();
        let mut new_closings: Vec<(Time, Closing<G, V1, V2>)> = Vec::new();

        let (groups, live, expiry, holds) = (&mut self.groups, &mut self.live, &mut self.expiry, &mut self.holds);
        let mut left_side = Applying {
            at,
            partner_bounds: (shape.lower, shape.upper),
            outer: (shape.outer_left, shape.outer_right),
            groups: &mut *groups,
            sides: |group: &mut Group<V1, V2>| (&mut group.left, &mut group.right, &mut group.filed),
            before: (&mut before_left, &mut before_right),
            live: &mut *live,
            expiry: &mut *expiry,
            holds: &mut *holds,
        };
        left_side.apply(
            left,
            |close, g, time, value| new_closings.push((close, Closing::Left(g, time, value))),
            |g, l, r, d| emit(g, Some(l), Some(r), d),
        );
        // Left partners of a right record at `time - [lower, upper]`, i.e. `time + [-upper, -lower]`.
        let mut right_side = Applying {
            at,
            partner_bounds: (-shape.upper, -shape.lower),
            outer: (shape.outer_right, shape.outer_left),
            groups,
            sides: |group: &mut Group<V1, V2>| (&mut group.right, &mut group.left, &mut group.filed),
            before: (&mut before_right, &mut before_left),
            live,
            expiry,
            holds,
        };
        right_side.apply(
            right,
            |close, g, time, value| new_closings.push((close, Closing::Right(g, time, value))),
            |g, r, l, d| emit(g, Some(l), Some(r), d),
        );

        // Records closing at `at`: their unmatched rows appear now if they have no partner.
        for (g, time, value) in close_left {
            if let Some(e) = self.groups.get(&g).and_then(|s| s.left.get(time, &value)) {
                let before = e.unmatched(e.close < at);
                before_left.entry((g, time, value)).or_insert(before);
            }
        }
        for (g, time, value) in close_right {
            if let Some(e) = self.groups.get(&g).and_then(|s| s.right.get(time, &value)) {
                let before = e.unmatched(e.close < at);
                before_right.entry((g, time, value)).or_insert(before);
            }
        }

        for ((g, time, value), before) in before_left {
            let group = self.groups.get(&g);
            let after = group.and_then(|s| s.left.get(time, &value)).map_or(0, |e| e.unmatched(e.close <= at));
            if after != before {
                emit(&g, Some((time, &value)), None, after - before);
            }
        }
        for ((g, time, value), before) in before_right {
            let group = self.groups.get(&g);
            let after = group.and_then(|s| s.right.get(time, &value)).map_or(0, |e| e.unmatched(e.close <= at));
            if after != before {
                emit(&g, None, Some((time, &value)), after - before);
            }
        }

        new_closings
    }

    /// Drops the state of records whose release time the frontier has passed.
    fn release(&mut self, frontier: Option<Time>) {
        while let Some(entry) = self.expiry.first_entry() {
            if !passed(*entry.key(), frontier) {
                break;
            }
            for g in entry.remove() {
                let HashEntry::Occupied(mut group) = self.groups.entry(g) else { continue };
                let state = group.get_mut();
                self.live -= release_side(&mut state.left, frontier, &mut self.holds);
                self.live -= release_side(&mut state.right, frontier, &mut self.holds);
                if state.left.is_empty() && state.right.is_empty() {
                    group.remove();
                }
            }
        }
    }
}

/// Applying one side's updates of a time: "mine" is the side being applied, "other" the side
/// its records pair with. The same code serves both sides, with the sides swapped.
struct Applying<'a, G, V1, V2, Vm, Vo, S>
where
    S: Fn(&mut Group<V1, V2>) -> (&mut SideState<Vm>, &mut SideState<Vo>, &mut Option<Time>),
{
    at: Time,
    /// Partners of a record at `t` are the other side's records at `t + [lo, hi]`.
    partner_bounds: (i64, i64),
    /// Whether (mine, other) is an outer side.
    outer: (bool, bool),
    groups: &'a mut FastMap<G, Group<V1, V2>>,
    /// (mine, other, the group's filed release time) of a group.
    sides: S,
    /// The unmatched-row contributions before `at`, of (mine, other).
    before: (&'a mut BTreeMap<(G, Time, Vm), isize>, &'a mut BTreeMap<(G, Time, Vo), isize>),
    live: &'a mut usize,
    expiry: &'a mut BTreeMap<Time, Vec<G>>,
    holds: &'a mut Holds,
}

impl<G, V1, V2, Vm, Vo, S> Applying<'_, G, V1, V2, Vm, Vo, S>
where
    G: ExchangeData,
    Vm: ExchangeData,
    Vo: ExchangeData,
    S: Fn(&mut Group<V1, V2>) -> (&mut SideState<Vm>, &mut SideState<Vo>, &mut Option<Time>),
{
    /// Applies `updates` of mine: emits `pair(group, mine, other, diff)` for each change of a
    /// pair, and hands `closing(close, group, time, value)` each new record of an outer side
    /// that closes later.
    fn apply(
        &mut self,
        updates: Vec<(Item<G, Vm>, isize)>,
        mut closing: impl FnMut(Time, G, Time, Vm),
        mut pair: impl FnMut(&G, (Time, &Vm), (Time, &Vo), isize),
    ) {
        let at = self.at;
        let (outer_mine, outer_other) = self.outer;
        for (item, diff) in updates {
            let Item { group: g, time, value, close, release } = item;
            let (mine, other, filed) = (self.sides)(self.groups.entry(g.clone()).or_default());
            let found = mine.search(time, &value);
            let existing = found.ok().map(|i| &mine.entries[i].2);
            if outer_mine {
                let before = existing.map_or(0, |e| e.unmatched(e.close < at));
                self.before.0.entry((g.clone(), time, value.clone())).or_insert(before);
            }
            let exists = existing.is_some();
            let mut partners = 0;
            if let Some((lo, hi)) = partner_range(time, self.partner_bounds.0, self.partner_bounds.1) {
                for (other_time, other_value, partner) in other.range_mut(lo, hi) {
                    if outer_other {
                        let before = partner.unmatched(partner.close < at);
                        self.before.1.entry((g.clone(), *other_time, other_value.clone())).or_insert(before);
                    }
                    if partner.count != 0 {
                        pair(&g, (time, &value), (*other_time, other_value), diff * partner.count);
                    }
                    partner.partners += diff;
                    partners += partner.count;
                }
            }
            if !exists {
                *self.live += 1;
                self.holds.hold(at);
                if filed.is_none_or(|f| f < release || f < at) {
                    *filed = Some(release);
                    self.expiry.entry(release).or_default().push(g.clone());
                }
                if outer_mine && close > at {
                    closing(close, g.clone(), time, value.clone());
                }
            }
            let entry = || Entry { count: diff, partners, close, release, since: at };
            if let Some(removed) = mine.update(found, time, value, diff, entry) {
                *self.live -= 1;
                self.holds.release(removed.since);
            }
        }
    }
}

/// Releases the earliest entries of one side while their release time has passed; release times
/// do not decrease with event time within a group and side. Returns how many were released.
fn release_side<V>(side: &mut SideState<V>, frontier: Option<Time>, holds: &mut Holds) -> usize {
    let mut released = 0;
    while let Some((_, _, first)) = side.entries.front() {
        if !passed(first.release, frontier) {
            break;
        }
        let (_, _, entry) = side.entries.pop_front().expect("peeked");
        holds.release(entry.since);
        released += 1;
    }
    if side.entries.is_empty() {
        // Give the memory back: a group's deque may have grown for a burst.
        side.entries = VecDeque::new();
    }
    released
}

/// The keyed temporal join: exchanges both sides by group, and emits `result(group, left,
/// right)` rows — pairs, and unmatched rows of outer sides — as the frontier passes their times.
pub(crate) fn temporal_join<'scope, G, V1, V2, D, F>(
    left: StreamVec<'scope, Time, Update<Item<G, V1>>>,
    right: StreamVec<'scope, Time, Update<Item<G, V2>>>,
    shape: Shape,
    driven: Driven,
    result: F,
) -> VecCollection<'scope, Time, D>
where
    G: ExchangeData,
    V1: ExchangeData,
    V2: ExchangeData,
    D: ExchangeData,
    F: FnMut(&G, Option<(Time, &V1)>, Option<(Time, &V2)>) -> D + 'static,
{
    let state =
        JoinState { shape, groups: FastMap::default(), expiry: BTreeMap::new(), live: 0, holds: Holds::default() };
    let logic = JoinLogic { state, result };
    let (joined, _) = binary(
        left,
        right,
        driven,
        |item: &Item<G, V1>| item.group.hashed(),
        |item: &Item<G, V2>| item.group.hashed(),
        logic,
    );
    joined
}

struct JoinLogic<G, V1, V2, F> {
    state: JoinState<G, V1, V2>,
    result: F,
}

impl<G, V1, V2, D, F> TemporalLogic for JoinLogic<G, V1, V2, F>
where
    G: ExchangeData,
    V1: ExchangeData,
    V2: ExchangeData,
    D: ExchangeData,
    F: FnMut(&G, Option<(Time, &V1)>, Option<(Time, &V2)>) -> D + 'static,
{
    type Input = Side<Item<G, V1>, Item<G, V2>>;
    type Timer = Closing<G, V1, V2>;
    type Output = D;
    type Late = ();

    fn step(
        &mut self,
        inputs: &mut Vec<(Self::Input, isize)>,
        timers: &mut Vec<Self::Timer>,
        step: &mut Step<'_, Self>,
    ) {
        let at = step.time();
        let (mut left, mut right) = (Vec::new(), Vec::new());
        for (input, diff) in inputs.drain(..) {
            match input {
                Side::Left(item) => left.push((item, diff)),
                Side::Right(item) => right.push((item, diff)),
            }
        }
        let (mut close_left, mut close_right) = (Vec::new(), Vec::new());
        for closing in timers.drain(..) {
            match closing {
                Closing::Left(g, t, v) => close_left.push((g, t, v)),
                Closing::Right(g, t, v) => close_right.push((g, t, v)),
            }
        }
        let result = &mut self.result;
        let closings = self.state.process(at, (left, right), (close_left, close_right), &mut |g, l, r, diff| {
            step.give(result(g, l, r), diff)
        });
        for (close, closing) in closings {
            step.schedule(close, closing);
        }
    }

    fn release(&mut self, frontier: Option<Time>) {
        self.state.release(frontier);
    }

    fn live_entries(&self) -> usize {
        self.state.live
    }

    fn oldest(&self) -> Option<Time> {
        self.state.holds.oldest()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifted_times_clamp_and_saturate() {
        assert_eq!(shift(10, -3), Some(7));
        assert_eq!(shift(3, -10), None);
        assert_eq!(shift(Time::MAX, 1), Some(Time::MAX));
        assert_eq!(partner_range(10, -20, 5), Some((0, 15)));
        assert_eq!(partner_range(10, -20, -11), None);
    }
}
