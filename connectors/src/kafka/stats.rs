//! Kafka counters, readable from the program while a dataflow runs.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// How many recent errors are kept.
const RECENT_ERRORS: usize = 32;

/// A Kafka source's counters, shared by the workers of a process: the assignment, read
/// positions and committed offsets per partition, commits, dead letters produced, transient
/// errors (which the client retries), and the client's prefetch queue.
#[derive(Debug, Default)]
pub struct KafkaSourceStats {
    assignment: Mutex<BTreeMap<(String, i32), usize>>,
    positions: Mutex<BTreeMap<(String, i32), i64>>,
    committed: Mutex<BTreeMap<(String, i32), i64>>,
    log_ends: Mutex<BTreeMap<(String, i32), i64>>,
    outage: Mutex<Option<(std::time::Instant, String)>>,
    commits: AtomicU64,
    commit_failures: AtomicU64,
    dead_letters_produced: AtomicU64,
    errors: AtomicU64,
    recent_errors: Mutex<VecDeque<String>>,
    prefetched: Mutex<BTreeMap<usize, u64>>,
    max_prefetched: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl KafkaSourceStats {
    /// Zeroed counters.
    pub fn new() -> std::sync::Arc<Self> {
        std::sync::Arc::default()
    }

    /// Which worker reads each `(topic, partition)`.
    pub fn assignment(&self) -> BTreeMap<(String, i32), usize> {
        lock(&self.assignment).clone()
    }

    /// The next offset to read per `(topic, partition)` (updated at each commit interval).
    pub fn positions(&self) -> BTreeMap<(String, i32), i64> {
        lock(&self.positions).clone()
    }

    /// The offsets the group coordinator confirmed, per `(topic, partition)`.
    pub fn committed(&self) -> BTreeMap<(String, i32), i64> {
        lock(&self.committed).clone()
    }

    /// Consumer lag per partition this process reads, as `(topic, partition, lag)` sorted by
    /// topic and partition: the log end offset (high watermark) minus the next offset the
    /// source will read, never below 0. What Prometheus' `tideline_kafka_consumer_lag{topic,
    /// partition}` shows.
    ///
    /// The log end offsets come from the consumer's statistics (`statistics.interval.ms`, 1 s
    /// by default here) and the positions are taken at every commit interval, so the lag is
    /// up to about a second old; a partition a bounded read has finished has lag 0 (unless the
    /// statistics saw messages beyond the end it read to). Partitions whose log end is not
    /// known yet are left out.
    pub fn consumer_lag(&self) -> Vec<(String, i32, i64)> {
        let positions = lock(&self.positions);
        lock(&self.log_ends)
            .iter()
            .filter_map(|((topic, partition), end)| {
                let position = positions.get(&(topic.clone(), *partition))?;
                Some((topic.clone(), *partition, (end - position).max(0)))
            })
            .collect()
    }

    /// The committed offset per partition, as `(topic, partition, offset)` sorted by topic and
    /// partition (the [`committed`](Self::committed) map as a list). What Prometheus'
    /// `tideline_kafka_committed_offset{topic, partition}` shows.
    pub fn committed_offsets(&self) -> Vec<(String, i32, i64)> {
        lock(&self.committed).iter().map(|((t, p), o)| (t.clone(), *p, *o)).collect()
    }

    /// Whether the brokers are unreachable now, for how long, and the client's last word on
    /// it: set when the client reports all brokers down (`AllBrokersDown`), cleared when
    /// messages are read or a commit is confirmed again (so a source with nothing to read or
    /// commit keeps showing it until then). A program shows it while it lasts
    /// (`kafka_pipeline` does, every second).
    pub fn outage(&self) -> Option<(std::time::Duration, String)> {
        lock(&self.outage).as_ref().map(|(since, reason)| (since.elapsed(), reason.clone()))
    }

    /// Offsets confirmed by the group coordinator (one per partition and commit).
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Commits that failed (retried at the next interval).
    pub fn commit_failures(&self) -> u64 {
        self.commit_failures.load(Ordering::Relaxed)
    }

    /// Dead letters delivered to the dead-letter topic.
    pub fn dead_letters_produced(&self) -> u64 {
        self.dead_letters_produced.load(Ordering::Relaxed)
    }

    /// Errors seen so far: transient client errors (retried by the client), failed look-ups
    /// and commits.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// The most recent errors, oldest first.
    pub fn recent_errors(&self) -> Vec<String> {
        lock(&self.recent_errors).iter().cloned().collect()
    }

    /// Bytes in the clients' prefetch queues, summed over workers, as of their last statistics
    /// report (every `statistics.interval.ms`, 1 s by default here).
    pub fn prefetched_bytes(&self) -> u64 {
        lock(&self.prefetched).values().sum()
    }

    /// The most bytes any one worker's client had prefetched at a statistics report.
    pub fn max_prefetched_bytes(&self) -> u64 {
        self.max_prefetched.load(Ordering::Relaxed)
    }

    pub(crate) fn record_assignment(&self, topic: &str, partition: i32, worker: usize) {
        tracing::info!(%topic, partition, worker, "Kafka partition assigned");
        lock(&self.assignment).insert((topic.to_string(), partition), worker);
    }

    pub(crate) fn record_positions(&self, positions: Vec<(String, i32, i64)>) {
        let mut map = lock(&self.positions);
        for (topic, partition, next) in positions {
            map.insert((topic, partition), next);
        }
    }

    /// A partition's log end offset, as seen by the client (never moves back).
    pub(crate) fn record_log_end(&self, topic: &str, partition: i32, end: i64) {
        let mut ends = lock(&self.log_ends);
        let entry = ends.entry((topic.to_string(), partition)).or_insert(end);
        *entry = (*entry).max(end);
    }

    pub(crate) fn record_outage(&self, reason: String) {
        let mut outage = lock(&self.outage);
        match outage.as_mut() {
            Some((_, last)) => *last = reason,
            None => {
                tracing::warn!(%reason, "Kafka brokers unreachable; the client keeps retrying");
                *outage = Some((std::time::Instant::now(), reason));
            }
        }
    }

    pub(crate) fn record_reachable(&self) {
        if let Some((since, _)) = lock(&self.outage).take() {
            tracing::info!(after = ?since.elapsed(), "Kafka brokers reachable again");
        }
    }

    pub(crate) fn record_commit(&self, topic: &str, partition: i32, offset: i64) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.record_reachable();
        let mut committed = lock(&self.committed);
        let entry = committed.entry((topic.to_string(), partition)).or_insert(offset);
        *entry = (*entry).max(offset);
    }

    pub(crate) fn record_commit_failure(&self, error: String) {
        self.commit_failures.fetch_add(1, Ordering::Relaxed);
        self.record_error(format!("commit failed: {error}"));
    }

    pub(crate) fn record_dead_letter_produced(&self) {
        self.dead_letters_produced.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_error(&self, error: String) {
        tracing::warn!(%error, "Kafka source");
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut recent = lock(&self.recent_errors);
        if recent.len() == RECENT_ERRORS {
            recent.pop_front();
        }
        recent.push_back(error);
    }

    pub(crate) fn record_prefetch(&self, worker: usize, bytes: u64) {
        lock(&self.prefetched).insert(worker, bytes);
        self.max_prefetched.fetch_max(bytes, Ordering::Relaxed);
    }
}

impl tideline::runtime::metrics::ConsumerOffsets for KafkaSourceStats {
    /// Every partition with a known position or commit: lag = log end offset − position (as
    /// [`KafkaSourceStats::consumer_lag`]), and the committed offset.
    fn consumer_partitions(&self) -> Vec<tideline::runtime::metrics::ConsumerPartition> {
        let mut partitions: std::collections::BTreeMap<(String, i32), (Option<i64>, Option<i64>)> =
            std::collections::BTreeMap::new();
        for (topic, partition, lag) in self.consumer_lag() {
            partitions.entry((topic, partition)).or_default().0 = Some(lag);
        }
        for (topic, partition, offset) in self.committed_offsets() {
            partitions.entry((topic, partition)).or_default().1 = Some(offset);
        }
        partitions
            .into_iter()
            .map(|((topic, partition), (lag, committed_offset))| tideline::runtime::metrics::ConsumerPartition {
                topic,
                partition,
                lag,
                committed_offset,
            })
            .collect()
    }
}
