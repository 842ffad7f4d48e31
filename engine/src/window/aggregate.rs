//! Aggregations over the records of a window: count, sum, min, max, avg, all four at once,
//! distinct count, top-N and custom reducers.
//!
//! An [`Aggregator`] keeps an accumulator per window and key. Accumulators are *mergeable*
//! (so records are pre-aggregated on the worker that reads them, before the exchange, and a
//! hot key does not serialize the pipeline) and *retractable* (a record with diff `-1` undoes
//! one with `+1`, so aggregations work on changelogs, not only on append-only streams).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::rc::Rc;

use serde::{Deserialize, Serialize};

use crate::runtime::ExchangeData;

/// A mergeable, retractable aggregation of values `V`.
pub trait Aggregator<V>: Clone + 'static {
    /// The per-window, per-key accumulator (travels between workers, so it is serde data).
    type Acc: ExchangeData + Default;
    /// The aggregate's result.
    type Output: ExchangeData;

    /// Adds `value` with multiplicity `diff` (negative to retract).
    fn add(&self, acc: &mut Self::Acc, value: &V, diff: isize);
    /// Merges another accumulator into `acc`.
    fn merge(&self, acc: &mut Self::Acc, other: Self::Acc);
    /// The result for an accumulator holding `count` records (net of retractions, never 0).
    fn finish(&self, acc: &Self::Acc, count: i64) -> Self::Output;
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

/// The sum of integer values.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sum;

impl<V: Copy + Into<i64>> Aggregator<V> for Sum {
    type Acc = i64;
    type Output = i64;
    fn add(&self, acc: &mut i64, value: &V, diff: isize) {
        *acc += (*value).into() * diff as i64;
    }
    fn merge(&self, acc: &mut i64, other: i64) {
        *acc += other;
    }
    fn finish(&self, acc: &i64, _: i64) -> i64 {
        *acc
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

/// The smallest value (exact under retractions).
#[derive(Clone, Copy, Debug, Default)]
pub struct Min;

impl<V: ExchangeData> Aggregator<V> for Min {
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

/// The largest value (exact under retractions).
#[derive(Clone, Copy, Debug, Default)]
pub struct Max;

impl<V: ExchangeData> Aggregator<V> for Max {
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
    pub sum: i64,
    /// Number of values.
    pub count: i64,
}

impl Mean {
    /// The mean as a float.
    pub fn value(&self) -> f64 {
        self.sum as f64 / self.count as f64
    }
}

/// The average of integer values ([`Mean`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct Avg;

impl<V: Copy + Into<i64>> Aggregator<V> for Avg {
    type Acc = i64;
    type Output = Mean;
    fn add(&self, acc: &mut i64, value: &V, diff: isize) {
        *acc += (*value).into() * diff as i64;
    }
    fn merge(&self, acc: &mut i64, other: i64) {
        *acc += other;
    }
    fn finish(&self, acc: &i64, count: i64) -> Mean {
        Mean { sum: *acc, count }
    }
}

/// Count, sum, min and max of integer values at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stats {
    /// Number of records.
    pub count: i64,
    /// Sum of the values.
    pub sum: i64,
    /// Smallest value.
    pub min: i64,
    /// Largest value.
    pub max: i64,
}

/// The accumulator of [`AllStats`].
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StatsAcc {
    sum: i64,
    values: Multiset<i64>,
}

/// Count, sum, min and max at once ([`Stats`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct AllStats;

impl<V: Copy + Into<i64>> Aggregator<V> for AllStats {
    type Acc = StatsAcc;
    type Output = Stats;
    fn add(&self, acc: &mut StatsAcc, value: &V, diff: isize) {
        let value: i64 = (*value).into();
        acc.sum += value * diff as i64;
        acc.values.add(&value, diff);
    }
    fn merge(&self, acc: &mut StatsAcc, other: StatsAcc) {
        acc.sum += other.sum;
        acc.values.merge(other.values);
    }
    fn finish(&self, acc: &StatsAcc, count: i64) -> Stats {
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
    fn min_and_max_survive_retractions() {
        let mut acc = Multiset::default();
        for v in [5i64, 3, 9, 3] {
            Min.add(&mut acc, &v, 1);
        }
        assert_eq!(Aggregator::<i64>::finish(&Min, &acc, 4), 3);
        Min.add(&mut acc, &3i64, -1);
        assert_eq!(Aggregator::<i64>::finish(&Min, &acc, 3), 3);
        Min.add(&mut acc, &3i64, -1);
        assert_eq!(Aggregator::<i64>::finish(&Min, &acc, 2), 5);
        assert_eq!(Aggregator::<i64>::finish(&Max, &acc, 2), 9);
    }

    #[test]
    fn merged_accumulators_equal_sequential_ones() {
        let values = [4i64, -2, 7, 7, 0];
        let mut whole = StatsAcc::default();
        let (mut left, mut right) = (StatsAcc::default(), StatsAcc::default());
        for (i, v) in values.iter().enumerate() {
            AllStats.add(&mut whole, v, 1);
            AllStats.add(if i % 2 == 0 { &mut left } else { &mut right }, v, 1);
        }
        Aggregator::<i64>::merge(&AllStats, &mut left, right);
        assert_eq!(left, whole);
        let stats = Aggregator::<i64>::finish(&AllStats, &whole, 5);
        assert_eq!(stats, Stats { count: 5, sum: 16, min: -2, max: 7 });
    }
}
