//! Interval joins: events of two streams with equal keys whose event times are close.
//!
//! A left event `a` and a right event `b` with the same key match when
//! `a.time + lower ≤ b.time ≤ a.time + upper` ([`IntervalBounds`]; `lower` may be negative).
//! Inner, left, right and full outer variants; outer variants report a record that found no
//! partner once the frontier proves none can come.
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use tideline::prelude::*;
//! use tideline::source::{SourceConfig, memory};
//!
//! // Clicks within 10 s after an impression of the same ad; impressions never clicked.
//! let impressions = vec![Event::new(1_000, 7u32, 'i'), Event::new(50_000, 7, 'j')];
//! let clicks = vec![Event::new(4_000, 7u32, 'c'), Event::new(30_000, 7, 'd')];
//! let joined = tideline::runtime::collect(2, move |scope| {
//!     let (impressions, clicks) = (impressions.clone(), clicks.clone());
//!     let impressions = memory::from_iter(scope, SourceConfig::new("impressions"), move || impressions.into_iter());
//!     let clicks = memory::from_iter(scope, SourceConfig::new("clicks"), move || clicks.into_iter());
//!     impressions.data.interval_join(clicks.data, IntervalBounds::after(Duration::from_secs(10))).left()
//! });
//! assert_eq!(joined, vec![
//!     // The pair, as soon as both records are there.
//!     ((Event::new(1_000, 7, 'i'), Some(Event::new(4_000, 7, 'c'))), 4_000, 1),
//!     // The impression at 50 s, once no click within 10 s of it can come.
//!     ((Event::new(50_000, 7, 'j'), None), 60_000, 1),
//! ]);
//! ```
//!
//! # Event time
//!
//! Records match by the event times in their data ([`Event::time`]). A pair is emitted at the
//! later of the two records' dataflow times, that is as soon as both are present, in every
//! emission mode: later records never undo a match, so a pair is final when it appears (only a
//! retraction of one of its records retracts it). The unmatched row `(a, None)` of a left
//! record depends on the mode ([`Emit`]):
//!
//! - [`Emit::Final`] (default): it appears at `a.time + upper` (or at `a`'s own dataflow time,
//!   if later), the last event time of a possible partner, if `a` has no partner then; it is
//!   retracted if a (late) partner arrives afterwards, and comes back if all partners are
//!   retracted.
//! - [`Emit::Updates`]: it appears together with `a`, and is retracted when a partner arrives.
//!
//! Right records' unmatched rows `(None, b)` are symmetric, with `b.time − lower`.
//!
//! Formally, with `L(τ)`, `R(τ)` the admitted records (see below) present at dataflow time `τ`,
//! the output as of `τ` holds every matching pair of `L(τ) × R(τ)`, and for outer sides each
//! record with no partner in the other side's set whose unmatched time has come.
//!
//! # Late data
//!
//! An update (insertion or retraction) of a record with event time `t` arriving at dataflow
//! time `τ` is *admitted* if `τ ≤ t + allowed_lateness`; otherwise it is too late: it takes no
//! part in the join, goes to the late output ([`IntervalJoinBuilder::inner_with_late`] and
//! siblings) and is counted in [`StateMetrics::late_skipped`]. Records accepted late by a
//! source (`LatePolicy::Accept { allowed_lateness }`) arrive at the watermark `W ≤ t + L`, so a
//! join with the same allowed lateness admits them all; they match as any record does, at `W`,
//! and correct the unmatched rows they affect.
//!
//! # State
//!
//! Each side's live records (one entry per distinct key, event time and value). A left record
//! is released once the frontier passes `t + upper + allowed_lateness` and a right one once it
//! passes `t − lower + allowed_lateness`: after that no admitted partner can arrive. (A late
//! retraction of the record itself may still come, up to `t + allowed_lateness`; it is applied
//! against the partners, which are still held.) Release emits nothing downstream. Live entries
//! are reported to [`StateMetrics`] if one is attached.
//!
//! # Checkpointing
//!
//! The state is a function of the admitted input records that are not yet released: a
//! checkpoint records those inputs (DESIGN §8).

use std::sync::Arc;
use std::time::Duration;

use differential_dataflow::VecCollection;

use crate::error::{Error, Result};
use crate::join::TooLate;
use crate::join::core::{Item, Shape, prepare, shift, temporal_join};
use crate::runtime::ExchangeData;
use crate::runtime::metrics::StateMetrics;
use crate::time::{Event, Time, millis};
use crate::window::Emit;

/// The match condition of an interval join: `left.time + lower ≤ right.time ≤ left.time + upper`,
/// in milliseconds.
///
/// ```
/// use std::time::Duration;
/// use tideline::join::IntervalBounds;
///
/// let bounds = IntervalBounds::new(-1_000, 2_000).unwrap();
/// assert!(bounds.matches(10_000, 9_000));
/// assert!(bounds.matches(10_000, 12_000));
/// assert!(!bounds.matches(10_000, 12_001));
/// assert_eq!(IntervalBounds::around(Duration::from_secs(1), Duration::from_secs(2)), bounds);
/// assert!(IntervalBounds::new(5, 1).is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IntervalBounds {
    lower: i64,
    upper: i64,
}

/// Bounds beyond ±2⁶² ms (146 million years) are rejected, so that shifted times never overflow.
const MAX_BOUND: i64 = 1 << 62;

impl IntervalBounds {
    /// Partners of a left record at `t` are right records in `[t + lower, t + upper]` (ms).
    /// Fails if `lower > upper` or a bound exceeds ±2⁶² ms.
    pub fn new(lower: i64, upper: i64) -> Result<Self> {
        if lower > upper {
            return Err(Error::Config(format!(
                "interval join bounds must satisfy lower <= upper (got lower {lower}ms, upper {upper}ms)"
            )));
        }
        if lower < -MAX_BOUND || upper > MAX_BOUND {
            return Err(Error::Config(format!("interval join bounds must be within ±2^62 ms (got {lower}, {upper})")));
        }
        Ok(IntervalBounds { lower, upper })
    }

    /// Right records from `before` before to `after` after the left record.
    pub fn around(before: Duration, after: Duration) -> Self {
        let clamp = |d: Duration| i64::try_from(millis(d)).unwrap_or(MAX_BOUND).min(MAX_BOUND);
        IntervalBounds { lower: -clamp(before), upper: clamp(after) }
    }

    /// Right records at most `within` after the left record (and not before it).
    pub fn after(within: Duration) -> Self {
        Self::around(Duration::ZERO, within)
    }

    /// The lower bound, in ms.
    pub fn lower(&self) -> i64 {
        self.lower
    }

    /// The upper bound, in ms.
    pub fn upper(&self) -> i64 {
        self.upper
    }

    /// Whether a left record at `left` and a right record at `right` match.
    pub fn matches(&self, left: Time, right: Time) -> bool {
        let delta = i128::from(right) - i128::from(left);
        i128::from(self.lower) <= delta && delta <= i128::from(self.upper)
    }
}

/// Interval joins on collections of [`Event`]s.
pub trait IntervalJoin<'scope, K: 'static, V1: 'static> {
    /// Joins with `other` on equal keys and event times within `bounds`; configure the result
    /// on the returned builder and pick the join's kind (`inner`, `left`, `right`, `full`).
    fn interval_join<V2: ExchangeData>(
        self,
        other: VecCollection<'scope, Time, Event<K, V2>>,
        bounds: IntervalBounds,
    ) -> IntervalJoinBuilder<'scope, K, V1, V2>;
}

impl<'scope, K: ExchangeData, V1: ExchangeData> IntervalJoin<'scope, K, V1>
    for VecCollection<'scope, Time, Event<K, V1>>
{
    fn interval_join<V2: ExchangeData>(
        self,
        other: VecCollection<'scope, Time, Event<K, V2>>,
        bounds: IntervalBounds,
    ) -> IntervalJoinBuilder<'scope, K, V1, V2> {
        IntervalJoinBuilder {
            left: self,
            right: other,
            bounds,
            emit: Emit::Final,
            allowed_lateness: 0,
            name: None,
            state: None,
        }
    }
}

/// An interval join being configured: see [the module documentation](self) for its semantics.
pub struct IntervalJoinBuilder<'scope, K: 'static, V1: 'static, V2: 'static> {
    left: VecCollection<'scope, Time, Event<K, V1>>,
    right: VecCollection<'scope, Time, Event<K, V2>>,
    bounds: IntervalBounds,
    emit: Emit,
    allowed_lateness: u64,
    name: Option<String>,
    state: Option<Arc<StateMetrics>>,
}

/// The output of a two-sided join with its too-late records.
type WithLate<'scope, D, K, V1, V2> = (VecCollection<'scope, Time, D>, TooLate<'scope, Event<K, V1>, Event<K, V2>>);

impl<'scope, K: ExchangeData, V1: ExchangeData, V2: ExchangeData> IntervalJoinBuilder<'scope, K, V1, V2> {
    /// When unmatched rows of outer joins appear (default [`Emit::Final`]).
    pub fn emit(mut self, emit: Emit) -> Self {
        self.emit = emit;
        self
    }

    /// Admits updates up to `lateness` after their event time, and keeps state that long.
    /// Match the sources' `LatePolicy::Accept { allowed_lateness }`.
    pub fn allowed_lateness(mut self, lateness: Duration) -> Self {
        self.allowed_lateness = millis(lateness);
        self
    }

    /// Names the operators (for logs, diagnostics and metrics).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Reports live state entries (records held, both sides) and too-late records to `metrics`.
    pub fn state_metrics(mut self, metrics: Arc<StateMetrics>) -> Self {
        self.state = Some(metrics);
        self
    }

    /// Matching pairs.
    pub fn inner(self) -> VecCollection<'scope, Time, (Event<K, V1>, Event<K, V2>)> {
        self.inner_with_late().0
    }

    /// Matching pairs, and left records without a partner.
    pub fn left(self) -> VecCollection<'scope, Time, (Event<K, V1>, Option<Event<K, V2>>)> {
        self.left_with_late().0
    }

    /// Matching pairs, and right records without a partner.
    pub fn right(self) -> VecCollection<'scope, Time, (Option<Event<K, V1>>, Event<K, V2>)> {
        self.right_with_late().0
    }

    /// Matching pairs, and the records of either side without a partner.
    pub fn full(self) -> VecCollection<'scope, Time, (Option<Event<K, V1>>, Option<Event<K, V2>>)> {
        self.full_with_late().0
    }

    /// [`inner`](Self::inner), and the too-late records of each side.
    pub fn inner_with_late(self) -> WithLate<'scope, (Event<K, V1>, Event<K, V2>), K, V1, V2> {
        self.build(false, false, |k, l, r| {
            let (l, r) = (l.expect("pairs have a left record"), r.expect("inner joins emit only pairs"));
            (Event::new(l.0, k.clone(), l.1.clone()), Event::new(r.0, k.clone(), r.1.clone()))
        })
    }

    /// [`left`](Self::left), and the too-late records of each side.
    pub fn left_with_late(self) -> WithLate<'scope, (Event<K, V1>, Option<Event<K, V2>>), K, V1, V2> {
        self.build(true, false, |k, l, r| {
            let l = l.expect("left joins emit only rows with a left record");
            (Event::new(l.0, k.clone(), l.1.clone()), r.map(|r| Event::new(r.0, k.clone(), r.1.clone())))
        })
    }

    /// [`right`](Self::right), and the too-late records of each side.
    pub fn right_with_late(self) -> WithLate<'scope, (Option<Event<K, V1>>, Event<K, V2>), K, V1, V2> {
        self.build(false, true, |k, l, r| {
            let r = r.expect("right joins emit only rows with a right record");
            (l.map(|l| Event::new(l.0, k.clone(), l.1.clone())), Event::new(r.0, k.clone(), r.1.clone()))
        })
    }

    /// [`full`](Self::full), and the too-late records of each side.
    pub fn full_with_late(self) -> WithLate<'scope, (Option<Event<K, V1>>, Option<Event<K, V2>>), K, V1, V2> {
        self.build(true, true, |k, l, r| {
            (l.map(|l| Event::new(l.0, k.clone(), l.1.clone())), r.map(|r| Event::new(r.0, k.clone(), r.1.clone())))
        })
    }

    fn build<D, F>(self, outer_left: bool, outer_right: bool, result: F) -> WithLate<'scope, D, K, V1, V2>
    where
        D: ExchangeData,
        F: FnMut(&K, Option<(Time, &V1)>, Option<(Time, &V2)>) -> D + 'static,
    {
        let IntervalJoinBuilder { left, right, bounds, emit, allowed_lateness, name, state } = self;
        let IntervalBounds { lower, upper } = bounds;
        let name = name.unwrap_or_else(|| format!("IntervalJoin([{lower}ms, {upper}ms])"));
        let lateness = allowed_lateness;
        // A record's unmatched row appears at the last event time of a possible partner (Final),
        // or at once (Updates). Its state is needed until the last admissible arrival of a
        // partner, `t + upper + L` (left) or `t − lower + L` (right). Its own retractions may
        // arrive later (up to `t + L`): they re-create the entry, and since its partners'
        // entries are still held and no partner update can come any more, pairs and unmatched
        // rows (both linear in the record's count) are retracted exactly.
        let final_mode = emit == Emit::Final;
        let left_items =
            prepare(left, &format!("{name}: left"), state.clone(), move |event: &Event<K, V1>, at, out| {
                if at > event.time.saturating_add(lateness) {
                    return (0, 1);
                }
                let close = if final_mode { shift(event.time, upper).unwrap_or(0) } else { 0 };
                let release = shift(event.time.saturating_add(lateness), upper).unwrap_or(0);
                let item =
                    Item { group: event.key.clone(), time: event.time, value: event.value.clone(), close, release };
                out.push((item, at));
                (1, 0)
            });
        let right_items =
            prepare(right, &format!("{name}: right"), state.clone(), move |event: &Event<K, V2>, at, out| {
                if at > event.time.saturating_add(lateness) {
                    return (0, 1);
                }
                let close = if final_mode { shift(event.time, -lower).unwrap_or(0) } else { 0 };
                let release = shift(event.time.saturating_add(lateness), -lower).unwrap_or(0);
                let item =
                    Item { group: event.key.clone(), time: event.time, value: event.value.clone(), close, release };
                out.push((item, at));
                (1, 0)
            });
        let shape = Shape { lower, upper, outer_left, outer_right };
        let joined = temporal_join(left_items.0, right_items.0, shape, &name, state, result);
        (joined, TooLate { left: left_items.1, right: right_items.1 })
    }
}
