//! The sink's formats against the real broker: upserts write the new value of a changed key
//! and a tombstone for a deleted one, in time order per key, stamped with the event time;
//! append-only output refuses a retraction with a clear error in the sink's handle instead of
//! dropping it.

use std::sync::Arc;
use std::time::Duration;

use tideline::differential_dataflow::input::Input;
use tideline::prelude::*;
use tideline::runtime::{Cluster, execute};
use tideline::sink::SinkHandle;
use tideline_connectors::kafka::{KafkaConfig, KafkaSink, SinkFormat};

use crate::common::{brokers, create, read_all, unique, within};

/// Runs `(key, value)` updates through a Kafka sink on two workers: at time 1000 `a = 1`,
/// `b = 5`, `c = 7`; at time 1010 `a` becomes 2 and `b` is deleted.
fn write(sink: KafkaSink<(String, i64)>) -> SinkHandle {
    let handle = SinkHandle::new("formats");
    let h = handle.clone();
    let sink = Arc::new(sink);
    within(Duration::from_secs(60), move || {
        execute(&Cluster::threads(2), move |worker| {
            let (sink, handle) = (Arc::clone(&sink), h.clone());
            let index = worker.index();
            let mut input = worker.dataflow::<Time, _, _>(move |scope| {
                let (input, rows) = scope.new_collection::<(String, i64), isize>();
                sink.write(rows, &handle);
                input
            });
            input.advance_to(1_000);
            if index == 0 {
                input.insert(("a".into(), 1));
                input.insert(("b".into(), 5));
                input.insert(("c".into(), 7));
                input.advance_to(1_010);
                input.remove(("a".into(), 1));
                input.insert(("a".into(), 2));
                input.remove(("b".into(), 5));
            }
            input.close();
        })
        .unwrap();
    });
    handle
}

#[test]
fn upserts_write_new_values_and_tombstones_and_append_only_refuses_retractions() {
    let _serial = crate::common::serial();
    let test = "upserts_write_new_values_and_tombstones_and_append_only_refuses_retractions";
    let Some(brokers) = brokers(test) else { return };
    let (upserts, appends) = (unique("upserts"), unique("appends"));
    create(&brokers, &upserts, 2);
    create(&brokers, &appends, 1);

    let sink = KafkaSink::builder(KafkaConfig::new(&brokers), &upserts)
        .format(SinkFormat::Upsert)
        .key(|(k, _): &(String, i64)| k.clone())
        .value(|(_, v): &(String, i64)| *v)
        .build()
        .unwrap();
    write(sink).check().unwrap();
    let mut messages = read_all(&brokers, &upserts, 2);
    // Per key, in offset order (one key, one partition).
    messages.sort_by_key(|m| (m.key_text(), m.offset));
    let written: Vec<(String, Option<String>, Option<i64>)> = messages
        .iter()
        .map(|m| (m.key_text(), m.payload.as_ref().map(|p| String::from_utf8(p.clone()).unwrap()), m.timestamp))
        .collect();
    assert_eq!(
        written,
        vec![
            ("a".into(), Some("1".into()), Some(1_000)),
            ("a".into(), Some("2".into()), Some(1_010)),
            ("b".into(), Some("5".into()), Some(1_000)),
            ("b".into(), None, Some(1_010)),
            ("c".into(), Some("7".into()), Some(1_000)),
        ]
    );
    for key in ["a", "b"] {
        let partitions: Vec<i32> = messages.iter().filter(|m| m.key_text() == key).map(|m| m.partition).collect();
        assert!(partitions.windows(2).all(|w| w[0] == w[1]), "key {key} in one partition: {partitions:?}");
    }

    let sink = KafkaSink::builder(KafkaConfig::new(&brokers), &appends)
        .format(SinkFormat::AppendOnly)
        .key(|(k, _): &(String, i64)| k.clone())
        .build()
        .unwrap();
    let error = write(sink).check().unwrap_err().to_string();
    assert!(error.contains("not append-only") && error.contains("retraction"), "{error}");
    // The sink stopped there: nothing of time 1010 was written (what was produced before it is
    // not durable either — the failed sink never reached its next flush, and no source may
    // commit past it).
    let rows: Vec<String> = read_all(&brokers, &appends, 1)
        .iter()
        .map(|m| String::from_utf8(m.payload.clone().unwrap()).unwrap())
        .collect();
    assert!(!rows.contains(&r#"["a",2]"#.to_string()), "{rows:?}");
}

#[test]
fn sink_topics_are_created_with_their_policy_and_a_wrong_one_is_refused() {
    let _serial = crate::common::serial();
    let test = "sink_topics_are_created_with_their_policy_and_a_wrong_one_is_refused";
    let Some(brokers) = brokers(test) else { return };
    use tideline_connectors::kafka::{TopicPolicy, ensure_topic};
    let config = KafkaConfig::new(&brokers);
    let upserts = KafkaSink::<crate::common::Reading>::builder(config.clone(), unique("policy-upserts"))
        .format(SinkFormat::Upsert)
        .key(|r: &crate::common::Reading| r.key.clone())
        .build()
        .unwrap();
    let timeout = Duration::from_secs(30);
    assert!(upserts.ensure_topic(2, timeout).unwrap(), "created");
    assert!(!upserts.ensure_topic(2, timeout).unwrap(), "exists, compacted: fine");
    // A topic the broker made with its defaults (cleanup.policy=delete) is refused for upserts.
    let plain = unique("policy-plain");
    create(&brokers, &plain, 1);
    let error = ensure_topic(&config, &plain, 1, TopicPolicy::Compact, timeout).unwrap_err().to_string();
    assert!(error.contains("cleanup.policy=delete") && error.contains("needs cleanup.policy=compact"), "{error}");
    assert!(!ensure_topic(&config, &plain, 1, TopicPolicy::Delete, timeout).unwrap());
}
