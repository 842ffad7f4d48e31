//! Per-partition watermarks and idle partitions against the real broker: a silent partition
//! holds the watermark until the idle timeout, then stops holding it; when it sends again it
//! holds it again (what it sends behind the published watermark arrives at it); silent again, it
//! stops holding it again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tideline::differential_dataflow::AsCollection;
use tideline::prelude::*;
use tideline::runtime::{Cluster, execute};
use tideline::sink::Collected;
use tideline::source::SourceConfig;
use tideline::timely::dataflow::operators::core::Filter;
use tideline::timely::dataflow::operators::probe::Handle;
use tideline_connectors::kafka::{KafkaConfig, KafkaSource};

use crate::common::{Reading, brokers, create, flush, producer, send, unique, within};

const IDLE: Duration = Duration::from_millis(500);

#[test]
fn an_idle_partition_stops_holding_the_watermark_and_holds_it_again_when_it_sends() {
    let _serial = crate::common::serial();
    let test = "an_idle_partition_stops_holding_the_watermark_and_holds_it_again_when_it_sends";
    let Some(brokers) = brokers(test) else { return };
    let topic = unique("idle");
    create(&brokers, &topic, 2);
    let source = KafkaSource::<Reading>::json(KafkaConfig::new(&brokers))
        .topic(&topic)
        .record_event_time()
        .poll_interval(Duration::from_millis(2))
        .build()
        .unwrap();

    // The dataflow runs on one worker that samples the watermark (the data's frontier).
    let samples: Arc<Mutex<Vec<(Instant, Option<Time>)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let late = Collected::new();
    let first_read = Arc::new(AtomicBool::new(false));
    let (s, st, l, f) = (Arc::clone(&samples), Arc::clone(&stop), late.clone(), Arc::clone(&first_read));
    let run = std::thread::spawn(move || {
        execute(&Cluster::threads(1), move |worker| {
            let probe = Handle::new();
            let (source, late, first_read) = (source.clone(), l.clone(), Arc::clone(&f));
            let id = worker.next_dataflow_index();
            worker.dataflow::<Time, _, _>(|scope| {
                let config =
                    SourceConfig::new("ticks").watermarks(WatermarkStrategy::monotonic().with_idle_timeout(IDLE));
                let streams = source.read(scope, config);
                // Records behind the watermark arrive at it, not at their own time.
                streams
                    .data
                    .clone()
                    .inner
                    .filter(|(r, at, _)| r.time != *at)
                    .as_collection()
                    .map(|r| r.time)
                    .collect_into(&late);
                streams
                    .data
                    .inspect(move |(r, _, _)| {
                        if r.time == 100 {
                            first_read.store(true, Ordering::Relaxed);
                        }
                    })
                    .probe_with(&probe);
            });
            while !st.load(Ordering::Relaxed) {
                worker.step_or_park(Some(Duration::from_millis(1)));
                s.lock().unwrap().push((Instant::now(), probe.with_frontier(|f| f.first().copied())));
            }
            worker.drop_dataflow(id);
        })
        .unwrap();
    });

    // The script, in real time: partition 1 sends t = 100 once and falls silent; once that is
    // read (time 0 of the script), partition 0 sends t = 1000·i every 20 ms throughout. From
    // 2.0 s to 3.5 s partition 1 sends t = 200 every 20 ms (behind the watermark by then:
    // late), then is silent again. (Partition 0 starts only after partition 1's record has
    // been read: if the consumer fetched partition 0's records first, partition 1 — silent
    // since it was assigned — could be idle already, and its t = 100 rightly late.)
    let producer = producer(&brokers);
    let reading = |time: Time| serde_json::to_vec(&Reading { time, key: "k".into(), value: 0 }).unwrap();
    send(&producer, &topic, 1, None, Some(&reading(100)), None);
    flush(&producer);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !first_read.load(Ordering::Relaxed) {
        assert!(Instant::now() < deadline, "partition 1's first record was not read");
        std::thread::sleep(Duration::from_millis(1));
    }
    let start = Instant::now();
    let mut sent0: Vec<(Instant, Time)> = Vec::new();
    let mut i = 0;
    while start.elapsed() < Duration::from_millis(5_500) {
        i += 1;
        send(&producer, &topic, 0, None, Some(&reading(1_000 * i)), None);
        let at = start.elapsed();
        if at >= Duration::from_millis(2_000) && at < Duration::from_millis(3_500) {
            send(&producer, &topic, 1, None, Some(&reading(200)), None);
        }
        producer.poll(Duration::ZERO);
        sent0.push((Instant::now(), 1_000 * i));
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    within(Duration::from_secs(30), move || run.join().unwrap());

    let samples = samples.lock().unwrap().clone();
    let window = |from: u64, to: u64| -> Vec<Time> {
        samples
            .iter()
            .filter(|(at, _)| *at >= start + Duration::from_millis(from) && *at < start + Duration::from_millis(to))
            .filter_map(|(_, f)| *f)
            .collect()
    };
    let max = |v: &[Time]| v.iter().copied().max().unwrap_or(0);
    let min = |v: &[Time]| v.iter().copied().min().unwrap_or(Time::MAX);
    let sent_before = |ms: u64| {
        sent0.iter().filter(|(at, _)| *at < start + Duration::from_millis(ms)).map(|(_, t)| *t).max().unwrap()
    };
    // Silent for less than the idle timeout: partition 1 holds the watermark at its t = 100.
    let early = window(0, 300);
    assert!(max(&early) <= 100, "the watermark passed partition 1's 100 before the idle timeout: {}", max(&early));
    // Idle: the watermark follows partition 0 alone.
    let idle = window(1_500, 2_000);
    assert!(
        max(&idle) >= sent_before(1_300).max(10_000),
        "the watermark ({}) did not follow partition 0 ({}) while partition 1 was idle",
        max(&idle),
        sent_before(1_300)
    );
    // Back: partition 1 holds the watermark again where it was when it returned, although
    // partition 0 moves on by about 50 000 per second.
    let back = window(2_500, 3_500);
    assert!(!back.is_empty());
    assert!(
        max(&back) - min(&back) <= 3_000,
        "the watermark moved from {} to {} while partition 1 was back",
        min(&back),
        max(&back)
    );
    let p0: Vec<Time> = sent0
        .iter()
        .filter(|(at, _)| *at >= start + Duration::from_millis(2_500) && *at < start + Duration::from_millis(3_500))
        .map(|(_, t)| *t)
        .collect();
    assert!(max(&p0) - min(&p0) >= 20_000, "partition 0 moved on meanwhile: {} to {}", min(&p0), max(&p0));
    // What it sent behind the published watermark arrives at it, not lost.
    let late = late.contents();
    assert!(matches!(late.as_slice(), [(200, n)] if *n >= 10), "late: {late:?}");
    // Silent again: after the idle timeout the watermark follows partition 0 again.
    let again = window(4_500, 5_500);
    assert!(
        max(&again) >= sent_before(4_300).max(max(&back) + 20_000),
        "the watermark stayed at {} after partition 1 fell silent again",
        max(&again)
    );
}
