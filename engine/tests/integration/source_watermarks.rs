//! Per-partition watermarks and idle partitions: a silent partition holds the source's
//! watermark back until the idle timeout, then stops doing so; when it sends again it holds
//! it again, and what it sends behind the published watermark is behind it (it arrives at the
//! watermark). Also across workers:
//! a worker whose only partition is idle follows its peers.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tideline::differential_dataflow::AsCollection;
use tideline::prelude::*;
use tideline::runtime::{Cluster, execute};
use tideline::sink::Collected;
use tideline::source::{ReadContext, ReadStatus, SourceConfig, SourceReader, source};
use tideline::time::watermark::PartitionId;
use tideline::timely::dataflow::operators::core::Filter;
use tideline::timely::dataflow::operators::probe::Handle;

#[derive(Clone, Debug)]
enum Step {
    /// A record at this event time.
    Record(Time),
    /// Silence for this long (processing time).
    Pause(Duration),
}

/// A reader playing scripts, one per partition, in real time, logging when each record goes.
struct Scripted {
    partitions: Vec<(PartitionId, VecDeque<Step>, Option<Instant>)>,
    started: bool,
    position: u64,
    log: Arc<Mutex<Vec<(Instant, Time)>>>,
}

impl SourceReader for Scripted {
    type Item = (Time, PartitionId);

    fn poll(&mut self, ctx: &mut ReadContext<'_, Self::Item>) -> ReadStatus {
        if !self.started {
            for (id, _, _) in &self.partitions {
                ctx.add_partition(*id);
            }
            self.started = true;
        }
        let now = Instant::now();
        for (id, steps, paused_until) in &mut self.partitions {
            if paused_until.is_some_and(|until| now < until) {
                continue;
            }
            *paused_until = None;
            // One record per poll and partition, so time passes between records.
            match steps.pop_front() {
                Some(Step::Record(time)) => {
                    self.position += 1;
                    ctx.record(*id, self.position, time, (time, *id));
                    self.log.lock().unwrap().push((now, time));
                }
                Some(Step::Pause(d)) => *paused_until = Some(now + d),
                None => {}
            }
            if steps.is_empty() && paused_until.is_none() {
                ctx.finish_partition(*id);
            }
        }
        if self.partitions.iter().all(|(_, steps, paused)| steps.is_empty() && paused.is_none()) {
            ReadStatus::Done
        } else {
            ReadStatus::Waiting(Duration::from_millis(1))
        }
    }
}

struct Observed {
    /// (ms since start, frontier of the source's data) as seen by worker 0.
    frontiers: Vec<(u128, Option<Time>)>,
    /// The same, with instants.
    samples: Vec<(Instant, Option<Time>)>,
    /// When each record was read (by any worker).
    records: Vec<(Instant, Time)>,
    /// Records that arrived behind the watermark.
    late: Vec<(Time, PartitionId)>,
}

fn run(workers: usize, scripts: Vec<Vec<Step>>, idle_timeout: Option<Duration>) -> Observed {
    let frontiers = Arc::new(Mutex::new(Vec::new()));
    let records = Arc::new(Mutex::new(Vec::new()));
    let late = Collected::new();
    let (f, l, r) = (Arc::clone(&frontiers), late.clone(), Arc::clone(&records));
    execute(&Cluster::threads(workers), move |worker| {
        let probe = Handle::new();
        let scripts = scripts.clone();
        let l = l.clone();
        let log = Arc::clone(&r);
        let index = worker.index();
        worker.dataflow::<Time, _, _>(|scope| {
            let mut strategy = WatermarkStrategy::monotonic();
            if let Some(timeout) = idle_timeout {
                strategy = strategy.with_idle_timeout(timeout);
            }
            let config = SourceConfig::new("scripted").watermarks(strategy);
            let streams = source(scope, config, move |setup| Scripted {
                partitions: scripts
                    .into_iter()
                    .enumerate()
                    .filter(|(p, _)| p % setup.peers() == setup.index())
                    .map(|(p, steps)| (p as PartitionId, steps.into(), None))
                    .collect(),
                started: false,
                position: 0,
                log,
            });
            let data = streams.data.probe_with(&probe);
            // Records behind the watermark arrive at it, not at their own time.
            data.inner.filter(|(record, at, _)| record.0 != *at).as_collection().collect_into(&l);
        });
        while !probe.done() {
            worker.step_or_park(Some(Duration::from_millis(1)));
            if index == 0 {
                let frontier = probe.with_frontier(|f| f.first().copied());
                f.lock().unwrap().push((Instant::now(), frontier));
            }
        }
    })
    .unwrap();
    let samples: Vec<(Instant, Option<Time>)> = frontiers.lock().unwrap().clone();
    let start = samples.first().map_or_else(Instant::now, |s| s.0);
    let frontiers = samples.iter().map(|(at, f)| (at.duration_since(start).as_millis(), *f)).collect();
    let records = records.lock().unwrap().clone();
    Observed { frontiers, samples, records, late: late.contents().into_iter().map(|(r, _)| r).collect() }
}

/// Partition 0 sends a record at t = 1000·i every 5 ms for 600 ms; partition 1 sends t = 10,
/// goes silent for 350 ms, then sends t = 20 (behind the watermark by then) and t = 900_000.
fn scripts() -> Vec<Vec<Step>> {
    let busy: Vec<Step> =
        (1..=120).flat_map(|i| [Step::Record(1_000 * i), Step::Pause(Duration::from_millis(5))]).collect();
    let quiet = vec![
        Step::Record(10),
        Step::Pause(Duration::from_millis(350)),
        Step::Record(20),
        Step::Pause(Duration::from_millis(40)),
        Step::Record(900_000),
        Step::Pause(Duration::from_millis(100)),
    ];
    vec![busy, quiet]
}

fn max_frontier_before(observed: &Observed, ms: u128) -> Time {
    observed.frontiers.iter().filter(|(t, _)| *t < ms).filter_map(|(_, f)| *f).max().unwrap_or(0)
}

#[test]
fn a_silent_partition_holds_the_watermark_without_an_idle_timeout() {
    let observed = run(1, scripts(), None);
    // During the silence the watermark cannot pass partition 1's watermark (10).
    assert!(max_frontier_before(&observed, 300) <= 10, "{:?}", &observed.frontiers[..20.min(observed.frontiers.len())]);
    assert!(observed.late.is_empty(), "nothing is late when nobody moved on: {:?}", observed.late);
}

#[test]
fn an_idle_partition_stops_holding_the_watermark_and_holds_it_again_when_it_returns() {
    for workers in [1, 2] {
        let observed = run(workers, scripts(), Some(Duration::from_millis(60)));
        // After the idle timeout (60 ms into the 350 ms silence), the watermark follows
        // partition 0 alone.
        let during_silence = max_frontier_before(&observed, 340);
        assert!(during_silence >= 20_000, "{workers} workers: the watermark advanced to {during_silence} only");
        // Partition 1 returns with t = 20, far behind the published watermark: behind it, not
        // lost.
        assert_eq!(observed.late, vec![(20, 1)], "{workers} workers");
        // Back from idleness, partition 1 holds the watermark again: between its return (the
        // late t = 20) and its next record 40 ms later, the watermark stays at most where
        // partition 0 was when partition 1 returned, although partition 0 moves on. (Measured
        // against what partition 0 had read, not against a sample of the frontier, which a
        // worker starved of the CPU takes late.)
        let returned = observed.records.iter().find(|(_, t)| *t == 20).unwrap().0;
        let next = observed.records.iter().find(|(_, t)| *t == 900_000).unwrap().0;
        let busy = |(_, t): &&(Instant, Time)| *t >= 1_000 && *t % 1_000 == 0 && *t < 900_000;
        let at_return = observed.records.iter().filter(busy).filter(|(at, _)| *at <= returned).map(|(_, t)| *t).max();
        let at_return = at_return.expect("partition 0 had read records when partition 1 returned");
        let held = observed.samples.iter().filter(|(at, _)| *at > returned && *at < next).filter_map(|(_, f)| *f).max();
        assert!(
            held.is_some_and(|h| h <= at_return),
            "{workers} workers: watermark {held:?} passed {at_return} while partition 1 was back"
        );
        let busy_during = observed
            .records
            .iter()
            .filter(busy)
            .filter(|(at, t)| *at > returned && *at < next && *t > at_return + 1_000)
            .count();
        assert!(busy_during > 0, "partition 0 moved on meanwhile");
        // The watermark never goes backwards.
        let mut previous = 0;
        for (_, frontier) in &observed.frontiers {
            if let Some(f) = frontier {
                assert!(*f >= previous, "the watermark went back from {previous} to {f}");
                previous = *f;
            }
        }
    }
}
