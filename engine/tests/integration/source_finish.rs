//! A reader's `finish`: after it is done, it learns when everything derived from its input
//! is durable (the safe time reaches the end of time) on *every* worker — what an
//! at-least-once source needs to commit its final positions — and it learns when a sink
//! failed instead, so it never waits forever.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tideline::prelude::*;
use tideline::runtime::{Cluster, execute};
use tideline::sink::{Collected, SinkHandle, SinkParallelism, SinkWriter};
use tideline::source::{FinishContext, ReadContext, ReadStatus, SourceConfig, SourceReader, source};
use tideline::time::watermark::PartitionId;

/// Reads `records` of one partition, then waits in `finish` for the safe time to reach the end
/// of time (or a sink to fail), and logs what it saw there.
struct Finishing {
    index: usize,
    partition: Option<(PartitionId, Vec<Time>)>,
    seen: Arc<Mutex<Vec<(usize, Option<Time>, bool)>>>,
}

impl SourceReader for Finishing {
    type Item = Event<u32, i64>;

    fn poll(&mut self, ctx: &mut ReadContext<'_, Self::Item>) -> ReadStatus {
        if let Some((id, times)) = self.partition.take() {
            ctx.add_partition(id);
            for (position, time) in times.into_iter().enumerate() {
                ctx.record(id, position as u64, time, Event::new(time, id as u32, 1));
            }
            ctx.finish_partition(id);
        }
        ReadStatus::Done
    }

    fn finish(&mut self, ctx: &mut FinishContext<'_>) -> ReadStatus {
        let safe = ctx.safe_time();
        if safe == Some(Time::MAX) || ctx.sinks_failed() {
            self.seen.lock().unwrap().push((self.index, safe, ctx.sinks_failed()));
            ReadStatus::Done
        } else {
            ReadStatus::Waiting(Duration::from_millis(1))
        }
    }
}

/// A writer that fails on its first write (on worker 0 only).
struct Failing;

impl SinkWriter<Event<u32, i64>> for Failing {
    fn write(&mut self, _time: Time, _updates: &[(Event<u32, i64>, isize)]) -> tideline::Result<()> {
        Err(tideline::Error::io("failing.out", std::io::Error::from(std::io::ErrorKind::StorageFull)))
    }

    fn advance(&mut self, _frontier: Option<Time>) -> tideline::Result<()> {
        Ok(())
    }
}

/// A writer that takes its time to flush the end of its input (on workers other than 0): the
/// other workers' sinks complete first.
struct SlowToComplete {
    index: usize,
}

impl SinkWriter<Event<u32, i64>> for SlowToComplete {
    fn write(&mut self, _time: Time, _updates: &[(Event<u32, i64>, isize)]) -> tideline::Result<()> {
        Ok(())
    }

    fn advance(&mut self, frontier: Option<Time>) -> tideline::Result<()> {
        if frontier.is_none() && self.index != 0 {
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

/// Runs the dataflow on `workers` threads, with a time limit (a reader that waits forever
/// fails the test instead of hanging it).
fn run(workers: usize, failing_sink: bool) -> Vec<(usize, Option<Time>, bool)> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        let result = execute(&Cluster::threads(workers), move |worker| {
            let log = Arc::clone(&log);
            worker.dataflow::<Time, _, _>(|scope| {
                let streams = source(scope, SourceConfig::new("finishing"), |setup| Finishing {
                    index: setup.index(),
                    // Worker i reads a partition of 100 × (i + 1) records: workers finish at
                    // different moments.
                    partition: Some((
                        setup.index() as PartitionId,
                        (0..100 * (setup.index() as u64 + 1)).map(|t| t * 10).collect(),
                    )),
                    seen: log,
                });
                let windows = streams
                    .data
                    .clone()
                    .tumbling(Duration::from_millis(100))
                    .aggregate(tideline::window::aggregate::Count);
                windows.collect_into(&Collected::new());
                streams.data.clone().sink_with(&SinkHandle::new("slow"), SinkParallelism::PerWorker, |index, _| {
                    Some(SlowToComplete { index })
                });
                if failing_sink {
                    streams.data.sink_with(&SinkHandle::new("failing"), SinkParallelism::PerWorker, |index, _| {
                        (index == 0).then_some(Failing)
                    });
                }
            });
        });
        let _ = done.send(result.is_ok());
    });
    let ok = finished.recv_timeout(Duration::from_secs(30)).expect("the dataflow did not complete within 30 s");
    assert!(ok, "the dataflow failed");
    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    seen
}

#[test]
fn every_worker_sees_the_whole_output_durable_before_the_dataflow_completes() {
    // Worker 0's sinks complete first (the others are slow to flush their last output), and
    // which worker's sink completes first is a race anyway: repeat.
    for round in 0..5 {
        for workers in [1, 2, 4] {
            let seen = run(workers, false);
            let expected: Vec<_> = (0..workers).map(|i| (i, Some(Time::MAX), false)).collect();
            assert_eq!(seen, expected, "round {round}, {workers} workers");
        }
    }
}

#[test]
fn a_failed_sink_stops_the_wait_and_the_safe_time_stays_below_the_end() {
    for workers in [1, 3] {
        let seen = run(workers, true);
        assert_eq!(seen.len(), workers, "every worker finished");
        for (index, safe, failed) in seen {
            assert!(failed, "worker {index} learnt that the sink failed");
            assert!(safe.is_some_and(|s| s < Time::MAX), "worker {index}: safe time {safe:?}");
        }
    }
}
