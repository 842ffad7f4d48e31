//! The ledger example: read-model answers during a live run are consistent with the frontier
//! they report, the overdrafts and balances match the log, rebuilds at other worker counts give
//! the same balances, a log of v1 and v2 events rebuilds the read models of the all-v2 log
//! (unknown versions are dead letters), the binary runs, and the guide quotes the compiled code.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use tideline::table::read_model::{Read, ReadModel};
use tideline_examples::ledger::schema::log_lines;
use tideline_examples::ledger::{Pace, account, balances_before, event_log, overdrafts_of, run, run_lines};

enum Answer {
    Snapshot(Read<Vec<(String, i64)>>),
    Get(Read<Option<i64>>),
    Prefix(Read<Vec<(String, i64)>>),
}

#[test]
fn live_reads_match_the_log_and_rebuilds_give_the_same_balances() {
    let log = Arc::new(event_log(6_000, 30));
    let balances: ReadModel<String, i64> = ReadModel::new();
    let reader = {
        let balances = balances.clone();
        std::thread::spawn(move || {
            let mut answers = Vec::new();
            loop {
                answers.push(Answer::Get(balances.get(&account(3))));
                answers.push(Answer::Prefix(balances.prefix("acct-01")));
                let snapshot = balances.snapshot();
                let done = snapshot.frontier.is_none();
                answers.push(Answer::Snapshot(snapshot));
                if done {
                    return answers;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let live = Pace::Live { events: 150, pause: Duration::from_millis(2) };
    let overdrafts = run(Arc::clone(&log), 2, live, &balances).unwrap();
    let answers = reader.join().unwrap();

    let mut intermediate = std::collections::BTreeSet::new();
    for answer in &answers {
        let (frontier, matches) = match answer {
            Answer::Snapshot(read) => (read.frontier, read.value == balances_before(&log, read.frontier)),
            Answer::Get(read) => {
                let want = balances_before(&log, read.frontier).into_iter().find(|(a, _)| *a == account(3));
                (read.frontier, read.value == want.map(|(_, b)| b))
            }
            Answer::Prefix(read) => {
                let want: Vec<_> = balances_before(&log, read.frontier)
                    .into_iter()
                    .filter(|(a, _)| a.starts_with("acct-01"))
                    .collect();
                (read.frontier, read.value == want)
            }
        };
        assert!(matches, "an answer at frontier {frontier:?} disagrees with the log");
        if frontier.is_some_and(|f| f > log[0].time) {
            intermediate.insert(frontier);
        }
    }
    assert!(intermediate.len() >= 3, "queries ran while the log streamed in ({} frontiers seen)", intermediate.len());

    let expected = overdrafts_of(&log);
    assert!(!expected.is_empty());
    assert_eq!(overdrafts, expected, "overdrafts");
    let final_balances = balances.snapshot();
    assert_eq!(final_balances.frontier, None);
    assert_eq!(final_balances.value, balances_before(&log, None));

    for workers in [1, 3] {
        let rebuilt: ReadModel<String, i64> = ReadModel::new();
        let replayed = run(Arc::clone(&log), workers, Pace::Replay, &rebuilt).unwrap();
        assert_eq!(rebuilt.snapshot().value, final_balances.value, "rebuild on {workers} workers");
        assert_eq!(replayed, overdrafts, "overdrafts of the rebuild on {workers} workers");
    }
}

#[test]
fn the_ledger_program_runs_and_rebuilds_identical_balances() {
    let output = Command::new(env!("CARGO_BIN_EXE_ledger"))
        .args(["--events", "3000", "--accounts", "20", "-w", "2"])
        .output()
        .expect("the ledger binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "ledger failed: {}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("query: acct-007 = "), "{stdout}");
    assert!(stdout.contains("(the whole log)"), "{stdout}");
    assert!(stdout.contains("rebuilt from the start of the log on 3 workers: identical balances"), "{stdout}");
}

/// Lines of versions this reader does not know, or without one, spliced into a mixed log at
/// these line numbers (from 1), with the reason each dead letter must give.
const UNREADABLE: [(usize, &str, &str); 4] = [
    (
        1,
        r#"{"version":3,"account":"acct-001","time_ms":1767225600000,"credit":{"cents":900}}"#,
        "unknown event version 3",
    ),
    (
        1_500,
        r#"{"version":3,"account":"acct-002","time_ms":1767225614980,"debit":{"cents":70000}}"#,
        "unknown event version 3",
    ),
    (
        2_501,
        r#"{"account":"acct-003","time_ms":1767225625000,"movement":{"Withdrawal":90000}}"#,
        "no \"version\" field",
    ),
    (4_004, r#"{"version":7,"account":"acct-004","time_ms":1767225640000}"#, "unknown event version 7"),
];

#[test]
fn a_log_of_v1_and_v2_events_rebuilds_the_read_models_of_the_all_v2_log() {
    let log = event_log(4_000, 25);
    let current = Arc::new(log_lines(&log, None));
    assert!(current.iter().all(|line| line.starts_with(r#"{"version":2,"#)), "all in the current version");
    let mut mixed = log_lines(&log, Some(3));
    let v1 = mixed.iter().filter(|line| line.starts_with(r#"{"version":1,"#)).count();
    assert_eq!(v1, log.len().div_ceil(3), "every 3rd event in version 1");
    for (number, line, _reason) in UNREADABLE {
        mixed.insert(number - 1, line.to_string());
    }
    let mixed = Arc::new(mixed);
    assert_eq!(mixed.len(), log.len() + UNREADABLE.len());

    let expected_balances = balances_before(&log, None);
    let expected_overdrafts = overdrafts_of(&log);
    assert!(!expected_overdrafts.is_empty());
    for workers in [1, 2] {
        let from_current: ReadModel<String, i64> = ReadModel::new();
        let current_run =
            run_lines("current.jsonl", Arc::clone(&current), workers, Pace::Replay, &from_current).unwrap();
        let from_mixed: ReadModel<String, i64> = ReadModel::new();
        let mixed_run = run_lines("mixed.jsonl", Arc::clone(&mixed), workers, Pace::Replay, &from_mixed).unwrap();

        let (current_snapshot, mixed_snapshot) = (from_current.snapshot(), from_mixed.snapshot());
        assert_eq!((current_snapshot.frontier, mixed_snapshot.frontier), (None, None), "{workers} workers");
        assert_eq!(current_snapshot.value, expected_balances, "all-v2 balances on {workers} workers");
        assert_eq!(mixed_snapshot.value, current_snapshot.value, "mixed-log balances on {workers} workers");
        assert_eq!(current_run.overdrafts, expected_overdrafts, "all-v2 overdrafts on {workers} workers");
        assert_eq!(mixed_run.overdrafts, current_run.overdrafts, "mixed-log overdrafts on {workers} workers");
        for account in [account(0), account(7), account(24)] {
            assert_eq!(from_mixed.get(&account).value, from_current.get(&account).value, "{account}");
        }

        assert!(current_run.dead_letters.is_empty(), "{:?}", current_run.dead_letters);
        assert_eq!(mixed_run.dead_letters.len(), UNREADABLE.len(), "{:?}", mixed_run.dead_letters);
        for (letter, (number, line, reason)) in mixed_run.dead_letters.iter().zip(UNREADABLE) {
            assert_eq!((letter.source.as_str(), letter.position), ("mixed.jsonl", number as u64));
            assert_eq!(letter.payload_text(), line);
            assert!(letter.reason.contains(reason), "line {number}: {:?} should say {reason:?}", letter.reason);
        }
    }
    // The in-memory log, never serialized, gives the same read model.
    let from_events: ReadModel<String, i64> = ReadModel::new();
    assert_eq!(run(Arc::new(log), 2, Pace::Replay, &from_events).unwrap(), expected_overdrafts);
    assert_eq!(from_events.snapshot().value, expected_balances);
}

/// The summary line of a ledger run, without the count of read-model answers (which depends on
/// timing).
fn summary(stdout: &str) -> String {
    let line = stdout.lines().find(|l| l.starts_with("live run on ")).unwrap_or_else(|| panic!("no summary: {stdout}"));
    line.rsplit_once(", ").map(|(totals, _answers)| totals.to_string()).unwrap()
}

#[test]
fn the_ledger_program_reads_a_log_of_v1_and_v2_events_like_the_generated_one() {
    let bin = env!("CARGO_BIN_EXE_ledger");
    let dir = std::env::temp_dir().join(format!("tideline-ledger-schema-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("log.jsonl");
    let shape = ["--events", "3000", "--accounts", "20"];
    let written = Command::new(bin).args(shape).args(["--v1-every", "3", "--write-log"]).arg(&path).output().unwrap();
    assert!(written.status.success(), "{}", String::from_utf8_lossy(&written.stderr));
    let mut text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().filter(|l| l.starts_with(r#"{"version":1,"#)).count(), 1_000, "every 3rd in v1");
    text.push_str(r#"{"version":3,"account":"acct-001","time_ms":1767225600000,"credit":900}"#);
    text.push('\n');
    std::fs::write(&path, text).unwrap();

    let from_file = Command::new(bin).arg("--log").arg(&path).args(["-w", "2"]).output().unwrap();
    let generated = Command::new(bin).args(shape).args(["-w", "2"]).output().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let (file_out, generated_out) =
        (String::from_utf8_lossy(&from_file.stdout), String::from_utf8_lossy(&generated.stdout));
    assert!(from_file.status.success(), "{}", String::from_utf8_lossy(&from_file.stderr));
    assert!(generated.status.success(), "{}", String::from_utf8_lossy(&generated.stderr));
    assert_eq!(summary(&file_out), summary(&generated_out), "the file rebuilds the generated log's read models");
    assert!(file_out.contains("3000 events decoded, 1 dead letters"), "{file_out}");
    let dead =
        format!("dead letter: {}:3001: unknown event version 3 (this reader knows versions 1 and 2)", path.display());
    assert!(file_out.contains(&dead), "{file_out}");
    assert!(file_out.contains("rebuilt from the start of the log on 3 workers: identical balances"), "{file_out}");
}

/// The lines between `// ANCHOR: name` and `// ANCHOR_END: name` in `source`, dedented.
fn anchored(source: &str, name: &str) -> Option<String> {
    let start = format!("// ANCHOR: {name}");
    let end = format!("// ANCHOR_END: {name}");
    let lines: Vec<&str> = source.lines().collect();
    let from = lines.iter().position(|l| l.trim() == start)? + 1;
    let to = from + lines[from..].iter().position(|l| l.trim() == end)?;
    Some(dedent(&lines[from..to]))
}

fn dedent(lines: &[&str]) -> String {
    let indent =
        lines.iter().filter(|l| !l.trim().is_empty()).map(|l| l.len() - l.trim_start().len()).min().unwrap_or(0);
    lines.iter().map(|l| l.get(indent..).unwrap_or("").trim_end()).collect::<Vec<_>>().join("\n")
}

#[test]
fn the_duality_guide_quotes_the_compiled_example() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root");
    let guide = std::fs::read_to_string(root.join("docs/stream-table-duality.md")).unwrap();
    let lines: Vec<&str> = guide.lines().collect();
    let mut checked = 0;
    for (i, line) in lines.iter().enumerate() {
        let Some(reference) = line.trim().strip_prefix("<!-- snippet: ").and_then(|r| r.strip_suffix(" -->")) else {
            continue;
        };
        let (path, name) = reference.split_once('#').expect("snippet references are path#anchor");
        assert_eq!(lines[i + 1], "```rust", "a snippet marker is followed by a rust block");
        let len = lines[i + 2..].iter().position(|l| *l == "```").expect("the block ends");
        let quoted = dedent(&lines[i + 2..i + 2 + len]);
        let source = std::fs::read_to_string(root.join(path)).unwrap();
        let compiled = anchored(&source, name).unwrap_or_else(|| panic!("{path} has no anchor {name}"));
        assert_eq!(quoted, compiled, "docs/stream-table-duality.md quotes {path}#{name} as it is");
        checked += 1;
    }
    assert_eq!(checked, 5, "the guide's snippets");
}

#[test]
fn the_ledger_program_rejects_bad_flags() {
    let bin = env!("CARGO_BIN_EXE_ledger");
    for (args, message) in [
        // Zero accounts was silently changed to one (issue 13, item 9).
        (vec!["--accounts", "0"], "'--accounts <N>': must be at least 1"),
        (vec!["--rebuild-workers", "0"], "'--rebuild-workers <N>': must be at least 1"),
        (vec!["-n", "2"], "ledger runs in one process"),
        (vec!["--bogus"], "unexpected argument '--bogus'"),
        (vec!["--write-log", "x.jsonl", "--v1-every", "0"], "'--v1-every <N>': must be at least 1"),
        (vec!["--v1-every", "2"], "--write-log <FILE.jsonl>"),
        (vec!["--log", "x.jsonl", "--events", "5"], "cannot be used with"),
    ] {
        let output = Command::new(bin).args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: expected {message:?} in {stderr}");
    }
    let version = Command::new(bin).arg("--version").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&version.stdout).trim(), format!("ledger {}", env!("CARGO_PKG_VERSION")));
}
