//! As-of (temporal) stream–table joins: each event sees the table as of its own time.
//!
//! A stream of [`Event`]s is joined with a [`Table`] on the event's key. Each event joins the
//! value its key had in the table *at the event's event time*, and a later change of the table
//! does not rewrite the past: it only affects events that happen after it (Kafka Streams'
//! KStream–KTable join, with Flink's `FOR SYSTEM_TIME AS OF` semantics).
//!
//! # Examples
//!
//! ```
//! use tideline::prelude::*;
//! use tideline::source::{SourceConfig, memory};
//!
//! // Orders priced with the exchange rate in force when they were placed.
//! let rates = vec![Event::new(1_000, 'E', Some(110)), Event::new(5_000, 'E', Some(120))];
//! let orders = vec![Event::new(500, 'E', 1u32), Event::new(3_000, 'E', 2), Event::new(7_000, 'E', 3)];
//! let priced = tideline::runtime::collect(2, move |scope| {
//!     let (rates, orders) = (rates.clone(), orders.clone());
//!     let rates = memory::from_iter(scope, SourceConfig::new("rates"), move || rates.into_iter());
//!     let orders = memory::from_iter(scope, SourceConfig::new("orders"), move || orders.into_iter());
//!     orders.data.asof_join(rates.data.upsert().table()).left()
//! });
//! assert_eq!(priced, vec![
//!     ((Event::new(500, 'E', 1), None), 500, 1),         // no rate yet
//!     ((Event::new(3_000, 'E', 2), Some(110)), 3_000, 1),
//!     ((Event::new(7_000, 'E', 3), Some(120)), 7_000, 1),
//! ]);
//! ```
//!
//! # Event time
//!
//! The table is a collection that changes at dataflow times. An event with event time `t`
//! joins the value its key has in the table *as of dataflow time `t`*: the table's state after
//! every change at a dataflow time `≤ t`. The result is emitted at the event's own dataflow
//! time `τ ≥ t` (its retraction, if the event is retracted, likewise), once the table is
//! complete up to `t`. An event's result depends only on its key, its event time and the
//! table's history: never on when the event arrives, nor on how workers interleave.
//!
//! On-time table changes happen at their event time, so an event sees every table record with
//! an event time up to its own. A table change that arrives late (inserted at the watermark
//! `W` by its source, see DESIGN §3) takes effect at `W`: events with event times before `W`
//! keep the value they saw (their results are not rewritten, and late events with such times
//! see the old value too, exactly as they would have on time); events from `W` on see the new
//! value.
//!
//! # Late data
//!
//! An update of an event with event time `t` arriving at dataflow time `τ` is admitted if
//! `τ ≤ t + allowed_lateness`; later ones are too late: they go unchanged to the late output
//! ([`AsOfJoinBuilder::inner_with_late`], [`AsOfJoinBuilder::left_with_late`]) and are counted
//! in [`StateMetrics::late_skipped`]. Table changes are never too late: they take effect when
//! they arrive.
//!
//! # State
//!
//! The table's current contents, the history of its changes at dataflow times within the
//! allowed lateness of the stream's frontier (older versions are released except each key's
//! latest, which later events still see), and the events waiting for the table to be complete
//! up to their time. Keys absent from the table with no recent history hold nothing. Release
//! emits nothing downstream. Table values and changes held are reported to [`StateMetrics`] if
//! one is attached.
//!
//! # Checkpointing
//!
//! The state is the table's contents and recent history at the checkpoint's frontier, and the
//! waiting events: a checkpoint records those inputs (DESIGN §8).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use differential_dataflow::consolidation::consolidate;
use differential_dataflow::hashable::Hashable;
use differential_dataflow::{AsCollection, VecCollection};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::core::OkErr;
use timely::dataflow::operators::generic::Operator;

use crate::runtime::ExchangeData;
use crate::runtime::metrics::StateMetrics;
use crate::state::FastMap;
use crate::table::Table;
use crate::time::{Event, Time, millis};

type Update<D> = (D, Time, isize);

/// As-of joins of event streams with tables.
pub trait AsOfJoin<'scope, K: 'static, V1: 'static> {
    /// Joins each event with its key's value in `table` as of the event's time; configure on
    /// the returned builder and pick `inner` or `left`.
    fn asof_join<V2: ExchangeData>(self, table: Table<'scope, K, V2>) -> AsOfJoinBuilder<'scope, K, V1, V2>;
}

impl<'scope, K: ExchangeData, V1: ExchangeData> AsOfJoin<'scope, K, V1> for VecCollection<'scope, Time, Event<K, V1>> {
    fn asof_join<V2: ExchangeData>(self, table: Table<'scope, K, V2>) -> AsOfJoinBuilder<'scope, K, V1, V2> {
        AsOfJoinBuilder { events: self, table, allowed_lateness: 0, name: None, state: None }
    }
}

/// An as-of join being configured: see [the module documentation](self) for its semantics.
pub struct AsOfJoinBuilder<'scope, K: 'static, V1: 'static, V2: 'static> {
    events: VecCollection<'scope, Time, Event<K, V1>>,
    table: Table<'scope, K, V2>,
    allowed_lateness: u64,
    name: Option<String>,
    state: Option<Arc<StateMetrics>>,
}

/// One key of the table: its values now, and its value after each recent change.
struct KeyHistory<V> {
    values: BTreeMap<V, isize>,
    /// `(dataflow time, value after the change)`, in time order.
    changes: VecDeque<(Time, Option<V>)>,
}

impl<V: Clone> KeyHistory<V> {
    fn value(&self) -> Option<V> {
        self.values.iter().rev().find(|(_, count)| **count > 0).map(|(value, _)| value.clone())
    }

    /// The value as of dataflow time `time`.
    fn value_at(&self, time: Time) -> Option<V> {
        let after = self.changes.partition_point(|(changed, _)| *changed <= time);
        after.checked_sub(1).and_then(|i| self.changes[i].1.clone())
    }
}

impl<'scope, K: ExchangeData, V1: ExchangeData, V2: ExchangeData> AsOfJoinBuilder<'scope, K, V1, V2> {
    /// Admits event updates up to `lateness` after their event time, and keeps the table's
    /// history that long. Match the event source's `LatePolicy::Accept { allowed_lateness }`.
    pub fn allowed_lateness(mut self, lateness: Duration) -> Self {
        self.allowed_lateness = millis(lateness);
        self
    }

    /// Names the operator (for logs, diagnostics and metrics).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Reports entries held (the table's values and recent changes; not the events waiting for
    /// the table's frontier) and too-late events to `metrics`.
    pub fn state_metrics(mut self, metrics: Arc<StateMetrics>) -> Self {
        self.state = Some(metrics);
        self
    }

    /// Each event with its key's value as of its time; events whose key has no value then
    /// produce nothing.
    pub fn inner(self) -> VecCollection<'scope, Time, (Event<K, V1>, V2)> {
        self.inner_with_late().0
    }

    /// Each event with its key's value as of its time, or `None`.
    pub fn left(self) -> VecCollection<'scope, Time, (Event<K, V1>, Option<V2>)> {
        self.left_with_late().0
    }

    /// [`inner`](Self::inner), and the events that arrived too late, unchanged.
    pub fn inner_with_late(
        self,
    ) -> (VecCollection<'scope, Time, (Event<K, V1>, V2)>, VecCollection<'scope, Time, Event<K, V1>>) {
        let (joined, late) = self.left_with_late();
        (joined.flat_map(|(event, value)| value.map(|value| (event, value))), late)
    }

    /// [`left`](Self::left), and the events that arrived too late, unchanged.
    pub fn left_with_late(
        self,
    ) -> (VecCollection<'scope, Time, (Event<K, V1>, Option<V2>)>, VecCollection<'scope, Time, Event<K, V1>>) {
        let AsOfJoinBuilder { events, table, allowed_lateness: lateness, name, state } = self;
        let name = name.unwrap_or_else(|| "AsOfJoin".to_string());
        let scope = events.inner.scope();
        let (worker, peers) = (scope.index(), scope.peers());
        let counter = state.clone();
        let (admitted, late) = events.inner.ok_err::<Vec<_>, _, Vec<_>, _, _>(move |(event, at, diff)| {
            if at <= event.time.saturating_add(lateness) {
                Ok((event, at, diff))
            } else {
                if let Some(metrics) = &counter {
                    metrics.add_late_skipped(1);
                }
                Err((event, at, diff))
            }
        });
        let event_pact = Exchange::new(|update: &Update<Event<K, V1>>| update.0.key.hashed());
        let table_pact = Exchange::new(|update: &Update<(K, V2)>| update.0.0.hashed());
        let joined = admitted
            .binary_frontier::<_, CapacityContainerBuilder<Vec<Update<(Event<K, V1>, Option<V2>)>>>, _, _, _, _>(
                table.into_collection().inner,
                event_pact,
                table_pact,
                &name,
                move |_capability, _info| {
                    let mut keys: FastMap<K, KeyHistory<V2>> = FastMap::default();
                    let mut table_pending: BTreeMap<Time, Vec<((K, V2), isize)>> = BTreeMap::new();
                    // Admitted event updates by event time, waiting for the table to be complete.
                    let mut waiting: BTreeMap<Time, Vec<(Event<K, V1>, Time, isize)>> = BTreeMap::new();
                    let mut caps: BTreeMap<Time, (Capability<Time>, usize)> = BTreeMap::new();
                    // Keys that changed at each time: their older changes become releasable.
                    let mut changed: BTreeMap<Time, Vec<K>> = BTreeMap::new();
                    let mut live: usize = 0;
                    move |(event_input, event_frontier), (table_input, table_frontier), output| {
                        event_input.for_each(|cap, data| {
                            for (event, at, diff) in data.drain(..) {
                                caps.entry(at).or_insert_with(|| (cap.delayed(&at, 0), 0)).1 += 1;
                                waiting.entry(event.time).or_default().push((event, at, diff));
                            }
                        });
                        table_input.for_each(|_cap, data| {
                            for (row, at, diff) in data.drain(..) {
                                table_pending.entry(at).or_default().push((row, diff));
                            }
                        });

                        // Apply the table's complete times, in order, recording each key's changes.
                        while let Some(entry) = table_pending.first_entry() {
                            if table_frontier.less_equal(entry.key()) {
                                break;
                            }
                            let (at, mut updates) = entry.remove_entry();
                            consolidate(&mut updates);
                            let mut updates = updates.into_iter().peekable();
                            while let Some(((key, value), diff)) = updates.next() {
                                let history = keys.entry(key.clone()).or_insert_with(|| KeyHistory {
                                    values: BTreeMap::new(),
                                    changes: VecDeque::new(),
                                });
                                let before = history.value();
                                let mut apply = |value: V2, diff: isize| {
                                    let count = history.values.entry(value.clone()).or_insert(0);
                                    if *count == 0 {
                                        live += 1;
                                    }
                                    *count += diff;
                                    if *count == 0 {
                                        history.values.remove(&value);
                                        live -= 1;
                                    }
                                };
                                apply(value, diff);
                                while let Some(((next, _), _)) = updates.peek()
                                    && *next == key
                                {
                                    let ((_, value), diff) = updates.next().expect("peeked");
                                    apply(value, diff);
                                }
                                let after = history.value();
                                if after != before {
                                    history.changes.push_back((at, after));
                                    live += 1;
                                    changed.entry(at).or_default().push(key);
                                }
                            }
                        }

                        // Join the events whose time the table has completed.
                        let mut results: BTreeMap<Time, Vec<Update<(Event<K, V1>, Option<V2>)>>> = BTreeMap::new();
                        while let Some(entry) = waiting.first_entry() {
                            if table_frontier.less_equal(entry.key()) {
                                break;
                            }
                            let (time, events) = entry.remove_entry();
                            for (event, at, diff) in events {
                                let value = keys.get(&event.key).and_then(|history| history.value_at(time));
                                results.entry(at).or_default().push(((event, value), at, diff));
                            }
                        }
                        for (at, mut rows) in results {
                            let (cap, count) = caps.get_mut(&at).expect("a waiting event holds its time");
                            *count -= rows.len();
                            output.session(&*cap).give_container(&mut rows);
                            if *count == 0 {
                                caps.remove(&at);
                            }
                        }

                        // Release history no future lookup can reach: lookups happen at event times
                        // at least `horizon`. Each key keeps its last change at or before it.
                        let future = event_frontier.frontier().first().map(|f| f.saturating_sub(lateness));
                        let horizon = match (future, waiting.keys().next()) {
                            (Some(f), Some(w)) => Some(f.min(*w)),
                            (Some(f), None) => Some(f),
                            (None, Some(w)) => Some(*w),
                            (None, None) => None,
                        };
                        while let Some(entry) = changed.first_entry() {
                            if horizon.is_some_and(|h| *entry.key() > h) {
                                break;
                            }
                            for key in entry.remove() {
                                let Some(history) = keys.get_mut(&key) else { continue };
                                let reachable = match horizon {
                                    Some(h) => history.changes.partition_point(|(time, _)| *time <= h),
                                    None => history.changes.len(),
                                };
                                // Keep the last change at or before the horizon.
                                let drop = reachable.saturating_sub(1);
                                history.changes.drain(..drop);
                                live -= drop;
                                if history.values.is_empty() && history.changes.len() == 1 && reachable >= 1 {
                                    // Absent now and at every reachable time: nothing to keep.
                                    history.changes.clear();
                                    live -= 1;
                                    keys.remove(&key);
                                }
                            }
                        }
                        if let Some(metrics) = &state {
                            metrics.set(worker, peers, live);
                        }
                    }
                },
            );
        (joined.as_collection(), late.as_collection())
    }
}
