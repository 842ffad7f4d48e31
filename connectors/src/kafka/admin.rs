//! Small blocking administration helpers: creating topics (for programs and tests that set
//! up their own topics).

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
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
