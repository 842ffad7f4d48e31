//! `nexmark`: runs a Nexmark query over the generator and reports its throughput.
//!
//! ```text
//! nexmark --query q5 --events 10000000 [-w 2] [--output out.jsonl]
//! ```

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tideline::prelude::*;
use tideline::runtime::metrics::SourceMetrics;
use tideline::runtime::{CLUSTER_FLAGS_HELP, Cluster, execute};
use tideline::sink::{SinkHandle, SinkParallelism, SinkWriter};
use tideline::source::SourceConfig;
use tideline_connectors::file::{FileSink, SinkMode};
use tideline_connectors::nexmark::NexmarkSource;
use tideline_examples::nexmark::{QUERIES, Row, query};

const USAGE: &str = "\
nexmark: runs a Nexmark query over the generator and reports its throughput.

USAGE:
  nexmark --query QUERY [--events N] [-w N] [--output FILE.jsonl] [generator options]

  --query QUERY              one of: q0 q1 q2 q3 q5 q7 q8 q11 q18 q19 q20
  --events N                 events to generate (default 1000000)
  --output FILE.jsonl        write the query's output as a JSON Lines changelog
  --partitions P             generator partitions (default 16; results do not depend on -w)
  --rate R                   events per second of event time (default 10000)
  --active-people N          people active at any time (default 1000)
  --in-flight-auctions N     auctions open at any time (default 100)
  --out-of-order-group N     events shuffled within groups of N (default 1: in order)
  --quiet                    no progress on stderr

CLUSTER (timely):
";

fn main() -> ExitCode {
    let (cluster, args) = match Cluster::from_args(std::env::args().skip(1)) {
        Ok(parsed) => parsed,
        Err(e) => return usage(&e.to_string()),
    };
    let mut name = None;
    let mut output = None;
    let mut quiet = false;
    let mut source = NexmarkSource::new(1_000_000);
    let mut args = args.into_iter();
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        let result: Result<(), String> = (|| {
            let number = |v: String| v.parse::<u64>().map_err(|_| format!("{flag} expects a whole number, got {v:?}"));
            match flag.as_str() {
                "--help" => {
                    println!("{USAGE}{CLUSTER_FLAGS_HELP}");
                    std::process::exit(0);
                }
                "--query" => name = Some(value()?),
                "--events" => source.events = number(value()?)?,
                "--output" => output = Some(value()?),
                "--partitions" => source.partitions = number(value()?)?.max(1) as usize,
                "--rate" => source.rate = number(value()?)?.max(1) as usize,
                "--active-people" => source.active_people = number(value()?)?.max(1) as usize,
                "--in-flight-auctions" => source.in_flight_auctions = number(value()?)?.max(1) as usize,
                "--out-of-order-group" => source.out_of_order_group = number(value()?)?.max(1) as usize,
                "--quiet" => quiet = true,
                other => return Err(format!("unknown flag {other}")),
            }
            Ok(())
        })();
        if let Err(message) = result {
            return usage(&message);
        }
    }
    let Some(name) = name.filter(|n| QUERIES.contains(&n.as_str())) else {
        return usage(&format!("choose a query with --query: one of {}", QUERIES.join(" ")));
    };
    if cluster.processes > 1 && output.is_none() {
        return usage("with several processes (-n), give --output FILE");
    }
    let sink = match &output {
        Some(path) => match FileSink::<Row>::json_lines(path).mode(SinkMode::Changelog).name("output").build() {
            Ok(sink) => Some(sink),
            Err(e) => {
                eprintln!("nexmark: error: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };

    let metrics = SourceMetrics::new(format!("nexmark {name}"));
    let handle = SinkHandle::new("output");
    // Without --output, results are counted as the sink receives them, not kept.
    let results = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let (m, h, r, q, s) = (Arc::clone(&metrics), handle.clone(), Arc::clone(&results), name.clone(), source.clone());
    let workers = cluster.peers();
    let job = std::thread::spawn(move || {
        execute(&cluster, move |worker| {
            let config = SourceConfig::new("nexmark").watermarks(s.watermarks()).metrics(Arc::clone(&m));
            let (sink, h, r, q, s) = (sink.clone(), h.clone(), Arc::clone(&r), q.clone(), s.clone());
            worker.dataflow::<Time, _, _>(move |scope| {
                let events = s.read(scope, config).data;
                let out = query(&q, events).expect("a known query");
                match &sink {
                    Some(sink) => sink.write(out, &h),
                    None => out.sink_with(&h, SinkParallelism::PerWorker, |_, _| Some(Count(r))),
                }
            });
        })
    });
    let mut last = Instant::now();
    while !job.is_finished() {
        std::thread::sleep(Duration::from_millis(50));
        if !quiet && last.elapsed() >= Duration::from_secs(1) {
            eprintln!("nexmark: {}", metrics.progress_line());
            last = Instant::now();
        }
    }
    match job.join() {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            eprintln!("nexmark: error: {e}");
            return ExitCode::FAILURE;
        }
        Err(_) => {
            eprintln!("nexmark: error: a worker panicked");
            return ExitCode::FAILURE;
        }
    }
    if let Err(e) = handle.check() {
        eprintln!("nexmark: error: {e}");
        return ExitCode::FAILURE;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let events = metrics.records();
    let updates = if output.is_some() {
        "written to the output".to_string()
    } else {
        results.load(Ordering::Relaxed).to_string()
    };
    println!(
        "{name}: {events} events in {elapsed:.2}s: {:.0} events/s ({:.0} per worker), {updates} result updates",
        events as f64 / elapsed,
        events as f64 / elapsed / workers as f64
    );
    ExitCode::SUCCESS
}

fn usage(message: &str) -> ExitCode {
    eprintln!("nexmark: {message}\nRun nexmark --help for usage.");
    ExitCode::from(2)
}

/// A sink that counts the result updates it is handed (consolidated per time), and keeps
/// nothing.
struct Count(Arc<AtomicU64>);

impl SinkWriter<Row> for Count {
    fn write(&mut self, _time: Time, updates: &[(Row, isize)]) -> tideline::Result<()> {
        self.0.fetch_add(updates.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn advance(&mut self, _frontier: Option<Time>) -> tideline::Result<()> {
        Ok(())
    }
}
