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
//! - [`Emit::Final`] (default): it appears once no partner can arrive any more — at
//!   `a.time + upper − lower + allowed_lateness` (the last time a partner behind the watermark
//!   is still admitted; `a.time + upper` with `lower = 0` and no allowed lateness), or at `a`'s
//!   own dataflow time, if later — if `a` has no partner then. It is never corrected (only a
//!   retraction of all of `a`'s partners brings it back).
//! - [`Emit::Updates`]: it appears together with `a`, and is retracted when a partner arrives.
//!
//! Right records' unmatched rows `(None, b)` are symmetric, at `b.time − lower + upper +
//! allowed_lateness`.
//!
//! Formally, with `L(τ)`, `R(τ)` the admitted records (see below) present at dataflow time `τ`,
//! the output as of `τ` holds every matching pair of `L(τ) × R(τ)`, and for outer sides each
//! record with no partner in the other side's set whose unmatched time has come.
//!
//! # Late data
//!
//! Lateness is decided per record's interval (DESIGN §3): a record's interval is the event
//! times of its possible partners, `[t + lower, t + upper]` for a left record at `t` and
//! `[t − upper, t − lower]` for a right one. An update (insertion or retraction) arriving at
//! dataflow time `τ` — a record behind the watermark arrives at the watermark — is *admitted*
//! while its interval's end plus the allowed lateness has not passed (`τ ≤ t + upper +
//! allowed_lateness` on the left, `τ ≤ t − lower + allowed_lateness` on the right): it matches
//! every partner as any record does, at `τ`. Otherwise it is **late**: it takes no part in the
//! join, goes to the late output ([`IntervalJoinBuilder::inner_with_late`] and siblings, per the
//! [`LatePolicy`](crate::time::late::LatePolicy)) and is counted in
//! [`StateMetrics::late_skipped`](crate::runtime::metrics::StateMetrics::late_skipped). For
//! example, with `IntervalBounds::after(10 s)` and no allowed lateness, a click at 8 000
//! arriving behind watermark 12 000 still pairs with impressions in `[−2 000, 8 000]`
//! that are held; an impression at 1 000 arriving behind watermark 12 000 is late (its clicks
//! were due by 11 000).
//!
//! # State
//!
//! Each side's live records (one entry per distinct key, event time and value). A record is
//! released once the frontier passes `t + (upper − lower) + allowed_lateness` (on the left
//! `t + upper − lower + L`, on the right `t − lower + upper + L`): after that no admitted
//! partner can arrive. (A late retraction of the record itself may still come while its own
//! interval admits it; it is applied against the partners, which are still held.) Release
//! emits nothing downstream. Live entries are reported to the operator's
//! [`StateMetrics`](crate::runtime::metrics::StateMetrics).
//!
//! # Checkpointing
//!
//! The state is each side's held records. A checkpoint does not copy them: a restore re-reads
//! the input from the oldest record held (see [`crate::checkpoint`]).

use std::sync::Arc;
use std::time::Duration;

use differential_dataflow::VecCollection;

use crate::error::{Error, Result};
use crate::join::TooLate;
use crate::join::core::{Item, Shape, prepare, temporal_join};
use crate::runtime::ExchangeData;
use crate::state::{Emit, Temporal, temporal_builder};
use crate::time::{Event, Time, millis};

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
        IntervalJoinBuilder { left: self, right: other, bounds, temporal: Temporal::default() }
    }
}

/// An interval join being configured (emission, allowed lateness, late policy, name, metrics:
/// [`TemporalBuilder`](crate::state::TemporalBuilder)): see [the module documentation](self)
/// for its semantics; pick the join's kind (`inner`, `left`, `right`, `full`) to build it.
pub struct IntervalJoinBuilder<'scope, K: 'static, V1: 'static, V2: 'static> {
    left: VecCollection<'scope, Time, Event<K, V1>>,
    right: VecCollection<'scope, Time, Event<K, V2>>,
    bounds: IntervalBounds,
    temporal: Temporal,
}

temporal_builder!(IntervalJoinBuilder<'scope, K, V1, V2>);

type WithLate<'scope, D, K, V1, V2> = (VecCollection<'scope, Time, D>, TooLate<'scope, Event<K, V1>, Event<K, V2>>);

impl<'scope, K: ExchangeData, V1: ExchangeData, V2: ExchangeData> IntervalJoinBuilder<'scope, K, V1, V2> {
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
        let IntervalJoinBuilder { left, right, bounds, mut temporal } = self;
        let IntervalBounds { lower, upper } = bounds;
        let name = temporal.name_or(|| format!("IntervalJoin([{lower}ms, {upper}ms])"));
        let metrics = temporal.metrics_named(&name);
        let (lateness, policy) = (temporal.allowed_lateness, temporal.late);
        // A record is admitted while its interval's end plus the allowed lateness has not
        // passed; it is held until the last time a partner can be admitted, and in Final mode
        // its unmatched row appears then (so it is never corrected). Times in i128: bounds are
        // within ±2⁶² ms.
        let final_mode = temporal.emit == Emit::Final;
        let width = i128::from(upper) - i128::from(lower);
        let clamp = |t: i128| Time::try_from(t.max(0)).unwrap_or(Time::MAX);
        let admit = move |time: Time, end_offset: i64, at: Time| -> Option<(Time, Time)> {
            let end = i128::from(time) + i128::from(end_offset) + i128::from(lateness);
            if i128::from(at) > end {
                return None;
            }
            // The last admission of a partner: its interval ends `width - end_offset` after ours.
            let release = clamp(end + width - i128::from(end_offset));
            let close = if final_mode { release } else { 0 };
            Some((close, release))
        };
        let left_items = prepare(
            left,
            &format!("{name}: left"),
            Arc::clone(&metrics),
            policy,
            move |event: &Event<K, V1>, at, out| {
                let Some((close, release)) = admit(event.time, upper, at) else { return 0 };
                let item =
                    Item { group: event.key.clone(), time: event.time, value: event.value.clone(), close, release };
                out.push((item, at));
                1
            },
        );
        let right_items = prepare(
            right,
            &format!("{name}: right"),
            Arc::clone(&metrics),
            policy,
            move |event: &Event<K, V2>, at, out| {
                let Some((close, release)) = admit(event.time, -lower, at) else { return 0 };
                let item =
                    Item { group: event.key.clone(), time: event.time, value: event.value.clone(), close, release };
                out.push((item, at));
                1
            },
        );
        let shape = Shape { lower, upper, outer_left, outer_right };
        let joined = temporal_join(left_items.0, right_items.0, shape, temporal.driven(name), result);
        (joined, TooLate { left: left_items.1, right: right_items.1 })
    }
}
