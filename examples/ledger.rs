//! `ledger`: an event-sourced account ledger, the stream–table duality at work.
//!
//! ```text
//! ledger [--events N] [--accounts N] [--rebuild-workers N] [-w N]
//! ```
//!
//! Streams a generated log of deposits and withdrawals into a dataflow that keeps each
//! account's balance as a table, published to a read model. While the log streams in, another
//! thread queries the read model and prints each answer with the event time it is consistent
//! with. Then the balances are rebuilt by replaying the log from the start (on a different
//! number of workers) and compared. See `docs/stream-table-duality.md`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tideline::table::read_model::ReadModel;
use tideline::{Error, Time};
use tideline_examples::cli::{ClusterArgs, HelpFlag, at_least_one, usage_error};
use tideline_examples::ledger::{self, LOG_START, Pace, account, balances_before, event_log, overdrafts_of};
use tideline_examples::observe::ObserveArgs;

/// ledger: an event-sourced account ledger with a queryable balance read model.
#[derive(Parser, Debug)]
#[command(
    name = "ledger",
    version,
    disable_help_flag = true,
    override_usage = "ledger [--events N] [--accounts N] [--rebuild-workers N] [-w N]"
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
    let _observability = match cli.observe.install() {
        Ok(observability) => observability,
        Err(error) => {
            eprintln!("ledger: error: {error}");
            return ExitCode::FAILURE;
        }
    };
    let cluster = cli.cluster.to_cluster().unwrap_or_else(|message| usage_error::<Cli>(message));
    if cluster.processes > 1 {
        usage_error::<Cli>("ledger runs in one process (-n 1): its read model is queried in-process");
    }
    let workers = cluster.workers;
    if let Some(warning) = cli.cluster.oversubscription_warning() {
        eprintln!("ledger: {warning}");
    }
    let rebuild_workers = cli.rebuild_workers.unwrap_or(workers + 1);
    match run(workers, cli.events, cli.accounts, rebuild_workers) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ledger: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(workers: usize, events: usize, accounts: usize, rebuild_workers: usize) -> tideline::Result<()> {
    let log = Arc::new(event_log(events, accounts));

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
    let overdrafts = ledger::run(Arc::clone(&log), workers, live, &balances)?;
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
    if final_balances.value != balances_before(&log, None) || overdrafts != overdrafts_of(&log) {
        return Err(Error::Internal("the live run disagrees with the log".into()));
    }

    // ANCHOR: rebuild
    // Rebuild: replay the log from the start into a fresh read model.
    let rebuilt: ReadModel<String, i64> = ReadModel::new();
    ledger::run(Arc::clone(&log), rebuild_workers, Pace::Replay, &rebuilt)?;
    if rebuilt.snapshot().value != final_balances.value {
        return Err(Error::Internal("the rebuild gave different balances".into()));
    }
    // ANCHOR_END: rebuild
    println!("rebuilt from the start of the log on {rebuild_workers} workers: identical balances");
    Ok(())
}
