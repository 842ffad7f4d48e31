//! Backpressure against the real broker: with a slow sink, the source stops polling — records
//! read but not yet written stay under the flow-control bound, the client's prefetch queue
//! stays under its configured size, and most of the topic stays in Kafka until there is room.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tideline::prelude::*;
use tideline::runtime::{Cluster, execute};
use tideline::sink::{SinkHandle, SinkParallelism, SinkWriter};
use tideline::source::SourceConfig;
use tideline_connectors::kafka::{KafkaConfig, KafkaSource};

use crate::common::{Reading, brokers, create, flush, producer, send, unique, within};

/// Writes at most about 10 000 records per second: 1 ms per event time, 10 records each.
struct Slow {
    written: Arc<AtomicU64>,
}

impl SinkWriter<Reading> for Slow {
    fn write(&mut self, _time: Time, updates: &[(Reading, isize)]) -> tideline::Result<()> {
        std::thread::sleep(Duration::from_millis(1));
        self.written.fetch_add(updates.iter().map(|(_, r)| *r as u64).sum(), Ordering::Relaxed);
        Ok(())
    }

    fn advance(&mut self, _frontier: Option<Time>) -> tideline::Result<()> {
        Ok(())
    }
}

const RECORDS: u64 = 100_000;
const MAX_IN_FLIGHT: u64 = 2_000;
const BATCH: usize = 500;
const PREFETCH_KB: u64 = 512;

#[test]
fn with_a_slow_sink_the_source_stops_polling_and_memory_stays_bounded() {
    let _serial = crate::common::serial();
    let test = "with_a_slow_sink_the_source_stops_polling_and_memory_stays_bounded";
    let Some(brokers) = brokers(test) else { return };
    let topic = unique("backpressure");
    create(&brokers, &topic, 1);
    // About 12 MB of messages, far more than the prefetch queue.
    let producer = producer(&brokers);
    let padding = "x".repeat(60);
    for i in 0..RECORDS {
        let reading = Reading { time: 1_000_000 + i / 10, key: padding.clone(), value: i as i64 };
        send(&producer, &topic, 0, None, Some(&serde_json::to_vec(&reading).unwrap()), None);
    }
    flush(&producer);

    let config = KafkaConfig::new(&brokers)
        .set("queued.max.messages.kbytes", PREFETCH_KB.to_string())
        .set("max.partition.fetch.bytes", "262144")
        .set("statistics.interval.ms", "100");
    let source = KafkaSource::<Reading>::json(config).topic(&topic).record_event_time().build().unwrap();
    let metrics = tideline::runtime::metrics::SourceMetrics::new("readings");
    let m = Arc::clone(&metrics);
    let stats = Arc::clone(source.stats());
    let (read, written) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stop = Arc::new(AtomicBool::new(false));
    let (r, w, s) = (Arc::clone(&read), Arc::clone(&written), Arc::clone(&stop));
    let run = std::thread::spawn(move || {
        execute(&Cluster::threads(1), move |worker| {
            let (source, read, written, metrics) = (source.clone(), Arc::clone(&r), Arc::clone(&w), Arc::clone(&m));
            let id = worker.next_dataflow_index();
            worker.dataflow::<Time, _, _>(move |scope| {
                let config =
                    SourceConfig::new("readings").batch_size(BATCH).max_in_flight(MAX_IN_FLIGHT).metrics(metrics);
                source
                    .read(scope, config)
                    .data
                    .inspect(move |_| {
                        read.fetch_add(1, Ordering::Relaxed);
                    })
                    .sink_with(&SinkHandle::new("slow"), SinkParallelism::PerWorker, move |_, _| {
                        Some(Slow { written })
                    });
            });
            while !s.load(Ordering::Relaxed) {
                worker.step_or_park(Some(Duration::from_millis(1)));
            }
            worker.drop_dataflow(id);
        })
        .unwrap();
    });

    // For 3 seconds: records read but not yet written stay bounded.
    let started = Instant::now();
    let mut most_in_flight = 0;
    while started.elapsed() < Duration::from_secs(3) {
        // Written first, then read: an overestimate of what is in flight.
        let done = written.load(Ordering::Relaxed);
        let taken = read.load(Ordering::Relaxed);
        most_in_flight = most_in_flight.max(taken.saturating_sub(done));
        std::thread::sleep(Duration::from_millis(5));
    }
    let (taken, done) = (read.load(Ordering::Relaxed), written.load(Ordering::Relaxed));
    stop.store(true, Ordering::Relaxed);
    within(Duration::from_secs(30), move || run.join().unwrap());
    eprintln!(
        "{test}: read {taken}, written {done}, at most {most_in_flight} in flight, at most {} bytes prefetched",
        stats.max_prefetched_bytes()
    );
    assert_eq!(metrics.errors(), Vec::<String>::new());
    assert!(done > 10_000, "the sink made progress: {done}");
    assert!(taken < RECORDS / 2, "the source kept reading ahead of the slow sink: {taken} of {RECORDS}");
    // The engine's bound (records emitted since the watermark the sink has reached), plus a
    // batch and one event time's records.
    assert!(
        most_in_flight <= MAX_IN_FLIGHT + 2 * BATCH as u64 + 10,
        "{most_in_flight} records were read and not yet written"
    );
    // The client's prefetch queue stays near its configured size (librdkafka overshoots it by
    // the fetches in flight: 256 KB each here), far below the 12 MB in the topic.
    let prefetched = stats.max_prefetched_bytes();
    assert!(prefetched > 0, "statistics were reported");
    assert!(prefetched <= 2 * (PREFETCH_KB + 256) * 1024, "{prefetched} bytes prefetched");
}
