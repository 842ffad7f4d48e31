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

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use timely::dataflow::Scope;
use timely::dataflow::operators::probe::Handle as ProbeHandle;

use crate::time::Time;

/// The consumers' frontiers of one dataflow on one worker.
#[derive(Default)]
pub(crate) struct FlowGroup {
    probes: RefCell<Vec<ProbeHandle<Time>>>,
}

impl FlowGroup {
    /// The minimum frontier over registered consumers: `None` without consumers,
    /// `Some(None)` when all are complete.
    pub(crate) fn frontier(&self) -> Option<Option<Time>> {
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
pub(crate) fn group(scope: Scope<'_, Time>) -> Rc<FlowGroup> {
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
