//! Code shared by the example programs: the `window_agg` record types (input, output and
//! dead-letter rows) and its built-in, generated data set, the Nexmark queries, the `ledger`
//! dataflow ([`ledger`]), the command-line pieces every program shares ([`cli`]) and the
//! observability flags every program takes ([`observe`]: logs and the metrics endpoint).

pub mod cli;
pub mod ledger;
pub mod nexmark;
pub mod observe;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tideline::{Event, EventTime, Time};

/// A line of `window_agg`'s input CSV: `event_time_ms,key,value`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct InputRow {
    /// Event time, ms since the Unix epoch.
    pub event_time_ms: u64,
    /// The key.
    pub key: String,
    /// The value.
    pub value: i64,
}

impl EventTime for InputRow {
    fn event_time(&self) -> Time {
        self.event_time_ms
    }
}

impl InputRow {
    /// As an engine event.
    pub fn into_event(self) -> Event<String, i64> {
        Event::new(self.event_time_ms, self.key, self.value)
    }

    /// From an engine event (the inverse of [`into_event`](Self::into_event)).
    pub fn from_event(event: Event<String, i64>) -> Self {
        InputRow { event_time_ms: event.time, key: event.key, value: event.value }
    }
}

/// A line of `window_agg`'s output CSV (plus a `diff` column when the output is a changelog).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OutputRow {
    /// Window start (inclusive), ms.
    pub window_start_ms: u64,
    /// Window end (exclusive), ms.
    pub window_end_ms: u64,
    /// The key.
    pub key: String,
    /// Number of records.
    pub count: i64,
    /// Sum of values (in `i128`: it cannot overflow).
    pub sum: i128,
    /// Smallest value.
    pub min: i64,
    /// Largest value.
    pub max: i64,
}

impl From<tideline::window::WindowResult<String, tideline::window::aggregate::Stats>> for OutputRow {
    /// The row of a window's (or session's) statistics, as `window_agg` and `kafka_pipeline`
    /// write it.
    fn from(result: tideline::window::WindowResult<String, tideline::window::aggregate::Stats>) -> Self {
        OutputRow {
            window_start_ms: result.window.start,
            window_end_ms: result.window.end,
            key: result.key,
            count: result.value.count,
            sum: result.value.sum,
            min: result.value.min,
            max: result.value.max,
        }
    }
}

/// A malformed input line of `window_agg`, as a row of its dead-letter output.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeadRow {
    /// The input file.
    pub file: String,
    /// The line number.
    pub line: u64,
    /// Why the line could not be decoded.
    pub reason: String,
    /// The line.
    pub raw: String,
}

/// The start of the built-in data set's event time: 2026-01-01T00:00:00Z.
pub const GENERATED_BASE_TIME: Time = 1_767_225_600_000;

/// Partitions of the built-in data set (fixed, so results do not depend on workers).
pub const GENERATED_PARTITIONS: usize = 4;

/// The built-in data set: `events` sensor readings over [`GENERATED_PARTITIONS`] partitions,
/// 1000 events per second of event time (reading `n` of the whole set happens at
/// `GENERATED_BASE_TIME + n` ms, and partition `p` holds the readings `n ≡ p`), 50 keys, out
/// of order by up to 3 s, with one record in a thousand held back 5–30 s (late under a 5 s
/// out-of-orderness bound). Deterministic: the same `events` always give the same records, and
/// reading the partitions round-robin gives the data set as one ordered stream (what
/// `window_agg --write-input` writes).
pub fn generated_partition(partition: usize, events: u64) -> impl Iterator<Item = InputRow> + 'static {
    let partitions = GENERATED_PARTITIONS as u64;
    let share = events / partitions + u64::from((partition as u64) < events % partitions);
    let mut rng = SmallRng::seed_from_u64(0x71de_u64 ^ partition as u64);
    (0..share).map(move |i| {
        let clock = GENERATED_BASE_TIME + i * partitions + partition as u64;
        let mut time = clock.saturating_sub(rng.gen_range(0..3_000));
        if rng.gen_ratio(1, 1_000) {
            time = clock.saturating_sub(rng.gen_range(5_000..30_000));
        }
        let sensor = rng.gen_range(0..50u32);
        InputRow { event_time_ms: time, key: format!("sensor-{sensor:02}"), value: rng.gen_range(-100..1_000) }
    })
}

/// Auctions of the bid-like data set ([`bids`]).
pub const BID_AUCTIONS: u32 = 10_000;

/// A bid-like data set, in the shape of Nexmark's bids at a modest rate, for whole-process
/// measurements: `events` bids, one per millisecond of event time from
/// [`GENERATED_BASE_TIME`] (so almost every bid has a timestamp of its own), keyed by auction
/// (`auction-NNNNN`, 10 000 auctions, half of the bids on a hot set of 100 that moves every
/// minute), valued by price; 5 % of them out of order by up to 5 s. Deterministic, in file
/// order (what `window_agg --write-bids` writes).
pub fn bids(events: u64) -> impl Iterator<Item = InputRow> + 'static {
    let mut rng = SmallRng::seed_from_u64(0xb1d5);
    (0..events).map(move |i| {
        let clock = GENERATED_BASE_TIME + i;
        let time = if rng.gen_ratio(1, 20) { clock.saturating_sub(rng.gen_range(0..5_000)) } else { clock };
        let auction = if rng.gen_ratio(1, 2) {
            let hot_set = (i / 60_000) as u32;
            (hot_set * 100 + rng.gen_range(0..100)) % BID_AUCTIONS
        } else {
            rng.gen_range(0..BID_AUCTIONS)
        };
        InputRow { event_time_ms: time, key: format!("auction-{auction:05}"), value: rng.gen_range(1..10_000) }
    })
}
