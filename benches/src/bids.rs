//! A bid-like event stream, as a user's data looks: about one event per millisecond of event
//! time (so almost every event has its own timestamp), many keys with rotating hot sets, a few
//! rows out of order. The whole-process benchmark (`harness --whole-process`) writes it as
//! `window_agg`'s input CSV; the in-memory harness's `sparse` shape deals it into partitions.
//!
//! The stream is a deterministic function of its [`BidShape`] (seeded): the same shape gives
//! the same rows on every machine and every run.

use std::io::{self, BufWriter, Write};
use std::path::Path;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// 2026-01-01T00:00:00Z, the first event time of a generated stream.
pub const START_MS: u64 = 1_767_225_600_000;

/// The first auction and bidder id (as in Nexmark), so that the keys, written as decimal
/// strings, have different lengths and sort differently as text than as numbers.
pub const FIRST_ID: u64 = 1_000;

/// Parameters of a bid stream. [`BidShape::new`] gives the shape of the bid file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BidShape {
    /// Number of bids.
    pub events: u64,
    /// Seed of the random choices.
    pub seed: u64,
    /// Distinct auctions.
    pub auctions: u64,
    /// Auctions in the hot set, which takes half of the bids.
    pub hot_auctions: u64,
    /// Distinct bidders.
    pub bidders: u64,
    /// Bidders in the hot set, which places half of the bids.
    pub hot_bidders: u64,
    /// Event time (ms) after which both hot sets move on to the next auctions and bidders.
    pub hot_period_ms: u64,
    /// Percentage of rows out of order.
    pub disorder_percent: u32,
    /// How far (ms) before its position's clock an out-of-order row's event time can be.
    pub max_delay_ms: u64,
}

impl BidShape {
    /// The bid file: `events` bids, 10 000 auctions with half of the bids on a hot set
    /// of 100, 100 000 bidders with half of the bids from a hot set of 1 000, both hot sets
    /// moving every 10 s of event time, 5 % of the rows up to 5 s out of order.
    pub fn new(events: u64) -> Self {
        BidShape {
            events,
            seed: 0x5EED_B1D5,
            auctions: 10_000,
            hot_auctions: 100,
            bidders: 100_000,
            hot_bidders: 1_000,
            hot_period_ms: 10_000,
            disorder_percent: 5,
            max_delay_ms: 5_000,
        }
    }

    /// The bids, in stream (file) order.
    pub fn bids(&self) -> Bids {
        Bids { shape: *self, rng: SmallRng::seed_from_u64(self.seed), clock: START_MS, emitted: 0 }
    }
}

/// One bid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BidRow {
    /// Event time, ms since the Unix epoch.
    pub time: u64,
    /// The auction's id (from [`FIRST_ID`]).
    pub auction: u64,
    /// The bidder's id (from [`FIRST_ID`]).
    pub bidder: u64,
    /// The price, in cents.
    pub price: i64,
}

/// The bids of a [`BidShape`], in stream order: an iterator.
///
/// A clock starts at [`START_MS`] and advances by 1 ms per bid on average (0, 1 or 2 ms, with
/// probabilities 0.1, 0.8 and 0.1). A bid's event time is the clock's, except for
/// [`BidShape::disorder_percent`] of them, whose event time is 1 to
/// [`BidShape::max_delay_ms`] ms before it. Half of the auctions are drawn from the hot set of
/// the current period (period `p` = clock / [`BidShape::hot_period_ms`]: auctions
/// `p × hot_auctions …`, wrapping around), the other half from all auctions, uniformly; the
/// same, independently, for bidders.
#[derive(Clone, Debug)]
pub struct Bids {
    shape: BidShape,
    rng: SmallRng,
    clock: u64,
    emitted: u64,
}

impl Iterator for Bids {
    type Item = BidRow;

    fn next(&mut self) -> Option<BidRow> {
        if self.emitted == self.shape.events {
            return None;
        }
        self.emitted += 1;
        let shape = &self.shape;
        let rng = &mut self.rng;
        self.clock += match rng.gen_range(0..10) {
            0 => 0,
            9 => 2,
            _ => 1,
        };
        let period = (self.clock - START_MS) / shape.hot_period_ms;
        let mut pick = |all: u64, hot: u64| {
            let index = if rng.gen_bool(0.5) { period * hot + rng.gen_range(0..hot) } else { rng.gen_range(0..all) };
            FIRST_ID + index % all
        };
        let auction = pick(shape.auctions, shape.hot_auctions);
        let bidder = pick(shape.bidders, shape.hot_bidders);
        let price = rng.gen_range(100..=100_000);
        let time = if rng.gen_ratio(shape.disorder_percent, 100) {
            self.clock.saturating_sub(rng.gen_range(1..=shape.max_delay_ms))
        } else {
            self.clock
        };
        Some(BidRow { time, auction, bidder, price })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.shape.events - self.emitted) as usize;
        (left, Some(left))
    }
}

/// Writes the stream as two `window_agg` input files, `event_time_ms,key,value` with value =
/// price: keyed by auction (for tumbling and sliding windows) and by bidder (for sessions).
/// Each is written to a temporary name and renamed into place once complete, so that an
/// interrupted run never leaves a truncated file behind under the final name.
pub fn write_csv(shape: &BidShape, by_auction: &Path, by_bidder: &Path) -> io::Result<()> {
    let partial = |path: &Path| path.with_extension("csv.partial");
    let mut auctions = BufWriter::with_capacity(1 << 20, std::fs::File::create(partial(by_auction))?);
    let mut bidders = BufWriter::with_capacity(1 << 20, std::fs::File::create(partial(by_bidder))?);
    auctions.write_all(b"event_time_ms,key,value\n")?;
    bidders.write_all(b"event_time_ms,key,value\n")?;
    let mut number = itoa::Buffer::new();
    let mut line = Vec::with_capacity(64);
    for bid in shape.bids() {
        for (out, key) in [(&mut auctions, bid.auction), (&mut bidders, bid.bidder)] {
            line.clear();
            line.extend_from_slice(number.format(bid.time).as_bytes());
            line.push(b',');
            line.extend_from_slice(number.format(key).as_bytes());
            line.push(b',');
            line.extend_from_slice(number.format(bid.price).as_bytes());
            line.push(b'\n');
            out.write_all(&line)?;
        }
    }
    for (mut out, path) in [(auctions, by_auction), (bidders, by_bidder)] {
        out.flush()?;
        std::fs::rename(partial(path), path)?;
    }
    Ok(())
}
