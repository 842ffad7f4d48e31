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

use differential_dataflow::consolidation::consolidate;
use differential_dataflow::hashable::Hashable;
use differential_dataflow::{AsCollection, VecCollection};
use timely::dataflow::operators::core::{Filter, OkErr};

use crate::runtime::ExchangeData;
use crate::state::driver::{Holds, Step, TemporalLogic, unary};
use crate::state::{FastMap, Temporal, temporal_builder};
use crate::table::read_model::{Publish, ReadModel};
use crate::time::late::LatePolicy;
use crate::time::{Event, Time};

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
        let driven = Temporal::default().driven("TableChangelog".to_string());
        let (changes, _) =
            unary(self.view.inner, driven, |(key, _): &(K, V)| key.hashed(), ChangelogLogic(std::marker::PhantomData));
        changes
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
        UpsertBuilder { records: self, temporal: Temporal::default() }
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
/// A record's window is its own instant, its event time `t` (DESIGN §3): an update (a record,
/// or a retraction of one) arriving at dataflow time `τ` — a record behind the watermark
/// arrives at the watermark — is admitted if `τ ≤ t + allowed_lateness`, and applied like any
/// other, at `τ`. Later ones are **late**: they change nothing, go unchanged to the late output
/// ([`UpsertBuilder::table_with_late`], per the
/// [`LatePolicy`]) and are counted in
/// [`StateMetrics::late_skipped`](crate::runtime::metrics::StateMetrics::late_skipped). With no allowed lateness, a record behind the watermark is
/// late: an upsert's result is shown as soon as its record arrives, so a record behind it could
/// only correct it.
///
/// # State
///
/// Per key, its latest record, and the records with event times within the allowed lateness
/// of the frontier (which an admitted retraction could still bring back). A record is
/// released once the frontier passes `t + allowed_lateness` and a newer record of its key is
/// present; a key whose latest record is a tombstone is released entirely. Release emits
/// nothing downstream. Records held are reported to the operator's [`StateMetrics`](crate::runtime::metrics::StateMetrics).
///
/// # Checkpointing
///
/// The state is each key's records held. A checkpoint does not copy it: a restore re-reads
/// the input from the oldest record held (see [`crate::checkpoint`]).
///
/// Of the shared options ([`TemporalBuilder`](crate::state::TemporalBuilder)), allowed
/// lateness, late policy, name and metrics apply; there is no emission mode.
pub struct UpsertBuilder<'scope, K: 'static, V: 'static> {
    records: VecCollection<'scope, Time, Event<K, Option<V>>>,
    temporal: Temporal,
}

temporal_builder!(UpsertBuilder<'scope, K, V>);

/// One key's records: count per (event time, value), and the value the table shows.
struct KeyVersions<V> {
    versions: BTreeMap<(Time, Option<V>), isize>,
    current: Option<V>,
    /// When the key was first seen (what at-least-once sources may not acknowledge while it
    /// is held).
    since: Time,
}

impl<'scope, K: ExchangeData, V: ExchangeData> UpsertBuilder<'scope, K, V> {
    /// The table.
    pub fn table(self) -> Table<'scope, K, V> {
        self.table_with_late().0
    }

    /// The table, and the updates that arrived too late, unchanged.
    pub fn table_with_late(self) -> (Table<'scope, K, V>, VecCollection<'scope, Time, Event<K, Option<V>>>) {
        let UpsertBuilder { records, mut temporal } = self;
        let name = temporal.name_or(|| "Upsert".to_string());
        let metrics = temporal.metrics_named(&name);
        let (lateness, policy) = (temporal.allowed_lateness, temporal.late);
        let (admitted, late) = records.inner.ok_err::<Vec<_>, _, Vec<_>, _, _>(move |(record, at, diff)| {
            if at <= record.time.saturating_add(lateness) {
                Ok((record, at, diff))
            } else {
                metrics.add_late_skipped(1);
                Err((record, at, diff))
            }
        });
        let keep_late = policy == LatePolicy::SideOutput;
        let late = late.filter(move |_| keep_late);
        let logic = UpsertLogic {
            lateness,
            keys: FastMap::default(),
            settling: BTreeMap::new(),
            live: 0,
            holds: Holds::default(),
        };
        let (view, _) =
            unary(admitted, temporal.driven(name), |record: &Event<K, Option<V>>| record.key.hashed(), logic);
        (Table { view }, late.as_collection())
    }
}

struct UpsertLogic<K, V> {
    lateness: u64,
    keys: FastMap<K, KeyVersions<V>>,
    /// Keys with records that settle (can no longer be updated) after each time.
    settling: BTreeMap<Time, Vec<K>>,
    live: usize,
    holds: Holds,
}

impl<K: ExchangeData, V: ExchangeData> TemporalLogic for UpsertLogic<K, V> {
    type Input = Event<K, Option<V>>;
    type Timer = ();
    type Output = (K, V);
    type Late = ();

    fn step(&mut self, inputs: &mut Vec<(Self::Input, isize)>, _timers: &mut Vec<()>, step: &mut Step<'_, Self>) {
        let at = step.time();
        consolidate(inputs);
        let mut updates = inputs.drain(..).peekable();
        while let Some((first, diff)) = updates.next() {
            let key = first.key;
            let state = match self.keys.get_mut(&key) {
                Some(state) => state,
                None => {
                    self.holds.hold(at);
                    self.keys.entry(key.clone()).or_insert_with(|| KeyVersions {
                        versions: BTreeMap::new(),
                        current: None,
                        since: at,
                    })
                }
            };
            let (settling, live, lateness) = (&mut self.settling, &mut self.live, self.lateness);
            let mut apply = |time: Time, value: Option<V>, diff: isize| {
                settling.entry(time.saturating_add(lateness)).or_default().push(key.clone());
                let slot = state.versions.entry((time, value)).or_insert(0);
                if *slot == 0 {
                    *live += 1;
                }
                *slot += diff;
                if *slot == 0 {
                    *live -= 1;
                }
            };
            apply(first.time, first.value, diff);
            while let Some((next, diff)) = updates.next_if(|(next, _)| next.key == key) {
                apply(next.time, next.value, diff);
            }
            state.versions.retain(|_, count| *count != 0);
            let latest = state.versions.iter().rev().find(|(_, count)| **count > 0);
            let value = latest.and_then(|((_, value), _)| value.clone());
            if value != state.current {
                if let Some(old) = state.current.take() {
                    step.give((key.clone(), old), -1);
                }
                if let Some(new) = value.clone() {
                    step.give((key.clone(), new), 1);
                }
                state.current = value;
            }
            if state.versions.is_empty() && state.current.is_none() {
                self.holds.release(state.since);
                self.keys.remove(&key);
            }
        }
    }

    fn release(&mut self, frontier: Option<Time>) {
        // Release records no admitted update can reach any more, below each key's latest such
        // (settled) record.
        let settled_by = |time: Time| frontier.is_none_or(|f| time < f);
        while let Some(entry) = self.settling.first_entry() {
            if !settled_by(*entry.key()) {
                break;
            }
            for key in entry.remove() {
                let Some(state) = self.keys.get_mut(&key) else { continue };
                let lateness = self.lateness;
                let settled = state
                    .versions
                    .iter()
                    .rev()
                    .find(|((time, _), count)| **count > 0 && settled_by(time.saturating_add(lateness)))
                    .map(|(version, _)| version.clone());
                let Some(settled) = settled else { continue };
                let tombstone = settled.1.is_none();
                let kept = state.versions.split_off(&settled);
                self.live -= state.versions.len();
                state.versions = kept;
                if tombstone {
                    state.versions.remove(&settled);
                    self.live -= 1;
                }
                if state.versions.is_empty() {
                    debug_assert!(state.current.is_none(), "a key with a value keeps its latest record");
                    self.holds.release(state.since);
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

/// A table's changes, as upserts: stateless.
struct ChangelogLogic<K, V>(std::marker::PhantomData<(K, V)>);

impl<K: ExchangeData, V: ExchangeData> TemporalLogic for ChangelogLogic<K, V> {
    type Input = (K, V);
    type Timer = ();
    type Output = Event<K, Option<V>>;
    type Late = ();

    fn step(&mut self, inputs: &mut Vec<(Self::Input, isize)>, _timers: &mut Vec<()>, step: &mut Step<'_, Self>) {
        let at = step.time();
        consolidate(inputs);
        let mut changes: BTreeMap<K, Option<V>> = BTreeMap::new();
        for ((key, value), diff) in inputs.drain(..) {
            let slot = changes.entry(key).or_insert(None);
            // Updates are sorted by value: the greatest inserted value wins.
            if diff > 0 {
                *slot = Some(value);
            }
        }
        for (key, value) in changes {
            step.give(Event::new(at, key, value), 1);
        }
    }

    fn release(&mut self, _frontier: Option<Time>) {}

    fn live_entries(&self) -> usize {
        0
    }

    fn oldest(&self) -> Option<Time> {
        None
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
    /// The state is the collection's contents, kept for as long as the table lives: a checkpoint
    /// does not copy it, and in a checkpointed dataflow a table holds the replay time at the
    /// start (see [`crate::checkpoint`]).
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
        // The arrangement keeps the collection's contents: an at-least-once source
        // acknowledges nothing before its sinks are complete (see `crate::runtime::flow`).
        crate::runtime::flow::group(self.inner.scope()).register_retention(crate::runtime::flow::Retention::Unbounded);
        let view = self.reduce_named("ToTable", |_key, values, out| {
            if let Some((value, _)) = values.iter().rev().find(|(_, count)| *count > 0) {
                out.push(((*value).clone(), 1));
            }
        });
        Table { view }
    }
}
