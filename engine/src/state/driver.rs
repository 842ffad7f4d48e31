//! The temporal driver: the one timely operator every stateful Tideline operator runs on.
//!
//! An operator's logic ([`TemporalLogic`]) sees, for each dataflow time `t` the frontier has
//! passed and in increasing order of `t`, the inputs at `t` and the timers it set for `t`, and
//! emits the changes of its output at `t` (and, on a second output, the records it found late).
//! Because every time is applied whole and in order, the output is a deterministic function of
//! the timestamped input collection: identical for any number of workers, however batches
//! interleave.
//!
//! What the driver does, so that no operator has to:
//!
//! - **Exchange** the input by key and **buffer** it until the frontier passes its time.
//! - **One pass per activation**: everything the frontier has passed is sorted by time once and
//!   applied in order, timers interleaved; outputs leave in one batch. The driver holds *one*
//!   capability per output, at the earliest time it may still emit (its earliest pending input
//!   or timer), so the cost of an activation follows the records and timers it applies, not the
//!   number of distinct timestamps (a capability per timestamp costs progress-tracking traffic
//!   between all workers).
//! - **Retention** for at-least-once sources ([`crate::runtime::flow`]): after each activation
//!   it records its frontier and the earliest input time its state or pending inputs still
//!   refer to ([`TemporalLogic::oldest`]).
//! - **State metrics**: live entries per worker and late records, in the operator's
//!   [`StateMetrics`] (if the builder was not given one, the process's gauge named after the
//!   operator, which the metrics endpoint exports).
//!
//! Logic decides lateness by time alone (a record at dataflow time `t` is late for a window
//! whose `end + allowed_lateness ≤ t`), never by whether the state happens to be released yet,
//! so that results do not depend on how activations batch times.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::rc::Rc;
use std::sync::Arc;

use differential_dataflow::{AsCollection, VecCollection};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::{InputHandleCore, OutputBuilder, OutputBuilderSession};
use timely::progress::frontier::MutableAntichain;

use crate::checkpoint::{Barrier, OperatorSlot, Resume};
use crate::runtime::ExchangeData;
use crate::runtime::flow::{Retention, RetentionLog, min_frontier};
use crate::runtime::metrics::StateMetrics;
use crate::time::Time;
use crate::time::late::LatePolicy;

/// A stream of differential updates.
pub(crate) type Updates<'scope, D> = Stream<'scope, Time, Vec<(D, Time, isize)>>;

/// What one time's step may do: emit output and late records at the step's time, and set
/// timers for later times.
pub(crate) struct Step<'a, L: TemporalLogic> {
    time: Time,
    timers: &'a mut BinaryHeap<Reverse<(Time, L::Timer)>>,
    output: &'a mut Vec<(L::Output, Time, isize)>,
    late: &'a mut Vec<(L::Late, Time, isize)>,
    late_count: &'a mut u64,
    keep_late: bool,
}

impl<L: TemporalLogic> Step<'_, L> {
    /// The time being applied.
    pub(crate) fn time(&self) -> Time {
        self.time
    }

    /// Asks for `timer` to be delivered with the step of time `at`, which must not be earlier
    /// than the current step's time. A timer for the current time is delivered in a further
    /// step at the same time, after this one (with no inputs).
    pub(crate) fn schedule(&mut self, at: Time, timer: L::Timer) {
        assert!(at >= self.time, "a timer must not be set for an earlier time ({at} < {})", self.time);
        self.timers.push(Reverse((at, timer)));
    }

    /// Emits `data` with multiplicity `diff` at the current step's time.
    pub(crate) fn give(&mut self, data: L::Output, diff: isize) {
        self.output.push((data, self.time, diff));
    }

    /// Emits `record` on the second output at the current step's time, whatever the late
    /// policy and without counting it late: for operators whose second output carries records
    /// of their own (a process function's side output).
    pub(crate) fn side(&mut self, record: L::Late, diff: isize) {
        self.late.push((record, self.time, diff));
    }

    /// Reports `record` late: counted, and emitted on the late output at the current time
    /// unless the operator's late policy drops late records.
    pub(crate) fn late(&mut self, record: L::Late, diff: isize) {
        *self.late_count += 1;
        if self.keep_late {
            self.late.push((record, self.time, diff));
        }
    }
}

/// The per-worker state and logic of a stateful temporal operator.
pub(crate) trait TemporalLogic: Sized + 'static {
    /// What it consumes (already exchanged by key).
    type Input: 'static;
    /// What a timer carries.
    type Timer: Ord + 'static;
    /// What it emits.
    type Output: ExchangeData;
    /// What it emits on its late output.
    type Late: ExchangeData;

    /// Applies everything that happens at `step.time()`: its `inputs` (drain them) and the
    /// `timers` set for it. Called for each time that has inputs or timers, in increasing time
    /// order, once the frontier has passed that time: once, or again (with timers only) if it
    /// set timers for its own time.
    fn step(
        &mut self,
        inputs: &mut Vec<(Self::Input, isize)>,
        timers: &mut Vec<Self::Timer>,
        step: &mut Step<'_, Self>,
    );

    /// Releases the state no future update can reach: every later input is at a time in
    /// `frontier` or after (`None`: the input is complete).
    fn release(&mut self, frontier: Option<Time>);

    /// The live entries it holds, for [`StateMetrics`].
    fn live_entries(&self) -> usize;

    /// A lower bound of the dataflow times of the inputs its state still reflects (`None`: the
    /// state reflects no input that could matter again). What at-least-once sources may not
    /// acknowledge yet (see [`crate::runtime::flow`]).
    fn oldest(&self) -> Option<Time>;

    /// Whether the state, rebuilt from the inputs from [`oldest`](Self::oldest) on alone, is
    /// the state itself — what a checkpoint's replay relies on (see [`crate::checkpoint`]).
    /// Not for state that depends on a chain of earlier inputs (dedup's horizon groups, a
    /// process function's user state): in a checkpointed dataflow such an operator holds the
    /// replay time at the start (correct, not fast).
    const REPLAY_EXACT: bool = true;

    /// Whether it has work due by processing time ([`on_clock`](Self::on_clock)): the driver
    /// then keeps a capability at its input frontier while the input is open, to emit at.
    const CLOCK: bool = false;

    /// Does the work due by processing time, in a step at the operator's input frontier (every
    /// input before it applied). Called at every activation while the input is open.
    fn on_clock(&mut self, step: &mut Step<'_, Self>) {
        let _ = step;
    }

    /// How long until its next work by processing time (`None`: none is set).
    fn clock_wakeup(&self) -> Option<std::time::Duration> {
        None
    }

    /// Whether it can take its state for a checkpoint ([`save`](Self::save),
    /// [`load`](Self::load)). When every stateful operator of a dataflow can, its checkpoints
    /// hold the operators' state and a restore reads the inputs again from the checkpoint's
    /// time only, however old the state is.
    const SNAPSHOTS: bool = false;

    /// Its state, with its pending `timers`, as bytes for a checkpoint. Called between steps.
    fn save(&self, timers: Vec<(Time, &Self::Timer)>) -> Result<Vec<u8>, String> {
        let _ = timers;
        Err("this operator cannot take its state".into())
    }

    /// Restores the state [`save`](Self::save) gave, before the first step, from the `parts`
    /// the workers of the checkpointed run saved (one, this worker's own, if their number is
    /// unchanged), keeping the keys whose exchange hash `keep` accepts (those this worker now
    /// owns); returns the timers of the keys kept.
    fn load(&mut self, parts: &[&[u8]], keep: &dyn Fn(u64) -> bool) -> Result<Vec<(Time, Self::Timer)>, String> {
        let _ = (parts, keep);
        Err("this operator cannot restore its state".into())
    }
}

/// An input of a binary operator: from the first or the second input stream.
#[derive(Clone, Debug)]
pub(crate) enum Side<A, B> {
    Left(A),
    Right(B),
}

/// How a driven operator is named and observed.
pub(crate) struct Driven {
    pub(crate) name: String,
    pub(crate) metrics: Arc<StateMetrics>,
    pub(crate) late: LatePolicy,
}

/// The state of a driven operator on one worker.
struct Core<L: TemporalLogic> {
    logic: L,
    /// Inputs whose time the frontier has not passed, in arrival order.
    pending: Vec<(Time, L::Input, isize)>,
    pending_min: Option<Time>,
    /// Inputs being applied, sorted by time.
    ready: std::collections::VecDeque<(Time, L::Input, isize)>,
    /// Inputs the frontier has passed, being sorted before they join `ready`.
    sorting: Vec<(Time, L::Input, isize)>,
    timers: BinaryHeap<Reverse<(Time, L::Timer)>>,
    inputs: Vec<(L::Input, isize)>,
    fired: Vec<L::Timer>,
    output: Vec<(L::Output, Time, isize)>,
    late: Vec<(L::Late, Time, isize)>,
    late_count: u64,
    keep_late: bool,
    /// One capability per output, at the earliest time anything pending may be emitted.
    held: Option<[Capability<Time>; 2]>,
    retention: Rc<RetentionLog>,
    metrics: Arc<StateMetrics>,
    worker: usize,
    peers: usize,
    /// Its place in the dataflow's checkpoints, if it has any.
    checkpoint: Option<(Rc<OperatorSlot>, Rc<Barrier>)>,
    /// The input frontier of the last pass: every input before it has been applied.
    seen: Option<Time>,
    /// Restored from a checkpoint's state taken at this time: inputs before it are in it.
    restored_at: Option<Time>,
    /// Schedules the operator again after a pass that stopped at its budget.
    activator: timely::scheduling::Activator,
}

/// Inputs and timers a pass applies before it stops, at the next time: an activation over a
/// large backlog (a source that read a million records ahead) yields to the worker's other
/// operators and to checkpoints, which would otherwise wait for the whole backlog.
const PASS_BUDGET: usize = 1 << 16;

type Output<'a, D> = OutputBuilderSession<'a, Time, CapacityContainerBuilder<Vec<(D, Time, isize)>>>;

impl<L: TemporalLogic> Core<L> {
    /// Takes a batch of input updates (and a capability no later than their times).
    fn absorb<D, P>(
        &mut self,
        input: &mut InputHandleCore<Time, Vec<(D, Time, isize)>, P>,
        wrap: impl Fn(D) -> L::Input,
    ) where
        P: timely::communication::Pull<timely::dataflow::channels::Message<Time, Vec<(D, Time, isize)>>>,
    {
        input.for_each(|cap, data| {
            if let Some(least) = cap.least().copied()
                && self.held.as_ref().is_none_or(|held| least < *held[0].time())
            {
                self.held = Some([cap.delayed(&least, 0), cap.delayed(&least, 1)]);
            }
            for (datum, time, diff) in data.drain(..) {
                if self.restored_at.is_some_and(|at| time < at) {
                    continue;
                }
                self.pending_min = Some(self.pending_min.map_or(time, |m| m.min(time)));
                self.pending.push((time, wrap(datum), diff));
            }
        });
    }

    /// Takes the capabilities of a restored operator with timers (it may have no input to
    /// take them from), at its earliest timer.
    fn adopt(&mut self, mut capabilities: Vec<Capability<Time>>) {
        // A restored operator's earliest timer, or, for work by processing time, where it
        // starts (it emits at its input frontier).
        let first = self.timers.peek().map(|Reverse((t, _))| *t);
        let first = if L::CLOCK {
            Some(first.map_or(self.seen.unwrap_or(0), |t| t.min(self.seen.unwrap_or(0))))
        } else {
            first
        };
        if let (Some(first), None) = (first, self.held.as_ref())
            && capabilities.len() == 2
        {
            let second = capabilities.pop().expect("two outputs").delayed(&first);
            let first = capabilities.pop().expect("two outputs").delayed(&first);
            self.held = Some([first, second]);
        }
    }

    /// The checkpoint whose state this operator takes in this pass, if the frontier has
    /// reached its time.
    fn snapshot_due(&self, frontier: Option<Time>) -> Option<(u64, Time)> {
        let (slot, barrier) = self.checkpoint.as_ref()?;
        let (id, at) = barrier.at.get()?;
        if slot.taken.borrow().as_ref().is_some_and(|(taken, _)| *taken == id) {
            return None;
        }
        frontier.is_none_or(|f| f >= at).then_some((id, at))
    }

    /// Applies every time the frontier has passed, releases state, and emits; first, if a
    /// checkpoint's time is among them, applies the times before it and takes the state.
    fn run(&mut self, frontier: Option<Time>, output: &mut Output<'_, L::Output>, late: &mut Output<'_, L::Late>) {
        // Restored from state taken at `T`: every input before `T` is in it (the sources drop
        // what they read again before `T`), so the input frontier counts as at least `T` —
        // also for work by processing time, which must not emit before the state's time.
        let frontier = match self.restored_at {
            Some(at) => frontier.map(|f| f.max(at)),
            None => frontier,
        };
        // A checkpoint being agreed on holds the operator where it is (or at its time).
        let input_frontier = frontier;
        let frontier = match (self.checkpoint.as_ref().and_then(|(_, barrier)| barrier.hold.get()), self.seen) {
            (Some(hold), Some(seen)) => {
                let hold = hold.max(seen);
                Some(frontier.map_or(hold, |f| f.min(hold)))
            }
            _ => frontier,
        };
        if let Some((id, at)) = self.snapshot_due(frontier) {
            let taken = if self.seen.is_none_or(|seen| seen > at) {
                Err(format!("its input had passed the checkpoint's time {at} before it learnt of it"))
            } else {
                self.apply(Some(at), usize::MAX, output, late);
                self.logic.release(Some(at));
                self.logic.save(self.timers.iter().map(|Reverse((t, timer))| (*t, timer)).collect())
            };
            let (slot, _) = self.checkpoint.as_ref().expect("due");
            *slot.taken.borrow_mut() = Some((id, taken));
        }
        // A large backlog is applied over several activations, so that the worker's other
        // operators (and checkpoints) get their turns.
        let frontier = match self.apply(frontier, PASS_BUDGET, output, late) {
            Some(stopped) => {
                self.activator.activate();
                Some(stopped)
            }
            None => frontier,
        };
        self.seen = frontier;
        if L::CLOCK
            && let Some(now) = frontier
            && self.held.is_some()
        {
            let mut step = Step {
                time: now,
                timers: &mut self.timers,
                output: &mut self.output,
                late: &mut self.late,
                late_count: &mut self.late_count,
                keep_late: self.keep_late,
            };
            self.logic.on_clock(&mut step);
            self.flush(output, late);
            if let Some(wait) = self.logic.clock_wakeup() {
                // Checked at least every 100 ms: a manual clock moves without telling anyone.
                self.activator.activate_after(wait.min(std::time::Duration::from_millis(100)));
            }
        }
        if let Some((slot, _)) = self.checkpoint.as_ref() {
            // How far it could apply now: its input's frontier, or, with all of its input in,
            // where a hold keeps it (`None` once it has applied everything).
            slot.reach.set(input_frontier.or(frontier));
        }

        self.logic.release(frontier);
        let next = min_frontier(self.pending_min, self.timers.peek().map(|Reverse((t, _))| *t));
        let next = min_frontier(next, self.ready.front().map(|(t, _, _)| *t));
        // With work due by processing time, a capability stays at the input frontier (to emit
        // at) until the input ends; then what is set by processing time is dropped.
        let next = if L::CLOCK { frontier.map(|f| next.map_or(f, |n| n.min(f))) } else { next };
        match next {
            None => self.held = None,
            Some(next) => {
                if let Some(held) = self.held.as_mut() {
                    for cap in held.iter_mut() {
                        cap.downgrade(&next);
                    }
                }
            }
        }
        self.metrics.set(self.worker, self.peers, self.logic.live_entries());
        self.metrics.add_late_skipped(std::mem::take(&mut self.late_count));
        self.retention.record(frontier, min_frontier(self.pending_min, self.logic.oldest()));
    }

    /// Applies every input and timer before `frontier` and emits what they give; stops at the
    /// first time after `budget` inputs and timers, and then returns that time (the pass
    /// applied everything before it).
    fn apply(
        &mut self,
        frontier: Option<Time>,
        budget: usize,
        output: &mut Output<'_, L::Output>,
        late: &mut Output<'_, L::Late>,
    ) -> Option<Time> {
        let passed = |t: Time| frontier.is_none_or(|f| t < f);
        if self.pending_min.is_some_and(passed) {
            let mut min = None;
            let mut kept = 0;
            for i in 0..self.pending.len() {
                let t = self.pending[i].0;
                if passed(t) {
                    continue;
                }
                min = Some(min.map_or(t, |m: Time| m.min(t)));
                self.pending.swap(kept, i);
                kept += 1;
            }
            self.sorting.extend(self.pending.drain(kept..));
            self.pending_min = min;
            // Unstable, in place: logic does not depend on the order within a time (arrival
            // order differs with the number of workers anyway), and a stable sort moved every
            // update through a scratch buffer.
            self.sorting.sort_unstable_by_key(|(t, _, _)| *t);
            // What an earlier, stopped pass left lies before the frontier that pass had, and
            // everything pending then or since at or after it: the new inputs follow.
            debug_assert!(
                self.ready.back().zip(self.sorting.first()).is_none_or(|(left, new)| left.0 <= new.0),
                "inputs moved to ready out of order"
            );
            self.ready.extend(self.sorting.drain(..));
        }

        let ready = &mut self.ready;
        let mut applied = 0;
        let mut stopped = None;
        loop {
            // Inputs an earlier, stopped pass left may lie at or after `frontier` (a snapshot's).
            let next_input = ready.front().map(|(t, _, _)| *t).filter(|t| passed(*t));
            let next_timer = self.timers.peek().map(|Reverse((t, _))| *t).filter(|t| passed(*t));
            let time = match (next_input, next_timer) {
                (Some(a), Some(b)) => a.min(b),
                (Some(t), None) | (None, Some(t)) => t,
                (None, None) => break,
            };
            if applied >= budget {
                stopped = Some(time);
                break;
            }
            while ready.front().is_some_and(|(t, _, _)| *t == time) {
                let (_, input, diff) = ready.pop_front().expect("peeked");
                self.inputs.push((input, diff));
            }
            applied += self.inputs.len() + 1;
            while self.timers.peek().is_some_and(|Reverse((t, _))| *t == time) {
                let Reverse((_, timer)) = self.timers.pop().expect("peeked");
                self.fired.push(timer);
            }
            let mut step = Step {
                time,
                timers: &mut self.timers,
                output: &mut self.output,
                late: &mut self.late,
                late_count: &mut self.late_count,
                keep_late: self.keep_late,
            };
            self.logic.step(&mut self.inputs, &mut self.fired, &mut step);
            self.inputs.clear();
            self.fired.clear();
        }

        self.flush(output, late);
        stopped
    }

    /// Emits what the steps gave.
    fn flush(&mut self, output: &mut Output<'_, L::Output>, late: &mut Output<'_, L::Late>) {
        if !self.output.is_empty() || !self.late.is_empty() {
            // Every step's time is at or after the held capabilities (the earliest pending
            // input or timer when the step was filed, or the input frontier for work due by
            // processing time).
            let held = self.held.as_ref().expect("inputs arrive with a capability");
            if !self.output.is_empty() {
                output.session(&held[0]).give_container(&mut self.output);
                self.output.clear();
            }
            if !self.late.is_empty() {
                late.session(&held[1]).give_container(&mut self.late);
                self.late.clear();
            }
        }
    }
}

fn frontier_of(frontier: &MutableAntichain<Time>) -> Option<Time> {
    frontier.frontier().first().copied()
}

fn core<'scope, L: TemporalLogic>(
    scope: timely::dataflow::Scope<'scope, Time>,
    driven: &Driven,
    mut logic: L,
    activator: timely::scheduling::Activator,
) -> Core<L> {
    let retention = RetentionLog::new();
    let flow = crate::runtime::flow::group(scope);
    flow.register_retention(Retention::Tracked(Rc::clone(&retention)));
    let mut timers = BinaryHeap::new();
    let mut checkpoint = None;
    let mut restored_at = None;
    if let Some(hooks) = flow.checkpoints.borrow_mut().as_mut() {
        // Replaying cannot rebuild state that depends on a chain of earlier inputs: a replay
        // must start at the beginning (unless the checkpoint holds the state).
        let unbounded = !L::REPLAY_EXACT;
        if unbounded {
            flow.register_retention(Retention::Unbounded);
        }
        let slot = hooks.add_operator(&driven.name, activator.clone(), L::SNAPSHOTS, unbounded);
        if let (Some(Resume::State(at)), Some(restored)) = (hooks.resume, hooks.restored.as_ref()) {
            let (index, peers) = (scope.index(), scope.peers());
            // With another number of workers, keys move: every worker reads every part and
            // keeps the keys the exchange now sends it (hash modulo the number of workers).
            let parts = restored.operator_parts(&slot.key, (restored.workers() == peers).then_some(index));
            if parts.is_empty() {
                panic!(
                    "checkpoint {} has no state for operator {:?}: the pipeline changed since it was taken; start \
                     it with an empty checkpoint directory to run from the beginning",
                    restored.id(),
                    driven.name
                )
            }
            let keep = move |hash: u64| (hash % peers as u64) as usize == index;
            let restored_timers = logic.load(&parts, &keep).unwrap_or_else(|error| {
                panic!("operator {:?} cannot resume from checkpoint {}: {error}", driven.name, restored.id())
            });
            timers.extend(restored_timers.into_iter().map(Reverse));
            restored_at = Some(at);
            slot.reach.set(Some(at));
        }
        checkpoint = Some((slot, Rc::clone(&hooks.barrier)));
    }
    Core {
        logic,
        pending: Vec::new(),
        pending_min: None,
        ready: std::collections::VecDeque::new(),
        sorting: Vec::new(),
        timers,
        inputs: Vec::new(),
        fired: Vec::new(),
        output: Vec::new(),
        late: Vec::new(),
        late_count: 0,
        keep_late: driven.late == LatePolicy::SideOutput,
        held: None,
        retention,
        metrics: Arc::clone(&driven.metrics),
        worker: scope.index(),
        peers: scope.peers(),
        checkpoint,
        seen: Some(restored_at.unwrap_or(0)),
        restored_at,
        activator,
    }
}

/// Runs `logic` per worker on `updates` exchanged by `key_hash`; returns its output and its
/// late output.
pub(crate) fn unary<'scope, L, H>(
    updates: Updates<'scope, L::Input>,
    driven: Driven,
    key_hash: H,
    logic: L,
) -> (VecCollection<'scope, Time, L::Output>, VecCollection<'scope, Time, L::Late>)
where
    L: TemporalLogic,
    L::Input: ExchangeData,
    H: Fn(&L::Input) -> u64 + 'static,
{
    let scope = updates.scope();
    let mut builder = OperatorBuilder::new(driven.name.clone(), scope);
    let exchange = Exchange::new(move |update: &(L::Input, Time, isize)| key_hash(&update.0));
    let mut input = builder.new_input(updates, exchange);
    let (output, stream) = builder.new_output();
    let (late_output, late_stream) = builder.new_output();
    let mut output = OutputBuilder::<_, CapacityContainerBuilder<Vec<(L::Output, Time, isize)>>>::from(output);
    let mut late_output = OutputBuilder::<_, CapacityContainerBuilder<Vec<(L::Late, Time, isize)>>>::from(late_output);
    let activator = scope.activator_for(Rc::clone(&builder.operator_info().address));
    let mut core = core(scope, &driven, logic, activator);
    builder.build(move |capabilities| {
        core.adopt(capabilities);
        move |frontiers| {
            core.absorb(&mut input, |d| d);
            core.run(frontier_of(&frontiers[0]), &mut output.activate(), &mut late_output.activate());
        }
    });
    (stream.as_collection(), late_stream.as_collection())
}

/// Runs `logic` per worker on two inputs, each exchanged by its own key hash (the two must
/// agree on where a key goes); returns its output and its late output.
pub(crate) fn binary<'scope, A, B, L, HA, HB>(
    left: Updates<'scope, A>,
    right: Updates<'scope, B>,
    driven: Driven,
    left_hash: HA,
    right_hash: HB,
    logic: L,
) -> (VecCollection<'scope, Time, L::Output>, VecCollection<'scope, Time, L::Late>)
where
    A: ExchangeData,
    B: ExchangeData,
    L: TemporalLogic<Input = Side<A, B>>,
    HA: Fn(&A) -> u64 + 'static,
    HB: Fn(&B) -> u64 + 'static,
{
    let scope = left.scope();
    let mut builder = OperatorBuilder::new(driven.name.clone(), scope);
    let mut left_input = builder.new_input(left, Exchange::new(move |update: &(A, Time, isize)| left_hash(&update.0)));
    let mut right_input =
        builder.new_input(right, Exchange::new(move |update: &(B, Time, isize)| right_hash(&update.0)));
    let (output, stream) = builder.new_output();
    let (late_output, late_stream) = builder.new_output();
    let mut output = OutputBuilder::<_, CapacityContainerBuilder<Vec<(L::Output, Time, isize)>>>::from(output);
    let mut late_output = OutputBuilder::<_, CapacityContainerBuilder<Vec<(L::Late, Time, isize)>>>::from(late_output);
    let activator = scope.activator_for(Rc::clone(&builder.operator_info().address));
    let mut core = core(scope, &driven, logic, activator);
    builder.build(move |capabilities| {
        core.adopt(capabilities);
        move |frontiers| {
            core.absorb(&mut left_input, Side::Left);
            core.absorb(&mut right_input, Side::Right);
            let frontier = min_frontier(frontier_of(&frontiers[0]), frontier_of(&frontiers[1]));
            core.run(frontier, &mut output.activate(), &mut late_output.activate());
        }
    });
    (stream.as_collection(), late_stream.as_collection())
}

/// Counts of live state by the earliest dataflow time of the inputs it reflects, in buckets:
/// what an operator reports as [`TemporalLogic::oldest`] (a lower bound, to the bucket).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct Holds {
    counts: std::collections::BTreeMap<Time, u64>,
}

/// Width of a [`Holds`] bucket (a power of two).
const HOLD_BUCKET_MS: Time = 1024;

impl Holds {
    /// Counts one more piece of state reflecting inputs from `time` on.
    pub(crate) fn hold(&mut self, time: Time) {
        *self.counts.entry(time & !(HOLD_BUCKET_MS - 1)).or_default() += 1;
    }

    /// Counts one piece of state reflecting inputs from `time` on less.
    pub(crate) fn release(&mut self, time: Time) {
        let bucket = time & !(HOLD_BUCKET_MS - 1);
        let count = self.counts.get_mut(&bucket).expect("released a hold that was not held");
        *count -= 1;
        if *count == 0 {
            self.counts.remove(&bucket);
        }
    }

    /// A lower bound of the earliest time held, if any.
    pub(crate) fn oldest(&self) -> Option<Time> {
        self.counts.keys().next().copied()
    }
}
