//! Malformed messages against the real broker: each becomes a dead letter with its topic,
//! partition, offset, raw bytes and reason, is counted, and is produced to the dead-letter
//! topic with headers; the records around them are processed, and the offsets are committed
//! to the end.

use std::sync::Arc;
use std::time::Duration;

use tideline::prelude::*;
use tideline::runtime::metrics::SourceMetrics;
use tideline::runtime::{Cluster, execute};
use tideline::sink::Collected;
use tideline::source::SourceConfig;
use tideline_connectors::kafka::{KafkaConfig, KafkaSource};

use crate::common::{Reading, brokers, committed, create, flush, producer, read_all, send, unique, within};

#[test]
fn malformed_messages_become_dead_letters_with_their_offsets_and_the_pipeline_goes_on() {
    let _serial = crate::common::serial();
    let test = "malformed_messages_become_dead_letters_with_their_offsets_and_the_pipeline_goes_on";
    let Some(brokers) = brokers(test) else { return };
    let (topic, dlq, group) = (unique("dl-in"), unique("dl-out"), unique("dl-group"));
    create(&brokers, &topic, 2);
    create(&brokers, &dlq, 1);
    // 100 messages per partition; four of them broken in different ways.
    let broken: [(i32, i64, Option<&[u8]>, &str); 4] = [
        (0, 10, Some(b"{not json"), "JSON"),
        (0, 50, Some(b"{\"time\":\"soon\",\"key\":\"k\",\"value\":1}"), "JSON"),
        (1, 20, None, "tombstone"),
        (1, 70, Some(&[0xff, 0xfe, 0x00]), "JSON"),
    ];
    let producer = producer(&brokers);
    for p in 0..2 {
        for offset in 0..100i64 {
            let key = format!("key-{p}-{offset}");
            match broken.iter().find(|(bp, bo, _, _)| *bp == p && *bo == offset) {
                Some((_, _, payload, _)) => send(&producer, &topic, p, Some(key.as_bytes()), *payload, None),
                None => {
                    let reading = Reading { time: 1_000 + offset as u64, key: key.clone(), value: offset };
                    send(
                        &producer,
                        &topic,
                        p,
                        Some(key.as_bytes()),
                        Some(&serde_json::to_vec(&reading).unwrap()),
                        None,
                    );
                }
            }
        }
    }
    flush(&producer);

    let source = KafkaSource::<Reading>::json(KafkaConfig::new(&brokers))
        .topic(&topic)
        .group_id(&group)
        .record_event_time()
        .dead_letter_topic(&dlq)
        .bounded()
        .build()
        .unwrap();
    let stats = Arc::clone(source.stats());
    let metrics = SourceMetrics::new("dead-letters");
    let (data, dead) = (Collected::new(), Collected::new());
    let (d, x, m) = (data.clone(), dead.clone(), Arc::clone(&metrics));
    within(Duration::from_secs(60), move || {
        execute(&Cluster::threads(2), move |worker| {
            let (source, data, dead, metrics) = (source.clone(), d.clone(), x.clone(), Arc::clone(&m));
            worker.dataflow::<Time, _, _>(move |scope| {
                let streams = source.read(scope, SourceConfig::new("dead-letters").metrics(metrics));
                streams.data.collect_into(&data);
                streams.dead_letters.collect_into(&dead);
            });
        })
        .unwrap();
    });

    let letters: Vec<DeadLetter> = dead.contents().into_iter().map(|(l, _)| l).collect();
    assert_eq!(letters.len(), 4, "{letters:#?}");
    for (partition, offset, payload, reason) in broken {
        let letter = letters
            .iter()
            .find(|l| l.partition == partition as u64 && l.position == offset as u64)
            .unwrap_or_else(|| panic!("no dead letter for {partition}/{offset}: {letters:#?}"));
        assert_eq!(letter.source, topic);
        assert_eq!(letter.key.as_deref(), Some(format!("key-{partition}-{offset}").as_bytes()));
        assert_eq!(letter.payload, payload.unwrap_or_default());
        assert!(letter.reason.contains(reason), "{partition}/{offset}: {}", letter.reason);
    }
    // Everything else went through, including what came after the broken messages.
    let records = data.contents();
    assert_eq!(records.len(), 196);
    assert!(records.iter().any(|(r, _)| r.key == "key-1-99"));
    assert_eq!(metrics.totals().dead_letters, 4, "counted");
    assert_eq!(stats.dead_letters_produced(), 4);

    // The dead-letter topic holds them, with where they came from and why.
    let produced = read_all(&brokers, &dlq, 1);
    assert_eq!(produced.len(), 4);
    for message in &produced {
        let (partition, offset) = (&message.headers["tideline.partition"], &message.headers["tideline.offset"]);
        let (p, o): (i32, i64) = (partition.parse().unwrap(), offset.parse().unwrap());
        let (_, _, payload, reason) =
            broken.iter().find(|(bp, bo, _, _)| *bp == p && *bo == o).expect("a broken message");
        assert_eq!(message.headers["tideline.topic"], topic);
        assert!(message.headers["tideline.reason"].contains(reason));
        assert_eq!(message.payload.as_deref().unwrap_or_default(), payload.unwrap_or_default());
        assert_eq!(message.key_text(), format!("key-{p}-{o}"));
    }
    assert_eq!(committed(&brokers, &group, &topic, 2), vec![Some(100), Some(100)]);
}
