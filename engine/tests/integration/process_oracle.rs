//! Oracle tests for keyed process functions: random out-of-order streams with records behind
//! the watermark, at 1, 2 and 4 workers, with and without a TTL, compared with a from-scratch
//! simulation of the documented semantics: per key and in increasing dataflow time, the events
//! arriving at a time in (event time, value) order, then the key's timer for that time, then
//! the TTL.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tideline::keyed::process::{Context, KeyedProcessFunction};
use tideline::prelude::*;

use crate::common::*;

/// A process function's output in these tests: `(channel, (key, kind, a, b, c))`, channel 0 for
/// the main output and 1 for the side output named "behind".
type Row = (u8, (u32, u8, i64, i64, Time));

/// What a model callback may do (the model's own context, not the engine's).
struct ModelCx<'a> {
    key: u32,
    time: Time,
    timers: &'a mut BTreeSet<Time>,
    out: &'a mut Vec<(Row, Time, isize)>,
    cleared: bool,
}

impl ModelCx<'_> {
    fn emit(&mut self, row: (u32, u8, i64, i64, Time)) {
        self.out.push(((0, row), self.time, 1));
    }
    fn side(&mut self, row: (u32, u8, i64, i64, Time)) {
        self.out.push(((1, row), self.time, 1));
    }
    fn set_timer(&mut self, at: Time) -> Time {
        let at = at.max(self.time);
        self.timers.insert(at);
        at
    }
    fn delete_timer(&mut self, at: Time) {
        self.timers.remove(&at);
    }
}

/// The documented semantics, from scratch: for each key, at each time `τ` (an arrival time of
/// its events, a time its timer is set for, or its TTL expiry) in increasing order: its events
/// arriving at `τ` in (event time, value) order, then its timer for `τ` (again while one is set
/// for `τ`), then, if its latest event time since the last reset plus the TTL is at most `τ`,
/// a reset. A key whose state is at its default with no timer set is released (its TTL clock
/// stops).
fn simulate<S: Default + PartialEq>(
    arrivals: &[(Ev, Time)],
    ttl: Option<u64>,
    on_event: impl Fn(&Ev, &mut S, &mut ModelCx<'_>),
    on_timer: impl Fn(Time, &mut S, &mut ModelCx<'_>),
) -> Vec<(Row, Time, isize)> {
    let mut by_key: BTreeMap<u32, Vec<(Time, Time, i64)>> = BTreeMap::new();
    for (event, at) in arrivals {
        by_key.entry(event.key).or_default().push((*at, event.time, event.value));
    }
    let mut out = Vec::new();
    for (key, mut events) in by_key {
        events.sort();
        let (mut state, mut timers, mut expires) = (S::default(), BTreeSet::new(), None::<Time>);
        let mut i = 0;
        loop {
            let next = [events.get(i).map(|e| e.0), timers.first().copied(), expires].into_iter().flatten().min();
            let Some(tau) = next else { break };
            let settle = |cx: &mut ModelCx<'_>, state: &mut S, expires: &mut Option<Time>| {
                if std::mem::take(&mut cx.cleared) {
                    *state = S::default();
                    cx.timers.clear();
                    *expires = None;
                }
            };
            let mut cx = ModelCx { key, time: tau, timers: &mut timers, out: &mut out, cleared: false };
            while let Some(&(at, time, value)) = events.get(i)
                && at == tau
            {
                if let Some(ttl) = ttl {
                    expires = Some(expires.map_or(time + ttl, |e| e.max(time + ttl)));
                }
                on_event(&Event::new(time, key, value), &mut state, &mut cx);
                settle(&mut cx, &mut state, &mut expires);
                i += 1;
            }
            while cx.timers.remove(&tau) {
                on_timer(tau, &mut state, &mut cx);
                settle(&mut cx, &mut state, &mut expires);
            }
            if expires.is_some_and(|e| e <= tau) {
                state = S::default();
                expires = None;
            }
            if state == S::default() && timers.is_empty() {
                expires = None;
            }
        }
    }
    changelog(out)
}

/// The per-key state machine under test: a running count and sum, a timeout 50 ms after the
/// key's newest event (re-armed by each newer event), cleared after a timeout with an even
/// count; events behind the watermark are also reported on the side output.
struct Machine;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Counts {
    count: i64,
    sum: i64,
    latest: Option<Time>,
    /// The timer set, and the time it was asked for.
    timer: Option<(Time, Time)>,
}

const TIMEOUT: u64 = 50;

impl KeyedProcessFunction<u32, i64> for Machine {
    type State = Counts;
    type Output = (u32, u8, i64, i64, Time);

    fn on_event(&self, event: &Ev, state: &mut Counts, ctx: &mut Context<'_, u32, Self::Output>) {
        assert_eq!(*ctx.key(), event.key);
        assert!(event.time <= ctx.time(), "an event is applied at its arrival time, never before its own time");
        state.count += 1;
        state.sum += event.value;
        let row = (event.key, 0, state.count, state.sum, event.time);
        ctx.emit(row);
        if event.time < ctx.time() {
            ctx.side("behind", row);
        }
        if state.latest.is_none_or(|latest| event.time >= latest) {
            state.latest = Some(event.time);
            if let Some((set, _)) = state.timer.take() {
                ctx.delete_timer(set);
            }
            let asked = event.time + TIMEOUT;
            let set = ctx.set_timer(asked);
            assert_eq!(set, asked.max(ctx.time()));
            state.timer = Some((set, asked));
        }
    }

    fn on_timer(&self, at: Time, key: &u32, state: &mut Counts, ctx: &mut Context<'_, u32, Self::Output>) {
        // Timers fire at their own time, never before it; the state knows which timer it set
        // (a reset by the TTL forgets it, but the timer still fires).
        assert_eq!(ctx.time(), at, "a timer fires at the time it is set for");
        if let Some((set, asked)) = state.timer
            && set == at
        {
            assert!(at >= asked, "a timer asked for a time fires at that time or later");
            state.timer = None;
        }
        assert!(ctx.timers().all(|t| t > at), "the timers left are later");
        ctx.emit((*key, 1, state.count, state.sum, at));
        if state.count % 2 == 0 {
            ctx.clear();
        }
    }
}

fn machine_model(arrivals: &[(Ev, Time)], ttl: Option<u64>) -> Vec<(Row, Time, isize)> {
    simulate(
        arrivals,
        ttl,
        |event, state: &mut Counts, cx| {
            state.count += 1;
            state.sum += event.value;
            let row = (event.key, 0, state.count, state.sum, event.time);
            cx.emit(row);
            if event.time < cx.time {
                cx.side(row);
            }
            if state.latest.is_none_or(|latest| event.time >= latest) {
                state.latest = Some(event.time);
                if let Some((set, _)) = state.timer.take() {
                    cx.delete_timer(set);
                }
                let set = cx.set_timer(event.time + TIMEOUT);
                state.timer = Some((set, event.time + TIMEOUT));
            }
        },
        |at, state, cx| {
            if state.timer.is_some_and(|(set, _)| set == at) {
                state.timer = None;
            }
            cx.emit((cx.key, 1, state.count, state.sum, at));
            if state.count % 2 == 0 {
                cx.cleared = true;
            }
        },
    )
}

/// Runs `function` over `partitions`, its main output on channel 0 and its side output "behind"
/// on channel 1.
fn run_process<F, M>(
    workers: usize,
    partitions: &Arc<Vec<Vec<Ev>>>,
    strategy: &WatermarkStrategy,
    batch: usize,
    ttl: Option<u64>,
    function: M,
) -> OperatorRun<Row>
where
    F: KeyedProcessFunction<u32, i64, Output = (u32, u8, i64, i64, Time)>,
    M: Fn() -> F + Send + Sync + 'static,
{
    run_operator(workers, partitions, strategy, batch, move |events, state| {
        let none = events.clone().filter(|_| false);
        let process = events.process(function()).name("process under test").state_metrics(state);
        let process = match ttl {
            Some(ttl) => process.ttl(Duration::from_millis(ttl)),
            None => process,
        };
        let (main, side) = process.build_with_side();
        let side = side.map(|(name, row)| {
            assert_eq!(name, "behind");
            (1u8, row)
        });
        (main.map(|row| (0u8, row)).concat(side), none)
    })
}

/// The keys whose state the model leaves live at the end: a count, sum and latest time that
/// no clear and no TTL reset.
fn live_keys_at_end(want: &[(Row, Time, isize)], ttl: Option<u64>) -> u64 {
    if ttl.is_some() {
        return 0;
    }
    // Without a TTL, a key stays live unless its last output was a timeout with an even count
    // (which cleared it): the state machine sets a timer after every key's newest event.
    let mut last: BTreeMap<u32, (Time, u8, i64)> = BTreeMap::new();
    for ((channel, (key, kind, count, _, _)), time, _) in want {
        if *channel == 0 {
            let entry = last.entry(*key).or_insert((*time, *kind, *count));
            if (*time, *kind) >= (entry.0, entry.1) {
                *entry = (*time, *kind, *count);
            }
        }
    }
    last.values().filter(|(_, kind, count)| !(*kind == 1 && count % 2 == 0)).count() as u64
}

fn check_machine(seed: u64, keys: u32, batch: usize) {
    let strategy = WatermarkStrategy::bounded_out_of_orderness(Duration::from_millis(60));
    let partitions = Arc::new(random_partitions(seed, 3, 400, keys, 60, 12));
    let arrivals = model_source(&partitions, &strategy);
    assert!(arrivals.behind > 0, "the stream should have records behind the watermark");
    for ttl in [None, Some(30), Some(120)] {
        let want = machine_model(&arrivals.records, ttl);
        let timeouts = want.iter().filter(|((channel, row), _, _)| *channel == 0 && row.1 == 1).count();
        assert!(timeouts > 20, "seed {seed}: the oracle should see timeouts ({timeouts})");
        let behind = want.iter().filter(|((channel, _), _, _)| *channel == 1).count();
        assert_eq!(behind, arrivals.records.iter().filter(|(e, at)| e.time < *at).count());
        for ((channel, (_, kind, _, _, at)), time, diff) in &want {
            assert_eq!(*diff, 1);
            if *channel == 0 && *kind == 1 {
                assert_eq!(at, time, "a timeout is emitted at its timer's time");
            }
        }
        for workers in [1, 2, 4] {
            let got = run_process(workers, &partitions, &strategy, batch, ttl, || Machine);
            let context = format!("seed {seed} keys {keys} ttl {ttl:?} workers {workers}");
            assert_eq!(got.results.len(), want.len(), "{context}: changelog length");
            assert_eq!(got.results, want, "{context}: changelog");
            assert_eq!(got.state.late_skipped(), 0, "{context}: nothing is counted late");
            assert_eq!(got.state.total(), live_keys_at_end(&want, ttl), "{context}: live keys at the end");
        }
    }
}

#[test]
fn process_function_state_machine_matches_the_oracle() {
    check_machine(31, 10, 97);
}

#[test]
fn process_function_with_sparse_keys_and_small_batches_matches_the_oracle() {
    // Keys see an event every ~200 ms: most timers fire, and most TTLs expire, between them.
    check_machine(32, 30, 7);
}

#[test]
fn a_timer_does_not_fire_before_the_frontier_passes_it() {
    // Monotonic watermark, one record per batch. Key 1's event at 100 sets its timer for 150.
    // The record at 150 (key 2) moves the watermark to 150, not past it; the record at 120 of
    // key 1 arrives behind it, at 150, and re-arms key 1's timer for max(170, 150). Had the
    // timer for 150 fired once the watermark reached 150, it would show a count of 1.
    let partitions = Arc::new(vec![vec![Event::new(100, 1u32, 5i64), Event::new(150, 2, 1), Event::new(120, 1, 7)]]);
    for workers in [1, 2] {
        let got = run_process(workers, &partitions, &WatermarkStrategy::monotonic(), 1, None, || Machine);
        assert_eq!(
            got.results,
            vec![
                ((0, (1, 0, 1, 5, 100)), 100, 1),
                ((0, (1, 0, 2, 12, 120)), 150, 1),
                ((0, (2, 0, 1, 1, 150)), 150, 1),
                ((1, (1, 0, 2, 12, 120)), 150, 1),
                ((0, (1, 1, 2, 12, 170)), 170, 1),
                ((0, (2, 1, 1, 1, 200)), 200, 1),
            ],
            "workers {workers}"
        );
        // Key 1 was cleared by its timeout (even count); key 2 keeps its count.
        assert_eq!(got.state.total(), 1);
    }
}

/// Counts each key's events: `(key, 0, count, 0, event time)`.
struct Count;

impl KeyedProcessFunction<u32, i64> for Count {
    type State = i64;
    type Output = (u32, u8, i64, i64, Time);

    fn on_event(&self, event: &Ev, count: &mut i64, ctx: &mut Context<'_, u32, Self::Output>) {
        *count += 1;
        ctx.emit((event.key, 0, *count, 0, event.time));
    }
}

#[test]
fn ttl_resets_a_key_after_its_silence_in_event_time() {
    // TTL 150. Key 1: 100, 200, 349 (expiry 499), 499 (applied before the expiry check at 499:
    // expiry 649), then 650: reset at 649, so the count starts again; 800 extends to 950.
    // Key 2: 1000, then 700 arrives behind the watermark at 1000: applied first, and it does not
    // extend the expiry (1150). Key 3: 500 arrives at 1000 behind the watermark, already past its TTL: applied on
    // fresh state, then reset at once, so its record at 1001 counts 1.
    let events = [(100, 1), (200, 1), (349, 1), (499, 1), (650, 1), (800, 1), (1000, 2), (700, 2), (500, 3)];
    let mut records: Vec<Ev> = events.iter().map(|&(t, k)| Event::new(t, k, 0)).collect();
    records.extend([Event::new(1001, 3, 0), Event::new(1149, 2, 0), Event::new(1400, 2, 0)]);
    let partitions = Arc::new(vec![records]);
    let strategy = WatermarkStrategy::monotonic();
    let rows = |counts: &[(u32, i64, Time, Time)]| -> Vec<(Row, Time, isize)> {
        changelog(counts.iter().map(|&(key, count, time, at)| ((0, (key, 0, count, 0, time)), at, 1)))
    };
    let want = rows(&[
        (1, 1, 100, 100),
        (1, 2, 200, 200),
        (1, 3, 349, 349),
        (1, 4, 499, 499),
        (1, 1, 650, 650),
        (1, 2, 800, 800),
        (2, 1, 700, 1000), // applied first: in (event time, value) order
        (2, 2, 1000, 1000),
        (3, 1, 500, 1000),
        (3, 1, 1001, 1001),
        (2, 3, 1149, 1149),
        (2, 1, 1400, 1400), // 1149 + 150 ≤ 1400
    ]);
    for workers in [1, 2, 4] {
        let got = run_process(workers, &partitions, &strategy, 1, Some(150), || Count);
        assert_eq!(got.results, want, "workers {workers}");
        assert_eq!(got.state.total(), 0, "workers {workers}: every key expired at the end");
        let model: Vec<(Row, Time, isize)> = simulate(
            &model_source(&partitions, &strategy).records,
            Some(150),
            |event, count: &mut i64, cx| {
                *count += 1;
                cx.emit((event.key, 0, *count, 0, event.time));
            },
            |_, _, _| {},
        );
        assert_eq!(model, want, "the model agrees");
    }
    // Without a TTL every key keeps counting, and stays live.
    let got = run_process(2, &partitions, &strategy, 1, None, || Count);
    assert_eq!(got.results.last().map(|(row, _, _)| row.1), Some((2, 0, 4, 0, 1400)));
    assert_eq!(got.state.total(), 3);
}

/// The pattern "A, then B within T, without C in between", per key: an order placed (A), paid
/// (B) or cancelled (C). A placed order not paid within `WITHIN` of its event time times out;
/// a payment while it is pending matches it; a cancellation discards it. Outputs
/// `(key, 1, placed, paid, 0)` for a match and `(key, 2, placed, 0, timer)` for a timeout.
struct Orders;

const WITHIN: u64 = 80;

fn kind(value: i64) -> i64 {
    value.rem_euclid(3)
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Pending {
    placed: Option<Time>,
}

impl KeyedProcessFunction<u32, i64> for Orders {
    type State = Pending;
    type Output = (u32, u8, i64, i64, Time);

    fn on_event(&self, event: &Ev, state: &mut Pending, ctx: &mut Context<'_, u32, Self::Output>) {
        match (kind(event.value), state.placed) {
            (0, None) => {
                state.placed = Some(event.time);
                ctx.set_timer(event.time + WITHIN);
            }
            (1, Some(placed)) => {
                ctx.emit((event.key, 1, placed as i64, event.time as i64, 0));
                ctx.clear();
            }
            (2, Some(_)) => ctx.clear(),
            _ => {}
        }
    }

    fn on_timer(&self, at: Time, key: &u32, state: &mut Pending, ctx: &mut Context<'_, u32, Self::Output>) {
        let placed = state.placed.expect("a timer is set only while an order is pending");
        ctx.emit((*key, 2, placed as i64, 0, at));
        ctx.clear();
    }
}

#[test]
fn pattern_placed_then_paid_within_a_time_without_a_cancellation_matches_the_oracle() {
    let strategy = WatermarkStrategy::bounded_out_of_orderness(Duration::from_millis(60));
    let partitions = Arc::new(random_partitions(41, 3, 400, 12, 60, 12));
    let arrivals = model_source(&partitions, &strategy);
    let want = simulate(
        &arrivals.records,
        None,
        |event, state: &mut Pending, cx| match (kind(event.value), state.placed) {
            (0, None) => {
                state.placed = Some(event.time);
                cx.set_timer(event.time + WITHIN);
            }
            (1, Some(placed)) => {
                cx.emit((event.key, 1, placed as i64, event.time as i64, 0));
                cx.cleared = true;
            }
            (2, Some(_)) => cx.cleared = true,
            _ => {}
        },
        |at, state, cx| {
            cx.emit((cx.key, 2, state.placed.expect("pending") as i64, 0, at));
            cx.cleared = true;
        },
    );
    let count = |kind: u8| want.iter().filter(|((_, row), _, _)| row.1 == kind).count();
    assert!(count(1) > 20 && count(2) > 20, "the oracle should see matches ({}) and timeouts ({})", count(1), count(2));
    for workers in [1, 2, 4] {
        let got = run_process(workers, &partitions, &strategy, 97, None, || Orders);
        assert_eq!(got.results, want, "workers {workers}");
        assert_eq!(got.state.total(), 0, "workers {workers}: no order is pending at the end");
    }
}

#[test]
#[should_panic(expected = "append-only")]
fn a_retraction_reaching_a_process_function_is_refused() {
    // A process function cannot undo what its callbacks did: a retraction is a broken contract
    // (sources never retract), not data to drop silently.
    let updates = Arc::new(vec![(Event::new(10, 1u32, 1i64), 10, 1), (Event::new(10, 1, 1), 20, -1)]);
    let none: Arc<Updates<Ev>> = Arc::new(Vec::new());
    run_two(1, 51, &updates, &none, |events, _| {
        events.process(Count).build();
    });
}
