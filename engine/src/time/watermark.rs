//! Watermark strategies and per-partition watermark tracking (DESIGN §2).
//!
//! A watermark `W` is the promise "no more records with event time `< W`". Each source
//! partition has its own watermark, driven by the partition's records through a
//! [`WatermarkStrategy`]; a source's watermark is the minimum over its *active* partitions,
//! and a partition silent for longer than the idle timeout stops holding it back until it
//! sends data again.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::time::{Time, millis};

type CustomFn = Arc<dyn Fn(Time, Time) -> Time + Send + Sync>;

#[derive(Clone)]
enum Kind {
    Bounded(u64),
    Custom(CustomFn),
}

/// How a partition's watermark follows its records.
///
/// ```
/// use std::time::Duration;
/// use tideline::time::watermark::WatermarkStrategy;
///
/// // W = max event time seen - 5 s; partitions silent for 30 s stop holding W back.
/// let strategy = WatermarkStrategy::bounded_out_of_orderness(Duration::from_secs(5))
///     .with_idle_timeout(Duration::from_secs(30));
/// let mut partition = strategy.generator();
/// partition.observe(10_000);
/// partition.observe(8_000);
/// assert_eq!(partition.watermark(), 5_000);
/// ```
#[derive(Clone)]
pub struct WatermarkStrategy {
    kind: Kind,
    idle_timeout: Option<Duration>,
}

impl fmt::Debug for WatermarkStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("WatermarkStrategy");
        match &self.kind {
            Kind::Bounded(d) => s.field("out_of_orderness_ms", d),
            Kind::Custom(_) => s.field("custom", &true),
        };
        s.field("idle_timeout", &self.idle_timeout).finish()
    }
}

impl WatermarkStrategy {
    /// `W = max_seen - bound`: records may arrive up to `bound` behind the newest one seen.
    pub fn bounded_out_of_orderness(bound: Duration) -> Self {
        WatermarkStrategy { kind: Kind::Bounded(millis(bound)), idle_timeout: None }
    }

    /// `W = max_seen`: event times never decrease within a partition (equal times are fine).
    pub fn monotonic() -> Self {
        Self::bounded_out_of_orderness(Duration::ZERO)
    }

    /// A custom generator: `f(event_time, current_watermark)` returns the new watermark after
    /// an on-time record. Watermarks never go back: the result is clamped to be at least the
    /// current watermark.
    ///
    /// ```
    /// use tideline::time::watermark::WatermarkStrategy;
    ///
    /// // Punctuated: only records on a whole second move the watermark.
    /// let strategy = WatermarkStrategy::custom(|t, w| if t % 1000 == 0 { t } else { w });
    /// let mut p = strategy.generator();
    /// p.observe(1_500);
    /// assert_eq!(p.watermark(), 0);
    /// p.observe(2_000);
    /// assert_eq!(p.watermark(), 2_000);
    /// ```
    pub fn custom(f: impl Fn(Time, Time) -> Time + Send + Sync + 'static) -> Self {
        WatermarkStrategy { kind: Kind::Custom(Arc::new(f)), idle_timeout: None }
    }

    /// Partitions that send nothing for `timeout` (processing time) stop holding the source's
    /// watermark back, until they send data again.
    pub fn with_idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = Some(timeout);
        self
    }

    /// The idle timeout, if any.
    pub fn idle_timeout(&self) -> Option<Duration> {
        self.idle_timeout
    }

    /// The out-of-orderness bound in ms, for the strategies that have one.
    ///
    /// Such watermarks are a function of the running maximum of event times, which lets a
    /// source split one ordered input (a file) across workers without changing results.
    pub fn out_of_orderness_ms(&self) -> Option<u64> {
        match self.kind {
            Kind::Bounded(bound) => Some(bound),
            Kind::Custom(_) => None,
        }
    }

    /// A fresh generator for one partition, with watermark at the minimum time.
    pub fn generator(&self) -> PartitionWatermark {
        PartitionWatermark { kind: self.kind.clone(), max_seen: None, watermark: 0 }
    }

    /// A generator for a partition whose earlier records (read elsewhere) had maximum event
    /// time `max_seen`. Only meaningful for bounded out-of-orderness.
    pub fn generator_after(&self, max_seen: Option<Time>) -> PartitionWatermark {
        let mut generator = self.generator();
        if let Some(t) = max_seen {
            generator.observe(t);
        }
        generator
    }
}

/// The watermark state of one partition.
#[derive(Clone)]
pub struct PartitionWatermark {
    kind: Kind,
    max_seen: Option<Time>,
    watermark: Time,
}

impl fmt::Debug for PartitionWatermark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PartitionWatermark")
            .field("max_seen", &self.max_seen)
            .field("watermark", &self.watermark)
            .finish()
    }
}

impl PartitionWatermark {
    /// The current watermark: records with event time below it are late.
    pub fn watermark(&self) -> Time {
        self.watermark
    }

    /// The largest event time observed.
    pub fn max_seen(&self) -> Option<Time> {
        self.max_seen
    }

    /// Whether a record at `time` is late for this partition.
    pub fn is_late(&self, time: Time) -> bool {
        time < self.watermark
    }

    /// Advances the watermark after an on-time record at `time`.
    pub fn observe(&mut self, time: Time) {
        self.max_seen = Some(self.max_seen.map_or(time, |m| m.max(time)));
        let next = match &self.kind {
            Kind::Bounded(bound) => self.max_seen.unwrap_or(0).saturating_sub(*bound),
            Kind::Custom(f) => f(time, self.watermark),
        };
        self.watermark = self.watermark.max(next);
    }

    /// Raises the watermark to at least `time` (used when an idle partition returns behind
    /// the source's watermark: what it sends below `time` is late).
    pub fn raise_to(&mut self, time: Time) {
        self.watermark = self.watermark.max(time);
    }
}

/// Identifies a partition within one source (a file, a Kafka topic-partition, a generator
/// split). Chosen by the source and stable across runs.
pub type PartitionId = u64;

#[derive(Debug)]
struct Tracked {
    id: PartitionId,
    generator: PartitionWatermark,
    last_active: Instant,
    idle: bool,
    finished: bool,
}

/// The watermarks of the partitions one worker reads, and their minimum.
///
/// Partitions live in slots (stable indices) so that per-record lookups are cheap.
#[derive(Debug)]
pub struct WatermarkTracker {
    strategy: WatermarkStrategy,
    slots: Vec<Tracked>,
    index: BTreeMap<PartitionId, usize>,
}

impl WatermarkTracker {
    /// A tracker with no partitions.
    pub fn new(strategy: WatermarkStrategy) -> Self {
        WatermarkTracker { strategy, slots: Vec::new(), index: BTreeMap::new() }
    }

    /// The strategy the tracker applies.
    pub fn strategy(&self) -> &WatermarkStrategy {
        &self.strategy
    }

    /// Starts tracking a partition and returns its slot; an already tracked partition keeps
    /// its state. A new partition's watermark starts at least at `floor`, the watermark the
    /// source has already published.
    pub fn add(
        &mut self,
        partition: PartitionId,
        mut generator: PartitionWatermark,
        now: Instant,
        floor: Time,
    ) -> usize {
        if let Some(slot) = self.index.get(&partition) {
            return *slot;
        }
        generator.raise_to(floor);
        let slot = self.slots.len();
        self.slots.push(Tracked { id: partition, generator, last_active: now, idle: false, finished: false });
        self.index.insert(partition, slot);
        slot
    }

    /// The slot of a tracked partition.
    pub fn slot(&self, partition: PartitionId) -> Option<usize> {
        self.index.get(&partition).copied()
    }

    /// The number of slots (tracked partitions, finished ones included).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no partition is tracked.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The generator in `slot`.
    pub fn generator(&self, slot: usize) -> &PartitionWatermark {
        &self.slots[slot].generator
    }

    /// The partition id in `slot`.
    pub fn id(&self, slot: usize) -> PartitionId {
        self.slots[slot].id
    }

    /// Marks the partition in `slot` as having sent data at `now`. If it was idle it becomes
    /// active again, and its watermark is raised to `floor` (the watermark the source has
    /// already published: what it sends below that is late). Returns its generator.
    pub fn touch(&mut self, slot: usize, now: Instant, floor: Time) -> &mut PartitionWatermark {
        let tracked = &mut self.slots[slot];
        tracked.last_active = now;
        if tracked.idle {
            tracked.idle = false;
            tracked.generator.raise_to(floor);
        }
        &mut tracked.generator
    }

    /// Marks a partition as finished: it no longer holds the watermark back.
    pub fn finish(&mut self, slot: usize) {
        self.slots[slot].finished = true;
    }

    /// Whether the partition in `slot` has finished.
    pub fn is_finished(&self, slot: usize) -> bool {
        self.slots[slot].finished
    }

    /// Marks partitions silent for longer than the idle timeout as idle.
    pub fn detect_idle(&mut self, now: Instant) {
        if let Some(timeout) = self.strategy.idle_timeout {
            for tracked in &mut self.slots {
                if !tracked.finished && now.duration_since(tracked.last_active) >= timeout {
                    tracked.idle = true;
                }
            }
        }
    }

    /// Whether the partition in `slot` is currently idle.
    pub fn is_idle(&self, slot: usize) -> bool {
        self.slots[slot].idle
    }

    /// The minimum watermark over active (not idle, not finished) partitions, or `None` when
    /// no partition is active.
    pub fn watermark(&self) -> Option<Time> {
        self.slots.iter().filter(|t| !t.idle && !t.finished).map(|t| t.generator.watermark()).min()
    }

    /// Whether every tracked partition has finished.
    pub fn all_finished(&self) -> bool {
        self.slots.iter().all(|t| t.finished)
    }

    /// Each tracked partition: id, watermark, idle.
    pub fn partitions(&self) -> impl Iterator<Item = (PartitionId, Time, bool)> + '_ {
        self.slots.iter().map(|t| (t.id, t.generator.watermark(), t.idle))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_watermark_follows_the_maximum() {
        let mut p = WatermarkStrategy::bounded_out_of_orderness(Duration::from_millis(10)).generator();
        assert_eq!(p.watermark(), 0);
        p.observe(100);
        assert_eq!(p.watermark(), 90);
        p.observe(95);
        assert_eq!(p.watermark(), 90);
        assert!(p.is_late(89));
        assert!(!p.is_late(90));
        p.observe(5);
        assert_eq!(p.watermark(), 90, "a watermark never goes back");
    }

    #[test]
    fn custom_watermarks_never_regress() {
        let mut p = WatermarkStrategy::custom(|t, _| t / 2).generator();
        p.observe(100);
        p.observe(10);
        assert_eq!(p.watermark(), 50);
    }

    #[test]
    fn idle_partitions_stop_holding_back() {
        let strategy = WatermarkStrategy::monotonic().with_idle_timeout(Duration::from_millis(50));
        let start = Instant::now();
        let mut tracker = WatermarkTracker::new(strategy.clone());
        let a = tracker.add(7, strategy.generator(), start, 0);
        let b = tracker.add(9, strategy.generator(), start, 0);
        tracker.touch(a, start, 0).observe(1_000);
        tracker.touch(b, start, 0).observe(10);
        assert_eq!(tracker.watermark(), Some(10));
        let later = start + Duration::from_millis(60);
        tracker.touch(a, later, 0).observe(2_000);
        tracker.detect_idle(later);
        assert!(tracker.is_idle(b));
        assert_eq!(tracker.watermark(), Some(2_000));
        // Partition 9 returns: it holds the watermark again, from the published floor.
        let p1 = tracker.touch(b, later, 2_000);
        assert!(p1.is_late(20));
        assert_eq!(tracker.watermark(), Some(2_000));
    }
}
