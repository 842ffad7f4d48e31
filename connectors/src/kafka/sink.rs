//! The Kafka sink: a collection's changelog, upserts or append-only rows, produced by an
//! idempotent producer per worker.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use serde::Serialize;
use tideline::differential_dataflow::AsCollection;
use tideline::differential_dataflow::hashable::Hashable;
use tideline::sink::{Durability, Sink, SinkHandle, SinkParallelism, SinkWriter};
use tideline::timely::dataflow::operators::Exchange;
use tideline::{ExchangeData, Time, VecCollection};

use crate::error::ConnectorError;
use crate::kafka::admin::TopicPolicy;
use crate::kafka::config::KafkaConfig;
use crate::kafka::error::is_retryable;
use crate::kafka::plan::fnv1a;

/// What a [`KafkaSink`] produces for each update of its collection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SinkFormat {
    /// One message per changed row: the value is JSON
    /// `{"op":"insert"|"delete","diff":d,"time":t,"row":…}` (`diff` is the signed
    /// multiplicity, `time` the update's event time). Within a time, deletions come first.
    #[default]
    Changelog,
    /// Key → latest value, as a compacted topic and Kafka Streams tables expect: an inserted
    /// row produces its value under its key; a key whose rows are only deleted at a time
    /// produces a tombstone (a null value). Needs a [key](KafkaSinkBuilder::key), and at most
    /// one row per key at a time (a key with two values is an error).
    Upsert,
    /// The value of each inserted row (`n` times for multiplicity `n`); a retraction is an
    /// error: for final results that never change.
    AppendOnly,
}

type KeyFn<D> = Arc<dyn Fn(&D) -> Result<Vec<u8>, String> + Send + Sync>;
type ValueFn<D> = Arc<dyn Fn(&D) -> Result<serde_json::Value, String> + Send + Sync>;

/// Configures a [`KafkaSink`]; `build()` validates the configuration.
pub struct KafkaSinkBuilder<D> {
    config: KafkaConfig,
    topic: String,
    format: SinkFormat,
    key: Option<KeyFn<D>>,
    value: Option<ValueFn<D>>,
    name: Option<String>,
    stats: Option<Arc<KafkaSinkStats>>,
    dead_letter_topic: Option<String>,
    transactional_id: Option<String>,
}

/// Writes a collection to a Kafka topic: a changelog, upserts or append-only rows
/// ([`SinkFormat`]), at least once.
///
/// Every worker writes its share with its own idempotent producer
/// (`enable.idempotence=true`): updates are routed to workers by key, so all updates of a key
/// are written by one producer, in time order, and land in one partition (messages are
/// partitioned by key) in that order. A time's updates are written once the frontier has
/// passed it. The worker never waits for the broker: the producer sends its batches as they
/// fill or linger (`linger.ms`), and the sink follows the acknowledgements. Output before a
/// frontier is reported durable — the point after which sources may commit their input
/// (DESIGN §7) — once the broker has acknowledged every message written before the frontier
/// was reached (librdkafka retries meanwhile, up to `message.timeout.ms`). A delivery that fails for good is not dropped: the sink stops, and its
/// [`SinkHandle`] reports the error, saying whether it is *retryable* (the broker was
/// unreachable or overloaded: run the job again, from the committed offsets) or *fatal*.
///
/// Keys are the [key](KafkaSinkBuilder::key) function's value: a string as its UTF-8 text,
/// anything else as JSON. Values are JSON. Each message's timestamp is the update's event
/// time (librdkafka reads a timestamp of 0 as "none" and stamps such messages with the time
/// they are produced).
///
/// The sink sets, unless configured: `enable.idempotence=true` and a `client.id`.
pub struct KafkaSink<D> {
    inner: Arc<SinkInner<D>>,
}

impl<D> Clone for KafkaSink<D> {
    fn clone(&self) -> Self {
        KafkaSink { inner: Arc::clone(&self.inner) }
    }
}

struct SinkInner<D> {
    config: KafkaConfig,
    topic: String,
    format: SinkFormat,
    key: Option<KeyFn<D>>,
    value: ValueFn<D>,
    name: String,
    stats: Arc<KafkaSinkStats>,
    dead_letter_topic: Option<String>,
    /// Exactly once: the prefix of the workers' `transactional.id`s.
    transactional_id: Option<String>,
}

impl<D> fmt::Debug for KafkaSink<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSink")
            .field("topic", &self.inner.topic)
            .field("format", &self.inner.format)
            .field("config", &self.inner.config)
            .finish()
    }
}

/// Encodes a key: a string as its text, anything else as JSON.
fn encode_key<K: Serialize>(key: &K) -> Result<Vec<u8>, String> {
    match serde_json::to_value(key) {
        Ok(serde_json::Value::String(text)) => Ok(text.into_bytes()),
        Ok(other) => Ok(other.to_string().into_bytes()),
        Err(e) => Err(format!("cannot encode the key: {e}")),
    }
}

impl<D: Serialize + 'static> KafkaSink<D> {
    /// A sink producing to `topic`, in [`SinkFormat::Changelog`] by default.
    pub fn builder(config: KafkaConfig, topic: impl Into<String>) -> KafkaSinkBuilder<D> {
        KafkaSinkBuilder {
            config,
            topic: topic.into(),
            format: SinkFormat::default(),
            key: None,
            value: None,
            name: None,
            stats: None,
            dead_letter_topic: None,
            transactional_id: None,
        }
    }
}

impl<D: 'static> KafkaSinkBuilder<D> {
    /// Sets the format (default [`SinkFormat::Changelog`]).
    pub fn format(mut self, format: SinkFormat) -> Self {
        self.format = format;
        self
    }

    /// The message key of a row: messages are partitioned by it, and [`SinkFormat::Upsert`]
    /// keeps the latest value per key. Without a key, changelog and append-only messages have
    /// none.
    pub fn key<K: Serialize>(mut self, key: impl Fn(&D) -> K + Send + Sync + 'static) -> Self {
        self.key = Some(Arc::new(move |row: &D| encode_key(&key(row))));
        self
    }

    /// The part of a row that is written as the value (default: the whole row).
    pub fn value<V: Serialize>(mut self, value: impl Fn(&D) -> V + Send + Sync + 'static) -> Self {
        self.value = Some(Arc::new(move |row: &D| {
            serde_json::to_value(value(row)).map_err(|e| format!("cannot encode the value: {e}"))
        }));
        self
    }

    /// Names the sink (default: the topic).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Shares the sink's counters; usually one per process. A fresh one otherwise, readable
    /// with [`KafkaSink::stats`].
    pub fn stats(mut self, stats: Arc<KafkaSinkStats>) -> Self {
        self.stats = Some(stats);
        self
    }

    /// Where output records the broker refuses for what they are (too large:
    /// `MessageSizeTooLarge`; an invalid record) go instead of stopping the sink: a message
    /// keyed by the first kilobyte of the record's key, whose JSON value says which sink and
    /// topic, the update's time, the reason and the key's and value's sizes, with the headers
    /// `tideline.sink`, `tideline.topic` and `tideline.reason`. Counted in
    /// [`KafkaSinkStats::dead_letters`]. Without one such a record stops the sink (fatal):
    /// every restart would fail on it again.
    pub fn dead_letter_topic(mut self, topic: impl Into<String>) -> Self {
        self.dead_letter_topic = Some(topic.into());
        self
    }

    /// Exactly once, with checkpoints ([`tideline::checkpoint`]): worker `i` writes through a
    /// transactional producer with `transactional.id` `ID-i`, one transaction per checkpoint
    /// epoch. Its part of a checkpoint flushes the epoch's messages, adds a marker
    /// (`{"epoch", "frontier"}`, keyed by the transactional id) to the compacted topic
    /// `ID.tideline-epochs` and commits — before the part is written, so the checkpoint only
    /// counts once its epochs are committed. Readers with `isolation.level=read_committed`
    /// (librdkafka's default) see each epoch whole or not at all. A restarted worker fences its
    /// previous incarnation and aborts what it left open (`init_transactions`), reads its last
    /// committed marker, and writes again after it — whichever checkpoint is restored (a
    /// round that committed epochs and then failed, or a crash before its manifest, leaves
    /// the markers ahead of the checkpoint: its replay covers them). Use a stable `ID` per pipeline and
    /// sink, and restore with the same number of workers. Output becomes visible per
    /// checkpoint: its latency is the checkpoint interval. Without checkpoints installed the
    /// sink writes nothing visible until its input completes.
    pub fn exactly_once(mut self, transactional_id: impl Into<String>) -> Self {
        self.transactional_id = Some(transactional_id.into());
        self
    }
}

impl<D: Serialize + 'static> KafkaSinkBuilder<D> {
    /// Checks the configuration: a topic, a key for upserts, and every client property
    /// accepted by librdkafka (nothing is connected yet).
    pub fn build(self) -> Result<KafkaSink<D>, ConnectorError> {
        if self.topic.is_empty() {
            return Err(ConnectorError::Config("a Kafka sink needs a topic".into()));
        }
        if self.format == SinkFormat::Upsert && self.key.is_none() {
            return Err(ConnectorError::Config(format!(
                "Kafka sink to {}: the upsert format needs a key (.key(|row| ...))",
                self.topic
            )));
        }
        let name = self.name.unwrap_or_else(|| self.topic.clone());
        let config = self
            .config
            .set_default("enable.idempotence", "true")
            .set_default("client.id", format!("tideline-sink-{name}"));
        config.check_client(true)?;
        let value = self.value.unwrap_or_else(|| {
            Arc::new(|row: &D| serde_json::to_value(row).map_err(|e| format!("cannot encode the row: {e}")))
        });
        Ok(KafkaSink {
            inner: Arc::new(SinkInner {
                config,
                topic: self.topic,
                format: self.format,
                key: self.key,
                value,
                name,
                stats: self.stats.unwrap_or_default(),
                dead_letter_topic: self.dead_letter_topic,
                transactional_id: self.transactional_id,
            }),
        })
    }
}

impl<D: ExchangeData + Serialize> KafkaSink<D> {
    /// Writes `collection` to the topic; progress and errors go to `handle`.
    pub fn write(&self, collection: VecCollection<'_, Time, D>, handle: &SinkHandle) {
        let route = self.inner.key.clone();
        // All updates of a key go to one worker, so that one producer writes them in order.
        let routed = collection
            .inner
            .exchange(move |(row, _, _): &(D, Time, isize)| match &route {
                Some(key) => key(row).map_or(0, |bytes| fnv1a(&bytes)),
                None => row.hashed(),
            })
            .as_collection();
        let inner = Arc::clone(&self.inner);
        routed.sink_with(handle, SinkParallelism::PerWorker, move |index, peers| {
            Some(KafkaWriter::new(inner, index, peers))
        });
    }

    /// The sink's counters.
    pub fn stats(&self) -> &Arc<KafkaSinkStats> {
        &self.inner.stats
    }

    /// The topic written to.
    pub fn topic(&self) -> &str {
        &self.inner.topic
    }

    /// The `cleanup.policy` this sink's topic needs: compacted for upserts, deleting (by
    /// retention) for changelogs and append-only rows.
    pub fn topic_policy(&self) -> TopicPolicy {
        match self.inner.format {
            SinkFormat::Upsert => TopicPolicy::Compact,
            SinkFormat::Changelog | SinkFormat::AppendOnly => TopicPolicy::Delete,
        }
    }

    /// Creates the sink's topic with the [policy](Self::topic_policy) its format needs (and
    /// `partitions` partitions) unless it exists, and fails clearly if it exists with another
    /// policy ([`ensure_topic`](crate::kafka::ensure_topic)). Call it before running the job;
    /// a topic the broker creates on first write gets the broker's defaults instead.
    pub fn ensure_topic(&self, partitions: i32, timeout: Duration) -> Result<bool, ConnectorError> {
        crate::kafka::ensure_topic(&self.inner.config, &self.inner.topic, partitions, self.topic_policy(), timeout)
    }
}

/// A Kafka sink's counters, shared by the workers of a process.
#[derive(Debug, Default)]
pub struct KafkaSinkStats {
    produced: AtomicU64,
    delivered: AtomicU64,
    flushes: AtomicU64,
    dead_letters: AtomicU64,
    errors: Mutex<Vec<DeliveryError>>,
}

/// A message the broker did not take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryError {
    /// Whether running the job again may succeed (brokers unreachable, timeouts, leadership
    /// moving) or not (authorization, message too large, a fatal producer error).
    pub retryable: bool,
    /// What happened.
    pub message: String,
}

impl KafkaSinkStats {
    /// Zeroed counters.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Messages handed to the producers.
    pub fn produced(&self) -> u64 {
        self.produced.load(Ordering::Relaxed)
    }

    /// Messages the brokers acknowledged.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Durability points reached: frontiers before which every message was acknowledged.
    pub fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }

    /// Output records the broker refused that went to the dead-letter topic.
    pub fn dead_letters(&self) -> u64 {
        self.dead_letters.load(Ordering::Relaxed)
    }

    /// Deliveries that failed for good.
    pub fn delivery_errors(&self) -> Vec<DeliveryError> {
        self.errors.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

struct SinkContext {
    stats: Arc<KafkaSinkStats>,
    deliveries: Mutex<Deliveries>,
}

/// What the delivery reports said, between two looks of the writer.
#[derive(Default)]
struct Deliveries {
    /// Sequence numbers of the messages produced and not yet acknowledged.
    in_flight: BTreeSet<u64>,
    /// Dead letters produced and not yet acknowledged.
    dead_in_flight: u64,
    failures: Vec<Failure>,
}

/// A message that was not delivered: the error, and what a dead letter says of the record.
struct Failure {
    error: KafkaError,
    key: Option<Vec<u8>>,
    key_bytes: usize,
    value_bytes: usize,
    timestamp: Option<i64>,
}

impl Failure {
    /// A failed delivery of a message that is not an output record (a dead letter, an epoch
    /// marker): nothing of it to set aside.
    fn unkeyed(error: &KafkaError) -> Self {
        Failure { error: error.clone(), key: None, key_bytes: 0, value_bytes: 0, timestamp: None }
    }
}

/// The opaque of a dead letter's delivery report (output messages carry their sequence).
const DEAD_LETTER: usize = usize::MAX;
/// The opaque of an epoch marker's delivery report.
const EPOCH_MARKER: usize = usize::MAX - 1;
/// How much of a refused record's key a dead letter keeps.
const KEY_PREFIX: usize = 1024;

/// Errors that say the broker will never take this record (not the brokers' state).
fn refused_record(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidMessageSize
        )
    )
}

impl ClientContext for SinkContext {}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, sequence: usize) {
        use rdkafka::Message;
        let mut deliveries = self.deliveries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if sequence == DEAD_LETTER {
            deliveries.dead_in_flight = deliveries.dead_in_flight.saturating_sub(1);
            match result {
                Ok(_) => {
                    self.stats.dead_letters.fetch_add(1, Ordering::Relaxed);
                }
                Err((error, _)) => deliveries.failures.push(Failure::unkeyed(error)),
            }
            return;
        }
        if sequence == EPOCH_MARKER {
            if let Err((error, _)) = result {
                deliveries.failures.push(Failure::unkeyed(error));
            }
            return;
        }
        deliveries.in_flight.remove(&(sequence as u64));
        match result {
            Ok(_) => {
                self.stats.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((error, message)) => {
                let key = message.key().map(|k| k[..k.len().min(KEY_PREFIX)].to_vec());
                deliveries.failures.push(Failure {
                    error: error.clone(),
                    key,
                    key_bytes: message.key_len(),
                    value_bytes: message.payload_len(),
                    timestamp: message.timestamp().to_millis(),
                });
            }
        }
    }
}

/// One worker's producer.
struct KafkaWriter<D> {
    inner: Arc<SinkInner<D>>,
    producer: Result<BaseProducer<SinkContext>, String>,
    /// The sequence number of the next message produced.
    next: u64,
    /// `(frontier, messages produced before it)` for every frontier given to `advance` and not
    /// yet durable, oldest first.
    marks: VecDeque<(Option<Time>, u64)>,
    /// Everything before this time is acknowledged.
    durable: Time,
    /// Exactly once: the transaction's bookkeeping.
    transaction: Option<Transaction>,
}

/// A transactional writer's epochs (see [`KafkaSinkBuilder::exactly_once`]).
#[derive(Debug)]
struct Transaction {
    /// This worker's `transactional.id`.
    id: String,
    /// The number of workers (a restore needs the same: updates are routed to workers by key).
    peers: usize,
    /// The topic of epoch markers.
    markers: String,
    /// The last frontier given to `advance`.
    advanced: Option<Option<Time>>,
    /// The last committed epoch and its frontier (everything before it is visible).
    committed: (Option<u64>, Option<Time>),
}

/// A transactional writer's part of a checkpoint.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct EpochState {
    peers: usize,
    epoch: u64,
    frontier: Option<Time>,
}

/// An epoch marker, as written to the marker topic.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct EpochMarker {
    epoch: u64,
    frontier: Option<Time>,
}

/// How long a transactional call may take.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(60);

/// A message to produce.
#[derive(Debug)]
struct Outgoing {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
}

impl<D: ExchangeData + Serialize> KafkaWriter<D> {
    fn new(inner: Arc<SinkInner<D>>, index: usize, peers: usize) -> Self {
        let context = SinkContext { stats: Arc::clone(&inner.stats), deliveries: Mutex::default() };
        let mut config = inner
            .config
            .clone()
            .set("client.id", format!("{}-{index}", inner.config.get("client.id").unwrap_or("tideline-sink")));
        let transaction = inner.transactional_id.as_ref().map(|prefix| Transaction {
            id: format!("{prefix}-{index}"),
            peers,
            markers: format!("{prefix}.tideline-epochs"),
            advanced: None,
            committed: (None, Some(0)),
        });
        if let Some(t) = &transaction {
            config = config.set("transactional.id", &t.id);
        }
        let producer = config
            .client_config()
            .create_with_context(context)
            .map_err(|e| inner.config.redact(ConnectorError::kafka("creating the producer", e)).to_string())
            .and_then(|producer: BaseProducer<SinkContext>| {
                let Some(t) = &transaction else { return Ok(producer) };
                // The marker topic, compacted: one marker per worker is all a restart reads.
                crate::kafka::admin::ensure_topic(
                    &inner.config,
                    &t.markers,
                    1,
                    TopicPolicy::Compact,
                    TRANSACTION_TIMEOUT,
                )
                .map_err(|e| e.to_string())?;
                // Fences a previous incarnation of this worker and aborts what it left open.
                producer
                    .init_transactions(TRANSACTION_TIMEOUT)
                    .map_err(|e| format!("starting transactions as {}: {e}", t.id))?;
                producer.begin_transaction().map_err(|e| format!("beginning a transaction as {}: {e}", t.id))?;
                Ok(producer)
            });
        KafkaWriter { inner, producer, next: 0, marks: VecDeque::new(), durable: 0, transaction }
    }

    /// Flushes what was produced and waits for its acknowledgements (dead letters included).
    fn flush_all(&mut self, why: &str) -> tideline::Result<()> {
        for _ in 0..2 {
            let producer = self.producer()?;
            producer
                .flush(TRANSACTION_TIMEOUT)
                .map_err(|e| self.error(format_args!("flushing {} {why}: {e}", self.inner.topic)))?;
            // Refused records become dead letters here, which the second flush waits for.
            self.check_deliveries()?;
        }
        Ok(())
    }

    /// Adds the marker of `epoch` (covering output before `frontier`) to the open transaction.
    fn mark_epoch(&mut self, epoch: u64, frontier: Option<Time>) -> tideline::Result<()> {
        let t = self.transaction.as_ref().expect("transactional");
        let value = serde_json::to_vec(&EpochMarker { epoch, frontier }).map_err(|e| self.error(e))?;
        let (markers, id) = (t.markers.clone(), t.id.clone());
        let producer = self.producer()?;
        producer
            .send(BaseRecord::with_opaque_to(&markers, EPOCH_MARKER).key(&id).payload(&value))
            .map_err(|(e, _)| self.error(format_args!("writing the epoch marker to {markers}: {e}")))?;
        self.flush_all("for a checkpoint")
    }

    /// Commits the open transaction and begins the next.
    fn commit(&mut self) -> tideline::Result<()> {
        let producer = self.producer()?;
        let id = self.transaction.as_ref().expect("transactional").id.clone();
        producer
            .commit_transaction(TRANSACTION_TIMEOUT)
            .map_err(|e| self.error(format_args!("committing the transaction of {id}: {e}")))?;
        producer.begin_transaction().map_err(|e| self.error(format_args!("beginning a transaction as {id}: {e}")))
    }

    /// The last epoch marker of this worker that committed, read with `read_committed`.
    fn last_committed_marker(&self) -> tideline::Result<Option<EpochMarker>> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::{Message, Offset, TopicPartitionList};
        let t = self.transaction.as_ref().expect("transactional");
        let consumer: BaseConsumer = self
            .inner
            .config
            .clone()
            .set("group.id", format!("{}-restore", t.id))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("isolation.level", "read_committed")
            .client_config()
            .create()
            .map_err(|e| self.error(format_args!("reading {}: {e}", t.markers)))?;
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(&t.markers, 0, Offset::Beginning)
            .map_err(|e| self.error(format_args!("reading {}: {e}", t.markers)))?;
        consumer.assign(&assignment).map_err(|e| self.error(format_args!("reading {}: {e}", t.markers)))?;
        drop(assignment);
        let deadline = std::time::Instant::now() + TRANSACTION_TIMEOUT;
        let mut last = None;
        loop {
            if std::time::Instant::now() > deadline {
                return Err(self.error(format_args!("reading {}: timed out", t.markers)));
            }
            match consumer.poll(Duration::from_millis(100)) {
                None => continue,
                Some(Err(KafkaError::PartitionEOF(_))) => break,
                Some(Err(e)) => return Err(self.error(format_args!("reading {}: {e}", t.markers))),
                Some(Ok(message)) => {
                    if message.key() == Some(t.id.as_bytes())
                        && let Some(payload) = message.payload()
                    {
                        last = serde_json::from_slice::<EpochMarker>(payload).ok();
                    }
                }
            }
        }
        Ok(last)
    }

    fn error(&self, message: impl fmt::Display) -> tideline::Error {
        tideline::Error::connector("kafka", false, format!("sink {}: {message}", self.inner.name))
    }

    fn key(&self, row: &D) -> tideline::Result<Option<Vec<u8>>> {
        match &self.inner.key {
            Some(key) => key(row).map(Some).map_err(|e| self.error(e)),
            None => Ok(None),
        }
    }

    fn value(&self, row: &D) -> tideline::Result<serde_json::Value> {
        (self.inner.value)(row).map_err(|e| self.error(e))
    }

    /// The messages for one time's consolidated updates.
    fn messages(&self, time: Time, updates: &[(D, isize)]) -> tideline::Result<Vec<Outgoing>> {
        let mut out = Vec::new();
        match self.inner.format {
            SinkFormat::Changelog => {
                let ordered = updates.iter().filter(|(_, r)| *r < 0).chain(updates.iter().filter(|(_, r)| *r > 0));
                for (row, diff) in ordered {
                    let op = if *diff > 0 { "insert" } else { "delete" };
                    let value = serde_json::json!({ "op": op, "diff": diff, "time": time, "row": self.value(row)? });
                    out.push(Outgoing { key: self.key(row)?, value: Some(value.to_string().into_bytes()) });
                }
            }
            SinkFormat::AppendOnly => {
                for (row, diff) in updates {
                    if *diff < 0 {
                        return Err(self.error(format_args!(
                            "received a retraction of {row:?} at time {time}: the collection is not append-only \
                             (late corrections or updates retract results); use the changelog or upsert format"
                        )));
                    }
                    let value = self.value(row)?.to_string().into_bytes();
                    let key = self.key(row)?;
                    for _ in 0..*diff {
                        out.push(Outgoing { key: key.clone(), value: Some(value.clone()) });
                    }
                }
            }
            SinkFormat::Upsert => {
                // Per key: the inserted row, if any (else a tombstone).
                let mut latest: BTreeMap<Vec<u8>, Option<&D>> = BTreeMap::new();
                for (row, diff) in updates {
                    let key = self.key(row)?.expect("upserts have a key");
                    let entry = latest.entry(key).or_insert(None);
                    if *diff > 0 {
                        if *diff > 1 || entry.is_some() {
                            return Err(self.error(format_args!(
                                "key {:?} has more than one row at time {time} (e.g. {row:?}): an upsert sink \
                                 needs at most one row per key",
                                String::from_utf8_lossy(&self.key(row)?.unwrap_or_default())
                            )));
                        }
                        *entry = Some(row);
                    }
                }
                for (key, row) in latest {
                    let value = match row {
                        Some(row) => Some(self.value(row)?.to_string().into_bytes()),
                        None => None,
                    };
                    out.push(Outgoing { key: Some(key), value });
                }
            }
        }
        Ok(out)
    }

    fn producer(&self) -> tideline::Result<&BaseProducer<SinkContext>> {
        self.producer.as_ref().map_err(|e| self.error(e))
    }

    /// Sends a record the broker refused to the dead-letter topic; `false` without one.
    fn dead_letter(&self, failure: &Failure) -> tideline::Result<bool> {
        let Some(topic) = &self.inner.dead_letter_topic else { return Ok(false) };
        let producer = self.producer()?;
        let reason = failure.error.to_string();
        let value = serde_json::json!({
            "sink": self.inner.name,
            "topic": self.inner.topic,
            "time": failure.timestamp,
            "reason": reason,
            "key_bytes": failure.key_bytes,
            "value_bytes": failure.value_bytes,
        })
        .to_string();
        let headers = OwnedHeaders::new()
            .insert(Header { key: "tideline.sink", value: Some(self.inner.name.as_bytes()) })
            .insert(Header { key: "tideline.topic", value: Some(self.inner.topic.as_bytes()) })
            .insert(Header { key: "tideline.reason", value: Some(reason.as_bytes()) });
        let mut record = BaseRecord::with_opaque_to(topic, DEAD_LETTER).payload(&value).headers(headers);
        if let Some(key) = &failure.key {
            record = record.key(key);
        }
        producer.context().deliveries.lock().unwrap_or_else(|e| e.into_inner()).dead_in_flight += 1;
        if let Err((error, _)) = producer.send(record) {
            producer.context().deliveries.lock().unwrap_or_else(|e| e.into_inner()).dead_in_flight -= 1;
            return Err(self.error(format_args!("cannot produce a dead letter to {topic}: {error}")));
        }
        let count = self.inner.stats.dead_letters() + 1;
        if count == 1 || count.is_power_of_two() {
            // Rate-limited: the first, then at every doubling.
            tracing::warn!(sink = %self.inner.name, topic = %self.inner.topic, dead_letter_topic = %topic, count, %reason, "output record refused by the broker; sent to the dead-letter topic");
        }
        Ok(true)
    }

    /// The first delivery that failed for good, as the sink's error. Records the broker
    /// refuses for what they are go to the dead-letter topic instead, if there is one.
    fn check_deliveries(&self) -> tideline::Result<()> {
        let producer = self.producer()?;
        let mut failures =
            std::mem::take(&mut producer.context().deliveries.lock().unwrap_or_else(|e| e.into_inner()).failures);
        let mut kept = Vec::new();
        for failure in failures.drain(..) {
            if !(refused_record(&failure.error)
                && failure.key_bytes + failure.value_bytes > 0
                && self.dead_letter(&failure)?)
            {
                kept.push(failure.error);
            }
        }
        let failures = kept;
        let Some(first) = failures.first() else { return Ok(()) };
        let errors: Vec<DeliveryError> = failures
            .iter()
            .map(|e| DeliveryError {
                retryable: is_retryable(e),
                message: format!("delivery to {} failed: {e}", self.inner.topic),
            })
            .collect();
        let retryable = errors.iter().all(|e| e.retryable);
        self.inner.stats.errors.lock().unwrap_or_else(|e| e.into_inner()).extend(errors);
        Err(self.error(format_args!(
            "{} message(s) not delivered to {} ({}): {first}",
            failures.len(),
            self.inner.topic,
            if retryable {
                "retryable: the brokers were unreachable or busy; run the job again, from the committed offsets"
            } else if refused_record(first) {
                "fatal: the broker refuses the record itself; give the sink a dead_letter_topic to set such records aside"
            } else {
                "fatal"
            }
        )))
    }
}

impl<D: ExchangeData + Serialize> SinkWriter<D> for KafkaWriter<D> {
    fn write(&mut self, time: Time, updates: &[(D, isize)]) -> tideline::Result<()> {
        let messages = self.messages(time, updates)?;
        let producer = self.producer()?;
        let timestamp = i64::try_from(time).ok();
        let mut next = self.next;
        for message in &messages {
            let mut record = BaseRecord::with_opaque_to(&self.inner.topic, next as usize);
            if let Some(key) = &message.key {
                record = record.key(key);
            }
            if let Some(value) = &message.value {
                record = record.payload(value);
            }
            if let Some(timestamp) = timestamp {
                record = record.timestamp(timestamp);
            }
            // Registered before it is sent: its delivery report may come at the next poll.
            producer.context().deliveries.lock().unwrap_or_else(|e| e.into_inner()).in_flight.insert(next);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        // The local queue is full: wait for deliveries (backpressure).
                        record = back;
                        producer.poll(Duration::from_millis(10));
                        self.check_deliveries()?;
                    }
                    Err((error, _)) => {
                        producer.context().deliveries.lock().unwrap_or_else(|e| e.into_inner()).in_flight.remove(&next);
                        let failure = Failure {
                            key: message.key.as_ref().map(|k| k[..k.len().min(KEY_PREFIX)].to_vec()),
                            key_bytes: message.key.as_ref().map_or(0, Vec::len),
                            value_bytes: message.value.as_ref().map_or(0, Vec::len),
                            timestamp,
                            error,
                        };
                        if refused_record(&failure.error) && self.dead_letter(&failure)? {
                            break;
                        }
                        let error = failure.error;
                        let retryable = is_retryable(&error);
                        return Err(self.error(format_args!(
                            "cannot produce to {} ({}): {error}",
                            self.inner.topic,
                            if retryable { "retryable" } else { "fatal" }
                        )));
                    }
                }
            }
            next += 1;
        }
        producer.poll(Duration::ZERO);
        self.next = next;
        self.inner.stats.produced.fetch_add(messages.len() as u64, Ordering::Relaxed);
        self.check_deliveries()
    }

    /// Starts no flush of its own: the producer sends its batches as they fill or linger
    /// (`linger.ms`), and [`durable`](SinkWriter::durable) follows the acknowledgements. The
    /// worker never waits for the broker here.
    fn advance(&mut self, frontier: Option<Time>) -> tideline::Result<()> {
        match self.marks.back_mut() {
            // Nothing produced since the last mark: the newer frontier replaces it.
            Some(last) if last.1 == self.next => last.0 = frontier,
            _ => self.marks.push_back((frontier, self.next)),
        }
        if let Some(t) = self.transaction.as_mut() {
            t.advanced = Some(frontier);
            if frontier.is_none() && t.committed.1.is_some() {
                // The input is complete: the last epoch commits now.
                let epoch = t.committed.0.map_or(0, |e| e) + 1;
                self.mark_epoch(epoch, None)?;
                self.commit()?;
                self.transaction.as_mut().expect("transactional").committed = (Some(epoch), None);
            }
        }
        Ok(())
    }

    fn durable(&mut self) -> tideline::Result<Durability> {
        if let Some(t) = &self.transaction {
            // Exactly once: output counts once its transaction has committed.
            return Ok(match t.committed.1 {
                None => Durability::Flushed,
                Some(frontier) => Durability::Behind(frontier),
            });
        }
        let producer = self.producer()?;
        producer.poll(Duration::ZERO);
        self.check_deliveries()?;
        let producer = self.producer()?;
        let (oldest, dead_in_flight) = {
            let deliveries = producer.context().deliveries.lock().unwrap_or_else(|e| e.into_inner());
            (deliveries.in_flight.first().copied(), deliveries.dead_in_flight)
        };
        if dead_in_flight > 0 {
            // A refused record is accounted for once its dead letter is acknowledged.
            return Ok(Durability::Behind(self.durable));
        }
        let acknowledged = oldest.unwrap_or(self.next);
        while let Some(&(frontier, before)) = self.marks.front() {
            if before > acknowledged {
                break;
            }
            self.marks.pop_front();
            self.inner.stats.flushes.fetch_add(1, Ordering::Relaxed);
            match frontier {
                Some(time) => self.durable = self.durable.max(time),
                None => self.durable = Time::MAX,
            }
        }
        Ok(if self.marks.is_empty() { Durability::Flushed } else { Durability::Behind(self.durable) })
    }

    /// Waits until everything produced is acknowledged (dead letters included): a restored
    /// run sends only what comes after the frontier written, so the records before it must be
    /// in the topic. Nothing else to keep: at least once, a restored run may send again what
    /// the crashed run sent after the checkpoint (never a different value for a result: the
    /// restored state is the state).
    fn checkpoint(&mut self, id: u64) -> tideline::Result<Vec<u8>> {
        if let Some(t) = &self.transaction {
            // Closes the epoch: its messages flushed, its marker in the transaction, committed.
            let advanced = t.advanced.ok_or_else(|| self.error("a checkpoint before the writer started"))?;
            // A restored writer's output is committed up to where it resumed, even while the
            // restored run's frontier is still behind it.
            let frontier = match (advanced, t.committed.1) {
                (None, _) | (_, None) => None,
                (Some(a), Some(b)) => Some(a.max(b)),
            };
            let peers = t.peers;
            // The epoch commits now, before this part is written: a transaction left open
            // until the checkpoint completes would take in the output written meanwhile (its
            // producer has one transaction at a time), and after a crash it could not be
            // committed by the restarted process (librdkafka cannot resume another instance's
            // transaction). The marker committed with it says how far the output goes; a
            // restore resumes after the last committed marker, whichever checkpoint it
            // restores (its replay covers the output from that checkpoint on).
            self.mark_epoch(id, frontier)?;
            tideline::checkpoint::fault_point("kafka-commit");
            self.commit()?;
            tideline::checkpoint::fault_point("kafka-committed");
            self.transaction.as_mut().expect("transactional").committed = (Some(id), frontier);
            let state = EpochState { peers, epoch: id, frontier };
            return serde_json::to_vec(&state).map_err(|e| self.error(e));
        }
        for _ in 0..2 {
            let producer = self.producer()?;
            producer
                .flush(Duration::from_secs(30))
                .map_err(|e| self.error(format_args!("flushing {} for a checkpoint: {e}", self.inner.topic)))?;
            // Refused records become dead letters here, which the second flush waits for.
            self.check_deliveries()?;
        }
        match self.durable()? {
            Durability::Flushed => Ok(Vec::new()),
            Durability::Behind(_) => {
                Err(self.error("acknowledgements still outstanding after flushing for a checkpoint"))
            }
        }
    }

    fn restore(&mut self, state: &[u8], written: Option<Time>) -> tideline::Result<Option<Time>> {
        if self.transaction.is_none() {
            return Ok(written);
        }
        let state: EpochState = serde_json::from_slice(state).map_err(|e| self.error(e))?;
        let peers = self.transaction.as_ref().expect("transactional").peers;
        if state.peers != peers {
            return Err(self.error(format_args!(
                "an exactly-once sink resumes with the number of workers it was checkpointed with ({}, not {peers}): \
                 updates are routed to workers by key, and each worker's transactions continue its own",
                state.peers
            )));
        }
        let marker = self.last_committed_marker()?;
        let id = self.transaction.as_ref().expect("transactional").id.clone();
        // The checkpoint's epoch committed before its part was written; later epochs may have
        // committed too (rounds that did not complete, or completed after this checkpoint was
        // the newest intact one): resume after the last.
        let (epoch, resume) = match marker {
            Some(marker) if marker.epoch >= state.epoch => (Some(marker.epoch), marker.frontier),
            last => {
                return Err(self.error(format_args!(
                    "{id}: the last committed epoch is {:?}, but the checkpoint's epoch {} committed before it was \
                     taken: the marker topic or the checkpoint belongs to another run",
                    last.map(|m| m.epoch),
                    state.epoch
                )));
            }
        };
        tracing::info!(sink = %self.inner.name, transactional_id = %id, epoch = ?epoch, resume = ?resume, "exactly-once sink resumes after its last committed epoch");
        self.transaction.as_mut().expect("transactional").committed = (epoch, resume);
        Ok(resume)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize)]
    struct Row {
        key: String,
        count: i64,
    }

    fn writer(format: SinkFormat) -> KafkaWriter<Row> {
        let sink = KafkaSink::<Row>::builder(KafkaConfig::new("127.0.0.1:1"), "out")
            .format(format)
            .key(|r: &Row| r.key.clone())
            .value(|r: &Row| r.count)
            .build()
            .unwrap();
        KafkaWriter {
            inner: sink.inner,
            producer: Err("not connected".into()),
            next: 0,
            marks: VecDeque::new(),
            durable: 0,
            transaction: None,
        }
    }

    fn row(key: &str, count: i64) -> Row {
        Row { key: key.into(), count }
    }

    fn text(messages: &[Outgoing]) -> Vec<(String, Option<String>)> {
        messages
            .iter()
            .map(|m| {
                (
                    String::from_utf8(m.key.clone().unwrap()).unwrap(),
                    m.value.as_ref().map(|v| String::from_utf8(v.clone()).unwrap()),
                )
            })
            .collect()
    }

    #[test]
    fn changelog_messages_carry_op_diff_and_time_deletions_first() {
        let w = writer(SinkFormat::Changelog);
        let messages = w.messages(99, &[(row("a", 1), -1), (row("a", 2), 1), (row("b", 5), 2)]).unwrap();
        assert_eq!(
            text(&messages),
            [
                ("a".into(), Some(r#"{"diff":-1,"op":"delete","row":1,"time":99}"#.into())),
                ("a".into(), Some(r#"{"diff":1,"op":"insert","row":2,"time":99}"#.into())),
                ("b".into(), Some(r#"{"diff":2,"op":"insert","row":5,"time":99}"#.into())),
            ]
        );
    }

    #[test]
    fn upserts_keep_the_new_value_and_tombstone_deleted_keys() {
        let w = writer(SinkFormat::Upsert);
        let messages = w.messages(7, &[(row("a", 1), -1), (row("a", 2), 1), (row("b", 5), -1)]).unwrap();
        assert_eq!(text(&messages), [("a".into(), Some("2".into())), ("b".into(), None)]);
        let error = w.messages(7, &[(row("a", 1), 1), (row("a", 2), 1)]).unwrap_err();
        assert!(error.to_string().contains("more than one row"), "{error}");
    }

    #[test]
    fn append_only_rejects_retractions_clearly() {
        let w = writer(SinkFormat::AppendOnly);
        assert_eq!(w.messages(1, &[(row("a", 1), 2)]).unwrap().len(), 2);
        let error = w.messages(1, &[(row("a", 1), -1)]).unwrap_err();
        assert!(error.to_string().contains("not append-only"), "{error}");
    }

    #[test]
    fn keys_are_text_for_strings_and_json_otherwise() {
        assert_eq!(encode_key(&"sensor-1").unwrap(), b"sensor-1");
        assert_eq!(encode_key(&42).unwrap(), b"42");
        assert_eq!(encode_key(&("a", 1)).unwrap(), br#"["a",1]"#);
    }

    #[test]
    fn upserts_need_a_key() {
        let error = KafkaSink::<Row>::builder(KafkaConfig::new("127.0.0.1:1"), "out")
            .format(SinkFormat::Upsert)
            .build()
            .unwrap_err();
        assert!(error.to_string().contains("needs a key"), "{error}");
    }
}
