//! The Kafka source: partitioned, watermarked per partition, at-least-once.

use std::collections::{BTreeMap, BTreeSet};
use std::marker::PhantomData;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientContext, Message};
use serde::de::DeserializeOwned;
use tideline::late::{DeadLetter, LateDecision};
use tideline::source::{FinishContext, ReadContext, ReadStatus, SourceConfig, SourceReader, SourceStreams, source};
use tideline::time::watermark::PartitionId;
use tideline::timely::dataflow::Scope;
use tideline::{EventTime, Time};

use crate::error::ConnectorError;
use crate::kafka::config::KafkaConfig;
use crate::kafka::decode::{Decoder, KafkaMessage, Keyed, RawMessage};
use crate::kafka::ledger::OffsetLedger;
use crate::kafka::stats::KafkaSourceStats;
use crate::kafka::{is_fatal, owner, partition_id};

/// Where a [`KafkaSource`] starts reading each partition.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum StartOffsets {
    /// The earliest offset still in the partition.
    #[default]
    Earliest,
    /// The end of the partition: only messages produced after the start.
    Latest,
    /// The consumer group's committed offsets (resuming after a restart); partitions without
    /// one start at the earliest offset. Needs a [group id](KafkaSourceBuilder::group_id).
    Committed,
    /// The first message whose timestamp is at or after this time (ms since the Unix epoch);
    /// partitions without one start at their end.
    Timestamp(Time),
    /// Explicit offsets per `(topic, partition)`; partitions not listed start at the earliest
    /// offset.
    Offsets(BTreeMap<(String, i32), i64>),
}

type TimeFn<D> = Arc<dyn Fn(&D) -> Time + Send + Sync>;

/// Where records' event times come from.
enum EventTimeFrom<D> {
    /// The Kafka message timestamp.
    Timestamp,
    /// A function of the decoded record.
    Record(TimeFn<D>),
}

impl<D> Clone for EventTimeFrom<D> {
    fn clone(&self) -> Self {
        match self {
            EventTimeFrom::Timestamp => EventTimeFrom::Timestamp,
            EventTimeFrom::Record(f) => EventTimeFrom::Record(Arc::clone(f)),
        }
    }
}

/// What every worker's reader shares: the partitions to find and how to start them.
#[derive(Debug)]
struct Plan {
    name: String,
    config: KafkaConfig,
    topics: Vec<String>,
    group_id: Option<String>,
    start: StartOffsets,
    bounded: bool,
    metadata_refresh: Duration,
    request_timeout: Duration,
    commit_interval: Duration,
    poll_interval: Duration,
    finish_timeout: Duration,
    dead_letter_topic: Option<String>,
}

/// Configures a [`KafkaSource`]; `build()` validates the configuration.
pub struct KafkaSourceBuilder<D> {
    config: KafkaConfig,
    decoder: Decoder<D>,
    topics: Vec<String>,
    group_id: Option<String>,
    start: StartOffsets,
    event_time: EventTimeFrom<D>,
    bounded: bool,
    commit_interval: Duration,
    metadata_refresh: Duration,
    poll_interval: Duration,
    request_timeout: Duration,
    finish_timeout: Duration,
    dead_letter_topic: Option<String>,
    stats: Option<Arc<KafkaSourceStats>>,
    name: Option<String>,
}

/// Reads Kafka topics as a watermarked, partitioned source (DESIGN §2, §7, §10).
///
/// # Partitions and workers
///
/// Every `(topic, partition)` is a partition of the source with its own watermark; its
/// [`PartitionId`] is `topic index << 32 | partition` (topics in the order given). Partitions
/// are spread over all workers of all processes by an explicit, deterministic assignment —
/// partition `p` of topic `t` goes to worker `(hash(t) + p) % workers` — with `assign`, not a
/// consumer group subscription: no rebalances, and adding partitions never moves existing
/// ones. Each worker refreshes the topics' metadata periodically
/// ([`metadata_refresh`](KafkaSourceBuilder::metadata_refresh)) and starts reading new
/// partitions it owns (from their earliest offset, or the committed one with
/// [`StartOffsets::Committed`]); their watermark starts at the source's published watermark.
/// Until a worker knows its partitions, it holds the watermark where it is; a worker without
/// partitions then follows the others (it never holds the watermark back).
///
/// # Event time and late data
///
/// A record's event time is the message timestamp (the default), or a function of the
/// decoded record ([`event_time`](KafkaSourceBuilder::event_time)). Watermarks follow each
/// partition's records through the source's `WatermarkStrategy`, with its idle timeout; late
/// records follow its `LatePolicy` and are counted per partition, as for every source.
///
/// # Bad input
///
/// A message that fails to decode (or has no timestamp when event time comes from it) goes
/// to the `dead_letters` collection as a [`DeadLetter`] with the topic, the partition id, the
/// offset, the raw key and value and the reason, and is counted; with a
/// [`dead_letter_topic`](KafkaSourceBuilder::dead_letter_topic) it is also produced there
/// (same key and value, with headers `tideline.topic`, `tideline.partition`,
/// `tideline.offset` and `tideline.reason`). Reading goes on.
///
/// # Delivery: at-least-once
///
/// With a [group id](KafkaSourceBuilder::group_id), offsets are committed to the group — every
/// [`commit_interval`](KafkaSourceBuilder::commit_interval), by a thread per worker that waits
/// for the coordinator's answer (the worker never does) — only once
/// everything derived from the records before them is durably written by the dataflow's
/// sinks: the engine's safe time (`ReadContext::safe_time`) must be above the time assigned
/// to every one of those records, and their dead letters must be delivered to the
/// dead-letter topic. A dataflow without durable sinks never commits. A bounded source
/// commits its end offsets once the sinks have written everything, before the dataflow
/// completes. A restart from the committed offsets ([`StartOffsets::Committed`]) therefore
/// loses nothing; records processed after the last commit are processed again.
///
/// # Bounded reading
///
/// [`bounded`](KafkaSourceBuilder::bounded) reads each partition up to the end offset
/// observed when the source starts, then finishes it; when all are finished the source is
/// done (its watermark goes to the end of time). Otherwise the source never finishes: a worker
/// with nothing to read waits.
///
/// # Memory and backpressure
///
/// The reader keeps no records of its own: what it takes from the client in a poll goes to
/// the dataflow at once. While the sinks lag, the engine's flow control stops polling it,
/// and the client stops fetching once its prefetch queue is full
/// (`queued.max.messages.kbytes`, 16 MB by default here; per consumer).
///
/// # Client configuration
///
/// The [`KafkaConfig`] passes through to librdkafka. The source sets, unless configured:
/// `enable.auto.commit=false`, `enable.auto.offset.store=false`,
/// `auto.offset.reset=earliest`, `queued.max.messages.kbytes=16384`, and a `client.id`. It
/// always sets `group.id`: the [group id](KafkaSourceBuilder::group_id), or one of its own
/// that nothing is committed to (librdkafka assigns partitions through a group handle).
///
/// While a worker discovers its partitions, the source's metrics show a placeholder partition
/// with id `u64::MAX` holding its watermark.
pub struct KafkaSource<D> {
    inner: Arc<Inner<D>>,
}

impl<D> Clone for KafkaSource<D> {
    fn clone(&self) -> Self {
        KafkaSource { inner: Arc::clone(&self.inner) }
    }
}

struct Inner<D> {
    plan: Arc<Plan>,
    decoder: Decoder<D>,
    event_time: EventTimeFrom<D>,
    stats: Arc<KafkaSourceStats>,
    _marker: PhantomData<fn() -> D>,
}

impl<D> KafkaSource<D> {
    /// A source decoding messages with `decoder` (see [`Decoder`] for the built-in ones).
    pub fn builder(config: KafkaConfig, decoder: Decoder<D>) -> KafkaSourceBuilder<D> {
        KafkaSourceBuilder {
            config,
            decoder,
            topics: Vec::new(),
            group_id: None,
            start: StartOffsets::default(),
            event_time: EventTimeFrom::Timestamp,
            bounded: false,
            commit_interval: Duration::from_secs(1),
            metadata_refresh: Duration::from_secs(10),
            poll_interval: Duration::from_millis(10),
            request_timeout: Duration::from_secs(10),
            finish_timeout: Duration::from_secs(60),
            dead_letter_topic: None,
            stats: None,
            name: None,
        }
    }

    /// A source with a custom decoding function: `Err(reason)` makes a dead letter.
    pub fn with_decoder(
        config: KafkaConfig,
        decode: impl Fn(&KafkaMessage<'_>) -> Result<D, String> + Send + Sync + 'static,
    ) -> KafkaSourceBuilder<D> {
        Self::builder(config, Decoder::new(decode))
    }
}

impl<D: DeserializeOwned> KafkaSource<D> {
    /// Values decoded from JSON ([`Decoder::json`]).
    pub fn json(config: KafkaConfig) -> KafkaSourceBuilder<D> {
        Self::builder(config, Decoder::json())
    }
}

impl<V: DeserializeOwned> KafkaSource<Keyed<String, V>> {
    /// UTF-8 keys and JSON values ([`Decoder::json_keyed`]).
    pub fn json_keyed(config: KafkaConfig) -> KafkaSourceBuilder<Keyed<String, V>> {
        Self::builder(config, Decoder::json_keyed())
    }
}

impl KafkaSource<String> {
    /// Values as UTF-8 text ([`Decoder::string`]).
    pub fn strings(config: KafkaConfig) -> KafkaSourceBuilder<String> {
        Self::builder(config, Decoder::string())
    }
}

impl KafkaSource<Keyed<String, String>> {
    /// Keys and values as UTF-8 text ([`Decoder::keyed_string`]).
    pub fn keyed_strings(config: KafkaConfig) -> KafkaSourceBuilder<Keyed<String, String>> {
        Self::builder(config, Decoder::keyed_string())
    }
}

impl KafkaSource<RawMessage> {
    /// Raw keys, values and timestamps ([`Decoder::raw`]).
    pub fn raw(config: KafkaConfig) -> KafkaSourceBuilder<RawMessage> {
        Self::builder(config, Decoder::raw())
    }
}

impl<D> KafkaSourceBuilder<D> {
    /// Adds a topic to read.
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topics.push(topic.into());
        self
    }

    /// Adds topics to read.
    pub fn topics<S: Into<String>>(mut self, topics: impl IntoIterator<Item = S>) -> Self {
        self.topics.extend(topics.into_iter().map(Into::into));
        self
    }

    /// The consumer group offsets are committed to (and read from, with
    /// [`StartOffsets::Committed`]). Without one nothing is committed. The group is used for
    /// offsets only: nobody subscribes, so it must not be shared with subscribing consumers.
    pub fn group_id(mut self, group: impl Into<String>) -> Self {
        self.group_id = Some(group.into());
        self
    }

    /// Where to start reading (default [`StartOffsets::Earliest`]).
    pub fn start(mut self, start: StartOffsets) -> Self {
        self.start = start;
        self
    }

    /// Takes each record's event time from the decoded record.
    pub fn event_time(mut self, f: impl Fn(&D) -> Time + Send + Sync + 'static) -> Self {
        self.event_time = EventTimeFrom::Record(Arc::new(f));
        self
    }

    /// Takes each record's event time from its message timestamp (the default); messages
    /// without one are dead letters.
    pub fn kafka_timestamps(mut self) -> Self {
        self.event_time = EventTimeFrom::Timestamp;
        self
    }

    /// Reads each partition to the end offset observed at the start, then finishes (see
    /// [`KafkaSource`]'s *Bounded reading*).
    pub fn bounded(mut self) -> Self {
        self.bounded = true;
        self
    }

    /// How often processed offsets are committed (default 1 s).
    pub fn commit_interval(mut self, interval: Duration) -> Self {
        self.commit_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// How often each worker looks for new partitions (default 10 s).
    pub fn metadata_refresh(mut self, interval: Duration) -> Self {
        self.metadata_refresh = interval.max(Duration::from_millis(10));
        self
    }

    /// How long a worker waits before polling again when nothing was available (default
    /// 10 ms).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// How long metadata and offset look-ups may take before they are retried (default 10 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout.max(Duration::from_millis(100));
        self
    }

    /// How long a finished bounded source tries to commit its final offsets before it gives
    /// up and reports an error (default 60 s).
    pub fn finish_timeout(mut self, timeout: Duration) -> Self {
        self.finish_timeout = timeout;
        self
    }

    /// Also produces every dead letter to this topic (see [`KafkaSource`]'s *Bad input*).
    pub fn dead_letter_topic(mut self, topic: impl Into<String>) -> Self {
        self.dead_letter_topic = Some(topic.into());
        self
    }

    /// Shares the source's Kafka counters (commits, assignment, errors, prefetch); usually one
    /// per process. A fresh one otherwise, readable with [`KafkaSource::stats`].
    pub fn stats(mut self, stats: Arc<KafkaSourceStats>) -> Self {
        self.stats = Some(stats);
        self
    }

    /// Names the source's clients (`client.id`); default: the topics.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Checks the configuration: topics given, a group for committed start offsets, and
    /// every client property accepted by librdkafka (nothing is connected yet).
    pub fn build(self) -> Result<KafkaSource<D>, ConnectorError> {
        if self.topics.is_empty() {
            return Err(ConnectorError::Config("a Kafka source needs at least one topic".into()));
        }
        let mut seen = BTreeSet::new();
        for topic in &self.topics {
            if topic.is_empty() || !seen.insert(topic) {
                return Err(ConnectorError::Config(format!("Kafka source: empty or repeated topic {topic:?}")));
            }
        }
        if self.topics.len() > u32::MAX as usize {
            return Err(ConnectorError::Config("Kafka source: too many topics".into()));
        }
        let group_id = self.group_id.or_else(|| self.config.get("group.id").map(String::from));
        if self.start == StartOffsets::Committed && group_id.is_none() {
            return Err(ConnectorError::Config(
                "Kafka source: StartOffsets::Committed needs a group id (.group_id(\"...\"))".into(),
            ));
        }
        if let StartOffsets::Offsets(offsets) = &self.start
            && let Some(((topic, partition), offset)) = offsets.iter().find(|(_, o)| **o < 0)
        {
            return Err(ConnectorError::Config(format!(
                "Kafka source: start offset {offset} for {topic}/{partition} is negative"
            )));
        }
        let name = self.name.unwrap_or_else(|| self.topics.join(","));
        let mut config = self
            .config
            .set_default("enable.auto.commit", "false")
            .set_default("enable.auto.offset.store", "false")
            .set_default("auto.offset.reset", "earliest")
            .set_default("queued.max.messages.kbytes", "16384")
            .set_default("client.id", format!("tideline-{name}"));
        // librdkafka assigns partitions through its group handle, so its consumers need a group
        // id even when nothing is committed: one of their own then.
        config = config.set("group.id", group_id.clone().unwrap_or_else(|| format!("tideline-{name}-uncommitted")));
        config.check_client(false)?;
        if self.dead_letter_topic.is_some() {
            config.check_client(true)?;
        }
        let plan = Plan {
            name,
            config,
            topics: self.topics,
            group_id,
            start: self.start,
            bounded: self.bounded,
            metadata_refresh: self.metadata_refresh,
            request_timeout: self.request_timeout,
            commit_interval: self.commit_interval,
            poll_interval: self.poll_interval,
            finish_timeout: self.finish_timeout,
            dead_letter_topic: self.dead_letter_topic,
        };
        Ok(KafkaSource {
            inner: Arc::new(Inner {
                plan: Arc::new(plan),
                decoder: self.decoder,
                event_time: self.event_time,
                stats: self.stats.unwrap_or_default(),
                _marker: PhantomData,
            }),
        })
    }
}

impl<D: EventTime> KafkaSourceBuilder<D> {
    /// Takes each record's event time from the record itself ([`EventTime`]).
    pub fn record_event_time(self) -> Self {
        self.event_time(|record: &D| record.event_time())
    }
}

impl<D: Clone + 'static> KafkaSource<D> {
    /// Reads the topics in `scope` as a watermarked source.
    pub fn read<'scope>(&self, scope: Scope<'scope, Time>, config: SourceConfig) -> SourceStreams<'scope, D> {
        let inner = Arc::clone(&self.inner);
        source(scope, config, move |setup| KafkaReader::new(inner, setup.index(), setup.peers()))
    }
}

impl<D> KafkaSource<D> {
    /// The source's Kafka counters.
    pub fn stats(&self) -> &Arc<KafkaSourceStats> {
        &self.inner.stats
    }

    /// The topics, in partition-id order.
    pub fn topics(&self) -> &[String] {
        &self.inner.plan.topics
    }

    /// The partition id of `partition` of `topic`, if the source reads the topic.
    pub fn partition_id(&self, topic: &str, partition: i32) -> Option<PartitionId> {
        let index = self.inner.plan.topics.iter().position(|t| t == topic)?;
        Some(partition_id(index, partition))
    }

    /// The `(topic, partition)` of a partition id.
    pub fn topic_partition(&self, id: PartitionId) -> Option<(&str, i32)> {
        let topic = self.inner.plan.topics.get((id >> 32) as usize)?;
        Some((topic.as_str(), (id & 0xffff_ffff) as i32))
    }
}

impl<D> std::fmt::Debug for KafkaSource<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource").field("plan", &self.inner.plan).finish()
    }
}

// --- discovery ---------------------------------------------------------------------------

/// A partition a worker starts reading.
#[derive(Clone, Debug)]
struct Found {
    topic: usize,
    partition: i32,
    start: i64,
    /// Bounded reading: the end offset observed at the start.
    end: Option<i64>,
}

enum Discovered {
    /// Partitions this worker owns that it did not know; `initial` for the first answer.
    Partitions { initial: bool, partitions: Vec<Found> },
    /// A look-up failed (retried); or a topic does not exist.
    Problem(String),
}

/// A thread per reader that looks up metadata and start offsets (blocking calls) so that the
/// worker never waits on the network.
struct Discovery {
    receiver: mpsc::Receiver<Discovered>,
    _stop: mpsc::Sender<()>,
}

impl Discovery {
    fn start(plan: Arc<Plan>, index: usize, peers: usize) -> Result<Self, ConnectorError> {
        let (sender, receiver) = mpsc::channel();
        let (stop, stopped) = mpsc::channel::<()>();
        let consumer: BaseConsumer = plan
            .config
            .clone()
            .set("client.id", format!("tideline-{}-discovery-{index}", plan.name))
            .client_config()
            .create()
            .map_err(|e| plan.config.redact(ConnectorError::kafka("creating the metadata client", e)))?;
        std::thread::Builder::new()
            .name(format!("tideline-kafka-discovery-{index}"))
            .spawn(move || discover(&consumer, &plan, index, peers, &sender, &stopped))
            .map_err(|e| ConnectorError::Config(format!("cannot start the Kafka discovery thread: {e}")))?;
        Ok(Discovery { receiver, _stop: stop })
    }
}

fn discover(
    consumer: &BaseConsumer,
    plan: &Plan,
    index: usize,
    peers: usize,
    sender: &mpsc::Sender<Discovered>,
    stopped: &mpsc::Receiver<()>,
) {
    let mut known: BTreeSet<(usize, i32)> = BTreeSet::new();
    let mut initial = true;
    loop {
        let message = match discover_once(consumer, plan, index, peers, &known, initial) {
            Ok((partitions, problems)) => {
                for problem in problems {
                    if sender.send(Discovered::Problem(problem)).is_err() {
                        return;
                    }
                }
                known.extend(partitions.iter().map(|f| (f.topic, f.partition)));
                let message = Discovered::Partitions { initial, partitions };
                initial = false;
                message
            }
            Err(problem) => Discovered::Problem(problem),
        };
        if sender.send(message).is_err() || (plan.bounded && !initial) {
            return;
        }
        let wait = if initial { Duration::from_millis(500) } else { plan.metadata_refresh };
        match stopped.recv_timeout(wait) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
    }
}

/// One round: the partitions this worker owns and does not know yet, with their start (and
/// end) offsets; and problems worth reporting.
fn discover_once(
    consumer: &BaseConsumer,
    plan: &Plan,
    index: usize,
    peers: usize,
    known: &BTreeSet<(usize, i32)>,
    initial: bool,
) -> Result<(Vec<Found>, Vec<String>), String> {
    let timeout = plan.request_timeout;
    let mut owned = Vec::new();
    let mut problems = Vec::new();
    for (t, topic) in plan.topics.iter().enumerate() {
        let metadata =
            consumer.fetch_metadata(Some(topic), timeout).map_err(|e| format!("metadata of topic {topic}: {e}"))?;
        let Some(info) = metadata.topics().iter().find(|m| m.name() == topic) else { continue };
        if let Some(error) = info.error() {
            let error = rdkafka::types::RDKafkaErrorCode::from(error);
            if error == rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition {
                problems.push(format!("topic {topic} does not exist (yet)"));
                continue;
            }
            return Err(format!("metadata of topic {topic}: {error}"));
        }
        for partition in info.partitions() {
            let p = partition.id();
            if owner(topic, p, peers) == index && !known.contains(&(t, p)) {
                owned.push((t, p));
            }
        }
    }
    owned.sort_unstable();
    let mut found = Vec::new();
    if owned.is_empty() {
        return Ok((found, problems));
    }
    let mut bounds = Vec::new();
    for &(t, p) in &owned {
        let topic = &plan.topics[t];
        let (low, high) =
            consumer.fetch_watermarks(topic, p, timeout).map_err(|e| format!("offsets of {topic}/{p}: {e}"))?;
        bounds.push((low, high));
    }
    // Partitions found after the start are new: read from the beginning (or the committed
    // offset when resuming).
    let start = match (&plan.start, initial) {
        (StartOffsets::Committed, _) | (_, true) => plan.start.clone(),
        _ => StartOffsets::Earliest,
    };
    let starts: Vec<Option<i64>> = match &start {
        StartOffsets::Earliest => owned.iter().map(|_| None).collect(),
        StartOffsets::Latest => bounds.iter().map(|(_, high)| Some(*high)).collect(),
        StartOffsets::Offsets(offsets) => {
            owned.iter().map(|(t, p)| offsets.get(&(plan.topics[*t].clone(), *p)).copied()).collect()
        }
        StartOffsets::Committed => {
            let mut list = TopicPartitionList::new();
            for &(t, p) in &owned {
                list.add_partition(&plan.topics[t], p);
            }
            let committed = consumer
                .committed_offsets(list, timeout)
                .map_err(|e| format!("committed offsets of group {:?}: {e}", plan.group_id))?;
            let offsets = owned
                .iter()
                .map(|(t, p)| {
                    committed.find_partition(&plan.topics[*t], *p).and_then(|e| match e.offset() {
                        Offset::Offset(o) => Some(o),
                        _ => None,
                    })
                })
                .collect();
            drop(committed);
            offsets
        }
        StartOffsets::Timestamp(time) => {
            let mut list = TopicPartitionList::new();
            for &(t, p) in &owned {
                list.add_partition_offset(&plan.topics[t], p, Offset::Offset(*time as i64))
                    .map_err(|e| format!("offsets at time {time}: {e}"))?;
            }
            let at = consumer.offsets_for_times(list, timeout).map_err(|e| format!("offsets at time {time}: {e}"))?;
            let offsets = owned
                .iter()
                .zip(&bounds)
                .map(|((t, p), (_, high))| {
                    Some(match at.find_partition(&plan.topics[*t], *p).map(|e| e.offset()) {
                        Some(Offset::Offset(o)) => o,
                        _ => *high,
                    })
                })
                .collect();
            drop(at);
            offsets
        }
    };
    for ((&(topic, partition), (low, high)), start) in owned.iter().zip(bounds).zip(starts) {
        // Offsets outside the partition (deleted, or beyond its end) are clamped into it.
        let start = start.unwrap_or(low).clamp(low, high.max(low));
        found.push(Found { topic, partition, start, end: plan.bounded.then_some(high) });
    }
    Ok((found, problems))
}

// --- the reader --------------------------------------------------------------------------

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
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.stats.record_error(format!("worker {}: {error}: {reason}", self.worker));
    }
}

impl ConsumerContext for ReaderContext {}

/// Offsets to commit: `(topic, partition, offset)`.
type Offsets = Vec<(String, i32, i64)>;
/// A commit's outcome per partition: `Err` with the reason.
type Committed = Vec<(String, i32, i64, Result<(), String>)>;

/// A thread per reader that commits offsets synchronously (librdkafka reports the outcome of an
/// asynchronous commit only to a callback the client library does not expose), so that the
/// worker never waits for the group coordinator. Requests that queue up while a commit is in
/// flight are merged: the newest offset per partition wins.
struct Committer {
    requests: mpsc::Sender<Offsets>,
    results: mpsc::Receiver<Committed>,
}

impl Committer {
    fn start(plan: &Plan, index: usize) -> Result<Self, ConnectorError> {
        let consumer: BaseConsumer = plan
            .config
            .clone()
            .set("client.id", format!("tideline-{}-committer-{index}", plan.name))
            .client_config()
            .create()
            .map_err(|e| plan.config.redact(ConnectorError::kafka("creating the offset committer", e)))?;
        let (requests, incoming) = mpsc::channel::<Offsets>();
        let (outcomes, results) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("tideline-kafka-committer-{index}"))
            .spawn(move || {
                while let Ok(first) = incoming.recv() {
                    let mut latest: BTreeMap<(String, i32), i64> = BTreeMap::new();
                    for (topic, partition, offset) in std::iter::once(first).chain(incoming.try_iter()).flatten() {
                        let entry = latest.entry((topic, partition)).or_insert(offset);
                        *entry = (*entry).max(offset);
                    }
                    if outcomes.send(commit_sync(&consumer, &latest)).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| ConnectorError::Config(format!("cannot start the Kafka committer thread: {e}")))?;
        Ok(Committer { requests, results })
    }
}

fn commit_sync(consumer: &BaseConsumer, offsets: &BTreeMap<(String, i32), i64>) -> Committed {
    let mut list = TopicPartitionList::new();
    for ((topic, partition), offset) in offsets {
        if let Err(e) = list.add_partition_offset(topic, *partition, Offset::Offset(*offset)) {
            return offsets.iter().map(|((t, p), o)| (t.clone(), *p, *o, Err(e.to_string()))).collect();
        }
    }
    let result = consumer.commit(&list, CommitMode::Sync);
    drop(list);
    let outcome = result.map_err(|e| e.to_string());
    offsets.iter().map(|((t, p), o)| (t.clone(), *p, *o, outcome.clone())).collect()
}

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

struct KafkaReader<D> {
    inner: Arc<Inner<D>>,
    index: usize,
    peers: usize,
    phase: Phase,
    /// Declared before the consumer and producer: dropped first.
    discovery: Option<Discovery>,
    committer: Option<Committer>,
    partitions: BTreeMap<PartitionId, PartitionState>,
    discovered: bool,
    last_commit: Instant,
    last_position_check: Instant,
    finish_started: Option<Instant>,
    dead_letters: Option<DeadLetterProducer>,
    consumer: Option<BaseConsumer<ReaderContext>>,
}

impl<D: 'static> KafkaReader<D> {
    fn new(inner: Arc<Inner<D>>, index: usize, peers: usize) -> Self {
        let now = Instant::now();
        KafkaReader {
            inner,
            index,
            peers,
            phase: Phase::Start,
            discovery: None,
            committer: None,
            partitions: BTreeMap::new(),
            discovered: false,
            last_commit: now,
            last_position_check: now,
            finish_started: None,
            dead_letters: None,
            consumer: None,
        }
    }

    fn plan(&self) -> &Plan {
        &self.inner.plan
    }

    fn start(&mut self) -> Result<(), ConnectorError> {
        let plan = Arc::clone(&self.inner.plan);
        let context = ReaderContext { stats: Arc::clone(&self.inner.stats), worker: self.index };
        let consumer: BaseConsumer<ReaderContext> = plan
            .config
            .clone()
            .set("client.id", format!("{}-{}", plan.config.get("client.id").unwrap_or("tideline"), self.index))
            .client_config()
            .create_with_context(context)
            .map_err(|e| plan.config.redact(ConnectorError::kafka("creating the consumer", e)))?;
        self.consumer = Some(consumer);
        if let Some(topic) = &plan.dead_letter_topic {
            self.dead_letters = Some(DeadLetterProducer::new(&plan, topic.clone(), self.index)?);
        }
        if plan.group_id.is_some() {
            self.committer = Some(Committer::start(&plan, self.index)?);
        }
        self.discovery = Some(Discovery::start(Arc::clone(&plan), self.index, self.peers)?);
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
                Err(_) => break,
            }
        }
        let mut assign = TopicPartitionList::new();
        for f in found {
            let id = partition_id(f.topic, f.partition);
            ctx.add_partition(id);
            let topic = &self.inner.plan.topics[f.topic];
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
                    ledger: OffsetLedger::new(f.start),
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
        while ctx.budget() > 0 {
            let Some(result) = consumer.poll(Duration::ZERO) else { break };
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
            let Some(topic) = inner.plan.topics.iter().position(|t| t == message.topic()) else { continue };
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
        let mut list = TopicPartitionList::new();
        list.add_partition(&self.inner.plan.topics[state.topic], state.partition);
        let consumer = self.consumer.as_ref().expect("started");
        let result = consumer.incremental_unassign(&list);
        drop(list);
        result.map_err(|e| ConnectorError::kafka("unassigning a finished partition", e))
    }

    /// Applies the results of earlier commits.
    fn take_commit_results(&mut self) {
        let Some(committer) = self.committer.as_ref() else { return };
        for outcome in committer.results.try_iter() {
            for (topic, partition, offset, result) in outcome {
                let Some(t) = self.inner.plan.topics.iter().position(|x| *x == topic) else { continue };
                let Some(state) = self.partitions.get_mut(&partition_id(t, partition)) else { continue };
                match result {
                    Ok(()) => {
                        state.committed = Some(state.committed.map_or(offset, |c| c.max(offset)));
                        self.inner.stats.record_commit(&topic, partition, offset);
                    }
                    Err(e) => {
                        // Sent again at the next interval.
                        state.sent = state.committed;
                        self.inner.stats.record_commit_failure(format!("{topic}/{partition} at {offset}: {e}"));
                    }
                }
            }
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
        if committer.requests.send(offsets).is_err() {
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
        self.take_discoveries(ctx)?;
        if let Some(dead_letters) = self.dead_letters.as_mut() {
            dead_letters.serve(&self.inner.stats);
        }
        let read = self.read_messages(ctx)?;
        self.take_commit_results();
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

/// Decodes one message and hands it to the engine, keeping the commit bookkeeping.
fn handle_message<D>(
    inner: &Inner<D>,
    ctx: &mut ReadContext<'_, D>,
    id: PartitionId,
    state: &mut PartitionState,
    message: &BorrowedMessage<'_>,
    dead_letters: Option<&mut DeadLetterProducer>,
) {
    let view = KafkaMessage::from_rdkafka(message);
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
            let assigned = match ctx.record(id, offset as u64, time, record) {
                LateDecision::OnTime => Some(time),
                LateDecision::Accept(at) => Some(at),
                LateDecision::SideOutput => ctx.partition_watermark(id),
                LateDecision::Drop => None,
            };
            state.ledger.record(offset, assigned);
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

impl<D: 'static> SourceReader for KafkaReader<D> {
    type Item = D;

    fn poll(&mut self, ctx: &mut ReadContext<'_, D>) -> ReadStatus {
        if self.phase == Phase::Failed {
            return ReadStatus::Done;
        }
        match self.step(ctx) {
            Ok(status) => status,
            Err(error) => {
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
        self.take_commit_results();
        let safe_time = ctx.safe_time();
        if safe_time.is_none() || plan.group_id.is_none() || self.phase == Phase::Failed {
            return ReadStatus::Done; // nothing is ever committed
        }
        let failed = ctx.sinks_failed();
        let complete = safe_time == Some(Time::MAX);
        self.commit(safe_time, complete || failed);
        let delivered = self.dead_letters.as_ref().is_none_or(|d| d.is_idle()) || failed;
        if (complete || failed) && delivered && self.all_committed(safe_time.unwrap_or(0)) {
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
        ReadStatus::Waiting(plan.poll_interval)
    }
}

// --- dead letters to a topic -------------------------------------------------------------

type Delivered = ((PartitionId, i64), Result<(), String>);

struct DeadLetterContext {
    delivered: Mutex<Vec<Delivered>>,
}

impl ClientContext for DeadLetterContext {}

impl ProducerContext for DeadLetterContext {
    type DeliveryOpaque = Box<(PartitionId, i64)>;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: Self::DeliveryOpaque) {
        let outcome = result.as_ref().map(|_| ()).map_err(|(e, _)| e.to_string());
        self.delivered.lock().expect("delivery lock poisoned").push((*opaque, outcome));
    }
}

/// Produces dead letters to a topic, and knows which are not delivered yet (their offsets are
/// not committed).
struct DeadLetterProducer {
    topic: String,
    /// Undelivered: the letter, its Kafka partition, and whether it is in flight.
    pending: BTreeMap<(PartitionId, i64), (DeadLetter, i32, bool)>,
    producer: BaseProducer<DeadLetterContext>,
}

impl DeadLetterProducer {
    fn new(plan: &Plan, topic: String, index: usize) -> Result<Self, ConnectorError> {
        let producer = plan
            .config
            .clone()
            .set("client.id", format!("tideline-{}-dead-letters-{index}", plan.name))
            .set_default("enable.idempotence", "true")
            .client_config()
            .create_with_context(DeadLetterContext { delivered: Mutex::new(Vec::new()) })
            .map_err(|e| plan.config.redact(ConnectorError::kafka("creating the dead-letter producer", e)))?;
        Ok(DeadLetterProducer { topic, pending: BTreeMap::new(), producer })
    }

    fn push(&mut self, id: PartitionId, offset: i64, partition: i32, letter: &DeadLetter) {
        self.pending.insert((id, offset), (letter.clone(), partition, false));
    }

    fn first_pending(&self, id: PartitionId) -> Option<i64> {
        self.pending.range((id, i64::MIN)..=(id, i64::MAX)).next().map(|((_, offset), _)| *offset)
    }

    fn is_idle(&self) -> bool {
        self.pending.is_empty()
    }

    /// Takes delivery reports and sends what is not in flight.
    fn serve(&mut self, stats: &KafkaSourceStats) {
        self.producer.poll(Duration::ZERO);
        let delivered = std::mem::take(&mut *self.producer.context().delivered.lock().expect("delivery lock poisoned"));
        for (key, outcome) in delivered {
            match outcome {
                Ok(()) => {
                    self.pending.remove(&key);
                    stats.record_dead_letter_produced();
                }
                Err(error) => {
                    if let Some(entry) = self.pending.get_mut(&key) {
                        entry.2 = false; // sent again below
                    }
                    stats.record_error(format!("dead-letter topic {}: {error}", self.topic));
                }
            }
        }
        for ((id, offset), (letter, partition, in_flight)) in self.pending.iter_mut() {
            if *in_flight {
                continue;
            }
            let (partition_text, offset_text) = (partition.to_string(), offset.to_string());
            let headers = OwnedHeaders::new()
                .insert(Header { key: "tideline.topic", value: Some(letter.source.as_bytes()) })
                .insert(Header { key: "tideline.partition", value: Some(partition_text.as_bytes()) })
                .insert(Header { key: "tideline.offset", value: Some(offset_text.as_bytes()) })
                .insert(Header { key: "tideline.reason", value: Some(letter.reason.as_bytes()) });
            let mut record = BaseRecord::with_opaque_to(&self.topic, Box::new((*id, *offset)))
                .payload(&letter.payload)
                .headers(headers);
            if let Some(key) = &letter.key {
                record = record.key(key);
            }
            match self.producer.send(record) {
                Ok(()) => *in_flight = true,
                Err((error, _)) => {
                    stats.record_error(format!("dead-letter topic {}: {error}", self.topic));
                    break; // the queue is full: later
                }
            }
        }
    }
}

impl Drop for DeadLetterProducer {
    fn drop(&mut self) {
        // Give letters in flight a moment; undelivered ones were never committed past.
        let _ = self.producer.flush(Duration::from_secs(5));
    }
}
