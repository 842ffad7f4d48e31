//! `ledger`: an event-sourced account ledger, the stream–table duality at work.
//!
//! ```text
//! ledger [--events N] [--accounts N] [--log FILE.jsonl] [--rebuild-workers N] [-w N]
//! ledger --write-log FILE.jsonl [--v1-every N] [--events N] [--accounts N]
//! ```
//!
//! Streams a generated log of deposits and withdrawals into a dataflow that keeps each
//! account's balance as a table, published to a read model. While the log streams in, another
//! thread queries the read model and prints each answer with the event time it is consistent
//! with. Then the balances are rebuilt by replaying the log from the start (on a different
//! number of workers) and compared. See `docs/stream-table-duality.md`.
//!
//! The log can be written to and read from JSON lines of versioned events
//! (`tideline_examples::ledger::schema`): `--write-log` writes the generated log, with every
//! `--v1-every`-th event in the old version 1; `--log` reads such a file, upcasting version-1
//! events and sending lines it cannot decode (an unknown version) to the dead letters, which it
//! prints. See "Schema evolution" in `docs/stream-table-duality.md`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tideline::table::read_model::ReadModel;
use tideline::{Error, Time};
use tideline_examples::cli::{ClusterArgs, HelpFlag, at_least_one, usage_error};
use tideline_examples::ledger::schema::{self, log_lines};
use tideline_examples::ledger::{
    self, LOG_START, LedgerEvent, LinesRun, Pace, account, balances_before, event_log, overdrafts_of,
};
use tideline_examples::observe::ObserveArgs;

/// ledger: an event-sourced account ledger with a queryable balance read model.
#[derive(Parser, Debug)]
#[command(
    name = "ledger",
    version,
    disable_help_flag = true,
    override_usage = "ledger [--events N] [--accounts N] [--log FILE.jsonl] [--rebuild-workers N] [-w N]\n       \
                      ledger --write-log FILE.jsonl [--v1-every N] [--events N] [--accounts N]"
)]
struct Cli {
    #[command(flatten)]
    help: HelpFlag,

    /// Events in the generated log
    #[arg(long, value_name = "N", default_value_t = 20_000, value_parser = at_least_one)]
    events: usize,
    /// Accounts
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = at_least_one)]
    accounts: usize,
    /// Workers of the rebuild from the start of the log [default: -w + 1]
    #[arg(long, value_name = "N", value_parser = at_least_one)]
    rebuild_workers: Option<usize>,

    /// Read the event log from FILE instead of generating it: JSON lines, one event each, with a
    /// "version" field (1: signed "amount_cents"; 2: "movement"). Version-1 events are upcast;
    /// a line that does not decode (an unknown version, no version, a bad body) is a dead
    /// letter, printed with its line number and the reason
    #[arg(long, value_name = "FILE.jsonl", help_heading = "Log file", conflicts_with_all = ["events", "write_log"])]
    log: Option<String>,
    /// Write the generated event log (--events, --accounts) to FILE as JSON lines and exit
    #[arg(long, value_name = "FILE.jsonl", help_heading = "Log file")]
    write_log: Option<String>,
    /// With --write-log: write every N-th event (the 1st, the N+1-th, ...) in version 1, the old
    /// schema, and the others in version 2 [default: all in version 2]
    #[arg(long, value_name = "N", value_parser = at_least_one, requires = "write_log", help_heading = "Log file")]
    v1_every: Option<usize>,

    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(flatten)]
    observe: ObserveArgs,
}

fn cents(amount: i64) -> String {
    format!("{}{}.{:02}", if amount < 0 { "-" } else { "" }, amount.abs() / 100, amount.abs() % 100)
}

/// What an answer with this frontier reflects.
fn at(frontier: Option<Time>) -> String {
    match frontier {
        Some(f) if f <= LOG_START => "before the first event".to_string(),
        Some(f) => format!("events before +{:.2}s", (f - LOG_START) as f64 / 1_000.0),
        None => "the whole log".to_string(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Logs (RUST_LOG, --log-format) and the metrics endpoint (--metrics-addr), for the whole run.
    let Some(_observability) = cli.observe.start("ledger") else { return ExitCode::FAILURE };
    let cluster = cli.cluster.to_cluster().unwrap_or_else(|message| usage_error::<Cli>(message));
    if cluster.processes > 1 {
        usage_error::<Cli>("ledger runs in one process (-n 1): its read model is queried in-process");
    }
    let workers = cluster.workers;
    if let Some(warning) = cli.cluster.oversubscription_warning() {
        eprintln!("ledger: {warning}");
    }
    let rebuild_workers = cli.rebuild_workers.unwrap_or(workers + 1);
    if let Some(path) = &cli.write_log {
        let log = event_log(cli.events, cli.accounts);
        let mut text = log_lines(&log, cli.v1_every).join("\n");
        text.push('\n');
        return match std::fs::write(path, text) {
            Ok(()) => {
                eprintln!("ledger: wrote {} events to {path}", log.len());
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("ledger: cannot write {path}: {error}");
                ExitCode::FAILURE
            }
        };
    }
    let log = match &cli.log {
        None => Log::Generated(Arc::new(event_log(cli.events, cli.accounts))),
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => Log::File { path: path.clone(), lines: Arc::new(text.lines().map(String::from).collect()) },
            Err(error) => {
                eprintln!("ledger: cannot read {path}: {error}");
                return ExitCode::FAILURE;
            }
        },
    };
    match run(workers, &log, cli.accounts, rebuild_workers) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ledger: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Where the log comes from.
enum Log {
    /// Generated (`--events`, `--accounts`).
    Generated(Arc<Vec<LedgerEvent>>),
    /// Read from a file of versioned JSON lines (`--log`).
    File { path: String, lines: Arc<Vec<String>> },
}

impl Log {
    /// The events, decoded (what the results are checked against).
    fn events(&self) -> Vec<LedgerEvent> {
        match self {
            Log::Generated(events) => events.to_vec(),
            Log::File { lines, .. } => lines.iter().filter_map(|line| schema::decode(line).ok()).collect(),
        }
    }

    /// Runs the ledger over the log: the overdrafts and the lines that did not decode.
    fn run(&self, workers: usize, pace: Pace, balances: &ReadModel<String, i64>) -> tideline::Result<LinesRun> {
        match self {
            Log::Generated(events) => {
                let overdrafts = ledger::run(Arc::clone(events), workers, pace, balances)?;
                Ok(LinesRun { overdrafts, dead_letters: Vec::new() })
            }
            Log::File { path, lines } => ledger::run_lines(path, Arc::clone(lines), workers, pace, balances),
        }
    }
}

fn run(workers: usize, input: &Log, accounts: usize, rebuild_workers: usize) -> tideline::Result<()> {
    let log = input.events();

    // ANCHOR: query
    // The read side: a thread queries the balances while the log streams in.
    let balances: ReadModel<String, i64> = ReadModel::new();
    let queries = {
        let balances = balances.clone();
        let watched = account(7 % accounts);
        std::thread::spawn(move || {
            let mut answers = 0;
            loop {
                // Each answer says which frontier it is consistent with.
                let balance = balances.get(&watched);
                let shown = balance.value.map_or("no account yet".to_string(), cents);
                println!("query: {watched} = {shown} ({})", at(balance.frontier));
                let scan = balances.prefix("acct-00");
                let total: i64 = scan.value.iter().map(|(_, b)| b).sum();
                println!(
                    "query: {} accounts acct-00x, total {} ({})",
                    scan.value.len(),
                    cents(total),
                    at(scan.frontier)
                );
                answers += 2;
                if scan.frontier.is_none() {
                    return answers;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    // ANCHOR_END: query
    let live = Pace::Live { events: 400, pause: Duration::from_millis(5) };
    let LinesRun { overdrafts, dead_letters } = input.run(workers, live, &balances)?;
    let answers = queries.join().map_err(|_| Error::Internal("the query thread panicked".into()))?;

    let final_balances = balances.snapshot();
    let total: i64 = final_balances.value.iter().map(|(_, b)| b).sum();
    println!(
        "live run on {} workers: {} events, {} accounts, total balance {}, {} overdrafts, {answers} read-model answers",
        workers,
        log.len(),
        final_balances.value.len(),
        cents(total),
        overdrafts.len()
    );
    for (withdrawal, balance) in overdrafts.iter().take(3) {
        println!(
            "overdraft: {} left {} at +{:.2}s",
            withdrawal.key,
            cents(*balance),
            (withdrawal.time - LOG_START) as f64 / 1_000.0
        );
    }
    if let Log::File { path, .. } = input {
        println!("{path}: {} events decoded, {} dead letters", log.len(), dead_letters.len());
        for letter in &dead_letters {
            println!("dead letter: {letter}");
        }
    }
    if final_balances.value != balances_before(&log, None) || overdrafts != overdrafts_of(&log) {
        return Err(Error::Internal("the live run disagrees with the log".into()));
    }

    // ANCHOR: rebuild
    // Rebuild: replay the log from the start into a fresh read model.
    let rebuilt: ReadModel<String, i64> = ReadModel::new();
    let replayed = input.run(rebuild_workers, Pace::Replay, &rebuilt)?;
    if rebuilt.snapshot().value != final_balances.value || replayed.dead_letters != dead_letters {
        return Err(Error::Internal("the rebuild gave different balances or dead letters".into()));
    }
    // ANCHOR_END: rebuild
    println!("rebuilt from the start of the log on {rebuild_workers} workers: identical balances");
    Ok(())
}
