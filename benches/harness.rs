//! The throughput harness: each workload three ways on identical, pre-generated input held in
//! memory, side by side in the same run:
//!
//! - **E**: the Tideline pipeline;
//! - **D**: the same computation written directly against differential dataflow;
//! - **H**: a hand-written single-threaded Rust loop (hash maps).
//!
//! It checks that E, D and H produce the same result (an order-independent digest of the
//! output multiset), then prints events/s per worker (E also counting input generation,
//! "E+gen"), the ratios E/D and E/H, peak memory and bytes per live state entry. Each variant
//! runs in its own child process, so peak memory is its own. Every workload runs on input of
//! one or more shapes (`--shape`, see [`tideline_benches::shapes`]).
//!
//! `--whole-process` instead runs the `window_agg` example program against a hand-written loop
//! (`window_loop`) on a generated bid file, whole processes side by side
//! ([`tideline_benches::whole_process`]).
//!
//! ```text
//! harness [--events N] [--workers W] [--workload NAME[,NAME…]] [--shape S[,S…]|all] [--smoke] [--metrics]
//! harness --whole-process [--events N[,N…]] [--runs R] [--query Q[,Q…]] [--data-dir DIR]
//!         [--max-delay MS] [--same-rows]
//! ```
//!
//! `--metrics` runs every variant with the metrics endpoint on and scraped over HTTP every
//! second (as Prometheus would), to measure what observability costs: compare with a run
//! without it.

use std::process::{Command, ExitCode};
use std::time::Instant;

use tideline_benches::shapes::Shape;
use tideline_benches::whole_process::{self, Query};
use tideline_benches::{Measurement, Workload, workloads};

const USAGE: &str = "\
harness: Tideline (E) vs plain differential (D) vs a hand-written loop (H), side by side.

  --events N          events per workload (default 10000000)
  --workers W         worker threads for E and D (default 1)
  --workload A,B      workloads to run (default: all): {WORKLOADS}
  --shape A,B|all     input shapes (default: dense; with --smoke: all): {SHAPES}
  --smoke             small input (100000 events), check agreement only: for CI
  --metrics           serve /metrics in every variant and scrape it every second
                      (compare with a run without, to see what the endpoint costs)
  --metrics-every MS  with --metrics: scrape every MS milliseconds instead (a stress test)
  --latency RATE      window result latency at RATE events/s (real time), p50/p99;
                      `auto`: at half the pipeline's measured maximum rate
  --state-size KEYS   bytes per live window state entry, with KEYS keys live at once
  --child VARIANT     internal: run one variant (E, D or H) of one workload and print JSON
  --measure-child STDERR PROGRAM ARGS…
                      internal: run PROGRAM, print its wall time, CPU time and peak memory

WHOLE PROCESS (window_agg -w 1, -w 2 and the hand-written window_loop on a generated bid file;
build window_agg and window_loop in the harness's profile first, e.g.
`cargo build --release -p tideline-examples --bin window_agg` and
`cargo build --release -p tideline-benches --bin harness --bin window_loop`):
  --whole-process     run it
  --events N,M        bids per input file (default 1000000,2000000)
  --runs R            runs of each program on each input (default 3; the table shows the median)
  --query A,B         queries (default: all): tumbling, sliding, sessions
  --data-dir DIR      where inputs are generated once and outputs written
                      (default: target/whole-process)
  --max-delay MS      out-of-order rows up to MS early (default 5000, the out-of-orderness:
                      nothing late; more makes late records)
  --same-rows         pass when window_agg's output has the loop's rows in another order
                      (default: fail unless the two outputs are byte-identical)
";

fn main() -> ExitCode {
    // First, before this process grows: the whole-process benchmark's measuring helper.
    let mut raw = std::env::args_os().skip(1);
    if raw.next().is_some_and(|flag| flag == "--measure-child") {
        return whole_process::measure_child_main(raw);
    }
    let mut args = std::env::args().skip(1);
    let mut events_text: Option<String> = None;
    let mut shapes_text: Option<String> = None;
    let mut whole = false;
    let mut whole_options = whole_process::Options::default();
    let mut workers: usize = 1;
    let mut selected: Option<Vec<String>> = None;
    let mut smoke = false;
    let mut child: Option<String> = None;
    let mut latency: Option<u64> = None;
    let mut state_size: Option<u64> = None;
    let mut metrics = false;
    let mut scrape_every_ms: u64 = 1_000;
    while let Some(flag) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| fail(&format!("{flag} needs a value")));
        match flag.as_str() {
            "--events" => events_text = Some(value()),
            "--shape" => shapes_text = Some(value()),
            "--whole-process" => whole = true,
            "--runs" => whole_options.runs = value().parse().unwrap_or_else(|_| fail("--runs expects a number")),
            "--query" => {
                whole_options.queries = value()
                    .split(',')
                    .map(|q| Query::from_name(q).unwrap_or_else(|| fail(&format!("unknown query {q}"))))
                    .collect()
            }
            "--data-dir" => whole_options.data_dir = Some(value().into()),
            "--max-delay" => {
                whole_options.max_delay_ms =
                    value().parse().unwrap_or_else(|_| fail("--max-delay expects milliseconds"))
            }
            "--byte-identical" => whole_options.byte_identical = true,
            "--same-rows" => whole_options.byte_identical = false,
            "--workers" | "-w" => workers = value().parse().unwrap_or_else(|_| fail("--workers expects a number")),
            "--workload" => selected = Some(value().split(',').map(String::from).collect()),
            "--smoke" => smoke = true,
            "--metrics" => metrics = true,
            "--metrics-every" => {
                scrape_every_ms = value().parse().unwrap_or_else(|_| fail("--metrics-every expects milliseconds"))
            }
            "--child" => child = Some(value()),
            "--state-size" => {
                state_size = Some(value().parse().unwrap_or_else(|_| fail("--state-size expects a number")))
            }
            "--latency" => {
                let text = value();
                latency = Some(if text == "auto" {
                    0
                } else if text == "max" {
                    u64::MAX
                } else {
                    text.parse().unwrap_or_else(|_| fail("--latency expects events/s or auto"))
                });
            }
            "--help" => {
                let names: Vec<&str> = workloads().iter().map(|w| w.name).collect();
                let shapes: Vec<&str> = Shape::ALL.iter().map(|s| s.name()).collect();
                println!("{}", USAGE.replace("{WORKLOADS}", &names.join(", ")).replace("{SHAPES}", &shapes.join(", ")));
                return ExitCode::SUCCESS;
            }
            other => fail(&format!("unknown flag {other}")),
        }
    }
    if whole {
        if let Some(text) = &events_text {
            whole_options.events = text
                .split(',')
                .map(|n| n.parse().unwrap_or_else(|_| fail("--events expects numbers, comma-separated")))
                .collect();
        }
        return match whole_process::run(&whole_options) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => {
                eprintln!("harness: window_agg's output differed from the hand-written loop's (see above)");
                ExitCode::FAILURE
            }
            Err(error) => fail(&error.to_string()),
        };
    }
    let mut events: u64 = match &events_text {
        Some(text) => text.parse().unwrap_or_else(|_| fail("--events expects a number")),
        None => 10_000_000,
    };
    let shapes: Vec<Shape> = match shapes_text.as_deref() {
        Some("all") => Shape::ALL.to_vec(),
        Some(text) => text
            .split(',')
            .map(|s| Shape::from_name(s).unwrap_or_else(|| fail(&format!("unknown shape {s}"))))
            .collect(),
        None if smoke => Shape::ALL.to_vec(),
        None => vec![Shape::Dense],
    };
    if smoke {
        events = events.min(100_000);
    }
    if let Some(keys) = state_size {
        let (entries, bytes) = tideline_benches::windows::state_size(keys);
        println!(
            "window state: {entries} live entries (u64 key, count) took {:.1} MB above the input: {:.0} bytes per entry",
            bytes as f64 / 1e6,
            bytes as f64 / entries.max(1) as f64
        );
        return ExitCode::SUCCESS;
    }
    if let Some(mut rate) = latency {
        let (window_ms, seconds, keys) = (100, 20, 10_000);
        if rate == u64::MAX {
            // Internal (`auto`'s child): the pipeline's maximum rate, asking for far more than
            // it can do.
            let asked = 200_000_000;
            let started = Instant::now();
            let _ = tideline_benches::window_latency(asked, window_ms, 1, keys);
            println!("{}", (asked as f64 / started.elapsed().as_secs_f64()) as u64);
            return ExitCode::SUCCESS;
        }
        if rate == 0 {
            // auto: measure the pipeline's maximum rate in a child process (so that its heap
            // does not linger in this one), then run at half of it.
            let exe = std::env::current_exe().expect("own path");
            let output = Command::new(exe).args(["--latency", "max"]).output().expect("harness child runs");
            let max: u64 = String::from_utf8_lossy(&output.stdout)
                .trim()
                .parse()
                .unwrap_or_else(|_| fail("the maximum-rate child failed"));
            rate = max / 2;
            println!("window latency: the pipeline's maximum is {max} events/s; measuring at half, {rate} events/s");
        }
        println!(
            "window latency: tumbling {window_ms} ms count over {keys} keys, {rate} events/s in real time for {seconds} s"
        );
        let latencies = tideline_benches::window_latency(rate, window_ms, seconds, keys);
        let at = |q: f64| {
            latencies.get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1))).copied()
        };
        println!(
            "{} windows: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms (from the watermark passing a window's end to its result at the sink)",
            latencies.len(),
            at(0.5).unwrap_or(0) as f64 / 1e3,
            at(0.99).unwrap_or(0) as f64 / 1e3,
            latencies.last().copied().unwrap_or(0) as f64 / 1e3
        );
        return ExitCode::SUCCESS;
    }
    let all = workloads();
    let chosen: Vec<&Workload> = match &selected {
        None => all.iter().collect(),
        Some(names) => names
            .iter()
            .map(|n| all.iter().find(|w| w.name == n).unwrap_or_else(|| fail(&format!("unknown workload {n}"))))
            .collect(),
    };

    if let Some(variant) = child {
        let workload = chosen.first().unwrap_or_else(|| fail("--child needs one --workload"));
        let shape = *shapes.first().unwrap_or_else(|| fail("--child needs one --shape"));
        let scraper = metrics.then(|| Scraper::start(std::time::Duration::from_millis(scrape_every_ms)));
        let measurement = tideline_benches::run_variant(workload, &variant, events, workers, shape);
        if let Some(scraper) = scraper {
            let stats = scraper.stop();
            eprintln!(
                "{variant}: {} scrapes of /metrics, {} bytes in all, {:.0} us per scrape (mean; max {:.0} us), request to last byte",
                stats.scrapes,
                stats.bytes,
                stats.total.as_secs_f64() * 1e6 / stats.scrapes.max(1) as f64,
                stats.max.as_secs_f64() * 1e6
            );
        }
        println!("{}", measurement.to_json());
        return ExitCode::SUCCESS;
    }

    let exe = std::env::current_exe().expect("own path");
    println!(
        "Tideline throughput harness: {events} events per workload, {workers} worker(s) for E and D, input pre-generated in memory{}",
        if metrics { format!(", metrics endpoint on and scraped every {scrape_every_ms} ms") } else { String::new() }
    );
    println!(
        "{:<14} {:<6} {:>12} {:>12} {:>12} {:>12} {:>6} {:>6} {:>9} {:>9} {:>9} {:>10}  agree",
        "workload",
        "shape",
        "E ev/s/wkr",
        "E+gen",
        "D ev/s/wkr",
        "H ev/s",
        "E/D",
        "E/H",
        "E MB",
        "D MB",
        "H MB",
        "E B/entry"
    );
    let started = Instant::now();
    let mut disagreements = 0;
    for (shape, workload) in shapes.iter().flat_map(|s| chosen.iter().map(move |w| (s, w))) {
        let mut results: Vec<Measurement> = Vec::new();
        for variant in ["E", "D", "H"] {
            let output = Command::new(&exe)
                .args(["--child", variant, "--workload", workload.name, "--events", &events.to_string()])
                .args(["--workers", &workers.to_string(), "--shape", shape.name()])
                .args(if metrics {
                    vec!["--metrics".to_string(), "--metrics-every".into(), scrape_every_ms.to_string()]
                } else {
                    vec![]
                })
                .output()
                .expect("harness child runs");
            if !output.status.success() {
                eprintln!(
                    "{} ({}) {variant} failed:\n{}",
                    workload.name,
                    shape.name(),
                    String::from_utf8_lossy(&output.stderr)
                );
                return ExitCode::FAILURE;
            }
            if metrics {
                eprint!("{} {}", workload.name, String::from_utf8_lossy(&output.stderr));
            }
            let line = String::from_utf8_lossy(&output.stdout);
            results.push(
                Measurement::from_json(line.trim()).unwrap_or_else(|| fail(&format!("bad child output {line:?}"))),
            );
        }
        let (e, d, h) = (&results[0], &results[1], &results[2]);
        let agree = e.hash == d.hash && e.hash == h.hash && e.outputs == d.outputs && e.outputs == h.outputs;
        if !agree {
            disagreements += 1;
        }
        let per_worker = |m: &Measurement| m.events as f64 / m.seconds / m.workers as f64;
        let with_generator = e.events as f64 / (e.seconds + e.generate_seconds) / e.workers as f64;
        println!(
            "{:<14} {:<6} {:>12.0} {:>12.0} {:>12.0} {:>12.0} {:>6.2} {:>6.2} {:>9.1} {:>9.1} {:>9.1} {:>10}  {}",
            workload.name,
            shape.name(),
            per_worker(e),
            with_generator,
            per_worker(d),
            per_worker(h),
            per_worker(e) / per_worker(d),
            per_worker(h) / per_worker(e),
            e.peak_mb(),
            d.peak_mb(),
            h.peak_mb(),
            e.bytes_per_entry().map_or("-".to_string(), |b| format!("{b:.0}")),
            if agree { format!("yes ({} outputs)", e.outputs) } else { format!("NO: E {e:?} D {d:?} H {h:?}") }
        );
    }
    println!(
        "E+gen: E counting the time to generate the input too (single-threaded). \
         E/D: Tideline throughput over plain differential (>1: faster). E/H: E's cost per event over H's (H ev/s over E ev/s per \
         worker), how many times slower than the hand-written loop. MB: peak resident memory above the pre-generated input. B/entry: that memory per peak \
         live state entry. Total {:.1}s.",
        started.elapsed().as_secs_f64()
    );
    if disagreements > 0 {
        eprintln!("harness: {disagreements} workload(s) where E, D and H disagree");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// The metrics endpoint of a child, and a thread scraping it over HTTP at a fixed interval.
struct Scraper {
    _server: tideline::runtime::metrics::MetricsServer,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<ScrapeStats>,
}

/// What a [`Scraper`] did.
#[derive(Default)]
struct ScrapeStats {
    scrapes: u64,
    bytes: u64,
    /// Time from connecting to the last byte of the reply, summed, and the longest.
    total: std::time::Duration,
    max: std::time::Duration,
}

impl Scraper {
    fn start(every: std::time::Duration) -> Scraper {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let server = tideline::runtime::metrics::serve("127.0.0.1:0").unwrap_or_else(|e| fail(&e.to_string()));
        let addr = server.local_addr();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = std::sync::Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut stats = ScrapeStats::default();
            // The first scrape at once, then one every `every`.
            let mut next = Instant::now();
            while !stopping.load(Ordering::Relaxed) {
                let now = Instant::now();
                if now < next {
                    std::thread::sleep((next - now).min(std::time::Duration::from_millis(10)));
                    continue;
                }
                next += every;
                let started = Instant::now();
                let mut stream = std::net::TcpStream::connect(addr).expect("connect to /metrics");
                stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
                let mut reply = Vec::new();
                stream.read_to_end(&mut reply).unwrap();
                let took = started.elapsed();
                assert!(reply.starts_with(b"HTTP/1.1 200"), "a scrape failed");
                stats.scrapes += 1;
                stats.bytes += reply.len() as u64;
                stats.total += took;
                stats.max = stats.max.max(took);
            }
            stats
        });
        Scraper { _server: server, stop, thread }
    }

    /// Stops scraping; returns what the scrapes took.
    fn stop(self) -> ScrapeStats {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().expect("the scraper thread")
    }
}

fn fail(message: &str) -> ! {
    eprintln!("harness: {message}");
    std::process::exit(2)
}
