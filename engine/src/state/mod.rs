//! Operator state: the vocabulary every stateful temporal operator shares, and the driver they
//! all run on.
//!
//! Every stateful operator — windows, sessions, dedup, top-N, interval, window and as-of joins,
//! upsert tables — is built on one timely operator, the temporal driver (crate-private): it
//! buffers inputs until the frontier passes their time, applies them in time order with the
//! operator's timers, emits, releases state, and does for every operator what none may forget:
//! it reports live state and late records to [`StateMetrics`]
//! and registers what the state still holds with the flow group, so that at-least-once sources
//! acknowledge only what no state refers to any more ([`crate::runtime::flow`]).
//!
//! The builders of those operators share one options type, [`Temporal`], and set it through
//! the [`TemporalBuilder`] trait: emission mode, allowed lateness, late policy, name and
//! metrics mean the same thing on every operator.

pub(crate) mod driver;

use std::sync::Arc;
use std::time::Duration;

use crate::runtime::metrics::StateMetrics;
use crate::time::late::LatePolicy;
use crate::time::millis;

/// Hash maps with a fast, fixed-seed hasher for operator state (keys come from the data, so
/// iteration order never decides results; a fixed seed keeps runs reproducible).
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::FixedState>;

/// When results are emitted (DESIGN §4). The same words mean the same thing on every operator.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Emit {
    /// One result per window and key once the frontier passes the window's end; afterwards
    /// only explicit late corrections (within the allowed lateness).
    #[default]
    Final,
    /// The result is refined at every event time at which it changes (retraction of the old
    /// result, insertion of the new one).
    Updates,
}

/// The temporal vocabulary shared by every stateful operator's builder: emission mode, allowed
/// lateness, what happens to late records, a name and live-state metrics.
///
/// Set it through [`TemporalBuilder`]'s methods; operators without an emission mode of their
/// own (upsert tables, as-of joins) ignore [`Temporal::emit`].
#[derive(Clone, Debug, Default)]
pub struct Temporal {
    /// The emission mode (default [`Emit::Final`]).
    pub emit: Emit,
    /// How long after a window's (session's, group's, interval's) end it still takes records
    /// and emits corrections, in ms (default 0: an emitted result is never corrected).
    pub allowed_lateness: u64,
    /// What happens to records too late for every window they belong to (default
    /// [`LatePolicy::SideOutput`]: they appear on the operator's late output).
    pub late: LatePolicy,
    /// The operator's name, for logs, diagnostics and metrics (a default describes it).
    pub name: Option<String>,
    /// Where to report live state entries and late records (one is made if not given).
    pub metrics: Option<Arc<StateMetrics>>,
}

impl Temporal {
    /// The name, or `default()` if none was given.
    pub(crate) fn name_or(&self, default: impl FnOnce() -> String) -> String {
        self.name.clone().unwrap_or_else(default)
    }

    /// The operator's metrics: the ones it was given, or the process's gauge named `name`
    /// (registered, so the metrics endpoint exports it: every stateful operator is observed).
    pub(crate) fn metrics_named(&mut self, name: &str) -> Arc<StateMetrics> {
        Arc::clone(self.metrics.get_or_insert_with(|| StateMetrics::named(name)))
    }

    /// How the driver names and observes the operator.
    pub(crate) fn driven(&self, name: String) -> driver::Driven {
        let metrics = self.metrics.clone().unwrap_or_else(|| StateMetrics::named(&name));
        driver::Driven { name, metrics, late: self.late }
    }
}

/// The setters of [`Temporal`], for every stateful operator's builder.
///
/// ```
/// use std::time::Duration;
/// use tideline::prelude::*;
/// use tideline::source::{SourceConfig, memory};
/// use tideline::window::aggregate::Count;
///
/// let events = vec![Event::new(1_000, 'a', ()), Event::new(2_000, 'a', ())];
/// let counts = tideline::runtime::collect(1, move |scope| {
///     let events = events.clone();
///     memory::from_iter(scope, SourceConfig::new("events"), move || events.into_iter())
///         .data
///         .tumbling(Duration::from_secs(10))
///         .emit(Emit::Updates)
///         .allowed_lateness(Duration::from_secs(5))
///         .late(LatePolicy::Drop)
///         .name("counts")
///         .aggregate(Count)
/// });
/// // Updates: the count is refined at each event's time.
/// assert_eq!(counts.len(), 3);
/// ```
pub trait TemporalBuilder: Sized {
    /// The builder's options.
    fn temporal(&mut self) -> &mut Temporal;

    /// Sets the emission mode (default [`Emit::Final`]).
    fn emit(mut self, emit: Emit) -> Self {
        self.temporal().emit = emit;
        self
    }

    /// Keeps state for `lateness` after a window's end, taking records that arrive behind
    /// the watermark and emitting corrections (retraction of the old result, insertion of the
    /// new). Measured from the end of the window (session, dedup horizon, join interval), as
    /// Flink's allowed lateness and Kafka Streams' grace are.
    fn allowed_lateness(mut self, lateness: Duration) -> Self {
        self.temporal().allowed_lateness = millis(lateness);
        self
    }

    /// What happens to records too late for every window they belong to (default
    /// [`LatePolicy::SideOutput`]).
    fn late(mut self, policy: LatePolicy) -> Self {
        self.temporal().late = policy;
        self
    }

    /// Names the operator (for logs, diagnostics and metrics).
    fn name(mut self, name: impl Into<String>) -> Self {
        self.temporal().name = Some(name.into());
        self
    }

    /// Reports live state entries and late records to `metrics`.
    fn state_metrics(mut self, metrics: Arc<StateMetrics>) -> Self {
        self.temporal().metrics = Some(metrics);
        self
    }

    /// Sets all options at once.
    fn options(mut self, options: Temporal) -> Self {
        *self.temporal() = options;
        self
    }
}

/// Implements [`TemporalBuilder`] for a builder with a `temporal: Temporal` field.
macro_rules! temporal_builder {
    ($builder:ident < $($param:tt),* >) => {
        impl<$($param),*> $crate::state::TemporalBuilder for $builder<$($param),*> {
            fn temporal(&mut self) -> &mut $crate::state::Temporal {
                &mut self.temporal
            }
        }
    };
}
pub(crate) use temporal_builder;
