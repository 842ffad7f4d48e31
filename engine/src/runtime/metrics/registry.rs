//! The process-wide registry of live metrics, and its Prometheus exposition.
//!
//! Everything is held weakly: registering never keeps metrics alive, and a scrape skips (and
//! forgets) what has been dropped. A scrape reads the same atomics and locks the program
//! reads; nothing on a worker's hot path knows whether an endpoint runs.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::{PartitionStats, SourceMetrics, StateMetrics};
use crate::sink::SinkShared;
use crate::time::Time;
use crate::time::watermark::PartitionId;

#[derive(Default)]
struct Live {
    sources: Vec<Weak<SourceMetrics>>,
    states: BTreeMap<String, Weak<StateMetrics>>,
    sinks: Vec<Weak<SinkShared>>,
    checkpoints: Vec<Weak<CheckpointMetrics>>,
    consumers: Vec<Weak<dyn ConsumerOffsets>>,
    collectors: Vec<Weak<dyn Collector>>,
}

fn live() -> MutexGuard<'static, Live> {
    static LIVE: OnceLock<Mutex<Live>> = OnceLock::new();
    // A panic while the lock was held cannot leave the lists inconsistent (they are only pushed
    // to and filtered), so a poisoned lock is used as it is.
    LIVE.get_or_init(Mutex::default).lock().unwrap_or_else(PoisonError::into_inner)
}

pub(super) fn register_source(metrics: &Arc<SourceMetrics>) {
    let mut live = live();
    live.sources.retain(|w| w.strong_count() > 0);
    live.sources.push(Arc::downgrade(metrics));
}

pub(super) fn state_named(name: String, make: impl FnOnce(String) -> Arc<StateMetrics>) -> Arc<StateMetrics> {
    let mut live = live();
    if let Some(existing) = live.states.get(&name).and_then(Weak::upgrade) {
        return existing;
    }
    live.states.retain(|_, w| w.strong_count() > 0);
    let metrics = make(name.clone());
    live.states.insert(name, Arc::downgrade(&metrics));
    metrics
}

pub(crate) fn register_sink(sink: &Arc<SinkShared>) {
    let mut live = live();
    live.sinks.retain(|w| w.strong_count() > 0);
    live.sinks.push(Arc::downgrade(sink));
}

/// Adds `collector`'s families to every scrape while it is alive (it is held weakly: drop the
/// last `Arc` to remove it). For families that none of Tideline's own types cover, e.g. a
/// connector's client statistics. Its family names must not repeat Tideline's.
///
/// ```
/// use std::sync::Arc;
/// use tideline::runtime::metrics::{self, Collector};
/// use tideline::runtime::metrics::prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
/// use tideline::runtime::metrics::prometheus_client::metrics::gauge::ConstGauge;
///
/// #[derive(Debug)]
/// struct Connections;
/// impl Collector for Connections {
///     fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
///         let gauge = ConstGauge::new(3i64);
///         gauge.encode(encoder.encode_descriptor("doc_connections", "Open connections.", None, gauge.metric_type())?)
///     }
/// }
///
/// let collector = Arc::new(Connections);
/// metrics::register_collector(&collector);
/// assert!(metrics::encode_text().contains("doc_connections 3"));
/// drop(collector);
/// assert!(!metrics::encode_text().contains("doc_connections"));
/// ```
pub fn register_collector<C: Collector>(collector: &Arc<C>) {
    let weak: Weak<dyn Collector> = Arc::downgrade(collector) as Weak<dyn Collector>;
    let mut live = live();
    live.collectors.retain(|w| w.strong_count() > 0);
    live.collectors.push(weak);
}

/// One partition of a log-based consumer (a Kafka source), as exported in
/// `tideline_kafka_consumer_lag{topic,partition}` and
/// `tideline_kafka_committed_offset{topic,partition}`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConsumerPartition {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The log end offset minus the consumer's position (`None`: not known yet).
    pub lag: Option<i64>,
    /// The last offset committed for the group (`None`: nothing committed yet).
    pub committed_offset: Option<i64>,
}

/// Per-partition offsets of a consumer, for the `tideline_kafka_*` families. The Kafka
/// connector's statistics implement it and call [`register_consumer_offsets`]; a partition
/// is exported with what it reports at each scrape.
pub trait ConsumerOffsets: Send + Sync + 'static {
    /// The partitions this consumer reads in this process, with their lag and committed
    /// offsets.
    fn consumer_partitions(&self) -> Vec<ConsumerPartition>;
}

/// Exports `offsets` (held weakly) as `tideline_kafka_consumer_lag{topic,partition}` and
/// `tideline_kafka_committed_offset{topic,partition}` while it is alive.
///
/// ```
/// use std::sync::Arc;
/// use tideline::runtime::metrics::{self, ConsumerOffsets, ConsumerPartition};
///
/// struct Fixed;
/// impl ConsumerOffsets for Fixed {
///     fn consumer_partitions(&self) -> Vec<ConsumerPartition> {
///         vec![ConsumerPartition { topic: "doc-topic".into(), partition: 0, lag: Some(5), committed_offset: None }]
///     }
/// }
///
/// let offsets = Arc::new(Fixed);
/// metrics::register_consumer_offsets(&offsets);
/// assert!(metrics::encode_text().contains(r#"tideline_kafka_consumer_lag{topic="doc-topic",partition="0"} 5"#));
/// ```
pub fn register_consumer_offsets<T: ConsumerOffsets>(offsets: &Arc<T>) {
    let weak: Weak<dyn ConsumerOffsets> = Arc::downgrade(offsets) as Weak<dyn ConsumerOffsets>;
    let mut live = live();
    live.consumers.retain(|w| w.strong_count() > 0);
    live.consumers.push(weak);
}

/// Statistics of the checkpoints of this process, exported as
/// `tideline_checkpoint_duration_seconds`, `tideline_checkpoint_size_bytes` (both of the last
/// checkpoint) and `tideline_last_checkpoint_timestamp_seconds` once a checkpoint has been
/// recorded. The checkpoint coordinator creates one and calls [`record`](Self::record) after
/// each checkpoint it completes.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use tideline::runtime::metrics::{self, CheckpointMetrics};
///
/// let checkpoints = CheckpointMetrics::new();
/// checkpoints.record(Duration::from_millis(1500), 4096, SystemTime::now());
/// assert_eq!(checkpoints.count(), 1);
/// assert!(metrics::encode_text().contains("tideline_checkpoint_size_bytes 4096"));
/// ```
#[derive(Debug, Default)]
pub struct CheckpointMetrics {
    last: Mutex<Option<CheckpointRecord>>,
}

#[derive(Clone, Copy, Debug)]
struct CheckpointRecord {
    duration: Duration,
    size_bytes: u64,
    completed: SystemTime,
    count: u64,
}

impl CheckpointMetrics {
    /// New statistics (nothing recorded yet), registered for export while alive.
    pub fn new() -> Arc<Self> {
        let metrics = Arc::new(CheckpointMetrics::default());
        let mut live = live();
        live.checkpoints.retain(|w| w.strong_count() > 0);
        live.checkpoints.push(Arc::downgrade(&metrics));
        metrics
    }

    /// Records a completed checkpoint: how long it took, how many bytes it wrote, and when it
    /// completed.
    pub fn record(&self, duration: Duration, size_bytes: u64, completed: SystemTime) {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let count = last.map_or(0, |l| l.count) + 1;
        *last = Some(CheckpointRecord { duration, size_bytes, completed, count });
    }

    /// Checkpoints recorded so far.
    pub fn count(&self) -> u64 {
        self.last.lock().unwrap_or_else(PoisonError::into_inner).map_or(0, |l| l.count)
    }

    fn last(&self) -> Option<CheckpointRecord> {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The late-record series of one partition's counters: `(policy label, count)`.
///
/// Sources do not decide lateness (operators do, per window: DESIGN §3); what a source counts
/// is the rule it applies, records behind its partition's watermark, under the label
/// `policy="behind_watermark"`. Operators' late records are
/// `tideline_operator_late_records_total`.
fn late_series(stats: &PartitionStats) -> [(&'static str, u64); 1] {
    [("behind_watermark", stats.behind_watermark)]
}

/// One source's numbers, merged over the `SourceMetrics` of that name.
#[derive(Default)]
struct SourceView {
    partitions: BTreeMap<PartitionId, PartitionStats>,
    watermark: Option<Time>,
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Encodes one family: a descriptor, then one sample per label set.
fn family<L, M>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    metric_type: MetricType,
    samples: impl IntoIterator<Item = (L, M)>,
) -> fmt::Result
where
    L: prometheus_client::encoding::EncodeLabelSet,
    M: EncodeMetric,
{
    let mut samples = samples.into_iter().peekable();
    if samples.peek().is_none() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, value) in samples {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

type Labels = Vec<(&'static str, String)>;

/// Tideline's own families, read from the live registry at each scrape.
#[derive(Debug)]
struct Tideline;

impl Collector for Tideline {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let (sources, states, sinks, checkpoints, consumers) = {
            let mut live = live();
            live.sources.retain(|w| w.strong_count() > 0);
            live.states.retain(|_, w| w.strong_count() > 0);
            live.sinks.retain(|w| w.strong_count() > 0);
            live.checkpoints.retain(|w| w.strong_count() > 0);
            live.consumers.retain(|w| w.strong_count() > 0);
            (
                live.sources.iter().filter_map(Weak::upgrade).collect::<Vec<_>>(),
                live.states.values().filter_map(Weak::upgrade).collect::<Vec<_>>(),
                live.sinks.iter().filter_map(Weak::upgrade).collect::<Vec<_>>(),
                live.checkpoints.iter().filter_map(Weak::upgrade).collect::<Vec<_>>(),
                live.consumers.iter().filter_map(Weak::upgrade).collect::<Vec<_>>(),
            )
        };
        let e = &mut encoder;

        let mut by_source: BTreeMap<String, SourceView> = BTreeMap::new();
        for metrics in &sources {
            let view = by_source.entry(metrics.name().to_string()).or_default();
            for (partition, stats) in metrics.partitions() {
                let merged = view.partitions.entry(partition).or_default();
                merged.add(&stats);
                merged.watermark = merged.watermark.max(stats.watermark);
                merged.idle = stats.idle;
            }
            if let Some(w) = metrics.watermark() {
                view.watermark = Some(view.watermark.map_or(w, |v| v.min(w)));
            }
        }
        let per_partition = |f: &dyn Fn(&PartitionStats) -> i64| {
            by_source
                .iter()
                .flat_map(|(source, view)| view.partitions.iter().map(move |(p, stats)| (source, p, stats)))
                .map(|(source, p, stats)| {
                    (vec![("source", source.clone()), ("partition", p.to_string())] as Labels, f(stats))
                })
                .collect::<Vec<_>>()
        };
        family(
            e,
            "tideline_source_records",
            "Records read (decoded; on time or late), per source partition.",
            MetricType::Counter,
            per_partition(&|s| s.records as i64).into_iter().map(|(l, v)| (l, ConstCounter::new(v as u64))),
        )?;
        family(
            e,
            "tideline_source_late_records",
            "Late records per source partition and late policy (drop, side_output, accept).",
            MetricType::Counter,
            by_source.iter().flat_map(|(source, view)| {
                view.partitions.iter().flat_map(move |(p, stats)| {
                    late_series(stats).into_iter().map(move |(policy, n)| {
                        let labels: Labels =
                            vec![("source", source.clone()), ("partition", p.to_string()), ("policy", policy.into())];
                        (labels, ConstCounter::new(n))
                    })
                })
            }),
        )?;
        family(
            e,
            "tideline_source_dead_letters",
            "Records that failed to decode (sent to the dead letters), per source.",
            MetricType::Counter,
            by_source.iter().map(|(source, view)| {
                let n: u64 = view.partitions.values().map(|s| s.dead_letters).sum();
                (vec![("source", source.clone())] as Labels, ConstCounter::new(n))
            }),
        )?;
        family(
            e,
            "tideline_source_watermark_ms",
            "The watermark of each source partition, in event-time milliseconds since the Unix epoch.",
            MetricType::Gauge,
            per_partition(&|s| i64::try_from(s.watermark).unwrap_or(i64::MAX))
                .into_iter()
                .map(|(l, v)| (l, ConstGauge::new(v))),
        )?;
        let now = now_ms();
        family(
            e,
            "tideline_watermark_lag_ms",
            "Wall-clock time minus the source's watermark (the minimum over its active partitions), in \
             milliseconds; absent while no partition is active.",
            MetricType::Gauge,
            by_source.iter().filter_map(|(source, view)| {
                let w = i64::try_from(view.watermark?).ok()?;
                Some((vec![("source", source.clone())] as Labels, ConstGauge::new(now.saturating_sub(w))))
            }),
        )?;
        family(
            e,
            "tideline_source_idle",
            "1 while a source partition is idle (not holding the watermark back), else 0.",
            MetricType::Gauge,
            per_partition(&|s| i64::from(s.idle)).into_iter().map(|(l, v)| (l, ConstGauge::new(v))),
        )?;

        let mut states: Vec<(String, Arc<StateMetrics>)> =
            states.into_iter().filter_map(|s| Some((s.name()?.to_string(), s))).collect();
        states.sort_by(|a, b| a.0.cmp(&b.0));
        family(
            e,
            "tideline_operator_state_entries",
            "Live state entries of a stateful operator, per worker (of this process).",
            MetricType::Gauge,
            states.iter().flat_map(|(name, s)| {
                s.reported().into_iter().map(move |(worker, n)| {
                    let labels: Labels = vec![("operator", name.clone()), ("worker", worker.to_string())];
                    (labels, ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX)))
                })
            }),
        )?;
        family(
            e,
            "tideline_operator_late_records",
            "Records an operator found late (their state already released), per operator.",
            MetricType::Counter,
            states
                .iter()
                .map(|(name, s)| (vec![("operator", name.clone())] as Labels, ConstCounter::new(s.late_skipped()))),
        )?;

        let mut by_sink: BTreeMap<String, u64> = BTreeMap::new();
        for sink in &sinks {
            *by_sink.entry(sink.name().to_string()).or_default() += sink.records_written();
        }
        family(
            e,
            "tideline_sink_records",
            "Updates (changelog rows) a sink's writers wrote, per sink.",
            MetricType::Counter,
            by_sink.into_iter().map(|(sink, n)| (vec![("sink", sink)] as Labels, ConstCounter::new(n))),
        )?;

        let mut partitions: Vec<ConsumerPartition> = consumers.iter().flat_map(|c| c.consumer_partitions()).collect();
        partitions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        let consumer_labels = |p: &ConsumerPartition| -> Labels {
            vec![("topic", p.topic.clone()), ("partition", p.partition.to_string())]
        };
        family(
            e,
            "tideline_kafka_consumer_lag",
            "Log end offset minus the consumer's position, per topic partition read in this process.",
            MetricType::Gauge,
            partitions.iter().filter_map(|p| Some((consumer_labels(p), ConstGauge::new(p.lag?)))),
        )?;
        family(
            e,
            "tideline_kafka_committed_offset",
            "The offset last committed for the consumer group, per topic partition read in this process.",
            MetricType::Gauge,
            partitions.iter().filter_map(|p| Some((consumer_labels(p), ConstGauge::new(p.committed_offset?)))),
        )?;

        // Several coordinators in one process would be a bug; the most recent checkpoint wins.
        let last = checkpoints.iter().filter_map(|c| c.last()).max_by_key(|l| l.completed);
        if let Some(last) = last {
            let single = |v: f64| [(Labels::new(), ConstGauge::new(v))];
            family(
                e,
                "tideline_checkpoint_duration_seconds",
                "How long the last checkpoint took.",
                MetricType::Gauge,
                single(last.duration.as_secs_f64()),
            )?;
            family(
                e,
                "tideline_checkpoint_size_bytes",
                "Bytes the last checkpoint wrote.",
                MetricType::Gauge,
                [(Labels::new(), ConstGauge::new(i64::try_from(last.size_bytes).unwrap_or(i64::MAX)))],
            )?;
            family(
                e,
                "tideline_last_checkpoint_timestamp_seconds",
                "When the last checkpoint completed, in seconds since the Unix epoch.",
                MetricType::Gauge,
                single(last.completed.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())),
            )?;
        }
        Ok(())
    }
}

/// A collector registered by a connector, held for the duration of one scrape.
#[derive(Debug)]
struct Held(Arc<dyn Collector>);

impl Collector for Held {
    fn encode(&self, encoder: DescriptorEncoder) -> fmt::Result {
        self.0.encode(encoder)
    }
}

/// The metrics of this process in the Prometheus text exposition format (version 0.0.4), as
/// [`serve`](super::serve) answers `GET /metrics`.
///
/// Families (all prefixed `tideline_`; counters end in `_total`):
///
/// | family | type | labels |
/// |---|---|---|
/// | `tideline_source_records_total` | counter | `source`, `partition` |
/// | `tideline_source_late_records_total` | counter | `source`, `partition`, `policy` |
/// | `tideline_source_dead_letters_total` | counter | `source` |
/// | `tideline_source_watermark_ms` | gauge | `source`, `partition` |
/// | `tideline_watermark_lag_ms` | gauge | `source` |
/// | `tideline_source_idle` | gauge | `source`, `partition` |
/// | `tideline_operator_state_entries` | gauge | `operator`, `worker` |
/// | `tideline_operator_late_records_total` | counter | `operator` |
/// | `tideline_sink_records_total` | counter | `sink` |
/// | `tideline_kafka_consumer_lag` | gauge | `topic`, `partition` |
/// | `tideline_kafka_committed_offset` | gauge | `topic`, `partition` |
/// | `tideline_checkpoint_duration_seconds` | gauge | |
/// | `tideline_checkpoint_size_bytes` | gauge | |
/// | `tideline_last_checkpoint_timestamp_seconds` | gauge | |
///
/// A family appears once something of its kind is alive (a source, a named operator, a sink,
/// a registered consumer, a recorded checkpoint), then the collectors of
/// [`register_collector`] follow.
pub fn encode_text() -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Tideline));
    let collectors: Vec<Arc<dyn Collector>> = {
        let mut live = live();
        live.collectors.retain(|w| w.strong_count() > 0);
        live.collectors.iter().filter_map(Weak::upgrade).collect()
    };
    for collector in collectors {
        registry.register_collector(Box::new(Held(collector)));
    }
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
        .expect("writing to a String does not fail");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The samples of `text` whose line starts with `prefix`.
    /// Whether series naming `name` leave the exposition within a second of their owner being
    /// dropped: a scrape running meanwhile (another test's, in parallel) holds what it is
    /// encoding until it is done.
    fn disappears(name: &str) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        while encode_text().contains(name) {
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        true
    }

    fn lines<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
        text.lines().filter(|l| l.starts_with(prefix)).collect()
    }

    #[test]
    fn sources_of_one_name_are_merged_and_dropped_ones_disappear() {
        let (a, b) = (SourceMetrics::new("unit-merge"), SourceMetrics::new("unit-merge"));
        let stats = |records, dead_letters, behind_watermark| PartitionStats {
            records,
            dead_letters,
            behind_watermark,
            ..PartitionStats::default()
        };
        a.report(0, &BTreeMap::from([(0, stats(10, 1, 2))]), [(0, 5_000, false)].into_iter(), Some(5_000));
        b.report(1, &BTreeMap::from([(1, stats(7, 2, 0))]), [(1, 9_000, true)].into_iter(), None);
        let text = encode_text();
        assert_eq!(
            lines(&text, "tideline_source_records_total{source=\"unit-merge\""),
            [
                "tideline_source_records_total{source=\"unit-merge\",partition=\"0\"} 10",
                "tideline_source_records_total{source=\"unit-merge\",partition=\"1\"} 7"
            ]
        );
        assert_eq!(
            lines(&text, "tideline_source_dead_letters_total{source=\"unit-merge\""),
            ["tideline_source_dead_letters_total{source=\"unit-merge\"} 3"]
        );
        assert!(text.contains(
            "tideline_source_late_records_total{source=\"unit-merge\",partition=\"0\",policy=\"behind_watermark\"} 2\n"
        ));
        assert!(text.contains("tideline_source_watermark_ms{source=\"unit-merge\",partition=\"1\"} 9000\n"));
        assert!(text.contains("tideline_source_idle{source=\"unit-merge\",partition=\"1\"} 1\n"));
        assert!(text.contains("tideline_source_idle{source=\"unit-merge\",partition=\"0\"} 0\n"));
        // The watermark lag is the wall clock minus the watermark (5 s after the epoch).
        let lag = lines(&text, "tideline_watermark_lag_ms{source=\"unit-merge\"}");
        let lag: i64 = lag[0].rsplit(' ').next().unwrap().parse().unwrap();
        assert!((now_ms() - 5_000 - lag).abs() < 60_000, "lag {lag}");
        drop((a, b));
        assert!(disappears("unit-merge"));
    }

    #[test]
    fn named_state_exports_the_workers_that_reported() {
        let state = StateMetrics::named("unit-state");
        assert!(!encode_text().contains("entries{operator=\"unit-state\""), "nothing reported yet");
        state.set(2, 4, 11);
        state.add_late_skipped(3);
        let text = encode_text();
        assert_eq!(
            lines(&text, "tideline_operator_state_entries{operator=\"unit-state\""),
            ["tideline_operator_state_entries{operator=\"unit-state\",worker=\"2\"} 11"]
        );
        assert!(text.contains("tideline_operator_late_records_total{operator=\"unit-state\"} 3\n"));
        // Unnamed gauges are the program's own: every exported series has an operator name.
        let unnamed = StateMetrics::new();
        unnamed.set(0, 1, 5);
        assert!(unnamed.name().is_none());
        assert!(!encode_text().contains("operator=\"\""));
        drop(state);
        assert!(disappears("unit-state"));
    }

    #[test]
    fn families_have_types_and_counters_end_in_total() {
        let source = SourceMetrics::new("unit-types");
        source.report(0, &BTreeMap::new(), [(0, 0, false)].into_iter(), Some(0));
        let text = encode_text();
        assert!(text.contains("# TYPE tideline_source_records_total counter\n"));
        assert!(text.contains("# TYPE tideline_source_watermark_ms gauge\n"));
        assert!(text.contains("# TYPE tideline_source_dead_letters_total counter\n"));
    }
}

#[cfg(test)]
mod dashboard {
    use super::*;

    /// The `tideline_*` names in `text`.
    fn names(text: &str) -> std::collections::BTreeSet<&str> {
        text.match_indices("tideline_")
            .map(|(at, _)| {
                let end =
                    text[at..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).map_or(text.len(), |e| at + e);
                (&text[at..end], text[end..].starts_with("::"))
            })
            // `tideline_examples::…` is a Rust path, not a metric.
            .filter(|(name, path)| !path && !name.ends_with('_'))
            .map(|(name, _)| name)
            .collect()
    }

    struct Offsets;
    impl ConsumerOffsets for Offsets {
        fn consumer_partitions(&self) -> Vec<ConsumerPartition> {
            vec![ConsumerPartition { topic: "t".into(), partition: 0, lag: Some(1), committed_offset: Some(2) }]
        }
    }

    /// The Grafana dashboard and the deployment guide name only families that exist, and every
    /// family has a panel.
    #[test]
    fn dashboard_and_guide_use_the_exported_family_names() {
        let source = SourceMetrics::new("dashboard-source");
        source.report(0, &BTreeMap::new(), [(0, 0, false)].into_iter(), Some(0));
        let state = StateMetrics::named("dashboard-state");
        state.set(0, 1, 1);
        let _sink = crate::sink::SinkHandle::new("dashboard-sink");
        let offsets = Arc::new(Offsets);
        register_consumer_offsets(&offsets);
        let checkpoints = CheckpointMetrics::new();
        checkpoints.record(Duration::from_secs(1), 1, SystemTime::now());
        let text = encode_text();
        let exported: std::collections::BTreeSet<&str> =
            text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split(' ').next()).collect();
        let dashboard = include_str!("../../../../docs/grafana-dashboard.json");
        let guide = include_str!("../../../../docs/deployment.md");
        for (what, used) in [("dashboard", names(dashboard)), ("deployment guide", names(guide))] {
            let unknown: Vec<_> = used.iter().filter(|n| !exported.contains(*n)).collect();
            assert!(unknown.is_empty(), "the {what} names families that are not exported: {unknown:?}");
        }
        let without_panel: Vec<_> = exported.iter().filter(|n| !names(dashboard).contains(*n)).collect();
        assert!(without_panel.is_empty(), "families without a dashboard panel: {without_panel:?}");
    }
}
