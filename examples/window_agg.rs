//! `window_agg`: windowed count, sum, min and max per key over a CSV file of events.
//!
//! ```text
//! window_agg --input FILE.csv [--output OUT.csv] [--late-output LATE.csv]
//!            (--tumbling 10s | --sliding 10s,2s | --session 30s)
//!            [--out-of-orderness 5s] [--allowed-lateness 0s] [--late drop|side|accept]
//!            [--emit final|updates] [-w N] [timely cluster flags]
//! ```
//!
//! Run `window_agg --help` for every flag.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tideline::prelude::*;
use tideline::runtime::metrics::SourceMetrics;
use tideline::runtime::{CLUSTER_FLAGS_HELP, Cluster, execute};
use tideline::sink::SinkHandle;
use tideline::source::{SourceConfig, memory};
use tideline::time::late::LatePolicy;
use tideline::time::{format_duration, parse_duration};
use tideline::window::aggregate::AllStats;
use tideline_connectors::file::{FileSink, FileSource, SinkMode};
use tideline_examples::{DeadRow, InputRow, LateRow, OutputRow, generated_partition};

const USAGE: &str = "\
window_agg: windowed count, sum, min and max per key over a CSV file of events.

USAGE:
  window_agg --input FILE.csv [--output OUT.csv] [--late-output LATE.csv]
             (--tumbling 10s | --sliding 10s,2s | --session 30s)
             [--out-of-orderness 5s] [--allowed-lateness 0s] [--late drop|side|accept]
             [--emit final|updates] [-w N] [timely cluster flags]

INPUT:
  --input FILE.csv          CSV with the header event_time_ms,key,value (u64, string, i64).
                            Without --input, a built-in generated data set is used.
  --events N                size of the built-in data set (default 1000000)
  --write-input FILE.csv    write the built-in data set as CSV to FILE and exit

WINDOWS (exactly one):
  --tumbling SIZE           tumbling windows of SIZE
  --sliding SIZE,SLIDE      sliding windows of SIZE, one starting every SLIDE
  --session GAP             session windows per key, closed by GAP of inactivity: rows carry
                            window_start_ms = first event, window_end_ms = last event + GAP

TIME AND LATE DATA:
  --out-of-orderness D      watermark = largest event time seen - D (default 5s)
  --late POLICY             what happens to records behind the watermark:
                              drop    count and drop them (default without --late-output)
                              side    write them to --late-output (default with it)
                              accept  accept them up to --allowed-lateness behind the
                                      watermark and correct the windows (retraction row and
                                      new row, with a diff column); older ones go to the side
  --allowed-lateness L      with --late accept (default 0s)
  --emit MODE               final (default): one row per window and key, when complete;
                            updates: every change of a window's result, with a diff column

OUTPUT:
  --output OUT.csv          results (default: standard output), header
                            window_start_ms,window_end_ms,key,count,sum,min,max[,diff],
                            written as they complete: in the order results complete (by
                            result time), then by window start and key (for tumbling and
                            sliding windows: by window, then key); a file is written as
                            OUT.csv.partial and renamed to OUT.csv when complete
  --late-output LATE.csv    late records not accepted, in input order (per input partition),
                            written as they arrive
  --dead-letter-output F    malformed input lines: file,line,reason,raw, written when the input
                            ends (default: summary on stderr)
  --quiet                   no progress or summary on stderr

Durations are a whole number with a unit: ms, s, m or h (e.g. 250ms, 10s, 5m, 1h).

CLUSTER (timely):
";

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
    output: Option<String>,
    late_output: Option<String>,
    dead_letter_output: Option<String>,
    window: WindowKind,
    out_of_orderness: Duration,
    allowed_lateness: Duration,
    late: LatePolicy,
    emit: Emit,
    quiet: bool,
}

/// A usage error: printed with a hint, exit code 2.
struct Usage(String);

fn parse(args: Vec<String>) -> Result<Option<Options>, Usage> {
    let mut input = None;
    let mut events = 1_000_000u64;
    let mut write_input = None;
    let mut output = None;
    let mut late_output = None;
    let mut dead_letter_output = None;
    let mut windows: Vec<(String, String)> = Vec::new();
    let mut out_of_orderness = Duration::from_secs(5);
    let mut allowed_lateness = None;
    let mut late = None;
    let mut emit = Emit::Final;
    let mut quiet = false;

    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| -> Result<String, Usage> {
            inline.clone().or_else(|| args.next()).ok_or_else(|| Usage(format!("{name} needs a value")))
        };
        let duration = |name: &str, text: String| parse_duration(&text).map_err(|e| Usage(format!("{name}: {e}")));
        match flag.as_str() {
            "--help" => return Ok(None),
            "--input" => input = Some(value("--input")?),
            "--events" => {
                let text = value("--events")?;
                events = text.parse().map_err(|_| Usage(format!("--events expects a whole number, got {text:?}")))?;
            }
            "--write-input" => write_input = Some(value("--write-input")?),
            "--output" => output = Some(value("--output")?),
            "--late-output" => late_output = Some(value("--late-output")?),
            "--dead-letter-output" => dead_letter_output = Some(value("--dead-letter-output")?),
            "--tumbling" | "--sliding" | "--session" => windows.push((flag.clone(), value(&flag)?)),
            "--out-of-orderness" => out_of_orderness = duration("--out-of-orderness", value("--out-of-orderness")?)?,
            "--allowed-lateness" => {
                allowed_lateness = Some(duration("--allowed-lateness", value("--allowed-lateness")?)?)
            }
            "--late" => late = Some(value("--late")?),
            "--emit" => {
                emit = match value("--emit")?.as_str() {
                    "final" => Emit::Final,
                    "updates" => Emit::Updates,
                    other => return Err(Usage(format!("--emit expects final or updates, got {other:?}"))),
                }
            }
            "--quiet" => quiet = true,
            other if other.starts_with('-') => return Err(Usage(format!("unknown flag {other}"))),
            other => return Err(Usage(format!("unexpected argument {other:?}"))),
        }
    }

    if write_input.is_some() {
        // Only the data set matters; a window flag is not needed.
        windows.push(("--tumbling".into(), "1s".into()));
    }
    let window = match windows.as_slice() {
        [] => return Err(Usage("choose a window: --tumbling SIZE, --sliding SIZE,SLIDE or --session GAP".into())),
        [(flag, text)] => match flag.as_str() {
            "--tumbling" => WindowKind::Tumbling(duration_arg(flag, text)?),
            "--sliding" => {
                let (size, slide) = text
                    .split_once(',')
                    .ok_or_else(|| Usage(format!("--sliding expects SIZE,SLIDE (e.g. 10s,2s), got {text:?}")))?;
                WindowKind::Sliding(duration_arg(flag, size)?, duration_arg(flag, slide)?)
            }
            _ => WindowKind::Session(duration_arg(flag, text)?),
        },
        [_, _, ..] if write_input.is_none() => {
            return Err(Usage("choose only one of --tumbling, --sliding and --session".into()));
        }
        _ => WindowKind::Tumbling(Duration::from_secs(1)),
    };
    let policy = match late.as_deref() {
        None if late_output.is_some() => LatePolicy::SideOutput,
        None | Some("drop") => LatePolicy::Drop,
        Some("side") => LatePolicy::SideOutput,
        Some("accept") => LatePolicy::Accept { allowed_lateness: allowed_lateness.unwrap_or(Duration::ZERO) },
        Some(other) => return Err(Usage(format!("--late expects drop, side or accept, got {other:?}"))),
    };
    if allowed_lateness.is_some() && !matches!(policy, LatePolicy::Accept { .. }) && !quiet {
        eprintln!("window_agg: note: --allowed-lateness only matters with --late accept");
    }
    if late_output.is_some() && policy == LatePolicy::Drop {
        return Err(Usage("--late drop and --late-output contradict each other: use --late side or accept".into()));
    }
    if late_output.is_none() && policy == LatePolicy::SideOutput {
        return Err(Usage(
            "--late side needs --late-output LATE.csv to write the late records to (or --late drop to count and drop them)"
                .into(),
        ));
    }
    Ok(Some(Options {
        input,
        events,
        write_input,
        output,
        late_output,
        dead_letter_output,
        window,
        out_of_orderness,
        allowed_lateness: allowed_lateness.unwrap_or(Duration::ZERO),
        late: policy,
        emit,
        quiet,
    }))
}

fn duration_arg(flag: &str, text: &str) -> Result<Duration, Usage> {
    let d = parse_duration(text).map_err(|e| Usage(format!("{flag}: {e}")))?;
    if d.is_zero() {
        let what = if flag == "--session" { "a session gap" } else { "a window" };
        return Err(Usage(format!("{flag}: {what} must be at least 1ms long")));
    }
    Ok(d)
}

fn main() -> ExitCode {
    let (cluster, args) = match Cluster::from_args(std::env::args().skip(1)) {
        Ok(parsed) => parsed,
        Err(error) => return usage_error(&error.to_string()),
    };
    let options = match parse(args) {
        Ok(Some(options)) => options,
        Ok(None) => {
            println!("{USAGE}{CLUSTER_FLAGS_HELP}");
            return ExitCode::SUCCESS;
        }
        Err(Usage(message)) => return usage_error(&message),
    };
    match run(cluster, options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("window_agg: error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("window_agg: {message}\nRun window_agg --help for usage.");
    ExitCode::from(2)
}

fn write_generated(path: &str, events: u64) -> Result<(), String> {
    let file = std::fs::File::create(path).map_err(|e| format!("{path}: {e}"))?;
    let mut out = std::io::BufWriter::new(file);
    let io = |e: std::io::Error| format!("{path}: {e}");
    writeln!(out, "event_time_ms,key,value").map_err(io)?;
    // Interleave the partitions round-robin: one ordered stream, as a file is.
    let mut partitions: Vec<_> =
        (0..tideline_examples::GENERATED_PARTITIONS).map(|p| generated_partition(p, events)).collect();
    let mut live = partitions.len();
    while live > 0 {
        live = 0;
        for partition in &mut partitions {
            if let Some(row) = partition.next() {
                live += 1;
                writeln!(out, "{},{},{}", row.event_time_ms, row.key, row.value).map_err(io)?;
            }
        }
    }
    out.flush().map_err(io)
}

fn run(cluster: Cluster, options: Options) -> Result<(), String> {
    if cluster.processes > 1 && options.output.is_none() && options.write_input.is_none() {
        return Err("with several processes (-n), give --output FILE: timely prints its connection \
                    messages on standard output"
            .into());
    }
    if let Some(path) = &options.write_input {
        write_generated(path, options.events)?;
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
    let changelog = matches!(options.late, LatePolicy::Accept { .. }) || options.emit == Emit::Updates;
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
            FileSink::<LateRow>::csv(path)
                .header(["event_time_ms", "key", "value"])
                .mode(SinkMode::AppendOnly)
                .write_as(|late: &LateRow| late.row.clone())
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

    let metrics = SourceMetrics::new(options.input.clone().unwrap_or_else(|| "generated".into()));
    let sinks = [SinkHandle::new("output"), SinkHandle::new("late-output"), SinkHandle::new("dead-letter-output")];
    let dead_letters = tideline::sink::Collected::new();
    let started = Instant::now();

    let worker_metrics = Arc::clone(&metrics);
    let worker_sinks = sinks.clone();
    let worker_dead = dead_letters.clone();
    let opts = options.clone();
    let guards = std::thread::spawn(move || {
        execute(&cluster, move |worker| {
            let config = SourceConfig::new("input")
                .watermarks(WatermarkStrategy::bounded_out_of_orderness(opts.out_of_orderness))
                .late(opts.late)
                .metrics(Arc::clone(&worker_metrics));
            let (files, output, late_output, dead_output) =
                (files.clone(), output.clone(), late_output.clone(), dead_output.clone());
            let (sinks, dead_letters, opts) = (worker_sinks.clone(), worker_dead.clone(), opts.clone());
            worker.dataflow::<Time, _, _>(move |scope| {
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
                let results = match (spec, session_gap) {
                    (Some(spec), _) => events
                        .windows(spec)
                        .emit(opts.emit)
                        .allowed_lateness(opts.allowed_lateness)
                        .name("window_agg")
                        .aggregate(AllStats),
                    (None, Some(gap)) => events
                        .sessions(gap)
                        .emit(opts.emit)
                        .allowed_lateness(opts.allowed_lateness)
                        .name("window_agg sessions")
                        .aggregate(AllStats),
                    (None, None) => unreachable!("a window kind was parsed"),
                };
                let results = results.map(|r| OutputRow {
                    window_start_ms: r.window.start,
                    window_end_ms: r.window.end,
                    key: r.key,
                    count: r.value.count,
                    sum: r.value.sum,
                    min: r.value.min,
                    max: r.value.max,
                });
                output.write(results, &sinks[0]);
                if let Some(late_output) = &late_output {
                    let late =
                        source.late.map(|l| LateRow { partition: l.partition, position: l.position, row: l.record });
                    late_output.write(late, &sinks[1]);
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
    guards.join().map_err(|_| "a worker thread panicked".to_string())?.map_err(|e| e.to_string())?;
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
            eprintln!("  {}:{}: {}: {:?}", row.file, row.line, row.reason, row.raw);
        }
    }
    if !options.quiet {
        let elapsed = started.elapsed().as_secs_f64();
        let late = match options.late {
            LatePolicy::Drop => format!("{} late dropped", totals.late_dropped),
            LatePolicy::SideOutput => format!("{} late to the side output", totals.late_side_output),
            LatePolicy::Accept { allowed_lateness } => format!(
                "{} late accepted within {}, {} too late {}",
                totals.late_accepted,
                format_duration(allowed_lateness),
                totals.late_side_output,
                if options.late_output.is_some() {
                    "to the side output"
                } else {
                    "and not written anywhere (add --late-output LATE.csv to keep them)"
                }
            ),
        };
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
