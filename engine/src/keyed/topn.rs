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
//! [`StateMetrics::late_skipped`](crate::runtime::metrics::StateMetrics::late_skipped).
//!
//! # State
//!
//! The input records of each group, with their scores and multiplicities, and the ranking last
//! emitted. Without [`TopNCollection::release_at`] they are kept forever. With it, a group's
//! state is dropped once the frontier passes its release time, without any retraction
//! downstream. Live input records per worker are reported to the operator's
//! [`StateMetrics`](crate::runtime::metrics::StateMetrics).
//!
//! # Checkpointing
//!
//! A checkpoint does not copy the groups: a restore re-reads the input from the oldest record
//! still held (see [`crate::checkpoint`]); retractions come from upstream operators that hold
//! their own inputs while they can retract, so the replay rebuilds every group exactly.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use differential_dataflow::hashable::Hashable;
use differential_dataflow::{AsCollection, VecCollection};
use serde::{Deserialize, Serialize};
use timely::dataflow::operators::core::{Filter, OkErr};

use crate::runtime::ExchangeData;
use crate::state::driver::{Holds, Step, TemporalLogic, unary};
use crate::state::{FastMap, Temporal};
use crate::time::Time;
use crate::time::late::LatePolicy;

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
            temporal: Temporal::default(),
        }
    }
}

/// A top-N ranking, configured fluently and then built.
///
/// Of the shared options ([`TemporalBuilder`](crate::state::TemporalBuilder)), the late policy,
/// the name and the metrics apply; the allowed lateness extends every group's release time
/// ([`release_at`](Self::release_at)); the emission mode does not apply (the ranking changes
/// at the times its input does).
pub struct TopNCollection<'scope, D: 'static, G: 'static, S: 'static> {
    collection: VecCollection<'scope, Time, D>,
    n: usize,
    group: Rc<dyn Fn(&D) -> G>,
    score: Rc<dyn Fn(&D) -> S>,
    release: Option<Rc<dyn Fn(&G) -> Time>>,
    temporal: Temporal,
}

impl<D, G, S> crate::state::TemporalBuilder for TopNCollection<'_, D, G, S> {
    fn temporal(&mut self) -> &mut Temporal {
        &mut self.temporal
    }
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

    /// The ranking: the top `n` rows of each group.
    pub fn build(self) -> VecCollection<'scope, Time, Ranked<G, D>> {
        self.build_with_late().0
    }

    /// The ranking, and the updates that arrived at or after their group's release time,
    /// unchanged.
    pub fn build_with_late(self) -> (VecCollection<'scope, Time, Ranked<G, D>>, VecCollection<'scope, Time, D>) {
        let TopNCollection { collection, n, group, score, release, mut temporal } = self;
        let name = temporal.name_or(|| format!("TopN(n={n})"));
        let metrics = temporal.metrics_named(&name);
        let (lateness, policy) = (temporal.allowed_lateness, temporal.late);
        let release: Option<Rc<dyn Fn(&G) -> Time>> = match release {
            Some(release) if lateness > 0 => Some(Rc::new(move |g: &G| release(g).saturating_add(lateness))),
            other => other,
        };
        // Updates at or after their group's release time are late: decided by time alone.
        let keyed = collection.map(move |record| (group(&record), record));
        let late_metrics = Arc::clone(&metrics);
        let release_input = release.clone();
        let (admitted, late) =
            keyed.inner.ok_err::<Vec<_>, _, Vec<_>, _, _>(move |((group, record), at, diff)| match &release_input {
                Some(release) if at >= release(&group) => {
                    late_metrics.add_late_skipped(1);
                    Err((record, at, diff))
                }
                _ => Ok(((group, record), at, diff)),
            });
        let logic = TopNLogic {
            n,
            score,
            release,
            groups: FastMap::default(),
            touched: Vec::new(),
            live: 0,
            holds: Holds::default(),
        };
        let (ranked, _) = unary(admitted, temporal.driven(name), |(group, _): &(G, D)| group.hashed(), logic);
        let keep_late = policy == LatePolicy::SideOutput;
        (ranked, late.filter(move |_| keep_late).as_collection())
    }
}

/// One group's records, by (score, record), and the ranking last emitted.
struct GroupState<S, D> {
    records: BTreeMap<(std::cmp::Reverse<S>, D), isize>,
    ranked: Vec<D>,
    /// The earliest dataflow time of the records it holds.
    since: Time,
}

struct TopNLogic<G, D, S> {
    n: usize,
    score: Rc<dyn Fn(&D) -> S>,
    release: Option<Rc<dyn Fn(&G) -> Time>>,
    groups: FastMap<G, GroupState<S, D>>,
    touched: Vec<G>,
    live: usize,
    holds: Holds,
}

impl<G: ExchangeData, D: ExchangeData, S: Ord + 'static> TemporalLogic for TopNLogic<G, D, S> {
    type Input = (G, D);
    type Timer = G;
    type Output = Ranked<G, D>;
    type Late = ();

    fn step(
        &mut self,
        inputs: &mut Vec<(Self::Input, isize)>,
        timers: &mut Vec<Self::Timer>,
        step: &mut Step<'_, Self>,
    ) {
        let time = step.time();
        for ((group, record), diff) in inputs.drain(..) {
            let state = match self.groups.get_mut(&group) {
                Some(state) => state,
                None => {
                    if let Some(release) = &self.release {
                        step.schedule(release(&group).max(time), group.clone());
                    }
                    self.holds.hold(time);
                    self.groups.entry(group.clone()).or_insert(GroupState {
                        records: BTreeMap::new(),
                        ranked: Vec::new(),
                        since: time,
                    })
                }
            };
            let entry = state.records.entry((std::cmp::Reverse((self.score)(&record)), record));
            match entry {
                std::collections::btree_map::Entry::Vacant(vacant) => {
                    vacant.insert(diff);
                    self.live += 1;
                }
                std::collections::btree_map::Entry::Occupied(mut occupied) => {
                    *occupied.get_mut() += diff;
                    if *occupied.get() == 0 {
                        occupied.remove();
                        self.live -= 1;
                    }
                }
            }
            self.touched.push(group);
        }
        self.touched.sort_unstable();
        self.touched.dedup();
        for group in self.touched.drain(..) {
            let Some(state) = self.groups.get_mut(&group) else { continue };
            let mut ranked = Vec::with_capacity(self.n);
            'records: for ((_, record), count) in &state.records {
                for _ in 0..(*count).max(0) {
                    if ranked.len() == self.n {
                        break 'records;
                    }
                    ranked.push(record.clone());
                }
            }
            if ranked != state.ranked {
                for (rank, record) in state.ranked.iter().enumerate() {
                    if ranked.get(rank) != Some(record) {
                        step.give(Ranked { group: group.clone(), rank: rank + 1, record: record.clone() }, -1);
                    }
                }
                for (rank, record) in ranked.iter().enumerate() {
                    if state.ranked.get(rank) != Some(record) {
                        step.give(Ranked { group: group.clone(), rank: rank + 1, record: record.clone() }, 1);
                    }
                }
                state.ranked = ranked;
            }
            if state.records.is_empty() && self.release.is_none() {
                self.holds.release(state.since);
                self.groups.remove(&group);
            }
        }
        // Released groups: nothing can reach them any more; dropping them shows nothing.
        for group in timers.drain(..) {
            if let Some(state) = self.groups.remove(&group) {
                self.live -= state.records.len();
                self.holds.release(state.since);
            }
        }
    }

    fn release(&mut self, _frontier: Option<Time>) {}

    fn live_entries(&self) -> usize {
        self.live
    }

    fn oldest(&self) -> Option<Time> {
        self.holds.oldest()
    }
}
