//! Where a Kafka source starts, and where its event times come from, against the real broker:
//! the earliest offset, the end (latest), the first message at or after a timestamp, explicit
//! per-partition offsets; the message timestamp as event time (the default) or a field of the
//! record.

use std::collections::BTreeMap;
use std::time::Duration;

use tideline::prelude::*;
use tideline::runtime::{Cluster, execute};
use tideline::sink::Collected;
use tideline::source::SourceConfig;
use tideline_connectors::kafka::{KafkaConfig, KafkaSource, StartOffsets};

use crate::common::{Reading, brokers, create, flush, producer, send, unique, within};

/// Where a record came from, and the event time in its payload.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
struct Tag {
    partition: i32,
    offset: i64,
    payload_time: Time,
}

const BASE: i64 = 1_767_225_600_000;
const PER_PARTITION: i64 = 100;

/// The message timestamp of offset `offset` (the same in both partitions).
fn timestamp(offset: i64) -> Time {
    (BASE + offset * 10) as Time
}

/// Two partitions of 100 messages each; offset `o` has message timestamp `timestamp(o)`
/// and, in its payload, a different event time (`o`), to tell the two apart.
fn produce(brokers: &str, topic: &str) {
    let producer = producer(brokers);
    for partition in 0..2 {
        for offset in 0..PER_PARTITION {
            let reading = Reading { time: offset as Time, key: "k".into(), value: 0 };
            let payload = serde_json::to_vec(&reading).unwrap();
            send(&producer, topic, partition, None, Some(&payload), Some(timestamp(offset) as i64));
        }
    }
    flush(&producer);
}

/// Reads the topic to its end from `start` on 2 workers: `(tag, dataflow time)` of every
/// record, sorted by partition and offset.
fn read(brokers: &str, topic: &str, start: StartOffsets, payload_time: bool) -> Vec<(Tag, Time)> {
    let mut builder = KafkaSource::with_decoder(KafkaConfig::new(brokers), |m| {
        let reading: Reading = m.value_json()?;
        Ok(Tag { partition: m.partition, offset: m.offset, payload_time: reading.time })
    })
    .topic(topic)
    .start(start)
    .bounded();
    if payload_time {
        builder = builder.event_time(|t: &Tag| t.payload_time);
    }
    let source = builder.build().unwrap();
    let collected = Collected::new();
    let c = collected.clone();
    within(Duration::from_secs(60), move || {
        execute(&Cluster::threads(2), move |worker| {
            let (source, c) = (source.clone(), c.clone());
            worker.dataflow::<Time, _, _>(move |scope| {
                // Times increase within each partition: nothing is late.
                source.read(scope, SourceConfig::new("start")).data.collect_into(&c);
            });
        })
        .unwrap();
    });
    let mut rows: Vec<(Tag, Time)> = collected
        .changelog()
        .into_iter()
        .map(|(tag, time, diff)| {
            assert_eq!(diff, 1);
            (tag, time)
        })
        .collect();
    rows.sort();
    rows
}

fn offsets(rows: &[(Tag, Time)]) -> BTreeMap<i32, Vec<i64>> {
    let mut by_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for (tag, _) in rows {
        by_partition.entry(tag.partition).or_default().push(tag.offset);
    }
    by_partition
}

#[test]
fn start_positions_and_event_time_sources() {
    let _serial = crate::common::serial();
    let Some(brokers) = brokers("start_positions_and_event_time_sources") else { return };
    let topic = unique("start");
    create(&brokers, &topic, 2);
    produce(&brokers, &topic);
    let all: Vec<i64> = (0..PER_PARTITION).collect();

    // Earliest (the default start), event time from the message timestamp (the default).
    let rows = read(&brokers, &topic, StartOffsets::Earliest, false);
    assert_eq!(offsets(&rows), BTreeMap::from([(0, all.clone()), (1, all.clone())]));
    for (tag, time) in &rows {
        assert_eq!(*time, timestamp(tag.offset), "event time is the message timestamp: {tag:?}");
    }

    // Event time from the record instead.
    let rows = read(&brokers, &topic, StartOffsets::Earliest, true);
    assert_eq!(rows.len(), 2 * PER_PARTITION as usize);
    for (tag, time) in &rows {
        assert_eq!(*time, tag.payload_time, "event time is the record's field: {tag:?}");
    }

    // Latest: only what is produced after the start; a bounded read of it finds nothing.
    assert_eq!(read(&brokers, &topic, StartOffsets::Latest, false), vec![]);

    // A timestamp: the first message at or after it, in every partition.
    let rows = read(&brokers, &topic, StartOffsets::Timestamp(timestamp(60) - 5), false);
    let from_60: Vec<i64> = (60..PER_PARTITION).collect();
    assert_eq!(offsets(&rows), BTreeMap::from([(0, from_60.clone()), (1, from_60)]));
    // After the last message: nothing.
    assert_eq!(read(&brokers, &topic, StartOffsets::Timestamp(timestamp(PER_PARTITION) + 1), false), vec![]);

    // Explicit offsets; a partition not listed starts at the earliest offset.
    let start = StartOffsets::Offsets(BTreeMap::from([((topic.clone(), 0), 90)]));
    let rows = read(&brokers, &topic, start, false);
    assert_eq!(offsets(&rows), BTreeMap::from([(0, (90..PER_PARTITION).collect()), (1, all)]));
}
