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
//! | [`time`] | event time ([`Time`]), [`Event`], durations; [`time::watermark`]: strategies and per-partition tracking; [`time::late`]: the late policy and the late / dead-letter record types |
//! | [`source`] | the generic watermarked source operator, and in-memory sources |
//! | [`state`] | the options every stateful operator shares ([`state::Temporal`]), and the temporal driver they all run on |
//! | [`window`] | tumbling, sliding and session windows, aggregators |
//! | [`keyed`] | deduplication by key within a horizon ([`keyed::dedup`]), top-N per group ([`keyed::topn`]), keyed process functions: user state and event-time timers ([`keyed::process`]) |
//! | [`join`] | equi, interval, window and as-of joins |
//! | [`table`] | upsert tables and tables from aggregations: the stream–table duality; [`table::read_model`]: tables queryable from other threads while the dataflow runs |
//! | [`sink`] | sinks that write a time once it is complete; the collecting sink |
//! | [`checkpoint`] | checkpoints and recovery: the checkpoint store, the coordinator, what sources and sinks resume from |
//! | [`runtime`] | worker / cluster configuration and helpers that run dataflows; control channels ([`runtime::control`]), flow control ([`runtime::flow`]), metrics ([`runtime::metrics`]) |
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
//! let sums = tideline::runtime::collect(1, move |scope| {
//!     let events = events.clone();
//!     memory::from_iter(scope, SourceConfig::new("events"), move || events.into_iter())
//!         .data
//!         .tumbling(Duration::from_secs(10))
//!         .aggregate(Sum)
//! });
//! let values: Vec<i128> = sums.iter().map(|(r, _, _)| r.value).collect();
//! assert_eq!(values, vec![12, 1]);
//! ```

pub mod checkpoint;
pub mod error;
pub mod join;
pub mod keyed;
pub mod runtime;
pub mod sink;
pub mod source;
pub mod state;
pub mod table;
pub mod time;
pub mod window;

pub use differential_dataflow;
pub use differential_dataflow::VecCollection;
pub use error::{Error, Result};
pub use runtime::ExchangeData;
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
#[cfg(doctest)]
#[doc = include_str!("../../docs/deployment.md")]
mod guide_deployment {}

/// The operator traits and core types, for `use tideline::prelude::*`.
pub mod prelude {
    pub use crate::join::{AsOfJoin, IntervalBounds, IntervalJoin, Joins, WindowJoin};
    pub use crate::keyed::dedup::{Dedup, Keep};
    pub use crate::keyed::process::{KeyedProcessFunction, Process};
    pub use crate::keyed::topn::{Ranked, TopN};
    pub use crate::sink::Sink;
    pub use crate::state::{Emit, Temporal, TemporalBuilder};
    pub use crate::table::read_model::{Publish, ReadModel};
    pub use crate::table::{Table, Tables, Upsert};
    pub use crate::time::late::{DeadLetter, LatePolicy};
    pub use crate::time::watermark::WatermarkStrategy;
    pub use crate::time::{Event, EventTime, Time};
    pub use crate::window::session::Sessions;
    pub use crate::window::{Window, WindowResult, WindowSpec, Windows};
    pub use differential_dataflow::VecCollection;
}
