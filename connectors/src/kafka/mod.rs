//! Kafka: a partitioned, watermarked, at-least-once source and a changelog / upsert /
//! append-only sink, on librdkafka (the `rdkafka` crate). Behind the `kafka` feature (on by
//! default; `default-features = false` skips building librdkafka).
//!
//! - [`KafkaSource`] reads topics: partitions spread over all workers by a deterministic
//!   assignment, a watermark per partition, event time from the record or the message
//!   timestamp, dead letters for messages that do not decode, offsets committed only once
//!   everything derived from them is durable, bounded or unbounded reading.
//! - [`KafkaSink`] writes a collection with an idempotent producer per worker, partitioned by
//!   key, flushing at every frontier advance (the durability point the source's commits wait
//!   for), and reports failed deliveries instead of dropping them.
//! - [`KafkaConfig`] passes any librdkafka property through (security, SASL, SSL, tuning) and
//!   never shows secrets.
//!
//! ```no_run
//! use std::time::Duration;
//! use tideline::prelude::*;
//! use tideline::sink::SinkHandle;
//! use tideline::source::SourceConfig;
//! use tideline::window::aggregate::Count;
//! use tideline_connectors::kafka::{KafkaConfig, KafkaSink, KafkaSource, Keyed, SinkFormat};
//!
//! #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
//! struct Click { time: u64, page: String }
//!
//! let config = KafkaConfig::new("localhost:9092");
//! let clicks = KafkaSource::<Click>::json(config.clone())
//!     .topic("clicks")
//!     .group_id("click-counts")
//!     .event_time(|click: &Click| click.time)
//!     .build()?;
//! let counts = KafkaSink::builder(config, "click-counts")
//!     .format(SinkFormat::Upsert)
//!     .key(|r: &WindowResult<String, i64>| format!("{}@{}", r.key, r.window.start))
//!     .value(|r: &WindowResult<String, i64>| r.value)
//!     .build()?;
//! let handle = SinkHandle::new("click-counts");
//! tideline::runtime::execute(&tideline::runtime::Cluster::threads(2), move |worker| {
//!     let (clicks, counts, handle) = (clicks.clone(), counts.clone(), handle.clone());
//!     worker.dataflow::<Time, _, _>(move |scope| {
//!         let config = SourceConfig::new("clicks")
//!             .watermarks(WatermarkStrategy::bounded_out_of_orderness(Duration::from_secs(5)));
//!         let per_page = clicks
//!             .read(scope, config)
//!             .data
//!             .map(|c| Event::new(c.time, c.page, ()))
//!             .tumbling(Duration::from_secs(60))
//!             .aggregate(Count);
//!         counts.write(per_page, &handle);
//!     });
//! })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod admin;
mod committer;
mod config;
mod dead_letters;
mod decode;
mod discovery;
mod ledger;
mod reader;
mod sink;
mod source;
mod stats;

pub use admin::{TopicPolicy, create_topic, ensure_topic};
pub use config::KafkaConfig;
pub use decode::{Decoder, KafkaMessage, Keyed, RawMessage};
pub use sink::{DeliveryError, KafkaSink, KafkaSinkBuilder, KafkaSinkStats, SinkFormat};
pub use source::{KafkaSource, KafkaSourceBuilder, StartOffsets};
pub use stats::KafkaSourceStats;

use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use tideline::time::watermark::PartitionId;

/// The source partition id of partition `partition` of the source's `topic`-th topic.
pub(crate) fn partition_id(topic: usize, partition: i32) -> PartitionId {
    ((topic as u64) << 32) | u64::from(partition as u32)
}

/// The worker (out of `peers`) that reads `partition` of `topic`: stable when partitions are
/// added, and spreading each topic's partitions over all workers.
pub(crate) fn owner(topic: &str, partition: i32, peers: usize) -> usize {
    (fnv1a(topic.as_bytes()).wrapping_add(partition as u64) % peers as u64) as usize
}

/// 64-bit FNV-1a: a fixed hash, the same in every process and every run.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

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

/// Whether an error of the client may go away by itself or on a retry: brokers unreachable,
/// timeouts, leadership or coordinators moving, throttling.
pub(crate) fn is_retryable(error: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    if matches!(error, KafkaError::MessageConsumptionFatal(_)) {
        return false;
    }
    matches!(
        error.rdkafka_error_code(),
        Some(
            C::BrokerTransportFailure
                | C::AllBrokersDown
                | C::MessageTimedOut
                | C::OperationTimedOut
                | C::RequestTimedOut
                | C::QueueFull
                | C::Resolve
                | C::NetworkException
                | C::LeaderNotAvailable
                | C::NotLeaderForPartition
                | C::NotEnoughReplicas
                | C::NotEnoughReplicasAfterAppend
                | C::NotCoordinator
                | C::CoordinatorNotAvailable
                | C::CoordinatorLoadInProgress
                | C::UnknownTopicOrPartition
                | C::KafkaStorageError
                | C::FencedLeaderEpoch
                | C::UnknownLeaderEpoch
                | C::OffsetNotAvailable
                | C::PreferredLeaderNotAvailable
                | C::ThrottlingQuotaExceeded
                | C::PolicyViolation
                | C::InvalidReplicationFactor
                | C::Retry
                | C::WaitingForCoordinator
                | C::InProgress
                | C::PreviousInProgress
                | C::ISRInsufficient
                | C::NodeUpdate
        )
    )
}

/// Whether an error while reading stops the source: the client gave up (fatal), or the
/// credentials are refused. Everything else is retried by the client and only reported.
pub(crate) fn is_fatal(error: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    matches!(error, KafkaError::MessageConsumptionFatal(_))
        || matches!(
            error.rdkafka_error_code(),
            Some(
                C::Fatal
                    | C::TopicAuthorizationFailed
                    | C::GroupAuthorizationFailed
                    | C::ClusterAuthorizationFailed
                    | C::SaslAuthenticationFailed
                    | C::Authentication
            )
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignment_spreads_partitions_and_is_stable_when_partitions_are_added() {
        let peers = 4;
        let owners: Vec<usize> = (0..8).map(|p| owner("orders", p, peers)).collect();
        for worker in 0..peers {
            assert_eq!(owners.iter().filter(|o| **o == worker).count(), 2, "{owners:?}");
        }
        // Partition p's owner does not depend on how many partitions there are, and
        // consecutive partitions go to consecutive workers.
        for p in 0..7 {
            assert_eq!((owners[p] + 1) % peers, owners[p + 1]);
        }
        assert_eq!(owner("orders", 3, 1), 0);
    }

    #[test]
    fn partition_ids_encode_topic_and_partition() {
        assert_eq!(partition_id(0, 5), 5);
        assert_eq!(partition_id(2, 1), (2 << 32) | 1);
    }

    #[test]
    fn errors_are_classified() {
        assert!(is_retryable(&KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut)));
        assert!(is_retryable(&KafkaError::ConsumerCommit(RDKafkaErrorCode::NotCoordinator)));
        assert!(!is_retryable(&KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)));
        assert!(!is_retryable(&KafkaError::MessageProduction(RDKafkaErrorCode::TopicAuthorizationFailed)));
        assert!(is_fatal(&KafkaError::MessageConsumption(RDKafkaErrorCode::TopicAuthorizationFailed)));
        assert!(!is_fatal(&KafkaError::MessageConsumption(RDKafkaErrorCode::BrokerTransportFailure)));
    }
}
