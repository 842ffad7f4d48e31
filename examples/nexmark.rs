//! `nexmark`: runs a Nexmark query over the generator and reports its throughput.
//!
//! ```text
//! nexmark --query q5 --events 10000000 [-w 2] [--output out.jsonl]
//! ```

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use tideline::prelude::*;
use tideline::runtime::execute;
use tideline::runtime::metrics::SourceMetrics;
use tideline::sink::{SinkHandle, SinkParallelism, SinkWriter};
use tideline::source::SourceConfig;
use tideline_connectors::file::{FileSink, SinkMode};
use tideline_connectors::nexmark::NexmarkSource;
use tideline_examples::cli::{ClusterArgs, HelpFlag, at_least_one, same_configuration, usage_error, whole_number};
use tideline_examples::nexmark::{QUERIES, Row, query};
use tideline_examples::observe::ObserveArgs;

/// nexmark: runs a Nexmark query over the generator and reports its throughput.
#[derive(Parser, Debug)]
#[command(
    name = "nexmark",
    version,
    disable_help_flag = true,
    override_usage = "nexmark --query QUERY [--events N] [-w N] [--output FILE.jsonl] [GENERATOR OPTIONS]"
)]
struct Cli {
    #[command(flatten)]
    help: HelpFlag,

    /// The query
    #[arg(long, value_name = "QUERY", value_parser = clap::builder::PossibleValuesParser::new(QUERIES))]
    query: String,
    /// Events to generate
    #[arg(long, value_name = "N", default_value_t = 1_000_000, value_parser = whole_number)]
    events: u64,
    /// Write the query's output as a JSON Lines changelog (a file is written as
    /// FILE.jsonl.partial and renamed when complete)
    #[arg(long, value_name = "FILE.jsonl")]
    output: Option<String>,
    /// No progress on stderr
    #[arg(long)]
    quiet: bool,

    /// Generator partitions (results do not depend on -w)
    #[arg(long, value_name = "P", default_value_t = 16, value_parser = at_least_one, help_heading = "Generator")]
    partitions: usize,
    /// Events per second of event time
    #[arg(long, value_name = "R", default_value_t = 10_000, value_parser = at_least_one, help_heading = "Generator")]
    rate: usize,
    /// People active at any time
    #[arg(long, value_name = "N", default_value_t = 1_000, value_parser = at_least_one, help_heading = "Generator")]
    active_people: usize,
    /// Auctions open at any time
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = at_least_one, help_heading = "Generator")]
    in_flight_auctions: usize,
    /// Events shuffled within groups of N (1: in order)
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = at_least_one, help_heading = "Generator")]
    out_of_order_group: usize,

    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(flatten)]
    observe: ObserveArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Logs (RUST_LOG, --log-format) and the metrics endpoint (--metrics-addr), for the whole run.
    let Some(_observability) = cli.observe.start("nexmark") else { return ExitCode::FAILURE };
    let cluster = cli.cluster.to_cluster().unwrap_or_else(|message| usage_error::<Cli>(message));
    if !cli.quiet
        && let Some(warning) = cli.cluster.oversubscription_warning()
    {
        eprintln!("nexmark: {warning}");
    }
    let (name, output, quiet) = (cli.query, cli.output, cli.quiet);
    let mut source = NexmarkSource::new(cli.events);
    source.partitions = cli.partitions;
    source.rate = cli.rate;
    source.active_people = cli.active_people;
    source.in_flight_auctions = cli.in_flight_auctions;
    source.out_of_order_group = cli.out_of_order_group;
    if cluster.processes > 1 && output.is_none() {
        usage_error::<Cli>("with several processes (-n), give --output FILE");
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
    // Every process must generate the same events and run the same query.
    let configuration = (cluster.processes > 1).then(|| format!("--query {name} {source:?}"));
    let job = std::thread::spawn(move || {
        execute(&cluster, move |worker| {
            if let Some(configuration) = &configuration {
                same_configuration(worker, configuration)?;
            }
            let mut config = SourceConfig::new("nexmark").watermarks(s.watermarks()).metrics(Arc::clone(&m));
            if tideline_examples::nexmark::ingestion_time(&q) {
                // Processing-time windows: arrival time by the system clock.
                config = config.ingestion_time(tideline::time::clock::Clock::system());
            }
            let (sink, h, r, q, s) = (sink.clone(), h.clone(), Arc::clone(&r), q.clone(), s.clone());
            worker.dataflow::<Time, _, _>(move |scope| {
                let events = s.read(scope, config).data;
                let out = query(&q, events).expect("a known query");
                match &sink {
                    Some(sink) => sink.write(out, &h),
                    None => out.sink_with(&h, SinkParallelism::PerWorker, |_, _| Some(Count(r))),
                }
            });
            Ok::<(), String>(())
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
    match job.join().map(|workers| workers.map(|results| results.into_iter().collect::<Result<Vec<()>, String>>())) {
        Ok(Ok(Ok(_))) => {}
        Ok(Ok(Err(e))) => {
            eprintln!("nexmark: error: {e}");
            return ExitCode::FAILURE;
        }
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
