//! An event-sourced account ledger: the stream–table duality at work
//! (`docs/stream-table-duality.md`).
//!
//! The log of deposits and withdrawals is a stream. Each account's balance is a table — the
//! materialized view of that stream — published to a read model that other threads query
//! while the log streams in. Each withdrawal meets its account's balance as of its own time
//! (an as-of join), which flags overdrafts. Replaying the log from the start rebuilds the same
//! balances, whatever the number of workers.
//!
//! The log can also be read as serialized events, JSON lines whose schema has evolved: [`schema`]
//! decodes version-1 and version-2 events and upcasts the old ones, and [`run_lines`] rebuilds
//! the same read models from a log that mixes them, sending lines it cannot decode (an unknown
//! version) to the dead letters.

pub mod schema;

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tideline::prelude::*;
use tideline::runtime::{Cluster, execute};
use tideline::sink::Collected;
use tideline::source::{ReadContext, ReadStatus, SourceConfig, SourceReader, source};

/// The event time of the log's first event: 2026-01-01T00:00:00Z.
pub const LOG_START: Time = 1_767_225_600_000;

/// What a ledger event does to its account, in cents.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Movement {
    /// Money paid in.
    Deposit(i64),
    /// Money taken out.
    Withdrawal(i64),
}

impl Movement {
    /// The change to the account's balance.
    pub fn amount(&self) -> i64 {
        match self {
            Movement::Deposit(cents) => *cents,
            Movement::Withdrawal(cents) => -*cents,
        }
    }
}

/// A ledger event: a movement of the account named by `key`, at `time`.
pub type LedgerEvent = Event<String, Movement>;

/// The name of account `index`.
pub fn account(index: usize) -> String {
    format!("acct-{index:03}")
}

/// A deterministic event log: `events` movements over `accounts` accounts, one every 10 ms of
/// event time from [`LOG_START`]; more deposits than withdrawals, but some overdraw.
pub fn event_log(events: usize, accounts: usize) -> Vec<LedgerEvent> {
    let mut rng = SmallRng::seed_from_u64(0x1ed9e5);
    (0..events)
        .map(|i| {
            let movement = if rng.gen_ratio(3, 5) {
                Movement::Deposit(rng.gen_range(1..50_000))
            } else {
                Movement::Withdrawal(rng.gen_range(1..60_000))
            };
            Event::new(LOG_START + 10 * i as Time, account(rng.gen_range(0..accounts.max(1))), movement)
        })
        .collect()
}

/// The balances of each account after the events before `frontier` (every event if `None`).
pub fn balances_before(log: &[LedgerEvent], frontier: Option<Time>) -> Vec<(String, i64)> {
    let mut balances = std::collections::BTreeMap::new();
    for event in log.iter().filter(|e| frontier.is_none_or(|f| e.time < f)) {
        *balances.entry(event.key.clone()).or_insert(0) += event.value.amount();
    }
    balances.into_iter().collect()
}

// ANCHOR: dataflow
/// The ledger: each account's balance (a table, the materialized view of the log), and each
/// withdrawal that overdrew its account, with the balance it left.
pub fn ledger<'scope>(
    log: VecCollection<'scope, Time, LedgerEvent>,
) -> (Table<'scope, String, i64>, VecCollection<'scope, Time, (LedgerEvent, i64)>) {
    let balances = log
        .clone()
        .map(|event| (event.key, event.value.amount()))
        .reduce(|_account, amounts, balance| {
            balance.push((amounts.iter().map(|(cents, count)| **cents * *count as i64).sum::<i64>(), 1))
        })
        .to_table();
    // A withdrawal sees its account's balance as of its own time: just after it.
    let overdrafts = log
        .filter(|event| matches!(event.value, Movement::Withdrawal(_)))
        .asof_join(balances.clone())
        .inner()
        .filter(|(_withdrawal, balance)| *balance < 0);
    (balances, overdrafts)
}
// ANCHOR_END: dataflow

/// How fast the log streams in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pace {
    /// As fast as the dataflow reads: a replay.
    Replay,
    /// `events` events, then a pause of `pause`, like a live event store being appended to.
    Live {
        /// Events per batch.
        events: usize,
        /// Pause between batches.
        pause: Duration,
    },
}

/// What the log reader reads.
#[derive(Clone)]
enum Input {
    /// Decoded events; an event's position is its index.
    Events(Arc<Vec<LedgerEvent>>),
    /// Serialized events ([`schema`]), named `name` in dead letters; a line's position is its
    /// line number (from 1). Empty lines are skipped.
    Lines { name: Arc<str>, lines: Arc<Vec<String>> },
}

impl Input {
    fn len(&self) -> usize {
        match self {
            Input::Events(events) => events.len(),
            Input::Lines { lines, .. } => lines.len(),
        }
    }
}

/// Reads the log in order, as one partition on worker 0.
struct LogReader {
    log: Option<Input>,
    next: usize,
    pace: Pace,
}

impl SourceReader for LogReader {
    type Item = LedgerEvent;

    fn poll(&mut self, ctx: &mut ReadContext<'_, LedgerEvent>) -> ReadStatus {
        let Some(log) = &self.log else { return ReadStatus::Done };
        if self.next == 0 {
            ctx.add_partition(0);
        }
        let batch = match self.pace {
            Pace::Replay => ctx.budget(),
            Pace::Live { events, .. } => events.min(ctx.budget()),
        };
        let end = (self.next + batch).min(log.len());
        for index in self.next..end {
            match log {
                Input::Events(events) => {
                    let event = &events[index];
                    ctx.record(0, index as u64, event.time, event.clone());
                }
                Input::Lines { name, lines } => {
                    let (line, position) = (&lines[index], index as u64 + 1);
                    if line.trim().is_empty() {
                        continue;
                    }
                    match schema::decode(line) {
                        Ok(event) => {
                            ctx.record(0, position, event.time, event);
                        }
                        Err(error) => ctx.dead_letter(DeadLetter {
                            source: name.to_string(),
                            partition: 0,
                            position,
                            key: None,
                            payload: line.clone().into_bytes(),
                            reason: error.to_string(),
                        }),
                    }
                }
            }
        }
        self.next = end;
        match self.pace {
            _ if end == log.len() => {
                ctx.finish_partition(0);
                ReadStatus::Done
            }
            Pace::Replay => ReadStatus::Busy,
            Pace::Live { pause, .. } => ReadStatus::Waiting(pause),
        }
    }
}

/// Runs the ledger over `log` on `workers` threads: publishes the balances to `balances` as
/// the log streams in, and returns the overdrafts, in order.
pub fn run(
    log: Arc<Vec<LedgerEvent>>,
    workers: usize,
    pace: Pace,
    balances: &ReadModel<String, i64>,
) -> tideline::Result<Vec<(LedgerEvent, i64)>> {
    Ok(run_input(Input::Events(log), workers, pace, balances)?.overdrafts)
}

/// What a run over serialized events ([`run_lines`]) gives besides the read model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinesRun {
    /// The overdrafts, in order.
    pub overdrafts: Vec<(LedgerEvent, i64)>,
    /// The lines that could not be decoded, by line number, each with the reason.
    pub dead_letters: Vec<DeadLetter>,
}

/// Runs the ledger over a log of serialized events ([`schema`]: JSON lines of any known
/// version, upcast to [`LedgerEvent`]) on `workers` threads, like [`run`]. A line that does not
/// decode — an unknown version, no version, a malformed body — becomes a dead letter from
/// `name` with its line number (from 1), the raw line and the reason; reading goes on. Empty
/// lines are skipped.
pub fn run_lines(
    name: &str,
    lines: Arc<Vec<String>>,
    workers: usize,
    pace: Pace,
    balances: &ReadModel<String, i64>,
) -> tideline::Result<LinesRun> {
    run_input(Input::Lines { name: name.into(), lines }, workers, pace, balances)
}

fn run_input(log: Input, workers: usize, pace: Pace, balances: &ReadModel<String, i64>) -> tideline::Result<LinesRun> {
    let overdrafts = Collected::new();
    let dead_letters = Collected::new();
    let (model, collected, dead) = (balances.clone(), overdrafts.clone(), dead_letters.clone());
    execute(&Cluster::threads(workers), move |worker| {
        let (model, collected, dead, log) = (model.clone(), collected.clone(), dead.clone(), log.clone());
        worker.dataflow::<Time, _, _>(move |scope| {
            // ANCHOR: publish
            let events = source(scope, SourceConfig::new("ledger"), move |setup| LogReader {
                log: (setup.index() == 0).then_some(log),
                next: 0,
                pace,
            });
            let (accounts, overdrafts) = ledger(events.data);
            accounts.publish(&model);
            // ANCHOR_END: publish
            overdrafts.collect_into(&collected);
            events.dead_letters.collect_into(&dead);
        });
    })?;
    let overdrafts = overdrafts.changelog().into_iter().map(|(overdraft, _time, _diff)| overdraft).collect();
    let mut dead_letters: Vec<DeadLetter> =
        dead_letters.changelog().into_iter().map(|(letter, _time, _diff)| letter).collect();
    dead_letters.sort_by_key(|letter| letter.position);
    Ok(LinesRun { overdrafts, dead_letters })
}

/// The overdrafts in `log`, computed directly: each withdrawal after which its account's
/// balance is negative.
pub fn overdrafts_of(log: &[LedgerEvent]) -> Vec<(LedgerEvent, i64)> {
    let mut balances = std::collections::BTreeMap::new();
    let mut overdrafts = Vec::new();
    for event in log {
        let balance = balances.entry(event.key.clone()).or_insert(0);
        *balance += event.value.amount();
        if matches!(event.value, Movement::Withdrawal(_)) && *balance < 0 {
            overdrafts.push((event.clone(), *balance));
        }
    }
    overdrafts
}
