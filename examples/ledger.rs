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

use tideline::runtime::{CLUSTER_FLAGS_HELP, Cluster};
use tideline::table::read_model::ReadModel;
use tideline::{Error, Time};
use tideline_examples::ledger::{self, LOG_START, Pace, account, balances_before, event_log, overdrafts_of};

const USAGE: &str = "\
ledger: an event-sourced account ledger with a queryable balance read model.

USAGE:
  ledger [--events N] [--accounts N] [--rebuild-workers N] [-w N]

  --events N            events in the generated log (default 20000)
  --accounts N          accounts (default 50)
  --rebuild-workers N   workers of the rebuild from the start of the log (default: -w + 1)
  -w, --workers N       workers of the live run (default 1)
";

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
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ledger: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> tideline::Result<()> {
    let (cluster, args) = Cluster::from_args(std::env::args().skip(1))?;
    if cluster.processes > 1 {
        return Err(Error::Config("ledger runs in one process: its read model is queried in-process".into()));
    }
    let (mut events, mut accounts, mut rebuild_workers) = (20_000, 50, cluster.workers + 1);
    let mut args = args.into_iter();
    while let Some(flag) = args.next() {
        let mut number = |name: &str| -> tideline::Result<usize> {
            let value = args.next().ok_or_else(|| Error::Config(format!("{name} needs a value")))?;
            value.parse().map_err(|_| Error::Config(format!("{name} expects a whole number, got {value:?}")))
        };
        match flag.as_str() {
            "--events" => events = number("--events")?,
            "--accounts" => accounts = number("--accounts")?.max(1),
            "--rebuild-workers" => rebuild_workers = number("--rebuild-workers")?.max(1),
            "--help" => {
                println!("{USAGE}\nCLUSTER (timely):\n{CLUSTER_FLAGS_HELP}");
                return Ok(());
            }
            other => return Err(Error::Config(format!("unknown argument {other:?}; try --help"))),
        }
    }
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
    let overdrafts = ledger::run(Arc::clone(&log), cluster.workers, live, &balances)?;
    let answers = queries.join().map_err(|_| Error::Internal("the query thread panicked".into()))?;

    let final_balances = balances.snapshot();
    let total: i64 = final_balances.value.iter().map(|(_, b)| b).sum();
    println!(
        "live run on {} workers: {} events, {} accounts, total balance {}, {} overdrafts, {answers} read-model answers",
        cluster.workers,
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
