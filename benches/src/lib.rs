//! Workloads of the throughput harness (`harness.rs`) and the criterion benches: the input
//! generator and each workload written three ways — Tideline (E), plain differential (D) and a
//! hand-written loop (H).

use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tideline::prelude::*;
use tideline::runtime::{Cluster, execute};
use tideline::sink::{SinkHandle, SinkParallelism, SinkWriter};
use tideline::source::SourceConfig;
use tideline::window::aggregate::Count;

pub mod bids;
pub mod joins;
pub mod keyed;
pub mod shapes;
pub mod whole_process;
pub mod windows;

use shapes::Shape;

/// Partitions of the generated input (fixed: results do not depend on workers).
pub const PARTITIONS: usize = 16;
/// Out-of-orderness of the generated input (ms) and the watermark bound used for it.
pub const JITTER_MS: u64 = 100;
/// The watermark bound: larger than the jitter, so no record is late.
pub const BOUND_MS: u64 = 200;

/// A bid-shaped event: key = auction, value = price.
pub type Bid = Event<u64, u64>;

/// Parameters of generated input.
#[derive(Clone, Copy, Debug)]
pub struct InputShape {
    /// Total events.
    pub events: u64,
    /// Distinct keys (auctions).
    pub keys: u64,
    /// Events per second of event time, over all partitions.
    pub rate: u64,
}

impl InputShape {
    /// Nexmark-like bids: 10 000 auctions, 100 000 events per second of event time.
    pub fn bids(events: u64) -> Self {
        InputShape { events, keys: 10_000, rate: 100_000 }
    }
}

/// Generates the input: [`PARTITIONS`] partitions of bids, times increasing with up to
/// [`JITTER_MS`] of disorder, a quarter of the bids on 1% of the auctions (hot keys).
pub fn generate(shape: InputShape) -> Vec<Vec<Bid>> {
    (0..PARTITIONS)
        .map(|p| {
            let mut rng = SmallRng::seed_from_u64(p as u64 * 7919 + 17);
            let count = shape.events / PARTITIONS as u64 + u64::from((p as u64) < shape.events % PARTITIONS as u64);
            (0..count)
                .map(|i| {
                    let global = i * PARTITIONS as u64 + p as u64;
                    let time = 1_767_225_600_000 + global * 1_000 / shape.rate;
                    let time = time.saturating_sub(rng.gen_range(0..JITTER_MS));
                    let key = if rng.gen_ratio(1, 4) {
                        rng.gen_range(0..(shape.keys / 100).max(1))
                    } else {
                        rng.gen_range(0..shape.keys)
                    };
                    Event::new(time, key, rng.gen_range(1..10_000))
                })
                .collect()
        })
        .collect()
}

/// What a workload computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Count per key in windows of (size, slide) ms.
    Windows(u64, u64),
    /// Pairs of left and right records with equal keys in the same tumbling window (ms).
    WindowJoin(u64),
    /// Pairs of left and right records with equal keys, whenever they arrive.
    Join,
    /// Sessions per key, counted.
    Sessions,
    /// The last event per key and horizon.
    Dedup,
    /// Sessions per key, counted, by a user's keyed process function (a per-key state machine
    /// with a timer) instead of the session operator.
    Process,
}

/// A workload of the harness.
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    /// Its name on the command line.
    pub name: &'static str,
    /// What it computes.
    pub description: &'static str,
    /// How.
    pub kind: Kind,
}

/// Every workload the harness knows.
pub fn workloads() -> Vec<Workload> {
    vec![
        Workload {
            name: "tumbling",
            description: "count per key, tumbling 10 s windows",
            kind: Kind::Windows(10_000, 10_000),
        },
        Workload {
            name: "sliding",
            description: "count per key, sliding 10 s windows every 2 s (q5 shape)",
            kind: Kind::Windows(10_000, 2_000),
        },
        Workload {
            name: "sessions",
            description: "bids counted per user session, 10 s gap (q11 shape)",
            kind: Kind::Sessions,
        },
        Workload {
            name: "dedup",
            description: "last bid per (user, item) per 10 s horizon (q18 shape)",
            kind: Kind::Dedup,
        },
        Workload {
            name: "process",
            description: "the sessions workload as a keyed process function: a per-key state machine and a timer",
            kind: Kind::Process,
        },
        Workload {
            name: "window-join",
            description: "new keys joined with their references in the same tumbling 10 s window (q8 shape)",
            kind: Kind::WindowJoin(10_000),
        },
        Workload {
            name: "join",
            description: "references joined with their keys, unbounded (q20 shape)",
            kind: Kind::Join,
        },
    ]
}

/// What one variant of one workload measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Measurement {
    /// E, D or H.
    pub variant: String,
    /// Input events.
    pub events: u64,
    /// Worker threads (1 for H).
    pub workers: usize,
    /// Wall-clock seconds of the computation (input generation excluded).
    pub seconds: f64,
    /// Wall-clock seconds spent generating the input (single-threaded, before the run).
    #[serde(default)]
    pub generate_seconds: f64,
    /// Number of output rows (window, key, count).
    pub outputs: u64,
    /// Order-independent digest of the output multiset (see [`Digest`]).
    pub hash: u64,
    /// Resident memory after generating the input (kB).
    pub baseline_kb: u64,
    /// Peak resident memory (kB).
    pub peak_kb: u64,
    /// Peak live state entries reported by the operator (E only).
    pub entries: Option<u64>,
}

impl Measurement {
    /// One JSON line.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("serializable")
    }

    /// Parses [`Measurement::to_json`]'s output.
    pub fn from_json(line: &str) -> Option<Self> {
        serde_json::from_str(line).ok()
    }

    /// Peak memory above the input, in MB.
    pub fn peak_mb(&self) -> f64 {
        self.peak_kb.saturating_sub(self.baseline_kb) as f64 / 1_000.0
    }

    /// Peak memory above the input per peak live state entry, in bytes.
    pub fn bytes_per_entry(&self) -> Option<f64> {
        self.entries
            .filter(|e| *e > 0)
            .map(|e| self.peak_kb.saturating_sub(self.baseline_kb) as f64 * 1_000.0 / e as f64)
    }
}

pub(crate) fn memory_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

/// An output row: four numbers (what they mean depends on the workload).
pub type Row = [u64; 4];

/// An order-independent digest of the output multiset: the number of rows and the wrapping sum
/// of their hashes (times their multiplicities). Outputs are digested as they are produced, not
/// kept, so that memory figures measure state rather than collected results.
#[derive(Clone, Debug, Default)]
pub struct Digest(Arc<Mutex<(i64, u64)>>);

impl Digest {
    /// Adds `row` with multiplicity `diff`.
    pub fn add(&self, row: &Row, diff: isize) {
        let hash = foldhash::fast::FixedState::with_seed(7).hash_one(row);
        let mut state = self.0.lock().expect("digest lock");
        state.0 += diff as i64;
        state.1 = state.1.wrapping_add(hash.wrapping_mul(diff as u64));
    }

    /// `(rows, hash)`.
    pub fn get(&self) -> (u64, u64) {
        let state = self.0.lock().expect("digest lock");
        (state.0.max(0) as u64, state.1)
    }
}

impl SinkWriter<Row> for Digest {
    fn write(&mut self, _time: Time, updates: &[(Row, isize)]) -> tideline::Result<()> {
        let mut state = self.0.lock().expect("digest lock");
        for (row, diff) in updates {
            let hash = foldhash::fast::FixedState::with_seed(7).hash_one(row);
            state.0 += *diff as i64;
            state.1 = state.1.wrapping_add(hash.wrapping_mul(*diff as u64));
        }
        Ok(())
    }

    fn advance(&mut self, _frontier: Option<Time>) -> tideline::Result<()> {
        Ok(())
    }
}

/// Reads partitions of events round-robin, 4 096 records per partition per round, with a
/// watermark per partition (its largest event time read − [`BOUND_MS`]); a record behind its
/// partition's watermark is dropped, as E's sources do with `LatePolicy::Drop`. The reading
/// that D and H share.
pub(crate) struct RoundRobin<'a, K, V> {
    partitions: Vec<&'a [Event<K, V>]>,
    positions: Vec<usize>,
    max_seen: Vec<Time>,
}

impl<'a, K, V> RoundRobin<'a, K, V> {
    pub(crate) fn new(partitions: impl IntoIterator<Item = &'a Vec<Event<K, V>>>) -> Self {
        let partitions: Vec<&'a [Event<K, V>]> = partitions.into_iter().map(Vec::as_slice).collect();
        let n = partitions.len();
        RoundRobin { partitions, positions: vec![0; n], max_seen: vec![0; n] }
    }

    /// Hands `on_time` the on-time records of one round; false once no partition had any
    /// record left.
    pub(crate) fn round(&mut self, mut on_time: impl FnMut(&'a Event<K, V>)) -> bool {
        let mut any = false;
        for (i, partition) in self.partitions.iter().enumerate() {
            let end = (self.positions[i] + 4_096).min(partition.len());
            for event in &partition[self.positions[i]..end] {
                if event.time < self.max_seen[i].saturating_sub(BOUND_MS) {
                    continue;
                }
                self.max_seen[i] = self.max_seen[i].max(event.time);
                on_time(event);
            }
            any |= end > self.positions[i];
            self.positions[i] = end;
        }
        any
    }

    /// The minimum watermark over the partitions with records left (`None` once all are read).
    pub(crate) fn watermark(&self) -> Option<Time> {
        (0..self.partitions.len())
            .filter(|i| self.positions[*i] < self.partitions[*i].len())
            .map(|i| self.max_seen[i].saturating_sub(BOUND_MS))
            .min()
    }
}

/// Sends a collection of rows to a [`Digest`] (a sink on every worker).
pub trait DigestInto {
    /// Digests the collection's changelog into `digest`.
    fn digest_into(self, digest: &Digest);
}

impl DigestInto for VecCollection<'_, Time, Row> {
    fn digest_into(self, digest: &Digest) {
        let digest = digest.clone();
        self.sink_with(&SinkHandle::new("digest"), SinkParallelism::PerWorker, move |_, _| Some(digest));
    }
}

/// Runs one variant of `workload` on freshly generated input of the given shape and measures
/// it.
pub fn run_variant(workload: &Workload, variant: &str, events: u64, workers: usize, shape: Shape) -> Measurement {
    let generating = Instant::now();
    let bids = match workload.kind {
        Kind::Windows(..) => Some(Arc::new(shapes::bids(shape, events))),
        Kind::Sessions | Kind::Dedup | Kind::Process => Some(Arc::new(shapes::users(shape, events))),
        _ => None,
    };
    let refs = matches!(workload.kind, Kind::WindowJoin(_) | Kind::Join).then(|| Arc::new(shapes::refs(shape, events)));
    let op = if workload.kind == Kind::Dedup { keyed::Op::Dedup } else { keyed::Op::Sessions };
    let generate_seconds = generating.elapsed().as_secs_f64();
    let baseline_kb = memory_kb("VmRSS:");
    let started = Instant::now();
    let (rows, entries, workers) = match (workload.kind, variant) {
        (Kind::Windows(size, slide), "E") => {
            let (rows, entries) = windows::engine(size, slide, bids.as_ref().expect("input"), workers);
            (rows, Some(entries), workers)
        }
        (Kind::Windows(size, slide), "D") => {
            (windows::differential(size, slide, bids.as_ref().expect("input"), workers), None, workers)
        }
        (Kind::Windows(size, slide), "H") => {
            (windows::hand_written(size, slide, bids.as_ref().expect("input")), None, 1)
        }
        (Kind::Process, "E") => {
            let (rows, entries) = keyed::process_sessions(bids.as_ref().expect("input"), workers);
            (rows, Some(entries), workers)
        }
        (Kind::Sessions | Kind::Dedup, "E") => {
            let (rows, entries) = keyed::engine(op, bids.as_ref().expect("input"), workers);
            (rows, Some(entries), workers)
        }
        (Kind::Sessions | Kind::Dedup | Kind::Process, "D") => {
            (keyed::differential(op, bids.as_ref().expect("input"), workers), None, workers)
        }
        (Kind::Sessions | Kind::Dedup | Kind::Process, "H") => {
            (keyed::hand_written(op, bids.as_ref().expect("input")), None, 1)
        }
        (kind, "E") => {
            let (rows, entries) = joins::engine(kind, refs.as_ref().expect("input"), workers);
            (rows, entries, workers)
        }
        (kind, "D") => (joins::differential(kind, refs.as_ref().expect("input"), workers), None, workers),
        (kind, "H") => (joins::hand_written(kind, refs.as_ref().expect("input")), None, 1),
        (_, other) => panic!("unknown variant {other}"),
    };
    let seconds = started.elapsed().as_secs_f64();
    let (outputs, hash) = rows.get();
    Measurement {
        variant: variant.to_string(),
        events,
        workers,
        seconds,
        generate_seconds,
        outputs,
        hash,
        baseline_kb,
        peak_kb: memory_kb("VmHWM:"),
        entries,
    }
}

/// Latency of window results: a tumbling count fed in real time at `rate` events per second,
/// event time = wall-clock time. For each window, the delay between the source's watermark
/// passing the window's end and the window's result reaching the sink, in microseconds,
/// sorted.
pub fn window_latency(rate: u64, window_ms: u64, seconds: u64, keys: u64) -> Vec<u64> {
    use std::cell::RefCell;
    use std::rc::Rc;
    use tideline::source::{ReadContext, ReadStatus, SourceReader, source};

    struct Paced {
        rate: u64,
        keys: u64,
        start: Option<Instant>,
        base: Time,
        sent: u64,
        total: u64,
        window_ms: u64,
        /// When the watermark (monotonic: the latest event time) first reached each window end.
        passed: Rc<RefCell<BTreeMap<Time, Instant>>>,
        next_end: Time,
    }
    impl SourceReader for Paced {
        type Item = Bid;
        fn poll(&mut self, ctx: &mut ReadContext<'_, Bid>) -> ReadStatus {
            let start = *self.start.get_or_insert_with(|| {
                ctx.add_partition(0);
                Instant::now()
            });
            let elapsed = start.elapsed();
            let due = (self.rate as u128 * elapsed.as_micros() / 1_000_000).min(self.total as u128) as u64;
            let now_ms = self.base + elapsed.as_millis() as u64;
            while self.sent < due {
                let key = (self.sent * 2_654_435_761) % self.keys;
                ctx.record(0, self.sent, now_ms, Event::new(now_ms, key, 1));
                self.sent += 1;
            }
            if self.sent > 0 {
                // The source downgrades its capability to `now_ms` right after this poll.
                let now = Instant::now();
                while now_ms >= self.next_end {
                    self.passed.borrow_mut().insert(self.next_end, now);
                    self.next_end += self.window_ms;
                }
            }
            if self.sent >= self.total { ReadStatus::Done } else { ReadStatus::Waiting(Duration::from_micros(200)) }
        }
    }

    let base: Time = 1_767_225_600_000;
    let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let l = Arc::clone(&latencies);
    execute(&Cluster::threads(1), move |worker| {
        let sink = SinkHandle::new("latency");
        let sink_in = sink.clone();
        let arrivals: Rc<RefCell<BTreeMap<Time, Instant>>> = Rc::default();
        let seen = Rc::clone(&arrivals);
        let passed: Rc<RefCell<BTreeMap<Time, Instant>>> = Rc::default();
        let marks = Rc::clone(&passed);
        worker.dataflow::<Time, _, _>(|scope| {
            let config = SourceConfig::new("paced");
            let streams = source(scope, config, move |_| Paced {
                rate,
                keys,
                start: None,
                base,
                sent: 0,
                total: rate * seconds,
                window_ms,
                passed: marks,
                next_end: (base / window_ms + 1) * window_ms,
            });
            // The results go through a real sink: a window's result counts as arrived when the
            // sink's writer is handed it (after the frontier has passed its time).
            struct Stamp(Rc<RefCell<BTreeMap<Time, Instant>>>);
            impl SinkWriter<WindowResult<u64, i64>> for Stamp {
                fn write(&mut self, _time: Time, updates: &[(WindowResult<u64, i64>, isize)]) -> tideline::Result<()> {
                    let now = Instant::now();
                    let mut seen = self.0.borrow_mut();
                    for (result, _) in updates {
                        seen.entry(result.window.end).or_insert(now);
                    }
                    Ok(())
                }
                fn advance(&mut self, _frontier: Option<Time>) -> tideline::Result<()> {
                    Ok(())
                }
            }
            streams
                .data
                .windows(WindowSpec::tumbling(Duration::from_millis(window_ms)).expect("valid"))
                .aggregate(Count)
                .sink_with(&sink_in, SinkParallelism::PerWorker, move |_, _| Some(Stamp(seen)));
        });
        while !sink.is_complete() {
            worker.step_or_park(Some(Duration::from_micros(100)));
        }
        let arrivals = arrivals.borrow();
        let mut out = l.lock().expect("lock");
        for (end, at) in passed.borrow().iter() {
            if let Some(arrived) = arrivals.get(end) {
                out.push(arrived.saturating_duration_since(*at).as_micros() as u64);
            }
        }
    })
    .expect("latency run");
    let mut latencies = latencies.lock().expect("lock").clone();
    latencies.sort_unstable();
    latencies
}
