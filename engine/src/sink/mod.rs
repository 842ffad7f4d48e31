//! Sinks: where collections leave the dataflow.
//!
//! A sink buffers each time's updates until the frontier has passed that time, then hands
//! them, consolidated and sorted, to a [`SinkWriter`]; it tells the writer when the frontier
//! advances (a flush and durability point) and when the input is complete. Nothing is
//! written for a time before that time is final, so a sink's output is a deterministic
//! changelog: identical for any number of workers.
//!
//! Errors are not dropped: the first error of a writer is kept in the [`SinkHandle`] (typed,
//! as the writer returned it), the sink stops writing, logs it, and [`SinkHandle::error`]
//! reports it as an [`Error::Sink`].
//!
//! # Durability
//!
//! What a writer has flushed is durable; the sink tells the dataflow's flow group
//! ([`crate::runtime::flow`]) how far that goes, over all workers, so that sources can acknowledge
//! their input (commit offsets) once everything derived from it is durable. Each worker's
//! part of a sink stays alive after its input completes until it has heard that every
//! worker's part completed (or one failed), so every worker learns that the whole output is
//! durable before the dataflow shuts down.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use differential_dataflow::VecCollection;
use differential_dataflow::consolidation::consolidate;
use std::rc::Rc;

use timely::communication::Pull;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use crate::checkpoint::SinkSnapshot;
use crate::runtime::control::Broadcast;
use crate::runtime::flow::{FlowGroup, SinkProgress, min_frontier};
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

    /// For a checkpoint ([`crate::checkpoint`]): makes everything written so far durable (a
    /// file synced) and returns what [`restore`](Self::restore) needs to continue from exactly
    /// here — e.g. the file's length. Called between writes, when every time before the last
    /// frontier given to [`advance`](Self::advance) is written. The default cannot: a dataflow
    /// with this sink cannot be checkpointed.
    ///
    /// `id` numbers the checkpoint; a transactional writer makes it its epoch.
    fn checkpoint(&mut self, id: u64) -> Result<Vec<u8>> {
        let _ = id;
        Err(Error::Config("this sink cannot be checkpointed".into()))
    }

    /// Continues from a checkpoint, before the first write: `state` is what
    /// [`checkpoint`](Self::checkpoint) returned (e.g. truncate the file to the length it had),
    /// and `written` the frontier the writer had written then. Returns the frontier from which
    /// the sink gives it updates again: `written`, unless the writer knows its output stops
    /// earlier (a transaction the crash aborted: the frontier its last committed epoch
    /// reached).
    fn restore(&mut self, state: &[u8], written: Option<Time>) -> Result<Option<Time>> {
        let _ = (state, written);
        Err(Error::Config("this sink cannot resume from a checkpoint".into()))
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
    /// The first error, and the worker whose writer reported it.
    error: Option<(usize, Arc<Error>)>,
    frontiers: BTreeMap<usize, Option<Time>>,
    complete: BTreeMap<usize, bool>,
}

/// What the handles of one sink share; the metrics registry holds it weakly.
#[derive(Debug)]
pub(crate) struct SinkShared {
    name: String,
    state: Mutex<SinkState>,
    records: AtomicU64,
}

impl SinkShared {
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn records_written(&self) -> u64 {
        self.records.load(Ordering::Relaxed)
    }
}

/// Observes a sink from the program: its progress, the updates it wrote, and its first error.
///
/// A handle is exported (`tideline_sink_records_total{sink}`, see
/// [`crate::runtime::metrics::serve`]) while it or a clone is alive; handles with one name
/// are exported as one sink.
#[derive(Clone, Debug)]
pub struct SinkHandle {
    shared: Arc<SinkShared>,
}

impl SinkHandle {
    /// A handle for the sink `name`. Share one handle between the workers of a process to
    /// see all of them.
    pub fn new(name: impl Into<String>) -> Self {
        let shared = Arc::new(SinkShared { name: name.into(), state: Mutex::default(), records: AtomicU64::new(0) });
        crate::runtime::metrics::registry_register_sink(&shared);
        SinkHandle { shared }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SinkState> {
        self.shared.state.lock().expect("sink lock poisoned")
    }

    /// The sink's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The first error a writer reported, if any: an [`Error::Sink`] naming the sink and the
    /// worker, with the writer's own error as its source.
    pub fn error(&self) -> Option<Error> {
        let state = self.state();
        state.error.as_ref().map(|(worker, source)| Error::Sink {
            sink: self.shared.name.clone(),
            worker: *worker,
            source: Arc::clone(source),
        })
    }

    /// Updates (changelog rows, after consolidation) this process's writers have written.
    pub fn records_written(&self) -> u64 {
        self.shared.records_written()
    }

    /// The minimum frontier written by this process's workers (`None` once all are complete).
    pub fn written_frontier(&self) -> Option<Time> {
        self.state().frontiers.values().flatten().copied().min()
    }

    /// Whether every worker of this process that reported has written its complete input.
    pub fn is_complete(&self) -> bool {
        let state = self.state();
        !state.complete.is_empty() && state.complete.values().all(|c| *c)
    }

    /// Returns the sink's error, if any, as a `Result`.
    pub fn check(&self) -> Result<()> {
        match self.error() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    fn record_error(&self, worker: usize, error: Error) {
        tracing::error!(sink = %self.shared.name, worker, %error, "sink stopped: its writer failed");
        let mut state = self.state();
        if state.error.is_none() {
            state.error = Some((worker, Arc::new(error)));
        }
    }

    fn record_written(&self, updates: usize) {
        self.shared.records.fetch_add(updates as u64, Ordering::Relaxed);
    }

    fn record_frontier(&self, worker: usize, frontier: Option<Time>) {
        let mut state = self.state();
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
        let progress = Rc::new(SinkProgress::default());
        let flow = crate::runtime::flow::group(scope);
        flow.register_sink(Rc::clone(&progress));
        let mut builder = OperatorBuilder::new(name, scope);
        let info = builder.operator_info();
        let writer = Rc::new(RefCell::new(make_writer(index, peers)));
        let written = Rc::new(Cell::new(None));
        let failed = Rc::new(Cell::new(false));
        let resume = checkpointed::<D, W>(&flow, handle.name(), (index, peers), &writer, &written, &failed);
        let mut core = SinkCore {
            index,
            writer,
            written,
            resume,
            handle: handle.clone(),
            pending: Vec::new(),
            pending_min: None,
            ready: Vec::new(),
            updates: Vec::new(),
            last_frontier: None,
            failed,
            progress,
            flow,
            announcements: Broadcast::new(scope.worker(), Rc::clone(&info.address)),
            activator: scope.activator_for(Rc::clone(&info.address)),
            peers: vec![None; peers],
            announced: None,
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

/// Registers a sink's writer with the dataflow's checkpoints, if it has any, and restores it
/// from the checkpoint the job resumes from. Returns the frontier the restored writer had
/// written (updates before it are dropped): `None` without a restore.
fn checkpointed<D, W: SinkWriter<D>>(
    flow: &FlowGroup,
    name: &str,
    (index, peers): (usize, usize),
    writer: &Rc<RefCell<Option<W>>>,
    written: &Rc<Cell<Option<Option<Time>>>>,
    failed: &Rc<Cell<bool>>,
) -> Option<Option<Time>> {
    let mut hooks = flow.checkpoints.borrow_mut();
    let hooks = hooks.as_mut()?;
    let mut resume = None;
    if let Some(restored) = hooks.restored.clone().filter(|_| hooks.resume.is_some())
        && let Some(w) = writer.borrow_mut().as_mut()
    {
        let Some((mut frontier, state)) = restored.sink_part(name, index, peers) else {
            panic!(
                "checkpoint {} has no state for sink {name:?}: the pipeline changed since it was taken; \
                 start it with an empty checkpoint directory to run from the beginning",
                restored.id()
            )
        };
        if let Some(state) = state {
            match w.restore(state, frontier) {
                Ok(resume) => frontier = resume,
                Err(error) => panic!("sink {name:?} cannot resume from checkpoint {}: {error}", restored.id()),
            }
        }
        tracing::info!(sink = %name, worker = index, checkpoint = restored.id(), written = ?frontier, "sink resumes from a checkpoint");
        resume = Some(frontier);
    }
    let (writer, written, failed) = (Rc::clone(writer), Rc::clone(written), Rc::clone(failed));
    let restored = resume;
    hooks.add_sink(
        name,
        Box::new(move |id, need, save| {
            let mut writer = writer.borrow_mut();
            let Some(writer) = writer.as_mut() else { return SinkSnapshot::NoWriter };
            if failed.get() {
                return SinkSnapshot::Unsupported("its writer failed".into());
            }
            let Some(mut frontier) = written.get() else {
                return SinkSnapshot::Unsupported("it has not started".into());
            };
            // A restored writer holds everything before the frontier it was restored at, even
            // while the restored run's frontier is still behind it.
            if let Some(restored) = restored {
                frontier = match (frontier, restored) {
                    (None, _) | (_, None) => None,
                    (Some(a), Some(b)) => Some(a.max(b)),
                };
            }
            if frontier.is_some_and(|f| f < need) {
                return SinkSnapshot::NotYet;
            }
            if !save {
                return SinkSnapshot::Saved { written: frontier, state: Vec::new() };
            }
            match writer.checkpoint(id) {
                Ok(state) => SinkSnapshot::Saved { written: frontier, state },
                Err(error) => SinkSnapshot::Unsupported(error.to_string()),
            }
        }),
    );
    resume
}

struct SinkCore<D, W> {
    index: usize,
    /// Shared with the checkpoint hook (see [`checkpointed`]).
    writer: Rc<RefCell<Option<W>>>,
    /// The last frontier given to the writer's `advance`: every time before it is written.
    written: Rc<Cell<Option<Option<Time>>>>,
    /// Restored from a checkpoint: the writer already holds every time before this frontier.
    resume: Option<Option<Time>>,
    handle: SinkHandle,
    /// Updates whose time the frontier has not passed, in arrival order.
    pending: Vec<(D, Time, isize)>,
    pending_min: Option<Time>,
    /// Updates being written, sorted by time and data.
    ready: Vec<((Time, D), isize)>,
    /// One time's updates, for the writer.
    updates: Vec<(D, isize)>,
    last_frontier: Option<Option<Time>>,
    failed: Rc<Cell<bool>>,
    /// What every worker's part of this sink has durably written, and what their operators
    /// still retain, for the flow group (see [`crate::runtime::flow`]).
    progress: Rc<SinkProgress>,
    flow: Rc<FlowGroup>,
    /// Workers announce their durable frontiers and retention bounds to each other: records
    /// read by one worker may be written, or held in state, by another.
    announcements: Broadcast<(usize, Durable)>,
    /// What each worker last announced: (durable frontier, retention bound).
    peers: Vec<Option<(Option<Time>, Option<Time>)>>,
    announced: Option<(Option<Time>, Option<Time>)>,
    /// Some worker's part of this sink failed (it announced so).
    peer_failed: bool,
    announced_failure: bool,
    /// Schedules this operator: once its input is complete it waits for what other sinks and
    /// other workers' operators report, which does not schedule it; and while its writer's
    /// acknowledgements are outstanding.
    activator: timely::scheduling::Activator,
}

/// What a worker's part of a sink tells the others.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum Durable {
    /// Everything before the first frontier is durably written (`None`: everything), and the
    /// worker's operators retain no input before the second, given the durable frontier it
    /// knew ([`FlowGroup::local_safe`]).
    Upto(Option<Time>, Option<Time>),
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
        input.for_each(|_cap, data| {
            for update in data.drain(..) {
                self.pending_min = Some(self.pending_min.map_or(update.1, |m| m.min(update.1)));
                self.pending.push(update);
            }
        });
        let current = frontier.frontier().first().copied();
        let passed = |t: Time| current.is_none_or(|f| t < f);
        if self.pending_min.is_some_and(passed) {
            // One pass over everything the frontier has passed: sorted by time and data, and
            // consolidated once, then handed to the writer one time at a time.
            let mut min = None;
            let mut kept = 0;
            for i in 0..self.pending.len() {
                let t = self.pending[i].1;
                if passed(t) {
                    continue;
                }
                min = Some(min.map_or(t, |m: Time| m.min(t)));
                self.pending.swap(kept, i);
                kept += 1;
            }
            self.ready.extend(self.pending.drain(kept..).map(|(d, t, r)| ((t, d), r)));
            self.pending_min = min;
            if let Some(resume) = self.resume {
                // Restored: the writer holds every time before the frontier it had written.
                self.ready.retain(|((t, _), _)| resume.is_some_and(|f| *t >= f));
            }
            consolidate_unstable(&mut self.ready);
            let mut writer = self.writer.borrow_mut();
            let mut ready = self.ready.drain(..).peekable();
            while let Some(((time, datum), diff)) = ready.next() {
                self.updates.clear();
                self.updates.push((datum, diff));
                while let Some(((_, datum), diff)) = ready.next_if(|((t, _), _)| *t == time) {
                    self.updates.push((datum, diff));
                }
                if self.failed.get() {
                    continue;
                }
                if let Some(writer) = writer.as_mut() {
                    match writer.write(time, &self.updates) {
                        Ok(()) => self.handle.record_written(self.updates.len()),
                        Err(error) => {
                            self.handle.record_error(self.index, error);
                            self.failed.set(true);
                        }
                    }
                }
            }
        }
        let mut writer = self.writer.borrow_mut();
        if self.last_frontier != Some(current) {
            self.last_frontier = Some(current);
            if !self.failed.get()
                && let Some(writer) = writer.as_mut()
            {
                match writer.advance(current) {
                    Ok(()) => self.written.set(Some(current)),
                    Err(error) => {
                        self.handle.record_error(self.index, error);
                        self.failed.set(true);
                    }
                }
            }
            self.handle.record_frontier(self.index, current);
        }
        // How far this worker's output is durable: everything written, for writers that flush
        // in `advance`; what has been acknowledged, for those that flush asynchronously.
        let durable = match writer.as_mut() {
            Some(writer) if !self.failed.get() => match writer.durable() {
                Ok(Durability::Flushed) => current,
                Ok(Durability::Behind(time)) => {
                    self.activator.activate_after(std::time::Duration::from_millis(1));
                    Some(current.map_or(time, |c| c.min(time)))
                }
                Err(error) => {
                    self.handle.record_error(self.index, error);
                    self.failed.set(true);
                    current
                }
            },
            _ => current,
        };
        drop(writer);
        if self.failed.get() && !self.announced_failure {
            self.announcements.send((self.index, Durable::Failed));
            self.announced_failure = true;
            self.flow.record_sink_failure();
        }
        if !self.failed.get() {
            // Everything before `durable` is durable. Tell the peers, with what this worker's
            // operators still retain given the durability it knows of.
            let written = self.flow.durable().unwrap_or(Some(0));
            let announce = (durable, self.flow.local_safe(written));
            if self.announced != Some(announce) {
                self.announcements.send((self.index, Durable::Upto(announce.0, announce.1)));
                self.announced = Some(announce);
                // Known here at once: waiting for the broadcast to come back would leave it
                // unknown until the next activation, which may never come.
                self.peers[self.index] = Some(announce);
            }
        }
        while let Some((peer, durable)) = self.announcements.recv() {
            match durable {
                // Its own announcements are recorded when sent.
                Durable::Upto(..) if peer == self.index => {}
                Durable::Upto(frontier, retained) => self.peers[peer] = Some((frontier, retained)),
                Durable::Failed => {
                    self.peer_failed = true;
                    self.flow.record_sink_failure();
                }
            }
        }
        let mut all: Option<(Option<Time>, Option<Time>)> = Some((None, None));
        for peer in &self.peers {
            all = match (all, peer) {
                (Some((d, r)), Some((pd, pr))) => Some((min_frontier(d, *pd), min_frontier(r, *pr))),
                _ => None,
            };
        }
        self.progress.durable.set(all.map(|(d, _)| d));
        self.progress.retained.set(all.map(|(_, r)| r));
        let done = current.is_none()
            && (all.is_some_and(|(d, r)| d.is_none() && r.is_none())
                || self.failed.get()
                || self.peer_failed
                // Another sink of the dataflow failed: nothing will be safe to the end any more.
                || self.flow.sink_failed());
        if current.is_none() && !done {
            // What it waits for (other sinks completing, operators releasing state) arrives
            // without scheduling it: look again shortly.
            self.activator.activate_after(std::time::Duration::from_millis(1));
        } else if !done && all.is_none_or(|(d, r)| min_frontier(d, r) != current) {
            // The safe point lags what is written: it moves when other sinks, other workers or
            // the operators' retention move, none of which schedules this sink. Look again
            // soon, so that sources can acknowledge input within a few tens of milliseconds.
            self.activator.activate_after(std::time::Duration::from_millis(20));
        }
        !done
    }
}

/// Sorts `updates` by time and data and sums the diffs of equal ones, dropping zeros. In
/// place, with an unstable sort: differential's `consolidate` sorts stably, which moves every
/// element through a scratch buffer — with rows of tens of bytes, a sixth of `window_agg`'s
/// time on a sliding-window query. Equal elements are merged, so stability does not matter.
fn consolidate_unstable<D: Ord>(updates: &mut Vec<((Time, D), isize)>) {
    updates.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let mut kept = 0;
    for i in 0..updates.len() {
        if kept > 0 && updates[kept - 1].0 == updates[i].0 {
            updates[kept - 1].1 += updates[i].1;
        } else {
            if kept > 0 && updates[kept - 1].1 == 0 {
                kept -= 1;
            }
            updates.swap(kept, i);
            kept += 1;
        }
    }
    if kept > 0 && updates[kept - 1].1 == 0 {
        kept -= 1;
    }
    updates.truncate(kept);
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

    /// An in-memory collector keeps nothing across a restart: restored, it holds only what
    /// comes after the checkpoint.
    fn checkpoint(&mut self, _id: u64) -> Result<Vec<u8>> {
        Ok(Vec::new())
    }

    fn restore(&mut self, _state: &[u8], written: Option<Time>) -> Result<Option<Time>> {
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::consolidate_unstable;

    #[test]
    fn consolidates_like_differential() {
        let mut state = 7u64;
        for _ in 0..200 {
            let mut updates: Vec<((u64, u8), isize)> = (0..40)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    (((state >> 60) % 4, ((state >> 40) % 5) as u8), ((state >> 20) % 5) as isize - 2)
                })
                .collect();
            let mut expected = updates.clone();
            differential_dataflow::consolidation::consolidate(&mut expected);
            consolidate_unstable(&mut updates);
            assert_eq!(updates, expected);
        }
    }
}
