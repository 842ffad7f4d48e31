//! The tumbling and sliding window aggregation: a local pre-aggregation by pane, then the
//! keyed window logic on the temporal driver, which emits results as the frontier passes the
//! windows' ends.

use std::collections::BTreeMap;

use differential_dataflow::hashable::Hashable;
use differential_dataflow::{AsCollection, VecCollection};
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use crate::runtime::ExchangeData;
use crate::state::driver::{Step, TemporalLogic, unary};
use crate::state::{Emit, FastMap};
use crate::time::late::LatePolicy;
use crate::time::{Event, Time};
use crate::window::aggregate::Aggregator;
use crate::window::{Window, WindowResult, WindowSpec, WindowedCollection};

/// Pre-aggregated updates of one key in one pane, at one dataflow time.
///
/// `on_time` when every update arrived before any window containing the pane was emitted
/// (with [`Emit::Final`]): then it travels at the time of the batch it was read in, and only
/// the windows' emission shows it. Otherwise it travels at its exact arrival time, at which
/// windows emitted before take it as a correction (and, with [`Emit::Updates`], every window
/// shows it).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub(crate) struct PaneDelta<K, A> {
    key: K,
    pane: u64,
    on_time: bool,
    acc: A,
    count: i64,
    /// The earliest dataflow time of the records folded in: on-time deltas travel at their
    /// batch's time (fewer distinct times), which may be long before their records' times
    /// (a source's first batch is at time 0), and the window's retention must follow the
    /// records, not the batch.
    since: Time,
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
    let WindowedCollection { events, spec, mut temporal, pre_aggregate } = windowed;
    let name = temporal.name_or(|| format!("Window(size={}ms, slide={}ms)", spec.size(), spec.slide()));
    let metrics = temporal.metrics_named(&name);
    let (emit, lateness, policy) = (temporal.emit, temporal.allowed_lateness, temporal.late);

    // Stage 1 (local): assign records to panes, set aside records late for every window and
    // retractions the aggregator cannot undo, and pre-aggregate per (key, pane, time) within
    // each batch. Lateness depends on a record's time and windows only, so it is decided here.
    let scope = events.inner.scope();
    let mut builder = OperatorBuilder::new(format!("{name}: pre-aggregate"), scope);
    let mut input = builder.new_input(events.inner, Pipeline);
    let (panes_output, panes) = builder.new_output();
    let (late_output, late) = builder.new_output();
    let mut panes_output =
        OutputBuilder::<_, CapacityContainerBuilder<Vec<Update<PaneDelta<K, A::Acc>>>>>::from(panes_output);
    let mut late_output = OutputBuilder::<_, CapacityContainerBuilder<Vec<Update<Event<K, V>>>>>::from(late_output);
    let combiner = aggregator.clone();
    let retractable = aggregator.retractable();
    builder.build(move |_capabilities| {
        let mut combined: FastMap<(K, u64, Option<Time>), (A::Acc, i64, Time)> = FastMap::default();
        let mut deltas: Vec<Update<PaneDelta<K, A::Acc>>> = Vec::new();
        let mut rejected: Vec<Update<Event<K, V>>> = Vec::new();
        move |_frontiers| {
            let mut panes_handle = panes_output.activate();
            let mut late_handle = late_output.activate();
            input.for_each(|cap, data| {
                let Some(time) = cap.least().copied() else { return };
                let mut late_records = 0;
                for (event, at, diff) in data.drain(..) {
                    if diff == 0 {
                        continue;
                    }
                    if diff < 0 && !retractable {
                        rejected.push((event, at, diff));
                        continue;
                    }
                    let pane = spec.pane_of(event.time);
                    // The pane's last window ends last: if it has expired, they all have.
                    if at >= spec.last_end_of_pane(pane).saturating_add(lateness) {
                        late_records += 1;
                        if policy == LatePolicy::SideOutput {
                            rejected.push((event, at, diff));
                        }
                        continue;
                    }
                    let exact = (emit == Emit::Updates || at > spec.pane_max_time(pane)).then_some(at);
                    if pre_aggregate {
                        let slot =
                            combined.entry((event.key, pane, exact)).or_insert_with(|| (A::Acc::default(), 0, at));
                        combiner.add(&mut slot.0, &event.value, diff);
                        slot.1 += diff as i64;
                        slot.2 = slot.2.min(at);
                    } else {
                        let mut acc = A::Acc::default();
                        combiner.add(&mut acc, &event.value, diff);
                        let delta = PaneDelta {
                            key: event.key,
                            pane,
                            on_time: exact.is_none(),
                            acc,
                            count: diff as i64,
                            since: at,
                        };
                        deltas.push((delta, exact.unwrap_or(time), 1));
                    }
                }
                metrics.add_late_skipped(late_records);
                if !rejected.is_empty() {
                    late_handle.session(&cap).give_container(&mut rejected);
                    rejected.clear();
                }
                for ((key, pane, exact), (acc, count, since)) in combined.drain() {
                    if count != 0 || !is_default(&acc) {
                        deltas.push((
                            PaneDelta { key, pane, on_time: exact.is_none(), acc, count, since },
                            exact.unwrap_or(time),
                            1,
                        ));
                    }
                }
                if !deltas.is_empty() {
                    panes_handle.session(&cap).give_container(&mut deltas);
                    deltas.clear();
                }
            });
        }
    });

    // Stage 2 (by key): window state, emission as the frontier passes, release.
    let logic = WindowLogic { spec, emit, lateness, aggregator, windows: BTreeMap::new(), dirty: Vec::new(), live: 0 };
    let (results, _) = unary(panes, temporal.driven(name), |delta: &PaneDelta<K, A::Acc>| delta.key.hashed(), logic);
    (results, late.as_collection())
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// One key's state in one window.
struct Slot<K, A> {
    key: K,
    acc: A,
    count: i64,
    /// Marked changed in the current step (its result before the step is in
    /// [`WindowLogic::dirty`]).
    dirty: bool,
}

/// The state of one window: a slot per key and an index from keys to slots.
struct WindowState<K, A> {
    window: Window,
    index: hashbrown::HashTable<u32>,
    slots: Vec<Slot<K, A>>,
    /// Whether its Final result has been emitted.
    emitted: bool,
    /// The earliest dataflow time of the updates folded in.
    since: Time,
}

fn hash_key<K: std::hash::Hash>(key: &K) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::with_seed(0x71de).hash_one(key)
}

impl<K: ExchangeData, A: Default> WindowState<K, A> {
    fn new(window: Window, since: Time) -> Self {
        WindowState { window, index: hashbrown::HashTable::new(), slots: Vec::new(), emitted: false, since }
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
        self.slots.push(Slot { key, acc: A::default(), count: 0, dirty: false });
        (slot, true)
    }
}

/// What a window timer does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Due {
    /// The window's end has passed: emit its results (Final).
    Complete,
    /// Nothing can correct the window any more: release it.
    Expire,
}

struct WindowLogic<K, V, A: Aggregator<V>> {
    spec: WindowSpec,
    emit: Emit,
    lateness: u64,
    aggregator: A,
    /// Live windows by end.
    windows: BTreeMap<Time, WindowState<K, A::Acc>>,
    /// Slots changed in the current step, with the result downstream held before it.
    dirty: Vec<(Time, u32, Option<A::Output>)>,
    live: usize,
}

impl<K: ExchangeData, V: ExchangeData, A: Aggregator<V>> WindowLogic<K, V, A> {
    /// When the window ending at `end` emits its Final result, and when it is released.
    fn due(&self, end: Time) -> (Time, Time) {
        let complete = end - 1;
        (complete, end.saturating_add(self.lateness) - 1)
    }

    fn apply(&mut self, time: Time, delta: PaneDelta<K, A::Acc>, step: &mut Step<'_, Self>) {
        let PaneDelta { key, pane, on_time, acc, count, since } = delta;
        let mut key = Some(key);
        let mut acc = Some(acc);
        let mut windows = self.spec.windows_of_pane(pane).peekable();
        while let Some(window) = windows.next() {
            let last = windows.peek().is_none();
            let (complete, expire) = self.due(window.end);
            if time > expire {
                continue; // expired for this window (the record was not late for all)
            }
            // Silent unless the window has been shown: a Final result emitted (`time` past its
            // end), or every change shown (Updates).
            let shown = match self.emit {
                Emit::Final => !on_time && time > complete,
                Emit::Updates => true,
            };
            let state = match self.windows.entry(window.end) {
                std::collections::btree_map::Entry::Occupied(entry) => entry.into_mut(),
                std::collections::btree_map::Entry::Vacant(entry) => {
                    // A window first seen after its end (a record behind the watermark, within
                    // the allowed lateness) has shown nothing: its result appears as a correction.
                    if self.emit == Emit::Final && complete >= time {
                        step.schedule(complete, (Due::Complete, window.end));
                    }
                    if !(self.emit == Emit::Final && expire == complete) {
                        step.schedule(expire, (Due::Expire, window.end));
                    }
                    let mut state = WindowState::new(window, since);
                    state.emitted = complete < time;
                    entry.insert(state)
                }
            };
            state.since = state.since.min(since);
            let k = if last { key.take().expect("key") } else { key.clone().expect("key") };
            let a = if last { acc.take().expect("acc") } else { acc.clone().expect("acc") };
            let (slot, created) = state.slot(k);
            self.live += created as usize;
            let entry = &mut state.slots[slot];
            if shown && !entry.dirty {
                entry.dirty = true;
                let before = (entry.count != 0).then(|| self.aggregator.finish(&entry.acc, entry.count));
                self.dirty.push((window.end, slot as u32, before));
            }
            self.aggregator.merge(&mut entry.acc, a);
            entry.count += count;
        }
    }
}

impl<K: ExchangeData, V: ExchangeData, A: Aggregator<V>> TemporalLogic for WindowLogic<K, V, A> {
    type Input = PaneDelta<K, A::Acc>;
    type Timer = (Due, Time);
    type Output = WindowResult<K, A::Output>;
    type Late = ();

    fn step(
        &mut self,
        inputs: &mut Vec<(Self::Input, isize)>,
        timers: &mut Vec<Self::Timer>,
        step: &mut Step<'_, Self>,
    ) {
        let time = step.time();
        for (delta, _) in inputs.drain(..) {
            self.apply(time, delta, step);
        }
        // Corrections (and, with Updates, every change) at this step's time.
        for (end, slot, before) in self.dirty.drain(..) {
            let state = self.windows.get_mut(&end).expect("a dirty window is live");
            let entry = &mut state.slots[slot as usize];
            entry.dirty = false;
            let after = (entry.count != 0).then(|| self.aggregator.finish(&entry.acc, entry.count));
            if before != after {
                if let Some(value) = before {
                    step.give(WindowResult { window: state.window, key: entry.key.clone(), value }, -1);
                }
                if let Some(value) = after {
                    step.give(WindowResult { window: state.window, key: entry.key.clone(), value }, 1);
                }
            }
        }
        timers.sort_unstable();
        timers.dedup();
        for (_, end) in timers.drain(..) {
            let (complete, expire) = self.due(end);
            let Some(state) = self.windows.get_mut(&end) else { continue };
            if self.emit == Emit::Final && complete == time && !state.emitted {
                state.emitted = true;
                for entry in &state.slots {
                    if entry.count != 0 {
                        let value = self.aggregator.finish(&entry.acc, entry.count);
                        step.give(WindowResult { window: state.window, key: entry.key.clone(), value }, 1);
                    }
                }
            }
            if expire == time {
                let state = self.windows.remove(&end).expect("live");
                self.live -= state.slots.len();
            }
        }
    }

    fn release(&mut self, _frontier: Option<Time>) {
        // Windows are released by their timers, in time order.
    }

    fn live_entries(&self) -> usize {
        self.live
    }

    fn oldest(&self) -> Option<Time> {
        self.windows.values().map(|w| w.since).min()
    }
}
