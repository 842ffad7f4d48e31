//! The Kafka source: partitioned, watermarked per partition, at-least-once.

use std::collections::BTreeSet;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::de::DeserializeOwned;
use tideline::source::{SourceConfig, SourceStreams, source};
use tideline::time::watermark::PartitionId;
use tideline::timely::dataflow::Scope;
use tideline::{EventTime, Time};

use crate::error::ConnectorError;
use crate::kafka::config::KafkaConfig;
use crate::kafka::decode::{Decoder, KafkaMessage, Keyed, RawMessage};
use crate::kafka::plan::{EventTimeFrom, Inner, Plan, StartOffsets, Stop, partition_id};
use crate::kafka::reader::KafkaReader;
use crate::kafka::stats::KafkaSourceStats;

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
/// to the `dead_letters` collection as a [`DeadLetter`](tideline::time::late::DeadLetter) with the topic, the partition id, the
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
/// done (its watermark goes to the end of time). A topic that is not found within the
/// [request timeout](KafkaSourceBuilder::request_timeout) stops the reader with an error
/// naming it, instead of the read finishing empty. Otherwise (unbounded) the source never
/// finishes: a worker with nothing to read waits, and a missing topic is waited for.
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
/// `auto.offset.reset=earliest`, `queued.max.messages.kbytes=16384`, `queued.min.messages=20000`,
/// `fetch.queue.backoff.ms=10`, `fetch.wait.max.ms=50`, `statistics.interval.ms=1000` (the
/// log end offsets of [`KafkaSourceStats::consumer_lag`]), and a `client.id`. It
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
            poll_interval: Duration::from_millis(100),
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
    /// 100 ms). Messages arriving wake it earlier: the consumer's queue becoming non-empty
    /// schedules the worker at once, so this only paces the reader's housekeeping (commits,
    /// new partitions) while no data comes.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// How long metadata and offset look-ups may take before they are retried (default 10 s).
    /// Also how long a bounded read waits for its topics to exist, and how long a stopping
    /// source waits for a commit in flight and for its consumer to close.
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
            .set_default("queued.min.messages", "20000")
            .set_default("fetch.queue.backoff.ms", "10")
            .set_default("fetch.wait.max.ms", "50")
            .set_default("statistics.interval.ms", "1000")
            .set_default("client.id", format!("tideline-{name}"));
        // librdkafka assigns partitions through its group handle, so its consumers need a group
        // id even when nothing is committed: one of their own then.
        config = config.set("group.id", group_id.clone().unwrap_or_else(|| format!("tideline-{name}-uncommitted")));
        config.check_client(false)?;
        if self.dead_letter_topic.is_some() {
            config.check_client(true)?;
        }
        let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let host = std::env::var("HOSTNAME").unwrap_or_default();
        let plan = Plan {
            run: format!("{host}:{}:{}", std::process::id(), started.as_nanos()),
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
        let stats: Arc<KafkaSourceStats> = self.stats.unwrap_or_default();
        // Lag and committed offsets per partition on the metrics endpoint, while the source
        // lives (registered weakly).
        tideline::runtime::metrics::register_consumer_offsets(&stats);
        Ok(KafkaSource {
            inner: Arc::new(Inner {
                plan: Arc::new(plan),
                decoder: self.decoder,
                event_time: self.event_time,
                stats,
                stop: Stop::default(),
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
        source(scope, config, move |setup| {
            KafkaReader::new(inner, setup.index(), setup.peers(), setup.sync_activator())
        })
    }
}

impl<D> KafkaSource<D> {
    /// Stops this process's readers gracefully (e.g. on SIGTERM): they read no more, and once
    /// the sinks have durably written what follows from what was read and the offsets that
    /// are safe are committed, [`is_stopped`](Self::is_stopped) says so. The dataflow itself
    /// is not completed — open windows are *not* emitted as if the input had ended; a restart
    /// from the committed offsets reads their records again — so the program then exits (or
    /// drops the dataflow).
    pub fn stop(&self) {
        self.inner.stop.requested.store(true, Ordering::SeqCst);
    }

    /// Whether every reader of this process has stopped after [`stop`](Self::stop): nothing
    /// more is read, every sink acknowledged what it was given, and every safe offset is
    /// committed (or a reader gave up on a commit after its request timeout, reported in the
    /// stats' errors).
    pub fn is_stopped(&self) -> bool {
        let stop = &self.inner.stop;
        stop.requested.load(Ordering::SeqCst)
            && stop.stopped.load(Ordering::SeqCst) >= stop.readers.load(Ordering::SeqCst)
    }

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
