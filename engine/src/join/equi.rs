//! Equi-joins of keyed collections: inner, left, right and full outer, maintained
//! incrementally with retractions.
//!
//! These are relational joins of collections `(K, V)` as of every dataflow time: the output at
//! time `τ` is the join of the two inputs as they stand at `τ`. An outer row `(k, (v, None))`
//! becomes a matched row when a partner with key `k` arrives, and becomes an outer row again
//! when the last partner is retracted.
//!
//! # Examples
//!
//! ```
//! use tideline::differential_dataflow::input::Input;
//! use tideline::prelude::*;
//! use tideline::timely::dataflow::Scope;
//!
//! // Nexmark q3's shape: people joined with the auctions they sell, keyed by person id.
//! let rows = tideline::runtime::collect(1, |scope: Scope<'_, Time>| {
//!     let (_, persons) = scope.new_collection_from(vec![(1u32, 'p'), (2, 'q')]);
//!     let (_, auctions) = scope.new_collection_from(vec![(1u32, 'a'), (1, 'b'), (3, 'c')]);
//!     persons.full_join(auctions)
//! });
//! let rows: Vec<_> = rows.into_iter().map(|(row, _time, diff)| (row, diff)).collect();
//! assert_eq!(rows, vec![
//!     ((1, (Some('p'), Some('a'))), 1),
//!     ((1, (Some('p'), Some('b'))), 1),
//!     ((2, (Some('q'), None)), 1),
//!     ((3, (None, Some('c'))), 1),
//! ]);
//! ```
//!
//! # Event time
//!
//! None of its own: the inputs are joined as of each dataflow time, and the output changes at
//! the dataflow times at which the inputs change. Event times carried in the data play no role.
//!
//! # Late data
//!
//! Nothing is ever too late for an equi-join: a record a source accepted late, inserted at the
//! watermark `W`, joins at `W` with whatever the other input holds then, and outer rows are
//! corrected at `W`.
//!
//! # State
//!
//! Both inputs are arranged (indexed by key), and outer joins also arrange the set of keys
//! present on the other side. The arrangements hold every record that is present, for as long
//! as it is present: the state of an unbounded equi-join is bounded only by its inputs, and a
//! record's state is released when the record is retracted (history is compacted as the
//! frontier advances). For joins whose state must expire with time, use an
//! [interval](crate::join::interval) or [window](crate::join::window) join, or retract the
//! inputs upstream. To see the state's size, put a
//! [`live_records`](crate::runtime::metrics::LiveRecords::live_records) gauge on each input.
//!
//! # Checkpointing
//!
//! The state is the input collections, kept for as long as the join lives: a checkpoint does
//! not copy them, and in a checkpointed dataflow an equi-join holds the replay time at the
//! start (see [`crate::checkpoint`]).

use differential_dataflow::VecCollection;
use differential_dataflow::collection::concatenate;

use crate::runtime::ExchangeData;
use crate::time::Time;

/// Equi-joins on collections of `(key, value)` pairs.
///
/// Inputs should hold records with non-negative multiplicities (as every collection built from
/// insertions and retractions of inserted records does); a pair's multiplicity is the product
/// of its records' multiplicities, and an outer row's that of its record.
pub trait Joins<'scope, K: 'static, V1: 'static> {
    /// Pairs of records with equal keys (differential's [`join`](VecCollection::join)).
    fn inner_join<V2: ExchangeData>(
        self,
        other: VecCollection<'scope, Time, (K, V2)>,
    ) -> VecCollection<'scope, Time, (K, (V1, V2))>;

    /// Pairs, and `(k, (v, None))` for each record of `self` whose key `other` lacks.
    fn left_join<V2: ExchangeData>(
        self,
        other: VecCollection<'scope, Time, (K, V2)>,
    ) -> VecCollection<'scope, Time, (K, (V1, Option<V2>))>;

    /// Pairs, and `(k, (None, v))` for each record of `other` whose key `self` lacks.
    fn right_join<V2: ExchangeData>(
        self,
        other: VecCollection<'scope, Time, (K, V2)>,
    ) -> VecCollection<'scope, Time, (K, (Option<V1>, V2))>;

    /// Pairs, and the records of either side whose key the other lacks.
    fn full_join<V2: ExchangeData>(
        self,
        other: VecCollection<'scope, Time, (K, V2)>,
    ) -> VecCollection<'scope, Time, (K, (Option<V1>, Option<V2>))>;
}

impl<'scope, K: ExchangeData, V1: ExchangeData> Joins<'scope, K, V1> for VecCollection<'scope, Time, (K, V1)> {
    fn inner_join<V2: ExchangeData>(
        self,
        other: VecCollection<'scope, Time, (K, V2)>,
    ) -> VecCollection<'scope, Time, (K, (V1, V2))> {
        unbounded(self.scope());
        self.join(other)
    }

    fn left_join<V2: ExchangeData>(
        self,
        other: VecCollection<'scope, Time, (K, V2)>,
    ) -> VecCollection<'scope, Time, (K, (V1, Option<V2>))> {
        let (pairs, left, _) = outer(self, other, true, false);
        pairs
            .map(|(k, (v1, v2))| (k, (v1.expect("pairs are complete"), v2)))
            .concat(left.map(|(k, v1)| (k, (v1, None))))
    }

    fn right_join<V2: ExchangeData>(
        self,
        other: VecCollection<'scope, Time, (K, V2)>,
    ) -> VecCollection<'scope, Time, (K, (Option<V1>, V2))> {
        let (pairs, _, right) = outer(self, other, false, true);
        pairs
            .map(|(k, (v1, v2))| (k, (v1, v2.expect("pairs are complete"))))
            .concat(right.map(|(k, v2)| (k, (None, v2))))
    }

    fn full_join<V2: ExchangeData>(
        self,
        other: VecCollection<'scope, Time, (K, V2)>,
    ) -> VecCollection<'scope, Time, (K, (Option<V1>, Option<V2>))> {
        let (pairs, left, right) = outer(self, other, true, true);
        pairs.concat(left.map(|(k, v1)| (k, (Some(v1), None)))).concat(right.map(|(k, v2)| (k, (None, Some(v2)))))
    }
}

/// The pairs (as `Some`s), and the records of each requested side whose key the other side
/// lacks (empty collections for sides not requested). Each input is arranged once, and the
/// arrangement serves both the pairs and the unmatched records.
fn outer<'scope, K: ExchangeData, V1: ExchangeData, V2: ExchangeData>(
    left: VecCollection<'scope, Time, (K, V1)>,
    right: VecCollection<'scope, Time, (K, V2)>,
    outer_left: bool,
    outer_right: bool,
) -> (
    VecCollection<'scope, Time, (K, (Option<V1>, Option<V2>))>,
    VecCollection<'scope, Time, (K, V1)>,
    VecCollection<'scope, Time, (K, V2)>,
) {
    let scope = left.scope();
    unbounded(scope);
    let left_arranged = left.clone().arrange_by_key_named("OuterJoin: arrange left");
    let right_arranged = right.clone().arrange_by_key_named("OuterJoin: arrange right");
    let pairs = left_arranged
        .clone()
        .join_core(right_arranged.clone(), |k, v1, v2| Some((k.clone(), (Some(v1.clone()), Some(v2.clone())))));
    let left_unmatched = if outer_left {
        let right_keys = right.clone().map(|(k, _)| k).distinct().arrange_by_self_named("OuterJoin: right keys");
        let matched = left_arranged.join_core(right_keys, |k, v1, _| Some((k.clone(), v1.clone())));
        left.clone().concat(matched.negate())
    } else {
        concatenate(scope, std::iter::empty())
    };
    let right_unmatched = if outer_right {
        let left_keys = left.map(|(k, _)| k).distinct().arrange_by_self_named("OuterJoin: left keys");
        let matched = right_arranged.join_core(left_keys, |k, v2, _| Some((k.clone(), v2.clone())));
        right.concat(matched.negate())
    } else {
        concatenate(scope, std::iter::empty())
    };
    (pairs, left_unmatched, right_unmatched)
}

/// Declares that the join's arrangements may refer to any input until it is retracted: an
/// at-least-once source acknowledges nothing before its sinks are complete (see
/// [`crate::runtime::flow`]).
fn unbounded(scope: timely::dataflow::Scope<'_, Time>) {
    crate::runtime::flow::group(scope).register_retention(crate::runtime::flow::Retention::Unbounded);
}
