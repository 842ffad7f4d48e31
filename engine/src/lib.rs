//! Tideline: event-time stream processing on timely dataflow and differential dataflow.
//!
//! Streams enter as timestamped update collections whose progress frontiers are their
//! event-time watermarks; windows and the other temporal operators are maintained
//! incrementally across worker threads and processes. The semantic contract (time,
//! watermarks, late data, emission, bounded state) is in `DESIGN.md`; this crate implements
//! it.
//!
//! # Architecture
//!
//! | module | what it holds |
//! |---|---|
//! | [`time`] | event time ([`Time`]), [`Event`], durations; [`time::watermark`]: strategies and per-partition tracking |
//! | [`late`] | the late policy and the late / dead-letter record types |
//! | [`source`] | the generic watermarked source operator, and in-memory sources |
//! | [`window`] | tumbling, sliding and session windows, aggregators |
//! | [`dedup`] | deduplication by key within a horizon |
//! | [`topn`] | top-N per group of a changelog, ranked |
//! | [`join`] | equi, interval, window and as-of joins |
//! | [`table`] | upsert tables and tables from aggregations: the stream–table duality |
//! | [`read_model`] | tables and aggregates queryable from other threads while the dataflow runs |
//! | [`sink`] | sinks that write a time once it is complete; the collecting sink |
//! | [`control`] | out-of-band control channels between the workers of all processes |
//! | [`flow`] | flow control: sources wait for slow sinks instead of buffering |
//! | [`metrics`] | source counters and operator state gauges, readable while running |
//! | [`run`] | worker / cluster configuration and helpers that run dataflows |
//! | [`error`] | the engine's error type |
//!
//! Every collection is a differential [`VecCollection`] with timestamp [`Time`] (ms of event
//! time) and `isize` diffs: every output is a changelog.
//!
//! ```
//! use std::time::Duration;
//! use tideline::prelude::*;
//! use tideline::source::{SourceConfig, memory};
//! use tideline::window::aggregate::Sum;
//!
//! let events = vec![Event::new(1_000, 1u32, 5i64), Event::new(2_000, 1, 7), Event::new(11_000, 1, 1)];
//! let sums = tideline::run::collect(1, move |scope| {
//!     let events = events.clone();
//!     memory::from_iter(scope, SourceConfig::new("events"), move || events.into_iter())
//!         .data
//!         .tumbling(Duration::from_secs(10))
//!         .aggregate(Sum)
//! });
//! let values: Vec<i64> = sums.iter().map(|(r, _, _)| r.value).collect();
//! assert_eq!(values, vec![12, 1]);
//! ```

pub mod control;
pub mod dedup;
pub mod error;
pub mod flow;
pub mod join;
mod keyed;
pub mod late;
pub mod metrics;
pub mod read_model;
pub mod run;
pub mod sink;
pub mod source;
pub mod table;
pub mod time;
pub mod topn;
pub mod window;

pub use differential_dataflow;
pub use differential_dataflow::VecCollection;
pub use error::{Error, Result};
pub use time::{Event, EventTime, Time};
pub use timely;

// The README's and the guide's code blocks are compiled and run as doctests, so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
mod readme {}
#[cfg(doctest)]
#[doc = include_str!("../../docs/concepts.md")]
mod guide_concepts {}
#[cfg(doctest)]
#[doc = include_str!("../../docs/operators.md")]
mod guide_operators {}

/// Hash maps with a fast, fixed-seed hasher for operator state (keys come from the data, so
/// iteration order never decides results; a fixed seed keeps runs reproducible).
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::FixedState>;

/// Data that can live in a collection and travel between workers and processes: the bounds
/// of differential's `ExchangeData`, plus `Hash` (for exchange by key).
pub trait ExchangeData: differential_dataflow::ExchangeData + std::hash::Hash {}
impl<T: differential_dataflow::ExchangeData + std::hash::Hash> ExchangeData for T {}

/// The operator traits and core types, for `use tideline::prelude::*`.
pub mod prelude {
    pub use crate::dedup::{Dedup, Keep};
    pub use crate::join::{AsOfJoin, IntervalBounds, IntervalJoin, Joins, WindowJoin};
    pub use crate::late::{DeadLetter, LatePolicy, LateRecord};
    pub use crate::read_model::{Publish, ReadModel};
    pub use crate::sink::Sink;
    pub use crate::table::{Table, Tables, Upsert};
    pub use crate::time::watermark::WatermarkStrategy;
    pub use crate::time::{Event, EventTime, Time};
    pub use crate::topn::{Ranked, TopN};
    pub use crate::window::session::Sessions;
    pub use crate::window::{Emit, Window, WindowResult, WindowSpec, Windows};
    pub use differential_dataflow::VecCollection;
}
