//! Injected faults, with librdkafka's mock cluster (always runs, no broker needed): the broker
//! going down and up mid-run, failing produce and fetch requests, and a group coordinator that
//! refuses commits. Nothing is lost — every input record is in the output — and the committed
//! offsets reach the end.
//!
//! Where duplicates are allowed: the source never reads a record twice within a run (a
//! restart re-reads what was not committed; see `at_least_once`), and produce requests that
//! fail with an error are not written, so with failing requests every record is written
//! exactly once. When the broker goes down, produce requests whose acknowledgement was lost
//! are sent again; a real broker drops such duplicates for an idempotent producer, but the
//! mock broker checks producer sequence numbers only for transactional producers, so there
//! each record is written once or, if its batch was in flight, twice — what at-least-once
//! allows.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use tideline::prelude::*;
use tideline::runtime::metrics::SourceMetrics;
use tideline::runtime::{Cluster, execute};
use tideline::sink::SinkHandle;
use tideline::source::SourceConfig;
use tideline_connectors::kafka::{KafkaConfig, KafkaSink, KafkaSinkStats, KafkaSource, KafkaSourceStats};

use crate::common::{Reading, committed, flush, producer, read_all, send, unique};

const PARTITIONS: i32 = 3;
const PER_PARTITION: i64 = 2_000;

/// A mock cluster with an input topic holding unique readings, increasing in time per
/// partition, and an empty output topic.
fn setup(brokers: i32) -> (MockCluster<'static, rdkafka::producer::DefaultProducerContext>, String, String) {
    let mock = MockCluster::new(brokers).expect("mock cluster");
    let (input, output) = (unique("fault-in"), unique("fault-out"));
    mock.create_topic(&input, PARTITIONS, 1).unwrap();
    mock.create_topic(&output, PARTITIONS, 1).unwrap();
    let producer = producer(&mock.bootstrap_servers());
    for p in 0..PARTITIONS {
        for i in 0..PER_PARTITION {
            let reading =
                Reading { time: 1_000 + i as u64, key: format!("k{}", i % 7), value: p as i64 * 1_000_000 + i };
            let payload = serde_json::to_vec(&reading).unwrap();
            send(&producer, &input, p, Some(reading.key.as_bytes()), Some(&payload), None);
        }
    }
    flush(&producer);
    (mock, input, output)
}

struct Run {
    done: mpsc::Receiver<()>,
    handle: SinkHandle,
    source: Arc<KafkaSourceStats>,
    sink: Arc<KafkaSinkStats>,
    /// The engine's view of the source: errors that stopped a reader.
    metrics: Arc<SourceMetrics>,
    group: String,
}

/// Starts the pipeline input → output (a changelog keyed by the reading's key) on two workers,
/// bounded, in the background; the test thread keeps the mock cluster and injects faults.
fn start(bootstrap: &str, input: &str, output: &str) -> Run {
    let group = unique("fault-group");
    let config = KafkaConfig::new(bootstrap);
    let source = KafkaSource::<Reading>::json(config.clone())
        .topic(input)
        .group_id(&group)
        .record_event_time()
        .bounded()
        .commit_interval(Duration::from_millis(20))
        .request_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let sink = KafkaSink::<Reading>::builder(config, output).key(|r: &Reading| r.key.clone()).build().unwrap();
    let (source_stats, sink_stats) = (Arc::clone(source.stats()), Arc::clone(sink.stats()));
    let handle = SinkHandle::new("output");
    let metrics = SourceMetrics::new("input");
    let (h, m) = (handle.clone(), Arc::clone(&metrics));
    let (finished, done) = mpsc::channel();
    std::thread::spawn(move || {
        execute(&Cluster::threads(2), move |worker| {
            let (source, sink, handle, metrics) = (source.clone(), sink.clone(), h.clone(), Arc::clone(&m));
            worker.dataflow::<Time, _, _>(move |scope| {
                let config = SourceConfig::new("input").batch_size(500).metrics(metrics);
                sink.write(source.read(scope, config).data, &handle);
            });
        })
        .unwrap();
        let _ = finished.send(());
    });
    Run { done, handle, source: source_stats, sink: sink_stats, metrics, group }
}

/// Waits for the run, then checks that the output holds every input record exactly once (at
/// most twice with `lost_acks`: see the module documentation) and the committed offsets are at
/// the end.
fn check(
    mock: &MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    run: Run,
    input: &str,
    output: &str,
    lost_acks: bool,
) {
    run.done.recv_timeout(Duration::from_secs(120)).expect("the pipeline completes");
    run.handle.check().unwrap();
    // A reader that stopped would leave its partitions unread: that is a failure to report,
    // not a run to check the output of.
    assert_eq!(run.metrics.errors(), Vec::<String>::new(), "a reader stopped: {:?}", run.source.recent_errors());
    let bootstrap = mock.bootstrap_servers();
    let mut seen: BTreeMap<i64, i64> = BTreeMap::new();
    for message in read_all(&bootstrap, output, PARTITIONS) {
        let value = message.json();
        let reading: Reading = serde_json::from_value(value["row"].clone()).unwrap();
        *seen.entry(reading.value).or_default() += value["diff"].as_i64().unwrap();
    }
    let missing: Vec<i64> = (0..PARTITIONS as i64)
        .flat_map(|p| (0..PER_PARTITION).map(move |i| p * 1_000_000 + i))
        .filter(|v| !seen.contains_key(v))
        .take(10)
        .collect();
    let diagnosis = format!(
        "source errors: {:?}; commit failures: {}; sink produced {}",
        run.source.recent_errors(),
        run.source.commit_failures(),
        run.sink.produced()
    );
    assert!(missing.is_empty(), "lost: {missing:?}; {diagnosis}");
    let most = if lost_acks { 2 } else { 1 };
    let repeated: Vec<(&i64, &i64)> = seen.iter().filter(|(_, n)| **n < 1 || **n > most).take(10).collect();
    assert!(repeated.is_empty(), "written a wrong number of times: {repeated:?}");
    assert_eq!(seen.len() as i64, PARTITIONS as i64 * PER_PARTITION);
    let duplicates = seen.values().filter(|n| **n > 1).count();
    assert_eq!(
        committed(&bootstrap, &run.group, input, PARTITIONS),
        vec![Some(PER_PARTITION); PARTITIONS as usize],
        "{diagnosis}"
    );
    eprintln!(
        "fault run: {duplicates} duplicates, {} source errors ({} failed commits), {} messages produced, {} \
         flushes; recent: {:?}",
        run.source.errors(),
        run.source.commit_failures(),
        run.sink.produced(),
        run.sink.flushes(),
        run.source.recent_errors().last()
    );
}

#[test]
fn the_broker_going_down_and_up_mid_run_loses_nothing() {
    let _serial = crate::common::serial();
    let (mock, input, output) = setup(1);
    // Every request takes 10 ms: the run lasts long enough to be cut in the middle.
    mock.broker_round_trip_time(1, Duration::from_millis(10)).unwrap();
    let run = start(&mock.bootstrap_servers(), &input, &output);
    let deadline = Instant::now() + Duration::from_secs(60);
    while run.sink.produced() < 500 {
        assert!(Instant::now() < deadline, "the pipeline did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    let before = run.sink.produced();
    mock.broker_down(1).unwrap();
    // The outage is reported while it lasts (issue 13: it was reported only afterwards).
    let down = Instant::now();
    let mut reported = None;
    while down.elapsed() < Duration::from_millis(1_500) {
        reported = reported.or(run.source.outage());
        std::thread::sleep(Duration::from_millis(20));
    }
    mock.broker_up(1).unwrap();
    let (_, reason) = reported.expect("the outage is visible in the source's stats while it lasts");
    assert!(reason.contains("down"), "{reason}");
    assert!(before < (PARTITIONS as i64 * PER_PARTITION) as u64, "the outage was mid-run ({before} written)");
    check(&mock, run, &input, &output, true);
}

#[test]
fn failing_produce_requests_are_retried_without_duplicates() {
    let _serial = crate::common::serial();
    let (mock, input, output) = setup(3);
    use RDKafkaRespErr::*;
    let errors = [
        RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
        RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
        RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE,
    ];
    mock.request_errors(RDKafkaApiKey::Produce, &errors.repeat(5));
    let run = start(&mock.bootstrap_servers(), &input, &output);
    check(&mock, run, &input, &output, false);
}

#[test]
fn failing_fetch_requests_are_retried_and_nothing_is_lost() {
    let _serial = crate::common::serial();
    let (mock, input, output) = setup(3);
    use RDKafkaRespErr::*;
    let errors = [
        RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
        RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART,
        RD_KAFKA_RESP_ERR_KAFKA_STORAGE_ERROR,
    ];
    mock.request_errors(RDKafkaApiKey::Fetch, &errors.repeat(5));
    let run = start(&mock.bootstrap_servers(), &input, &output);
    check(&mock, run, &input, &output, false);
}

#[test]
fn a_coordinator_refusing_commits_delays_them_and_the_offsets_still_reach_the_end() {
    let _serial = crate::common::serial();
    let (mock, input, output) = setup(3);
    use RDKafkaRespErr::*;
    let errors = [
        RD_KAFKA_RESP_ERR_NOT_COORDINATOR,
        RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE,
        RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS,
        RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
    ];
    // One refusal "as from a non-member" among the others: a source takes a group that
    // refuses three commits in a row that way as one with active members and stops (see
    // `groups`), and with two workers' commits interleaved, refusals spread over the list
    // could fall three in a row on one worker. Two cannot.
    let mut errors = errors.repeat(4);
    errors.insert(6, RD_KAFKA_RESP_ERR_UNKNOWN_MEMBER_ID);
    errors.insert(13, RD_KAFKA_RESP_ERR_UNKNOWN_MEMBER_ID);
    mock.request_errors(RDKafkaApiKey::OffsetCommit, &errors);
    let run = start(&mock.bootstrap_servers(), &input, &output);
    let source = Arc::clone(&run.source);
    check(&mock, run, &input, &output, false);
    assert!(
        source.commit_failures() > 0,
        "the coordinator's refusals reached the source: {:?}",
        source.recent_errors()
    );
}
