//! Shapes of the in-memory harness's input. Every workload runs on each:
//!
//! - **dense** (the original): 100 000 events per second of event time (about 100 per
//!   millisecond), 10 000 keys with a quarter of the records on 1 % of them; 1 000 users active
//!   at a time for sessions and dedup.
//! - **sparse**: the bid-like stream of [`crate::bids`] (about one event per millisecond, so
//!   almost every event has its own timestamp), keyed by bidder: 100 000 keys, half of the
//!   records from a hot set of 1 000 that moves every 10 s, so most sessions hold one event.
//! - **zipf**: dense timestamps, keys drawn from 1 000 000 with a Zipf distribution
//!   (exponent 1: the hottest key takes about 7 % of the records, most keys a handful).
//!
//! Costs paid per distinct timestamp show in `sparse`, costs per key in `sparse` and `zipf`,
//! and skew (one worker's keys much hotter than another's) in `zipf`.
//!
//! In every shape each partition's disorder stays under [`JITTER_MS`], below the watermark
//! bound [`crate::BOUND_MS`], so that no record is late and E, D and H count the same records.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tideline::Event;

use crate::bids::{BidShape, START_MS};
use crate::joins::Ref;
use crate::{Bid, InputShape, JITTER_MS, PARTITIONS};

/// The shape of generated input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// ~100 events per ms, 10 000 keys (the original workloads).
    Dense,
    /// ~1 event per ms, 100 000 keys with a rotating hot set (mostly single-event sessions).
    Sparse,
    /// ~100 events per ms, 1 000 000 Zipf-distributed keys.
    Zipf,
}

impl Shape {
    /// Every shape, in the order the harness reports them.
    pub const ALL: [Shape; 3] = [Shape::Dense, Shape::Sparse, Shape::Zipf];

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Shape::Dense => "dense",
            Shape::Sparse => "sparse",
            Shape::Zipf => "zipf",
        }
    }

    /// The shape called `name`.
    pub fn from_name(name: &str) -> Option<Shape> {
        Shape::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// Keys in the `zipf` shape.
pub const ZIPF_KEYS: u64 = 1_000_000;

/// Events per second of event time in the dense shapes.
const DENSE_RATE: u64 = 100_000;

/// Input of the window workloads: bids keyed by auction (dense), bidder (sparse) or a Zipf key,
/// valued by price.
pub fn bids(shape: Shape, events: u64) -> Vec<Vec<Bid>> {
    match shape {
        Shape::Dense => crate::generate(InputShape::bids(events)),
        Shape::Sparse => deal(sparse(events).map(|b| Event::new(b.time, b.bidder, b.price as u64))),
        Shape::Zipf => {
            let zipf = Zipf::new(ZIPF_KEYS);
            let mut rng = SmallRng::seed_from_u64(11);
            deal((0..events).map(|i| Event::new(dense_time(i), zipf.key(&mut rng), rng.gen_range(1..10_000))))
        }
    }
}

/// Input of the session and dedup workloads: bids keyed by user, valued by an item (below 100,
/// so that dedup by (user, item) finds repeats).
pub fn users(shape: Shape, events: u64) -> Vec<Vec<Bid>> {
    match shape {
        Shape::Dense => crate::keyed::generate(events),
        Shape::Sparse => deal(sparse(events).map(|b| Event::new(b.time, b.bidder, b.auction % 100))),
        Shape::Zipf => {
            let zipf = Zipf::new(ZIPF_KEYS);
            let mut rng = SmallRng::seed_from_u64(12);
            deal((0..events).map(|i| Event::new(dense_time(i), zipf.key(&mut rng), rng.gen_range(0..100))))
        }
    }
}

/// Input of the join workloads: one record in ten introduces a new key (left); the others
/// reference one of the recent left records (right). Sparse: at bid times, referencing one of
/// the last 200 left records uniformly (about the last 2 s). Zipf: at dense times, referencing
/// one of the last 20 000 left records (about 2 s) with a Zipf distribution over their recency,
/// so that a few new keys draw most references.
pub fn refs(shape: Shape, events: u64) -> Vec<Vec<Ref>> {
    let (recent, zipf) = match shape {
        Shape::Dense => return crate::joins::generate(events),
        Shape::Sparse => (200, None),
        Shape::Zipf => (20_000, Some(Zipf::new(20_000))),
    };
    let mut rng = SmallRng::seed_from_u64(13);
    let times: Box<dyn Iterator<Item = u64>> = match shape {
        Shape::Sparse => Box::new(sparse(events).map(|b| b.time)),
        _ => Box::new((0..events).map(dense_time)),
    };
    // The most recent left keys, newest last.
    let mut lefts: std::collections::VecDeque<u64> = std::collections::VecDeque::with_capacity(recent + 1);
    let records = times.enumerate().map(|(global, time)| {
        let (global, value) = (global as u64, rng.gen_range(0..10_000));
        if lefts.is_empty() || rng.gen_ratio(1, 10) {
            lefts.push_back(global);
            if lefts.len() > recent {
                lefts.pop_front();
            }
            return Event::new(time, global, (true, value));
        }
        let back = match &zipf {
            Some(zipf) => zipf.rank(&mut rng) as usize,
            None => rng.gen_range(0..recent),
        };
        let target = lefts[lefts.len() - 1 - back.min(lefts.len() - 1)];
        Event::new(time, target, (false, value))
    });
    deal(records)
}

/// The bid stream with the harness's disorder: 5 % of the records up to [`JITTER_MS`] early.
fn sparse(events: u64) -> crate::bids::Bids {
    BidShape { max_delay_ms: JITTER_MS, ..BidShape::new(events) }.bids()
}

/// Record `i`'s time in a dense stream: [`DENSE_RATE`] per second, each up to [`JITTER_MS`]
/// early.
fn dense_time(i: u64) -> u64 {
    (START_MS + i * 1_000 / DENSE_RATE).saturating_sub(mix(i ^ 0xD15) % JITTER_MS)
}

/// splitmix64: a deterministic hash of a record's number.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Deals a stream into [`PARTITIONS`] partitions, record `i` to partition `i % PARTITIONS`.
fn deal<T>(records: impl Iterator<Item = T>) -> Vec<Vec<T>> {
    let mut partitions: Vec<Vec<T>> = (0..PARTITIONS).map(|_| Vec::new()).collect();
    for (i, record) in records.enumerate() {
        partitions[i % PARTITIONS].push(record);
    }
    partitions
}

/// A Zipf distribution with exponent 1 over ranks `0..n`, sampled by inverting its
/// cumulative distribution.
struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    fn new(n: u64) -> Self {
        let mut total = 0.0;
        let cumulative = (1..=n)
            .map(|rank| {
                total += 1.0 / rank as f64;
                total
            })
            .collect();
        Zipf { cumulative }
    }

    /// A rank: 0 is the most likely.
    fn rank(&self, rng: &mut SmallRng) -> u64 {
        let total = *self.cumulative.last().expect("n ≥ 1");
        let u = rng.r#gen::<f64>() * total;
        (self.cumulative.partition_point(|c| *c <= u) as u64).min(self.cumulative.len() as u64 - 1)
    }

    /// A key: a rank scattered over `0..n` (a bijection), so that hot keys are not neighbours.
    fn key(&self, rng: &mut SmallRng) -> u64 {
        let n = self.cumulative.len() as u64;
        (self.rank(rng) * 2_654_435_761) % n
    }
}
