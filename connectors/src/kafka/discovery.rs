//! Finding a worker's partitions and where to start reading them: metadata and offset
//! look-ups (blocking calls) on a thread per reader, so that the worker never waits on the
//! network.

use std::collections::BTreeSet;
use std::sync::{Arc, mpsc};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use tideline::timely::scheduling::SyncActivator;

use crate::error::ConnectorError;
use crate::kafka::plan::{Plan, StartOffsets, owner};

/// A partition a worker starts reading.
#[derive(Clone, Debug)]
pub(super) struct Found {
    pub(super) topic: usize,
    pub(super) partition: i32,
    pub(super) start: i64,
    /// Bounded reading: the end offset observed at the start.
    pub(super) end: Option<i64>,
}

pub(super) enum Discovered {
    /// Partitions this worker owns that it did not know; `initial` for the first answer.
    Partitions { initial: bool, partitions: Vec<Found> },
    /// A look-up failed (retried); or a topic does not exist.
    Problem(String),
    /// Discovery gave up: a bounded read's topic does not exist.
    Fatal(String),
}

/// A thread per reader that looks up metadata and start offsets (blocking calls) so that the
/// worker never waits on the network.
pub(super) struct Discovery {
    pub(super) receiver: mpsc::Receiver<Discovered>,
    _stop: mpsc::Sender<()>,
}

impl Discovery {
    pub(super) fn start(
        plan: Arc<Plan>,
        index: usize,
        peers: usize,
        activator: Arc<SyncActivator>,
    ) -> Result<Self, ConnectorError> {
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
            .spawn(move || discover(&consumer, &plan, index, peers, &Wake { sender, activator }, &stopped))
            .map_err(|e| ConnectorError::Config(format!("cannot start the Kafka discovery thread: {e}")))?;
        Ok(Discovery { receiver, _stop: stop })
    }
}

/// Sends discoveries to the reader and wakes its worker.
struct Wake {
    sender: mpsc::Sender<Discovered>,
    activator: Arc<SyncActivator>,
}

impl Wake {
    fn send(&self, message: Discovered) -> Result<(), mpsc::SendError<Discovered>> {
        self.sender.send(message)?;
        let _ = self.activator.activate();
        Ok(())
    }
}

fn discover(
    consumer: &BaseConsumer,
    plan: &Plan,
    index: usize,
    peers: usize,
    sender: &Wake,
    stopped: &mpsc::Receiver<()>,
) {
    let mut known: BTreeSet<(usize, i32)> = BTreeSet::new();
    let mut initial = true;
    let started = std::time::Instant::now();
    loop {
        let message = match discover_once(consumer, plan, index, peers, &known, initial) {
            // A bounded read fixes its partitions and their ends in the first round: it must
            // not start (and, with nothing to read, finish at once) before every topic is seen.
            Ok(round) if plan.bounded && initial && !round.missing.is_empty() => {
                let missing = round.missing.join(", ");
                if started.elapsed() >= plan.request_timeout {
                    let _ = sender.send(Discovered::Fatal(format!(
                        "topic(s) {missing} not found within {:?}: a bounded read needs its topics to exist \
                         (create them, or check the names and the bootstrap servers)",
                        plan.request_timeout
                    )));
                    return;
                }
                Discovered::Problem(format!("topic(s) {missing} not found yet; looking again"))
            }
            Ok(Round { found: partitions, missing }) => {
                for topic in missing {
                    if sender.send(Discovered::Problem(format!("topic {topic} does not exist (yet)"))).is_err() {
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

/// What one round of discovery found.
struct Round {
    /// The partitions this worker owns and did not know, with their start (and end) offsets.
    found: Vec<Found>,
    /// Topics the metadata did not show (or showed without partitions).
    missing: Vec<String>,
}

/// One round: the partitions this worker owns and does not know yet, with their start (and
/// end) offsets; and the topics not found.
fn discover_once(
    consumer: &BaseConsumer,
    plan: &Plan,
    index: usize,
    peers: usize,
    known: &BTreeSet<(usize, i32)>,
    initial: bool,
) -> Result<Round, String> {
    let timeout = plan.request_timeout;
    let mut owned = Vec::new();
    let mut missing = Vec::new();
    for (t, topic) in plan.topics.iter().enumerate() {
        let metadata =
            consumer.fetch_metadata(Some(topic), timeout).map_err(|e| format!("metadata of topic {topic}: {e}"))?;
        let Some(info) = metadata.topics().iter().find(|m| m.name() == topic) else {
            missing.push(topic.clone());
            continue;
        };
        if let Some(error) = info.error() {
            let error = rdkafka::types::RDKafkaErrorCode::from(error);
            if error == rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition {
                missing.push(topic.clone());
                continue;
            }
            return Err(format!("metadata of topic {topic}: {error}"));
        }
        if info.partitions().is_empty() {
            missing.push(topic.clone());
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
        return Ok(Round { found, missing });
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
    Ok(Round { found, missing })
}
