//! A worker's share of a Kafka source: the consumer of its partitions, their watermarks and
//! the commit bookkeeping.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientContext, Message};
use tideline::Time;
use tideline::source::{FinishContext, ReadContext, ReadStatus, SourceReader};
use tideline::time::late::DeadLetter;
use tideline::time::watermark::PartitionId;
use tideline::timely::scheduling::SyncActivator;

use crate::error::ConnectorError;
use crate::kafka::client::close_within;
use crate::kafka::committer::{CommitError, Committer};
use crate::kafka::dead_letters::DeadLetterProducer;
use crate::kafka::decode::KafkaMessage;
use crate::kafka::discovery::{Discovered, Discovery};
use crate::kafka::error::{is_fatal, is_outage};
use crate::kafka::ledger::OffsetLedger;
use crate::kafka::plan::{EventTimeFrom, Inner, Plan, partition_id};
use crate::kafka::stats::KafkaSourceStats;

/// Consecutive empty polls after which the consumer's queue is taken to be empty (see
/// `read_messages`).
const EMPTY_POLLS: u32 = 16;

/// Client callbacks: statistics and errors, kept in the source's stats.
struct ReaderContext {
    stats: Arc<KafkaSourceStats>,
    worker: usize,
}

impl ClientContext for ReaderContext {
    fn stats(&self, statistics: Statistics) {
        let bytes: u64 = statistics
            .topics
            .values()
            .flat_map(|t| t.partitions.iter())
            .filter(|(p, _)| **p >= 0)
            .map(|(_, p)| p.fetchq_size)
            .sum();
        self.stats.record_prefetch(self.worker, bytes);
        for (topic, partitions) in &statistics.topics {
            for (partition, stats) in &partitions.partitions {
                if *partition >= 0 && stats.hi_offset >= 0 {
                    self.stats.record_log_end(topic, *partition, stats.hi_offset);
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if is_outage(&error) {
            self.stats.record_outage(format!("{error}: {reason}"));
        }
        self.stats.record_error(format!("worker {}: {error}: {reason}", self.worker));
    }
}

impl ConsumerContext for ReaderContext {}

struct PartitionState {
    topic: usize,
    partition: i32,
    /// The next offset to read.
    next: i64,
    end: Option<i64>,
    finished: bool,
    ledger: OffsetLedger,
    /// Confirmed by the group coordinator.
    committed: Option<i64>,
    /// Last sent to the group coordinator.
    sent: Option<i64>,
}

/// Where the reader is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Creating clients (on the first poll).
    Start,
    /// Reading.
    Read,
    /// Stopped by an error (reported in the source's metrics).
    Failed,
}

/// A placeholder partition that holds the worker's watermark until it knows its partitions.
const DISCOVERING: PartitionId = PartitionId::MAX;

pub(super) struct KafkaReader<D> {
    inner: Arc<Inner<D>>,
    index: usize,
    peers: usize,
    /// Wakes the worker when the consumer's queue becomes non-empty.
    activator: Arc<SyncActivator>,
    phase: Phase,
    /// Declared before the consumer and producer: dropped first.
    discovery: Option<Discovery>,
    committer: Option<Committer>,
    partitions: BTreeMap<PartitionId, PartitionState>,
    discovered: bool,
    last_commit: Instant,
    last_position_check: Instant,
    finish_started: Option<Instant>,
    /// Stopping gracefully: since when, and the safe time last seen with when it last moved.
    stopping: Option<Stopping>,
    dead_letters: Option<DeadLetterProducer>,
    /// Restored from a checkpoint: where each partition is read again from, and its largest
    /// event time there.
    restored: BTreeMap<(String, i32), (i64, Option<Time>)>,
    consumer: Option<BaseConsumer<ReaderContext>>,
}

/// A Kafka reader's part of a checkpoint: per partition it reads, `(topic, partition, offset,
/// largest event time before it)`.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct ReaderCheckpoint {
    partitions: Vec<(String, i32, i64, Option<Time>)>,
}

/// A reader stopping gracefully ([`KafkaSource::stop`](super::KafkaSource::stop)).
struct Stopping {
    since: Instant,
    safe_time: Option<Time>,
    settled_since: Instant,
    done: bool,
}

/// How long the safe time must stay where it is before a stopping reader takes it as final.
const SETTLE: Duration = Duration::from_millis(300);

impl<D: 'static> KafkaReader<D> {
    pub(super) fn new(inner: Arc<Inner<D>>, index: usize, peers: usize, activator: SyncActivator) -> Self {
        let now = Instant::now();
        inner.stop.readers.fetch_add(1, Ordering::SeqCst);
        KafkaReader {
            inner,
            index,
            peers,
            activator: Arc::new(activator),
            phase: Phase::Start,
            discovery: None,
            committer: None,
            partitions: BTreeMap::new(),
            discovered: false,
            last_commit: now,
            last_position_check: now,
            finish_started: None,
            stopping: None,
            dead_letters: None,
            restored: BTreeMap::new(),
            consumer: None,
        }
    }

    fn plan(&self) -> &Plan {
        &self.inner.plan
    }

    fn start(&mut self) -> Result<(), ConnectorError> {
        let plan = Arc::clone(&self.inner.plan);
        let context = ReaderContext { stats: Arc::clone(&self.inner.stats), worker: self.index };
        let mut consumer: BaseConsumer<ReaderContext> = plan
            .config
            .clone()
            .set("client.id", format!("{}-{}", plan.config.get("client.id").unwrap_or("tideline"), self.index))
            .client_config()
            .create_with_context(context)
            .map_err(|e| plan.config.redact(ConnectorError::kafka("creating the consumer", e)))?;
        // Messages arriving in an empty queue wake the worker at once: it does not poll on a
        // timer while data flows (and a dataflow that is gone ignores the wake-up).
        let activator = Arc::clone(&self.activator);
        consumer.set_nonempty_callback(move || {
            let _ = activator.activate();
        });
        self.consumer = Some(consumer);
        if let Some(topic) = &plan.dead_letter_topic {
            self.dead_letters = Some(DeadLetterProducer::new(&plan, topic.clone(), self.index)?);
        }
        if plan.group_id.is_some() {
            let activator = Arc::clone(&self.activator);
            self.committer = Some(Committer::start(&plan, self.index, Arc::clone(&self.inner.stats), activator)?);
        }
        self.discovery =
            Some(Discovery::start(Arc::clone(&plan), self.index, self.peers, Arc::clone(&self.activator))?);
        Ok(())
    }

    /// Starts reading the partitions discovery found.
    fn take_discoveries(&mut self, ctx: &mut ReadContext<'_, D>) -> Result<(), ConnectorError> {
        let Some(discovery) = self.discovery.as_ref() else { return Ok(()) };
        let mut found = Vec::new();
        let mut initial = false;
        loop {
            match discovery.receiver.try_recv() {
                Ok(Discovered::Partitions { initial: first, partitions }) => {
                    initial |= first;
                    found.extend(partitions);
                }
                Ok(Discovered::Problem(problem)) => {
                    self.inner.stats.record_error(format!("{}: worker {}: {problem}", self.plan().name, self.index));
                }
                Ok(Discovered::Fatal(problem)) => return Err(ConnectorError::Config(problem)),
                Err(_) => break,
            }
        }
        let mut assign = TopicPartitionList::new();
        for mut f in found {
            let id = partition_id(f.topic, f.partition);
            let topic = &self.inner.plan.topics[f.topic];
            let resumed = self.restored.get(&(topic.clone(), f.partition)).copied();
            match resumed {
                Some((offset, max_before)) => {
                    // Restored from a checkpoint: read again from its position, with the
                    // watermark the partition had there.
                    f.start = offset;
                    ctx.add_partition_with(id, ctx.strategy().generator_after(max_before));
                }
                None => ctx.add_partition(id),
            }
            self.inner.stats.record_assignment(topic, f.partition, self.index);
            let finished = f.end.is_some_and(|end| f.start >= end);
            if finished {
                ctx.finish_partition(id);
            } else {
                assign.add_partition_offset(topic, f.partition, Offset::Offset(f.start))?;
            }
            self.partitions.insert(
                id,
                PartitionState {
                    topic: f.topic,
                    partition: f.partition,
                    next: f.start,
                    end: f.end,
                    finished,
                    ledger: OffsetLedger::resumed(f.start, resumed.and_then(|(_, max)| max)),
                    committed: None,
                    sent: None,
                },
            );
        }
        if assign.count() > 0 {
            let consumer = self.consumer.as_ref().expect("started");
            consumer.incremental_assign(&assign).map_err(|e| ConnectorError::kafka("assigning partitions", e))?;
        }
        drop(assign);
        if initial && !self.discovered {
            self.discovered = true;
            ctx.finish_partition(DISCOVERING);
        }
        Ok(())
    }

    fn read_messages(&mut self, ctx: &mut ReadContext<'_, D>) -> Result<usize, ConnectorError> {
        let KafkaReader { inner, partitions, consumer, dead_letters, .. } = self;
        let consumer = consumer.as_ref().expect("started");
        let mut read = 0;
        let mut finished = Vec::new();
        // `poll` also serves the client's events (statistics, commit results, rebalances) and
        // returns `None` after serving one, even with messages queued behind it; waiting then
        // (for the queue's non-empty callback, which does not come: the queue is not empty)
        // stalled reading for as long as events kept arriving. Only several `None`s in a row
        // mean the queue is empty.
        let mut empty_polls = 0;
        while ctx.budget() > 0 {
            let Some(result) = consumer.poll(Duration::ZERO) else {
                empty_polls += 1;
                if empty_polls >= EMPTY_POLLS {
                    break;
                }
                continue;
            };
            empty_polls = 0;
            let message = match result {
                Ok(message) => message,
                Err(KafkaError::PartitionEOF(_)) => continue,
                Err(error) if is_fatal(&error) => {
                    return Err(ConnectorError::kafka("reading", error));
                }
                Err(error) => {
                    inner.stats.record_error(format!("{}: reading: {error}", inner.plan.name));
                    continue;
                }
            };
            // One topic (the usual case): every assigned partition is of it, and the name need
            // not be read and compared per message.
            let topic = if inner.plan.topics.len() == 1 {
                0
            } else {
                let Some(topic) = inner.plan.topics.iter().position(|t| t == message.topic()) else { continue };
                topic
            };
            let id = partition_id(topic, message.partition());
            let Some(state) = partitions.get_mut(&id) else { continue };
            let offset = message.offset();
            if state.finished || offset < state.next || state.end.is_some_and(|end| offset >= end) {
                continue; // beyond the end of a bounded read, or already read
            }
            read += 1;
            state.next = offset + 1;
            handle_message(inner, ctx, id, state, &message, dead_letters.as_mut());
            if state.end.is_some_and(|end| state.next >= end) {
                finished.push(id);
            }
        }
        for id in finished {
            self.finish_partition(ctx, id)?;
        }
        Ok(read)
    }

    /// Bounded reading: partitions whose position passed their end without a message at the
    /// end (transaction markers, compacted or deleted records) are finished too.
    fn check_positions(&mut self, ctx: &mut ReadContext<'_, D>) -> Result<(), ConnectorError> {
        if self.last_position_check.elapsed() < Duration::from_millis(100) {
            return Ok(());
        }
        self.last_position_check = Instant::now();
        let open: Vec<PartitionId> =
            self.partitions.iter().filter(|(_, s)| !s.finished && s.end.is_some()).map(|(id, _)| *id).collect();
        if open.is_empty() {
            return Ok(());
        }
        let consumer = self.consumer.as_ref().expect("started");
        let positions = consumer.position().map_err(|e| ConnectorError::kafka("reading positions", e))?;
        let mut done = Vec::new();
        for id in open {
            let state = self.partitions.get_mut(&id).expect("listed");
            let topic = &self.inner.plan.topics[state.topic];
            if let Some(Offset::Offset(position)) = positions.find_partition(topic, state.partition).map(|e| e.offset())
                && position > state.next
            {
                state.ledger.skip_to(position);
                state.next = position;
            }
            if state.end.is_some_and(|end| state.next >= end) {
                done.push(id);
            }
        }
        drop(positions);
        for id in done {
            self.finish_partition(ctx, id)?;
        }
        Ok(())
    }

    fn finish_partition(&mut self, ctx: &mut ReadContext<'_, D>, id: PartitionId) -> Result<(), ConnectorError> {
        let Some(state) = self.partitions.get_mut(&id) else { return Ok(()) };
        if state.finished {
            return Ok(());
        }
        state.finished = true;
        ctx.finish_partition(id);
        // Read to its end: no lag left (as far as this bounded read goes).
        let topic = &self.inner.plan.topics[state.topic];
        self.inner.stats.record_positions(vec![(topic.clone(), state.partition, state.next)]);
        if let Some(end) = state.end {
            self.inner.stats.record_log_end(topic, state.partition, end);
        }
        let mut list = TopicPartitionList::new();
        list.add_partition(&self.inner.plan.topics[state.topic], state.partition);
        let consumer = self.consumer.as_ref().expect("started");
        let result = consumer.incremental_unassign(&list);
        drop(list);
        result.map_err(|e| ConnectorError::kafka("unassigning a finished partition", e))
    }

    /// Applies the results of earlier commits; `Err` when committing cannot work (the group
    /// is used by another run or another consumer).
    fn take_commit_results(&mut self) -> Result<(), ConnectorError> {
        let Some(committer) = self.committer.as_ref() else { return Ok(()) };
        let mut refused = None;
        for outcome in committer.results.try_iter() {
            for (topic, partition, offset, result) in outcome {
                let Some(t) = self.inner.plan.topics.iter().position(|x| *x == topic) else { continue };
                let Some(state) = self.partitions.get_mut(&partition_id(t, partition)) else { continue };
                match result {
                    Ok(()) => {
                        state.committed = Some(state.committed.map_or(offset, |c| c.max(offset)));
                        self.inner.stats.record_commit(&topic, partition, offset);
                    }
                    Err(CommitError::Retry(e) | CommitError::Membership(e)) => {
                        // Sent again at the next interval.
                        state.sent = state.committed;
                        tracing::warn!(source = %self.inner.plan.name, %topic, partition, offset, error = %e, "commit failed; retrying at the next interval");
                        self.inner.stats.record_commit_failure(format!("{topic}/{partition} at {offset}: {e}"));
                    }
                    Err(CommitError::Refused(problem)) => {
                        state.sent = state.committed;
                        self.inner.stats.record_commit_failure(format!("{topic}/{partition} at {offset}: {problem}"));
                        refused = Some(problem);
                    }
                }
            }
        }
        match refused {
            Some(problem) => Err(ConnectorError::Config(problem)),
            None => Ok(()),
        }
    }

    /// Commits the offsets that are safe, given the engine's safe time: every `commit_interval`,
    /// or at once when `urgent` and there is something new to commit.
    fn commit(&mut self, safe_time: Option<Time>, urgent: bool) {
        let due = self.last_commit.elapsed() >= self.inner.plan.commit_interval;
        if due {
            let positions = self
                .partitions
                .values()
                .map(|state| (self.inner.plan.topics[state.topic].clone(), state.partition, state.next))
                .collect();
            self.inner.stats.record_positions(positions);
        }
        let (Some(safe_time), Some(_)) = (safe_time, self.inner.plan.group_id.as_ref()) else {
            if due {
                self.last_commit = Instant::now();
            }
            return;
        };
        if !due && !urgent {
            return;
        }
        let mut offsets = Vec::new();
        for (id, state) in &mut self.partitions {
            let mut safe = state.ledger.advance(safe_time);
            if let Some(pending) = self.dead_letters.as_ref().and_then(|d| d.first_pending(*id)) {
                safe = safe.min(pending);
            }
            let topic = &self.inner.plan.topics[state.topic];
            let new = state.sent.is_none_or(|s| safe > s);
            let unconfirmed = state.committed.is_none_or(|c| safe > c);
            if (new && (due || urgent)) || (unconfirmed && due) {
                offsets.push((topic.clone(), state.partition, safe));
                state.sent = Some(safe);
            }
        }
        if due {
            self.last_commit = Instant::now();
        }
        if offsets.is_empty() {
            return;
        }
        let committer = self.committer.as_ref().expect("readers with a group have a committer");
        if !committer.send(offsets) {
            for state in self.partitions.values_mut() {
                state.sent = state.committed;
            }
            self.inner.stats.record_commit_failure(format!("{}: the committer thread stopped", self.inner.plan.name));
        }
    }

    /// Whether every offset that is safe has been committed and confirmed.
    fn all_committed(&mut self, safe_time: Time) -> bool {
        let dead_letters = self.dead_letters.as_ref();
        self.partitions.iter_mut().all(|(id, state)| {
            let mut safe = state.ledger.advance(safe_time);
            if let Some(pending) = dead_letters.and_then(|d| d.first_pending(*id)) {
                safe = safe.min(pending);
            }
            state.committed.is_some_and(|c| c >= safe)
        })
    }

    fn step(&mut self, ctx: &mut ReadContext<'_, D>) -> Result<ReadStatus, ConnectorError> {
        if self.phase == Phase::Start {
            ctx.add_partition(DISCOVERING);
            self.start()?;
            self.phase = Phase::Read;
        }
        if self.inner.stop.requested.load(Ordering::SeqCst) {
            return Ok(self.stop_step(ctx));
        }
        self.take_discoveries(ctx)?;
        if let Some(dead_letters) = self.dead_letters.as_mut() {
            dead_letters.serve(&self.inner.stats);
        }
        let read = self.read_messages(ctx)?;
        if read > 0 {
            self.inner.stats.record_reachable();
        }
        self.take_commit_results()?;
        if self.inner.plan.bounded && read == 0 {
            self.check_positions(ctx)?;
        }
        self.commit(ctx.safe_time(), false);
        let bounded_done =
            self.inner.plan.bounded && self.discovered && self.partitions.values().all(|state| state.finished);
        Ok(if bounded_done {
            ReadStatus::Done
        } else if ctx.budget() == 0 {
            ReadStatus::Busy
        } else {
            ReadStatus::Waiting(self.inner.plan.poll_interval)
        })
    }
}

impl<D: 'static> KafkaReader<D> {
    /// A graceful stop: read nothing more; let the dataflow drain what it has and the sinks
    /// acknowledge it; commit what is then safe; report the reader stopped. The source stays
    /// open (its watermark where it is): ending it would emit open windows as final.
    fn stop_step(&mut self, ctx: &mut ReadContext<'_, D>) -> ReadStatus {
        let now = Instant::now();
        let safe_time = ctx.safe_time();
        let stopping = self.stopping.get_or_insert_with(|| {
            tracing::info!(source = %self.inner.plan.name, worker = self.index, "stopping: reading no more, committing what is durable");
            Stopping { since: now, safe_time, settled_since: now, done: false }
        });
        if stopping.safe_time != safe_time {
            stopping.safe_time = safe_time;
            stopping.settled_since = now;
        }
        let (settled, since, done) =
            (now.duration_since(stopping.settled_since) >= SETTLE, stopping.since, stopping.done);
        if done {
            return ReadStatus::Waiting(self.inner.plan.poll_interval);
        }
        if let Some(dead_letters) = self.dead_letters.as_mut() {
            dead_letters.serve(&self.inner.stats);
        }
        let refused = self.take_commit_results().err();
        if let Some(error) = &refused {
            self.inner.stats.record_error(error.to_string());
        }
        self.commit(safe_time, true);
        let delivered = self.dead_letters.as_ref().is_none_or(|d| d.is_idle());
        let committed = match (safe_time, self.inner.plan.group_id.as_ref()) {
            (Some(safe), Some(_)) => self.all_committed(safe),
            _ => true, // nothing is ever committed
        };
        let gave_up = refused.is_some() || now.duration_since(since) >= self.inner.plan.request_timeout;
        if (settled && delivered && committed) || gave_up {
            if gave_up {
                self.inner.stats.record_error(format!(
                    "{} (worker {}): stopping: not everything safe was committed within {:?}",
                    self.inner.plan.name, self.index, self.inner.plan.request_timeout
                ));
            }
            if let Some(stopping) = self.stopping.as_mut() {
                stopping.done = true;
            }
            self.inner.stop.stopped.fetch_add(1, Ordering::SeqCst);
            return ReadStatus::Waiting(self.inner.plan.poll_interval);
        }
        ReadStatus::Waiting(FINISH_POLL)
    }
}

/// Decodes one message and hands it to the engine, keeping the commit bookkeeping.
fn handle_message<D>(
    inner: &Inner<D>,
    ctx: &mut ReadContext<'_, D>,
    id: PartitionId,
    state: &mut PartitionState,
    message: &BorrowedMessage<'_>,
    dead_letters: Option<&mut DeadLetterProducer>,
) {
    let view = KafkaMessage::from_rdkafka(message, &inner.plan.topics[state.topic]);
    let offset = view.offset;
    let decoded = inner.decoder.decode(&view).and_then(|record| {
        let time = match &inner.event_time {
            EventTimeFrom::Record(f) => f(&record),
            EventTimeFrom::Timestamp => {
                view.timestamp.ok_or_else(|| "the message has no timestamp to take its event time from".to_string())?
            }
        };
        Ok((record, time))
    });
    match decoded {
        Ok((record, time)) => {
            let assigned = ctx.record(id, offset as u64, time, record);
            state.ledger.record(offset, Some(assigned));
        }
        Err(reason) => {
            let letter = DeadLetter {
                source: view.topic.to_string(),
                partition: id,
                position: offset as u64,
                key: view.key.map(<[u8]>::to_vec),
                payload: view.payload.map(<[u8]>::to_vec).unwrap_or_default(),
                reason,
            };
            state.ledger.record(offset, Some(ctx.floor()));
            if let Some(producer) = dead_letters {
                producer.push(id, offset, view.partition, &letter);
            }
            ctx.dead_letter(letter);
        }
    }
}

impl<D> Drop for KafkaReader<D> {
    fn drop(&mut self) {
        // The committer first: once it has stopped, no commit of this reader lands any more.
        self.discovery = None;
        self.committer = None;
        self.dead_letters = None;
        if let Some(consumer) = self.consumer.take() {
            let what = format!("{} (worker {})", self.inner.plan.name, self.index);
            close_within(consumer, self.inner.plan.request_timeout, &self.inner.stats, &what);
        }
    }
}

impl<D: 'static> SourceReader for KafkaReader<D> {
    type Item = D;

    fn checkpoint(&mut self, replay_from: Time) -> Result<Vec<u8>, String> {
        let mut state = ReaderCheckpoint::default();
        for p in self.partitions.values() {
            let (offset, max_before) = p.ledger.resume_point(replay_from);
            state.partitions.push((self.inner.plan.topics[p.topic].clone(), p.partition, offset, max_before));
        }
        // Partitions restored but not discovered again yet keep their restored positions.
        for ((topic, partition), (offset, max_before)) in &self.restored {
            let known = self
                .partitions
                .values()
                .any(|p| p.partition == *partition && self.inner.plan.topics[p.topic] == *topic);
            if !known {
                state.partitions.push((topic.clone(), *partition, *offset, *max_before));
            }
        }
        serde_json::to_vec(&state).map_err(|e| e.to_string())
    }

    fn restore(&mut self, parts: &[Vec<u8>]) -> Result<(), String> {
        for part in parts {
            let state: ReaderCheckpoint = serde_json::from_slice(part).map_err(|e| e.to_string())?;
            for (topic, partition, offset, max_before) in state.partitions {
                // A partition's reader moves its position only forward from where it was
                // restored; other workers may still list that restored position: the
                // furthest is the newest.
                let entry = self.restored.entry((topic, partition)).or_insert((offset, max_before));
                if offset > entry.0 {
                    *entry = (offset, max_before);
                }
            }
        }
        Ok(())
    }

    fn poll(&mut self, ctx: &mut ReadContext<'_, D>) -> ReadStatus {
        if self.phase == Phase::Failed {
            return ReadStatus::Done;
        }
        match self.step(ctx) {
            Ok(ReadStatus::Done) => {
                // Read to its end: nothing for a graceful stop to wait for.
                self.inner.stop.readers.fetch_sub(1, Ordering::SeqCst);
                ReadStatus::Done
            }
            Ok(status) => status,
            Err(error) => {
                self.inner.stop.readers.fetch_sub(1, Ordering::SeqCst);
                ctx.fail(format!("Kafka source {} (worker {}) stopped: {error}", self.inner.plan.name, self.index));
                self.phase = Phase::Failed;
                ReadStatus::Done
            }
        }
    }

    fn finish(&mut self, ctx: &mut FinishContext<'_>) -> ReadStatus {
        let plan = Arc::clone(&self.inner.plan);
        let Some(consumer) = self.consumer.as_ref() else { return ReadStatus::Done };
        if self.finish_started.is_none() {
            self.finish_started = Some(Instant::now());
            // Nothing more is read: stop fetching.
            if let Err(error) = consumer.unassign() {
                self.inner.stats.record_error(format!("{}: unassigning: {error}", plan.name));
            }
        }
        // Serve callbacks (commit results); nothing is assigned any more.
        while consumer.poll(Duration::ZERO).is_some() {}
        if let Some(dead_letters) = self.dead_letters.as_mut() {
            dead_letters.serve(&self.inner.stats);
        }
        if let Err(error) = self.take_commit_results() {
            ctx.fail(format!("Kafka source {} (worker {}): {error}", plan.name, self.index));
            return ReadStatus::Done;
        }
        let safe_time = ctx.safe_time();
        if safe_time.is_none() || plan.group_id.is_none() || self.phase == Phase::Failed {
            return ReadStatus::Done; // nothing is ever committed
        }
        let failed = ctx.sinks_failed();
        let complete = safe_time == Some(Time::MAX);
        self.commit(safe_time, complete || failed);
        let delivered = self.dead_letters.as_ref().is_none_or(|d| d.is_idle()) || failed;
        if (complete || failed) && delivered && self.all_committed(safe_time.unwrap_or(0)) {
            if complete && !self.verify_committed() {
                // The group holds less than was confirmed: committed again above, next time.
                return ReadStatus::Waiting(FINISH_POLL);
            }
            return ReadStatus::Done;
        }
        if self.finish_started.is_some_and(|at| at.elapsed() >= plan.finish_timeout) {
            ctx.fail(format!(
                "Kafka source {} (worker {}): final offsets not committed within {:?} (safe time {:?}{})",
                plan.name,
                self.index,
                plan.finish_timeout,
                safe_time,
                if failed { ", a sink failed" } else { "" }
            ));
            return ReadStatus::Done;
        }
        // The committer wakes the worker when an outcome is in; the safe time moves without a
        // wake-up, so look often.
        ReadStatus::Waiting(FINISH_POLL.min(plan.poll_interval))
    }
}

impl<D: 'static> KafkaReader<D> {
    /// Whether the group's committed offsets, as the coordinator reports them, are those this
    /// reader saw confirmed. A commit that failed with a retriable error can still be applied
    /// by the client's own retry after a later commit succeeded, setting a partition back (seen
    /// with a coordinator that refuses and times out commits). Where the group holds less, the
    /// reader forgets the confirmation so that the offset is committed again. If the
    /// coordinator cannot be asked now, it is asked again (until the finish timeout).
    fn verify_committed(&mut self) -> bool {
        let Some(consumer) = self.consumer.as_ref() else { return true };
        let mut list = TopicPartitionList::new();
        for state in self.partitions.values() {
            list.add_partition(&self.inner.plan.topics[state.topic], state.partition);
        }
        let held = consumer.committed_offsets(list, self.inner.plan.request_timeout);
        let held: Vec<(String, i32, Option<i64>)> = match held {
            Ok(list) => list
                .elements()
                .iter()
                .map(|e| {
                    let offset = match e.offset() {
                        Offset::Offset(offset) => Some(offset),
                        _ => None,
                    };
                    (e.topic().to_string(), e.partition(), offset)
                })
                .collect(),
            Err(error) => {
                self.inner.stats.record_error(format!("{}: reading committed offsets: {error}", self.plan().name));
                return false;
            }
        };
        let mut verified = true;
        for (topic, partition, offset) in held {
            let Some(t) = self.inner.plan.topics.iter().position(|x| *x == topic) else { continue };
            let Some(state) = self.partitions.get_mut(&partition_id(t, partition)) else { continue };
            if state.committed.is_some_and(|c| offset.is_none_or(|o| o < c)) {
                tracing::warn!(
                    source = %self.inner.plan.name, %topic, partition, confirmed = ?state.committed, held = ?offset,
                    "the group holds an older offset than was confirmed; committing again"
                );
                state.committed = offset;
                state.sent = offset;
                verified = false;
            }
        }
        verified
    }
}

/// How often a finished source looks at the safe time while it waits to commit its ends.
const FINISH_POLL: Duration = Duration::from_millis(5);
