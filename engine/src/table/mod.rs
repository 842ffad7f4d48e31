//! Tables: the latest value per key, as a materialized view of a changelog stream (DESIGN §6).
//!
//! The stream–table duality: a stream of upserts is the changelog of a table, and a table is the
//! materialized view of such a stream.
//!
//! - [`Upsert::upsert`] builds a [`Table`] from a stream of `Event<K, Option<V>>` records (`Some`
//!   sets the key's value, `None` is a tombstone that deletes it): each key holds the value of
//!   its latest record by *event time*.
//! - [`Tables::to_table`] makes a table of any keyed collection, e.g. an aggregation (a KTable).
//! - [`Table::changelog`] turns a table back into a stream of upserts, one per change of a key;
//!   upserting that stream gives the same table.
//!
//! A table is consumed as its [`collection`](Table::collection) of `(key, value)` pairs (a
//! changelog: a new value retracts the old one), by [as-of joins](crate::join::asof), or
//! published to a [`ReadModel`] for queries from other threads.
//!
//! # Examples
//!
//! ```
//! use tideline::prelude::*;
//! use tideline::source::{SourceConfig, memory};
//!
//! let upserts = vec![
//!     Event::new(1_000, 'a', Some(1)),
//!     Event::new(2_000, 'b', Some(2)),
//!     Event::new(3_000, 'a', Some(3)),
//!     Event::new(4_000, 'b', None),
//! ];
//! let changes = tideline::runtime::collect(1, move |scope| {
//!     let upserts = upserts.clone();
//!     memory::from_iter(scope, SourceConfig::new("upserts"), move || upserts.into_iter())
//!         .data
//!         .upsert()
//!         .table()
//!         .into_collection()
//! });
//! assert_eq!(changes, vec![
//!     (('a', 1), 1_000, 1),
//!     (('b', 2), 2_000, 1),
//!     (('a', 1), 3_000, -1), // a new value retracts the old one
//!     (('a', 3), 3_000, 1),
//!     (('b', 2), 4_000, -1), // a tombstone deletes the key
//! ]);
//! ```

pub mod read_model;

use std::collections::BTreeMap;
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
use crate::table::read_model::{Publish, ReadModel};
use crate::time::{Event, Time, millis};

type Update<D> = (D, Time, isize);

/// A table: at most one value per key at every time, maintained as a changelog collection.
///
/// Built by [`Upsert::upsert`] or [`Tables::to_table`].
pub struct Table<'scope, K: 'static, V: 'static> {
    view: VecCollection<'scope, Time, (K, V)>,
}

impl<K: Clone + 'static, V: Clone + 'static> Clone for Table<'_, K, V> {
    fn clone(&self) -> Self {
        Table { view: self.view.clone() }
    }
}

impl<'scope, K: ExchangeData, V: ExchangeData> Table<'scope, K, V> {
    /// The table as a collection of `(key, value)` pairs: its changelog, in which a key's new
    /// value retracts its old one at the dataflow time of the change.
    pub fn collection(&self) -> VecCollection<'scope, Time, (K, V)> {
        self.view.clone()
    }

    /// The table as a collection of `(key, value)` pairs (see [`collection`](Self::collection)).
    pub fn into_collection(self) -> VecCollection<'scope, Time, (K, V)> {
        self.view
    }

    /// The table as a stream of upserts: for every change of a key's value at dataflow time `τ`,
    /// the record `Event { time: τ, key, value }` (`None` when the key is deleted), at `τ`.
    ///
    /// Upserting this stream gives the same table: the stream is the table's changelog.
    ///
    /// # Examples
    ///
    /// ```
    /// use tideline::prelude::*;
    /// use tideline::source::{SourceConfig, memory};
    ///
    /// let upserts = vec![Event::new(1, 'k', Some(5)), Event::new(2, 'k', Some(5)), Event::new(3, 'k', None)];
    /// let changes = tideline::runtime::collect(1, move |scope| {
    ///     let upserts = upserts.clone();
    ///     memory::from_iter(scope, SourceConfig::new("upserts"), move || upserts.into_iter())
    ///         .data
    ///         .upsert()
    ///         .table()
    ///         .changelog()
    /// });
    /// // Setting the same value again is no change.
    /// assert_eq!(changes, vec![(Event::new(1, 'k', Some(5)), 1, 1), (Event::new(3, 'k', None), 3, 1)]);
    /// ```
    pub fn changelog(self) -> VecCollection<'scope, Time, Event<K, Option<V>>> {
        let exchange = Exchange::new(|update: &Update<(K, V)>| update.0.0.hashed());
        self.view
            .inner
            .unary_frontier::<CapacityContainerBuilder<Vec<Update<Event<K, Option<V>>>>>, _, _, _>(
                exchange,
                "TableChangelog",
                |_capability, _info| {
                    let mut pending: BTreeMap<Time, (Capability<Time>, Vec<(K, V, isize)>)> = BTreeMap::new();
                    move |(input, frontier), output| {
                        input.for_each(|cap, data| {
                            for ((key, value), at, diff) in data.drain(..) {
                                pending
                                    .entry(at)
                                    .or_insert_with(|| (cap.delayed(&at, 0), Vec::new()))
                                    .1
                                    .push((key, value, diff));
                            }
                        });
                        while let Some(entry) = pending.first_entry() {
                            if frontier.less_equal(entry.key()) {
                                break;
                            }
                            let (at, (cap, updates)) = entry.remove_entry();
                            let mut updates: Vec<((K, V), isize)> =
                                updates.into_iter().map(|(k, v, d)| ((k, v), d)).collect();
                            consolidate(&mut updates);
                            let mut changes: BTreeMap<K, Option<V>> = BTreeMap::new();
                            for ((key, value), diff) in updates {
                                let slot = changes.entry(key).or_insert(None);
                                // Updates are sorted by value: the greatest inserted value wins.
                                if diff > 0 {
                                    *slot = Some(value);
                                }
                            }
                            let mut session = output.session(&cap);
                            for (key, value) in changes {
                                session.give((Event::new(at, key, value), at, 1));
                            }
                        }
                    }
                },
            )
            .as_collection()
    }

    /// Publishes the table to `model` for lookups and scans from other threads (see
    /// [`Publish::publish`]).
    pub fn publish(self, model: &ReadModel<K, V>)
    where
        K: Sync,
        V: Sync,
    {
        self.view.publish(model);
    }
}

/// Builds tables from keyed upsert streams.
pub trait Upsert<'scope, K: 'static, V: 'static> {
    /// The latest value per key by event time; configure on the returned builder.
    fn upsert(self) -> UpsertBuilder<'scope, K, V>;
}

impl<'scope, K: ExchangeData, V: ExchangeData> Upsert<'scope, K, V>
    for VecCollection<'scope, Time, Event<K, Option<V>>>
{
    fn upsert(self) -> UpsertBuilder<'scope, K, V> {
        UpsertBuilder { records: self, allowed_lateness: 0, name: None, state: None }
    }
}

/// An upsert table being configured.
///
/// # Event time
///
/// Each key's value is that of its latest record by event time ([`Event::time`]); at equal
/// event times a value wins over a tombstone, and the greater value (by `Ord`) over a smaller
/// one, so the result never depends on arrival order. A record that is not the latest when it
/// arrives changes nothing; a newer one retracts the key's old value and inserts its own (a
/// tombstone only retracts), at the dataflow time the record arrives. Re-delivering a record
/// changes nothing (the table is a function of the *set* of records present), and retracting
/// a delivered record undoes it: if it was the latest, the key reverts to the latest remaining
/// record.
///
/// # Late data
///
/// An update (a record, or a retraction of one) with event time `t` arriving at dataflow time
/// `τ` is admitted if `τ ≤ t + allowed_lateness`. Admitted late records are applied like any
/// other, at `τ`. Later ones are too late: they change nothing, go unchanged to the late
/// output ([`UpsertBuilder::table_with_late`]) and are counted in
/// [`StateMetrics::late_skipped`]. Records accepted late by a source
/// (`LatePolicy::Accept { allowed_lateness }`) are all admitted by an upsert with the same
/// allowed lateness.
///
/// # State
///
/// Per key, its latest record, and the records with event times within the allowed lateness
/// of the frontier (which an admitted retraction could still bring back). A record is
/// released once the frontier passes `t + allowed_lateness` and a newer record of its key is
/// present; a key whose latest record is a tombstone is released entirely. Release emits
/// nothing downstream. Records held are reported to [`StateMetrics`] if one is attached.
///
/// # Checkpointing
///
/// The state is a function of the admitted records not yet released: a checkpoint records
/// those inputs (DESIGN §8).
pub struct UpsertBuilder<'scope, K: 'static, V: 'static> {
    records: VecCollection<'scope, Time, Event<K, Option<V>>>,
    allowed_lateness: u64,
    name: Option<String>,
    state: Option<Arc<StateMetrics>>,
}

/// One key's records: count per (event time, value), and the value the table shows.
struct KeyVersions<V> {
    versions: BTreeMap<(Time, Option<V>), isize>,
    current: Option<V>,
}

impl<'scope, K: ExchangeData, V: ExchangeData> UpsertBuilder<'scope, K, V> {
    /// Admits updates up to `lateness` after their event time. Match the source's
    /// `LatePolicy::Accept { allowed_lateness }`.
    pub fn allowed_lateness(mut self, lateness: Duration) -> Self {
        self.allowed_lateness = millis(lateness);
        self
    }

    /// Names the operator (for logs, diagnostics and metrics).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Reports records held and too-late updates to `metrics`.
    pub fn state_metrics(mut self, metrics: Arc<StateMetrics>) -> Self {
        self.state = Some(metrics);
        self
    }

    /// The table.
    pub fn table(self) -> Table<'scope, K, V> {
        self.table_with_late().0
    }

    /// The table, and the updates that arrived too late, unchanged.
    pub fn table_with_late(self) -> (Table<'scope, K, V>, VecCollection<'scope, Time, Event<K, Option<V>>>) {
        let UpsertBuilder { records, allowed_lateness: lateness, name, state } = self;
        let name = name.unwrap_or_else(|| "Upsert".to_string());
        let scope = records.inner.scope();
        let (worker, peers) = (scope.index(), scope.peers());
        let counter = state.clone();
        let (admitted, late) = records.inner.ok_err::<Vec<_>, _, Vec<_>, _, _>(move |(record, at, diff)| {
            if at <= record.time.saturating_add(lateness) {
                Ok((record, at, diff))
            } else {
                if let Some(metrics) = &counter {
                    metrics.add_late_skipped(1);
                }
                Err((record, at, diff))
            }
        });
        let exchange = Exchange::new(|update: &Update<Event<K, Option<V>>>| update.0.key.hashed());
        let view = admitted.unary_frontier::<CapacityContainerBuilder<Vec<Update<(K, V)>>>, _, _, _>(
            exchange,
            &name,
            move |_capability, _info| {
                let mut keys: FastMap<K, KeyVersions<V>> = FastMap::default();
                let mut pending: BTreeMap<Time, (Capability<Time>, Vec<(Event<K, Option<V>>, isize)>)> =
                    BTreeMap::new();
                // Keys with records that settle (can no longer be updated) after each time.
                let mut settling: BTreeMap<Time, Vec<K>> = BTreeMap::new();
                let mut live: usize = 0;
                move |(input, frontier), output| {
                    input.for_each(|cap, data| {
                        for (record, at, diff) in data.drain(..) {
                            pending
                                .entry(at)
                                .or_insert_with(|| (cap.delayed(&at, 0), Vec::new()))
                                .1
                                .push((record, diff));
                        }
                    });
                    while let Some(entry) = pending.first_entry() {
                        if frontier.less_equal(entry.key()) {
                            break;
                        }
                        let (at, (cap, mut updates)) = entry.remove_entry();
                        consolidate(&mut updates);
                        let mut session = output.session(&cap);
                        let mut updates = updates.into_iter().peekable();
                        while let Some((first, diff)) = updates.next() {
                            let key = first.key;
                            let state = keys
                                .entry(key.clone())
                                .or_insert_with(|| KeyVersions { versions: BTreeMap::new(), current: None });
                            let mut apply = |time: Time, value: Option<V>, diff: isize| {
                                settling.entry(time.saturating_add(lateness)).or_default().push(key.clone());
                                let slot = state.versions.entry((time, value)).or_insert(0);
                                if *slot == 0 {
                                    live += 1;
                                }
                                *slot += diff;
                                if *slot == 0 {
                                    live -= 1;
                                }
                            };
                            apply(first.time, first.value, diff);
                            while let Some((next, _)) = updates.peek()
                                && next.key == key
                            {
                                let (next, diff) = updates.next().expect("peeked");
                                apply(next.time, next.value, diff);
                            }
                            state.versions.retain(|_, count| *count != 0);
                            let latest = state.versions.iter().rev().find(|(_, count)| **count > 0);
                            let value = latest.and_then(|((_, value), _)| value.clone());
                            if value != state.current {
                                if let Some(old) = state.current.take() {
                                    session.give(((key.clone(), old), at, -1));
                                }
                                if let Some(new) = value.clone() {
                                    session.give(((key.clone(), new), at, 1));
                                }
                                state.current = value;
                            }
                            if state.versions.is_empty() && state.current.is_none() {
                                keys.remove(&key);
                            }
                        }
                    }
                    // Release records no admitted update can reach any more, below each key's
                    // latest such (settled) record.
                    while let Some(entry) = settling.first_entry() {
                        if frontier.less_equal(entry.key()) {
                            break;
                        }
                        for key in entry.remove() {
                            let Some(state) = keys.get_mut(&key) else { continue };
                            let settled = state
                                .versions
                                .iter()
                                .rev()
                                .find(|((time, _), count)| {
                                    **count > 0 && !frontier.less_equal(&time.saturating_add(lateness))
                                })
                                .map(|(version, _)| version.clone());
                            let Some(settled) = settled else { continue };
                            let tombstone = settled.1.is_none();
                            let kept = state.versions.split_off(&settled);
                            live -= state.versions.len();
                            state.versions = kept;
                            if tombstone {
                                state.versions.remove(&settled);
                                live -= 1;
                            }
                            if state.versions.is_empty() {
                                debug_assert!(state.current.is_none(), "a key with a value keeps its latest record");
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
        (Table { view: view.as_collection() }, late.as_collection())
    }
}

/// Makes tables of keyed collections.
pub trait Tables<'scope, K: 'static, V: 'static> {
    /// The collection as a table: each key's value is its greatest value (by `Ord`) present.
    ///
    /// For a collection with at most one value per key (an aggregation's output, say) this is
    /// the collection itself, now typed as a table (a KTable).
    ///
    /// # Event time
    ///
    /// None of its own: the table changes at the dataflow times at which the collection does.
    ///
    /// # Late data
    ///
    /// Nothing is too late: changes apply at the dataflow time they arrive.
    ///
    /// # State
    ///
    /// The collection's current contents, arranged by key, and the table's (differential's
    /// `reduce`; history is compacted as the frontier advances). A
    /// [`live_records`](crate::runtime::metrics::LiveRecords::live_records) gauge on the input reports
    /// its size.
    ///
    /// # Checkpointing
    ///
    /// The state is the collection's contents at the checkpoint's frontier.
    ///
    /// # Examples
    ///
    /// ```
    /// use tideline::differential_dataflow::input::Input;
    /// use tideline::prelude::*;
    /// use tideline::timely::dataflow::Scope;
    ///
    /// // A KTable of sums per key.
    /// let sums = tideline::runtime::collect(1, |scope: Scope<'_, Time>| {
    ///     let (_, amounts) = scope.new_collection_from(vec![('a', 5i64), ('a', 7), ('b', 1)]);
    ///     amounts
    ///         .reduce(|_key, values, out| out.push((values.iter().map(|(v, n)| **v * *n as i64).sum::<i64>(), 1)))
    ///         .to_table()
    ///         .into_collection()
    /// });
    /// assert_eq!(sums, vec![(('a', 12), 0, 1), (('b', 1), 0, 1)]);
    /// ```
    fn to_table(self) -> Table<'scope, K, V>;
}

impl<'scope, K: ExchangeData, V: ExchangeData> Tables<'scope, K, V> for VecCollection<'scope, Time, (K, V)> {
    fn to_table(self) -> Table<'scope, K, V> {
        let view = self.reduce_named("ToTable", |_key, values, out| {
            if let Some((value, _)) = values.iter().rev().find(|(_, count)| *count > 0) {
                out.push(((*value).clone(), 1));
            }
        });
        Table { view }
    }
}
