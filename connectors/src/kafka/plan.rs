//! What every worker's reader of a source shares — the plan (topics, group, start offsets,
//! timeouts), the decoder and event-time rule, the stats and the stop flag — and the fixed
//! assignment of partitions to workers. Its own module, so that the source, the reader, the
//! committer, discovery and the dead-letter producer all depend on it and not on each other.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::time::Duration;

use tideline::Time;
use tideline::time::watermark::PartitionId;

use crate::kafka::config::KafkaConfig;
use crate::kafka::decode::Decoder;
use crate::kafka::stats::KafkaSourceStats;

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

/// Where a [`KafkaSource`](crate::kafka::KafkaSource) starts reading each partition.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum StartOffsets {
    /// The earliest offset still in the partition.
    #[default]
    Earliest,
    /// The end of the partition: only messages produced after the start.
    Latest,
    /// The consumer group's committed offsets (resuming after a restart); partitions without
    /// one start at the earliest offset. Needs a [group id](crate::kafka::KafkaSourceBuilder::group_id).
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
pub(crate) enum EventTimeFrom<D> {
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
pub(crate) struct Plan {
    pub(crate) name: String,
    /// Identifies this run of the job in the commit metadata, so that another run committing
    /// to the same group is noticed.
    pub(crate) run: String,
    pub(crate) config: KafkaConfig,
    pub(crate) topics: Vec<String>,
    pub(crate) group_id: Option<String>,
    pub(crate) start: StartOffsets,
    pub(crate) bounded: bool,
    pub(crate) metadata_refresh: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) commit_interval: Duration,
    pub(crate) poll_interval: Duration,
    pub(crate) finish_timeout: Duration,
    pub(crate) dead_letter_topic: Option<String>,
}

pub(crate) struct Inner<D> {
    pub(crate) plan: Arc<Plan>,
    pub(crate) decoder: Decoder<D>,
    pub(crate) event_time: EventTimeFrom<D>,
    pub(crate) stats: Arc<KafkaSourceStats>,
    pub(crate) stop: Stop,
    pub(crate) _marker: PhantomData<fn() -> D>,
}

/// A graceful stop, shared by this process's readers of one source.
#[derive(Debug, Default)]
pub(crate) struct Stop {
    /// Asked to stop.
    pub(crate) requested: AtomicBool,
    /// Readers started in this process.
    pub(crate) readers: AtomicUsize,
    /// Readers that have stopped reading and committed what is safe.
    pub(crate) stopped: AtomicUsize,
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
}
