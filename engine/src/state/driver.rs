//! The driver shared by keyed temporal operators (sessions, dedup): exchange by key, apply
//! each time's updates once the frontier has passed it, in time order, with timers.
//!
//! An operator's logic ([`KeyedLogic`]) sees, for each time `t` the frontier has passed and
//! in increasing order of `t`, the inputs at `t` and the timers it set for `t`, and returns
//! the changes of its output at `t`. Because every time is applied whole and in order, the
//! output is a deterministic function of the timestamped input collection: identical for any
//! number of workers, however batches interleave.

use std::collections::BTreeMap;
use std::sync::Arc;

use differential_dataflow::consolidation::consolidate;
use differential_dataflow::{AsCollection, VecCollection};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::{Operator, OutputBuilder};

use crate::runtime::ExchangeData;
use crate::runtime::metrics::StateMetrics;
use crate::time::{Event, Time};

/// A stream of differential updates.
pub(crate) type Updates<'scope, D> = Stream<'scope, Time, Vec<(D, Time, isize)>>;

/// What one time's step produces: output changes, and timers for later times.
pub(crate) struct StepOutput<Tm, O> {
    timers: Vec<(Time, Tm)>,
    updates: Vec<(O, isize)>,
}

impl<Tm, O> StepOutput<Tm, O> {
    /// Asks for `timer` to be delivered with the step of time `at`, which must be later than
    /// the current step's time.
    pub(crate) fn schedule(&mut self, at: Time, timer: Tm) {
        self.timers.push((at, timer));
    }

    /// Emits `data` with multiplicity `diff` at the current step's time.
    pub(crate) fn give(&mut self, data: O, diff: isize) {
        self.updates.push((data, diff));
    }
}

/// The per-worker state and logic of a keyed temporal operator.
pub(crate) trait KeyedLogic: 'static {
    /// The updates it consumes (already exchanged by key).
    type Input: ExchangeData;
    /// What a timer carries.
    type Timer: 'static;
    /// What it emits.
    type Output: ExchangeData;

    /// Applies everything that happens at `time`: its inputs and the timers set for it.
    /// Called once per time, in increasing time order, once the frontier has passed `time`.
    fn step(
        &mut self,
        time: Time,
        inputs: Vec<(Self::Input, isize)>,
        timers: Vec<Self::Timer>,
        out: &mut StepOutput<Self::Timer, Self::Output>,
    );

    /// Releases the state no future update can reach: every later input is at a time in
    /// `frontier` or after (`None`: the input is complete).
    fn release(&mut self, frontier: Option<Time>);

    /// The live entries it holds, for [`StateMetrics`].
    fn live_entries(&self) -> usize;
}

struct Slot<I, Tm> {
    capability: Capability<Time>,
    inputs: Vec<(I, isize)>,
    timers: Vec<Tm>,
}

/// Runs `logic` per worker on `updates` exchanged by `key_hash`, and returns its output.
pub(crate) fn keyed_operator<'scope, L, H>(
    updates: Updates<'scope, L::Input>,
    name: &str,
    key_hash: H,
    mut logic: L,
    metrics: Option<Arc<StateMetrics>>,
) -> VecCollection<'scope, Time, L::Output>
where
    L: KeyedLogic,
    H: Fn(&L::Input) -> u64 + 'static,
{
    let scope = updates.scope();
    let (worker, peers) = (scope.index(), scope.peers());
    let exchange = Exchange::new(move |update: &(L::Input, Time, isize)| key_hash(&update.0));
    let operator = name.to_string();
    let output = updates.unary_frontier(exchange, name, move |_capability, _info| {
        let mut times: BTreeMap<Time, Slot<L::Input, L::Timer>> = BTreeMap::new();
        let mut staged: crate::state::FastMap<Time, (Capability<Time>, Vec<(L::Input, isize)>)> = Default::default();
        let mut step = StepOutput { timers: Vec::new(), updates: Vec::new() };
        move |(input, frontier), output| {
            // Stage this activation's updates by time in a hash map (many updates share a few
            // times), then file each time once in the ordered map.
            input.for_each(|capability, data| {
                for (datum, time, diff) in data.drain(..) {
                    staged
                        .entry(time)
                        .or_insert_with(|| (capability.delayed(&time, 0), Vec::new()))
                        .1
                        .push((datum, diff));
                }
            });
            for (time, (capability, mut inputs)) in staged.drain() {
                match times.entry(time) {
                    std::collections::btree_map::Entry::Occupied(mut slot) => slot.get_mut().inputs.append(&mut inputs),
                    std::collections::btree_map::Entry::Vacant(slot) => {
                        slot.insert(Slot { capability, inputs, timers: Vec::new() });
                    }
                }
            }

            while let Some(entry) = times.first_entry() {
                if frontier.less_equal(entry.key()) {
                    break;
                }
                let (time, slot) = entry.remove_entry();
                logic.step(time, slot.inputs, slot.timers, &mut step);
                for (at, timer) in step.timers.drain(..) {
                    assert!(at > time, "{operator}: a timer must be set for a later time ({at} <= {time})");
                    times
                        .entry(at)
                        .or_insert_with(|| Slot {
                            capability: slot.capability.delayed(&at),
                            inputs: Vec::new(),
                            timers: Vec::new(),
                        })
                        .timers
                        .push(timer);
                }
                consolidate(&mut step.updates);
                if !step.updates.is_empty() {
                    output.session(&slot.capability).give_iterator(step.updates.drain(..).map(|(d, r)| (d, time, r)));
                }
            }

            logic.release(frontier.frontier().first().copied());
            if let Some(metrics) = &metrics {
                metrics.set(worker, peers, logic.live_entries());
            }
        }
    });
    output.as_collection()
}

/// Splits the records a keyed operator can apply from those it cannot, which it returns
/// unchanged: records at a dataflow time after `event time + allowed_lateness` (too late:
/// counted in `metrics`) and retractions (the operators are defined over insertions).
pub(crate) fn split_applicable<'scope, K, V>(
    events: VecCollection<'scope, Time, Event<K, V>>,
    name: &str,
    allowed_lateness: u64,
    metrics: Option<Arc<StateMetrics>>,
) -> (Updates<'scope, Event<K, V>>, VecCollection<'scope, Time, Event<K, V>>)
where
    K: ExchangeData,
    V: ExchangeData,
{
    let scope = events.inner.scope();
    let mut builder = OperatorBuilder::new(format!("{name}: split late"), scope);
    let mut input = builder.new_input(events.inner, Pipeline);
    let (applicable_output, applicable) = builder.new_output();
    let (late_output, late) = builder.new_output();
    let mut applicable_output =
        OutputBuilder::<_, CapacityContainerBuilder<Vec<(Event<K, V>, Time, isize)>>>::from(applicable_output);
    let mut late_output =
        OutputBuilder::<_, CapacityContainerBuilder<Vec<(Event<K, V>, Time, isize)>>>::from(late_output);
    builder.build(move |_capabilities| {
        let mut kept = Vec::new();
        let mut rejected = Vec::new();
        move |_frontiers| {
            let mut applicable_handle = applicable_output.activate();
            let mut late_handle = late_output.activate();
            input.for_each(|cap, data| {
                let mut too_late = 0;
                for (event, at, diff) in data.drain(..) {
                    if is_applicable(event.time, at, diff, allowed_lateness) {
                        kept.push((event, at, diff));
                    } else if diff != 0 {
                        too_late += u64::from(diff > 0);
                        rejected.push((event, at, diff));
                    }
                }
                if !kept.is_empty() {
                    applicable_handle.session(&cap).give_container(&mut kept);
                    kept.clear();
                }
                if !rejected.is_empty() {
                    late_handle.session(&cap).give_container(&mut rejected);
                    rejected.clear();
                }
                if let Some(metrics) = &metrics {
                    metrics.add_late_skipped(too_late);
                }
            });
        }
    });
    (applicable, late.as_collection())
}

/// Whether a keyed operator applies a record with event time `time` at dataflow time `at`:
/// an insertion no later than `time + allowed_lateness`.
pub(crate) fn is_applicable(time: Time, at: Time, diff: isize, allowed_lateness: u64) -> bool {
    diff > 0 && at <= time.saturating_add(allowed_lateness)
}
