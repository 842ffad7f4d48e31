//! Flow control: a slow consumer slows the producer instead of buffering without bound.
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
//! The flow group also knows what is *safe*: sinks report the frontier up to which their output
//! is durable, and stateful operators declare how long after its time a record can still
//! affect their output ([`Retention`]). [`FlowGroup::safe_time`] combines them into the time
//! below which every input record is fully accounted for — everything derived from it is
//! durably written and no state refers to it — which is what an at-least-once source may
//! commit (DESIGN §7).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use timely::dataflow::Scope;
use timely::dataflow::operators::probe::Handle as ProbeHandle;

use crate::time::Time;

/// How long after its time an input record can still affect an operator's output.
#[derive(Clone, Debug)]
pub enum Retention {
    /// At most this many ms after the record's time (windows: size + allowed lateness).
    Bounded(u64),
    /// The operator reports the oldest time it still holds; `None` when it holds nothing.
    Live(Rc<Cell<Option<Time>>>),
    /// Forever (e.g. an unbounded join): records are safe only once the sinks are complete.
    Unbounded,
}

/// The consumers' frontiers of one dataflow on one worker.
#[derive(Default)]
pub struct FlowGroup {
    probes: RefCell<Vec<ProbeHandle<Time>>>,
    durable: RefCell<Vec<Rc<Cell<Option<Option<Time>>>>>>,
    retention: RefCell<Vec<Retention>>,
    sink_failed: Cell<bool>,
}

impl FlowGroup {
    /// Registers a sink's durable frontier: the cell holds `Some(Some(t))` once everything
    /// before `t` is durably written, `Some(None)` once the sink is complete.
    pub fn register_durable(&self, cell: Rc<Cell<Option<Option<Time>>>>) {
        self.durable.borrow_mut().push(cell);
    }

    /// Declares an operator's retention.
    pub fn register_retention(&self, retention: Retention) {
        self.retention.borrow_mut().push(retention);
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

    /// The time below which every input record of this dataflow is fully accounted for:
    /// everything derived from it is durably written by every sink and no operator state
    /// refers to it. `None` when the dataflow has no durable sink (nothing is ever safe).
    ///
    /// This worker's view: a source combines it with its own bookkeeping of which records it
    /// read before which time.
    pub fn safe_time(&self) -> Option<Time> {
        let durable = self.durable.borrow();
        if durable.is_empty() {
            return None;
        }
        let mut written: Option<Time> = None; // None: every sink is complete
        for cell in durable.iter() {
            match cell.get() {
                None => return Some(0),
                Some(None) => {}
                Some(Some(t)) => written = Some(written.map_or(t, |w| w.min(t))),
            }
        }
        let Some(written) = written else { return Some(Time::MAX) };
        let mut safe = written;
        for retention in self.retention.borrow().iter() {
            match retention {
                Retention::Bounded(ms) => safe = safe.min(written.saturating_sub(*ms)),
                Retention::Live(oldest) => {
                    if let Some(oldest) = oldest.get() {
                        safe = safe.min(oldest);
                    }
                }
                Retention::Unbounded => return Some(0),
            }
        }
        Some(safe)
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
