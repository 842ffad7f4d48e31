//! Committing offsets: synchronously, on a thread per reader.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use tideline::timely::scheduling::SyncActivator;

use crate::error::ConnectorError;
use crate::kafka::plan::Plan;
use crate::kafka::stats::KafkaSourceStats;

/// Offsets to commit: `(topic, partition, offset)`.
pub(super) type Offsets = Vec<(String, i32, i64)>;
/// A commit's outcome per partition.
pub(super) type Committed = Vec<(String, i32, i64, Result<(), CommitError>)>;

/// Why a commit failed.
#[derive(Clone, Debug)]
pub(super) enum CommitError {
    /// Retried at the next interval.
    Retry(String),
    /// Committing cannot work: the group is used by others. Stops the source.
    Refused(String),
    /// The group refused the commit as from a non-member (inside the committer only: it
    /// becomes `Refused` when it repeats).
    Membership(String),
}

/// Consecutive commits refused for membership after which the group is taken to have members.
const MEMBERSHIP_REFUSALS: usize = 3;

/// The prefix of the commit metadata Tideline writes: `tideline run HOST:PID:NANOS`.
const RUN_TAG: &str = "tideline run ";

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
        let (run, group, wait) = (plan.run.clone(), plan.group_id.clone().unwrap_or_default(), plan.request_timeout);
        std::thread::Builder::new()
            .name(format!("tideline-kafka-committer-{index}"))
            .spawn(move || {
                let tag = format!("{RUN_TAG}{run}");
                // What this run committed (and the broker confirmed), per partition.
                let mut ours: BTreeMap<(String, i32), i64> = BTreeMap::new();
                let mut refusals = 0;
                while let Ok(first) = incoming.recv() {
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                    let mut latest: BTreeMap<(String, i32), i64> = BTreeMap::new();
                    for (topic, partition, offset) in std::iter::once(first).chain(incoming.try_iter()).flatten() {
                        let entry = latest.entry((topic, partition)).or_insert(offset);
                        *entry = (*entry).max(offset);
                    }
                    let mut outcome = match other_run(&consumer, &ours, &latest, &tag, &group, wait) {
                        Some(problem) => refuse(&latest, problem),
                        None => commit_sync(&consumer, &latest, &tag, &group),
                    };
                    // A group with members refuses every commit; one refusal among other
                    // coordinator errors is retried like them.
                    let membership = outcome.iter().any(|(.., r)| matches!(r, Err(CommitError::Membership(_))));
                    refusals = if membership { refusals + 1 } else { 0 };
                    for (.., result) in &mut outcome {
                        if let Err(CommitError::Membership(problem)) = result {
                            *result = Err(if refusals >= MEMBERSHIP_REFUSALS {
                                CommitError::Refused(problem.clone())
                            } else {
                                CommitError::Retry(problem.clone())
                            });
                        }
                    }
                    for (topic, partition, offset, result) in &outcome {
                        if result.is_ok() {
                            ours.insert((topic.clone(), *partition), *offset);
                        }
                    }
                    if outcomes.send(outcome).is_err() {
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

/// Every partition of `offsets` refused with `problem`.
fn refuse(offsets: &BTreeMap<(String, i32), i64>, problem: String) -> Committed {
    offsets.iter().map(|((t, p), o)| (t.clone(), *p, *o, Err(CommitError::Refused(problem.clone())))).collect()
}

/// Whether another run has committed to a partition this run committed before: two
/// independent runs of the job share the group (each would read and write everything).
fn other_run(
    consumer: &BaseConsumer,
    ours: &BTreeMap<(String, i32), i64>,
    offsets: &BTreeMap<(String, i32), i64>,
    tag: &str,
    group: &str,
    timeout: Duration,
) -> Option<String> {
    let mut list = TopicPartitionList::new();
    for key in offsets.keys().filter(|key| ours.contains_key(*key)) {
        list.add_partition(&key.0, key.1);
    }
    if list.count() == 0 {
        return None;
    }
    let committed = consumer.committed_offsets(list, timeout).ok()?;
    let problem = committed.elements().iter().find_map(|element| {
        let metadata = element.metadata();
        (metadata.starts_with(RUN_TAG) && metadata != tag).then(|| {
            format!(
                "another run of this job ({}) committed {}/{} to group {group:?}: two independent runs with one \
                 group id each read every partition and write every result twice. Stop one of them, or give \
                 each its own group",
                &metadata[RUN_TAG.len()..],
                element.topic(),
                element.partition()
            )
        })
    });
    drop(committed);
    problem
}

fn commit_sync(consumer: &BaseConsumer, offsets: &BTreeMap<(String, i32), i64>, tag: &str, group: &str) -> Committed {
    let mut list = TopicPartitionList::new();
    for ((topic, partition), offset) in offsets {
        match list.add_partition_offset(topic, *partition, Offset::Offset(*offset)) {
            Ok(()) => {
                if let Some(mut element) = list.find_partition(topic, *partition) {
                    element.set_metadata(tag);
                }
            }
            Err(e) => {
                let reason = CommitError::Retry(e.to_string());
                return offsets.iter().map(|((t, p), o)| (t.clone(), *p, *o, Err(reason.clone()))).collect();
            }
        }
    }
    let result = consumer.commit(&list, CommitMode::Sync);
    drop(list);
    let outcome = result.map_err(|e| classify(e, group));
    offsets.iter().map(|((t, p), o)| (t.clone(), *p, *o, outcome.clone())).collect()
}

/// A commit the broker refuses because the group has members: Tideline assigns partitions
/// itself and commits as a standalone client, which a group with active members (a consumer
/// that subscribed with this group id) does not accept.
fn classify(error: rdkafka::error::KafkaError, group: &str) -> CommitError {
    use rdkafka::types::RDKafkaErrorCode as C;
    match error.rdkafka_error_code() {
        Some(C::UnknownMemberId | C::IllegalGeneration | C::FencedInstanceId | C::StaleMemberEpoch) => {
            CommitError::Membership(format!(
                "group {group:?} refuses the commit ({error}): another consumer is a member of it (one that \
                 subscribed with this group id, e.g. a console consumer or another application). Tideline \
                 assigns its partitions itself and needs a group of its own"
            ))
        }
        _ => CommitError::Retry(error.to_string()),
    }
}
