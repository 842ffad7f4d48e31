//! Sinks: where collections leave the dataflow.
//!
//! A sink buffers each time's updates until the frontier has passed that time, then hands
//! them, consolidated and sorted, to a [`SinkWriter`]; it tells the writer when the frontier
//! advances (a flush and durability point) and when the input is complete. Nothing is
//! written for a time before that time is final, so a sink's output is a deterministic
//! changelog: identical for any number of workers.
//!
//! Errors are not dropped: the first error of a writer is kept in the [`SinkHandle`], the
//! sink stops writing, and [`SinkHandle::error`] reports it.
//!
//! # Durability
//!
//! What a writer has flushed is durable; the sink tells the dataflow's flow group
//! ([`crate::runtime::flow`]) how far that goes, over all workers, so that sources can acknowledge
//! their input (commit offsets) once everything derived from it is durable. Each worker's
//! part of a sink stays alive after its input completes until it has heard that every
//! worker's part completed (or one failed), so every worker learns that the whole output is
//! durable before the dataflow shuts down.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use differential_dataflow::VecCollection;
use differential_dataflow::consolidation::consolidate;
use std::cell::Cell;
use std::rc::Rc;

use timely::communication::Pull;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use crate::runtime::control::Broadcast;
use crate::runtime::flow::FlowGroup;
use timely::dataflow::channels::Message;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::InputHandleCore;
use timely::progress::frontier::MutableAntichain;

use crate::error::{Error, Result};
use crate::runtime::ExchangeData;
use crate::time::Time;

/// Writes the updates of completed times somewhere.
pub trait SinkWriter<D>: 'static {
    /// Writes the updates of `time`, consolidated and sorted by data. Called in time order,
    /// once per time, after the frontier has passed `time`.
    fn write(&mut self, time: Time, updates: &[(D, isize)]) -> Result<()>;

    /// Every time before `frontier` has been written (`None`: the input is complete and
    /// nothing more will come). Flush here; what is flushed is durable. A writer that only
    /// *starts* flushing here (its acknowledgements arrive later) says how far it got in
    /// [`durable`](Self::durable).
    fn advance(&mut self, frontier: Option<Time>) -> Result<()>;

    /// How far the output is durable now. The default, for writers that flush in
    /// [`advance`](Self::advance), is [`Durability::Flushed`]: everything given to `advance`
    /// is durable when it returns.
    ///
    /// A writer that flushes asynchronously returns [`Durability::Behind`] while
    /// acknowledgements are outstanding; the sink then asks again about every millisecond (so
    /// the writer can serve its client's callbacks), and only what is durable counts for the
    /// sources' commits (see [`crate::runtime::flow`]). The worker keeps computing meanwhile.
    fn durable(&mut self) -> Result<Durability> {
        Ok(Durability::Flushed)
    }
}

/// How far a [`SinkWriter`]'s output is durable ([`SinkWriter::durable`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Everything given to [`SinkWriter::advance`] so far is durable.
    Flushed,
    /// Everything before this time is durable; later output is still being acknowledged.
    Behind(Time),
}

/// Where a sink's writers run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SinkParallelism {
    /// All updates go to worker 0 (of process 0), which alone writes: one output.
    #[default]
    Single,
    /// Every worker writes its own share.
    PerWorker,
}

#[derive(Debug, Default)]
struct SinkState {
    error: Option<String>,
    frontiers: BTreeMap<usize, Option<Time>>,
    complete: BTreeMap<usize, bool>,
}

/// Observes a sink from the program: its progress and its first error.
#[derive(Clone, Debug)]
pub struct SinkHandle {
    name: String,
    state: Arc<Mutex<SinkState>>,
}

impl SinkHandle {
    /// A handle for the sink `name`. Share one handle between the workers of a process to
    /// see all of them.
    pub fn new(name: impl Into<String>) -> Self {
        SinkHandle { name: name.into(), state: Arc::default() }
    }

    /// The sink's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The first error a writer reported, if any.
    pub fn error(&self) -> Option<Error> {
        let state = self.state.lock().expect("sink lock poisoned");
        state.error.as_ref().map(|message| Error::Sink { sink: self.name.clone(), message: message.clone() })
    }

    /// The minimum frontier written by this process's workers (`None` once all are complete).
    pub fn written_frontier(&self) -> Option<Time> {
        let state = self.state.lock().expect("sink lock poisoned");
        state.frontiers.values().flatten().copied().min()
    }

    /// Whether every worker of this process that reported has written its complete input.
    pub fn is_complete(&self) -> bool {
        let state = self.state.lock().expect("sink lock poisoned");
        !state.complete.is_empty() && state.complete.values().all(|c| *c)
    }

    /// Returns the sink's error, if any, as a `Result`.
    pub fn check(&self) -> Result<()> {
        match self.error() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    fn record_error(&self, error: &Error) {
        let mut state = self.state.lock().expect("sink lock poisoned");
        if state.error.is_none() {
            // `error()` says which sink: keep a sink error's own message, so that the sink's
            // name is not said twice ("sink s: sink s: …").
            state.error = Some(match error {
                Error::Sink { sink, message } if *sink == self.name => message.clone(),
                other => other.to_string(),
            });
        }
    }

    fn record_frontier(&self, worker: usize, frontier: Option<Time>) {
        let mut state = self.state.lock().expect("sink lock poisoned");
        state.frontiers.insert(worker, frontier);
        state.complete.insert(worker, frontier.is_none());
    }
}

/// Sinks on collections.
pub trait Sink<D> {
    /// Writes the collection's changelog with writers made per worker by
    /// `make_writer(index, peers)` (return `None` on workers that do not write, e.g. all but
    /// worker 0 with [`SinkParallelism::Single`]). Progress and errors go to `handle`.
    fn sink_with<W, F>(self, handle: &SinkHandle, parallelism: SinkParallelism, make_writer: F)
    where
        W: SinkWriter<D>,
        F: FnOnce(usize, usize) -> Option<W>;

    /// Collects the changelog into `collected` (per worker; share one [`Collected`] between
    /// the workers of a process).
    fn collect_into(self, collected: &Collected<D>);
}

impl<D: ExchangeData> Sink<D> for VecCollection<'_, Time, D> {
    fn sink_with<W, F>(self, handle: &SinkHandle, parallelism: SinkParallelism, make_writer: F)
    where
        W: SinkWriter<D>,
        F: FnOnce(usize, usize) -> Option<W>,
    {
        let scope = self.inner.scope();
        let (index, peers) = (scope.index(), scope.peers());
        let name = format!("Sink({})", handle.name());
        let probe = timely::dataflow::operators::probe::Handle::new();
        let collection = self.probe_with(&probe);
        crate::runtime::flow::watch(scope, &probe);
        let durable = Rc::new(Cell::new(None));
        let flow = crate::runtime::flow::group(scope);
        flow.register_durable(Rc::clone(&durable));
        let mut builder = OperatorBuilder::new(name, scope);
        let info = builder.operator_info();
        let activator = scope.activator_for(Rc::clone(&info.address));
        let mut core = SinkCore {
            index,
            writer: make_writer(index, peers),
            handle: handle.clone(),
            pending: BTreeMap::new(),
            last_frontier: None,
            announced_durable: None,
            activator,
            failed: false,
            durable,
            flow,
            announcements: Broadcast::new(scope.worker(), Rc::clone(&info.address)),
            peers_durable: vec![Some(Some(0)); peers],
            peer_failed: false,
            announced_failure: false,
        };
        match parallelism {
            SinkParallelism::Single => {
                let mut input = builder.new_input(collection.inner, Exchange::new(|_: &(D, Time, isize)| 0u64));
                builder.build_reschedule(move |_| move |frontiers| core.step(&mut input, &frontiers[0]));
            }
            SinkParallelism::PerWorker => {
                let mut input = builder.new_input(collection.inner, Pipeline);
                builder.build_reschedule(move |_| move |frontiers| core.step(&mut input, &frontiers[0]));
            }
        }
    }

    fn collect_into(self, collected: &Collected<D>) {
        let handle = SinkHandle::new("collect");
        let target = collected.clone();
        self.sink_with(&handle, SinkParallelism::PerWorker, move |_, _| Some(target));
    }
}

struct SinkCore<D, W> {
    index: usize,
    writer: Option<W>,
    handle: SinkHandle,
    pending: BTreeMap<Time, Vec<(D, isize)>>,
    last_frontier: Option<Option<Time>>,
    /// What this worker last told its peers it has durably written.
    announced_durable: Option<Option<Time>>,
    /// Schedules the sink again while its writer's acknowledgements are outstanding.
    activator: timely::scheduling::Activator,
    failed: bool,
    /// What every worker's part of this sink has durably written (the minimum), for the flow
    /// group (see [`crate::runtime::flow`]).
    durable: Rc<Cell<Option<Option<Time>>>>,
    flow: Rc<FlowGroup>,
    /// Workers announce their durable frontiers to each other: records read by one worker
    /// may be written by another.
    announcements: Broadcast<(usize, Durable)>,
    peers_durable: Vec<Option<Option<Time>>>,
    /// Some worker's part of this sink failed (it announced so).
    peer_failed: bool,
    announced_failure: bool,
}

/// What a worker's part of a sink tells the others.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
enum Durable {
    /// Everything before this frontier is durably written (`None`: everything).
    Upto(Option<Time>),
    /// The writer failed: its output stops where it was.
    Failed,
}

impl<D: ExchangeData, W: SinkWriter<D>> SinkCore<D, W> {
    /// Writes what is complete and exchanges durable frontiers with the peers. Returns whether
    /// this part of the sink must stay alive: until its input is complete *and* it has heard
    /// that every worker's part is complete (or one failed). Timely shuts an operator down as
    /// soon as its input is complete unless it says it is incomplete; without this, a worker
    /// finishing first would never hear that its peers finished too, and its flow group would
    /// never see the sink complete.
    fn step<P>(
        &mut self,
        input: &mut InputHandleCore<Time, Vec<(D, Time, isize)>, P>,
        frontier: &MutableAntichain<Time>,
    ) -> bool
    where
        P: Pull<Message<Time, Vec<(D, Time, isize)>>>,
    {
        let pending = &mut self.pending;
        input.for_each(|_cap, data| {
            for (datum, time, diff) in data.drain(..) {
                pending.entry(time).or_default().push((datum, diff));
            }
        });
        let current = frontier.frontier().first().copied();
        while let Some(entry) = self.pending.first_entry() {
            if current.is_some_and(|f| f <= *entry.key()) {
                break;
            }
            let (time, mut updates) = entry.remove_entry();
            consolidate(&mut updates);
            if self.failed || updates.is_empty() {
                continue;
            }
            if let Some(writer) = self.writer.as_mut()
                && let Err(error) = writer.write(time, &updates)
            {
                self.handle.record_error(&error);
                self.failed = true;
            }
        }
        if self.last_frontier != Some(current) {
            self.last_frontier = Some(current);
            if !self.failed
                && let Some(writer) = self.writer.as_mut()
                && let Err(error) = writer.advance(current)
            {
                self.handle.record_error(&error);
                self.failed = true;
            }
            self.handle.record_frontier(self.index, current);
        }
        if !self.failed
            && let Some(writer) = self.writer.as_mut()
        {
            // Everything before `durable` is written and acknowledged. Tell the peers.
            let durable = match writer.durable() {
                Ok(Durability::Flushed) => Some(current),
                Ok(Durability::Behind(time)) => {
                    self.activator.activate_after(std::time::Duration::from_millis(1));
                    Some(Some(current.map_or(time, |c| c.min(time))))
                }
                Err(error) => {
                    self.handle.record_error(&error);
                    self.failed = true;
                    None
                }
            };
            if let Some(durable) = durable
                && self.announced_durable != Some(durable)
            {
                self.announced_durable = Some(durable);
                self.announcements.send((self.index, Durable::Upto(durable)));
            }
        } else if !self.failed && self.announced_durable != Some(current) {
            // Workers without a writer have nothing to flush.
            self.announced_durable = Some(current);
            self.announcements.send((self.index, Durable::Upto(current)));
        }
        if self.failed && !self.announced_failure {
            self.announcements.send((self.index, Durable::Failed));
            self.announced_failure = true;
            self.flow.record_sink_failure();
        }
        while let Some((peer, durable)) = self.announcements.recv() {
            match durable {
                Durable::Upto(frontier) => self.peers_durable[peer] = Some(frontier),
                Durable::Failed => {
                    self.peer_failed = true;
                    self.flow.record_sink_failure();
                }
            }
        }
        let mut all: Option<Option<Time>> = Some(None);
        for peer in &self.peers_durable {
            all = match (all, peer) {
                (_, None) | (None, _) => None,
                (Some(a), Some(p)) => Some(match (a, p) {
                    (None, p) => *p,
                    (a, None) => a,
                    (Some(a), Some(p)) => Some(a.min(*p)),
                }),
            };
        }
        self.durable.set(all);
        !(current.is_none() && (all == Some(None) || self.failed || self.peer_failed))
    }
}

/// Updates collected by [`Sink::collect_into`], for tests and small programs.
#[derive(Debug)]
pub struct Collected<D> {
    updates: Arc<Mutex<Vec<(D, Time, isize)>>>,
}

impl<D> Clone for Collected<D> {
    fn clone(&self) -> Self {
        Collected { updates: Arc::clone(&self.updates) }
    }
}

impl<D> Default for Collected<D> {
    fn default() -> Self {
        Collected { updates: Arc::default() }
    }
}

impl<D: ExchangeData> Collected<D> {
    /// An empty collector.
    pub fn new() -> Self {
        Self::default()
    }

    /// The changelog so far: consolidated `(data, time, diff)` sorted by time, then data.
    pub fn changelog(&self) -> Vec<(D, Time, isize)> {
        let mut updates: Vec<((Time, D), isize)> = self
            .updates
            .lock()
            .expect("collector lock poisoned")
            .iter()
            .map(|(d, t, r)| ((*t, d.clone()), *r))
            .collect();
        consolidate(&mut updates);
        updates.into_iter().map(|((t, d), r)| (d, t, r)).collect()
    }

    /// The collection accumulated over all times so far: `(data, multiplicity)`, sorted.
    pub fn contents(&self) -> Vec<(D, isize)> {
        let mut updates: Vec<(D, isize)> =
            self.updates.lock().expect("collector lock poisoned").iter().map(|(d, _, r)| (d.clone(), *r)).collect();
        consolidate(&mut updates);
        updates
    }
}

impl<D: ExchangeData> SinkWriter<D> for Collected<D> {
    fn write(&mut self, time: Time, updates: &[(D, isize)]) -> Result<()> {
        let mut target = self.updates.lock().expect("collector lock poisoned");
        target.extend(updates.iter().map(|(d, r)| (d.clone(), time, *r)));
        Ok(())
    }

    fn advance(&mut self, _frontier: Option<Time>) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sink_error_names_its_sink_once() {
        let handle = SinkHandle::new("results");
        handle.record_error(&Error::Sink { sink: "results".into(), message: "delivery failed".into() });
        assert_eq!(handle.error().unwrap().to_string(), "sink results: delivery failed");
        let other = SinkHandle::new("late");
        other.record_error(&Error::Runtime("worker gone".into()));
        assert_eq!(other.error().unwrap().to_string(), "sink late: runtime: worker gone");
    }
}
