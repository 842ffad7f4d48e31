//! Flow control and durability bookkeeping: a slow consumer slows the producer instead of
//! buffering without bound, and a source learns which of its records are fully accounted for.
//!
//! Every Tideline sink registers the frontier of its input with its dataflow's flow group;
//! every source of the dataflow reads that frontier before reading more. When the sinks lag
//! behind the source's watermark and the source has emitted more than its
//! [`max_in_flight`](crate::source::SourceConfig::max_in_flight) records since the watermark
//! the sinks have reached, the source stops reading until they catch up. Nothing is dropped:
//! records simply stay in the input (the file, the Kafka partition) until there is room.
//!
//! Programs whose outputs are not Tideline sinks can register their own probes with
//! [`watch`].
//!
//! # What is safe to acknowledge
//!
//! The flow group also knows what is *safe*: sinks report the frontier up to which their output
//! is durable, and every stateful operator reports which of its inputs its state still refers
//! to ([`Retention`]). [`FlowGroup::safe_time`] combines them into the time below which every
//! input record is fully accounted for — everything derived from it is durably written and no
//! state refers to it — which is what an at-least-once source may commit (DESIGN §7).
//!
//! Every operator built on the engine's temporal driver (windows, sessions, dedup, joins, top-N,
//! tables) registers its retention itself; operators that keep state forever (equi-joins,
//! [`to_table`](crate::table::Tables::to_table)) register [`Retention::Unbounded`]. A program
//! that applies differential's own stateful operators (`reduce`, `join`, …) between a source
//! and a sink should register [`Retention::Unbounded`] too ([`FlowGroup::register_retention`]):
//! the engine cannot see their state.
//!
//! The combination is made in the order operators are built (upstream before downstream): the
//! durable frontier `w` of the sinks is carried upstream through each operator's retention, in
//! reverse order, each operator lowering it to what its own state and pending inputs still
//! hold as of its output's safe frontier. Each worker computes this for its own operators and
//! the sinks exchange the results, so that a record read on one worker and held on another is
//! accounted for.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use timely::dataflow::Scope;
use timely::dataflow::operators::probe::Handle as ProbeHandle;

use crate::time::Time;

/// What a stateful operator still holds, for [`FlowGroup::safe_time`].
#[derive(Clone, Debug)]
pub enum Retention {
    /// The operator's own account, kept by the engine's temporal driver.
    Tracked(Rc<RetentionLog>),
    /// The operator may refer to any input forever (e.g. an equi-join's arrangements): records
    /// are safe only once the sinks are complete.
    Unbounded,
}

impl Retention {
    /// The safe frontier of this operator's input, given the safe frontier `w` of its output
    /// (`None`: everything).
    fn safe_input(&self, w: Option<Time>) -> Option<Time> {
        match self {
            Retention::Tracked(log) => log.safe_input(w),
            Retention::Unbounded => w.map(|_| 0),
        }
    }
}

/// An operator's account of what it holds: after each activation, its input frontier `F` (it
/// has applied every input before `F` and emitted every output before `F`) and the earliest
/// dataflow time of an input its state or its pending inputs still refer to.
#[derive(Debug, Default)]
pub struct RetentionLog {
    snapshots: RefCell<VecDeque<(Option<Time>, Option<Time>)>>,
}

impl RetentionLog {
    /// A log for an operator that has applied nothing yet and holds nothing.
    pub fn new() -> Rc<Self> {
        let log = RetentionLog::default();
        log.snapshots.borrow_mut().push_back((Some(0), None));
        Rc::new(log)
    }

    /// Records that the operator's input frontier is `frontier` (`None`: complete) and that its
    /// state and pending inputs refer to no input before `oldest` (`None`: to nothing).
    pub fn record(&self, frontier: Option<Time>, oldest: Option<Time>) {
        let mut snapshots = self.snapshots.borrow_mut();
        if snapshots.back().is_some_and(|last| *last == (frontier, oldest)) {
            return;
        }
        if snapshots.back().is_some_and(|(f, _)| *f == frontier) {
            snapshots.pop_back();
        }
        snapshots.push_back((frontier, oldest));
    }

    /// The safe frontier of the operator's input given the safe frontier `w` of its output: at
    /// the latest snapshot whose frontier `F` is at most `w`, every output before `F` had been
    /// emitted (and is safe), and inputs before `F` that the state no longer referred to had
    /// had all their effects.
    fn safe_input(&self, w: Option<Time>) -> Option<Time> {
        let mut snapshots = self.snapshots.borrow_mut();
        let reached = |f: &Option<Time>| match (f, w) {
            (_, None) => true,
            (None, Some(_)) => false,
            (Some(f), Some(w)) => *f <= w,
        };
        // Snapshots are in frontier order, and `w` never decreases: drop the ones a later
        // snapshot has superseded.
        while snapshots.len() > 1 && reached(&snapshots[1].0) {
            snapshots.pop_front();
        }
        match snapshots.front() {
            // An operator whose input is complete emits nothing more: whatever its state still
            // holds (a table's current values) cannot lose any output.
            Some((None, _)) if w.is_none() => None,
            Some((f, oldest)) if reached(f) => min_frontier(*f, *oldest),
            _ => Some(0),
        }
    }
}

/// The minimum of two frontiers (`None`: the empty frontier, after every time).
pub(crate) fn min_frontier(a: Option<Time>, b: Option<Time>) -> Option<Time> {
    match (a, b) {
        (None, x) | (x, None) => x,
        (Some(a), Some(b)) => Some(a.min(b)),
    }
}

/// What a sink knows about durability, over all workers.
#[derive(Debug, Default)]
pub(crate) struct SinkProgress {
    /// Everything before this frontier is durably written by every worker's part of the sink
    /// (`Some(None)`: everything); `None` until every worker has reported.
    pub(crate) durable: Cell<Option<Option<Time>>>,
    /// The minimum over workers of the safe input frontier each computed from the durable
    /// frontier it knew ([`FlowGroup::local_safe`]); `None` until every worker has reported.
    pub(crate) retained: Cell<Option<Option<Time>>>,
}

/// The consumers' frontiers of one dataflow on one worker.
#[derive(Default)]
pub struct FlowGroup {
    probes: RefCell<Vec<ProbeHandle<Time>>>,
    sinks: RefCell<Vec<Rc<SinkProgress>>>,
    retention: RefCell<Vec<Retention>>,
    sink_failed: Cell<bool>,
    /// The dataflow's checkpoint participants on this worker, once checkpointing is installed
    /// ([`crate::checkpoint::Checkpointing::install`]).
    pub(crate) checkpoints: RefCell<Option<crate::checkpoint::Hooks>>,
}

impl FlowGroup {
    /// Registers a sink's durability account.
    pub(crate) fn register_sink(&self, progress: Rc<SinkProgress>) {
        self.sinks.borrow_mut().push(progress);
    }

    /// Whether any sink has registered.
    pub(crate) fn has_sinks(&self) -> bool {
        !self.sinks.borrow().is_empty()
    }

    /// Declares an operator's retention. Register in build order: upstream operators first.
    pub fn register_retention(&self, retention: Retention) {
        self.retention.borrow_mut().push(retention);
    }

    /// How many registered operators keep state forever ([`Retention::Unbounded`]).
    pub(crate) fn unbounded_retentions(&self) -> usize {
        self.retention.borrow().iter().filter(|r| matches!(r, Retention::Unbounded)).count()
    }

    /// Records that a sink of this dataflow (on any worker) failed: its output stops where it
    /// was, so [`safe_time`](Self::safe_time) stops advancing and never reaches the end of time.
    pub fn record_sink_failure(&self) {
        self.sink_failed.set(true);
    }

    /// Whether a sink of this dataflow, on this or another worker, has failed. The safe time
    /// then stays at what was durable before the failure: a reader waiting for it to reach
    /// the end of time should stop waiting.
    pub fn sink_failed(&self) -> bool {
        self.sink_failed.get()
    }

    /// The durable frontier over all sinks and workers: `None` until every sink has heard from
    /// every worker (or without sinks), `Some(None)` when all are complete.
    pub(crate) fn durable(&self) -> Option<Option<Time>> {
        let sinks = self.sinks.borrow();
        if sinks.is_empty() {
            return None;
        }
        let mut all = None;
        for sink in sinks.iter() {
            all = min_frontier(all, sink.durable.get()?);
        }
        Some(all)
    }

    /// This worker's safe input frontier given the sinks' durable frontier `w`: `w` carried
    /// upstream through the retention of every operator of this worker, in reverse build
    /// order.
    pub(crate) fn local_safe(&self, w: Option<Time>) -> Option<Time> {
        let mut w = w;
        for retention in self.retention.borrow().iter().rev() {
            w = min_frontier(w, retention.safe_input(w));
        }
        w
    }

    /// The time below which every input record of this dataflow is fully accounted for:
    /// everything derived from it is durably written by every sink and no operator state, on
    /// any worker, refers to it. `None` when the dataflow has no durable sink (nothing is ever
    /// safe); `Some(Time::MAX)` once everything is.
    ///
    /// A source combines it with its own bookkeeping of which records it read before which time.
    pub fn safe_time(&self) -> Option<Time> {
        let sinks = self.sinks.borrow();
        if sinks.is_empty() {
            return None;
        }
        let mut safe = None;
        for sink in sinks.iter() {
            let (Some(durable), Some(retained)) = (sink.durable.get(), sink.retained.get()) else {
                return Some(0);
            };
            safe = min_frontier(safe, min_frontier(durable, retained));
        }
        Some(safe.unwrap_or(Time::MAX))
    }

    /// The minimum frontier over registered consumers: `None` without consumers,
    /// `Some(None)` when all are complete. Programs that feed inputs themselves can wait on it.
    pub fn frontier(&self) -> Option<Option<Time>> {
        let probes = self.probes.borrow();
        if probes.is_empty() {
            return None;
        }
        let mut min: Option<Time> = None;
        for probe in probes.iter() {
            if let Some(t) = probe.with_frontier(|f| f.first().copied()) {
                min = Some(min.map_or(t, |m| m.min(t)));
            }
        }
        Some(min)
    }
}

thread_local! {
    static GROUPS: RefCell<HashMap<usize, Rc<FlowGroup>>> = RefCell::new(HashMap::new());
}

/// The flow group of the dataflow `scope` belongs to (per worker thread).
pub fn group(scope: Scope<'_, Time>) -> Rc<FlowGroup> {
    let dataflow = scope.addr().first().copied().unwrap_or_default();
    let worker = scope.index();
    GROUPS.with(|groups| {
        // Key by worker too: tests run several single-threaded "clusters" on one thread
        // rarely, but workers of one process never share a thread.
        let key = dataflow.wrapping_mul(1 << 20).wrapping_add(worker);
        Rc::clone(groups.borrow_mut().entry(key).or_default())
    })
}

/// Registers `probe` as a consumer of the dataflow `scope` belongs to: its sources will not
/// run further ahead of it than their flow-control bound.
pub fn watch(scope: Scope<'_, Time>, probe: &ProbeHandle<Time>) {
    group(scope).probes.borrow_mut().push(probe.clone());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_counts_only_once_the_output_is_safe_past_its_frontier() {
        let log = RetentionLog::new();
        log.record(Some(100), Some(40));
        log.record(Some(200), Some(150));
        // Output safe before 50: only the initial snapshot (frontier 0) is covered.
        assert_eq!(log.safe_input(Some(50)), Some(0));
        // Output safe before 120: at frontier 100 the state referred to inputs from 40.
        assert_eq!(log.safe_input(Some(120)), Some(40));
        assert_eq!(log.safe_input(Some(250)), Some(150));
        log.record(None, Some(170));
        assert_eq!(log.safe_input(Some(300)), Some(150), "not complete until the output is");
        assert_eq!(log.safe_input(None), None, "a complete operator holds nothing back, whatever its state");
    }

    #[test]
    fn state_free_snapshots_are_bounded_by_their_frontier() {
        let log = RetentionLog::new();
        log.record(Some(100), None);
        assert_eq!(log.safe_input(Some(500)), Some(100), "inputs after 100 may still arrive");
    }
}
