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
//! slide; a window's result carries the timestamp `end - 1`, its last instant.
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
//! Records accepted late by their source arrive at the watermark `W > end - 1`; the window's
//! result is corrected at `W` (retraction of the old result, insertion of the new one). A
//! record arriving at or after `end + allowed_lateness` finds its window released: if it is
//! too late for every window it belongs to, it goes to the operator's late output
//! ([`WindowedCollection::aggregate_with_late`]); if only for some, those windows skip it and
//! count it.
//!
//! # State
//!
//! One accumulator per live window and key, plus the pending updates of times the frontier
//! has not passed. A window's state is released when the frontier passes
//! `end + allowed_lateness`, without any retraction downstream. Live entries are reported to
//! [`StateMetrics`] if one is attached.
//!
//! # Checkpointing
//!
//! Window state is a function of the input records whose windows are still live; a checkpoint
//! records those inputs (DESIGN §8).

pub mod aggregate;
mod operator;
pub mod session;

use std::sync::Arc;
use std::time::Duration;

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::runtime::ExchangeData;
use crate::runtime::metrics::StateMetrics;
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
        (first..=last).step_by(slide as usize).map(move |start| Window { start, end: start + size })
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
        (pane + 1) * self.pane - 1
    }

    /// The end of the last window containing pane `pane`.
    pub(crate) fn last_end_of_pane(&self, pane: u64) -> Time {
        let start = pane * self.pane;
        start - start % self.slide + self.size
    }
}

/// When window results are emitted (DESIGN §4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Emit {
    /// One result per window and key once the frontier passes the window's end; afterwards
    /// only explicit late corrections.
    #[default]
    Final,
    /// The result is refined at every event time at which it changes (retraction of the old
    /// result, insertion of the new one).
    Updates,
}

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
        WindowedCollection {
            events: self,
            spec,
            emit: Emit::Final,
            allowed_lateness: 0,
            name: None,
            state: None,
            pre_aggregate: true,
        }
    }

    fn tumbling(self, size: Duration) -> WindowedCollection<'scope, K, V> {
        self.windows(WindowSpec::tumbling(size).expect("window size must be at least 1ms"))
    }

    fn sliding(self, size: Duration, slide: Duration) -> WindowedCollection<'scope, K, V> {
        self.windows(WindowSpec::sliding(size, slide).expect("window size and slide must be at least 1ms"))
    }
}

/// A windowed collection, configured fluently and then aggregated.
pub struct WindowedCollection<'scope, K: 'static, V: 'static> {
    events: VecCollection<'scope, Time, Event<K, V>>,
    spec: WindowSpec,
    emit: Emit,
    allowed_lateness: u64,
    name: Option<String>,
    state: Option<Arc<StateMetrics>>,
    pre_aggregate: bool,
}

impl<'scope, K, V> WindowedCollection<'scope, K, V>
where
    K: ExchangeData,
    V: ExchangeData,
{
    /// Sets the emission mode (default [`Emit::Final`]).
    pub fn emit(mut self, emit: Emit) -> Self {
        self.emit = emit;
        self
    }

    /// Keeps window state for `lateness` after the window's end, to apply late corrections.
    /// Match the source's `LatePolicy::Accept { allowed_lateness }`.
    pub fn allowed_lateness(mut self, lateness: Duration) -> Self {
        self.allowed_lateness = millis(lateness);
        self
    }

    /// Names the operator (for logs, diagnostics and metrics).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Reports live state entries (window × key) to `metrics`.
    pub fn state_metrics(mut self, metrics: Arc<StateMetrics>) -> Self {
        self.state = Some(metrics);
        self
    }

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

    /// Aggregates each window and key, and returns the records that arrived too late for
    /// every window they belong to (at or after `end + allowed_lateness`), unchanged.
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
