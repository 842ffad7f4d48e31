//! Shared helpers: random out-of-order event streams and a reference model of the source.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tideline::late::{LateDecision, LatePolicy, LateRecord};
use tideline::metrics::{SourceMetrics, StateMetrics};
use tideline::prelude::*;
use tideline::run::{Cluster, execute};
use tideline::sink::Collected;
use tideline::source::{SourceConfig, memory};
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

/// What the source should do with each record: the reference model of per-partition
/// watermarks and the late policy.
pub(crate) struct Expected {
    /// Records inserted into the data collection, with the time they are inserted at.
    pub(crate) accepted: Vec<(Ev, Time)>,
    /// Records sent to the late collection.
    pub(crate) late: Vec<(LateRecord<Ev>, Time, isize)>,
    /// Records dropped.
    pub(crate) dropped: usize,
}

pub(crate) fn model_source(partitions: &[Vec<Ev>], strategy: &WatermarkStrategy, policy: LatePolicy) -> Expected {
    let mut expected = Expected { accepted: Vec::new(), late: Vec::new(), dropped: 0 };
    for (p, records) in partitions.iter().enumerate() {
        let mut generator = strategy.generator();
        for (position, record) in records.iter().enumerate() {
            let watermark = generator.watermark();
            match policy.decide(record.time, watermark) {
                LateDecision::OnTime => {
                    generator.observe(record.time);
                    expected.accepted.push((record.clone(), record.time));
                }
                LateDecision::Accept(at) => expected.accepted.push((record.clone(), at)),
                LateDecision::SideOutput => expected.late.push((
                    LateRecord {
                        partition: p as u64,
                        position: position as u64,
                        event_time: record.time,
                        watermark,
                        record: record.clone(),
                    },
                    watermark,
                    1,
                )),
                LateDecision::Drop => expected.dropped += 1,
            }
        }
    }
    expected.late.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
    expected
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

/// What one run of an operator over a watermarked source produced.
pub(crate) struct OperatorRun<R> {
    /// The operator's output changelog.
    pub(crate) results: Vec<(R, Time, isize)>,
    /// The source's late side output.
    pub(crate) late: Vec<(LateRecord<Ev>, Time, isize)>,
    /// The operator's own late output.
    pub(crate) operator_late: Vec<(Ev, Time, isize)>,
    /// Late records the source counted.
    pub(crate) late_counted: u64,
    /// The operator's state gauges.
    pub(crate) state: Arc<StateMetrics>,
}

/// Runs `build` (the operator under test, given its state gauges) on a source over
/// `partitions`, with `workers` threads, to completion.
pub(crate) fn run_operator<R, F>(
    workers: usize,
    partitions: &Arc<Vec<Vec<Ev>>>,
    strategy: &WatermarkStrategy,
    policy: LatePolicy,
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
    let late = Collected::new();
    let operator_late = Collected::new();
    let metrics = SourceMetrics::new("events");
    let state = StateMetrics::new();
    let (r, l, o, m, s) = (results.clone(), late.clone(), operator_late.clone(), metrics.clone(), state.clone());
    let (partitions, strategy) = (Arc::clone(partitions), strategy.clone());
    let build = Arc::new(build);
    execute(&Cluster::threads(workers), move |worker| {
        let (r, l, o, s) = (r.clone(), l.clone(), o.clone(), s.clone());
        let config = SourceConfig::new("events")
            .watermarks(strategy.clone())
            .late(policy)
            .metrics(m.clone())
            .batch_size(batch_size);
        let partitions = Arc::clone(&partitions);
        let build = Arc::clone(&build);
        worker.dataflow::<Time, _, _>(move |scope| {
            let source = memory::from_partitions(scope, config, partitions);
            let (output, too_late) = build(source.data, s);
            output.collect_into(&r);
            source.late.collect_into(&l);
            too_late.collect_into(&o);
        });
        while worker.step_or_park(None) {}
    })
    .unwrap();
    OperatorRun {
        results: results.changelog(),
        late: late.changelog(),
        operator_late: operator_late.changelog(),
        late_counted: metrics.totals().late(),
        state,
    }
}

/// Splits the records a source accepted into those an operator with allowed lateness
/// `lateness` applies and those it returns as too late (`at > time + lateness`), the latter
/// as a consolidated changelog.
pub(crate) fn split_too_late(accepted: &[(Ev, Time)], lateness: u64) -> (Vec<(Ev, Time)>, Vec<(Ev, Time, isize)>) {
    let mut applied = Vec::new();
    let mut too_late: BTreeMap<(Time, Ev), isize> = BTreeMap::new();
    for (event, at) in accepted {
        if *at > event.time + lateness {
            *too_late.entry((*at, event.clone())).or_default() += 1;
        } else {
            applied.push((event.clone(), *at));
        }
    }
    (applied, too_late.into_iter().map(|((at, event), diff)| (event, at, diff)).collect())
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
        sum: values.iter().sum(),
        min: *values.iter().min().expect("non-empty"),
        max: *values.iter().max().expect("non-empty"),
    }
}

/// Tumbling or sliding window results computed from scratch with `finish` over each window's
/// values: for every window and key, its value at every time anything in it changes.
pub(crate) fn windows_from_scratch<O: Ord + Clone>(
    accepted: &[(Ev, Time)],
    spec: WindowSpec,
    emit: Emit,
    lateness: u64,
    finish: impl Fn(&[i64]) -> O,
) -> Vec<(WindowResult<u32, O>, Time, isize)> {
    let mut groups: BTreeMap<(Window, u32), Vec<(Time, i64)>> = BTreeMap::new();
    for (event, at) in accepted {
        for window in spec.windows_of(event.time) {
            let time = match emit {
                Emit::Final => (*at).max(window.end - 1),
                Emit::Updates => *at,
            };
            if time < window.end + lateness {
                groups.entry((window, event.key)).or_default().push((time, event.value));
            }
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
    changelog_from_states(states, |g, o| (*g, o))
        .into_iter()
        .map(|(((window, key), value), time, diff)| (WindowResult { window, key, value }, time, diff))
        .collect()
}
