//! Handling clients: closing them without hanging a worker.

use std::time::Duration;

use crate::kafka::stats::KafkaSourceStats;

/// Drops a Kafka client on a thread of its own and waits at most `limit` for it to close.
///
/// Closing a consumer that has a group id waits for librdkafka's group handling to wind down,
/// which talks to the group coordinator; a worker must not hang on the network when its
/// dataflow ends. A client that takes longer goes on closing in the background, and the
/// source's stats say so.
pub(crate) fn close_within<T: Send + 'static>(client: T, limit: Duration, stats: &KafkaSourceStats, what: &str) {
    let (done, closed) = std::sync::mpsc::channel();
    let closing = std::thread::Builder::new().name("tideline-kafka-close".into()).spawn(move || {
        drop(client);
        let _ = done.send(());
    });
    if closing.is_ok() && closed.recv_timeout(limit).is_err() {
        stats.record_error(format!(
            "{what}: the consumer did not close within {limit:?}; it goes on closing in the background"
        ));
    }
}
