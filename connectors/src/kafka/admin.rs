//! Small blocking administration helpers: creating topics (for programs and tests that set
//! up their own topics).

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use crate::error::ConnectorError;
use crate::kafka::config::KafkaConfig;

/// Creates `topic` with `partitions` partitions (and the broker's default replication) unless
/// it exists. Returns whether it was created. Blocks until the broker answers or `timeout`.
///
/// ```no_run
/// use std::time::Duration;
/// use tideline_connectors::kafka::{KafkaConfig, create_topic};
///
/// let config = KafkaConfig::new("localhost:9092");
/// create_topic(&config, "readings", 4, Duration::from_secs(30))?;
/// # Ok::<(), tideline_connectors::ConnectorError>(())
/// ```
pub fn create_topic(
    config: &KafkaConfig,
    topic: &str,
    partitions: i32,
    timeout: Duration,
) -> Result<bool, ConnectorError> {
    if partitions < 1 {
        return Err(ConnectorError::Config(format!("topic {topic}: at least one partition, not {partitions}")));
    }
    config.validate()?;
    let admin: AdminClient<DefaultClientContext> = config
        .client_config()
        .create()
        .map_err(|e| config.redact(ConnectorError::kafka("creating an admin client", e)))?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(-1));
    let options = AdminOptions::new().operation_timeout(Some(timeout)).request_timeout(Some(timeout));
    let results = block_on(admin.create_topics([&new], &options))
        .map_err(|e| config.redact(ConnectorError::kafka(format!("creating topic {topic}"), e)))?;
    match results.into_iter().next() {
        Some(Ok(_)) => Ok(true),
        Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => Ok(false),
        Some(Err((_, code))) => {
            Err(ConnectorError::kafka(format!("creating topic {topic}"), rdkafka::error::KafkaError::AdminOp(code)))
        }
        None => Err(ConnectorError::Config(format!("creating topic {topic}: the broker did not answer"))),
    }
}

/// How a topic keeps its messages (`cleanup.policy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopicPolicy {
    /// `cleanup.policy=compact`: the latest value per key, kept forever (upsert sinks, tables).
    Compact,
    /// `cleanup.policy=delete`: every message, kept for the topic's retention (changelogs,
    /// append-only rows, late records, dead letters). Topics created here are also given
    /// `message.timestamp.type=LogAppendTime`: the sinks stamp messages with event times,
    /// which may lie far in the past, and time-based retention would otherwise delete a
    /// topic of historical results within minutes of writing it.
    Delete,
}

impl TopicPolicy {
    fn cleanup_policy(self) -> &'static str {
        match self {
            TopicPolicy::Compact => "compact",
            TopicPolicy::Delete => "delete",
        }
    }
}

/// Makes sure `topic` exists with `policy`: creates it (with `partitions` partitions) if it
/// does not exist, and fails clearly if it exists with another `cleanup.policy` — an upsert
/// sink writing to a topic that deletes by time loses its table; a changelog written to a
/// compacted topic loses its history. Returns whether it was created. Blocks until the broker
/// answers or `timeout`.
///
/// ```no_run
/// use std::time::Duration;
/// use tideline_connectors::kafka::{KafkaConfig, TopicPolicy, ensure_topic};
///
/// let config = KafkaConfig::new("localhost:9092");
/// ensure_topic(&config, "window-stats", 4, TopicPolicy::Compact, Duration::from_secs(30))?;
/// # Ok::<(), tideline_connectors::ConnectorError>(())
/// ```
pub fn ensure_topic(
    config: &KafkaConfig,
    topic: &str,
    partitions: i32,
    policy: TopicPolicy,
    timeout: Duration,
) -> Result<bool, ConnectorError> {
    if partitions < 1 {
        return Err(ConnectorError::Config(format!("topic {topic}: at least one partition, not {partitions}")));
    }
    config.validate()?;
    let admin: AdminClient<DefaultClientContext> = config
        .client_config()
        .create()
        .map_err(|e| config.redact(ConnectorError::kafka("creating an admin client", e)))?;
    let mut new =
        NewTopic::new(topic, partitions, TopicReplication::Fixed(-1)).set("cleanup.policy", policy.cleanup_policy());
    if policy == TopicPolicy::Delete {
        new = new.set("message.timestamp.type", "LogAppendTime");
    }
    let options = AdminOptions::new().operation_timeout(Some(timeout)).request_timeout(Some(timeout));
    let results = block_on(admin.create_topics([&new], &options))
        .map_err(|e| config.redact(ConnectorError::kafka(format!("creating topic {topic}"), e)))?;
    match results.into_iter().next() {
        Some(Ok(_)) => return Ok(true),
        Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => {}
        Some(Err((_, code))) => {
            return Err(ConnectorError::kafka(
                format!("creating topic {topic}"),
                rdkafka::error::KafkaError::AdminOp(code),
            ));
        }
        None => return Err(ConnectorError::Config(format!("creating topic {topic}: the broker did not answer"))),
    }
    let described = block_on(admin.describe_configs([&ResourceSpecifier::Topic(topic)], &options))
        .map_err(|e| config.redact(ConnectorError::kafka(format!("describing topic {topic}"), e)))?;
    let found = match described.into_iter().next() {
        Some(Ok(resource)) => resource.get("cleanup.policy").and_then(|e| e.value.clone()).unwrap_or_default(),
        Some(Err(code)) => {
            return Err(ConnectorError::kafka(
                format!("describing topic {topic}"),
                rdkafka::error::KafkaError::AdminOp(code),
            ));
        }
        None => return Err(ConnectorError::Config(format!("describing topic {topic}: the broker did not answer"))),
    };
    let wanted = policy.cleanup_policy();
    if found.split(',').map(str::trim).any(|p| p == wanted)
        && !(policy == TopicPolicy::Delete && found.contains("compact"))
    {
        return Ok(false);
    }
    Err(ConnectorError::Config(format!(
        "topic {topic} exists with cleanup.policy={found}, but it needs cleanup.policy={wanted} ({}). Change it \
         (kafka-configs.sh --alter --entity-type topics --entity-name {topic} --add-config cleanup.policy={wanted}) \
         or write to another topic",
        match policy {
            TopicPolicy::Compact => "an upsert sink keeps the latest value per key; deleting by time loses the table",
            TopicPolicy::Delete => "every message of a changelog or of append-only rows counts; compaction drops them",
        }
    )))
}

/// Wakes a thread parked in [`block_on`].
struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs a future to completion on this thread (the admin client completes its futures from
/// its own thread; no async runtime is needed).
fn block_on<F: Future>(future: F) -> F::Output {
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut context = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
        std::thread::park();
    }
}
