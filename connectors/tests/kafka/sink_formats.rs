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

/// Issue 13: one valid row with a 600 KB key made the sink fail with `MessageSizeTooLarge`,
/// and every restart failed the same way. With a dead-letter topic the refused record goes
/// there with the reason, and the rest is written.
#[test]
fn a_record_the_broker_refuses_goes_to_the_dead_letters_instead_of_stopping_the_sink() {
    let _serial = crate::common::serial();
    let test = "a_record_the_broker_refuses_goes_to_the_dead_letters_instead_of_stopping_the_sink";
    let Some(brokers) = brokers(test) else { return };
    let (output, dead) = (unique("refused-out"), unique("refused-dead"));
    // The output topic takes messages of at most 2 000 bytes.
    {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        let admin: AdminClient<rdkafka::client::DefaultClientContext> =
            rdkafka::ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
        let topic = NewTopic::new(&output, 1, TopicReplication::Fixed(-1)).set("max.message.bytes", "2000");
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let created = futures_lite_block_on(admin.create_topics([&topic], &options)).unwrap();
        created.into_iter().for_each(|r| {
            r.unwrap();
        });
    }
    create(&brokers, &dead, 1);
    let big = "k".repeat(5_000);
    let b = big.clone();
    let sink = KafkaSink::builder(KafkaConfig::new(&brokers), &output)
        .format(SinkFormat::Upsert)
        .key(move |(k, _): &(String, i64)| if k == "b" { b.clone() } else { k.clone() })
        .dead_letter_topic(&dead)
        .build()
        .unwrap();
    let stats = Arc::clone(sink.stats());
    let handle = write(sink);
    handle.check().expect("the sink goes on past the refused record");
    // `b` is written at 1000 and deleted (a tombstone) at 1010: both refused.
    assert_eq!(stats.dead_letters(), 2);
    let written: Vec<String> = read_all(&brokers, &output, 1).iter().map(|m| m.key_text()).collect();
    assert!(written.contains(&"a".to_string()) && written.contains(&"c".to_string()), "{written:?}");
    let letters = read_all(&brokers, &dead, 1);
    assert_eq!(letters.len(), 2, "{letters:?}");
    for letter in &letters {
        assert_eq!(letter.key.as_ref().map(Vec::len), Some(1_024), "the key's first kilobyte");
        assert!(letter.headers["tideline.reason"].contains("too large"), "{:?}", letter.headers);
        let value = letter.json();
        assert_eq!(value["topic"], output.as_str());
        assert_eq!(value["key_bytes"], 5_000);
    }
}

/// Runs a future on this thread (the admin client completes its futures from its own thread).
fn futures_lite_block_on<F: std::future::Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut context = std::task::Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let std::task::Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
        std::thread::park();
    }
}
