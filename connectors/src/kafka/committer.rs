//! Committing offsets: synchronously, on a thread per reader.

use std::collections::BTreeMap;
use std::sync::mpsc;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::error::ConnectorError;
use crate::kafka::source::Plan;

/// Offsets to commit: `(topic, partition, offset)`.
pub(super) type Offsets = Vec<(String, i32, i64)>;
/// A commit's outcome per partition: `Err` with the reason.
pub(super) type Committed = Vec<(String, i32, i64, Result<(), String>)>;

/// A thread per reader that commits offsets synchronously (librdkafka reports the outcome of an
/// asynchronous commit only to a callback the client library does not expose), so that the
/// worker never waits for the group coordinator. Requests that queue up while a commit is in
/// flight are merged: the newest offset per partition wins.
pub(super) struct Committer {
    pub(super) requests: mpsc::Sender<Offsets>,
    pub(super) results: mpsc::Receiver<Committed>,
}

impl Committer {
    pub(super) fn start(plan: &Plan, index: usize) -> Result<Self, ConnectorError> {
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
