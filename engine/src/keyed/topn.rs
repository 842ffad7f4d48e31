//! Top-N per group of a changelog: the `n` highest-scoring records of each group, ranked,
//! maintained exactly under insertions and retractions (DESIGN §6; the shape of Nexmark q19).
//!
//! Top-N per key *and* window is an aggregator, [`Top`](crate::window::aggregate::Top), for
//! tumbling, sliding and session windows. [`TopN`] ranks any collection by group, typically
//! window results, which are themselves a changelog: e.g. the top keys of each window.
//!
//! ```
//! use std::time::Duration;
//! use tideline::prelude::*;
//! use tideline::source::{SourceConfig, memory};
//! use tideline::window::aggregate::Count;
//!
//! let events: Vec<Event<u32, i64>> =
//!     [(100, 1), (200, 2), (300, 2), (400, 3), (450, 3), (500, 3), (1_200, 1)]
//!         .into_iter()
//!         .map(|(time, key)| Event::new(time, key, 0))
//!         .collect();
//! let top = tideline::runtime::collect(2, move |scope| {
//!     let events = events.clone();
//!     memory::from_iter(scope, SourceConfig::new("events"), move || events.into_iter())
//!         .data
//!         .tumbling(Duration::from_secs(1))
//!         .aggregate(Count)
//!         // The two busiest keys of each window; a window's results are final at its end.
//!         .top_n(2, |r: &WindowResult<u32, i64>| r.window, |r| r.value)
//!         .release_at(|window: &Window| window.end)
//!         .build()
//! });
//! let rows: Vec<_> = top.iter().map(|(r, time, diff)| (r.group.start, r.rank, r.record.key, *time, *diff)).collect();
//! assert_eq!(rows, vec![(0, 1, 3, 999, 1), (0, 2, 2, 999, 1), (1_000, 1, 1, 1_999, 1)]);
//! ```
//!
//! # Event time
//!
//! Records are ranked by the collection they belong to, not by event time: the output as of
//! any time `τ` is, for every group, its `n` records of highest score in the input as of `τ`,
//! ranked `1..=n` (a record present `k` times takes `k` ranks). Ties in score are broken by
//! the records' own order, smallest first, so the ranking is a deterministic function of the
//! input collection and identical for any number of workers. The output changes exactly at
//! the times the ranking changes: a retraction of each row whose rank or record changed, and
//! an insertion of its new version.
//!
//! # Late data
//!
//! Late or corrected input (e.g. a window's late correction, a retraction and an insertion)
//! changes the ranking at its time like any other update: rows are retracted and inserted.
//! With [`TopNCollection::release_at`], an update at or after its group's release time is too
//! late: it goes to the late output ([`TopNCollection::build_with_late`]) and is counted in
//! [`StateMetrics::late_skipped`].
//!
//! # State
//!
//! The input records of each group, in differential arrangements (the ranking is a
//! differential `reduce`). Without [`TopNCollection::release_at`] they are kept forever. With
//! it, each group's inputs are retracted at its release time, so the arrangements
//! consolidate them away; the resulting retractions of the ranking are not emitted. Live
//! input records per worker are reported to [`StateMetrics`] if one is attached.
//!
//! # Checkpointing
//!
//! The ranking is a function of the input records of live groups; a checkpoint records those
//! inputs (DESIGN §8).

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use differential_dataflow::hashable::Hashable;
use differential_dataflow::{AsCollection, VecCollection};
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::core::Filter;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use crate::runtime::ExchangeData;
use crate::runtime::metrics::StateMetrics;
use crate::time::Time;

/// One row of a ranking: a record, its group, and its rank in the group (1 is the top).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Ranked<G, D> {
    /// The group.
    pub group: G,
    /// The rank, from 1.
    pub rank: usize,
    /// The record.
    pub record: D,
}

/// Top-N on collections.
///
/// Ranking, late data and state: see the [module documentation](self).
pub trait TopN<'scope, D> {
    /// Ranks the records of each `group` by `score`, highest first (ties: smallest record
    /// first), and keeps the first `n` of each group. Wrap the score in
    /// [`std::cmp::Reverse`] to rank lowest first.
    fn top_n<G, S>(
        self,
        n: usize,
        group: impl Fn(&D) -> G + 'static,
        score: impl Fn(&D) -> S + 'static,
    ) -> TopNCollection<'scope, D, G, S>
    where
        G: ExchangeData,
        S: Ord + 'static;
}

impl<'scope, D: ExchangeData> TopN<'scope, D> for VecCollection<'scope, Time, D> {
    fn top_n<G, S>(
        self,
        n: usize,
        group: impl Fn(&D) -> G + 'static,
        score: impl Fn(&D) -> S + 'static,
    ) -> TopNCollection<'scope, D, G, S>
    where
        G: ExchangeData,
        S: Ord + 'static,
    {
        TopNCollection {
            collection: self,
            n,
            group: Rc::new(group),
            score: Rc::new(score),
            release: None,
            name: None,
            state: None,
        }
    }
}

/// A top-N ranking, configured fluently and then built.
pub struct TopNCollection<'scope, D: 'static, G: 'static, S: 'static> {
    collection: VecCollection<'scope, Time, D>,
    n: usize,
    group: Rc<dyn Fn(&D) -> G>,
    score: Rc<dyn Fn(&D) -> S>,
    release: Option<Rc<dyn Fn(&G) -> Time>>,
    name: Option<String>,
    state: Option<Arc<StateMetrics>>,
}

impl<'scope, D, G, S> TopNCollection<'scope, D, G, S>
where
    D: ExchangeData,
    G: ExchangeData,
    S: Ord + 'static,
{
    /// Declares that a group's input never changes at or after `release(group)`: its state is
    /// released then, without retracting its ranking downstream, and later updates of the
    /// group go to the late output. For window results with allowed lateness `L`, that is
    /// `window.end + L`.
    pub fn release_at(mut self, release: impl Fn(&G) -> Time + 'static) -> Self {
        self.release = Some(Rc::new(release));
        self
    }

    /// Names the operator (for logs, diagnostics and metrics).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Reports live input records (and too-late updates) to `metrics`.
    pub fn state_metrics(mut self, metrics: Arc<StateMetrics>) -> Self {
        self.state = Some(metrics);
        self
    }

    /// The ranking: the top `n` rows of each group.
    pub fn build(self) -> VecCollection<'scope, Time, Ranked<G, D>> {
        self.build_with_late().0
    }

    /// The ranking, and the updates that arrived at or after their group's release time,
    /// unchanged.
    pub fn build_with_late(self) -> (VecCollection<'scope, Time, Ranked<G, D>>, VecCollection<'scope, Time, D>) {
        let TopNCollection { collection, n, group, score, release, name, state } = self;
        let name = name.unwrap_or_else(|| format!("TopN(n={n})"));
        let keyed = collection.map(move |record| (group(&record), record));

        // Stage 1 (by group): split off too-late updates, retract each input at its group's
        // release time, and count live inputs.
        let scope = keyed.inner.scope();
        let (worker, peers) = (scope.index(), scope.peers());
        let mut builder = OperatorBuilder::new(format!("{name}: release"), scope);
        let exchange = Exchange::new(|update: &((G, D), Time, isize)| update.0.0.hashed());
        let mut input = builder.new_input(keyed.inner, exchange);
        let (kept_output, kept) = builder.new_output();
        let (late_output, late) = builder.new_output();
        let mut kept_output =
            OutputBuilder::<_, CapacityContainerBuilder<Vec<((G, D), Time, isize)>>>::from(kept_output);
        let mut late_output = OutputBuilder::<_, CapacityContainerBuilder<Vec<(D, Time, isize)>>>::from(late_output);
        let release_input = release.clone();
        let metrics = state.clone();
        builder.build(move |_capabilities| {
            let mut live: i64 = 0;
            let mut expiring: BTreeMap<Time, i64> = BTreeMap::new();
            let mut kept_buffer = Vec::new();
            let mut late_buffer = Vec::new();
            move |frontiers| {
                let mut kept_handle = kept_output.activate();
                let mut late_handle = late_output.activate();
                input.for_each(|cap, data| {
                    for ((group, record), time, diff) in data.drain(..) {
                        let Some(release) = &release_input else {
                            live += diff as i64;
                            kept_buffer.push(((group, record), time, diff));
                            continue;
                        };
                        let expiry = release(&group);
                        if time >= expiry {
                            late_buffer.push((record, time, diff));
                            continue;
                        }
                        live += diff as i64;
                        *expiring.entry(expiry).or_default() += diff as i64;
                        // The retraction travels at a later time than its message: allowed,
                        // as differential's `delay` does.
                        kept_buffer.push(((group.clone(), record.clone()), expiry, -diff));
                        kept_buffer.push(((group, record), time, diff));
                    }
                    if !kept_buffer.is_empty() {
                        kept_handle.session(&cap).give_container(&mut kept_buffer);
                        kept_buffer.clear();
                    }
                    if !late_buffer.is_empty() {
                        if let Some(metrics) = &metrics {
                            metrics.add_late_skipped(late_buffer.len() as u64);
                        }
                        late_handle.session(&cap).give_container(&mut late_buffer);
                        late_buffer.clear();
                    }
                });
                let frontier = frontiers[0].frontier().first().copied();
                while let Some(entry) = expiring.first_entry() {
                    if frontier.is_some_and(|f| f <= *entry.key()) {
                        break;
                    }
                    live -= entry.remove();
                }
                if let Some(metrics) = &metrics {
                    metrics.set(worker, peers, usize::try_from(live).unwrap_or(0));
                }
            }
        });

        // Stage 2: the ranking, exact at every time.
        let ranked = kept.as_collection().reduce_named(&name, move |_group, input: &[(&D, isize)], output| {
            let mut rows: Vec<(S, &D, isize)> = input
                .iter()
                .filter(|(_, count)| *count > 0)
                .map(|(record, count)| (score(record), *record, *count))
                .collect();
            rows.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
            let mut rank = 0;
            'rows: for (_, record, count) in rows {
                for _ in 0..count {
                    if rank == n {
                        break 'rows;
                    }
                    rank += 1;
                    output.push(((rank, record.clone()), 1));
                }
            }
        });

        // Released groups' rankings are retracted at their release time: not a change of the
        // ranking, so not emitted.
        let ranked = match release {
            Some(release) => ranked.inner.filter(move |((group, _), time, _)| *time < release(group)).as_collection(),
            None => ranked,
        };
        let ranked = ranked.map(|(group, (rank, record))| Ranked { group, rank, record });
        (ranked, late.as_collection())
    }
}
