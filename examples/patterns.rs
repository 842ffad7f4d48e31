//! `patterns`: sequence-pattern detection per key with a keyed process function — "N failed
//! logins, then a success, within T" (a brute-force attempt that worked).
//!
//! ```text
//! patterns --input LOGINS.csv [--output ALERTS.csv] [--failures 3] [--within 60s]
//!          [--out-of-orderness 5s] [-w N] [--checkpoint-dir DIR [--checkpoint-interval 10s]]
//! ```
//!
//! The input has the header `event_time_ms,user,outcome` (`outcome`: `fail` or `ok`). For each
//! successful login preceded by at least `--failures` failed ones of the same user less than
//! `--within` before it, with no success in between, the output has one row
//! `user,first_failure_ms,success_ms,failures`. The recipe — a state machine per key with a
//! timer that forgets what is too old — is in `docs/operators.md` ("Sequence patterns").
//!
//! With `--checkpoint-dir`, checkpoints hold each user's state machine and timers (process
//! function state is serde data): killed and started again, the run resumes from them and
//! reads the input again only from the checkpoint's time.

use std::collections::VecDeque;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use serde::{Deserialize, Serialize};
use tideline::keyed::process::{Context, KeyedProcessFunction, Process};
use tideline::prelude::*;
use tideline::runtime::execute;
use tideline::sink::SinkHandle;
use tideline::source::SourceConfig;
use tideline_connectors::file::{FileSink, FileSource, SinkMode};
use tideline_examples::cli::{
    ClusterArgs, HelpFlag, at_least_one, duration, open_checkpoints, positive_duration, usage_error,
};
use tideline_examples::observe::ObserveArgs;

/// patterns: N failed logins, then a success, within T, per user.
#[derive(Parser, Debug)]
#[command(
    name = "patterns",
    version,
    disable_help_flag = true,
    override_usage = "patterns --input LOGINS.csv [--output ALERTS.csv] [--failures 3] [--within 60s] [-w N] \
                      [--checkpoint-dir DIR [--checkpoint-interval 10s]]"
)]
struct Cli {
    #[command(flatten)]
    help: HelpFlag,
    /// CSV with the header event_time_ms,user,outcome (outcome: fail or ok)
    #[arg(long, value_name = "LOGINS.csv", required = true)]
    input: String,
    /// Alerts (default: standard output): user,first_failure_ms,success_ms,failures
    #[arg(long, value_name = "ALERTS.csv")]
    output: Option<String>,
    /// Failed logins that must precede the success
    #[arg(long, value_name = "N", default_value = "3", value_parser = at_least_one)]
    failures: usize,
    /// How far back before the success the failures count
    #[arg(long, value_name = "T", default_value = "60s", value_parser = positive_duration)]
    within: Duration,
    /// Watermark = largest event time seen - D
    #[arg(long, value_name = "D", default_value = "5s", value_parser = duration)]
    out_of_orderness: Duration,
    /// Checkpoint into DIR, and resume from its newest checkpoint when started again with the
    /// same flags (needs --output ALERTS.csv); removed when the run completes
    #[arg(long, value_name = "DIR")]
    checkpoint_dir: Option<String>,
    /// How often to checkpoint (processing time)
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = positive_duration)]
    checkpoint_interval: Duration,
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(flatten)]
    observe: ObserveArgs,
}

/// A line of the input.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct Login {
    event_time_ms: Time,
    user: String,
    outcome: String,
}

impl EventTime for Login {
    fn event_time(&self) -> Time {
        self.event_time_ms
    }
}

/// A row of the output.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct Alert {
    user: String,
    first_failure_ms: Time,
    success_ms: Time,
    failures: u64,
}

/// The pattern as a state machine per user: the failed logins still within reach, in order;
/// a success with enough of them before it raises an alert and starts over; a timer forgets
/// failures once they are too old, and the user with them.
struct BruteForce {
    failures: usize,
    within: Time,
}

/// A user's failed logins less than `within` old.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Recent {
    failed: VecDeque<Time>,
}

impl KeyedProcessFunction<String, bool> for BruteForce {
    type State = Recent;
    type Output = Alert;

    fn on_event(&self, event: &Event<String, bool>, state: &mut Recent, ctx: &mut Context<'_, String, Alert>) {
        // Failures at least `within` before this event no longer count.
        while state.failed.front().is_some_and(|f| f + self.within <= event.time) {
            state.failed.pop_front();
        }
        if event.value {
            if state.failed.len() >= self.failures {
                ctx.emit(Alert {
                    user: event.key.clone(),
                    first_failure_ms: state.failed[0],
                    success_ms: event.time,
                    failures: state.failed.len() as u64,
                });
            }
            // A success starts over.
            ctx.clear();
        } else {
            state.failed.push_back(event.time);
            ctx.set_timer(event.time + self.within);
        }
    }

    fn on_timer(&self, at: Time, _key: &String, state: &mut Recent, ctx: &mut Context<'_, String, Alert>) {
        while state.failed.front().is_some_and(|f| f + self.within <= at) {
            state.failed.pop_front();
        }
        if state.failed.is_empty() {
            ctx.clear();
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(_observability) = cli.observe.start("patterns") else { return ExitCode::FAILURE };
    let cluster = cli.cluster.to_cluster().unwrap_or_else(|message| usage_error::<Cli>(message));
    match run(cluster, &cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("patterns: error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(cluster: tideline::runtime::Cluster, cli: &Cli) -> Result<(), String> {
    if cli.checkpoint_dir.is_some() && cli.output.is_none() {
        return Err("--checkpoint-dir needs --output ALERTS.csv: a resumed run rewinds its output to the checkpoint, \
                    which standard output cannot do"
            .into());
    }
    let (checkpoints, _lock) =
        open_checkpoints("patterns", cli.checkpoint_dir.as_deref(), cli.checkpoint_interval, cluster.process, false)?;
    let input = FileSource::<Login>::csv([&cli.input])
        .require_columns(["event_time_ms", "user", "outcome"])
        .build()
        .map_err(|e| e.to_string())?;
    let output = match &cli.output {
        Some(path) => FileSink::<Alert>::csv(path),
        None => FileSink::csv_stdout(),
    }
    .header(["user", "first_failure_ms", "success_ms", "failures"])
    .mode(SinkMode::AppendOnly)
    .name("alerts")
    .build()
    .map_err(|e| e.to_string())?;
    let handle = SinkHandle::new("alerts");
    let (failures, within) = (cli.failures, tideline::time::millis(cli.within));
    let watermarks = WatermarkStrategy::bounded_out_of_orderness(cli.out_of_orderness);
    let sink = handle.clone();
    let outcome = execute(&cluster, move |worker| {
        let (input, output, sink, watermarks) = (input.clone(), output.clone(), sink.clone(), watermarks.clone());
        let checkpoints = checkpoints.clone();
        worker.dataflow::<Time, _, _>(move |scope| {
            if let Some(checkpoints) = &checkpoints {
                checkpoints.install(scope);
            }
            let logins = input.read(scope, SourceConfig::new("logins").watermarks(watermarks)).data;
            let alerts = logins
                .map(|l| Event::new(l.event_time_ms, l.user, l.outcome == "ok"))
                .process(BruteForce { failures, within })
                .name("brute-force")
                .build();
            output.write(alerts, &sink);
        });
        Ok::<(), String>(())
    })
    .map_err(|e| e.to_string())?;
    outcome.into_iter().collect::<Result<Vec<()>, String>>()?;
    handle.check().map_err(|e| e.to_string())?;
    Ok(())
}
