//! End to end against the real broker: a keyed, out-of-order stream in a 3-partition topic,
//! windowed by a Tideline pipeline on 2 workers (bounded reading), written to another topic.
//! The output equals the file-based run of the same pipeline (each partition's records in a
//! JSON Lines file, read by the file source on 2 workers), and the group's committed offsets
//! end at the input's end.

use std::sync::Arc;
use std::time::Duration;

use tideline::differential_dataflow::consolidation::consolidate;
use tideline::prelude::*;
use tideline::runtime::{Cluster, execute};
use tideline::sink::{Collected, SinkHandle};
use tideline::source::SourceConfig;
use tideline::window::aggregate::{AllStats, Stats};
use tideline_connectors::file::FileSource;
use tideline_connectors::kafka::{KafkaConfig, KafkaSink, KafkaSource};

use crate::common::{
    Reading, brokers, committed, create, end_offsets, produce_readings, read_all, readings, unique, within,
};

pub(crate) type Row = WindowResult<String, Stats>;

/// The pipeline under test: 2-second tumbling windows of count, sum, min and max per key, and
/// the readings late for their window.
pub(crate) fn windowed<'s>(
    data: VecCollection<'s, Time, Reading>,
) -> (VecCollection<'s, Time, Row>, VecCollection<'s, Time, Reading>) {
    let (rows, late) =
        data.map(|r| Event::new(r.time, r.key, r.value)).tumbling(Duration::from_secs(2)).aggregate_with_late(AllStats);
    (rows, late.map(|e| Reading { time: e.time, key: e.key, value: e.value }))
}

pub(crate) fn source_config() -> SourceConfig {
    SourceConfig::new("readings").watermarks(WatermarkStrategy::bounded_out_of_orderness(Duration::from_secs(1)))
}

/// The same pipeline over the same records written to files, one JSON Lines file per
/// partition, read by the file source on 2 workers: the reference. (The file source keeps a
/// watermark per file, as the Kafka source does per partition.)
pub(crate) fn file_based(name: &str, partitions: &[Vec<Reading>]) -> (Vec<(Row, Time, isize)>, Vec<Reading>) {
    let dir = std::env::temp_dir().join(unique(name));
    std::fs::create_dir_all(&dir).unwrap();
    let paths: Vec<std::path::PathBuf> = partitions
        .iter()
        .enumerate()
        .map(|(p, records)| {
            let path = dir.join(format!("partition-{p}.jsonl"));
            let lines: Vec<String> = records.iter().map(|r| serde_json::to_string(r).unwrap()).collect();
            std::fs::write(&path, lines.join("\n") + "\n").unwrap();
            path
        })
        .collect();
    let source = FileSource::<Reading>::json_lines(&paths).build().unwrap();
    let (results, late) = (Collected::new(), Collected::new());
    let (r, l) = (results.clone(), late.clone());
    execute(&Cluster::threads(2), move |worker| {
        let (source, r, l) = (source.clone(), r.clone(), l.clone());
        worker.dataflow::<Time, _, _>(move |scope| {
            let streams = source.read(scope, source_config());
            let (rows, late) = windowed(streams.data);
            rows.collect_into(&r);
            late.collect_into(&l);
        });
    })
    .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    (results.changelog(), late.contents().into_iter().map(|(r, _)| r).collect())
}

/// A changelog topic's messages as `(row, time, diff)`, consolidated and sorted like
/// `Collected::changelog`.
pub(crate) fn changelog(messages: &[crate::common::Stored]) -> Vec<(Row, Time, isize)> {
    let mut updates: Vec<((Time, Row), isize)> = messages
        .iter()
        .map(|m| {
            let value = m.json();
            let row: Row = serde_json::from_value(value["row"].clone()).unwrap();
            let diff = value["diff"].as_i64().unwrap() as isize;
            assert_eq!(value["op"], if diff > 0 { "insert" } else { "delete" });
            assert_eq!(m.key_text(), row.key, "messages are keyed by the row's key");
            ((value["time"].as_u64().unwrap(), row), diff)
        })
        .collect();
    consolidate(&mut updates);
    updates.into_iter().map(|((t, r), d)| (r, t, d)).collect()
}

#[test]
fn windowed_counts_from_kafka_to_kafka_equal_the_file_based_run() {
    let _serial = crate::common::serial();
    let Some(brokers) = brokers("windowed_counts_from_kafka_to_kafka_equal_the_file_based_run") else { return };
    let (input, output, group) = (unique("e2e-in"), unique("e2e-out"), unique("e2e-group"));
    create(&brokers, &input, 3);
    create(&brokers, &output, 2);
    let partitions = readings(7, 3, 3_000, 500);
    produce_readings(&brokers, &input, &partitions);
    let (expected, expected_late) = file_based("e2e-files", &partitions);
    assert!(!expected_late.is_empty() && expected.len() > 100, "the input has late records and many windows");

    let config = KafkaConfig::new(&brokers);
    let source = KafkaSource::<Reading>::json(config.clone())
        .topic(&input)
        .group_id(&group)
        .record_event_time()
        .bounded()
        .commit_interval(Duration::from_millis(50))
        .build()
        .unwrap();
    let sink = KafkaSink::<Row>::builder(config, &output).key(|r: &Row| r.key.clone()).build().unwrap();
    let handle = SinkHandle::new("windows");
    let late = Collected::new();
    let (h, l, stats) = (handle.clone(), late.clone(), Arc::clone(source.stats()));
    let metrics = tideline::runtime::metrics::SourceMetrics::new("readings");
    let m = Arc::clone(&metrics);
    within(Duration::from_secs(120), move || {
        execute(&Cluster::threads(2), move |worker| {
            let (source, sink, handle, late, m) = (source.clone(), sink.clone(), h.clone(), l.clone(), Arc::clone(&m));
            worker.dataflow::<Time, _, _>(move |scope| {
                let streams = source.read(scope, source_config().metrics(Arc::clone(&m)));
                let (rows, late_readings) = windowed(streams.data);
                sink.write(rows, &handle);
                late_readings.collect_into(&late);
            });
        })
        .unwrap();
    });
    handle.check().unwrap();
    assert_eq!(metrics.errors(), Vec::<String>::new());
    assert_eq!(metrics.totals().records, 9_000);

    assert_eq!(changelog(&read_all(&brokers, &output, 2)), expected, "the Kafka run's output");
    let mut late: Vec<Reading> = late.contents().into_iter().map(|(r, _)| r).collect();
    let mut expected_late = expected_late;
    late.sort();
    expected_late.sort();
    assert_eq!(late, expected_late, "the late records");
    // Both workers read: the 3 partitions are spread over them.
    let workers: std::collections::BTreeSet<usize> = stats.assignment().values().copied().collect();
    assert_eq!(workers.len(), 2, "{:?}", stats.assignment());
    // At the end of the bounded run, the committed offsets are the topic's end.
    let ends = end_offsets(&brokers, &input, 3);
    assert_eq!(ends, vec![3_000; 3]);
    assert_eq!(committed(&brokers, &group, &input, 3), ends.iter().map(|e| Some(*e)).collect::<Vec<_>>());
    // The metrics say so too: no lag left, the committed offsets at the ends.
    let partitions = |value: i64| (0..3).map(|p| (input.clone(), p, value)).collect::<Vec<_>>();
    assert_eq!(stats.consumer_lag(), partitions(0), "lag when the bounded read finished");
    assert_eq!(stats.committed_offsets(), partitions(3_000));
    // And what Prometheus scrapes from the metrics endpoint (the source registers its stats).
    let text = tideline::runtime::metrics::encode_text();
    for p in 0..3 {
        let lag = format!("tideline_kafka_consumer_lag{{topic=\"{input}\",partition=\"{p}\"}} 0\n");
        let committed = format!("tideline_kafka_committed_offset{{topic=\"{input}\",partition=\"{p}\"}} 3000\n");
        assert!(text.contains(&lag) && text.contains(&committed), "{lag}{committed} in\n{text}");
    }
}
