//! Joins: equi-joins of collections, interval joins, window joins and as-of (temporal)
//! stream–table joins (DESIGN §6).
//!
//! | family | trait | matches | state |
//! |---|---|---|---|
//! | [`equi`] | [`Joins`] | equal keys, as of every time (inner, left, right, full outer) | both inputs' live records, until retracted |
//! | [`interval`] | [`IntervalJoin`] | equal keys, `a.time + lower ≤ b.time ≤ a.time + upper` (inner, left, right, full) | records until no partner can still come |
//! | [`window`] | [`WindowJoin`] | equal keys, both in the same tumbling or sliding window (inner, left, right, full) | records of live windows |
//! | [`asof`] | [`AsOfJoin`] | a stream event with its key's table value as of the event's time (inner, left) | the table, and its recent history |
//!
//! Every join's output is a changelog: a deterministic function of the timestamped input
//! collections, identical for any number of workers. The temporal joins (interval, window,
//! as-of) read an event's time from its data ([`Event::time`](crate::time::Event)), decide which
//! records are too late from data alone (a record's dataflow time against its event time and
//! the allowed lateness), send too-late records to an explicit late output and count them in
//! [`StateMetrics::late_skipped`](crate::runtime::metrics::StateMetrics::late_skipped), and release
//! their state as the frontier passes the last time it can matter.
//!
//! Nexmark's joins map onto them directly: q3 (`person ⋈ auction`, filtered) and q20
//! (`bid ⋈ auction`) are [`Joins::inner_join`]s of collections keyed by id; q8 (new persons
//! and new auctions by seller within a tumbling window) is a [`WindowJoin::window_join`].

pub mod asof;
mod core;
pub mod equi;
pub mod interval;
pub mod window;

use differential_dataflow::VecCollection;

use crate::time::Time;

pub use asof::AsOfJoin;
pub use equi::Joins;
pub use interval::{IntervalBounds, IntervalJoin};
pub use window::WindowJoin;

/// The records a two-sided temporal join found too late, one collection per side, each record
/// unchanged at the dataflow time it arrived.
pub struct TooLate<'scope, L: 'static, R: 'static> {
    /// Too-late records of the left input.
    pub left: VecCollection<'scope, Time, L>,
    /// Too-late records of the right input.
    pub right: VecCollection<'scope, Time, R>,
}
