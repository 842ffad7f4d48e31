//! Shared helpers: random out-of-order event streams and a reference model of the source.

use std::collections::BTreeMap;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tideline::late::{LateDecision, LatePolicy, LateRecord};
use tideline::time::watermark::WatermarkStrategy;
use tideline::{Event, Time};

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
