//! Checkpoints and recovery (DESIGN §8): a pipeline killed at any moment resumes from its last
//! checkpoint, and its sinks' output is what an uninterrupted run writes.
//!
//! # What a checkpoint holds
//!
//! Two things, so that a restore can take either road:
//!
//! - **Operator state at a snapshot time `T`.** Every temporal operator (the driver in
//!   [`crate::state`]) that can serialise its state — sessions and keyed process functions
//!   today — takes it once it has applied every input before `T` and nothing at or after it:
//!   its keys, accumulators, user state and pending timers. For every source, the checkpoint
//!   also records where to read again so that every record whose dataflow time is at least `T`
//!   comes again. A restore loads the state and reads the inputs from `T` only, however old the
//!   state is: a session open since the start of the input, or a user's state machine, costs
//!   its size, not a replay of its history. With another number of workers, every worker reads
//!   every worker's state and keeps the keys the exchange now sends it.
//! - **A replay time `R`.** Every stateful operator, on every worker, has told the flow group
//!   ([`crate::runtime::flow`]) the oldest input its state still refers to; `R` is at most that,
//!   over all operators and workers, as of a frontier every sink has written. For every source,
//!   where to read again for `R`. A restore from `R` re-reads the inputs from there and drops
//!   the records before it; operators rebuild their state from the rest, exactly as it was,
//!   because every decision they make (a window closing, a record being late) depends only on
//!   dataflow times.
//!
//! The state is used when every stateful operator of the dataflow can take it (sessions,
//! process functions, and operators without state). Otherwise — tumbling and sliding windows,
//! whose pre-aggregated pane deltas travel at their batch's time, so a delta applied before `T`
//! may hold records read again after it; dedup, top-N, joins, tables, whose state is not
//! serialised yet; equi-joins and tables kept by differential; a program's own differential
//! operators — the checkpoint replays from `R`. For windows `R` is about one window behind the
//! watermark. Dedup, equi-joins and tables hold `R` at the start (their state depends on every
//! earlier input): a restart re-reads everything — correct, not fast.
//!
//! In both cases each sink records the frontier it had written and what it needs to continue
//! (a file's length); a restored sink drops the updates before that frontier, which it already
//! holds, and continues after them.
//!
//! # The protocol
//!
//! [`Checkpointing::install`] adds a coordinator to a dataflow. Every `interval`, worker 0 takes
//! the replay time `R` (the flow group's safe time). If the operators can take their state, it
//! asks every worker, over a control channel, to hold its temporal operators where they are:
//! each says how far its operators could apply their inputs, and the furthest of those is the
//! snapshot time `T` (held, no operator can pass it before every worker knows it). Each worker
//! then notes where its sources would read again for `R` and for `T`, tells its operators to
//! take their state at `T`, and lets them go on once every worker knows `T`. A worker writes its
//! part (checksummed) to the [`CheckpointStore`] once each of its operators has taken its state
//! and each of its sinks has written, and made durable, every time before `T`; once every
//! worker's part is written, worker 0 writes the manifest, and the checkpoint counts. The
//! dataflow keeps running meanwhile: operators pause only while the workers agree on `T` (a
//! few control messages), and a worker only for as long as its sinks take to sync and its part
//! takes to write. A checkpoint is skipped while the operators have not moved past where the
//! run started (it would only repeat that).
//!
//! An exactly-once sink commits its epoch as it takes its part (see `KafkaSink::exactly_once`
//! in the connectors), so after a crash its committed output may be ahead of the checkpoint
//! restored (a later round committed epochs and then failed, or the crash came before its
//! manifest), never behind it: the restored sink resumes after its last committed epoch, and
//! since the replay covers everything after the checkpoint's own frontier, it covers that.
//!
//! On start, [`Checkpointing::open`] loads the newest checkpoint whose manifest and parts
//! are intact (a damaged one is reported in one log line and the one before it used). A
//! checkpoint written by `N` workers restores with any number: sources re-divide their
//! partitions, operator state is re-divided by key, and single-writer sinks (files) write on
//! worker 0 whatever the count.
//!
//! When every sink has written its complete input, worker 0 removes the checkpoints: the next
//! run with the same store starts from the beginning.

mod store;

pub use store::{CheckpointStore, LocalDirStore};

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use timely::dataflow::Scope;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use crate::runtime::control::Broadcast;
use crate::runtime::flow::FlowGroup;
use crate::runtime::metrics::CheckpointMetrics;
use crate::time::Time;

/// A fault-injection point for crash tests, compiled into debug builds only: if the
/// environment variable `TIDELINE_FAULT` is `NAME` (or `NAME@N`, the `N`th time this process
/// reaches the point), the process aborts here, as a `kill -9` would stop it. Points: `part`
/// (a worker wrote its part of a checkpoint, before the manifest), `manifest` (the manifest is
/// written, before sinks hear of it), and in the Kafka sink `kafka-commit` (an epoch's marker
/// is flushed, before its transaction commits) and `kafka-committed` (after the commit, before
/// the worker's part is written). In release builds it does nothing.
pub fn fault_point(name: &str) {
    #[cfg(debug_assertions)]
    {
        use std::sync::atomic::{AtomicU64, Ordering};
        static HITS: AtomicU64 = AtomicU64::new(0);
        let Ok(wanted) = std::env::var("TIDELINE_FAULT") else { return };
        let (point, nth) = match wanted.split_once('@') {
            Some((point, n)) => (point.to_string(), n.parse::<u64>().unwrap_or(1)),
            None => (wanted, 1),
        };
        if point == name && HITS.fetch_add(1, Ordering::SeqCst) + 1 >= nth {
            eprintln!("tideline: fault injected at {name} (TIDELINE_FAULT={point}@{nth}): aborting");
            std::process::abort();
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}

/// What a worker's part of a checkpoint holds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct WorkerPart {
    worker: usize,
    /// Per source (by name): the reader's state for the replay time.
    sources: Vec<(String, Vec<u8>)>,
    /// Per source (by name): the reader's state for the snapshot time, if operator state was
    /// taken.
    sources_at: Vec<(String, Vec<u8>)>,
    /// Per temporal operator (by key): its state at the snapshot time.
    operators: Vec<(String, Vec<u8>)>,
    /// Per sink writer on this worker (by name).
    sinks: Vec<SinkPart>,
}

/// A sink writer's part of a checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct SinkPart {
    pub(crate) name: String,
    pub(crate) worker: usize,
    /// The frontier the writer had written (`None`: all of its input).
    pub(crate) written: Option<Time>,
    pub(crate) state: Vec<u8>,
}

/// What makes a checkpoint count: its parts, with their checksums.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Manifest {
    id: u64,
    replay_from: Time,
    /// Whether a restore may rebuild operator state by replaying from `replay_from` (not after
    /// a restore from operator state: the inputs before that state's time are not read again).
    replayable: bool,
    /// The time at which every temporal operator's state was taken, if it was.
    snapshot_at: Option<Time>,
    workers: usize,
    /// Per worker: the part's CRC-32 and size.
    parts: Vec<(u32, u64)>,
    created_unix_ms: u64,
}

/// Appends a CRC-32 of `body` to it.
fn sealed(mut body: Vec<u8>) -> Vec<u8> {
    let crc = crc32fast::hash(&body);
    body.extend_from_slice(&crc.to_le_bytes());
    body
}

/// The body of a sealed file, if its checksum holds.
fn unseal(bytes: &[u8]) -> Result<&[u8], String> {
    if bytes.len() < 4 {
        return Err(format!("truncated ({} bytes)", bytes.len()));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let expected = u32::from_le_bytes(crc.try_into().expect("four bytes"));
    if crc32fast::hash(body) != expected {
        return Err("checksum mismatch".into());
    }
    Ok(body)
}

/// A checkpoint loaded at start: what sources and sinks resume from.
#[derive(Debug)]
pub struct Restored {
    id: u64,
    replay_from: Time,
    replayable: bool,
    snapshot_at: Option<Time>,
    workers: usize,
    sources: BTreeMap<String, Vec<Vec<u8>>>,
    sources_at: BTreeMap<String, Vec<Vec<u8>>>,
    operators: BTreeMap<(String, usize), Vec<u8>>,
    sinks: Vec<SinkPart>,
}

impl Restored {
    /// The checkpoint's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The replay time: sources drop re-read records whose dataflow time is below it.
    pub fn replay_from(&self) -> Time {
        self.replay_from
    }

    /// The time at which the operators' state was taken, if it was: a restore with the same
    /// number of workers starts from that state and reads the inputs again from that time only.
    pub fn snapshot_at(&self) -> Option<Time> {
        self.snapshot_at
    }

    /// How a job resumes: from the operators' state at its time (with any number of workers:
    /// keys move to their new owners), or by replaying from the replay time. `Err` if neither
    /// is possible.
    pub(crate) fn resume(&self) -> Result<Resume, String> {
        match self.snapshot_at {
            Some(at) => Ok(Resume::State(at)),
            None if self.replayable => Ok(Resume::Replay(self.replay_from)),
            None => Err(format!(
                "checkpoint {} holds no operator state, and its inputs cannot be replayed from before the state \
                 its run had resumed from: start with an empty checkpoint directory",
                self.id
            )),
        }
    }

    /// The states of temporal operator `key`, taken at the snapshot time: on `worker` only, or
    /// on every worker.
    pub(crate) fn operator_parts(&self, key: &str, worker: Option<usize>) -> Vec<&[u8]> {
        self.operators
            .iter()
            .filter(|((k, w), _)| k == key && worker.is_none_or(|worker| *w == worker))
            .map(|(_, state)| state.as_slice())
            .collect()
    }

    /// How many workers wrote it.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Every worker's state of the source `name` for resuming as `resume` says (`None` if
    /// the checkpoint has none).
    pub(crate) fn source_parts(&self, name: &str, resume: Resume) -> Option<&[Vec<u8>]> {
        match resume {
            Resume::State(_) => self.sources_at.get(name),
            Resume::Replay(_) => self.sources.get(name),
        }
        .map(Vec::as_slice)
    }

    /// The sink `name`'s part for writer `worker` of `peers`: its written frontier and
    /// state. If the number of workers changed, updates reach other writers than before
    /// (per-worker sinks route by key): every writer resumes from the lowest frontier any
    /// writer of the sink had written (at least once: a writer may write again what another
    /// had written), with the state of the writer of the same index, if there was one.
    pub(crate) fn sink_part(&self, name: &str, worker: usize, peers: usize) -> Option<(Option<Time>, Option<&[u8]>)> {
        let parts: Vec<&SinkPart> = self.sinks.iter().filter(|p| p.name == name).collect();
        let own = parts.iter().find(|p| p.worker == worker);
        if self.workers == peers
            && let Some(part) = own
        {
            return Some((part.written, Some(&part.state)));
        }
        let lowest = parts.iter().map(|p| p.written).min_by(|a, b| match (a, b) {
            (None, None) => std::cmp::Ordering::Equal,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(_), None) => std::cmp::Ordering::Less,
            (Some(a), Some(b)) => a.cmp(b),
        })?;
        Some((lowest, own.map(|p| p.state.as_slice())))
    }
}

/// How a restored job resumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Resume {
    /// From the temporal operators' state taken at this time: sources read again from their
    /// positions for it and drop what is before it.
    State(Time),
    /// By replaying the inputs from this time: operators rebuild their state from them.
    Replay(Time),
}

impl Resume {
    /// The time before which re-read records are dropped.
    pub(crate) fn time(self) -> Time {
        match self {
            Resume::State(t) | Resume::Replay(t) => t,
        }
    }
}

/// What a sink writer's checkpoint hook reports.
pub(crate) enum SinkSnapshot {
    /// This worker has no writer for the sink.
    NoWriter,
    /// The writer has not yet written every time before the one the checkpoint needs.
    NotYet,
    /// Durable up to `written`; `state` continues it.
    Saved { written: Option<Time>, state: Vec<u8> },
    /// The writer cannot be checkpointed (or failed): why.
    Unsupported(String),
}

type SourceHook = Box<dyn FnMut(Time) -> Result<Vec<u8>, String>>;
/// Given the checkpoint's id, the time before which everything must be written, and whether to
/// save (`false`: only say whether it could — `NotYet`, or `Saved` with nothing in it).
type SinkHook = Box<dyn FnMut(u64, Time, bool) -> SinkSnapshot>;

/// What a worker's sources and temporal operators share with its checkpoint coordinator: the
/// barrier at which the operators take their state.
#[derive(Debug, Default)]
pub(crate) struct Barrier {
    /// Temporal operators apply no input or timer at or after this time while it is set, so
    /// that none passes the snapshot time before it learns it.
    pub(crate) hold: Cell<Option<Time>>,
    /// The checkpoint whose operator state is taken at this time: each temporal operator takes
    /// its state once it has applied every input before the time, and nothing at or after it.
    pub(crate) at: Cell<Option<(u64, Time)>>,
}

/// A temporal operator's place in its worker's checkpoints.
pub(crate) struct OperatorSlot {
    /// Its key in a checkpoint: build order and name (the same in every run of the program).
    pub(crate) key: String,
    activator: timely::scheduling::Activator,
    /// The state it took for a checkpoint: the checkpoint's id, and the state or why not.
    pub(crate) taken: RefCell<Option<(u64, Result<Vec<u8>, String>)>>,
    /// How far it could apply its inputs now (its input frontier as of its last activation;
    /// `None` once it has applied all of them).
    pub(crate) reach: Cell<Option<Time>>,
}

/// A worker's checkpoint participants in one dataflow, kept by its flow group.
#[derive(Default)]
pub(crate) struct Hooks {
    pub(crate) restored: Option<Arc<Restored>>,
    /// How this worker resumes, if it does.
    pub(crate) resume: Option<Resume>,
    pub(crate) barrier: Rc<Barrier>,
    sources: Vec<(String, SourceHook)>,
    sinks: Vec<(String, SinkHook)>,
    operators: Vec<Rc<OperatorSlot>>,
    /// Temporal operators that cannot take their state: the dataflow's checkpoints replay.
    cannot: Vec<String>,
    /// How many of the flow group's unbounded retentions come from operators that take their
    /// state (the others — equi-joins, tables, a program's own — make checkpoints replay).
    covered_unbounded: usize,
}

impl Hooks {
    /// Registers a source's checkpoint hook: given a replay time, the reader's state.
    pub(crate) fn add_source(&mut self, name: &str, hook: SourceHook) {
        assert!(
            self.sources.iter().all(|(n, _)| n != name),
            "two sources named {name:?} in a checkpointed dataflow: name them apart (SourceConfig::new)"
        );
        self.sources.push((name.to_string(), hook));
    }

    /// Registers a sink's checkpoint hook.
    pub(crate) fn add_sink(&mut self, name: &str, hook: SinkHook) {
        assert!(
            self.sinks.iter().all(|(n, _)| n != name),
            "two sinks named {name:?} in a checkpointed dataflow: name them apart (SinkHandle::new)"
        );
        self.sinks.push((name.to_string(), hook));
    }

    /// Registers a temporal operator: `snapshots` if it can take its state, `unbounded` if it
    /// registered an unbounded retention for replays that its state makes unnecessary.
    pub(crate) fn add_operator(
        &mut self,
        name: &str,
        activator: timely::scheduling::Activator,
        snapshots: bool,
        unbounded: bool,
    ) -> Rc<OperatorSlot> {
        let key = format!("{}:{name}", self.operators.len());
        if !snapshots {
            self.cannot.push(name.to_string());
        } else if unbounded {
            self.covered_unbounded += 1;
        }
        let slot = Rc::new(OperatorSlot { key, activator, taken: RefCell::new(None), reach: Cell::new(Some(0)) });
        self.operators.push(Rc::clone(&slot));
        slot
    }

    /// Whether every stateful operator of the dataflow on this worker takes its state.
    fn snapshots(&self, flow: &FlowGroup) -> bool {
        self.cannot.is_empty() && flow.unbounded_retentions() == self.covered_unbounded
    }

    /// How far this worker's temporal operators could apply their inputs now: the furthest
    /// (`None` without operators), and whether every one is still running (one that has
    /// applied all of its input cannot take its state at an earlier time).
    fn floor(&self) -> (Option<Time>, bool) {
        let mut furthest = None;
        let mut running = true;
        for slot in &self.operators {
            match slot.reach.get() {
                Some(reach) => furthest = furthest.max(Some(reach)),
                None => running = false,
            }
        }
        (furthest, running)
    }

    fn sources(&mut self, replay_from: Time) -> Result<Vec<(String, Vec<u8>)>, String> {
        let mut states = Vec::new();
        for (name, hook) in &mut self.sources {
            let state = hook(replay_from).map_err(|e| format!("source {name:?}: {e}"))?;
            states.push((name.clone(), state));
        }
        Ok(states)
    }

    /// Whether every sink has written every time before `need` (no sink saves anything).
    fn sinks_ready(&mut self, id: u64, need: Time) -> Result<bool, String> {
        for (name, hook) in &mut self.sinks {
            match hook(id, need, false) {
                SinkSnapshot::NotYet => return Ok(false),
                SinkSnapshot::Unsupported(why) => return Err(format!("sink {name:?}: {why}")),
                SinkSnapshot::NoWriter | SinkSnapshot::Saved { .. } => {}
            }
        }
        Ok(true)
    }

    /// The sinks' parts (once [`sinks_ready`](Self::sinks_ready) says every sink has written
    /// every time before `need`).
    fn sinks(&mut self, id: u64, worker: usize, need: Time) -> Result<Vec<SinkPart>, String> {
        let mut parts = Vec::new();
        for (name, hook) in &mut self.sinks {
            match hook(id, need, true) {
                SinkSnapshot::NoWriter => {}
                SinkSnapshot::NotYet => return Err(format!("sink {name:?} was ready and then not")),
                SinkSnapshot::Saved { written, state } => {
                    parts.push(SinkPart { name: name.clone(), worker, written, state })
                }
                SinkSnapshot::Unsupported(why) => return Err(format!("sink {name:?}: {why}")),
            }
        }
        Ok(parts)
    }

    /// Whether every operator has taken its state for checkpoint `id`.
    fn operators_ready(&self, id: u64) -> Result<bool, String> {
        for slot in &self.operators {
            match slot.taken.borrow().as_ref() {
                Some((taken, Ok(_))) if *taken == id => {}
                Some((taken, Err(why))) if *taken == id => return Err(format!("operator {}: {why}", slot.key)),
                _ => return Ok(false),
            }
        }
        Ok(true)
    }

    /// The operators' states, moved out of their slots (once [`operators_ready`](Self::operators_ready)).
    fn take_operators(&self) -> Vec<(String, Vec<u8>)> {
        let take = |slot: &OperatorSlot| match slot.taken.borrow_mut().as_mut() {
            Some((_, Ok(state))) => std::mem::take(state),
            _ => Vec::new(),
        };
        self.operators.iter().map(|slot| (slot.key.clone(), take(slot))).collect()
    }

    fn wake_operators(&self) {
        for slot in &self.operators {
            slot.activator.activate();
        }
    }
}

/// Checkpointing for a job: where checkpoints go, how often, and what was restored.
///
/// Open it once per process, before building dataflows, and call
/// [`install`](Self::install) first thing in every worker's dataflow, before its sources and
/// sinks are built:
///
/// ```no_run
/// use std::time::Duration;
/// use tideline::checkpoint::{Checkpointing, LocalDirStore};
///
/// let checkpoints = Checkpointing::open(LocalDirStore::new("/var/lib/job/checkpoints")?, Duration::from_secs(10))?;
/// if let Some(restored) = checkpoints.restored() {
///     eprintln!("resuming from checkpoint {}", restored.id());
/// }
/// // In each worker: worker.dataflow(|scope| { checkpoints.install(scope); /* sources, operators, sinks */ });
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Checkpointing {
    store: Arc<dyn CheckpointStore>,
    interval: Duration,
    keep: usize,
    restored: Option<Arc<Restored>>,
    metrics: Arc<CheckpointMetrics>,
}

impl std::fmt::Debug for Checkpointing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpointing")
            .field("store", &self.store.describe())
            .field("interval", &self.interval)
            .field("keep", &self.keep)
            .field("restored", &self.restored.as_ref().map(|r| r.id))
            .finish()
    }
}

impl Checkpointing {
    /// Checkpoints into `store` every `interval` (of processing time), resuming from the newest
    /// intact checkpoint it holds. A damaged checkpoint (a missing or corrupt part or manifest)
    /// is reported in one warning and the one before it used; none usable: the job starts from
    /// the beginning. Fails only if the store cannot be listed.
    pub fn open(store: impl CheckpointStore, interval: Duration) -> std::io::Result<Self> {
        let store: Arc<dyn CheckpointStore> = Arc::new(store);
        let mut restored = None;
        for id in store.committed()? {
            match load(store.as_ref(), id) {
                Ok(checkpoint) => {
                    tracing::info!(
                        store = %store.describe(),
                        checkpoint = id,
                        replay_from = checkpoint.replay_from,
                        workers = checkpoint.workers,
                        "resuming from checkpoint"
                    );
                    restored = Some(Arc::new(checkpoint));
                    break;
                }
                Err(reason) => tracing::warn!(
                    store = %store.describe(),
                    checkpoint = id,
                    %reason,
                    "checkpoint is damaged; trying the one before it"
                ),
            }
        }
        Ok(Checkpointing { store, interval, keep: 3, restored, metrics: CheckpointMetrics::new() })
    }

    /// Keeps the `keep` newest checkpoints (default 3, at least 1).
    pub fn keep(mut self, keep: usize) -> Self {
        self.keep = keep.max(1);
        self
    }

    /// The checkpoint this job resumes from, if any.
    pub fn restored(&self) -> Option<&Restored> {
        self.restored.as_deref()
    }

    /// Statistics of the checkpoints this process completed (exported as metrics).
    pub fn metrics(&self) -> &Arc<CheckpointMetrics> {
        &self.metrics
    }

    /// Adds checkpointing to the dataflow `scope` belongs to: call it before building the
    /// dataflow's sources and sinks (they register with it, and restore from it, as they are
    /// built). Every source and sink of the dataflow must support checkpoints; one that does
    /// not makes every checkpoint fail, with a warning naming it.
    pub fn install(&self, scope: Scope<'_, Time>) {
        let flow = crate::runtime::flow::group(scope);
        let resume = self
            .restored
            .as_ref()
            .map(|restored| restored.resume().unwrap_or_else(|problem| panic!("cannot resume: {problem}")));
        *flow.checkpoints.borrow_mut() = Some(Hooks { restored: self.restored.clone(), resume, ..Hooks::default() });
        coordinator(scope, self.clone(), flow);
    }
}

/// Reads and checks checkpoint `id`.
fn load(store: &dyn CheckpointStore, id: u64) -> Result<Restored, String> {
    let bytes = store.read_manifest(id).map_err(|e| format!("manifest: {e}"))?;
    let manifest: Manifest = bincode::deserialize(unseal(&bytes).map_err(|e| format!("manifest: {e}"))?)
        .map_err(|e| format!("manifest: {e}"))?;
    if manifest.id != id || manifest.parts.len() != manifest.workers {
        return Err("manifest does not describe this checkpoint".into());
    }
    let mut sources: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    let mut sources_at: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    let mut operators = BTreeMap::new();
    let mut sinks = Vec::new();
    for (worker, (crc, size)) in manifest.parts.iter().enumerate() {
        let bytes = store.read_part(id, worker).map_err(|e| format!("part {worker}: {e}"))?;
        if bytes.len() as u64 != *size || crc32fast::hash(&bytes) != *crc {
            return Err(format!("part {worker}: not the part the manifest lists (size or checksum)"));
        }
        let body = unseal(&bytes).map_err(|e| format!("part {worker}: {e}"))?;
        let part: WorkerPart = bincode::deserialize(body).map_err(|e| format!("part {worker}: {e}"))?;
        for (name, state) in part.sources {
            sources.entry(name).or_default().push(state);
        }
        for (name, state) in part.sources_at {
            sources_at.entry(name).or_default().push(state);
        }
        for (key, state) in part.operators {
            operators.insert((key, worker), state);
        }
        sinks.extend(part.sinks);
    }
    Ok(Restored {
        id,
        replay_from: manifest.replay_from,
        replayable: manifest.replayable,
        snapshot_at: manifest.snapshot_at,
        workers: manifest.workers,
        sources,
        sources_at,
        operators,
        sinks,
    })
}

/// What the coordinators of a dataflow tell each other.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Message {
    /// Worker 0 starts checkpoint `id`: every worker holds its sources where they are.
    Hold { id: u64 },
    /// A worker holds its sources at `floor` (`None`: they have read everything); `snapshots`
    /// if every stateful operator on it can take its state.
    Floor { id: u64, worker: usize, floor: Option<Time>, snapshots: bool },
    /// Worker 0 asks for every worker's part of checkpoint `id` with replay time `from`, and
    /// the operators' state at `at` (if every worker can take it).
    Begin { id: u64, from: Time, at: Option<Time> },
    /// A worker knows the snapshot time: its sources may move on (once all are armed).
    Armed { id: u64, worker: usize },
    /// Sources move on; with `abort`, the round is abandoned.
    Release { id: u64, abort: bool },
    /// A worker wrote its part: its checksum and size.
    Written { id: u64, worker: usize, crc: u32, size: u64 },
    /// A worker could not write its part.
    Failed { id: u64, worker: usize, reason: String },
}

/// A round worker 0 has started.
struct Round {
    id: u64,
    from: Time,
    started: Instant,
    floors: Vec<Option<(Option<Time>, bool)>>,
    /// Decided once every floor is in: the snapshot time, if operator state is taken.
    at: Option<Option<Time>>,
    armed: Vec<bool>,
    released: bool,
    parts: Vec<Option<(u32, u64)>>,
    failed: bool,
}

/// A worker's part being made: its sources' states are taken; it waits for its operators to
/// take theirs and its sinks to have written everything before the snapshot time.
struct Pending {
    id: u64,
    at: Option<Time>,
    started: Instant,
    part: WorkerPart,
}

/// A worker holds its temporal operators at the furthest time any of them could apply up to:
/// that time, and whether its operators can take their state.
fn hold(hooks: &Hooks, barrier: &Barrier, flow: &FlowGroup, id: u64, index: usize) -> (Option<Time>, bool) {
    let (floor, running) = hooks.floor();
    tracing::debug!(checkpoint = id, worker = index, ?floor, running, "operators held");
    barrier.hold.set(floor);
    (floor, running && hooks.snapshots(flow))
}

/// A worker begins its part of checkpoint `id`: its sources' states for `from` and `at`; with
/// `at`, its operators held there and told to take their state at it.
fn begin(
    hooks: &mut Hooks,
    barrier: &Barrier,
    index: usize,
    id: u64,
    from: Time,
    at: Option<Time>,
) -> Result<Pending, String> {
    let sources = hooks.sources(from).and_then(|sources| {
        let sources_at = match at {
            Some(at) => hooks.sources(at)?,
            None => Vec::new(),
        };
        Ok((sources, sources_at))
    });
    let (sources, sources_at) = match sources {
        Ok(states) => states,
        Err(reason) => {
            barrier.hold.set(None);
            hooks.wake_operators();
            return Err(reason);
        }
    };
    barrier.hold.set(at);
    if let Some(at) = at {
        barrier.at.set(Some((id, at)));
    }
    hooks.wake_operators();
    let part = WorkerPart { worker: index, sources, sources_at, ..WorkerPart::default() };
    Ok(Pending { id, at, started: Instant::now(), part })
}

/// How long a round may take before it is abandoned (a worker that never answers).
const ROUND_TIMEOUT: Duration = Duration::from_secs(120);

/// Builds the operator that runs the checkpoint protocol on this worker.
///
/// A round: worker 0 takes the replay time `R` (the flow group's safe time) and asks every
/// worker to hold its sources' capabilities where they are. With the earliest of them as the
/// snapshot time `T` (if every worker's operators can take their state), it asks for the
/// parts: each worker notes where its sources would read again for `R` and for `T` and tells
/// its temporal operators to take their state at `T`; once every worker knows `T`, the sources
/// move on (no operator's input can have passed `T` before it knew it). A worker writes its
/// part once each of its operators has taken its state and each of its sinks has written
/// every time before `T`; worker 0 writes the manifest once every part is written.
fn coordinator(scope: Scope<'_, Time>, config: Checkpointing, flow: Rc<FlowGroup>) {
    let (index, peers) = (scope.index(), scope.peers());
    let builder = OperatorBuilder::new("Checkpoints".to_string(), scope);
    let info = builder.operator_info();
    let mut channel: Broadcast<Message> = Broadcast::new(scope.worker(), Rc::clone(&info.address));
    let activator = scope.activator_for(Rc::clone(&info.address));
    let resume = flow.checkpoints.borrow().as_ref().and_then(|h| h.resume);
    let restored_from = resume.map_or(0, Resume::time);
    // After a restore from operator state, inputs before its time are not read again.
    let replay_floor = match resume {
        Some(Resume::State(at)) => Some(at),
        _ => None,
    };
    let barrier = flow.checkpoints.borrow().as_ref().map(|h| Rc::clone(&h.barrier)).unwrap_or_default();
    let mut next_id = config.restored.as_ref().map_or(1, |r| r.id + 1);
    let mut round: Option<Round> = None;
    let mut pending: Option<Pending> = None;
    let mut last_round = Instant::now();
    let warned = Cell::new(false);
    let poll = config.interval.min(Duration::from_millis(100));
    builder.build_reschedule(move |_capabilities| {
        move |_frontiers| {
            let mut hooks = flow.checkpoints.borrow_mut();
            let Some(hooks) = hooks.as_mut() else { return false };
            while let Some(message) = channel.recv() {
                match message {
                    // Worker 0 takes its own steps as it sends them.
                    Message::Hold { id } if index != 0 => {
                        let (floor, snapshots) = hold(hooks, &barrier, &flow, id, index);
                        channel.send(Message::Floor { id, worker: index, floor, snapshots });
                    }
                    Message::Floor { id, worker, floor, snapshots } => {
                        if let Some(round) = round.as_mut().filter(|r| r.id == id) {
                            round.floors[worker] = Some((floor, snapshots));
                        }
                    }
                    Message::Begin { id, from, at } if index != 0 => {
                        match begin(hooks, &barrier, index, id, from.max(restored_from), at) {
                            Ok(part) => {
                                pending = Some(part);
                                if at.is_some() {
                                    channel.send(Message::Armed { id, worker: index });
                                }
                            }
                            Err(reason) => channel.send(Message::Failed { id, worker: index, reason }),
                        }
                    }
                    Message::Armed { id, worker } => {
                        if let Some(round) = round.as_mut().filter(|r| r.id == id) {
                            round.armed[worker] = true;
                        }
                    }
                    Message::Release { id, abort } if index != 0 => {
                        barrier.hold.set(None);
                        hooks.wake_operators();
                        if abort {
                            if barrier.at.get().is_some_and(|(at_id, _)| at_id == id) {
                                barrier.at.set(None);
                            }
                            if pending.as_ref().is_some_and(|p| p.id == id) {
                                pending = None;
                            }
                        }
                    }
                    Message::Hold { .. } | Message::Begin { .. } | Message::Release { .. } => {}
                    Message::Written { id, worker, crc, size } => {
                        if let Some(round) = round.as_mut().filter(|r| r.id == id) {
                            round.parts[worker] = Some((crc, size));
                        }
                    }
                    Message::Failed { id, worker, reason } => {
                        if let Some(round) = round.as_mut().filter(|r| r.id == id) {
                            round.failed = true;
                            if !warned.replace(true) {
                                tracing::warn!(checkpoint = id, worker, %reason, "checkpoint failed; the job goes on without it");
                            }
                        }
                    }
                }
            }

            let complete = flow.durable() == Some(None) || flow.sink_failed() || !flow.has_sinks();
            if index == 0 {
                if complete {
                    barrier.hold.set(None);
                    if flow.durable() == Some(None) {
                        // Every sink wrote all of its input: the job is done, and a new run
                        // with this store starts from the beginning.
                        match config.store.clear() {
                            Ok(()) => tracing::info!(store = %config.store.describe(), "job complete; checkpoints removed"),
                            Err(error) => tracing::warn!(store = %config.store.describe(), %error, "job complete, but its checkpoints could not be removed"),
                        }
                    }
                    return false;
                }
                if round.is_none()
                    && last_round.elapsed() >= config.interval
                    && let Some(from) = flow.safe_time()
                {
                    let id = next_id;
                    next_id += 1;
                    tracing::debug!(checkpoint = id, from, durable = ?flow.durable(), "checkpoint starts");
                    // Whether the operators can take their state is the same on every worker
                    // (one program): without, the round asks for the parts at once.
                    let snapshots = hooks.snapshots(&flow);
                    let mut r = Round {
                        id,
                        from,
                        started: Instant::now(),
                        floors: vec![None; peers],
                        at: (!snapshots).then_some(None),
                        armed: vec![false; peers],
                        released: !snapshots,
                        parts: vec![None; peers],
                        failed: false,
                    };
                    if snapshots {
                        r.floors[0] = Some(hold(hooks, &barrier, &flow, id, index));
                        channel.send(Message::Hold { id });
                    } else {
                        channel.send(Message::Begin { id, from, at: None });
                        match begin(hooks, &barrier, index, id, from.max(restored_from), None) {
                            Ok(part) => pending = Some(part),
                            Err(reason) => {
                                r.failed = true;
                                tracing::warn!(checkpoint = id, worker = index, %reason, "checkpoint failed; the job goes on without it");
                            }
                        }
                    }
                    round = Some(r);
                }
                if let Some(mut r) = round.take() {
                    if r.at.is_none() && r.floors.iter().all(Option::is_some) {
                        let floors: Vec<(Option<Time>, bool)> = r.floors.iter().map(|f| f.expect("all in")).collect();
                        let snapshots = floors.iter().all(|(_, s)| *s);
                        // Held, no operator applies anything at or after the furthest of them
                        // before every worker knows it.
                        let at = floors.iter().filter_map(|(f, _)| *f).max().filter(|_| snapshots);
                        r.at = Some(at);
                        r.released = at.is_none();
                        tracing::debug!(checkpoint = r.id, ?at, snapshots, "snapshot time decided");
                        if at.is_some_and(|at| at <= restored_from) {
                            // The operators have not moved past the time this run started
                            // from: such a checkpoint would only repeat where it started (and
                            // before a replay's start, its sources could not say where to
                            // read again).
                            r.failed = true;
                        } else if at.is_none() && replay_floor.is_some_and(|floor| r.from < floor) {
                            // Every source has read everything (nothing holds the operators at
                            // a time any more), and a replay could not start before the state
                            // this run resumed from: no checkpoint this time.
                            r.failed = true;
                        } else {
                            channel.send(Message::Begin { id: r.id, from: r.from, at });
                            match begin(hooks, &barrier, index, r.id, r.from.max(restored_from), at) {
                                Ok(part) => {
                                    pending = Some(part);
                                    r.armed[0] = true;
                                }
                                Err(reason) => {
                                    r.failed = true;
                                    tracing::warn!(checkpoint = r.id, worker = index, %reason, "checkpoint failed; the job goes on without it");
                                }
                            }
                        }
                    }
                    if !r.released && r.armed.iter().all(|a| *a) {
                        r.released = true;
                        barrier.hold.set(None);
                        hooks.wake_operators();
                        channel.send(Message::Release { id: r.id, abort: false });
                    }
                    if !r.failed && r.started.elapsed() >= ROUND_TIMEOUT.max(config.interval * 10) {
                        r.failed = true;
                        tracing::warn!(checkpoint = r.id, took = ?r.started.elapsed(), "checkpoint abandoned: not every worker finished its part");
                    }
                    if r.failed {
                        channel.send(Message::Release { id: r.id, abort: true });
                        barrier.hold.set(None);
                        hooks.wake_operators();
                        if barrier.at.get().is_some_and(|(at_id, _)| at_id == r.id) {
                            barrier.at.set(None);
                        }
                        if pending.as_ref().is_some_and(|p| p.id == r.id) {
                            pending = None;
                        }
                        last_round = Instant::now();
                    } else if r.parts.iter().all(Option::is_some) {
                        let parts: Vec<(u32, u64)> = r.parts.iter().map(|p| p.expect("all written")).collect();
                        let size: u64 = parts.iter().map(|(_, s)| *s).sum();
                        let manifest = Manifest {
                            id: r.id,
                            replay_from: r.from.max(restored_from),
                            replayable: replay_floor.is_none_or(|floor| r.from >= floor),
                            snapshot_at: r.at.flatten(),
                            workers: peers,
                            parts,
                            created_unix_ms: SystemTime::now()
                                .duration_since(SystemTime::UNIX_EPOCH)
                                .map_or(0, |d| d.as_millis() as u64),
                        };
                        let committed = bincode::serialize(&manifest)
                            .map_err(|e| e.to_string())
                            .and_then(|body| config.store.commit(r.id, &sealed(body)).map_err(|e| e.to_string()))
                            .and_then(|()| config.store.prune(config.keep).map_err(|e| e.to_string()));
                        match committed {
                            Ok(()) => {
                                fault_point("manifest");
                                config.metrics.record(r.started.elapsed(), size, SystemTime::now());
                                tracing::info!(
                                    checkpoint = r.id,
                                    replay_from = manifest.replay_from,
                                    snapshot_at = ?manifest.snapshot_at,
                                    size,
                                    took = ?r.started.elapsed(),
                                    "checkpoint complete"
                                );
                            }
                            Err(reason) => tracing::warn!(checkpoint = r.id, %reason, "checkpoint could not be committed"),
                        }
                        last_round = Instant::now();
                    } else {
                        round = Some(r);
                    }
                }
            } else if complete {
                barrier.hold.set(None);
                return false;
            }

            // This worker's part, once its operators and sinks are there.
            if let Some(p) = pending.as_mut() {
                let need = p.at.unwrap_or(0);
                // Nothing is saved (a sink's sync, an exactly-once sink's commit, an operator's
                // state moved out) until everything is there: then all of it, once.
                let ready = match p.at {
                    Some(_) => hooks.operators_ready(p.id),
                    None => Ok(true),
                }
                .and_then(|ready| Ok(ready && hooks.sinks_ready(p.id, need)?))
                .and_then(|ready| {
                    if !ready {
                        return Ok(None);
                    }
                    let operators = match p.at {
                        Some(_) => hooks.take_operators(),
                        None => Vec::new(),
                    };
                    let sinks = hooks.sinks(p.id, index, need)?;
                    Ok(Some((operators, sinks)))
                });
                let written = match ready {
                    Ok(None) => None,
                    Ok(Some((operators, sinks))) => {
                        p.part.operators = operators;
                        p.part.sinks = sinks;
                        Some(bincode::serialize(&p.part).map_err(|e| e.to_string()).and_then(|body| {
                            let bytes = sealed(body);
                            config.store.write_part(p.id, index, &bytes).map_err(|e| e.to_string())?;
                            fault_point("part");
                            Ok((crc32fast::hash(&bytes), bytes.len() as u64))
                        }))
                    }
                    Err(reason) => Some(Err(reason)),
                };
                if let Some(written) = written {
                    let id = p.id;
                    match written {
                        Ok((crc, size)) => {
                            let bytes = |states: &[(String, Vec<u8>)]| states.iter().map(|(_, s)| s.len()).sum::<usize>();
                            tracing::debug!(
                                checkpoint = id,
                                worker = index,
                                size,
                                operators = bytes(&p.part.operators),
                                sources = bytes(&p.part.sources) + bytes(&p.part.sources_at),
                                took = ?p.started.elapsed(),
                                "checkpoint part written"
                            );
                            channel.send(Message::Written { id, worker: index, crc, size });
                        }
                        Err(reason) => channel.send(Message::Failed { id, worker: index, reason }),
                    }
                    pending = None;
                }
            }

            if index == 0 {
                let wait = config.interval.saturating_sub(last_round.elapsed()).max(Duration::from_millis(1));
                activator.activate_after(if round.is_some() { Duration::from_millis(1) } else { wait.min(poll) });
            } else {
                activator.activate_after(if pending.is_some() { Duration::from_millis(1) } else { poll });
            }
            true
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_file_with_a_changed_byte_is_refused() {
        let bytes = sealed(b"checkpoint body".to_vec());
        assert_eq!(unseal(&bytes).unwrap(), b"checkpoint body");
        let mut damaged = bytes.clone();
        damaged[3] ^= 1;
        assert!(unseal(&damaged).is_err());
        assert!(unseal(&bytes[..2]).is_err());
    }

    /// Writes checkpoint `id` as the coordinator does, with one part whose source state is
    /// `state`.
    fn write_checkpoint(store: &LocalDirStore, id: u64, state: &[u8]) {
        let part = WorkerPart { worker: 0, sources: vec![("input".into(), state.to_vec())], ..WorkerPart::default() };
        let bytes = sealed(bincode::serialize(&part).unwrap());
        store.write_part(id, 0, &bytes).unwrap();
        let manifest = Manifest {
            id,
            replay_from: id * 100,
            replayable: true,
            snapshot_at: None,
            workers: 1,
            parts: vec![(crc32fast::hash(&bytes), bytes.len() as u64)],
            created_unix_ms: 0,
        };
        store.commit(id, &sealed(bincode::serialize(&manifest).unwrap())).unwrap();
    }

    #[test]
    fn a_damaged_or_incomplete_checkpoint_gives_way_to_the_one_before_it() {
        let dir = std::env::temp_dir().join(format!("tideline-restore-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = LocalDirStore::new(&dir).unwrap();
        for id in 1..=3 {
            write_checkpoint(&store, id, format!("state {id}").as_bytes());
        }
        let open = || Checkpointing::open(store.clone(), Duration::from_secs(1)).unwrap();
        let restored = open();
        let restored = restored.restored().unwrap();
        assert_eq!((restored.id(), restored.replay_from()), (3, 300));
        assert_eq!(restored.source_parts("input", Resume::Replay(300)).unwrap(), &[b"state 3".to_vec()]);

        // A flipped byte in the newest part: checkpoint 2 is used.
        let part = dir.join("chk-0000000003/part-0");
        let mut bytes = std::fs::read(&part).unwrap();
        bytes[5] ^= 1;
        std::fs::write(&part, bytes).unwrap();
        assert_eq!(open().restored().unwrap().id(), 2);

        // A truncated manifest in checkpoint 2 and a missing part in 1: nothing usable.
        let manifest = dir.join("chk-0000000002/MANIFEST");
        let bytes = std::fs::read(&manifest).unwrap();
        std::fs::write(&manifest, &bytes[..bytes.len() - 3]).unwrap();
        assert_eq!(open().restored().unwrap().id(), 1);
        std::fs::remove_file(dir.join("chk-0000000001/part-0")).unwrap();
        assert!(open().restored().is_none(), "no intact checkpoint: start from the beginning");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
