//! Sources: watermarked, partitioned inputs that become differential collections.
//!
//! Every source is a [`SourceReader`] driven by one generic timely operator, [`source`]. The
//! reader owns the partitions a worker reads and hands records to a [`ReadContext`]; the
//! context applies the watermark strategy per partition, counts everything, and the operator
//! emits two collections ([`SourceStreams`]):
//!
//! - `data`: every decoded record, at its event time — or, if it is behind its partition's
//!   watermark, at the watermark (its event time stays in its data; the operators whose state
//!   it reaches decide, per window, whether it is late: DESIGN §3);
//! - `dead_letters`: records that failed to decode ([`DeadLetter`]).
//!
//! The operator holds a capability at the worker's watermark (the minimum over its active
//! partitions) and downgrades it as the watermark advances, so the frontier of `data` *is*
//! the source's watermark. A bounded reader that is exhausted drops its capability: the
//! frontier goes to the end of time and every window flushes. It may then still
//! [`finish`](SourceReader::finish) — e.g. commit its final positions once the sinks have
//! durably written everything derived from them — before the dataflow completes.
//!
//! # Behind the watermark is decided per partition
//!
//! A record is behind the watermark when its event time is below its *partition's* watermark.
//! That makes its dataflow time a deterministic function of each partition's order,
//! independent of how many workers read the source and of how their reads interleave: results
//! are identical for any number of workers and processes (DESIGN §9). (The one exception is a
//! partition that returns from idleness behind the source's published watermark: what it sends
//! below that watermark is behind it, which depends on processing time, as idleness itself
//! does.)

mod logging;
pub mod memory;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use differential_dataflow::{AsCollection, VecCollection};
use timely::dataflow::Scope;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use crate::runtime::control::Broadcast;
use crate::runtime::metrics::{PartitionStats, SourceMetrics};
use crate::time::Time;
use crate::time::late::DeadLetter;
use crate::time::watermark::{PartitionId, PartitionWatermark, WatermarkStrategy, WatermarkTracker};

/// How a source turns its records into a watermarked collection.
#[derive(Clone, Debug)]
pub struct SourceConfig {
    /// The source's name: names its operator and its metrics.
    pub name: String,
    /// How each partition's watermark follows its records.
    pub watermarks: WatermarkStrategy,
    /// Where to count; a fresh [`SourceMetrics`] per worker if `None`.
    pub metrics: Option<Arc<SourceMetrics>>,
    /// At most this many records per activation, so that downstream operators get to run.
    pub batch_size: usize,
    /// Flow control: stop reading while the dataflow's sinks lag behind the watermark and
    /// more than this many records were emitted since the watermark they have reached.
    pub max_in_flight: u64,
    /// Ingestion time: records get this clock's time when read (see
    /// [`ingestion_time`](Self::ingestion_time)).
    pub ingestion: Option<crate::time::clock::Clock>,
}

impl SourceConfig {
    /// A configuration with monotonic watermarks.
    pub fn new(name: impl Into<String>) -> Self {
        SourceConfig {
            name: name.into(),
            watermarks: WatermarkStrategy::monotonic(),
            metrics: None,
            batch_size: 64 * 1024,
            max_in_flight: 1 << 20,
            ingestion: None,
        }
    }

    /// Ingestion time instead of event time (opt-in; see [`crate::time::clock`] for when it
    /// gives wrong answers): every record travels at `clock`'s time when the source reads it,
    /// whatever its own event time, and the watermark follows the clock — also while nothing
    /// arrives, so that windows over arrival time close on a silent stream. Combine with
    /// [`AtIngestionTime::at_ingestion_time`](crate::time::clock::AtIngestionTime) so that the
    /// events carry that time too (operators assign windows by the events' own time).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tideline::prelude::*;
    /// use tideline::source::{SourceConfig, memory};
    /// use tideline::time::clock::{AtIngestionTime, Clock};
    /// use tideline::window::aggregate::Count;
    ///
    /// // Events stamped in 1970, arriving (by this clock) at 10 000 ms: one window, [10 s, 20 s).
    /// let (clock, _hand) = Clock::manual(10_000);
    /// let counts = tideline::runtime::collect(1, move |scope| {
    ///     let events = vec![Event::new(5, 1u32, ()), Event::new(900_000, 1, ())];
    ///     memory::from_iter(scope, SourceConfig::new("clicks").ingestion_time(clock.clone()), move || events.into_iter())
    ///         .data
    ///         .at_ingestion_time()
    ///         .tumbling(Duration::from_secs(10))
    ///         .aggregate(Count)
    /// });
    /// assert_eq!(counts.len(), 1);
    /// assert_eq!((counts[0].0.window.start, counts[0].0.value), (10_000, 2));
    /// ```
    pub fn ingestion_time(mut self, clock: crate::time::clock::Clock) -> Self {
        self.ingestion = Some(clock);
        self.watermarks = WatermarkStrategy::monotonic();
        self
    }

    /// Sets the watermark strategy.
    pub fn watermarks(mut self, strategy: WatermarkStrategy) -> Self {
        self.watermarks = strategy;
        self
    }

    /// Shares metrics (usually one [`SourceMetrics`] for all workers of the process).
    pub fn metrics(mut self, metrics: Arc<SourceMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Sets the number of records read per activation.
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// Sets the flow-control bound (see [`crate::runtime::flow`]).
    pub fn max_in_flight(mut self, records: u64) -> Self {
        self.max_in_flight = records.max(1);
        self
    }
}

/// What [`SourceReader::poll`] reports after reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadStatus {
    /// More records are available now: poll again soon.
    Busy,
    /// Nothing available now: poll again after the given delay.
    Waiting(Duration),
    /// The reader is exhausted: the watermark goes to the end of time.
    Done,
}

/// A worker's share of a source: it owns some partitions and reads their records.
pub trait SourceReader: 'static {
    /// The decoded record type.
    type Item;

    /// Reads up to [`ReadContext::budget`] records into `ctx` (more is allowed, but delays
    /// the rest of the dataflow) and says whether more may come.
    ///
    /// A reader announces each partition with [`ReadContext::add_partition`] before giving
    /// its records, and [`ReadContext::finish_partition`] when it is exhausted.
    fn poll(&mut self, ctx: &mut ReadContext<'_, Self::Item>) -> ReadStatus;

    /// Called after [`poll`](Self::poll) returned [`ReadStatus::Done`], again and again until
    /// it returns `Done` too; the dataflow does not complete before. The source's outputs are
    /// already closed, so the rest of the dataflow runs to completion meanwhile: a reader that
    /// acknowledges its input once it is durable (an at-least-once source committing its final
    /// offsets) waits here for [`FinishContext::safe_time`] to reach [`Time::MAX`].
    ///
    /// A reader that waits must also stop waiting when [`FinishContext::sinks_failed`] (the
    /// safe time then never reaches the end). The default finishes at once.
    fn finish(&mut self, ctx: &mut FinishContext<'_>) -> ReadStatus {
        let _ = ctx;
        ReadStatus::Done
    }

    /// For a checkpoint ([`crate::checkpoint`]): where this reader would read again so that
    /// every record it has given whose dataflow time is at least `replay_from` comes again,
    /// at the same dataflow time — positions, and the watermark state there. Called between
    /// polls. The default cannot: a dataflow with this source cannot be checkpointed.
    fn checkpoint(&mut self, replay_from: Time) -> Result<Vec<u8>, String> {
        let _ = replay_from;
        Err("this source cannot be checkpointed".into())
    }

    /// Resumes from a checkpoint, before the first poll: `parts` are the states every worker
    /// of the checkpointed run returned from [`checkpoint`](Self::checkpoint) (the number of
    /// workers may have changed: take the partitions this worker reads now). The source
    /// operator drops re-read records whose dataflow time is below the checkpoint's replay
    /// time.
    fn restore(&mut self, parts: &[Vec<u8>]) -> Result<(), String> {
        let _ = parts;
        Err("this source cannot resume from a checkpoint".into())
    }
}

/// What a [`SourceReader`] sees after it is done: how far its input is durably processed.
pub struct FinishContext<'a> {
    flow: &'a crate::runtime::flow::FlowGroup,
    metrics: &'a SourceMetrics,
}

impl FinishContext<'_> {
    /// As [`ReadContext::safe_time`]: `Some(Time::MAX)` once every sink of the dataflow, on
    /// every worker, has durably written its complete input.
    pub fn safe_time(&self) -> Option<Time> {
        self.flow.safe_time()
    }

    /// Whether a sink of the dataflow failed (on any worker): the safe time will not advance
    /// any more.
    pub fn sinks_failed(&self) -> bool {
        self.flow.sink_failed()
    }

    /// Reports an error (kept in [`SourceMetrics::errors`]).
    pub fn fail(&mut self, message: String) {
        self.metrics.record_error(message);
    }
}

/// The streams a source produces.
pub struct SourceStreams<'scope, D: 'static> {
    /// Every decoded record at its event time, or at its partition's watermark if it is behind
    /// it.
    pub data: VecCollection<'scope, Time, D>,
    /// Records that failed to decode.
    pub dead_letters: VecCollection<'scope, Time, DeadLetter>,
    /// The source's counters.
    pub metrics: Arc<SourceMetrics>,
}

/// Where a [`SourceReader`] puts what it reads; applies watermarks.
pub struct ReadContext<'a, D> {
    tracker: &'a mut WatermarkTracker,
    stats: &'a mut Vec<PartitionStats>,
    floor: Time,
    now: Instant,
    budget: usize,
    data: &'a mut Vec<(D, Time, isize)>,
    dead: &'a mut Vec<(DeadLetter, Time, isize)>,
    last: Option<(PartitionId, usize)>,
    metrics: &'a SourceMetrics,
    flow: &'a crate::runtime::flow::FlowGroup,
    /// Resuming from a checkpoint: records (and dead letters) whose dataflow time is below
    /// this are re-read only to restore positions and watermarks, and dropped.
    replay_from: Time,
    /// Ingestion time: the clock's time at this poll, every record's time.
    ingestion_now: Option<Time>,
}

impl<D> ReadContext<'_, D> {
    /// How many more records this poll should read.
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// The watermark this worker has published: new partitions start no lower.
    pub fn floor(&self) -> Time {
        self.floor
    }

    /// The watermark strategy of this source.
    pub fn strategy(&self) -> &WatermarkStrategy {
        self.tracker.strategy()
    }

    /// Starts a partition with a fresh watermark generator.
    pub fn add_partition(&mut self, partition: PartitionId) {
        let generator = self.tracker.strategy().generator();
        self.add_partition_with(partition, generator);
    }

    /// Starts a partition with a given generator (e.g. one that continues an earlier split).
    pub fn add_partition_with(&mut self, partition: PartitionId, generator: PartitionWatermark) {
        let slot = self.tracker.add(partition, generator, self.now, self.floor);
        if self.stats.len() <= slot {
            self.stats.resize(slot + 1, PartitionStats::default());
        }
    }

    /// Marks a partition exhausted: it stops holding the watermark back.
    pub fn finish_partition(&mut self, partition: PartitionId) {
        if let Some(slot) = self.tracker.slot(partition) {
            self.tracker.finish(slot);
        }
    }

    /// Advances a partition's watermark as if a record at `time` had been read from it —
    /// for a reader that continues a partition part of which another worker read (a file
    /// split into chunks: each chunk starts with the largest event time of the lines before
    /// it). Counts nothing; an untracked partition is ignored.
    pub fn observe(&mut self, partition: PartitionId, time: Time) {
        if let Some(slot) = self.tracker.slot(partition) {
            self.tracker.touch(slot, self.now, self.floor).observe(time);
        }
    }

    /// The current watermark of a partition, if tracked.
    pub fn partition_watermark(&self, partition: PartitionId) -> Option<Time> {
        self.tracker.slot(partition).map(|slot| self.tracker.generator(slot).watermark())
    }

    fn slot(&mut self, partition: PartitionId) -> usize {
        match self.last {
            Some((id, slot)) if id == partition => slot,
            _ => {
                let slot = self
                    .tracker
                    .slot(partition)
                    .unwrap_or_else(|| panic!("source reader gave a record of partition {partition} before adding it"));
                self.last = Some((partition, slot));
                slot
            }
        }
    }

    /// Gives a decoded record of `partition` (at `position`, for the reader's bookkeeping) with
    /// event time `time`.
    ///
    /// Returns the dataflow time it is emitted at: `time`, or its partition's watermark if it is
    /// behind it.
    pub fn record(&mut self, partition: PartitionId, position: u64, time: Time, item: D) -> Time {
        let _ = position;
        let time = self.ingestion_now.unwrap_or(time);
        let slot = self.slot(partition);
        self.budget = self.budget.saturating_sub(1);
        let generator = self.tracker.touch(slot, self.now, self.floor);
        let watermark = generator.watermark();
        let at = if time >= watermark {
            generator.observe(time);
            time
        } else {
            watermark
        };
        if at < self.replay_from {
            // Re-read after a restore: its effects are complete (see `crate::checkpoint`).
            return at;
        }
        let stats = &mut self.stats[slot];
        stats.records += 1;
        if at != time {
            stats.behind_watermark += 1;
        }
        self.data.push((item, at, 1));
        at
    }

    /// The time below which every record this dataflow has read is fully accounted for
    /// (everything derived from it durably written by the sinks, no state referring to it),
    /// or `None` if the dataflow has no durable sink. What an at-least-once reader may
    /// commit: the positions of records whose assigned times are all below it.
    pub fn safe_time(&self) -> Option<Time> {
        self.flow.safe_time()
    }

    /// Whether a sink of this dataflow failed (on any worker): the safe time will not advance
    /// any more.
    pub fn sinks_failed(&self) -> bool {
        self.flow.sink_failed()
    }

    /// Reports an error that stops this reader (e.g. a file that cannot be read any more).
    /// It is kept in the source's metrics ([`SourceMetrics::errors`]); the reader should then
    /// return [`ReadStatus::Done`].
    pub fn fail(&mut self, message: String) {
        self.metrics.record_error(message);
    }

    /// Gives a record that failed to decode.
    ///
    /// It enters at its partition's watermark (at least the worker's): a deterministic time,
    /// like a record's, so that a restored run gives the same dead letters at the same times.
    pub fn dead_letter(&mut self, letter: DeadLetter) {
        self.budget = self.budget.saturating_sub(1);
        let slot = self.tracker.slot(letter.partition);
        let at = slot.map_or(self.floor, |slot| self.tracker.generator(slot).watermark().max(self.floor));
        if at < self.replay_from {
            return;
        }
        if let Some(slot) = slot {
            self.stats[slot].dead_letters += 1;
        }
        self.dead.push((letter, at, 1));
    }
}

/// What a reader is built with: which worker it runs on, and control channels to its peers.
pub struct SourceSetup<'a> {
    worker: &'a timely::worker::Worker,
    address: Rc<[usize]>,
    index: usize,
    peers: usize,
}

impl SourceSetup<'_> {
    /// This worker's index, `0..peers`, over all processes.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The number of workers over all processes.
    pub fn peers(&self) -> usize {
        self.peers
    }

    /// A handle that schedules this worker's source operator from any thread: a reader whose
    /// client can call back when data arrives (e.g. a Kafka consumer's queue becoming
    /// non-empty) wakes the worker with it instead of polling on a timer.
    pub fn sync_activator(&self) -> timely::scheduling::SyncActivator {
        self.worker.sync_activator_for(self.address.to_vec())
    }

    /// A control channel to every worker's reader of this source; an arriving message
    /// schedules the source. All workers must create the same channels in the same order.
    pub fn broadcast<T>(&self) -> Broadcast<T>
    where
        T: serde::Serialize + serde::de::DeserializeOwned + Clone + Send + 'static,
    {
        Broadcast::new(self.worker, Rc::clone(&self.address))
    }
}

/// How often a worker tells its peers its watermark (idle workers follow the others).
const ANNOUNCE_EVERY: Duration = Duration::from_millis(20);

/// Builds a source operator from a reader, made per worker by `make_reader(setup)`.
///
/// This is the one place where records become a watermarked collection; the in-memory, file
/// and Kafka sources are all readers driven by it.
///
/// A worker with no active partition (all idle, or none assigned, while the reader is not
/// done) does not hold the watermark back: it follows the minimum watermark of the workers
/// that have active partitions, which they announce on a control channel.
pub fn source<'scope, R, F>(
    scope: Scope<'scope, Time>,
    config: SourceConfig,
    make_reader: F,
) -> SourceStreams<'scope, R::Item>
where
    R: SourceReader,
    R::Item: Clone + 'static,
    F: FnOnce(&SourceSetup<'_>) -> R,
{
    let index = scope.index();
    let peers = scope.peers();
    let metrics = config.metrics.clone().unwrap_or_else(|| SourceMetrics::new(config.name.clone()));
    let mut builder = OperatorBuilder::new(format!("Source({})", config.name), scope);
    let info = builder.operator_info();
    let (data_output, data_stream) = builder.new_output();
    let (dead_output, dead_stream) = builder.new_output();
    let mut data_output = OutputBuilder::from(data_output);
    let mut dead_output = OutputBuilder::from(dead_output);

    let setup = SourceSetup { worker: scope.worker(), address: Rc::clone(&info.address), index, peers };
    let mut announcements: Broadcast<(usize, Option<Time>)> = setup.broadcast();
    let reader = Rc::new(RefCell::new(make_reader(&setup)));
    let activator = scope.activator_for(info.address);
    let flow = crate::runtime::flow::group(scope);
    let replay_from = checkpointed(&flow, &config.name, index, &reader);
    let report_to = Arc::clone(&metrics);
    let idle_timeout = config.watermarks.idle_timeout();
    // The operator says it is incomplete until the reader has finished (see
    // `SourceReader::finish`): after the reader is done and the outputs are closed, that keeps it
    // (and the dataflow) alive until it has.
    builder.build_reschedule(move |capabilities| {
        let mut caps: Option<Vec<Capability<Time>>> = Some(capabilities);
        let mut finished = false;
        let mut tracker = WatermarkTracker::new(config.watermarks.clone());
        let mut stats: Vec<PartitionStats> = Vec::new();
        let mut data = Vec::new();
        let mut dead = Vec::new();
        let mut last_report = Instant::now();
        let mut peer_watermarks: Vec<Option<Time>> = vec![None; peers];
        let mut emitted: u64 = 0;
        let mut emitted_log: std::collections::VecDeque<(Time, u64)> = std::collections::VecDeque::new();
        let mut announced: Option<(Option<Time>, Instant)> = None;
        let mut idle_logged: Vec<bool> = Vec::new();
        let mut dead_log = logging::DeadLetterLog::default();
        tracing::info!(source = %config.name, worker = index, "source started");
        move |_frontiers| {
            while let Some((peer, watermark)) = announcements.recv() {
                peer_watermarks[peer] = watermark;
            }
            let Some(held) = caps.as_mut() else {
                // The reader is done and its outputs are closed; it finishes (e.g. commits its
                // final positions once they are durable) before the dataflow may complete.
                if !finished {
                    let mut ctx = FinishContext { flow: &flow, metrics: &report_to };
                    match reader.borrow_mut().finish(&mut ctx) {
                        ReadStatus::Done => {
                            finished = true;
                            tracing::info!(source = %config.name, worker = index, "source finished");
                        }
                        ReadStatus::Busy => activator.activate(),
                        ReadStatus::Waiting(delay) => activator.activate_after(delay),
                    }
                }
                return !finished;
            };
            let floor = *held[0].time();
            let now = Instant::now();
            // Flow control: wait while the consumers lag and too much is in flight.
            if let Some(Some(consumed)) = flow.frontier()
                && consumed < floor
            {
                let done_before = emitted_log.iter().take_while(|(w, _)| *w <= consumed).last().map_or(0, |(_, n)| *n);
                if emitted - done_before > config.max_in_flight {
                    activator.activate_after(Duration::from_millis(1));
                    return true;
                }
            }
            let mut ctx = ReadContext {
                tracker: &mut tracker,
                stats: &mut stats,
                floor,
                now,
                budget: config.batch_size,
                data: &mut data,
                dead: &mut dead,
                last: None,
                metrics: &report_to,
                flow: &flow,
                replay_from,
                ingestion_now: config.ingestion.as_ref().map(|clock| clock.now().max(floor)),
            };
            let status = reader.borrow_mut().poll(&mut ctx);
            if let Some(clock) = &config.ingestion {
                // Ingestion time: the watermark follows the clock, records or not.
                let clock_now = clock.now();
                for slot in 0..tracker.len() {
                    if !tracker.is_finished(slot) {
                        tracker.touch(slot, now, floor).observe(clock_now);
                    }
                }
            }
            emitted += data.len() as u64;
            if !data.is_empty() {
                data_output.activate().session(&held[0]).give_container(&mut data);
                data.clear();
            }
            if !dead.is_empty() {
                dead_log.log(&config.name, index, now, &dead);
                dead_output.activate().session(&held[1]).give_container(&mut dead);
                dead.clear();
            }
            tracker.detect_idle(now);
            if idle_timeout.is_some() {
                logging::log_idle_changes(&config.name, index, &tracker, &mut idle_logged);
            }
            let watermark = tracker.watermark();
            let announce = if status == ReadStatus::Done { None } else { watermark };
            let due = match announced {
                None => true,
                Some((last, at)) => {
                    last.is_some() != announce.is_some()
                        || (last != announce && now.duration_since(at) >= ANNOUNCE_EVERY)
                }
            };
            if due && peers > 1 {
                announcements.send((index, announce));
                announced = Some((announce, now));
            }
            // Without active partitions, follow the peers that have some.
            let target = watermark.or_else(|| {
                peer_watermarks.iter().enumerate().filter(|(peer, _)| *peer != index).filter_map(|(_, w)| *w).min()
            });
            if status != ReadStatus::Done
                && let Some(w) = target.filter(|w| *w > floor)
            {
                for cap in held.iter_mut() {
                    cap.downgrade(&w);
                }
                // Remember how much had been emitted when the watermark reached `w`.
                if let Some(consumed) = flow.frontier() {
                    emitted_log.push_back((w, emitted));
                    let consumed = consumed.unwrap_or(Time::MAX);
                    while emitted_log.len() > 1 && emitted_log[1].0 <= consumed {
                        emitted_log.pop_front();
                    }
                }
            }
            if status == ReadStatus::Done || now.duration_since(last_report) >= Duration::from_millis(200) {
                let reported = if status == ReadStatus::Done { None } else { watermark };
                report_to.report(index, &pairs(&tracker, &stats), tracker.partitions(), reported);
                stats.iter_mut().for_each(|s| *s = PartitionStats::default());
                last_report = now;
            }
            match status {
                ReadStatus::Done => {
                    tracing::info!(
                        source = %config.name,
                        worker = index,
                        process_records = report_to.records(),
                        "source read all its input; its watermark goes to the end of time"
                    );
                    caps = None;
                    activator.activate();
                }
                ReadStatus::Busy => activator.activate(),
                ReadStatus::Waiting(delay) => {
                    let mut delay = idle_timeout.map_or(delay, |t| delay.min(t / 2).max(Duration::from_millis(1)));
                    if announced.is_some_and(|(last, _)| last != announce) {
                        delay = delay.min(ANNOUNCE_EVERY);
                    }
                    activator.activate_after(delay);
                }
            }
            true
        }
    });

    SourceStreams { data: data_stream.as_collection(), dead_letters: dead_stream.as_collection(), metrics }
}

/// Registers a source's reader with the dataflow's checkpoints, if it has any, and restores it
/// from the checkpoint the job resumes from. Returns the replay time (0 without a restore).
fn checkpointed<R: SourceReader>(
    flow: &crate::runtime::flow::FlowGroup,
    name: &str,
    index: usize,
    reader: &Rc<RefCell<R>>,
) -> Time {
    let mut hooks = flow.checkpoints.borrow_mut();
    let Some(hooks) = hooks.as_mut() else { return 0 };
    let mut replay_from = 0;
    if let (Some(restored), Some(resume)) = (hooks.restored.clone(), hooks.resume) {
        let parts = restored.source_parts(name, resume).unwrap_or_else(|| {
            panic!(
                "checkpoint {} has no state for source {name:?}: the pipeline changed since it was taken; \
                 start it with an empty checkpoint directory to run from the beginning",
                restored.id()
            )
        });
        if let Err(error) = reader.borrow_mut().restore(parts) {
            panic!("source {name:?} cannot resume from checkpoint {}: {error}", restored.id());
        }
        replay_from = resume.time();
        tracing::info!(source = %name, worker = index, checkpoint = restored.id(), replay_from, "source resumes from a checkpoint");
    }
    let reader = Rc::clone(reader);
    hooks.add_source(name, Box::new(move |from| reader.borrow_mut().checkpoint(from)));
    replay_from
}

fn pairs(
    tracker: &WatermarkTracker,
    stats: &[PartitionStats],
) -> std::collections::BTreeMap<PartitionId, PartitionStats> {
    stats.iter().enumerate().map(|(slot, s)| (tracker.id(slot), s.clone())).collect()
}
