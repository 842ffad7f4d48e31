//! Counters and gauges readable from the program while a dataflow runs, and from outside it
//! over HTTP in the Prometheus text format.
//!
//! A [`SourceMetrics`] or [`StateMetrics`] is created by the program (usually once per
//! process, outside `execute`) and handed to the sources and operators of every worker; each
//! worker reports into its own slot, and readers see per-worker values and totals.
//!
//! # Exporting
//!
//! Every [`SourceMetrics`], named [`StateMetrics`] ([`StateMetrics::named`]),
//! [`SinkHandle`](crate::sink::SinkHandle) and [`CheckpointMetrics`] registers itself, weakly,
//! in one process-wide registry when it is created: it is exported while something holds it
//! and disappears when it is dropped. Connectors add their own families with
//! [`register_collector`] (any [`Collector`]) or, for consumer offsets and lag, by implementing
//! [`ConsumerOffsets`] and calling [`register_consumer_offsets`]. [`serve`] answers
//! `GET /metrics` with all of it; [`encode_text`] renders the same text for programs that
//! serve it their own way.
//!
//! ```
//! use tideline::runtime::metrics::{self, SourceMetrics};
//!
//! let server = metrics::serve("127.0.0.1:0").unwrap(); // port 0: any free port
//! let source = SourceMetrics::new("doc-source");
//! assert!(metrics::encode_text().contains("tideline_source_dead_letters_total{source=\"doc-source\"} 0"));
//! println!("scrape http://{}/metrics", server.local_addr());
//! drop(source); // dropped metrics are no longer exported
//! ```
//!
//! The families, their labels and what they mean are listed in `docs/deployment.md`
//! ("Metrics"); [`encode_text`] documents them too.

mod endpoint;
mod registry;

pub use endpoint::{MetricsServer, serve};
pub use prometheus_client;
pub use prometheus_client::collector::Collector;
pub(crate) use registry::register_sink as registry_register_sink;
pub use registry::{
    CheckpointMetrics, ConsumerOffsets, ConsumerPartition, encode_text, register_collector, register_consumer_offsets,
};

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crate::time::Time;
use crate::time::watermark::PartitionId;

/// Counters of one source partition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartitionStats {
    /// Records read (decoded), whether on time or behind the watermark.
    pub records: u64,
    /// Records whose event time was below the partition's watermark: emitted at the watermark
    /// for the operators to decide, per window, whether they are late (DESIGN §3).
    pub behind_watermark: u64,
    /// Records that failed to decode (dead letters).
    pub dead_letters: u64,
    /// The partition's current watermark.
    pub watermark: Time,
    /// Whether the partition is currently idle.
    pub idle: bool,
}

impl PartitionStats {
    fn add(&mut self, other: &PartitionStats) {
        self.records += other.records;
        self.behind_watermark += other.behind_watermark;
        self.dead_letters += other.dead_letters;
    }
}

/// Counters of a source, per partition, shared by the workers of a process.
///
/// ```
/// use tideline::runtime::metrics::SourceMetrics;
///
/// let metrics = SourceMetrics::new("events");
/// assert_eq!(metrics.totals().records, 0);
/// ```
#[derive(Debug)]
pub struct SourceMetrics {
    name: String,
    started: Instant,
    records: AtomicU64,
    partitions: Mutex<BTreeMap<PartitionId, PartitionStats>>,
    watermarks: Mutex<BTreeMap<usize, Option<Time>>>,
    errors: Mutex<Vec<String>>,
}

impl SourceMetrics {
    /// New, zeroed metrics for the source called `name`.
    ///
    /// The metrics are registered (weakly) for export: see [`serve`]. Several
    /// `SourceMetrics` with one name (e.g. one per worker, which a source makes when its
    /// configuration has none) are exported as one source.
    pub fn new(name: impl Into<String>) -> Arc<Self> {
        let metrics = Arc::new(SourceMetrics {
            name: name.into(),
            started: Instant::now(),
            records: AtomicU64::new(0),
            partitions: Mutex::new(BTreeMap::new()),
            watermarks: Mutex::new(BTreeMap::new()),
            errors: Mutex::new(Vec::new()),
        });
        registry::register_source(&metrics);
        metrics
    }

    /// Records an error that stopped a reader.
    pub(crate) fn record_error(&self, message: String) {
        tracing::error!(source = %self.name, error = %message, "source reader stopped");
        self.errors.lock().expect("metrics lock poisoned").push(message);
    }

    /// Errors that stopped readers of this source (empty when all is well). A source with
    /// errors has not read all its input: programs should report them and fail.
    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().expect("metrics lock poisoned").clone()
    }

    /// The source's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Adds a worker's counts since its last report, and its partitions' watermarks.
    pub(crate) fn report(
        &self,
        worker: usize,
        delta: &BTreeMap<PartitionId, PartitionStats>,
        watermarks: impl Iterator<Item = (PartitionId, Time, bool)>,
        worker_watermark: Option<Time>,
    ) {
        let mut partitions = self.partitions.lock().expect("metrics lock poisoned");
        let mut records = 0;
        for (partition, stats) in delta {
            records += stats.records;
            partitions.entry(*partition).or_default().add(stats);
        }
        for (partition, watermark, idle) in watermarks {
            let entry = partitions.entry(partition).or_default();
            entry.watermark = watermark;
            entry.idle = idle;
        }
        drop(partitions);
        self.records.fetch_add(records, Ordering::Relaxed);
        self.watermarks.lock().expect("metrics lock poisoned").insert(worker, worker_watermark);
    }

    /// Records read so far by all workers of this process (cheap; no lock).
    pub fn records(&self) -> u64 {
        self.records.load(Ordering::Relaxed)
    }

    /// Counters per partition.
    pub fn partitions(&self) -> BTreeMap<PartitionId, PartitionStats> {
        self.partitions.lock().expect("metrics lock poisoned").clone()
    }

    /// Counters summed over partitions (the watermark is the minimum over active partitions).
    pub fn totals(&self) -> PartitionStats {
        let partitions = self.partitions.lock().expect("metrics lock poisoned");
        let mut total = PartitionStats::default();
        for stats in partitions.values() {
            total.add(stats);
        }
        total.watermark = self.watermark().unwrap_or(0);
        total
    }

    /// The source's watermark in this process: the minimum over workers that have active
    /// partitions, or `None` if none has.
    pub fn watermark(&self) -> Option<Time> {
        self.watermarks.lock().expect("metrics lock poisoned").values().flatten().copied().min()
    }

    /// Records per second since the metrics were created.
    pub fn rate(&self) -> f64 {
        let secs = self.started.elapsed().as_secs_f64();
        if secs > 0.0 { self.records() as f64 / secs } else { 0.0 }
    }

    /// A one-line progress report: records read, watermark, records behind the watermark, dead
    /// letters, records/s.
    pub fn progress_line(&self) -> String {
        let totals = self.totals();
        let watermark = match self.watermark() {
            Some(w) => w.to_string(),
            None => "-".to_string(),
        };
        format!(
            "{}: {} records, watermark {}, {} behind the watermark, {} dead letters, {:.0} records/s",
            self.name,
            totals.records,
            watermark,
            totals.behind_watermark,
            totals.dead_letters,
            self.rate()
        )
    }
}

/// Live-state gauges of a stateful operator: how many entries each worker holds.
///
/// Every stateful operator has one: the one passed to it
/// ([`TemporalBuilder::state_metrics`](crate::state::TemporalBuilder::state_metrics)), or the
/// gauge named after the operator. Read it from any thread while the dataflow runs.
///
/// Gauges made by [`StateMetrics::named`] carry an operator name and are exported as
/// `tideline_operator_state_entries{operator, worker}` (see [`serve`]); those made by
/// [`StateMetrics::new`] are read by the program only.
#[derive(Debug, Default)]
pub struct StateMetrics {
    name: Option<String>,
    workers: OnceLock<Vec<AtomicI64>>,
    peaks: OnceLock<Vec<AtomicI64>>,
    late_skipped: AtomicU64,
}

/// A worker slot no worker of this process has reported into (read as 0).
const UNREPORTED: i64 = -1;

impl StateMetrics {
    /// New gauges, all zero, not exported (they have no operator name to be labelled with).
    pub fn new() -> Arc<Self> {
        Arc::new(StateMetrics::default())
    }

    /// The gauges of the operator called `name` in this process, exported as
    /// `tideline_operator_state_entries{operator="name", worker}`: the registered gauges if
    /// some are alive, new ones (registered) otherwise. Every worker of a process that builds
    /// the operator gets the same gauges and reports into its own slot; they are exported until
    /// the last holder drops them. Operator names should therefore be unique in a process (two
    /// live operators with one name share, and overwrite, each other's slots).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tideline::runtime::metrics::StateMetrics;
    ///
    /// let a = StateMetrics::named("doc-window");
    /// let b = StateMetrics::named("doc-window");
    /// assert!(Arc::ptr_eq(&a, &b));
    /// a.set(1, 2, 7);
    /// assert_eq!(b.per_worker(), vec![0, 7]);
    /// assert_eq!(a.name(), Some("doc-window"));
    /// ```
    pub fn named(name: impl Into<String>) -> Arc<Self> {
        registry::state_named(name.into(), |name| {
            Arc::new(StateMetrics { name: Some(name), ..StateMetrics::default() })
        })
    }

    /// The operator name the gauges are exported under, if any.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    fn slots(&self, peers: usize) -> (&[AtomicI64], &[AtomicI64]) {
        let make = || (0..peers.max(1)).map(|_| AtomicI64::new(UNREPORTED)).collect::<Vec<_>>();
        (self.workers.get_or_init(make), self.peaks.get_or_init(make))
    }

    /// The live entries of the workers of this process that have reported: `(worker, entries)`.
    pub fn reported(&self) -> Vec<(usize, u64)> {
        self.workers
            .get()
            .map(|v| {
                v.iter()
                    .enumerate()
                    .filter_map(|(i, a)| {
                        let n = a.load(Ordering::Relaxed);
                        (n != UNREPORTED).then_some((i, n.max(0) as u64))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Sets worker `index`'s live entry count.
    pub fn set(&self, index: usize, peers: usize, entries: usize) {
        let (workers, peaks) = self.slots(peers);
        let entries = i64::try_from(entries).unwrap_or(i64::MAX);
        if let (Some(slot), Some(peak)) = (workers.get(index), peaks.get(index)) {
            slot.store(entries, Ordering::Relaxed);
            peak.fetch_max(entries, Ordering::Relaxed);
        }
    }

    /// Counts records an operator found late: too late for every window (session, dedup
    /// horizon, join interval) they belong to, which had all expired (`end + allowed_lateness`
    /// at or before the time they arrived). Whether they were dropped or sent to the operator's
    /// late output depends on its [`LatePolicy`](crate::time::late::LatePolicy).
    pub fn add_late_skipped(&self, n: u64) {
        self.late_skipped.fetch_add(n, Ordering::Relaxed);
    }

    /// Records found late (see [`add_late_skipped`](Self::add_late_skipped)).
    pub fn late_skipped(&self) -> u64 {
        self.late_skipped.load(Ordering::Relaxed)
    }

    /// Live entries per worker (of this process's view; other workers' slots stay zero).
    pub fn per_worker(&self) -> Vec<u64> {
        self.workers
            .get()
            .map(|v| v.iter().map(|a| a.load(Ordering::Relaxed).max(0) as u64).collect())
            .unwrap_or_default()
    }

    /// Live entries summed over workers.
    pub fn total(&self) -> u64 {
        self.per_worker().iter().sum()
    }

    /// The largest live entry count any worker has reported.
    pub fn peak_per_worker(&self) -> u64 {
        self.peaks
            .get()
            .map(|v| v.iter().map(|a| a.load(Ordering::Relaxed).max(0) as u64).max().unwrap_or(0))
            .unwrap_or(0)
    }
}

/// A live-record gauge for state that is a differential arrangement of a collection's records:
/// equi-joins (their state is both inputs' live records), [`to_table`](crate::table::Tables::to_table)
/// and differential's own operators, which report nothing themselves.
///
/// ```
/// use tideline::differential_dataflow::input::Input;
/// use tideline::runtime::metrics::{LiveRecords, StateMetrics};
/// use tideline::prelude::*;
/// use tideline::timely::dataflow::Scope;
///
/// let (people, auctions) = (StateMetrics::new(), StateMetrics::new());
/// let (p, a) = (people.clone(), auctions.clone());
/// tideline::runtime::collect(1, move |scope: Scope<'_, Time>| {
///     let (_, persons) = scope.new_collection_from(vec![(1u32, 'p'), (2, 'q')]);
///     let (_, sales) = scope.new_collection_from(vec![(1u32, 'a'), (1, 'b'), (3, 'c')]);
///     persons.live_records(p.clone()).inner_join(sales.live_records(a.clone()))
/// });
/// assert_eq!((people.total(), auctions.total()), (2, 3));
/// ```
pub trait LiveRecords<'scope, D> {
    /// Passes the collection through unchanged and reports, per worker, the records it holds
    /// (the sum of the multiplicities that passed this worker) to `metrics`. Attach one gauge
    /// per input: each call owns its gauge. The count is where the records enter, before any
    /// exchange: per-worker figures show the input's spread, the total the state's size.
    fn live_records(self, metrics: Arc<StateMetrics>) -> differential_dataflow::VecCollection<'scope, Time, D>;
}

impl<'scope, D: crate::runtime::ExchangeData> LiveRecords<'scope, D>
    for differential_dataflow::VecCollection<'scope, Time, D>
{
    fn live_records(self, metrics: Arc<StateMetrics>) -> differential_dataflow::VecCollection<'scope, Time, D> {
        let scope = self.inner.scope();
        let (index, peers) = (scope.index(), scope.peers());
        let mut live: i64 = 0;
        self.inspect_batch(move |_time, updates| {
            live += updates.iter().map(|(_, _, diff)| *diff as i64).sum::<i64>();
            metrics.set(index, peers, live.max(0) as usize);
        })
    }
}
