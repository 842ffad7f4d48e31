//! `window_agg`: windowed count, sum, min and max per key over a CSV file or stream of
//! events.
//!
//! ```text
//! window_agg [--input FILE.csv|-] [--output OUT.csv] [--late-output LATE.csv]
//!            (--tumbling 10s | --sliding 10s,2s | --session 30s)
//!            [--out-of-orderness 5s] [--allowed-lateness 0s] [--late drop|side|accept]
//!            [--emit final|updates] [--checkpoint-dir DIR [--checkpoint-interval 10s]]
//!            [-w N] [timely cluster flags]
//! ```
//!
//! Run `window_agg --help` for every flag.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use tideline::prelude::*;
use tideline::runtime::metrics::{SourceMetrics, StateMetrics};
use tideline::runtime::{Cluster, execute};
use tideline::sink::SinkHandle;
use tideline::source::{SourceConfig, memory};
use tideline::time::format_duration;
use tideline::time::late::LatePolicy;
use tideline::window::aggregate::AllStats;
use tideline_connectors::file::{FileSink, FileSource, SinkMode};
use tideline_examples::cli::{
    ClusterArgs, HelpFlag, duration, open_checkpoints, positive_duration, refuse_same_files, same_configuration,
    size_and_slide, usage_error, whole_number,
};
use tideline_examples::observe::ObserveArgs;
use tideline_examples::{DeadRow, InputRow, OutputRow, generated_partition};

/// window_agg: windowed count, sum, min and max per key over a CSV file of events, or over
/// standard input as an unbounded stream.
#[derive(Parser, Debug)]
#[command(
    name = "window_agg",
    version,
    disable_help_flag = true,
    override_usage = "window_agg [--input FILE.csv|-] [--output OUT.csv] [--late-output LATE.csv]
                  (--tumbling 10s | --sliding 10s,2s | --session 30s)
                  [--out-of-orderness 5s] [--allowed-lateness 0s] [--late drop|side|accept]
                  [--emit final|updates] [--checkpoint-dir DIR [--checkpoint-interval 10s]]
                  [-w N] [CLUSTER FLAGS]",
    group(clap::ArgGroup::new("window").args(["tumbling", "sliding", "session"]).multiple(false)),
    after_help = "Durations are a whole number with a unit: ms, s, m or h (e.g. 250ms, 10s, 5m, 1h)."
)]
struct Cli {
    #[command(flatten)]
    help: HelpFlag,

    /// CSV with the header event_time_ms,key,value (u64, string, i64); `-` (or a pipe) is read
    /// as an unbounded stream, and results are written as windows complete. Without --input, a
    /// built-in generated data set is used
    #[arg(long, value_name = "FILE.csv", help_heading = "Input")]
    input: Option<String>,
    /// Size of the built-in data set
    #[arg(long, value_name = "N", default_value_t = 1_000_000, value_parser = whole_number, help_heading = "Input")]
    events: u64,
    /// Write the built-in data set as CSV to FILE and exit
    #[arg(long, value_name = "FILE.csv", help_heading = "Input")]
    write_input: Option<String>,
    /// Write a bid-like data set of --events bids as CSV to FILE and exit: one bid per ms of
    /// event time, keyed by auction (10 000, half of the bids on a hot set of 100 that moves
    /// every minute), 5 % out of order by up to 5 s (for measurements)
    #[arg(long, value_name = "FILE.csv", help_heading = "Input", conflicts_with = "write_input")]
    write_bids: Option<String>,

    /// Tumbling windows of SIZE
    #[arg(long, value_name = "SIZE", value_parser = positive_duration, help_heading = "Windows (exactly one)")]
    tumbling: Option<Duration>,
    /// Sliding windows of SIZE, one starting every SLIDE (at most SIZE)
    #[arg(long, value_name = "SIZE,SLIDE", value_parser = size_and_slide, help_heading = "Windows (exactly one)")]
    sliding: Option<(Duration, Duration)>,
    /// Session windows per key, closed by GAP of inactivity: rows carry window_start_ms = first
    /// event, window_end_ms = last event + GAP
    #[arg(long, value_name = "GAP", value_parser = positive_duration, help_heading = "Windows (exactly one)")]
    session: Option<Duration>,

    /// Watermark = largest event time seen - D
    #[arg(long, value_name = "D", default_value = "5s", value_parser = duration, help_heading = "Time and late data")]
    out_of_orderness: Duration,
    /// What happens to late records — those too late for every window they belong to (each
    /// window's end + the allowed lateness already behind the watermark) [default: drop, or side
    /// with --late-output]
    #[arg(long, value_name = "POLICY", value_enum, help_heading = "Time and late data")]
    late: Option<LateArg>,
    /// A window takes records that arrive behind the watermark until the watermark passes its
    /// end + L: a window not yet emitted takes them silently, one already emitted is corrected (a
    /// retraction row and a new row, with a diff column in the output) [default: 0s]
    #[arg(long, value_name = "L", value_parser = duration, help_heading = "Time and late data")]
    allowed_lateness: Option<Duration>,
    /// final: one row per window and key, when complete; updates: every change of a window's
    /// result, with a diff column
    #[arg(long, value_name = "MODE", value_enum, default_value_t = EmitArg::Final, help_heading = "Time and late data")]
    emit: EmitArg,

    /// Results (default: standard output), header
    /// window_start_ms,window_end_ms,key,count,sum,min,max (and diff, for changelogs), written
    /// as they complete: in the order results complete (by result time), then by window start
    /// and key (for tumbling and sliding windows: by window, then key). A file is written as
    /// OUT.csv.partial and renamed to OUT.csv when complete
    #[arg(long, value_name = "OUT.csv", help_heading = "Output")]
    output: Option<String>,
    /// Late records, event_time_ms,key,value as read, written as they arrive: by the watermark
    /// they arrived at, then by event time, key and value
    #[arg(long, value_name = "LATE.csv", help_heading = "Output")]
    late_output: Option<String>,
    /// Malformed input lines: file,line,reason,raw, written when the input ends (default: a
    /// summary on stderr)
    #[arg(long, value_name = "FILE.csv", help_heading = "Output")]
    dead_letter_output: Option<String>,
    /// No progress or summary on stderr
    #[arg(long, help_heading = "Output")]
    quiet: bool,

    /// Checkpoint into DIR, and resume from its newest checkpoint when started again with the
    /// same flags: killed at any moment (even with SIGKILL), the run continues where its last
    /// checkpoint was, and its outputs end up identical to an uninterrupted run's. Needs
    /// --input FILE and --output FILE (regular files). The checkpoints are removed when the
    /// run completes
    #[arg(long, value_name = "DIR", help_heading = "Checkpoints")]
    checkpoint_dir: Option<String>,
    /// How often to checkpoint (processing time)
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = positive_duration, help_heading = "Checkpoints")]
    checkpoint_interval: Duration,

    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(flatten)]
    observe: ObserveArgs,
}

/// `--late`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LateArg {
    /// Count and drop them
    Drop,
    /// Write them to --late-output
    Side,
    /// The same as side (kept for older scripts: records within --allowed-lateness are always
    /// taken, late ones go to --late-output)
    Accept,
}

/// `--emit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum EmitArg {
    /// One row per window and key, when complete
    Final,
    /// Every change of a window's result, with a diff column
    Updates,
}

#[derive(Clone, Debug)]
enum WindowKind {
    Tumbling(Duration),
    Sliding(Duration, Duration),
    Session(Duration),
}

#[derive(Clone, Debug)]
struct Options {
    input: Option<String>,
    events: u64,
    write_input: Option<String>,
    write_bids: Option<String>,
    output: Option<String>,
    late_output: Option<String>,
    dead_letter_output: Option<String>,
    window: WindowKind,
    out_of_orderness: Duration,
    allowed_lateness: Duration,
    late: LatePolicy,
    emit: Emit,
    quiet: bool,
    checkpoint_dir: Option<String>,
    checkpoint_interval: Duration,
}

impl Cli {
    /// The options, once the flags agree with each other (a usage error otherwise).
    fn options(self) -> Result<Options, String> {
        let window = match (self.tumbling, self.sliding, self.session) {
            (Some(size), _, _) => WindowKind::Tumbling(size),
            (_, Some((size, slide)), _) => WindowKind::Sliding(size, slide),
            (_, _, Some(gap)) => WindowKind::Session(gap),
            // Only the data set matters; a window flag is not needed.
            _ if self.write_input.is_some() || self.write_bids.is_some() => {
                WindowKind::Tumbling(Duration::from_secs(1))
            }
            _ => return Err("choose a window: --tumbling SIZE, --sliding SIZE,SLIDE or --session GAP".into()),
        };
        let late = match self.late {
            None if self.late_output.is_some() => LatePolicy::SideOutput,
            None | Some(LateArg::Drop) => LatePolicy::Drop,
            Some(LateArg::Side | LateArg::Accept) => LatePolicy::SideOutput,
        };
        if self.late_output.is_some() && late == LatePolicy::Drop {
            return Err("--late drop and --late-output contradict each other: use --late side".into());
        }
        if self.checkpoint_dir.is_some() {
            match self.input.as_deref() {
                None | Some("-") => {
                    return Err("--checkpoint-dir needs --input FILE.csv: a run resumes by reading its input again \
                                from a checkpointed position (a generated data set or standard input cannot be)"
                        .into());
                }
                Some(_) => {}
            }
            if self.output.is_none() {
                return Err("--checkpoint-dir needs --output OUT.csv: a resumed run rewinds its output to the \
                            checkpoint, which standard output cannot do"
                    .into());
            }
        }
        if self.late_output.is_none() && late == LatePolicy::SideOutput {
            return Err("--late side needs --late-output LATE.csv to write the late records to (or --late drop to \
                        count and drop them)"
                .into());
        }
        Ok(Options {
            input: self.input,
            events: self.events,
            write_input: self.write_input,
            write_bids: self.write_bids,
            output: self.output,
            late_output: self.late_output,
            dead_letter_output: self.dead_letter_output,
            window,
            out_of_orderness: self.out_of_orderness,
            allowed_lateness: self.allowed_lateness.unwrap_or(Duration::ZERO),
            late,
            emit: match self.emit {
                EmitArg::Final => Emit::Final,
                EmitArg::Updates => Emit::Updates,
            },
            quiet: self.quiet,
            checkpoint_dir: self.checkpoint_dir,
            checkpoint_interval: self.checkpoint_interval,
        })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Logs (RUST_LOG, --log-format) and the metrics endpoint (--metrics-addr), for the whole run.
    let Some(_observability) = cli.observe.start("window_agg") else { return ExitCode::FAILURE };
    let cluster = cli.cluster.to_cluster().unwrap_or_else(|message| usage_error::<Cli>(message));
    if !cli.quiet
        && let Some(warning) = cli.cluster.oversubscription_warning()
    {
        eprintln!("window_agg: {warning}");
    }
    let options = cli.options().unwrap_or_else(|message| usage_error::<Cli>(message));
    // Before anything is read or written (issue 13, item 4).
    let files = [
        ("--input", options.input.as_deref()),
        ("--write-input", options.write_input.as_deref()),
        ("--write-bids", options.write_bids.as_deref()),
        ("--output", options.output.as_deref()),
        ("--late-output", options.late_output.as_deref()),
        ("--dead-letter-output", options.dead_letter_output.as_deref()),
    ];
    if let Err(message) = refuse_same_files(&files) {
        usage_error::<Cli>(message);
    }
    match run(cluster, options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("window_agg: error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// What decides `window_agg`'s results, to check that every process of a cluster agrees.
fn configuration(options: &Options) -> String {
    let input = match options.input.as_deref() {
        None => format!("the built-in data set of {} events", options.events),
        Some("-") => "standard input".to_string(),
        Some(path) => match std::fs::metadata(path) {
            Ok(meta) if meta.is_file() => format!("a file of {} bytes", meta.len()),
            _ => "a stream".to_string(),
        },
    };
    let window = match options.window {
        WindowKind::Tumbling(size) => format!("--tumbling {}", format_duration(size)),
        WindowKind::Sliding(size, slide) => format!("--sliding {},{}", format_duration(size), format_duration(slide)),
        WindowKind::Session(gap) => format!("--session {}", format_duration(gap)),
    };
    format!(
        "{window} --out-of-orderness {} --allowed-lateness {} --late {:?} --emit {:?} over {input}",
        format_duration(options.out_of_orderness),
        format_duration(options.allowed_lateness),
        options.late,
        options.emit
    )
}

/// A malformed line as shown on stderr: long lines are cut (the dead-letter output keeps them
/// whole).
fn shorten(text: &str) -> String {
    const SHOWN: usize = 120;
    if text.len() <= SHOWN {
        return format!("{text:?}");
    }
    let mut cut = SHOWN;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{:?}... ({} bytes in all)", &text[..cut], text.len())
}

/// Writes `rows` as `window_agg`'s input CSV.
fn write_rows(path: &str, rows: impl Iterator<Item = InputRow>) -> Result<(), String> {
    let file = std::fs::File::create(path).map_err(|e| format!("{path}: {e}"))?;
    let mut out = std::io::BufWriter::new(file);
    let io = |e: std::io::Error| format!("{path}: {e}");
    writeln!(out, "event_time_ms,key,value").map_err(io)?;
    for row in rows {
        writeln!(out, "{},{},{}", row.event_time_ms, row.key, row.value).map_err(io)?;
    }
    out.flush().map_err(io)
}

/// The built-in data set as one ordered stream, as a file is: its partitions round-robin.
fn generated_in_file_order(events: u64) -> impl Iterator<Item = InputRow> {
    let mut partitions: Vec<_> =
        (0..tideline_examples::GENERATED_PARTITIONS).map(|p| generated_partition(p, events)).collect();
    let mut next = 0;
    std::iter::from_fn(move || {
        for _ in 0..partitions.len() {
            let partition = next % partitions.len();
            next += 1;
            if let Some(row) = partitions[partition].next() {
                return Some(row);
            }
        }
        None
    })
}

fn run(cluster: Cluster, options: Options) -> Result<(), String> {
    if let Some(path) = &options.write_bids {
        write_rows(path, tideline_examples::bids(options.events))?;
        if !options.quiet {
            eprintln!("window_agg: wrote {} bids to {path}", options.events);
        }
        return Ok(());
    }
    if cluster.processes > 1 && options.output.is_none() && options.write_input.is_none() {
        return Err("with several processes (-n), give --output FILE: timely prints its connection \
                    messages on standard output"
            .into());
    }
    if let Some(path) = &options.write_input {
        write_rows(path, generated_in_file_order(options.events))?;
        if !options.quiet {
            eprintln!("window_agg: wrote {} events to {path}", options.events);
        }
        return Ok(());
    }
    let spec = match options.window {
        WindowKind::Tumbling(size) => Some(WindowSpec::tumbling(size)),
        WindowKind::Sliding(size, slide) => Some(WindowSpec::sliding(size, slide)),
        WindowKind::Session(_) => None,
    }
    .transpose()
    .map_err(|e| e.to_string())?;
    let session_gap = match options.window {
        WindowKind::Session(gap) => Some(gap),
        _ => None,
    };

    let files = match &options.input {
        Some(path) => Some(
            FileSource::<InputRow>::csv([path])
                .time_field("event_time_ms")
                .require_columns(["event_time_ms", "key", "value"])
                .build()
                .map_err(|e| e.to_string())?,
        ),
        None => None,
    };
    // Corrections are possible with an allowed lateness: the output is then a changelog.
    let changelog = !options.allowed_lateness.is_zero() || options.emit == Emit::Updates;
    let by_window_and_key =
        |a: &OutputRow, b: &OutputRow| (a.window_start_ms, &a.key).cmp(&(b.window_start_ms, &b.key));
    let output = match &options.output {
        Some(path) => FileSink::<OutputRow>::csv(path),
        None => FileSink::csv_stdout(),
    }
    .header(["window_start_ms", "window_end_ms", "key", "count", "sum", "min", "max"])
    .mode(if changelog { SinkMode::Changelog } else { SinkMode::AppendOnly })
    .sort_by(by_window_and_key)
    .name("output")
    .build()
    .map_err(|e| e.to_string())?;
    let late_output = match &options.late_output {
        Some(path) => Some(
            FileSink::<InputRow>::csv(path)
                .header(["event_time_ms", "key", "value"])
                .mode(SinkMode::AppendOnly)
                .sort_by(|a: &InputRow, b: &InputRow| a.cmp(b))
                .name("late-output")
                .build()
                .map_err(|e| e.to_string())?,
        ),
        None => None,
    };
    let dead_output = match &options.dead_letter_output {
        Some(path) => Some(
            FileSink::<DeadRow>::csv(path)
                .header(["file", "line", "reason", "raw"])
                .mode(SinkMode::Snapshot)
                .sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)))
                .name("dead-letter-output")
                .build()
                .map_err(|e| e.to_string())?,
        ),
        None => None,
    };

    // Checkpoints: one instance per directory (process 0 holds its lock for the whole run).
    let (checkpoints, _lock) = open_checkpoints(
        "window_agg",
        options.checkpoint_dir.as_deref(),
        options.checkpoint_interval,
        cluster.process,
        options.quiet,
    )?;
    let metrics = SourceMetrics::new(options.input.clone().unwrap_or_else(|| "generated".into()));
    let sinks = [SinkHandle::new("output"), SinkHandle::new("late-output"), SinkHandle::new("dead-letter-output")];
    let dead_letters = tideline::sink::Collected::new();
    let started = Instant::now();

    let state = StateMetrics::new();
    let worker_state = Arc::clone(&state);
    let worker_metrics = Arc::clone(&metrics);
    let worker_sinks = sinks.clone();
    let worker_dead = dead_letters.clone();
    let worker_checkpoints = checkpoints.clone();
    let opts = options.clone();
    let configuration = (cluster.processes > 1).then(|| configuration(&options));
    let guards = std::thread::spawn(move || {
        execute(&cluster, move |worker| {
            if let Some(configuration) = &configuration {
                same_configuration(worker, configuration)?;
            }
            let config = SourceConfig::new("input")
                .watermarks(WatermarkStrategy::bounded_out_of_orderness(opts.out_of_orderness))
                .metrics(Arc::clone(&worker_metrics));
            let window_state = Arc::clone(&worker_state);
            let (files, output, late_output, dead_output) =
                (files.clone(), output.clone(), late_output.clone(), dead_output.clone());
            let (sinks, dead_letters, opts) = (worker_sinks.clone(), worker_dead.clone(), opts.clone());
            let checkpoints = worker_checkpoints.clone();
            worker.dataflow::<Time, _, _>(move |scope| {
                if let Some(checkpoints) = &checkpoints {
                    checkpoints.install(scope);
                }
                let source = match &files {
                    Some(files) => files.read(scope, config),
                    None => {
                        let events = opts.events;
                        memory::from_generators(scope, config, tideline_examples::GENERATED_PARTITIONS, move |p| {
                            generated_partition(p as usize, events)
                        })
                    }
                };
                let events = source.data.map(InputRow::into_event);
                let options = Temporal {
                    emit: opts.emit,
                    allowed_lateness: tideline::time::millis(opts.allowed_lateness),
                    late: opts.late,
                    name: Some("window_agg".into()),
                    metrics: Some(window_state),
                };
                let (results, late) = match (spec, session_gap) {
                    (Some(spec), _) => events.windows(spec).options(options).aggregate_with_late(AllStats),
                    (None, Some(gap)) => events.sessions(gap).options(options).aggregate_with_late(AllStats),
                    (None, None) => unreachable!("a window kind was parsed"),
                };
                let results = results.map(OutputRow::from);
                output.write(results, &sinks[0]);
                if let Some(late_output) = &late_output {
                    late_output.write(late.map(InputRow::from_event), &sinks[1]);
                }
                let dead = source.dead_letters.map(|d| DeadRow {
                    raw: d.payload_text(),
                    file: d.source,
                    line: d.position,
                    reason: d.reason,
                });
                match &dead_output {
                    Some(sink) => sink.write(dead, &sinks[2]),
                    None => dead.collect_into(&dead_letters),
                }
            });
            Ok::<(), String>(())
        })
    });

    // Progress on stderr while the job runs (after the first second).
    let mut last = Instant::now();
    while !guards.is_finished() {
        std::thread::sleep(Duration::from_millis(50));
        if !options.quiet && last.elapsed() >= Duration::from_secs(1) {
            eprintln!("window_agg: {}", metrics.progress_line());
            last = Instant::now();
        }
    }
    let workers = guards.join().map_err(|_| "a worker thread panicked".to_string())?.map_err(|e| e.to_string())?;
    workers.into_iter().collect::<Result<Vec<()>, String>>()?;
    for sink in &sinks {
        sink.check().map_err(|e| e.to_string())?;
    }
    let errors = metrics.errors();
    if !errors.is_empty() {
        return Err(format!("the input was not read completely: {}", errors.join("; ")));
    }

    let totals = metrics.totals();
    let dead = dead_letters.contents();
    if !dead.is_empty() && !options.quiet {
        eprintln!("window_agg: {} malformed line(s) skipped (see --dead-letter-output):", totals.dead_letters);
        for (row, _) in dead.iter().take(5) {
            eprintln!("  {}:{}: {}: {}", row.file, row.line, shorten(&row.reason), shorten(&row.raw));
        }
    }
    if !options.quiet {
        let elapsed = started.elapsed().as_secs_f64();
        let late = match options.late {
            LatePolicy::Drop => format!("{} late dropped", state.late_skipped()),
            LatePolicy::SideOutput => format!("{} late to the side output", state.late_skipped()),
        };
        let late = format!("{} behind the watermark, {late}", totals.behind_watermark);
        eprintln!(
            "window_agg: {} events in {:.2}s ({:.0} events/s), {}, {} malformed",
            totals.records,
            elapsed,
            totals.records as f64 / elapsed.max(1e-9),
            late,
            totals.dead_letters
        );
    }
    Ok(())
}
