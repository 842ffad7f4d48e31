//! Window joins: events of two streams with equal keys that fall in the same tumbling or
//! sliding window (Nexmark q8's shape).
//!
//! Every window `w` of the [`WindowSpec`] that contains both `a.time` and `b.time` yields the
//! row `(w, a, b)`; with sliding windows a pair appears once per window the two share. Inner,
//! left, right and full outer variants; an outer row `(w, a, None)` says that `a` found no
//! partner in `w`.
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use tideline::prelude::*;
//! use tideline::source::{SourceConfig, memory};
//!
//! // Nexmark q8: people who opened an auction in the 10 s window in which they registered.
//! let persons = vec![Event::new(1_000, 1u32, 'p'), Event::new(12_000, 2, 'q')];
//! let auctions = vec![Event::new(4_000, 1u32, 'a'), Event::new(9_000, 2, 'b'), Event::new(15_000, 2, 'c')];
//! let joined = tideline::runtime::collect(2, move |scope| {
//!     let (persons, auctions) = (persons.clone(), auctions.clone());
//!     let persons = memory::from_iter(scope, SourceConfig::new("persons"), move || persons.into_iter());
//!     let auctions = memory::from_iter(scope, SourceConfig::new("auctions"), move || auctions.into_iter());
//!     persons
//!         .data
//!         .window_join(auctions.data, WindowSpec::tumbling(Duration::from_secs(10)).unwrap())
//!         .inner()
//!         .map(|(window, person, auction)| (window.start, person.key, auction.value))
//! });
//! // Each window's pairs are emitted at the window's last instant.
//! assert_eq!(joined, vec![((0, 1, 'a'), 9_999, 1), ((10_000, 2, 'c'), 19_999, 1)]);
//! ```
//!
//! # Event time
//!
//! Records are assigned to windows by the event time in their data ([`Event::time`]). In
//! [`Emit::Final`] mode (the default) a record takes part in window `w` from dataflow time
//! `max(τ, w.end − 1)`, where `τ` is its own dataflow time: a window's pairs are emitted once,
//! when the frontier passes the window's end, and afterwards only late corrections; the
//! unmatched row of a record with no partner in `w` appears at the same time. In
//! [`Emit::Updates`] mode a record takes part from `τ`: pairs appear as soon as both records
//! are there, unmatched rows at once (retracted when a partner arrives).
//!
//! Formally, the output as of dataflow time `s` holds, for every window `w` and key, every pair
//! of the left and right records of `w` that have taken part by `s`, and for outer sides each
//! such record of `w` with no partner in `w` by `s`.
//!
//! # Late data
//!
//! Lateness is decided per window (DESIGN §3). A record behind the watermark arrives at the
//! watermark `W`. A window not yet emitted (`W ≤ w.end − 1`) takes it silently; an emitted
//! window whose `end + allowed_lateness` is still ahead of `W` takes it and corrects its rows
//! at `W`; an expired window (`W ≥ w.end + allowed_lateness`) skips it. A record every window
//! of which has expired is **late**: it goes, unchanged, to the late output
//! ([`WindowJoinBuilder::inner_with_late`] and siblings, per the
//! [`LatePolicy`](crate::time::late::LatePolicy)) and is counted in
//! [`StateMetrics::late_skipped`](crate::runtime::metrics::StateMetrics::late_skipped).
//!
//! # State
//!
//! The records of live windows (one entry per window, key, event time and value). A window's
//! records are released once the frontier passes `end + allowed_lateness − 1`, without any
//! retraction downstream. Live entries (held records, including those waiting for their
//! window's end) are reported to the operator's
//! [`StateMetrics`](crate::runtime::metrics::StateMetrics).
//!
//! # Checkpointing
//!
//! The state is a function of the input records of windows still live: a restore re-reads
//! them (DESIGN §8; see [`crate::checkpoint`]).

use std::sync::Arc;

use differential_dataflow::VecCollection;

use crate::join::TooLate;
use crate::join::core::{Item, Shape, prepare, temporal_join};
use crate::runtime::ExchangeData;
use crate::state::{Emit, Temporal, temporal_builder};
use crate::time::{Event, Time};
use crate::window::{Window, WindowSpec};

/// Window joins on collections of [`Event`]s.
pub trait WindowJoin<'scope, K: 'static, V1: 'static> {
    /// Joins with `other` on equal keys within each window of `spec`; configure the result on
    /// the returned builder and pick the join's kind (`inner`, `left`, `right`, `full`).
    fn window_join<V2: ExchangeData>(
        self,
        other: VecCollection<'scope, Time, Event<K, V2>>,
        spec: WindowSpec,
    ) -> WindowJoinBuilder<'scope, K, V1, V2>;
}

impl<'scope, K: ExchangeData, V1: ExchangeData> WindowJoin<'scope, K, V1>
    for VecCollection<'scope, Time, Event<K, V1>>
{
    fn window_join<V2: ExchangeData>(
        self,
        other: VecCollection<'scope, Time, Event<K, V2>>,
        spec: WindowSpec,
    ) -> WindowJoinBuilder<'scope, K, V1, V2> {
        WindowJoinBuilder { left: self, right: other, spec, temporal: Temporal::default() }
    }
}

/// A window join being configured (emission, allowed lateness, late policy, name, metrics:
/// [`TemporalBuilder`](crate::state::TemporalBuilder)): see [the module documentation](self)
/// for its semantics; pick the join's kind (`inner`, `left`, `right`, `full`) to build it.
pub struct WindowJoinBuilder<'scope, K: 'static, V1: 'static, V2: 'static> {
    left: VecCollection<'scope, Time, Event<K, V1>>,
    right: VecCollection<'scope, Time, Event<K, V2>>,
    spec: WindowSpec,
    temporal: Temporal,
}

temporal_builder!(WindowJoinBuilder<'scope, K, V1, V2>);

type WithLate<'scope, D, K, V1, V2> = (VecCollection<'scope, Time, D>, TooLate<'scope, Event<K, V1>, Event<K, V2>>);

/// Assigns an event to the windows that admit it; returns how many did.
fn assign<K: ExchangeData, V: ExchangeData>(
    spec: WindowSpec,
    emit: Emit,
    lateness: u64,
    event: &Event<K, V>,
    at: Time,
    out: &mut Vec<(Item<(K, Window), V>, Time)>,
) -> usize {
    let mut admitted = 0;
    for window in spec.windows_of(event.time) {
        let release = window.end.saturating_add(lateness) - 1;
        if at > release {
            continue;
        }
        let (time, close) = match emit {
            Emit::Final => (at.max(window.max_time()), window.max_time()),
            Emit::Updates => (at, 0),
        };
        let group = (event.key.clone(), window);
        out.push((Item { group, time: event.time, value: event.value.clone(), close, release }, time));
        admitted += 1;
    }
    admitted
}

fn pair<K: Clone, V: Clone>(key: &(K, Window), record: (Time, &V)) -> Event<K, V> {
    Event::new(record.0, key.0.clone(), record.1.clone())
}

impl<'scope, K: ExchangeData, V1: ExchangeData, V2: ExchangeData> WindowJoinBuilder<'scope, K, V1, V2> {
    /// Pairs of each window.
    pub fn inner(self) -> VecCollection<'scope, Time, (Window, Event<K, V1>, Event<K, V2>)> {
        self.inner_with_late().0
    }

    /// Pairs of each window, and left records without a partner in it.
    pub fn left(self) -> VecCollection<'scope, Time, (Window, Event<K, V1>, Option<Event<K, V2>>)> {
        self.left_with_late().0
    }

    /// Pairs of each window, and right records without a partner in it.
    pub fn right(self) -> VecCollection<'scope, Time, (Window, Option<Event<K, V1>>, Event<K, V2>)> {
        self.right_with_late().0
    }

    /// Pairs of each window, and the records of either side without a partner in it.
    pub fn full(self) -> VecCollection<'scope, Time, (Window, Option<Event<K, V1>>, Option<Event<K, V2>>)> {
        self.full_with_late().0
    }

    /// [`inner`](Self::inner), and the records of each side too late for all their windows.
    pub fn inner_with_late(self) -> WithLate<'scope, (Window, Event<K, V1>, Event<K, V2>), K, V1, V2> {
        self.build(false, false, |g, l, r| {
            (g.1, pair(g, l.expect("pairs have a left record")), pair(g, r.expect("inner joins emit only pairs")))
        })
    }

    /// [`left`](Self::left), and the records of each side too late for all their windows.
    pub fn left_with_late(self) -> WithLate<'scope, (Window, Event<K, V1>, Option<Event<K, V2>>), K, V1, V2> {
        self.build(true, false, |g, l, r| {
            (g.1, pair(g, l.expect("left rows have a left record")), r.map(|r| pair(g, r)))
        })
    }

    /// [`right`](Self::right), and the records of each side too late for all their windows.
    pub fn right_with_late(self) -> WithLate<'scope, (Window, Option<Event<K, V1>>, Event<K, V2>), K, V1, V2> {
        self.build(false, true, |g, l, r| {
            (g.1, l.map(|l| pair(g, l)), pair(g, r.expect("right rows have a right record")))
        })
    }

    /// [`full`](Self::full), and the records of each side too late for all their windows.
    pub fn full_with_late(self) -> WithLate<'scope, (Window, Option<Event<K, V1>>, Option<Event<K, V2>>), K, V1, V2> {
        self.build(true, true, |g, l, r| (g.1, l.map(|l| pair(g, l)), r.map(|r| pair(g, r))))
    }

    fn build<D, F>(self, outer_left: bool, outer_right: bool, result: F) -> WithLate<'scope, D, K, V1, V2>
    where
        D: ExchangeData,
        F: FnMut(&(K, Window), Option<(Time, &V1)>, Option<(Time, &V2)>) -> D + 'static,
    {
        let WindowJoinBuilder { left, right, spec, mut temporal } = self;
        let name = temporal.name_or(|| format!("WindowJoin(size={}ms, slide={}ms)", spec.size(), spec.slide()));
        let metrics = temporal.metrics_named(&name);
        let (emit, lateness, policy) = (temporal.emit, temporal.allowed_lateness, temporal.late);
        let (left_items, left_late) =
            prepare(left, &format!("{name}: left"), Arc::clone(&metrics), policy, move |e, at, out| {
                assign(spec, emit, lateness, e, at, out)
            });
        let (right_items, right_late) =
            prepare(right, &format!("{name}: right"), metrics, policy, move |e, at, out| {
                assign(spec, emit, lateness, e, at, out)
            });
        // Within a window every pair matches: event times differ by less than the window size.
        let size = i64::try_from(spec.size()).unwrap_or(i64::MAX);
        let shape = Shape { lower: -size, upper: size, outer_left, outer_right };
        let joined = temporal_join(left_items, right_items, shape, temporal.driven(name), result);
        (joined, TooLate { left: left_late, right: right_late })
    }
}
