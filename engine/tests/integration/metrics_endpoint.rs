//! The `/metrics` endpoint during a real run: a source that gets its input over time (the test
//! releases it in two halves), scraped over HTTP mid-run and after the end, parsed with a
//! Prometheus text-format parser, and checked against numbers computed from the input.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tideline::prelude::*;
use tideline::runtime::metrics::{self, SourceMetrics, StateMetrics};
use tideline::runtime::{Cluster, execute};
use tideline::sink::{Collected, Sink, SinkHandle, SinkParallelism};
use tideline::source::{ReadContext, ReadStatus, SourceConfig, SourceReader, source};
use tideline::time::watermark::PartitionId;
use tideline::window::aggregate::Count;

const PARTITIONS: usize = 2;
const OUT_OF_ORDERNESS_MS: u64 = 1_000;

/// One input line: a record, or bytes that do not decode.
#[derive(Clone, Debug)]
enum Line {
    Record(Time, u32),
    Garbage,
}

/// Partition `p`'s lines: times rising by 100 ms, every 50th line a record 5 s behind the watermark,
/// every 40th line garbage.
fn input(p: usize) -> Vec<Line> {
    let mut max = 0;
    (0..400u64)
        .map(|i| {
            let time = 1_000_000 + i * 100 + p as u64 * 7;
            if i % 40 == 39 {
                Line::Garbage
            } else if i % 50 == 49 {
                Line::Record(max - 5_000, i as u32 % 5)
            } else {
                max = max.max(time);
                Line::Record(time, i as u32 % 5)
            }
        })
        .collect()
}

/// What the metrics must say after the first `lines` lines of partition `p`: records, late
/// records, dead letters, watermark (the bounded-out-of-orderness rule, computed here).
fn expected(p: usize, lines: usize) -> (u64, u64, u64, Time) {
    let (mut records, mut late, mut dead, mut max) = (0, 0, 0, None::<Time>);
    for line in &input(p)[..lines] {
        match line {
            Line::Garbage => dead += 1,
            Line::Record(time, _) => {
                records += 1;
                let watermark = max.map_or(0, |m| m.saturating_sub(OUT_OF_ORDERNESS_MS));
                if *time < watermark {
                    late += 1;
                } else {
                    max = Some(max.map_or(*time, |m| m.max(*time)));
                }
            }
        }
    }
    (records, late, dead, max.map_or(0, |m| m - OUT_OF_ORDERNESS_MS))
}

/// Reads its partitions' lines up to what the test has released, then waits for more.
struct Gated {
    partitions: Vec<(PartitionId, Vec<Line>, usize)>,
    release_all: Arc<AtomicBool>,
    started: bool,
}

impl SourceReader for Gated {
    type Item = Event<u32, i64>;

    fn poll(&mut self, ctx: &mut ReadContext<'_, Self::Item>) -> ReadStatus {
        if !self.started {
            self.partitions.iter().for_each(|(id, _, _)| ctx.add_partition(*id));
            self.started = true;
        }
        let all = self.release_all.load(Ordering::SeqCst);
        for (id, lines, next) in &mut self.partitions {
            let until = if all { lines.len() } else { lines.len() / 2 };
            while *next < until {
                match &lines[*next] {
                    Line::Record(time, key) => {
                        ctx.record(*id, *next as u64, *time, Event::new(*time, *key, 1));
                    }
                    Line::Garbage => ctx.dead_letter(DeadLetter {
                        source: "gated".into(),
                        partition: *id,
                        position: *next as u64,
                        key: None,
                        payload: b"not a record".to_vec(),
                        reason: "garbage".into(),
                    }),
                }
                *next += 1;
            }
            if all {
                ctx.finish_partition(*id);
            }
        }
        if all { ReadStatus::Done } else { ReadStatus::Waiting(Duration::from_millis(5)) }
    }
}

/// `GET /metrics`, parsed.
fn scrape(addr: SocketAddr) -> prometheus_parse::Scrape {
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").expect("an HTTP reply");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    prometheus_parse::Scrape::parse(BufReader::new(body.as_bytes()).lines()).expect("a valid exposition")
}

/// The value of `metric` with exactly these labels (among others).
fn value(scrape: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))?;
    match sample.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => Some(v),
        _ => None,
    }
}

/// Waits until `done()` or panics after 20 s.
fn wait_for(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn metrics_endpoint_reports_a_running_dataflow() {
    let server = metrics::serve("127.0.0.1:0").expect("serve metrics");
    let addr = server.local_addr();
    let source_metrics = SourceMetrics::new("endpoint-test-source");
    let state = StateMetrics::named("endpoint-test-window");
    let sink = SinkHandle::new("endpoint-test-sink");
    let collected = Collected::new();
    let release_all = Arc::new(AtomicBool::new(false));

    let run = {
        let (source_metrics, state, sink, collected, release_all) =
            (source_metrics.clone(), state.clone(), sink.clone(), collected.clone(), release_all.clone());
        std::thread::spawn(move || {
            execute(&Cluster::threads(2), move |worker| {
                let (state, sink, collected, release_all) =
                    (state.clone(), sink.clone(), collected.clone(), release_all.clone());
                let config = SourceConfig::new("endpoint-test-source")
                    .watermarks(WatermarkStrategy::bounded_out_of_orderness(Duration::from_millis(OUT_OF_ORDERNESS_MS)))
                    .metrics(source_metrics.clone());
                let probe = worker.dataflow::<Time, _, _>(|scope| {
                    let streams = source(scope, config, |setup| Gated {
                        partitions: (0..PARTITIONS)
                            .filter(|p| p % setup.peers() == setup.index())
                            .map(|p| (p as PartitionId, input(p), 0))
                            .collect(),
                        release_all,
                        started: false,
                    });
                    let counts = streams.data.tumbling(Duration::from_secs(5)).state_metrics(state).aggregate(Count);
                    let probe = tideline::timely::dataflow::operators::probe::Handle::new();
                    let counts = counts.probe_with(&probe);
                    counts.sink_with(&sink, SinkParallelism::PerWorker, move |_, _| Some(collected));
                    probe
                });
                while !probe.done() {
                    worker.step_or_park(Some(Duration::from_millis(5)));
                }
            })
            .expect("the dataflow runs")
        })
    };

    // Mid-run: the first half of every partition has been read, and the source waits.
    let half: BTreeMap<usize, (u64, u64, u64, Time)> =
        (0..PARTITIONS).map(|p| (p, expected(p, input(p).len() / 2))).collect();
    let half_records: u64 = half.values().map(|e| e.0).sum();
    let partition_watermarks = || source_metrics.partitions().values().map(|s| s.watermark).collect::<Vec<_>>();
    wait_for("the first half to be reported", || {
        source_metrics.records() == half_records
            && partition_watermarks() == half.values().map(|e| e.3).collect::<Vec<_>>()
    });
    let mid = scrape(addr);
    let src = ("source", "endpoint-test-source");
    for (p, (records, late, _, watermark)) in &half {
        let partition = ("partition", &*p.to_string());
        assert_eq!(value(&mid, "tideline_source_records_total", &[src, partition]), Some(*records as f64));
        assert_eq!(
            value(&mid, "tideline_source_late_records_total", &[src, partition, ("policy", "behind_watermark")]),
            Some(*late as f64)
        );
        assert_eq!(value(&mid, "tideline_source_watermark_ms", &[src, partition]), Some(*watermark as f64));
        assert_eq!(value(&mid, "tideline_source_idle", &[src, partition]), Some(0.0));
    }
    let half_dead: u64 = half.values().map(|e| e.2).sum();
    assert_eq!(value(&mid, "tideline_source_dead_letters_total", &[src]), Some(half_dead as f64));
    // Windows are open: the window operator holds state on the workers.
    let open: f64 = (0..2)
        .filter_map(|w| {
            value(
                &mid,
                "tideline_operator_state_entries",
                &[("operator", "endpoint-test-window"), ("worker", &w.to_string())],
            )
        })
        .sum();
    assert!(open > 0.0, "windows are open mid-run");
    // The watermark is far behind the wall clock (event times are in 1970).
    let lag = value(&mid, "tideline_watermark_lag_ms", &[src]).expect("a watermark lag");
    assert!(lag > 1e12, "lag {lag}");

    // The rest: the source finishes, every window closes, the dataflow completes.
    release_all.store(true, Ordering::SeqCst);
    run.join().expect("the run thread");
    let end = scrape(addr);
    let full: BTreeMap<usize, (u64, u64, u64, Time)> =
        (0..PARTITIONS).map(|p| (p, expected(p, input(p).len()))).collect();
    for (p, (records, late, _, watermark)) in &full {
        let partition = ("partition", &*p.to_string());
        assert_eq!(value(&end, "tideline_source_records_total", &[src, partition]), Some(*records as f64));
        assert_eq!(
            value(&end, "tideline_source_late_records_total", &[src, partition, ("policy", "behind_watermark")]),
            Some(*late as f64)
        );
        assert!(*late > 0);
        assert_eq!(value(&end, "tideline_source_watermark_ms", &[src, partition]), Some(*watermark as f64));
    }
    let dead: u64 = full.values().map(|e| e.2).sum();
    assert_eq!(value(&end, "tideline_source_dead_letters_total", &[src]), Some(dead as f64));
    for worker in ["0", "1"] {
        assert_eq!(
            value(&end, "tideline_operator_state_entries", &[("operator", "endpoint-test-window"), ("worker", worker)]),
            Some(0.0),
            "state of worker {worker} is released once every window has closed"
        );
    }
    let written = collected.changelog().len();
    assert!(written > 0);
    assert_eq!(value(&end, "tideline_sink_records_total", &[("sink", "endpoint-test-sink")]), Some(written as f64));
    assert_eq!(sink.records_written(), written as u64);

    // Dropped metrics leave the exposition.
    drop((source_metrics, state, sink));
    let after = scrape(addr);
    assert!(after.samples.iter().all(|s| !s.labels.values().any(|v| v.starts_with("endpoint-test"))));
    server.shutdown();
    wait_for("the endpoint to stop", || TcpStream::connect(addr).is_err());
}
