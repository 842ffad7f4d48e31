//! Shared helpers: random out-of-order event streams and a reference model of the source.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use tideline::prelude::*;
use tideline::runtime::metrics::{SourceMetrics, StateMetrics};
use tideline::runtime::{Cluster, execute};
use tideline::sink::Collected;
use tideline::source::{SourceConfig, memory};
use tideline::time::late::LatePolicy;
use tideline::time::watermark::WatermarkStrategy;
use tideline::window::aggregate::Stats;
use tideline::{Event, ExchangeData, Time};

pub(crate) type Ev = Event<u32, i64>;

/// Partitions of events whose times mostly increase, with bounded jitter and some records far
/// behind (late).
pub(crate) fn random_partitions(
    seed: u64,
    partitions: usize,
    per_partition: usize,
    keys: u32,
    jitter: u64,
    late_every: u32,
) -> Vec<Vec<Ev>> {
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..partitions)
        .map(|_| {
            let mut clock: u64 = rng.gen_range(0..2_000);
            (0..per_partition)
                .map(|_| {
                    clock += rng.gen_range(0..40);
                    let mut time = clock.saturating_sub(rng.gen_range(0..=jitter));
                    if late_every > 0 && rng.gen_ratio(1, late_every) {
                        time = clock.saturating_sub(rng.gen_range(jitter..jitter * 8 + 1));
                    }
                    Event::new(time, rng.gen_range(0..keys), rng.gen_range(-50..100))
                })
                .collect()
        })
        .collect()
}

/// What the source does with each record: the reference model of per-partition watermarks.
pub(crate) struct Arrivals {
    /// Every record, with the dataflow time it is inserted at: its event time, or its
    /// partition's watermark if it is behind it.
    pub(crate) records: Vec<(Ev, Time)>,
    /// Records behind their partition's watermark.
    pub(crate) behind: usize,
}

/// The contract of DESIGN §2–3 written out from scratch (it does not call the engine's
/// watermark generator): a partition's watermark is the largest event time it has delivered
/// on time minus the out-of-orderness bound (never decreasing, zero before the first record); a
/// record behind its partition's watermark is inserted at the watermark (its event time kept in
/// its data) and does not move it. Whether it is late is for the operators to decide.
pub(crate) fn model_source(partitions: &[Vec<Ev>], strategy: &WatermarkStrategy) -> Arrivals {
    let bound = strategy.out_of_orderness_ms().expect("the model covers bounded out-of-orderness");
    let mut arrivals = Arrivals { records: Vec::new(), behind: 0 };
    for records in partitions {
        let mut max_on_time: Option<Time> = None;
        for record in records {
            let watermark = max_on_time.map_or(0, |m| m.saturating_sub(bound));
            if record.time >= watermark {
                max_on_time = Some(max_on_time.map_or(record.time, |m| m.max(record.time)));
                arrivals.records.push((record.clone(), record.time));
            } else {
                arrivals.behind += 1;
                arrivals.records.push((record.clone(), watermark));
            }
        }
    }
    arrivals
}

/// The late output an operator with `policy` produces for `late` records (each arriving at the
/// given time): all of them with `SideOutput`, none with `Drop`, as a changelog.
pub(crate) fn late_output(late: &[(Ev, Time)], policy: LatePolicy) -> Vec<(Ev, Time, isize)> {
    match policy {
        LatePolicy::Drop => Vec::new(),
        LatePolicy::SideOutput => changelog(late.iter().map(|(e, t)| (e.clone(), *t, 1))),
    }
}

/// Turns "value of each group as of each time" into a changelog: at each time the group's
/// value changes, a retraction of the old value and an insertion of the new one.
pub(crate) fn changelog_from_states<G: Ord + Clone, O: Ord + Clone>(
    states: BTreeMap<G, BTreeMap<Time, Option<O>>>,
    row: impl Fn(&G, O) -> (G, O),
) -> Vec<((G, O), Time, isize)> {
    let mut out = Vec::new();
    for (group, by_time) in states {
        let mut previous: Option<O> = None;
        for (time, value) in by_time {
            if value != previous {
                if let Some(old) = previous.clone() {
                    out.push((row(&group, old), time, -1));
                }
                if let Some(new) = value.clone() {
                    out.push((row(&group, new), time, 1));
                }
                previous = value;
            }
        }
    }
    out.sort_by(|a, b| (a.1, &a.0, a.2).cmp(&(b.1, &b.0, b.2)));
    out
}

/// Timestamped updates: `(data, dataflow time, diff)`.
pub(crate) type Updates<D> = Vec<(D, Time, isize)>;

/// Consolidates updates into a changelog ordered as [`Collected::changelog`] orders its own: by
/// time, then data, without zero diffs.
pub(crate) fn changelog<D: Ord + Clone>(updates: impl IntoIterator<Item = (D, Time, isize)>) -> Updates<D> {
    let mut keyed: Vec<((Time, D), isize)> = updates.into_iter().map(|(d, t, r)| ((t, d), r)).collect();
    tideline::differential_dataflow::consolidation::consolidate(&mut keyed);
    keyed.into_iter().map(|((t, d), r)| (d, t, r)).collect()
}

/// Random updates of events for join and table tests. Event times mostly increase with jitter;
/// most records are inserted at their event time, some later (late: up to twice `lateness`
/// after it, so some beyond it); some are inserted twice; some are retracted later (sometimes
/// beyond `lateness`, i.e. too late). Values are few, so equal records occur.
pub(crate) fn random_event_updates(seed: u64, records: usize, keys: u32, lateness: u64) -> Updates<Ev> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut clock: u64 = rng.gen_range(0..100);
    let mut updates = Vec::new();
    for _ in 0..records {
        clock += rng.gen_range(0..20);
        let time = clock.saturating_sub(rng.gen_range(0..=30));
        let event = Event::new(time, rng.gen_range(0..keys), rng.gen_range(0..4));
        // Late arrivals land exactly on the lateness boundary often, to catch off-by-ones.
        let late = |rng: &mut SmallRng, earliest: Time| {
            if rng.gen_ratio(1, 3) { earliest.max(time + lateness) } else { earliest + rng.gen_range(0..=2 * lateness) }
        };
        let at = if rng.gen_ratio(1, 6) { late(&mut rng, time + 1) } else { time };
        updates.push((event.clone(), at, 1));
        if rng.gen_ratio(1, 15) {
            updates.push((event.clone(), at + rng.gen_range(0..10), 1));
        }
        if rng.gen_ratio(1, 5) {
            let retracted = late(&mut rng, at);
            updates.push((event, retracted, -1));
        }
    }
    updates
}

enum Feed {
    A(usize),
    B(usize),
}

/// Runs on `workers` threads a dataflow built by `build` from two input collections fed with
/// `a` and `b`. Worker `w` feeds the updates whose index is `w` modulo `workers`. Each update
/// is sent at its time or up to 300 ms (of dataflow time) before it, in random order, and the
/// inputs advance (by at least 10 ms) to sending times, with the worker stepped in between:
/// updates reach operators out of order, interleaved with frontier progress, and frontiers
/// often sit exactly on the times of updates.
pub(crate) fn run_two<A, B, F>(workers: usize, seed: u64, a: &Arc<Updates<A>>, b: &Arc<Updates<B>>, build: F)
where
    A: tideline::ExchangeData + Sync,
    B: tideline::ExchangeData + Sync,
    F: for<'scope> Fn(tideline::VecCollection<'scope, Time, A>, tideline::VecCollection<'scope, Time, B>)
        + Send
        + Sync
        + 'static,
{
    run_two_with(workers, seed, 300, a, b, build)
}

/// [`run_two`], sending updates at most `early` ms before their time (0: each at its time, the
/// inputs advancing to every update's time in turn).
pub(crate) fn run_two_with<A, B, F>(
    workers: usize,
    seed: u64,
    early: u64,
    a: &Arc<Updates<A>>,
    b: &Arc<Updates<B>>,
    build: F,
) where
    A: tideline::ExchangeData + Sync,
    B: tideline::ExchangeData + Sync,
    F: for<'scope> Fn(tideline::VecCollection<'scope, Time, A>, tideline::VecCollection<'scope, Time, B>)
        + Send
        + Sync
        + 'static,
{
    use tideline::differential_dataflow::input::Input;
    let (a, b) = (Arc::clone(a), Arc::clone(b));
    tideline::runtime::execute(&tideline::runtime::Cluster::threads(workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let (mut input_a, mut input_b, flow) = worker.dataflow::<Time, _, _>(|scope| {
            let (input_a, collection_a) = scope.new_collection::<A, isize>();
            let (input_b, collection_b) = scope.new_collection::<B, isize>();
            build(collection_a, collection_b);
            (input_a, input_b, tideline::runtime::flow::group(scope))
        });
        let mut rng = SmallRng::seed_from_u64(seed ^ (index as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        // Half the updates are sent at their own time (the frontier then sits on it), the others
        // up to 300 ms early.
        let arrival = |rng: &mut SmallRng, time: Time| {
            if early == 0 || rng.r#gen() { time } else { time.saturating_sub(rng.gen_range(0..early)) }
        };
        let mut order: Vec<(Time, u64, Feed)> = Vec::new();
        for (i, (_, time, _)) in a.iter().enumerate().filter(|(i, _)| i % peers == index) {
            order.push((arrival(&mut rng, *time), rng.r#gen(), Feed::A(i)));
        }
        for (i, (_, time, _)) in b.iter().enumerate().filter(|(i, _)| i % peers == index) {
            order.push((arrival(&mut rng, *time), rng.r#gen(), Feed::B(i)));
        }
        order.sort_by_key(|(arrival, tie, _)| (*arrival, *tie));
        let mut now: Time = 0;
        for (arrival, _, feed) in order {
            if arrival > now && (early == 0 || arrival >= now + 10) {
                now = arrival;
                input_a.advance_to(now);
                input_b.advance_to(now);
                input_a.flush();
                input_b.flush();
                worker.step();
                worker.step();
                // Like a source's flow control: do not run far ahead of the outputs (sinks).
                while let Some(Some(frontier)) = flow.frontier()
                    && frontier + early + 100 < now
                {
                    worker.step();
                }
            }
            match feed {
                Feed::A(i) => input_a.update_at(a[i].0.clone(), a[i].1, a[i].2),
                Feed::B(i) => input_b.update_at(b[i].0.clone(), b[i].1, b[i].2),
            }
        }
        drop((input_a, input_b));
        while worker.step_or_park(None) {}
    })
    .expect("dataflow failed");
}

/// One update of a record of a temporal join, as the documented semantics see it: the record's
/// group, event time and value, the dataflow time from which it takes part, its diff, and the
/// time from which it shows as unmatched.
pub(crate) struct Part<G> {
    pub(crate) group: G,
    pub(crate) time: Time,
    pub(crate) value: i64,
    pub(crate) at: Time,
    pub(crate) diff: isize,
    pub(crate) close: Time,
}

/// A row of a temporal join: the group, the left record and the right record (event time and
/// value), either of which is missing in an unmatched row.
pub(crate) type JoinRow<G> = (G, Option<(Time, i64)>, Option<(Time, i64)>);

/// The changelog of a temporal join, from scratch: every pair of matching updates yields the
/// pair at the later of their times; an outer side's record shows as unmatched, as of each time
/// `s`, with its multiplicity as of `s`, if `s` is at least its close time and the
/// multiplicities of its partners as of `s` sum to zero (or less).
pub(crate) fn temporal_join_reference<G: Ord + Clone>(
    left: &[Part<G>],
    right: &[Part<G>],
    matches: impl Fn(Time, Time) -> bool,
    outer_left: bool,
    outer_right: bool,
) -> Updates<JoinRow<G>> {
    let mut groups: BTreeMap<G, (Vec<&Part<G>>, Vec<&Part<G>>)> = BTreeMap::new();
    for part in left {
        groups.entry(part.group.clone()).or_default().0.push(part);
    }
    for part in right {
        groups.entry(part.group.clone()).or_default().1.push(part);
    }
    let mut out = Vec::new();
    for (group, (lefts, rights)) in &groups {
        for l in lefts {
            for r in rights.iter().filter(|r| matches(l.time, r.time)) {
                let row = (group.clone(), Some((l.time, l.value)), Some((r.time, r.value)));
                out.push((row, l.at.max(r.at), l.diff * r.diff));
            }
        }
        let mut unmatched = |own: &[&Part<G>],
                             others: &[&Part<G>],
                             is_match: &dyn Fn(Time, Time) -> bool,
                             left_side: bool| {
            let mut records: BTreeMap<(Time, i64), Vec<&Part<G>>> = BTreeMap::new();
            for part in own {
                records.entry((part.time, part.value)).or_default().push(part);
            }
            for ((time, value), updates) in records {
                let close = updates[0].close;
                let partners: Vec<&&Part<G>> = others.iter().filter(|o| is_match(time, o.time)).collect();
                let mut times: Vec<Time> = updates.iter().map(|u| u.at).chain(partners.iter().map(|p| p.at)).collect();
                times.push(close);
                times.sort();
                times.dedup();
                let mut previous = 0;
                for s in times {
                    let count: isize = updates.iter().filter(|u| u.at <= s).map(|u| u.diff).sum();
                    let matched: isize = partners.iter().filter(|p| p.at <= s).map(|p| p.diff).sum();
                    let now = if s >= close && matched <= 0 { count } else { 0 };
                    if now != previous {
                        let record = Some((time, value));
                        let row = if left_side { (group.clone(), record, None) } else { (group.clone(), None, record) };
                        out.push((row, s, now - previous));
                        previous = now;
                    }
                }
            }
        };
        if outer_left {
            unmatched(lefts, rights, &|l, r| matches(l, r), true);
        }
        if outer_right {
            unmatched(rights, lefts, &|r, l| matches(l, r), false);
        }
    }
    changelog(out)
}

/// An upsert record: `Some` sets the key's value, `None` deletes it.
pub(crate) type Upserted = Event<u32, Option<i64>>;

/// Upsert records made from random event updates: value 0 is a tombstone.
pub(crate) fn random_upserts(seed: u64, records: usize, keys: u32, lateness: u64) -> Updates<Upserted> {
    random_event_updates(seed, records, keys, lateness)
        .into_iter()
        .map(|(e, at, d)| (Event::new(e.time, e.key, (e.value != 0).then_some(e.value)), at, d))
        .collect()
}

/// The value of each key of an upsert table at every dataflow time it changes, from scratch:
/// among the admitted records (`τ ≤ t + lateness`) present at that time, the one with the
/// greatest (event time, value) — a tombstone or no record meaning no value.
pub(crate) fn upsert_reference(
    updates: &Updates<Upserted>,
    lateness: u64,
) -> BTreeMap<u32, BTreeMap<Time, Option<i64>>> {
    let admitted: Vec<&(Upserted, Time, isize)> =
        updates.iter().filter(|(e, at, _)| *at <= e.time + lateness).collect();
    let mut states: BTreeMap<u32, BTreeMap<Time, Option<i64>>> = BTreeMap::new();
    for (event, at, _) in &admitted {
        let key = event.key;
        let mut versions: BTreeMap<(Time, Option<i64>), isize> = BTreeMap::new();
        for (e, _, d) in admitted.iter().filter(|(e, t, _)| e.key == key && t <= at) {
            *versions.entry((e.time, e.value)).or_default() += d;
        }
        let value = versions.iter().rev().find(|(_, c)| **c > 0).and_then(|((_, v), _)| *v);
        states.entry(key).or_default().insert(*at, value);
    }
    states
}

/// The value of `key` as of dataflow time `time` in states made by [`upsert_reference`].
pub(crate) fn value_as_of(states: &BTreeMap<u32, BTreeMap<Time, Option<i64>>>, key: u32, time: Time) -> Option<i64> {
    states.get(&key).and_then(|by_time| by_time.range(..=time).next_back()).and_then(|(_, v)| *v)
}

/// What one run of an operator over a watermarked source produced.
pub(crate) struct OperatorRun<R> {
    /// The operator's output changelog.
    pub(crate) results: Vec<(R, Time, isize)>,
    /// The operator's own late output.
    pub(crate) operator_late: Vec<(Ev, Time, isize)>,
    /// Records the source counted behind the watermark.
    pub(crate) behind_counted: u64,
    /// The operator's state gauges.
    pub(crate) state: Arc<StateMetrics>,
}

/// Runs `build` (the operator under test, given its state gauges) on a source over
/// `partitions`, with `workers` threads, to completion.
pub(crate) fn run_operator<R, F>(
    workers: usize,
    partitions: &Arc<Vec<Vec<Ev>>>,
    strategy: &WatermarkStrategy,
    batch_size: usize,
    build: F,
) -> OperatorRun<R>
where
    R: ExchangeData,
    F: for<'s> Fn(
            VecCollection<'s, Time, Ev>,
            Arc<StateMetrics>,
        ) -> (VecCollection<'s, Time, R>, VecCollection<'s, Time, Ev>)
        + Send
        + Sync
        + 'static,
{
    let results = Collected::new();
    let operator_late = Collected::new();
    let metrics = SourceMetrics::new("events");
    let state = StateMetrics::new();
    let (r, o, m, s) = (results.clone(), operator_late.clone(), metrics.clone(), state.clone());
    let (partitions, strategy) = (Arc::clone(partitions), strategy.clone());
    let build = Arc::new(build);
    execute(&Cluster::threads(workers), move |worker| {
        let (r, o, s) = (r.clone(), o.clone(), s.clone());
        let config = SourceConfig::new("events").watermarks(strategy.clone()).metrics(m.clone()).batch_size(batch_size);
        let partitions = Arc::clone(&partitions);
        let build = Arc::clone(&build);
        worker.dataflow::<Time, _, _>(move |scope| {
            let source = memory::from_partitions(scope, config, partitions);
            let (output, too_late) = build(source.data, s);
            output.collect_into(&r);
            too_late.collect_into(&o);
        });
        while worker.step_or_park(None) {}
    })
    .unwrap();
    OperatorRun {
        results: results.changelog(),
        operator_late: operator_late.changelog(),
        behind_counted: metrics.totals().behind_watermark,
        state,
    }
}

/// Turns the contents of a collection at a series of times into a changelog: at each time,
/// a retraction of every row that left and an insertion of every row that arrived.
pub(crate) fn changelog_from_snapshots<R: Ord + Clone>(
    snapshots: &BTreeMap<Time, BTreeSet<R>>,
) -> Vec<(R, Time, isize)> {
    let mut out = Vec::new();
    let mut previous = BTreeSet::new();
    for (time, rows) in snapshots {
        out.extend(previous.difference(rows).map(|row: &R| (row.clone(), *time, -1)));
        out.extend(rows.difference(&previous).map(|row| (row.clone(), *time, 1)));
        previous = rows.clone();
    }
    out
}

/// Sorts a changelog as `Collected::changelog` does: by time, then data.
pub(crate) fn sort_changelog<R: Ord>(changelog: &mut [(R, Time, isize)]) {
    changelog.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
}

/// Count, sum, min and max of values, from scratch.
pub(crate) fn stats_of(values: &[i64]) -> Stats {
    Stats {
        count: values.len() as i64,
        sum: values.iter().map(|v| i128::from(*v)).sum(),
        min: *values.iter().min().expect("non-empty"),
        max: *values.iter().max().expect("non-empty"),
    }
}

/// Tumbling or sliding window results computed from scratch with `finish` over each window's
/// values, by the per-window rule of DESIGN §3: a record arriving at `at` counts in each of its
/// windows whose `end + lateness` is still ahead of `at` — with `Final`, from
/// `max(at, end - 1)`; with `Updates`, from `at` — and is late if it counts in none. Returns
/// every window and key's value at every time anything in it changes, as a changelog, and the
/// late records with their arrival times.
pub(crate) fn windows_from_scratch<O: Ord + Clone>(
    arrivals: &[(Ev, Time)],
    spec: WindowSpec,
    emit: Emit,
    lateness: u64,
    finish: impl Fn(&[i64]) -> O,
) -> (Vec<(WindowResult<u32, O>, Time, isize)>, Vec<(Ev, Time)>) {
    let mut groups: BTreeMap<(Window, u32), Vec<(Time, i64)>> = BTreeMap::new();
    let mut late = Vec::new();
    for (event, at) in arrivals {
        let mut taken = false;
        let mut start = 0;
        while start <= event.time {
            let window = Window { start, end: start + spec.size() };
            if window.contains(event.time) && *at < window.end + lateness {
                taken = true;
                let time = match emit {
                    Emit::Final => (*at).max(window.end - 1),
                    Emit::Updates => *at,
                };
                groups.entry((window, event.key)).or_default().push((time, event.value));
            }
            start += spec.slide();
        }
        if !taken {
            late.push((event.clone(), *at));
        }
    }
    let mut states = BTreeMap::new();
    for (group, records) in groups {
        let mut by_time = BTreeMap::new();
        for (time, _) in &records {
            let values: Vec<i64> = records.iter().filter(|(t, _)| t <= time).map(|(_, v)| *v).collect();
            by_time.insert(*time, Some(finish(&values)));
        }
        states.insert(group, by_time);
    }
    let results = changelog_from_states(states, |g, o| (*g, o))
        .into_iter()
        .map(|(((window, key), value), time, diff)| (WindowResult { window, key, value }, time, diff))
        .collect();
    (results, late)
}
