//! Tumbling and sliding (hopping) windows by key (DESIGN §4–5); session windows are in
//! [`session`].
//!
//! ```
//! use std::time::Duration;
//! use tideline::prelude::*;
//! use tideline::source::{SourceConfig, memory};
//! use tideline::window::aggregate::Count;
//!
//! let events = vec![
//!     Event::new(1_000, 'a', 1i64),
//!     Event::new(4_000, 'a', 1),
//!     Event::new(12_000, 'a', 1),
//!     Event::new(11_000, 'b', 1),
//! ];
//! let results = tideline::runtime::collect(2, move |scope| {
//!     let events = events.clone();
//!     let config = SourceConfig::new("events")
//!         .watermarks(WatermarkStrategy::bounded_out_of_orderness(Duration::from_secs(5)));
//!     memory::from_iter(scope, config, move || events.into_iter())
//!         .data
//!         .tumbling(Duration::from_secs(10))
//!         .aggregate(Count)
//! });
//! let rows: Vec<_> = results.iter().map(|(r, _time, diff)| (r.window.start, r.key, r.value, *diff)).collect();
//! assert_eq!(rows, vec![(0, 'a', 2, 1), (10_000, 'a', 1, 1), (10_000, 'b', 1, 1)]);
//! ```
//!
//! # Event time
//!
//! A record is assigned to windows by the event time in its data ([`Event::time`]), not by
//! the timestamp it travels at. Windows are `[start, end)` with starts at multiples of the
//! slide; a window's result carries the timestamp `end - 1`, its last instant. Windows near
//! the top of the time range end at `Time::MAX` at the latest (their ends saturate).
//!
//! # Emission
//!
//! [`Emit::Final`] (the default) emits one result per window and key when the frontier passes
//! `end - 1`; afterwards only late corrections. [`Emit::Updates`] emits the refined result
//! at every event time at which it changes (a retraction of the old result and the new one).
//! Either way the output is a deterministic function of the input collection: identical for
//! any number of workers.
//!
//! # Late data
//!
//! Lateness is decided per window, as in Flink and Kafka Streams (DESIGN §3). A record behind
//! the watermark arrives at the watermark `W` with its event time `t < W` in its data. For each
//! window containing `t`:
//!
//! - not yet emitted (`W ≤ end - 1`): the record counts in it silently, no correction;
//! - emitted, and `end + allowed_lateness > W`: the record counts in it, and its result is
//!   corrected at `W` (retraction of the old result, insertion of the new);
//! - otherwise the window has expired and the record skips it.
//!
//! A record is **late** only if every window containing it has expired: it goes to the
//! operator's late output ([`WindowedCollection::aggregate_with_late`], per its
//! [`LatePolicy`](crate::time::late::LatePolicy)) and is counted in
//! [`StateMetrics::late_skipped`](crate::runtime::metrics::StateMetrics::late_skipped). With an allowed lateness of 0 an emitted result is never
//! corrected.
//!
//! For example, with tumbling windows of 3 s and no allowed lateness, a record at 1 980
//! arriving behind watermark 1 985 still counts in `[0, 3 000)` (emitted at 2 999); one at
//! 1 980 arriving behind watermark 3 100 is late. With sliding windows of 10 s every 2 s, a
//! record at 7 000 arriving behind watermark 11 000 counts in `[4 000, 14 000)` and later
//! windows, and skips `[0, 10 000)`, which was emitted at 9 999.
//!
//! Retractions (negative diffs) are applied if the aggregator can undo a record
//! ([`Aggregator::retractable`]); otherwise they go to the late output, uncounted.
//!
//! # State
//!
//! One accumulator per live window and key (O(1) for the built-in aggregators but the exact
//! ones), and the records' pre-aggregated updates until the frontier passes their time. A
//! window's state is released when the frontier passes `end + allowed_lateness - 1`, without
//! any retraction downstream. Live entries are reported to the operator's
//! [`StateMetrics`](crate::runtime::metrics::StateMetrics).
//!
//! # Checkpointing
//!
//! Window state is one accumulator per live window and key. A checkpoint does not copy it: a
//! restore re-reads the input from the oldest record of a live window and rebuilds the same
//! accumulators, since whether a window is open, emitted or released depends on dataflow time
//! only (see [`crate::checkpoint`]). (Copying it would need pane deltas to travel at their
//! records' times: pre-aggregated per batch, they travel at the batch's, so a delta applied
//! before a snapshot time may hold records that a restore reads again after it.)

pub mod aggregate;
mod operator;
pub mod session;

use std::time::Duration;

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::runtime::ExchangeData;
use crate::state::{Temporal, temporal_builder};
use crate::time::{Event, Time, millis};
use crate::window::aggregate::Aggregator;

/// A window `[start, end)` of event time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Window {
    /// First instant in the window (ms).
    pub start: Time,
    /// First instant after the window (ms).
    pub end: Time,
}

impl Window {
    /// The window's last instant, `end - 1`: the timestamp of its final result.
    pub fn max_time(&self) -> Time {
        self.end - 1
    }

    /// Whether `time` falls in the window.
    pub fn contains(&self, time: Time) -> bool {
        self.start <= time && time < self.end
    }
}

/// The shape of tumbling or sliding windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WindowSpec {
    size: u64,
    slide: u64,
    pane: u64,
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

impl WindowSpec {
    /// Tumbling windows of `size`: `[k·size, (k+1)·size)`.
    pub fn tumbling(size: Duration) -> Result<Self> {
        Self::sliding(size, size)
    }

    /// Sliding (hopping) windows of `size`, one starting every `slide`.
    pub fn sliding(size: Duration, slide: Duration) -> Result<Self> {
        let (size, slide) = (millis(size), millis(slide));
        if size == 0 || slide == 0 {
            return Err(Error::Config(format!(
                "window size and slide must be at least 1ms (got size {size}ms, slide {slide}ms)"
            )));
        }
        Ok(WindowSpec { size, slide, pane: gcd(size, slide) })
    }

    /// Window size in ms.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Slide in ms (equal to the size for tumbling windows).
    pub fn slide(&self) -> u64 {
        self.slide
    }

    /// The windows containing `time`, earliest first.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tideline::window::{Window, WindowSpec};
    ///
    /// let spec = WindowSpec::sliding(Duration::from_secs(10), Duration::from_secs(5)).unwrap();
    /// let windows: Vec<Window> = spec.windows_of(12_000).collect();
    /// assert_eq!(windows, vec![
    ///     Window { start: 5_000, end: 15_000 },
    ///     Window { start: 10_000, end: 20_000 },
    /// ]);
    /// ```
    pub fn windows_of(&self, time: Time) -> impl Iterator<Item = Window> + use<> {
        let last = time - time % self.slide;
        let first = if time >= self.size { (time - self.size) / self.slide * self.slide + self.slide } else { 0 };
        let (size, slide) = (self.size, self.slide);
        (first..=last).step_by(slide as usize).map(move |start| Window { start, end: start.saturating_add(size) })
    }

    /// Panes are the common refinement of all windows: width `gcd(size, slide)`.
    pub(crate) fn pane_of(&self, time: Time) -> u64 {
        time / self.pane
    }

    /// The windows containing pane `pane`, earliest first.
    pub(crate) fn windows_of_pane(&self, pane: u64) -> impl Iterator<Item = Window> + use<> {
        // A window contains the whole pane iff it contains the pane's first instant.
        self.windows_of(pane * self.pane)
    }

    /// The last instant of pane `pane`.
    pub(crate) fn pane_max_time(&self, pane: u64) -> Time {
        (pane * self.pane).saturating_add(self.pane - 1)
    }

    /// The end of the last window containing pane `pane`.
    pub(crate) fn last_end_of_pane(&self, pane: u64) -> Time {
        let start = pane * self.pane;
        (start - start % self.slide).saturating_add(self.size)
    }
}

pub use crate::state::Emit;

/// One window's aggregate for one key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WindowResult<K, O> {
    /// The window.
    pub window: Window,
    /// The key.
    pub key: K,
    /// The aggregate.
    pub value: O,
}

/// Windowing on collections of [`Event`]s.
pub trait Windows<'scope, K, V> {
    /// Windows of the given shape, to aggregate with [`WindowedCollection::aggregate`].
    fn windows(self, spec: WindowSpec) -> WindowedCollection<'scope, K, V>;

    /// Tumbling windows of `size`. Panics if `size` is zero; use [`Windows::windows`] with a
    /// validated [`WindowSpec`] for sizes that come from user input.
    fn tumbling(self, size: Duration) -> WindowedCollection<'scope, K, V>;

    /// Sliding windows of `size` starting every `slide`. Panics if either is zero; use
    /// [`Windows::windows`] with a validated [`WindowSpec`] for user input.
    fn sliding(self, size: Duration, slide: Duration) -> WindowedCollection<'scope, K, V>;
}

impl<'scope, K, V> Windows<'scope, K, V> for VecCollection<'scope, Time, Event<K, V>>
where
    K: ExchangeData,
    V: ExchangeData,
{
    fn windows(self, spec: WindowSpec) -> WindowedCollection<'scope, K, V> {
        WindowedCollection { events: self, spec, temporal: Temporal::default(), pre_aggregate: true }
    }

    fn tumbling(self, size: Duration) -> WindowedCollection<'scope, K, V> {
        self.windows(WindowSpec::tumbling(size).expect("window size must be at least 1ms"))
    }

    fn sliding(self, size: Duration, slide: Duration) -> WindowedCollection<'scope, K, V> {
        self.windows(WindowSpec::sliding(size, slide).expect("window size and slide must be at least 1ms"))
    }
}

/// A windowed collection, configured fluently (emission, allowed lateness, late policy, name,
/// metrics: [`TemporalBuilder`](crate::state::TemporalBuilder)) and then aggregated.
pub struct WindowedCollection<'scope, K: 'static, V: 'static> {
    events: VecCollection<'scope, Time, Event<K, V>>,
    spec: WindowSpec,
    temporal: Temporal,
    pre_aggregate: bool,
}

temporal_builder!(WindowedCollection<'scope, K, V>);

impl<'scope, K, V> WindowedCollection<'scope, K, V>
where
    K: ExchangeData,
    V: ExchangeData,
{
    /// Turns off local pre-aggregation before the exchange (on by default; off only to
    /// measure what it buys).
    pub fn pre_aggregate(mut self, enabled: bool) -> Self {
        self.pre_aggregate = enabled;
        self
    }

    /// Aggregates each window and key with `aggregator`.
    pub fn aggregate<A>(self, aggregator: A) -> VecCollection<'scope, Time, WindowResult<K, A::Output>>
    where
        A: Aggregator<V>,
    {
        self.aggregate_with_late(aggregator).0
    }

    /// Aggregates each window and key, and returns the records that could not be applied,
    /// unchanged: those late for every window they belong to, and retractions the aggregator
    /// cannot undo.
    pub fn aggregate_with_late<A>(
        self,
        aggregator: A,
    ) -> (VecCollection<'scope, Time, WindowResult<K, A::Output>>, VecCollection<'scope, Time, Event<K, V>>)
    where
        A: Aggregator<V>,
    {
        operator::window_aggregate(self, aggregator)
    }
}
