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
//! An event's window is the instant of its lookup, its event time `t` (DESIGN §3): an update of
//! an event arriving at dataflow time `τ` — an event behind the watermark arrives at the
//! watermark — is admitted if `τ ≤ t + allowed_lateness`, and looks the table up as of `t`;
//! later ones are **late**: they go unchanged to the late output
//! ([`AsOfJoinBuilder::inner_with_late`], [`AsOfJoinBuilder::left_with_late`], per the
//! [`LatePolicy`]) and are counted in
//! [`StateMetrics::late_skipped`](crate::runtime::metrics::StateMetrics::late_skipped). Table changes are never late: they take effect when they
//! arrive.
//!
//! # State
//!
//! The table's current contents, the history of its changes at dataflow times within the
//! allowed lateness of the stream's frontier (older versions are released except each key's
//! latest, which later events still see), and the events waiting for the table to be complete
//! up to their time. Keys absent from the table with no recent history hold nothing. Release
//! emits nothing downstream. Table values, changes and waiting events are reported to the
//! operator's [`StateMetrics`](crate::runtime::metrics::StateMetrics).
//!
//! # Checkpointing
//!
//! The state is the table's contents and recent history per key. A checkpoint does not copy
//! it: a restore re-reads the input from the oldest record it holds, the current value of each
//! key included (see [`crate::checkpoint`]).

use std::collections::{BTreeMap, VecDeque};

use differential_dataflow::consolidation::consolidate;
use differential_dataflow::hashable::Hashable;
use differential_dataflow::{AsCollection, VecCollection};
use timely::dataflow::operators::core::{Filter, OkErr};

use crate::runtime::ExchangeData;
use crate::state::driver::{Holds, Side, Step, TemporalLogic, binary};
use crate::state::{FastMap, Temporal, temporal_builder};
use crate::table::Table;
use crate::time::late::LatePolicy;
use crate::time::{Event, Time};

/// As-of joins of event streams with tables.
pub trait AsOfJoin<'scope, K: 'static, V1: 'static> {
    /// Joins each event with its key's value in `table` as of the event's time; configure on
    /// the returned builder and pick `inner` or `left`.
    fn asof_join<V2: ExchangeData>(self, table: Table<'scope, K, V2>) -> AsOfJoinBuilder<'scope, K, V1, V2>;
}

impl<'scope, K: ExchangeData, V1: ExchangeData> AsOfJoin<'scope, K, V1> for VecCollection<'scope, Time, Event<K, V1>> {
    fn asof_join<V2: ExchangeData>(self, table: Table<'scope, K, V2>) -> AsOfJoinBuilder<'scope, K, V1, V2> {
        AsOfJoinBuilder { events: self, table, temporal: Temporal::default() }
    }
}

/// An as-of join being configured (allowed lateness, late policy, name, metrics:
/// [`TemporalBuilder`](crate::state::TemporalBuilder); there is no emission mode, an event's
/// result is final when it appears): see [the module documentation](self) for its semantics.
pub struct AsOfJoinBuilder<'scope, K: 'static, V1: 'static, V2: 'static> {
    events: VecCollection<'scope, Time, Event<K, V1>>,
    table: Table<'scope, K, V2>,
    temporal: Temporal,
}

temporal_builder!(AsOfJoinBuilder<'scope, K, V1, V2>);

/// One key of the table: its values now, and its value after each recent change.
struct KeyHistory<V> {
    values: BTreeMap<V, isize>,
    /// `(dataflow time, value after the change)`, in time order.
    changes: VecDeque<(Time, Option<V>)>,
    /// When the key was first seen (what at-least-once sources may not acknowledge while it
    /// is held).
    since: Time,
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
        let AsOfJoinBuilder { events, table, mut temporal } = self;
        let name = temporal.name_or(|| "AsOfJoin".to_string());
        let metrics = temporal.metrics_named(&name);
        let (lateness, policy) = (temporal.allowed_lateness, temporal.late);
        let (admitted, late) = events.inner.ok_err::<Vec<_>, _, Vec<_>, _, _>(move |(event, at, diff)| {
            if at <= event.time.saturating_add(lateness) {
                Ok((event, at, diff))
            } else {
                metrics.add_late_skipped(1);
                Err((event, at, diff))
            }
        });
        let keep_late = policy == LatePolicy::SideOutput;
        let late = late.filter(move |_| keep_late);
        let logic = AsOfLogic {
            lateness,
            keys: FastMap::default(),
            changed: BTreeMap::new(),
            live: 0,
            holds: Holds::default(),
            events: std::marker::PhantomData,
        };
        let (joined, _) = binary(
            admitted,
            table.into_collection().inner,
            temporal.driven(name),
            |event: &Event<K, V1>| event.key.hashed(),
            |row: &(K, V2)| row.0.hashed(),
            logic,
        );
        (joined, late.as_collection())
    }
}

struct AsOfLogic<K, V1, V2> {
    lateness: u64,
    keys: FastMap<K, KeyHistory<V2>>,
    /// Keys that changed at each time: their older changes become releasable.
    changed: BTreeMap<Time, Vec<K>>,
    live: usize,
    holds: Holds,
    events: std::marker::PhantomData<fn(V1)>,
}

impl<K: ExchangeData, V1: ExchangeData, V2: ExchangeData> TemporalLogic for AsOfLogic<K, V1, V2> {
    type Input = Side<Event<K, V1>, (K, V2)>;
    type Timer = ();
    type Output = (Event<K, V1>, Option<V2>);
    type Late = ();

    fn step(&mut self, inputs: &mut Vec<(Self::Input, isize)>, _timers: &mut Vec<()>, step: &mut Step<'_, Self>) {
        let at = step.time();
        let mut rows = Vec::new();
        let mut events = Vec::new();
        for (input, diff) in inputs.drain(..) {
            match input {
                Side::Left(event) => events.push((event, diff)),
                Side::Right(row) => rows.push((row, diff)),
            }
        }
        // The table's changes at `at` first: an event at `at` sees them.
        consolidate(&mut rows);
        let mut rows = rows.into_iter().peekable();
        while let Some(((key, value), diff)) = rows.next() {
            let history = match self.keys.get_mut(&key) {
                Some(history) => history,
                None => {
                    self.holds.hold(at);
                    self.keys.entry(key.clone()).or_insert_with(|| KeyHistory {
                        values: BTreeMap::new(),
                        changes: VecDeque::new(),
                        since: at,
                    })
                }
            };
            let before = history.value();
            let live = &mut self.live;
            let mut apply = |value: V2, diff: isize| {
                let count = history.values.entry(value.clone()).or_insert(0);
                if *count == 0 {
                    *live += 1;
                }
                *count += diff;
                if *count == 0 {
                    history.values.remove(&value);
                    *live -= 1;
                }
            };
            apply(value, diff);
            while let Some(((_, value), diff)) = rows.next_if(|((next, _), _)| *next == key) {
                apply(value, diff);
            }
            let after = history.value();
            if after != before {
                history.changes.push_back((at, after));
                self.live += 1;
                self.changed.entry(at).or_default().push(key);
            }
        }
        for (event, diff) in events {
            let value = self.keys.get(&event.key).and_then(|history| history.value_at(event.time));
            step.give((event, value), diff);
        }
    }

    fn release(&mut self, frontier: Option<Time>) {
        // Release history no future lookup can reach: future events arrive at or after the
        // frontier, so they look up times at or after `frontier - lateness`. Each key keeps its
        // last change at or before that horizon.
        let horizon = frontier.map(|f| f.saturating_sub(self.lateness));
        while let Some(entry) = self.changed.first_entry() {
            if horizon.is_some_and(|h| *entry.key() > h) {
                break;
            }
            for key in entry.remove() {
                let Some(history) = self.keys.get_mut(&key) else { continue };
                let reachable = match horizon {
                    Some(h) => history.changes.partition_point(|(time, _)| *time <= h),
                    None => history.changes.len(),
                };
                // Keep the last change at or before the horizon.
                let drop = reachable.saturating_sub(1);
                history.changes.drain(..drop);
                self.live -= drop;
                if history.values.is_empty() && history.changes.len() == 1 && reachable >= 1 {
                    // Absent now and at every reachable time: nothing to keep.
                    history.changes.clear();
                    self.live -= 1;
                    self.holds.release(history.since);
                    self.keys.remove(&key);
                }
            }
        }
    }

    fn live_entries(&self) -> usize {
        self.live
    }

    fn oldest(&self) -> Option<Time> {
        self.holds.oldest()
    }
}
