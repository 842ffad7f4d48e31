//! Aggregations over the records of a window: count, sum, min, max, avg, all four at once,
//! distinct count, top-N and custom reducers.
//!
//! An [`Aggregator`] keeps an accumulator per window and key. Accumulators are *mergeable*
//! (so records are pre-aggregated on the worker that reads them, before the exchange, and a
//! hot key does not serialize the pipeline).
//!
//! Most streams are append-only: a source never retracts, and a late record *adds* to a window
//! (the operator retracts the old *result*, which it keeps, not an input). [`Count`], [`Sum`],
//! [`Avg`], [`Min`], [`Max`] and [`AllStats`] keep O(1) state per window and key. Aggregations
//! over a changelog — a collection whose records are retracted again, such as a table's — need
//! accumulators that can undo a record: [`Count`], [`Sum`] and [`Avg`] can; for the others use
//! [`ExactMin`], [`ExactMax`] and [`ExactStats`], which keep every distinct value (as
//! [`DistinctCount`], [`Top`] and [`Reduce`] do). A retraction reaching an aggregator that
//! cannot undo it ([`Aggregator::retractable`] is false) is not applied: the window operators
//! send it to their late output and count it.
//!
//! Sums are kept in `i128`: summing `i64` values cannot overflow (it would take 2⁶⁴ values of
//! the largest magnitude).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::rc::Rc;

use serde::{Deserialize, Serialize};

use crate::runtime::ExchangeData;

/// A mergeable aggregation of values `V`.
pub trait Aggregator<V>: Clone + 'static {
    /// The per-window, per-key accumulator (travels between workers, so it is serde data).
    type Acc: ExchangeData + Default;
    /// The aggregate's result.
    type Output: ExchangeData;

    /// Adds `value` with multiplicity `diff` (negative to retract, only if
    /// [`retractable`](Self::retractable)).
    fn add(&self, acc: &mut Self::Acc, value: &V, diff: isize);
    /// Merges another accumulator into `acc`.
    fn merge(&self, acc: &mut Self::Acc, other: Self::Acc);
    /// The result for an accumulator holding `count` records (net of retractions, never 0).
    fn finish(&self, acc: &Self::Acc, count: i64) -> Self::Output;
    /// Whether a record can be retracted (`add` with a negative diff). Aggregators that keep
    /// O(1) state, such as [`Min`], cannot: they never see a retraction (the window operators
    /// send retractions they cannot apply to their late output).
    fn retractable(&self) -> bool {
        true
    }
}

/// The number of records.
#[derive(Clone, Copy, Debug, Default)]
pub struct Count;

impl<V> Aggregator<V> for Count {
    type Acc = ();
    type Output = i64;
    fn add(&self, _: &mut (), _: &V, _: isize) {}
    fn merge(&self, _: &mut (), _: ()) {}
    fn finish(&self, _: &(), count: i64) -> i64 {
        count
    }
}

/// The sum of integer values, in `i128` (it cannot overflow).
///
/// ```
/// use tideline::window::aggregate::{Aggregator, Sum};
///
/// let mut acc = 0i128;
/// for _ in 0..3 {
///     Sum.add(&mut acc, &9_000_000_000_000_000_000i64, 1);
/// }
/// assert_eq!(Aggregator::<i64>::finish(&Sum, &acc, 3), 27_000_000_000_000_000_000);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Sum;

impl<V: Copy + Into<i64>> Aggregator<V> for Sum {
    type Acc = i128;
    type Output = i128;
    fn add(&self, acc: &mut i128, value: &V, diff: isize) {
        *acc += i128::from((*value).into()) * diff as i128;
    }
    fn merge(&self, acc: &mut i128, other: i128) {
        *acc += other;
    }
    fn finish(&self, acc: &i128, _: i64) -> i128 {
        *acc
    }
}

/// The smallest value so far: O(1) state; insert-only (see [`ExactMin`] for changelogs).
#[derive(Clone, Copy, Debug, Default)]
pub struct Min;

impl<V: ExchangeData> Aggregator<V> for Min {
    type Acc = Option<V>;
    type Output = V;
    fn add(&self, acc: &mut Option<V>, value: &V, diff: isize) {
        assert!(diff > 0, "Min cannot retract a value (use ExactMin for changelogs)");
        if acc.as_ref().is_none_or(|m| value < m) {
            *acc = Some(value.clone());
        }
    }
    fn merge(&self, acc: &mut Option<V>, other: Option<V>) {
        if let Some(other) = other
            && acc.as_ref().is_none_or(|m| other < *m)
        {
            *acc = Some(other);
        }
    }
    fn finish(&self, acc: &Option<V>, _: i64) -> V {
        acc.clone().expect("a non-empty window has a minimum")
    }
    fn retractable(&self) -> bool {
        false
    }
}

/// The largest value so far: O(1) state; insert-only (see [`ExactMax`] for changelogs).
#[derive(Clone, Copy, Debug, Default)]
pub struct Max;

impl<V: ExchangeData> Aggregator<V> for Max {
    type Acc = Option<V>;
    type Output = V;
    fn add(&self, acc: &mut Option<V>, value: &V, diff: isize) {
        assert!(diff > 0, "Max cannot retract a value (use ExactMax for changelogs)");
        if acc.as_ref().is_none_or(|m| value > m) {
            *acc = Some(value.clone());
        }
    }
    fn merge(&self, acc: &mut Option<V>, other: Option<V>) {
        if let Some(other) = other
            && acc.as_ref().is_none_or(|m| other > *m)
        {
            *acc = Some(other);
        }
    }
    fn finish(&self, acc: &Option<V>, _: i64) -> V {
        acc.clone().expect("a non-empty window has a maximum")
    }
    fn retractable(&self) -> bool {
        false
    }
}

/// A multiset of values: what min, max and custom reducers need to survive retractions.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Multiset<V: Ord>(BTreeMap<V, isize>);

impl<V: Ord> Default for Multiset<V> {
    fn default() -> Self {
        Multiset(BTreeMap::new())
    }
}

impl<V: Ord + Clone> Multiset<V> {
    /// Adds `value` with multiplicity `diff`.
    pub fn add(&mut self, value: &V, diff: isize) {
        if diff == 0 {
            return;
        }
        match self.0.get_mut(value) {
            Some(count) => {
                *count += diff;
                if *count == 0 {
                    self.0.remove(value);
                }
            }
            None => {
                self.0.insert(value.clone(), diff);
            }
        }
    }

    /// Adds every element of `other`.
    pub fn merge(&mut self, other: Multiset<V>) {
        if self.0.is_empty() {
            self.0 = other.0;
            return;
        }
        for (value, diff) in other.0 {
            match self.0.entry(value) {
                std::collections::btree_map::Entry::Occupied(mut entry) => {
                    *entry.get_mut() += diff;
                    if *entry.get() == 0 {
                        entry.remove();
                    }
                }
                std::collections::btree_map::Entry::Vacant(entry) => {
                    entry.insert(diff);
                }
            }
        }
    }

    /// The smallest value present (with positive multiplicity).
    pub fn smallest(&self) -> Option<&V> {
        self.0.iter().find(|(_, c)| **c > 0).map(|(v, _)| v)
    }

    /// The largest value present (with positive multiplicity).
    pub fn largest(&self) -> Option<&V> {
        self.0.iter().rev().find(|(_, c)| **c > 0).map(|(v, _)| v)
    }

    /// Values and multiplicities in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = (&V, isize)> {
        self.0.iter().map(|(v, c)| (v, *c))
    }

    /// Number of distinct values.
    pub fn distinct(&self) -> usize {
        self.0.len()
    }
}

/// The smallest value, exact under retractions: keeps every distinct value (for changelogs;
/// [`Min`] keeps O(1) state for append-only input).
#[derive(Clone, Copy, Debug, Default)]
pub struct ExactMin;

impl<V: ExchangeData> Aggregator<V> for ExactMin {
    type Acc = Multiset<V>;
    type Output = V;
    fn add(&self, acc: &mut Multiset<V>, value: &V, diff: isize) {
        acc.add(value, diff);
    }
    fn merge(&self, acc: &mut Multiset<V>, other: Multiset<V>) {
        acc.merge(other);
    }
    fn finish(&self, acc: &Multiset<V>, _: i64) -> V {
        acc.smallest().cloned().expect("a non-empty window has a minimum")
    }
}

/// The largest value, exact under retractions: keeps every distinct value (for changelogs;
/// [`Max`] keeps O(1) state for append-only input).
#[derive(Clone, Copy, Debug, Default)]
pub struct ExactMax;

impl<V: ExchangeData> Aggregator<V> for ExactMax {
    type Acc = Multiset<V>;
    type Output = V;
    fn add(&self, acc: &mut Multiset<V>, value: &V, diff: isize) {
        acc.add(value, diff);
    }
    fn merge(&self, acc: &mut Multiset<V>, other: Multiset<V>) {
        acc.merge(other);
    }
    fn finish(&self, acc: &Multiset<V>, _: i64) -> V {
        acc.largest().cloned().expect("a non-empty window has a maximum")
    }
}

/// The mean of integer values, kept exact as a sum and a count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Mean {
    /// Sum of the values.
    pub sum: i128,
    /// Number of values.
    pub count: i64,
}

impl Mean {
    /// The mean as a float.
    pub fn value(&self) -> f64 {
        self.sum as f64 / self.count as f64
    }
}

/// The average of integer values ([`Mean`]); retractable.
#[derive(Clone, Copy, Debug, Default)]
pub struct Avg;

impl<V: Copy + Into<i64>> Aggregator<V> for Avg {
    type Acc = i128;
    type Output = Mean;
    fn add(&self, acc: &mut i128, value: &V, diff: isize) {
        *acc += i128::from((*value).into()) * diff as i128;
    }
    fn merge(&self, acc: &mut i128, other: i128) {
        *acc += other;
    }
    fn finish(&self, acc: &i128, count: i64) -> Mean {
        Mean { sum: *acc, count }
    }
}

/// Count, sum, min and max of integer values at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stats {
    /// Number of records.
    pub count: i64,
    /// Sum of the values (in `i128`: it cannot overflow).
    pub sum: i128,
    /// Smallest value.
    pub min: i64,
    /// Largest value.
    pub max: i64,
}

/// The accumulator of [`AllStats`]: O(1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StatsAcc {
    sum: i128,
    /// Smallest and largest value, once there is one.
    range: Option<(i64, i64)>,
}

/// Count, sum, min and max at once ([`Stats`]): O(1) state; insert-only (see [`ExactStats`]
/// for changelogs).
#[derive(Clone, Copy, Debug, Default)]
pub struct AllStats;

impl<V: Copy + Into<i64>> Aggregator<V> for AllStats {
    type Acc = StatsAcc;
    type Output = Stats;
    fn add(&self, acc: &mut StatsAcc, value: &V, diff: isize) {
        assert!(diff > 0, "AllStats cannot retract a value (use ExactStats for changelogs)");
        let value: i64 = (*value).into();
        acc.sum += i128::from(value) * diff as i128;
        acc.range = Some(match acc.range {
            None => (value, value),
            Some((min, max)) => (min.min(value), max.max(value)),
        });
    }
    fn merge(&self, acc: &mut StatsAcc, other: StatsAcc) {
        acc.sum += other.sum;
        acc.range = match (acc.range, other.range) {
            (None, r) | (r, None) => r,
            (Some((a, b)), Some((c, d))) => Some((a.min(c), b.max(d))),
        };
    }
    fn finish(&self, acc: &StatsAcc, count: i64) -> Stats {
        let (min, max) = acc.range.unwrap_or_default();
        Stats { count, sum: acc.sum, min, max }
    }
    fn retractable(&self) -> bool {
        false
    }
}

/// The accumulator of [`ExactStats`]: the sum and every distinct value.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ExactStatsAcc {
    sum: i128,
    values: Multiset<i64>,
}

/// Count, sum, min and max at once ([`Stats`]), exact under retractions: keeps every distinct
/// value (for changelogs; [`AllStats`] keeps O(1) state for append-only input).
#[derive(Clone, Copy, Debug, Default)]
pub struct ExactStats;

impl<V: Copy + Into<i64>> Aggregator<V> for ExactStats {
    type Acc = ExactStatsAcc;
    type Output = Stats;
    fn add(&self, acc: &mut ExactStatsAcc, value: &V, diff: isize) {
        let value: i64 = (*value).into();
        acc.sum += i128::from(value) * diff as i128;
        acc.values.add(&value, diff);
    }
    fn merge(&self, acc: &mut ExactStatsAcc, other: ExactStatsAcc) {
        acc.sum += other.sum;
        acc.values.merge(other.values);
    }
    fn finish(&self, acc: &ExactStatsAcc, count: i64) -> Stats {
        Stats {
            count,
            sum: acc.sum,
            min: acc.values.smallest().copied().unwrap_or_default(),
            max: acc.values.largest().copied().unwrap_or_default(),
        }
    }
}

/// A custom reducer: any function of the window's multiset of values.
///
/// Exact under retractions; costs time proportional to the window's distinct values each time
/// the window's result is emitted.
///
/// ```
/// use tideline::window::aggregate::{Aggregator, Reduce};
///
/// // The number of distinct values.
/// let distinct = Reduce::new(|values| values.distinct() as u64);
/// let mut acc = Default::default();
/// distinct.add(&mut acc, &'a', 1);
/// distinct.add(&mut acc, &'a', 1);
/// distinct.add(&mut acc, &'b', 1);
/// assert_eq!(distinct.finish(&acc, 3), 2);
/// ```
pub struct Reduce<V: Ord, O> {
    logic: Rc<dyn Fn(&Multiset<V>) -> O>,
}

impl<V: Ord, O> Clone for Reduce<V, O> {
    fn clone(&self) -> Self {
        Reduce { logic: Rc::clone(&self.logic) }
    }
}

impl<V: Ord, O> Debug for Reduce<V, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reduce")
    }
}

impl<V: Ord, O> Reduce<V, O> {
    /// A reducer computing `logic(values)`; `values` is never empty.
    pub fn new(logic: impl Fn(&Multiset<V>) -> O + 'static) -> Self {
        Reduce { logic: Rc::new(logic) }
    }
}

impl<V: ExchangeData, O: ExchangeData> Aggregator<V> for Reduce<V, O> {
    type Acc = Multiset<V>;
    type Output = O;
    fn add(&self, acc: &mut Multiset<V>, value: &V, diff: isize) {
        acc.add(value, diff);
    }
    fn merge(&self, acc: &mut Multiset<V>, other: Multiset<V>) {
        acc.merge(other);
    }
    fn finish(&self, acc: &Multiset<V>, _: i64) -> O {
        (self.logic)(acc)
    }
}

/// The number of distinct values (exact under retractions).
///
/// Works with tumbling, sliding and session windows alike.
///
/// ```
/// use tideline::window::aggregate::{Aggregator, DistinctCount};
///
/// let mut acc = Default::default();
/// for value in [3u32, 5, 3, 7] {
///     DistinctCount.add(&mut acc, &value, 1);
/// }
/// assert_eq!(DistinctCount.finish(&acc, 4), 3);
/// DistinctCount.add(&mut acc, &5u32, -1);
/// assert_eq!(DistinctCount.finish(&acc, 3), 2);
/// ```
/// # Event time
///
/// The count of a window (tumbling, sliding or session) and key is over the values of its
/// records by event time, emitted as the window operator emits (`Final` or `Updates`).
///
/// # Late data
///
/// A record accepted late changes the set of values: the window emits a correction
/// (retraction and insertion) only if the count changed.
///
/// # State
///
/// Per window and key, each distinct value with its multiplicity: `O(distinct values)`,
/// released with the window. Pre-aggregation before the exchange merges these multisets.
///
/// # Checkpointing
///
/// Part of the window's state; see the window operator.
#[derive(Clone, Copy, Debug, Default)]
pub struct DistinctCount;

impl<V: ExchangeData> Aggregator<V> for DistinctCount {
    type Acc = Multiset<V>;
    type Output = i64;
    fn add(&self, acc: &mut Multiset<V>, value: &V, diff: isize) {
        acc.add(value, diff);
    }
    fn merge(&self, acc: &mut Multiset<V>, other: Multiset<V>) {
        acc.merge(other);
    }
    fn finish(&self, acc: &Multiset<V>, _: i64) -> i64 {
        acc.iter().filter(|(_, count)| *count > 0).count() as i64
    }
}

/// The `n` largest values, largest first, each as often as it occurs (exact under
/// retractions): top-N per key and window.
///
/// Equal values are indistinguishable, so ties need no further order. To rank records by a
/// field, make the value a tuple that starts with it: `(price, bidder)` ranks by price, then
/// by bidder; wrap it in [`std::cmp::Reverse`] for the `n` smallest. For top-N across keys,
/// see [`TopN`](crate::keyed::topn::TopN).
///
/// ```
/// use tideline::window::aggregate::{Aggregator, Top};
///
/// let top = Top::new(3);
/// let mut acc = Default::default();
/// for value in [5i64, 9, 1, 9, 7] {
///     top.add(&mut acc, &value, 1);
/// }
/// assert_eq!(top.finish(&acc, 5), vec![9, 9, 7]);
/// top.add(&mut acc, &9i64, -1);
/// assert_eq!(top.finish(&acc, 4), vec![9, 7, 5]);
/// ```
/// # Event time
///
/// The ranking of a window (tumbling, sliding or session) and key is over the values of its
/// records by event time, emitted as the window operator emits (`Final` or `Updates`).
///
/// # Late data
///
/// A record accepted late, or a retraction, changes the multiset of values: the window emits a
/// correction only if the top `n` changed. Retractions are exact because every value is kept,
/// not only the top `n`.
///
/// # State
///
/// Per window and key, each distinct value with its multiplicity (so that a retracted top
/// value can be replaced), released with the window.
///
/// # Checkpointing
///
/// Part of the window's state; see the window operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Top {
    n: usize,
}

impl Top {
    /// The `n` largest values.
    pub fn new(n: usize) -> Self {
        Top { n }
    }
}

impl<V: ExchangeData> Aggregator<V> for Top {
    type Acc = Multiset<V>;
    type Output = Vec<V>;
    fn add(&self, acc: &mut Multiset<V>, value: &V, diff: isize) {
        acc.add(value, diff);
    }
    fn merge(&self, acc: &mut Multiset<V>, other: Multiset<V>) {
        acc.merge(other);
    }
    fn finish(&self, acc: &Multiset<V>, _: i64) -> Vec<V> {
        acc.0
            .iter()
            .rev()
            .filter(|(_, count)| **count > 0)
            .flat_map(|(value, count)| std::iter::repeat_n(value, *count as usize))
            .take(self.n)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_min_and_max_survive_retractions() {
        let mut acc = Multiset::default();
        for v in [5i64, 3, 9, 3] {
            ExactMin.add(&mut acc, &v, 1);
        }
        assert_eq!(Aggregator::<i64>::finish(&ExactMin, &acc, 4), 3);
        ExactMin.add(&mut acc, &3i64, -1);
        assert_eq!(Aggregator::<i64>::finish(&ExactMin, &acc, 3), 3);
        ExactMin.add(&mut acc, &3i64, -1);
        assert_eq!(Aggregator::<i64>::finish(&ExactMin, &acc, 2), 5);
        assert_eq!(Aggregator::<i64>::finish(&ExactMax, &acc, 2), 9);
    }

    #[test]
    fn merged_accumulators_equal_sequential_ones() {
        let values = [4i64, -2, 7, 7, 0];
        let mut whole = StatsAcc::default();
        let (mut left, mut right) = (StatsAcc::default(), StatsAcc::default());
        let mut exact = ExactStatsAcc::default();
        for (i, v) in values.iter().enumerate() {
            AllStats.add(&mut whole, v, 1);
            AllStats.add(if i % 2 == 0 { &mut left } else { &mut right }, v, 1);
            ExactStats.add(&mut exact, v, 1);
        }
        Aggregator::<i64>::merge(&AllStats, &mut left, right);
        assert_eq!(left, whole);
        let stats = Aggregator::<i64>::finish(&AllStats, &whole, 5);
        assert_eq!(stats, Stats { count: 5, sum: 16, min: -2, max: 7 });
        assert_eq!(Aggregator::<i64>::finish(&ExactStats, &exact, 5), stats);
        let (mut min, mut max) = (None, None);
        for v in values {
            Min.add(&mut min, &v, 1);
            Max.add(&mut max, &v, 1);
        }
        assert_eq!((Aggregator::<i64>::finish(&Min, &min, 5), Aggregator::<i64>::finish(&Max, &max, 5)), (-2, 7));
    }

    #[test]
    fn sums_of_extreme_values_do_not_overflow() {
        let mut stats = StatsAcc::default();
        let mut exact = ExactStatsAcc::default();
        for _ in 0..3 {
            AllStats.add(&mut stats, &i64::MAX, 1);
            ExactStats.add(&mut exact, &i64::MAX, 1);
        }
        let expected = 3 * i128::from(i64::MAX);
        assert_eq!(Aggregator::<i64>::finish(&AllStats, &stats, 3).sum, expected);
        assert_eq!(Aggregator::<i64>::finish(&ExactStats, &exact, 3).sum, expected);
        let mut mean = 0i128;
        Avg.add(&mut mean, &i64::MIN, 2);
        assert_eq!(Aggregator::<i64>::finish(&Avg, &mean, 2).sum, 2 * i128::from(i64::MIN));
    }
}
