//! Windowed counts per key (tumbling, sliding) three ways.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tideline::differential_dataflow::input::Input;
use tideline::differential_dataflow::operators::count::CountTotal;
use tideline::prelude::*;
use tideline::runtime::metrics::StateMetrics;
use tideline::runtime::{Cluster, execute};
use tideline::source::{SourceConfig, memory};
use tideline::timely::dataflow::operators::probe::Handle;
use tideline::window::aggregate::Count;

use crate::{BOUND_MS, Bid, Digest, DigestInto, RoundRobin};

fn spec(size: u64, slide: u64) -> WindowSpec {
    WindowSpec::sliding(Duration::from_millis(size), Duration::from_millis(slide)).expect("valid window")
}

/// E: the Tideline pipeline.
pub fn engine(size: u64, slide: u64, input: &Arc<Vec<Vec<Bid>>>, workers: usize) -> (Digest, u64) {
    let spec = spec(size, slide);
    let results = Digest::default();
    let state = StateMetrics::named("bench-window");
    let (r, s, input) = (results.clone(), Arc::clone(&state), Arc::clone(input));
    execute(&Cluster::threads(workers), move |worker| {
        let (r, s, input) = (r.clone(), Arc::clone(&s), Arc::clone(&input));
        worker.dataflow::<Time, _, _>(move |scope| {
            let config = SourceConfig::new("bids")
                .watermarks(WatermarkStrategy::bounded_out_of_orderness(Duration::from_millis(BOUND_MS)));
            memory::from_partitions(scope, config, input)
                .data
                .windows(spec)
                .state_metrics(s)
                .aggregate(Count)
                .map(|r| [r.window.start, r.key, r.value as u64, 0])
                .digest_into(&r);
        });
        while worker.step_or_park(None) {}
    })
    .expect("engine run");
    (results, state.peak_per_worker() * workers as u64)
}

/// D: the same computation written directly against differential: each worker feeds its
/// partitions into an input session, each record at its window's last instant, and counts
/// with `count_total`.
pub fn differential(size: u64, slide: u64, input: &Arc<Vec<Vec<Bid>>>, workers: usize) -> Digest {
    let results = Digest::default();
    let (r, input) = (results.clone(), Arc::clone(input));
    execute(&Cluster::threads(workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let r = r.clone();
        let probe = Handle::new();
        let mut session = worker.dataflow::<Time, _, _>(|scope| {
            let (session, windows) = scope.new_collection::<(u64, u64), isize>();
            windows
                .count_total()
                .map(|((start, key), count)| [start, key, count as u64, 0])
                .probe_with(&probe)
                .digest_into(&r);
            session
        });
        let mut reader = RoundRobin::new(input.iter().enumerate().filter(|(p, _)| p % peers == index).map(|(_, v)| v));
        loop {
            let any = reader.round(|event| {
                let mut start = event.time - event.time % slide;
                while start + size > event.time {
                    session.update_at((start, event.key), start + size - 1, 1);
                    if start < slide {
                        break;
                    }
                    start -= slide;
                }
            });
            let watermark = reader.watermark().unwrap_or(u64::MAX - 1);
            if watermark > *session.time() {
                session.advance_to(watermark);
            }
            session.flush();
            worker.step();
            // Do not run unboundedly ahead of the output (as E's flow control does not).
            while probe.less_than(&session.time().saturating_sub(size * 4)) {
                worker.step();
            }
            if !any {
                break;
            }
        }
        drop(session);
        while !probe.done() {
            worker.step();
        }
    })
    .expect("differential run");
    results
}

/// H: a hand-written single-threaded loop: partitions read round-robin, per-partition
/// watermarks, counts in hash maps per window, each window emitted and dropped when the
/// watermark (minimum over partitions) passes its end.
pub fn hand_written(size: u64, slide: u64, input: &Arc<Vec<Vec<Bid>>>) -> Digest {
    // A good hand-written loop: the same fast hasher the engine uses.
    let mut windows: BTreeMap<u64, HashMap<u64, i64, foldhash::fast::FixedState>> = BTreeMap::new();
    let out = Digest::default();
    let mut reader = RoundRobin::new(input.iter());
    loop {
        let any = reader.round(|event| {
            let mut start = event.time - event.time % slide;
            while start + size > event.time {
                *windows.entry(start).or_default().entry(event.key).or_insert(0) += 1;
                if start < slide {
                    break;
                }
                start -= slide;
            }
        });
        let watermark = reader.watermark().unwrap_or(u64::MAX);
        while let Some(entry) = windows.first_entry() {
            if entry.key() + size > watermark {
                break;
            }
            let (start, counts) = entry.remove_entry();
            counts.into_iter().for_each(|(key, count)| out.add(&[start, key, count as u64, 0], 1));
        }
        if !any {
            break;
        }
    }
    out
}

/// Memory per live window state entry: `keys` distinct keys counted in one tumbling hour, all
/// live until the input ends. Resident memory is sampled while the window is filling and
/// before it emits anything, so output buffers do not count. Returns (live entries, memory
/// above the input in bytes at that point).
pub fn state_size(keys: u64) -> (u64, u64) {
    let input: Vec<Vec<Bid>> = (0..crate::PARTITIONS as u64)
        .map(|p| {
            (p..keys)
                .step_by(crate::PARTITIONS)
                .map(|k| Event::new(1_767_225_600_000 + k * 1_000 / keys, k, 1))
                .collect()
        })
        .collect();
    let input = Arc::new(input);
    let baseline = crate::memory_kb("VmRSS:");
    let results = Digest::default();
    let state = StateMetrics::new();
    let sampled = Arc::new(std::sync::Mutex::new((0u64, 0u64)));
    let (r, s, i, m) = (results.clone(), Arc::clone(&state), Arc::clone(&input), Arc::clone(&sampled));
    execute(&Cluster::threads(1), move |worker| {
        let (r2, s2, i) = (r.clone(), Arc::clone(&s), Arc::clone(&i));
        let spec = spec(3_600_000, 3_600_000);
        worker.dataflow::<Time, _, _>(move |scope| {
            let config = SourceConfig::new("keys")
                .watermarks(WatermarkStrategy::bounded_out_of_orderness(Duration::from_millis(BOUND_MS)));
            memory::from_partitions(scope, config, i)
                .data
                .windows(spec)
                .state_metrics(s2)
                .aggregate(Count)
                .map(|r| [r.window.start, r.key, r.value as u64, 0])
                .digest_into(&r2);
        });
        while worker.step_or_park(None) {
            let entries = s.total();
            if r.get().0 == 0 && entries > m.lock().expect("lock").0 {
                *m.lock().expect("lock") = (entries, crate::memory_kb("VmRSS:"));
            }
        }
    })
    .expect("state size run");
    assert_eq!(results.get().0, keys, "every key counted");
    let (entries, rss) = *sampled.lock().expect("lock");
    (entries, rss.saturating_sub(baseline) * 1_000)
}
