//! The window aggregation operators: a local pre-aggregation by pane, an exchange by key, and
//! the keyed window operator that emits results as the frontier passes their times.

use std::collections::{BTreeMap, BTreeSet};

use differential_dataflow::hashable::Hashable;
use differential_dataflow::{AsCollection, VecCollection};
use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::{Operator, OutputBuilder};

use crate::runtime::ExchangeData;
use crate::state::FastMap;
use crate::time::{Event, Time};
use crate::window::aggregate::Aggregator;
use crate::window::{Emit, Window, WindowResult, WindowedCollection};

/// Pre-aggregated updates of one key in one pane.
///
/// `time` is `None` when every update happened at or before the pane's last instant; in
/// `Final` mode those all land at the end of each window containing the pane, so their exact
/// times do not matter. Otherwise it is the exact time of the updates.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) struct PaneDelta<K, A> {
    key: K,
    pane: u64,
    time: Option<Time>,
    acc: A,
    count: i64,
}

type Update<D> = (D, Time, isize);

pub(crate) fn window_aggregate<'scope, K, V, A>(
    windowed: WindowedCollection<'scope, K, V>,
    aggregator: A,
) -> (VecCollection<'scope, Time, WindowResult<K, A::Output>>, VecCollection<'scope, Time, Event<K, V>>)
where
    K: ExchangeData,
    V: ExchangeData,
    A: Aggregator<V>,
{
    let WindowedCollection { events, spec, emit, allowed_lateness, name, state, pre_aggregate } = windowed;
    let name = name.unwrap_or_else(|| format!("Window(size={}ms, slide={}ms)", spec.size(), spec.slide()));

    // Stage 1 (local): assign records to panes, split off records too late for every window,
    // and pre-aggregate per (key, pane, time class) within each batch.
    let results_scope = events.inner.scope();
    let mut builder = OperatorBuilder::new(format!("{name}: pre-aggregate"), results_scope);
    let mut input = builder.new_input(events.inner, Pipeline);
    let (panes_output, panes) = builder.new_output();
    let (late_output, late) = builder.new_output();
    let mut panes_output = OutputBuilder::<
        _,
        timely::container::CapacityContainerBuilder<Vec<Update<PaneDelta<K, A::Acc>>>>,
    >::from(panes_output);
    let mut late_output =
        OutputBuilder::<_, timely::container::CapacityContainerBuilder<Vec<Update<Event<K, V>>>>>::from(late_output);
    let combiner = aggregator.clone();
    builder.build(move |_capabilities| {
        let mut combined: FastMap<(K, u64, Option<Time>), (A::Acc, i64)> = FastMap::default();
        let mut passthrough: Vec<Update<PaneDelta<K, A::Acc>>> = Vec::new();
        move |_frontiers| {
            let mut panes_handle = panes_output.activate();
            let mut late_handle = late_output.activate();
            let mut least: Option<Capability<Time>> = None;
            input.for_each(|cap, data| {
                let Some(time) = cap.least().copied() else { return };
                let mut too_late = Vec::new();
                for (event, at, diff) in data.drain(..) {
                    let pane = spec.pane_of(event.time);
                    if at >= spec.last_end_of_pane(pane).saturating_add(allowed_lateness) {
                        too_late.push((event, at, diff));
                        continue;
                    }
                    let class = if emit == Emit::Final && at <= spec.pane_max_time(pane) { None } else { Some(at) };
                    if pre_aggregate {
                        let slot = combined.entry((event.key, pane, class)).or_insert_with(|| (A::Acc::default(), 0));
                        combiner.add(&mut slot.0, &event.value, diff);
                        slot.1 += diff as i64;
                    } else {
                        let mut acc = A::Acc::default();
                        combiner.add(&mut acc, &event.value, diff);
                        passthrough.push((
                            PaneDelta { key: event.key, pane, time: class, acc, count: diff as i64 },
                            at,
                            1,
                        ));
                    }
                }
                if !too_late.is_empty() {
                    late_handle.session(&cap).give_container(&mut too_late);
                }
                if least.as_ref().is_none_or(|c| *c.time() > time) {
                    least = cap.retain_least(0);
                }
            });
            let Some(cap) = least else { return };
            let time = *cap.time();
            let mut session = panes_handle.session(&cap);
            for ((key, pane, class), (acc, count)) in combined.drain() {
                if count != 0 || !is_default(&acc) {
                    session.give((PaneDelta { key, pane, time: class, acc, count }, time, 1));
                }
            }
            session.give_iterator(passthrough.drain(..));
        }
    });

    // Stage 2 (by key): window state, emission as the frontier passes, release.
    let (worker, peers) = (results_scope.index(), results_scope.peers());
    // A record at time τ affects windows ending at most `size + allowed_lateness` later.
    crate::runtime::flow::group(results_scope)
        .register_retention(crate::runtime::flow::Retention::Bounded(spec.size().saturating_add(allowed_lateness)));
    let exchange = Exchange::new(|update: &Update<PaneDelta<K, A::Acc>>| update.0.key.hashed());
    let results = panes.unary_frontier(exchange, &name, move |_capability, _info| {
        let mut windows: BTreeMap<Time, WindowState<K, A::Acc>> = BTreeMap::new();
        let mut times: BTreeMap<Time, (Capability<Time>, BTreeSet<Time>)> = BTreeMap::new();
        let mut live_entries: usize = 0;
        let mut skipped: u64 = 0;
        move |(input, frontier), output| {
            input.for_each(|cap, data| {
                for (delta, _, _) in data.drain(..) {
                    let PaneDelta { key, pane, time: class, acc, count } = delta;
                    let mut key = Some(key);
                    let mut acc = Some(acc);
                    let mut windows_of_pane = spec.windows_of_pane(pane).peekable();
                    while let Some(window) = windows_of_pane.next() {
                        let last = windows_of_pane.peek().is_none();
                        let at = match (emit, class) {
                            (Emit::Final, None) => window.max_time(),
                            (Emit::Final, Some(t)) => t.max(window.max_time()),
                            (Emit::Updates, Some(t)) => t,
                            (Emit::Updates, None) => unreachable!("updates keep exact times"),
                        };
                        if at >= window.end.saturating_add(allowed_lateness) {
                            skipped += 1;
                            continue;
                        }
                        let state = windows.entry(window.end).or_insert_with(|| WindowState::new(window));
                        let k = if last { key.take().expect("key") } else { key.clone().expect("key") };
                        let a = if last { acc.take().expect("acc") } else { acc.clone().expect("acc") };
                        let (slot, created) = state.slot(k);
                        live_entries += created as usize;
                        let merge = |into: &mut A::Acc, from: A::Acc| aggregator.merge(into, from);
                        if state.slots[slot].pending.add(at, a, count, merge) {
                            match state.dirty.entry(at) {
                                std::collections::btree_map::Entry::Occupied(mut dirty) => {
                                    dirty.get_mut().push(slot as u32)
                                }
                                std::collections::btree_map::Entry::Vacant(dirty) => {
                                    // The first pending update of this window at `at`.
                                    dirty.insert(vec![slot as u32]);
                                    times
                                        .entry(at)
                                        .or_insert_with(|| (cap.delayed(&at, 0), BTreeSet::new()))
                                        .1
                                        .insert(window.end);
                                }
                            }
                        }
                    }
                }
            });

            // Emit every time the frontier has passed, in time order.
            while let Some(entry) = times.first_entry() {
                if frontier.less_equal(entry.key()) {
                    break;
                }
                let (at, (cap, ends)) = entry.remove_entry();
                let mut session = output.session(&cap);
                for end in ends {
                    let state = windows.get_mut(&end).expect("pending window is live");
                    let window = state.window;
                    for slot in state.dirty.remove(&at).unwrap_or_default() {
                        let entry = &mut state.slots[slot as usize];
                        let (time, acc, count) = entry.pending.pop_front().expect("a dirty slot has a pending update");
                        debug_assert_eq!(time, at, "pending updates are applied in time order");
                        let before = (entry.count != 0).then(|| aggregator.finish(&entry.acc, entry.count));
                        aggregator.merge(&mut entry.acc, acc);
                        entry.count += count;
                        let after = (entry.count != 0).then(|| aggregator.finish(&entry.acc, entry.count));
                        if before != after {
                            let key = &entry.key;
                            if let Some(value) = before {
                                session.give((WindowResult { window, key: key.clone(), value }, at, -1));
                            }
                            if let Some(value) = after {
                                session.give((WindowResult { window, key: key.clone(), value }, at, 1));
                            }
                        }
                    }
                }
            }

            // Release windows no future update can reach: the frontier has passed end + L - 1.
            while let Some(entry) = windows.first_entry() {
                let horizon = entry.get().window.end.saturating_add(allowed_lateness);
                if frontier.less_equal(&(horizon - 1)) {
                    break;
                }
                live_entries -= entry.get().slots.len();
                entry.remove();
            }
            if let Some(metrics) = &state {
                metrics.set(worker, peers, live_entries);
                metrics.add_late_skipped(std::mem::take(&mut skipped));
            }
        }
    });

    (results.as_collection(), late.as_collection())
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// One key's state in one window: the accumulator of emitted updates and the updates pending
/// emission, by output time.
struct Slot<K, A> {
    key: K,
    acc: A,
    count: i64,
    pending: Pending<A>,
}

/// Pending updates of a slot in time order; almost always none or one, kept inline.
enum Pending<A> {
    None,
    One(Time, A, i64),
    Many(std::collections::VecDeque<(Time, A, i64)>),
}

impl<A> Pending<A> {
    /// Adds an update at `at`, merging with one at the same time. Returns whether `at` is new.
    fn add(&mut self, at: Time, acc: A, count: i64, merge: impl Fn(&mut A, A)) -> bool {
        match self {
            Pending::None => {
                *self = Pending::One(at, acc, count);
                true
            }
            Pending::One(t, a, c) if *t == at => {
                merge(a, acc);
                *c += count;
                false
            }
            Pending::One(..) => {
                let Pending::One(t, a, c) = std::mem::replace(self, Pending::None) else { unreachable!() };
                let mut many = std::collections::VecDeque::with_capacity(2);
                many.push_back((t, a, c));
                *self = Pending::Many(many);
                self.add(at, acc, count, merge)
            }
            Pending::Many(items) => match items.binary_search_by_key(&at, |p| p.0) {
                Ok(found) => {
                    merge(&mut items[found].1, acc);
                    items[found].2 += count;
                    false
                }
                Err(position) => {
                    items.insert(position, (at, acc, count));
                    true
                }
            },
        }
    }

    /// Removes the earliest pending update.
    fn pop_front(&mut self) -> Option<(Time, A, i64)> {
        match std::mem::replace(self, Pending::None) {
            Pending::None => None,
            Pending::One(t, a, c) => Some((t, a, c)),
            Pending::Many(mut items) => {
                let first = items.pop_front();
                match items.len() {
                    0 => {}
                    1 => {
                        let (t, a, c) = items.pop_front().expect("one left");
                        *self = Pending::One(t, a, c);
                    }
                    _ => *self = Pending::Many(items),
                }
                first
            }
        }
    }
}

/// The state of one window: a slot per key, an index from keys to slots, and which slots have
/// updates pending at which time.
struct WindowState<K, A> {
    window: Window,
    index: hashbrown::HashTable<u32>,
    slots: Vec<Slot<K, A>>,
    dirty: BTreeMap<Time, Vec<u32>>,
}

fn hash_key<K: std::hash::Hash>(key: &K) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::with_seed(0x71de).hash_one(key)
}

impl<K: ExchangeData, A: Default> WindowState<K, A> {
    fn new(window: Window) -> Self {
        WindowState { window, index: hashbrown::HashTable::new(), slots: Vec::new(), dirty: BTreeMap::new() }
    }

    /// The slot of `key`, and whether it was created.
    fn slot(&mut self, key: K) -> (usize, bool) {
        let hash = hash_key(&key);
        let slots = &self.slots;
        if let Some(found) = self.index.find(hash, |s| slots[*s as usize].key == key) {
            return (*found as usize, false);
        }
        let slot = self.slots.len();
        let slots = &self.slots;
        self.index.insert_unique(hash, slot as u32, |s| hash_key(&slots[*s as usize].key));
        self.slots.push(Slot { key, acc: A::default(), count: 0, pending: Pending::None });
        (slot, true)
    }
}
