//! Nexmark queries as Tideline dataflows, shared by the `nexmark` example, its tests and the
//! benchmarks.
//!
//! | query | what it computes |
//! |---|---|
//! | q0 | pass-through: every bid |
//! | q1 | currency conversion: bid prices in euros (× 0.908) |
//! | q2 | selection: bids on auctions whose id is a multiple of 123 |
//! | q5 | hot items: per sliding window (10 s, every 2 s), the auctions with the most bids |
//! | q7 | highest bid: per tumbling 10 s window, the highest bid (ties: largest auction, bidder) |

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tideline::prelude::*;
use tideline::window::aggregate::{Count, Max};
use tideline_connectors::nexmark::{Bid, NexmarkEvent};

/// The queries implemented here.
pub const QUERIES: &[&str] = &["q0", "q1", "q2", "q5", "q7"];

/// The bids of a Nexmark event stream.
pub fn bids<'scope>(events: VecCollection<'scope, Time, NexmarkEvent>) -> VecCollection<'scope, Time, Bid> {
    events.flat_map(|event| match event {
        NexmarkEvent::Bid(bid) => Some(bid),
        _ => None,
    })
}

/// A row of a query's output, for sinks and comparisons.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Row {
    /// The window start (ms), for windowed queries.
    pub window_start: Option<Time>,
    /// The auction.
    pub auction: u64,
    /// The bidder, where the query has one.
    pub bidder: Option<u64>,
    /// A price (q0–q2, q7) or a count (q5).
    pub value: u64,
    /// The bid's time, for per-bid queries.
    pub date_time: Option<Time>,
}

/// q0: every bid.
pub fn q0<'scope>(events: VecCollection<'scope, Time, NexmarkEvent>) -> VecCollection<'scope, Time, Row> {
    bids(events).map(|b| Row {
        window_start: None,
        auction: b.auction,
        bidder: Some(b.bidder),
        value: b.price,
        date_time: Some(b.date_time),
    })
}

/// q1: bid prices converted to euros.
pub fn q1<'scope>(events: VecCollection<'scope, Time, NexmarkEvent>) -> VecCollection<'scope, Time, Row> {
    bids(events).map(|b| Row {
        window_start: None,
        auction: b.auction,
        bidder: Some(b.bidder),
        value: b.price * 908 / 1000,
        date_time: Some(b.date_time),
    })
}

/// q2: bids on auctions whose id is a multiple of 123.
pub fn q2<'scope>(events: VecCollection<'scope, Time, NexmarkEvent>) -> VecCollection<'scope, Time, Row> {
    bids(events).filter(|b| b.auction % 123 == 0).map(|b| Row {
        window_start: None,
        auction: b.auction,
        bidder: None,
        value: b.price,
        date_time: None,
    })
}

/// q5: per sliding window of 10 s every 2 s, the auctions with the most bids.
pub fn q5<'scope>(events: VecCollection<'scope, Time, NexmarkEvent>) -> VecCollection<'scope, Time, Row> {
    bids(events)
        .map(|b| Event::new(b.date_time, b.auction, ()))
        .sliding(Duration::from_secs(10), Duration::from_secs(2))
        .name("q5 bids per auction")
        .aggregate(Count)
        .map(|r| (r.window.start, (r.value, r.key)))
        .reduce_named("q5 hottest", |_window, counts, output| {
            let max = counts.last().map(|((count, _), _)| *count).expect("non-empty");
            for ((count, auction), _) in counts.iter().rev().take_while(|((c, _), _)| *c == max) {
                output.push(((*count, *auction), 1));
            }
        })
        .map(|(start, (count, auction))| Row {
            window_start: Some(start),
            auction,
            bidder: None,
            value: count as u64,
            date_time: None,
        })
}

/// q7: per tumbling 10 s window, the highest bid.
pub fn q7<'scope>(events: VecCollection<'scope, Time, NexmarkEvent>) -> VecCollection<'scope, Time, Row> {
    bids(events)
        .map(|b| Event::new(b.date_time, (), (b.price, b.auction, b.bidder)))
        .tumbling(Duration::from_secs(10))
        .name("q7 highest bid")
        .aggregate(Max)
        .map(|r| {
            let (price, auction, bidder) = r.value;
            Row { window_start: Some(r.window.start), auction, bidder: Some(bidder), value: price, date_time: None }
        })
}

/// Runs query `name` over `events`; `None` for an unknown query.
pub fn query<'scope>(
    name: &str,
    events: VecCollection<'scope, Time, NexmarkEvent>,
) -> Option<VecCollection<'scope, Time, Row>> {
    Some(match name {
        "q0" => q0(events),
        "q1" => q1(events),
        "q2" => q2(events),
        "q5" => q5(events),
        "q7" => q7(events),
        _ => return None,
    })
}
