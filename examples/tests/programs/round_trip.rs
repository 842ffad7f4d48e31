//! Every type that crosses a process boundary round-trips through the encoding timely uses
//! between processes (bincode, through `timely::Bincode`): the rows of the example programs,
//! late records, dead letters, and the control messages of sources and sinks. A type whose
//! `Serialize` and `Deserialize` disagree crashes a cluster (issue 13, item 1: `window_agg`'s
//! late rows serialized only their record but deserialized three fields).

use std::fmt::Debug;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tideline::Event;
use tideline::Time;
use tideline::time::late::DeadLetter;
use tideline::timely::Bincode;
use tideline::timely::bytes::arc::BytesMut;
use tideline::timely::communication::Bytesable;
use tideline_connectors::nexmark::{NexmarkEvent, NexmarkSource};
use tideline_examples::ledger::Movement;
use tideline_examples::nexmark::Row;
use tideline_examples::{DeadRow, InputRow, OutputRow};

/// Sends `value` as timely does between processes: as a batch of updates, bincode-encoded,
/// and checks that the same value arrives.
fn round_trip<T>(value: T)
where
    T: Serialize + DeserializeOwned + Send + Clone + PartialEq + Debug + 'static,
{
    let batch = vec![(value.clone(), 1_767_225_600_000 as Time, 1isize), (value, Time::MAX, -1)];
    let sent = Bincode::from(batch.clone());
    let mut bytes = Vec::new();
    sent.into_bytes(&mut bytes);
    assert_eq!(bytes.len(), sent.length_in_bytes(), "{batch:?}");
    let received: Bincode<Vec<(T, Time, isize)>> = Bincode::from_bytes(BytesMut::from(bytes).freeze());
    assert_eq!(received.payload, batch);
}

fn input() -> InputRow {
    InputRow { event_time_ms: 1_767_225_600_123, key: "sensor-07".into(), value: -42 }
}

#[test]
fn window_agg_rows_round_trip() {
    round_trip(input());
    round_trip(OutputRow {
        window_start_ms: 1_767_225_600_000,
        window_end_ms: 1_767_225_610_000,
        key: "sensor-07".into(),
        count: 3,
        sum: i128::MIN,
        min: -1,
        max: i64::MAX,
    });
    round_trip(input().into_event());
    round_trip(DeadRow { file: "in.csv".into(), line: 9, reason: "column \"value\"".into(), raw: "1,a,x".into() });
}

#[test]
fn late_records_and_dead_letters_round_trip() {
    // Late records travel as the operators' input type: events.
    round_trip(Event::new(5, "sensor-07".to_string(), i64::MIN));
    round_trip(DeadLetter {
        source: "readings".into(),
        partition: 2,
        position: u64::MAX,
        key: Some(vec![0, 255]),
        payload: vec![0xff, 0xfe, b'\n'],
        reason: "invalid UTF-8".into(),
    });
    round_trip(DeadLetter {
        source: String::new(),
        partition: 0,
        position: 0,
        key: None,
        payload: Vec::new(),
        reason: String::new(),
    });
}

#[test]
fn nexmark_and_ledger_rows_round_trip() {
    let mut source = NexmarkSource::new(300);
    source.partitions = 1;
    let events: Vec<NexmarkEvent> = source.all().into_iter().flatten().collect();
    assert!(events.iter().any(|e| matches!(e, NexmarkEvent::Person(_))));
    assert!(events.iter().any(|e| matches!(e, NexmarkEvent::Auction(_))));
    assert!(events.iter().any(|e| matches!(e, NexmarkEvent::Bid(_))));
    for event in events {
        round_trip(event);
    }
    round_trip(Row::Bid { auction: 1, bidder: 2, price: 3, date_time: 4 });
    round_trip(Row::LocalItem { name: "n".into(), city: "c".into(), state: "or".into(), auction: 5 });
    round_trip(Row::HotItem { window_start: 0, auction: 1, bids: 2 });
    round_trip(Movement::Deposit(100));
    round_trip(Movement::Withdrawal(i64::MAX));
    round_trip(("acct-007".to_string(), Movement::Withdrawal(5)));
}

#[test]
fn control_messages_round_trip() {
    // Sources announce (worker, watermark); file sources share per-chunk line counts and
    // event times.
    round_trip((3usize, Some(17 as Time)));
    round_trip((0usize, None::<Time>));
    round_trip((1usize, 2usize, 3u64, Some(Time::MAX)));
}
