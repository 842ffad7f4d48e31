//! Committing offsets: synchronously, on a thread per reader.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use tideline::timely::scheduling::SyncActivator;

use crate::error::ConnectorError;
use crate::kafka::source::Plan;
use crate::kafka::stats::KafkaSourceStats;

/// Offsets to commit: `(topic, partition, offset)`.
pub(super) type Offsets = Vec<(String, i32, i64)>;
/// A commit's outcome per partition: `Err` with the reason.
pub(super) type Committed = Vec<(String, i32, i64, Result<(), String>)>;

/// A thread per reader that commits offsets synchronously (librdkafka reports the outcome of an
/// asynchronous commit only to a callback the client library does not expose), so that the
/// worker never waits for the group coordinator. Requests that queue up while a commit is in
/// flight are merged: the newest offset per partition wins.
///
/// Dropping the committer stops it: a commit in flight completes (the drop waits for it, up to
/// the source's request timeout), requests not yet sent are discarded. So once a source's
/// dataflow is gone, its group's committed offsets no longer move, and a restart reads from
/// where they are. The discarded offsets were safe to commit; leaving them out only means
/// that the restart reads a few records again, which at-least-once allows.
pub(super) struct Committer {
    requests: Option<mpsc::Sender<Offsets>>,
    pub(super) results: mpsc::Receiver<Committed>,
    stopping: Arc<AtomicBool>,
    stopped: mpsc::Receiver<()>,
    /// How long dropping waits for a commit in flight.
    wait: Duration,
    stats: Arc<KafkaSourceStats>,
    name: String,
}

impl Committer {
    /// Starts the thread; `activator` wakes the reader's worker when a commit's outcome is in.
    pub(super) fn start(
        plan: &Plan,
        index: usize,
        stats: Arc<KafkaSourceStats>,
        activator: Arc<SyncActivator>,
    ) -> Result<Self, ConnectorError> {
        let consumer: BaseConsumer = plan
            .config
            .clone()
            .set("client.id", format!("tideline-{}-committer-{index}", plan.name))
            .client_config()
            .create()
            .map_err(|e| plan.config.redact(ConnectorError::kafka("creating the offset committer", e)))?;
        let (requests, incoming) = mpsc::channel::<Offsets>();
        let (outcomes, results) = mpsc::channel();
        let (done, stopped) = mpsc::channel();
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&stopping);
        std::thread::Builder::new()
            .name(format!("tideline-kafka-committer-{index}"))
            .spawn(move || {
                while let Ok(first) = incoming.recv() {
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                    let mut latest: BTreeMap<(String, i32), i64> = BTreeMap::new();
                    for (topic, partition, offset) in std::iter::once(first).chain(incoming.try_iter()).flatten() {
                        let entry = latest.entry((topic, partition)).or_insert(offset);
                        *entry = (*entry).max(offset);
                    }
                    if outcomes.send(commit_sync(&consumer, &latest)).is_err() {
                        break;
                    }
                    let _ = activator.activate();
                }
                drop(consumer);
                let _ = done.send(());
            })
            .map_err(|e| ConnectorError::Config(format!("cannot start the Kafka committer thread: {e}")))?;
        Ok(Committer {
            requests: Some(requests),
            results,
            stopping,
            stopped,
            wait: plan.request_timeout,
            stats,
            name: format!("{} (worker {index})", plan.name),
        })
    }

    /// Asks for `offsets` to be committed; `false` if the committer thread has stopped.
    pub(super) fn send(&self, offsets: Offsets) -> bool {
        self.requests.as_ref().is_some_and(|requests| requests.send(offsets).is_ok())
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Release);
        self.requests = None;
        if let Err(mpsc::RecvTimeoutError::Timeout) = self.stopped.recv_timeout(self.wait) {
            self.stats.record_error(format!(
                "{}: an offset commit was still in flight {:?} after the source stopped; it may still land",
                self.name, self.wait
            ));
        }
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
