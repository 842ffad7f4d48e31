//! Nexmark queries as Tideline dataflows, shared by the `nexmark` example, its tests and the
//! benchmarks.
//!
//! | query | what it computes | operators |
//! |---|---|---|
//! | q0 | pass-through: every bid | map |
//! | q1 | currency conversion: bid prices in euros (× 0.908) | map |
//! | q2 | selection: bids on auctions whose id is a multiple of 123 | filter |
//! | q3 | local item suggestion: sellers in OR, ID or CA of auctions in category 10 | incremental inner join |
//! | q5 | hot items: per sliding window (10 s, every 2 s), the auctions with the most bids | sliding windows, then a tumbling window over their results |
//! | q7 | highest bid: per tumbling 10 s window, the highest bid (ties: largest auction, bidder) | tumbling windows |
//! | q8 | new users: people who opened an auction in the 10 s window in which they registered | window join, then a tumbling count per person |
//! | q11 | user sessions: each bidder's bids per session (10 s of inactivity closes a session) | session windows |
//! | q12 | processing-time windows: each bidder's bids per 10 s of *arrival* time | ingestion-time source, tumbling windows |
//! | q18 | last bid: each bidder's last bid on each auction, per 10 s horizon | dedup (keep last) |
//! | q19 | auction top 10: each auction's ten highest bids, ranked | top-N |
//! | q20 | bids expanded with their auction's item, for auctions in category 10 | incremental inner join |

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tideline::prelude::*;
use tideline::window::aggregate::{Count, Max, Multiset, Reduce};
use tideline_connectors::nexmark::{Auction, Bid, NexmarkEvent, Person};

/// The queries implemented here.
pub const QUERIES: &[&str] = &["q0", "q1", "q2", "q3", "q5", "q7", "q8", "q11", "q12", "q18", "q19", "q20"];

/// Whether query `name` computes over arrival time: its source must be read with
/// [`SourceConfig::ingestion_time`](tideline::source::SourceConfig::ingestion_time) (q12).
pub fn ingestion_time(name: &str) -> bool {
    name == "q12"
}

/// The bids of a Nexmark event stream.
pub fn bids<'scope>(events: VecCollection<'scope, Time, NexmarkEvent>) -> VecCollection<'scope, Time, Bid> {
    events.flat_map(|event| match event {
        NexmarkEvent::Bid(bid) => Some(bid),
        _ => None,
    })
}

/// The auctions of a Nexmark event stream.
pub fn auctions<'scope>(events: VecCollection<'scope, Time, NexmarkEvent>) -> VecCollection<'scope, Time, Auction> {
    events.flat_map(|event| match event {
        NexmarkEvent::Auction(auction) => Some(auction),
        _ => None,
    })
}

/// The people of a Nexmark event stream.
pub fn persons<'scope>(events: VecCollection<'scope, Time, NexmarkEvent>) -> VecCollection<'scope, Time, Person> {
    events.flat_map(|event| match event {
        NexmarkEvent::Person(person) => Some(person),
        _ => None,
    })
}

/// A row of a query's output.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Row {
    /// q0, q1: a bid.
    Bid {
        /// The auction.
        auction: u64,
        /// The bidder.
        bidder: u64,
        /// The price (q1: in euros).
        price: u64,
        /// When the bid was made.
        date_time: Time,
    },
    /// q2: a bid's auction and price.
    AuctionPrice {
        /// The auction.
        auction: u64,
        /// The price.
        price: u64,
    },
    /// q3: a local seller's auction.
    LocalItem {
        /// The seller's name.
        name: String,
        /// The seller's city.
        city: String,
        /// The seller's state.
        state: String,
        /// The auction.
        auction: u64,
    },
    /// q5: a hot auction of a window.
    HotItem {
        /// The window's start.
        window_start: Time,
        /// The auction.
        auction: u64,
        /// Its bids in the window.
        bids: u64,
    },
    /// q7: a window's highest bid.
    HighestBid {
        /// The window's start.
        window_start: Time,
        /// The auction.
        auction: u64,
        /// The bidder.
        bidder: u64,
        /// The price.
        price: u64,
    },
    /// q8: a person who registered and opened an auction in the same window.
    NewSeller {
        /// The window's start.
        window_start: Time,
        /// The person.
        person: u64,
        /// Their name.
        name: String,
    },
    /// q11: a bidder's session.
    BidderSession {
        /// The bidder.
        bidder: u64,
        /// The session's first bid.
        start: Time,
        /// Its last bid plus the gap.
        end: Time,
        /// Bids in the session.
        bids: u64,
    },
    /// q12: a bidder's bids in a 10 s window of arrival time.
    BidsPerBidder {
        /// The window's start (arrival time).
        window_start: Time,
        /// The bidder.
        bidder: u64,
        /// Bids that arrived in the window.
        bids: u64,
    },
    /// q18: a bidder's last bid on an auction (per horizon).
    LastBid {
        /// The auction.
        auction: u64,
        /// The bidder.
        bidder: u64,
        /// The price.
        price: u64,
        /// When the bid was made.
        date_time: Time,
    },
    /// q19: one of an auction's ten highest bids.
    TopBid {
        /// The auction.
        auction: u64,
        /// The rank, from 1.
        rank: u64,
        /// The price.
        price: u64,
        /// The bidder.
        bidder: u64,
        /// When the bid was made.
        date_time: Time,
    },
    /// q20: a bid with its auction's item.
    BidWithAuction {
        /// The auction.
        auction: u64,
        /// The bidder.
        bidder: u64,
        /// The price.
        price: u64,
        /// The auction's item.
        item_name: String,
        /// The auction's category.
        category: u64,
    },
}

/// q0: every bid.
pub fn q0<'scope>(events: VecCollection<'scope, Time, NexmarkEvent>) -> VecCollection<'scope, Time, Row> {
    bids(events).map(|b| Row::Bid { auction: b.auction, bidder: b.bidder, price: b.price, date_time: b.date_time })
}

/// q1: bid prices converted to euros.
pub fn q1<'scope>(events: VecCollection<'scope, Time, NexmarkEvent>) -> VecCollection<'scope, Time, Row> {
    bids(events).map(|b| Row::Bid {
        auction: b.auction,
        bidder: b.bidder,
        price: b.price * 908 / 1000,
        date_time: b.date_time,
    })
}

/// q2: bids on auctions whose id is a multiple of 123.
pub fn q2<'scope>(events: VecCollection<'scope, Time, NexmarkEvent>) -> VecCollection<'scope, Time, Row> {
    bids(events).filter(|b| b.auction % 123 == 0).map(|b| Row::AuctionPrice { auction: b.auction, price: b.price })
}

/// q3: people in Oregon, Idaho or California selling in category 10, with their auctions.
pub fn q3<'scope>(events: VecCollection<'scope, Time, NexmarkEvent>) -> VecCollection<'scope, Time, Row> {
    let sellers = persons(events.clone())
        .filter(|p| ["OR", "ID", "CA"].iter().any(|s| p.state.eq_ignore_ascii_case(s)))
        .map(|p| (p.id, (p.name, p.city, p.state)));
    auctions(events)
        .filter(|a| a.category == 10)
        .map(|a| (a.seller, a.id))
        .inner_join(sellers)
        .map(|(_, (auction, (name, city, state)))| Row::LocalItem { name, city, state, auction })
}

/// q5: per sliding window of 10 s every 2 s, the auctions with the most bids.
///
/// The hottest auctions of a window are picked by a second, 2 s tumbling window over the
/// first one's results (each result at its window's last instant, keyed by the window), so
/// both stages release their state as the watermark passes.
pub fn q5<'scope>(events: VecCollection<'scope, Time, NexmarkEvent>) -> VecCollection<'scope, Time, Row> {
    let hottest = Reduce::new(|counts: &Multiset<(i64, u64)>| {
        let max = counts.largest().map(|(count, _)| *count).expect("non-empty");
        counts.iter().filter(|((count, _), n)| *count == max && *n > 0).map(|(pair, _)| *pair).collect::<Vec<_>>()
    });
    bids(events)
        .map(|b| Event::new(b.date_time, b.auction, ()))
        .sliding(Duration::from_secs(10), Duration::from_secs(2))
        .name("q5 bids per auction")
        .aggregate(Count)
        .map(|r| Event::new(r.window.end - 1, r.window.start, (r.value, r.key)))
        .tumbling(Duration::from_secs(2))
        .name("q5 hottest")
        .aggregate(hottest)
        .flat_map(|r| {
            let window_start = r.key;
            r.value.into_iter().map(move |(count, auction)| Row::HotItem { window_start, auction, bids: count as u64 })
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
            Row::HighestBid { window_start: r.window.start, auction, bidder, price }
        })
}

/// q8: people who opened an auction in the tumbling 10 s window in which they registered.
///
/// A person with several auctions in the window is reported once: the join's pairs are
/// counted per (window, person) in the same tumbling window, whose state is released with it.
pub fn q8<'scope>(events: VecCollection<'scope, Time, NexmarkEvent>) -> VecCollection<'scope, Time, Row> {
    let people = persons(events.clone()).map(|p| Event::new(p.date_time, p.id, p.name));
    let sellers = auctions(events).map(|a| Event::new(a.date_time, a.seller, ()));
    people
        .window_join(sellers, WindowSpec::tumbling(Duration::from_secs(10)).expect("valid window"))
        .name("q8 new sellers")
        .inner()
        .map(|(window, person, _)| Event::new(window.end - 1, (window.start, person.key, person.value), ()))
        .tumbling(Duration::from_secs(10))
        .name("q8 once per person")
        .aggregate(Count)
        .map(|r| {
            let (window_start, person, name) = r.key;
            Row::NewSeller { window_start, person, name }
        })
}

/// q11: each bidder's sessions of bids (a session ends after 10 s without a bid), counted.
pub fn q11<'scope>(events: VecCollection<'scope, Time, NexmarkEvent>) -> VecCollection<'scope, Time, Row> {
    bids(events)
        .map(|b| Event::new(b.date_time, b.bidder, ()))
        .sessions(Duration::from_secs(10))
        .name("q11 bidder sessions")
        .aggregate(Count)
        .map(|r| Row::BidderSession { bidder: r.key, start: r.window.start, end: r.window.end, bids: r.value as u64 })
}

/// q12: each bidder's bids per 10 s tumbling window of processing time — Nexmark's
/// processing-time windows, as windows over *arrival* time: the events take the time they
/// travel at ([`AtIngestionTime`](tideline::time::clock::AtIngestionTime)), which is the
/// clock's time when read for a source read with
/// [`SourceConfig::ingestion_time`](tideline::source::SourceConfig::ingestion_time) (the
/// `nexmark` program does that for q12). Over an event-time source it counts by the time each
/// bid entered the dataflow (its event time, or the watermark for bids behind it).
pub fn q12<'scope>(events: VecCollection<'scope, Time, NexmarkEvent>) -> VecCollection<'scope, Time, Row> {
    use tideline::time::clock::AtIngestionTime;
    bids(events)
        .map(|b| Event::new(b.date_time, b.bidder, ()))
        .at_ingestion_time()
        .tumbling(Duration::from_secs(10))
        .name("q12 bids per bidder")
        .aggregate(Count)
        .map(|r| Row::BidsPerBidder { window_start: r.window.start, bidder: r.key, bids: r.value as u64 })
}

/// q18: each bidder's last bid on each auction, per 10 s horizon (dedup keeping the last).
pub fn q18<'scope>(events: VecCollection<'scope, Time, NexmarkEvent>) -> VecCollection<'scope, Time, Row> {
    bids(events)
        .map(|b| Event::new(b.date_time, (b.bidder, b.auction), b.price))
        .dedup(Duration::from_secs(10))
        .keep(Keep::Last)
        .name("q18 last bid")
        .build()
        .map(|e| Row::LastBid { auction: e.key.1, bidder: e.key.0, price: e.value, date_time: e.time })
}

/// q19: each auction's ten highest bids (ties: the smaller bid), ranked.
pub fn q19<'scope>(events: VecCollection<'scope, Time, NexmarkEvent>) -> VecCollection<'scope, Time, Row> {
    bids(events)
        .map(|b| (b.auction, b.price, b.bidder, b.date_time))
        .top_n(10, |b| b.0, |b| b.1)
        .name("q19 top bids")
        .build()
        .map(|ranked: Ranked<u64, (u64, u64, u64, Time)>| {
            let (auction, price, bidder, date_time) = ranked.record;
            Row::TopBid { auction, rank: ranked.rank as u64, price, bidder, date_time }
        })
}

/// q20: bids on auctions of category 10, with the auction's item.
pub fn q20<'scope>(events: VecCollection<'scope, Time, NexmarkEvent>) -> VecCollection<'scope, Time, Row> {
    let items = auctions(events.clone()).filter(|a| a.category == 10).map(|a| (a.id, (a.item_name, a.category)));
    bids(events).map(|b| (b.auction, (b.bidder, b.price))).inner_join(items).map(
        |(auction, ((bidder, price), (item_name, category)))| Row::BidWithAuction {
            auction,
            bidder,
            price,
            item_name,
            category,
        },
    )
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
        "q3" => q3(events),
        "q5" => q5(events),
        "q7" => q7(events),
        "q8" => q8(events),
        "q11" => q11(events),
        "q12" => q12(events),
        "q18" => q18(events),
        "q19" => q19(events),
        "q20" => q20(events),
        _ => return None,
    })
}
