//! Shared helpers: the broker, unique topics, producing, reading back, offsets, time limits,
//! and the generated keyed, out-of-order readings the tests feed through pipelines.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientConfig, Message};
use serde::{Deserialize, Serialize};
use tideline::{EventTime, Time};
use tideline_connectors::kafka::{KafkaConfig, create_topic};

/// Runs the tests of this binary one at a time: several of them measure timing (idle
/// timeouts, backpressure) and all of them share two cores with the broker.
pub(crate) fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The real broker's address from `TIDELINE_KAFKA_BROKERS`, or `None` after saying that the
/// test is skipped and how to run it.
pub(crate) fn brokers(test: &str) -> Option<String> {
    match std::env::var("TIDELINE_KAFKA_BROKERS") {
        Ok(brokers) if !brokers.trim().is_empty() => Some(brokers),
        _ => {
            // Straight to stderr, past the test harness's output capture: a skip must be seen.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: needs a Kafka broker. Run scripts/test.sh (it starts one), or start one with \
                 `scripts/kafka-broker.sh start` and set TIDELINE_KAFKA_BROKERS=127.0.0.1:19092"
            );
            None
        }
    }
}

/// A topic (or group) name no other test run uses.
pub(crate) fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("tideline-test-{name}-{}-{}", std::process::id(), nanos % 1_000_000_000_000)
}

pub(crate) fn create(brokers: &str, topic: &str, partitions: i32) {
    assert!(create_topic(&KafkaConfig::new(brokers), topic, partitions, Duration::from_secs(30)).unwrap());
}

/// An idempotent producer for test input.
pub(crate) fn producer(brokers: &str) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("test producer")
}

/// Produces one message to an explicit partition (waiting while the local queue is full).
pub(crate) fn send(
    producer: &BaseProducer,
    topic: &str,
    partition: i32,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    timestamp: Option<i64>,
) {
    let mut record = BaseRecord::<[u8], [u8]>::to(topic).partition(partition);
    if let Some(key) = key {
        record = record.key(key);
    }
    if let Some(payload) = payload {
        record = record.payload(payload);
    }
    if let Some(timestamp) = timestamp {
        record = record.timestamp(timestamp);
    }
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                producer.poll(Duration::from_millis(10));
            }
            Err((e, _)) => panic!("producing test input: {e}"),
        }
    }
}

pub(crate) fn flush(producer: &BaseProducer) {
    producer.flush(Duration::from_secs(60)).expect("test input delivered");
}

fn consumer(brokers: &str, group: Option<&str>) -> BaseConsumer {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers).set("enable.auto.commit", "false");
    if let Some(group) = group {
        config.set("group.id", group);
    }
    config.create().expect("test consumer")
}

/// The end offset (high watermark) of each partition.
pub(crate) fn end_offsets(brokers: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let consumer = consumer(brokers, None);
    (0..partitions).map(|p| consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).unwrap().1).collect()
}

/// The group's committed offset of each partition.
pub(crate) fn committed(brokers: &str, group: &str, topic: &str, partitions: i32) -> Vec<Option<i64>> {
    let consumer = consumer(brokers, Some(group));
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition(topic, p);
    }
    // A fresh broker answers "not coordinator" while it loads the group's coordinator: retry.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let committed = loop {
        match consumer.committed_offsets(list.clone(), Duration::from_secs(10)) {
            Ok(committed) => break committed,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("committed offsets: {e}; retrying");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("committed offsets: {e}"),
        }
    };
    let offsets = (0..partitions)
        .map(|p| match committed.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => Some(o),
            _ => None,
        })
        .collect();
    // A client must outlive the partition lists it returned.
    drop(committed);
    offsets
}

/// A message read back.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Stored {
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) payload: Option<Vec<u8>>,
    pub(crate) timestamp: Option<i64>,
    pub(crate) headers: BTreeMap<String, String>,
}

impl Stored {
    pub(crate) fn key_text(&self) -> String {
        String::from_utf8(self.key.clone().unwrap_or_default()).unwrap()
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(self.payload.as_deref().expect("a value")).expect("JSON value")
    }
}

/// Every message of the topic, by partition and offset.
pub(crate) fn read_all(brokers: &str, topic: &str, partitions: i32) -> Vec<Stored> {
    use rdkafka::message::Headers;
    let ends = end_offsets(brokers, topic, partitions);
    // librdkafka assigns partitions through the group handle: a group id is needed, even
    // though nothing is committed.
    let consumer = consumer(brokers, Some(&unique("reader")));
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&list).unwrap();
    drop(list);
    let mut next: Vec<i64> = vec![0; partitions as usize];
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while next.iter().zip(&ends).any(|(n, e)| n < e) {
        assert!(Instant::now() < deadline, "reading {topic} back timed out at {next:?} of {ends:?}");
        let Some(message) = consumer.poll(Duration::from_millis(100)) else { continue };
        let message = match message {
            Ok(message) => message,
            Err(e) => {
                eprintln!("reading {topic} back: {e} (retried)");
                continue;
            }
        };
        // The client may fetch a range again after an error: each offset counts once.
        if message.offset() < next[message.partition() as usize] {
            continue;
        }
        next[message.partition() as usize] = message.offset() + 1;
        let headers = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_string(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        out.push(Stored {
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            timestamp: message.timestamp().to_millis(),
            headers,
        });
    }
    out.sort();
    out
}

/// Runs `f` on another thread; fails the test if it takes longer than `limit` (a hang is a
/// failure, not a stuck test run).
pub(crate) fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, result) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(f());
    });
    match result.recv_timeout(limit) {
        Ok(value) => value,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            eprintln!("{}", thread_stacks());
            panic!("did not finish within {limit:?} (the threads' stacks are above)")
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the test thread panicked"),
    }
}

/// Where this process's threads are, from `gdb` if it is installed: a hang says where it hung.
/// Only the frames of Tideline, timely, differential and librdkafka are kept.
fn thread_stacks() -> String {
    // Into a file, not a pipe: gdb stops this process, whose thread would otherwise have to
    // read the pipe for gdb to go on writing.
    let path = std::env::temp_dir().join(format!("tideline-stacks-{}.txt", std::process::id()));
    let Ok(file) = std::fs::File::create(&path) else { return "(no stacks: cannot create a file for them)".into() };
    let status = std::process::Command::new("timeout")
        .args(["60", "gdb", "-p", &std::process::id().to_string(), "-batch", "-ex", "thread apply all bt"])
        .stdin(std::process::Stdio::null())
        .stdout(file)
        .stderr(std::process::Stdio::null())
        .status();
    if status.is_err() {
        return "(no stacks: gdb is not installed)".into();
    }
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let _ = std::fs::remove_file(&path);
    // Per thread (librdkafka's own "rdk:" threads left out), its first frames in Tideline,
    // timely, differential or the Kafka client.
    let interesting = ["tideline", "timely", "differential", "rdkafka", "rd_kafka"];
    let mut kept = Vec::new();
    let mut frames = 0;
    let mut skipping = false;
    for line in text.lines() {
        if line.starts_with("Thread ") {
            skipping = line.contains("\"rdk:");
            frames = 0;
            if !skipping {
                kept.push(line.to_string());
            }
        } else if !skipping
            && frames < 8
            && interesting.iter().any(|word| line.contains(word))
            && !["std::", "core::", "alloc::"]
                .iter()
                .any(|p| line.split(" in ").nth(1).is_some_and(|f| f.starts_with(p)))
        {
            frames += 1;
            kept.push(line.chars().take(200).collect());
        }
    }
    format!("threads of the hung test process:\n{}", kept.join("\n"))
}

/// A sensor reading: the test input.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub(crate) struct Reading {
    pub(crate) time: Time,
    pub(crate) key: String,
    pub(crate) value: i64,
}

impl EventTime for Reading {
    fn event_time(&self) -> Time {
        self.time
    }
}

/// Per partition, readings whose times mostly increase, out of order by up to `jitter` ms,
/// with about one in 200 held back several seconds (late).
pub(crate) fn readings(seed: u64, partitions: usize, per_partition: usize, jitter: u64) -> Vec<Vec<Reading>> {
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..partitions)
        .map(|_| {
            let mut clock: u64 = 1_000_000 + rng.gen_range(0..1_000);
            (0..per_partition)
                .map(|_| {
                    clock += rng.gen_range(0..20);
                    let mut time = clock.saturating_sub(rng.gen_range(0..=jitter));
                    if rng.gen_ratio(1, 200) {
                        time = clock.saturating_sub(rng.gen_range(jitter * 3..jitter * 10));
                    }
                    Reading { time, key: format!("k{}", rng.gen_range(0..10)), value: rng.gen_range(-50..100) }
                })
                .collect()
        })
        .collect()
}

/// Produces `partitions[p]` to partition `p`, in order, keyed by the reading's key, with the
/// reading's time as the message timestamp.
pub(crate) fn produce_readings(brokers: &str, topic: &str, partitions: &[Vec<Reading>]) {
    let producer = producer(brokers);
    for (p, readings) in partitions.iter().enumerate() {
        for reading in readings {
            let payload = serde_json::to_vec(reading).unwrap();
            send(&producer, topic, p as i32, Some(reading.key.as_bytes()), Some(&payload), Some(reading.time as i64));
        }
    }
    flush(&producer);
}

/// Grows `topic` to `partitions` partitions.
pub(crate) fn add_partitions(brokers: &str, topic: &str, partitions: usize) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).create().expect("admin client");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = block_on(admin.create_partitions([&NewPartitions::new(topic, partitions)], &options)).unwrap();
    for result in results {
        result.expect("partitions added");
    }
}

/// Runs a future on this thread (the admin client completes its futures from its own thread).
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
    let mut context = std::task::Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let std::task::Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
        std::thread::park();
    }
}
