//! Read models (CQRS): tables and aggregates queryable from outside the dataflow while it runs.
//!
//! A [`ReadModel`] is a shared, concurrent index of a keyed collection, created by the program
//! (usually once per process, outside `execute`) and filled by the dataflow through
//! [`Publish::publish`] (or [`Table::publish`](crate::table::Table::publish)). Any thread of the
//! program can then look keys up and scan ranges of keys, whichever worker owns them.
//!
//! Every answer is a [`Read`], which says which frontier it is consistent with: an answer with
//! frontier `F` reflects exactly the collection's updates at dataflow times before `F`, that is
//! the collection as of time `F − 1`, for *every* key it reads. The workers of a process stage
//! their updates in the model as they receive them; when a worker's input frontier passes some
//! times, the index applies every staged update of those times at once, under a write lock.
//! That is complete: timely's frontiers are global, so a worker sees its input's frontier pass
//! `t` only once every worker has consumed its updates at `t` — and each stages what it
//! consumes before its operator returns.
//!
//! # Examples
//!
//! ```
//! use tideline::prelude::*;
//! use tideline::table::read_model::ReadModel;
//! use tideline::runtime::{Cluster, execute};
//! use tideline::source::{SourceConfig, memory};
//!
//! let balances: ReadModel<char, i64> = ReadModel::new();
//! let model = balances.clone();
//! execute(&Cluster::threads(2), move |worker| {
//!     let model = model.clone();
//!     worker.dataflow::<Time, _, _>(move |scope| {
//!         let upserts = vec![Event::new(1_000, 'a', Some(10)), Event::new(2_000, 'b', Some(3)), Event::new(3_000, 'a', Some(12))];
//!         memory::from_iter(scope, SourceConfig::new("balances"), move || upserts.into_iter())
//!             .data
//!             .upsert()
//!             .table()
//!             .publish(&model);
//!     });
//! })
//! .unwrap();
//! let read = balances.get(&'a');
//! assert_eq!(read.value, Some(12));
//! assert_eq!(read.frontier, None, "the input is complete");
//! assert_eq!(balances.range('a'..='z').value, vec![('a', 12), ('b', 3)]);
//! ```
//!
//! # Processes
//!
//! A read model lives in one process: it holds what that process's workers write. With
//! [`Placement::Local`] (the default) every worker writes the keys it owns (keys are exchanged
//! by hash), so a single-process program sees every key, and each process of a cluster sees the
//! keys owned by its workers: a partial view, consistent with its frontier, to be queried in the
//! process that owns the key. With [`Placement::Gather`] all updates go to worker 0: process 0
//! holds the complete model, and the other processes' models stay empty. With
//! [`Placement::Replicate`] ([`ReadModel::replicated`]) every update is sent to the first
//! worker of every process: each process holds the complete model and answers any lookup, at
//! the cost of one copy of the collection per process.
//!
//! # Event time
//!
//! None of its own: the index shows the collection as of a dataflow time, and answers say
//! which. Updates of a time are applied once the frontier has passed it.
//!
//! # Late data
//!
//! Nothing is too late: updates are applied whenever their time completes.
//!
//! # State
//!
//! The collection's current contents (one entry per key, holding its values), plus the updates
//! of times not yet complete. Keys whose values are all retracted are removed.
//!
//! # Checkpointing
//!
//! Nothing of its own: a read model is rebuilt from the collection it publishes, which is a
//! function of the dataflow's checkpointed state. After a restart it is refilled from that
//! collection and its frontier starts again from `Some(0)`.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use differential_dataflow::VecCollection;
use differential_dataflow::consolidation::consolidate;
use differential_dataflow::hashable::Hashable;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Map;

use crate::runtime::ExchangeData;
use crate::time::Time;

/// Which workers write a read model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Placement {
    /// Every worker writes the keys it owns into its process's model.
    #[default]
    Local,
    /// All updates go to worker 0: process 0 holds the complete model.
    Gather,
    /// Every update goes to the first worker of every process: each process holds the
    /// complete model, so a lookup can be answered in any process. Costs one copy of the
    /// collection per process. `workers_per_process` is the cluster's `-w`.
    Replicate {
        /// Worker threads per process (timely numbers process `p`'s workers
        /// `p·w .. p·w + w`).
        workers_per_process: usize,
    },
}

/// An answer from a [`ReadModel`], with the frontier it is consistent with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Read<T> {
    /// The answer.
    pub value: T,
    /// The answer reflects every update at a dataflow time before this frontier, and no
    /// other: it is the collection as of time `frontier − 1`. `None`: the input is complete
    /// and the answer reflects all of it.
    pub frontier: Option<Time>,
}

impl<T> Read<T> {
    /// Whether the answer reflects every update at `time`.
    pub fn includes(&self, time: Time) -> bool {
        self.frontier.is_none_or(|f| time < f)
    }
}

struct View<K, V> {
    entries: BTreeMap<K, Vec<(V, isize)>>,
    frontier: Option<Time>,
}

struct Shared<K, V> {
    view: RwLock<View<K, V>>,
    /// Updates of times not yet complete, staged by the workers.
    staging: Mutex<BTreeMap<Time, Vec<((K, V), isize)>>>,
    published: (Mutex<()>, Condvar),
    placement: Placement,
}

/// A keyed collection's current contents, shared with the program's threads; see the
/// [module documentation](self).
///
/// Cloning a read model gives another handle on the same index.
pub struct ReadModel<K, V> {
    shared: Arc<Shared<K, V>>,
}

impl<K, V> Clone for ReadModel<K, V> {
    fn clone(&self) -> Self {
        ReadModel { shared: Arc::clone(&self.shared) }
    }
}

impl<K: Ord + Clone, V: Ord + Clone> Default for ReadModel<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

/// The value of a key: its greatest value present (a table has exactly one).
fn value_of<V: Clone>(values: &[(V, isize)]) -> Option<V> {
    values.iter().rev().find(|(_, count)| *count > 0).map(|(value, _)| value.clone())
}

impl<K: Ord + Clone, V: Ord + Clone> ReadModel<K, V> {
    /// An empty model, written by every worker of this process ([`Placement::Local`]).
    pub fn new() -> Self {
        Self::with(Placement::Local)
    }

    /// An empty model written by worker 0 alone ([`Placement::Gather`]).
    pub fn gathered() -> Self {
        Self::with(Placement::Gather)
    }

    /// An empty model that every process holds complete ([`Placement::Replicate`]); give the
    /// cluster's worker threads per process (`Cluster::workers`).
    pub fn replicated(workers_per_process: usize) -> Self {
        Self::with(Placement::Replicate { workers_per_process: workers_per_process.max(1) })
    }

    fn with(placement: Placement) -> Self {
        ReadModel {
            shared: Arc::new(Shared {
                view: RwLock::new(View { entries: BTreeMap::new(), frontier: Some(0) }),
                staging: Mutex::new(BTreeMap::new()),
                published: (Mutex::new(()), Condvar::new()),
                placement,
            }),
        }
    }

    /// Which workers write the model.
    pub fn placement(&self) -> Placement {
        self.shared.placement
    }

    fn read<T>(&self, logic: impl FnOnce(&BTreeMap<K, Vec<(V, isize)>>) -> T) -> Read<T> {
        let view = self.shared.view.read().expect("read model lock poisoned");
        Read { value: logic(&view.entries), frontier: view.frontier }
    }

    /// The value of `key`.
    pub fn get<Q>(&self, key: &Q) -> Read<Option<V>>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.read(|entries| entries.get(key).and_then(|values| value_of(values)))
    }

    /// The keys in `range` with their values, in key order.
    pub fn range<Q, R>(&self, range: R) -> Read<Vec<(K, V)>>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
        R: RangeBounds<Q>,
    {
        self.read(|entries| {
            entries.range(range).filter_map(|(key, values)| value_of(values).map(|v| (key.clone(), v))).collect()
        })
    }

    /// Every key with its value, in key order.
    pub fn snapshot(&self) -> Read<Vec<(K, V)>> {
        self.range::<K, _>(..)
    }

    /// The number of keys.
    pub fn len(&self) -> Read<usize> {
        self.read(|entries| entries.len())
    }

    /// Whether the model holds no key.
    pub fn is_empty(&self) -> Read<bool> {
        self.read(|entries| entries.is_empty())
    }

    /// The frontier the model currently reflects (`None`: its input is complete).
    pub fn frontier(&self) -> Option<Time> {
        self.shared.view.read().expect("read model lock poisoned").frontier
    }

    /// Blocks until the model reflects every update at `time` (its frontier has passed
    /// `time`), or until `timeout`; returns whether it does.
    pub fn wait_past(&self, time: Time, timeout: Duration) -> bool {
        self.wait_for(|frontier| frontier.is_none_or(|f| f > time), timeout)
    }

    /// Blocks until the model's input is complete, or until `timeout`; returns whether it is.
    pub fn wait_complete(&self, timeout: Duration) -> bool {
        self.wait_for(|frontier| frontier.is_none(), timeout)
    }

    fn wait_for(&self, done: impl Fn(Option<Time>) -> bool, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (lock, condvar) = &self.shared.published;
        let mut guard = lock.lock().expect("read model lock poisoned");
        loop {
            if done(self.frontier()) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            guard = condvar.wait_timeout(guard, deadline - now).expect("read model lock poisoned").0;
        }
    }

    /// Stages a worker's updates, and applies every staged update of the times its input's
    /// frontier has passed: all workers have staged those (see the module documentation).
    fn stage(&self, updates: Vec<((K, V), Time, isize)>, complete: Option<Time>) {
        let mut staging = self.shared.staging.lock().expect("read model lock poisoned");
        for (data, time, diff) in updates {
            staging.entry(time).or_default().push((data, diff));
        }
        let advanced = match (self.frontier(), complete) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(current), Some(next)) => next > current,
        };
        if !advanced {
            return;
        }
        let mut ready: Vec<((K, V), isize)> = match complete {
            None => std::mem::take(&mut *staging).into_values().flatten().collect(),
            Some(f) => {
                let later = staging.split_off(&f);
                std::mem::replace(&mut *staging, later).into_values().flatten().collect()
            }
        };
        consolidate(&mut ready);
        {
            let mut view = self.shared.view.write().expect("read model lock poisoned");
            for ((key, value), diff) in ready {
                let values = view.entries.entry(key.clone()).or_default();
                match values.binary_search_by(|(v, _)| v.cmp(&value)) {
                    Ok(found) => {
                        values[found].1 += diff;
                        if values[found].1 == 0 {
                            values.remove(found);
                        }
                    }
                    Err(position) => values.insert(position, (value, diff)),
                }
                if values.is_empty() {
                    view.entries.remove(&key);
                }
            }
            view.frontier = complete;
        }
        drop(staging);
        let (lock, condvar) = &self.shared.published;
        let _guard = lock.lock().expect("read model lock poisoned");
        condvar.notify_all();
    }
}

impl<V: Ord + Clone> ReadModel<String, V> {
    /// The keys starting with `prefix`, with their values, in key order.
    pub fn prefix(&self, prefix: &str) -> Read<Vec<(String, V)>> {
        self.read(|entries| {
            entries
                .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
                .take_while(|(key, _)| key.starts_with(prefix))
                .filter_map(|(key, values)| value_of(values).map(|v| (key.clone(), v)))
                .collect()
        })
    }
}

/// Publishes keyed collections to read models.
pub trait Publish<K, V> {
    /// Keeps `model` equal to the collection as of the latest complete frontier; see the
    /// [module documentation](self). A key with several values reads as its greatest one (a
    /// [`Table`](crate::table::Table) has exactly one).
    fn publish(self, model: &ReadModel<K, V>);
}

impl<K, V> Publish<K, V> for VecCollection<'_, Time, (K, V)>
where
    K: ExchangeData + Sync,
    V: ExchangeData + Sync,
{
    fn publish(self, model: &ReadModel<K, V>) {
        // The model lives outside the dataflow and is lost with the process: an at-least-once
        // source acknowledges nothing before its sinks are complete (see `crate::runtime::flow`).
        crate::runtime::flow::group(self.inner.scope()).register_retention(crate::runtime::flow::Retention::Unbounded);
        let placement = model.placement();
        let model = model.clone();
        let mut last: Option<Option<Time>> = None;
        let mut step = move |updates: Vec<((K, V), Time, isize)>, frontier: Option<Time>| {
            if !updates.is_empty() || last != Some(frontier) {
                last = Some(frontier);
                model.stage(updates, frontier);
            }
        };
        let name = "ReadModel";
        match placement {
            Placement::Local => {
                let pact = Exchange::new(|update: &((K, V), Time, isize)| update.0.0.hashed());
                self.inner.sink(pact, name, move |(input, frontier)| {
                    let mut updates = Vec::new();
                    input.for_each(|_cap, data| updates.append(data));
                    step(updates, frontier.frontier().first().copied());
                });
            }
            Placement::Gather => {
                let pact = Exchange::new(|_: &((K, V), Time, isize)| 0u64);
                self.inner.sink(pact, name, move |(input, frontier)| {
                    let mut updates = Vec::new();
                    input.for_each(|_cap, data| updates.append(data));
                    step(updates, frontier.frontier().first().copied());
                });
            }
            Placement::Replicate { workers_per_process } => {
                let peers = self.inner.scope().peers();
                assert!(
                    peers % workers_per_process == 0,
                    "ReadModel::replicated({workers_per_process}): the cluster has {peers} workers in all, not a \
                     multiple of {workers_per_process}; give the cluster's worker threads per process (-w)"
                );
                let writers: Vec<u64> =
                    (0..peers / workers_per_process).map(|p| (p * workers_per_process) as u64).collect();
                // One copy of each update per process, addressed to the process's first worker.
                let copies = self.inner.flat_map(move |(data, time, diff)| {
                    writers.iter().map(|writer| ((*writer, data.clone()), time, diff)).collect::<Vec<_>>()
                });
                let pact = Exchange::new(|update: &((u64, (K, V)), Time, isize)| update.0.0);
                copies.sink(pact, name, move |(input, frontier)| {
                    let mut updates = Vec::new();
                    input.for_each(|_cap, data| updates.extend(data.drain(..).map(|((_, d), t, r)| (d, t, r))));
                    step(updates, frontier.frontier().first().copied());
                });
            }
        }
    }
}
