//! `window_agg` end to end: the real binary on real files, checked against a from-scratch
//! computation, at several worker counts and as a two-process cluster; bad flags and bad
//! files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_window_agg");

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tideline-window-agg-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run(args: &[&str]) -> Output {
    let output = Command::new(BIN).args(args).output().expect("window_agg runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "window_agg panicked: {stderr}");
    output
}

fn ok(args: &[&str]) -> String {
    let output = run(args);
    assert!(output.status.success(), "window_agg {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

#[derive(Clone, Debug)]
struct Input {
    time: u64,
    key: String,
    value: i64,
}

/// Reads an input CSV; returns parsed lines and the line numbers of malformed ones.
fn read_input(path: &Path) -> (Vec<Input>, Vec<u64>) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        let fields: Vec<&str> = line.split(',').collect();
        let parsed = (fields.len() == 3).then(|| Some((fields[0].parse().ok()?, fields[2].parse().ok()?))).flatten();
        match parsed {
            Some((time, value)) => good.push(Input { time, key: fields[1].to_string(), value }),
            None if line.trim().is_empty() => {}
            None => bad.push(i as u64 + 1),
        }
    }
    (good, bad)
}

/// The output `window_agg` must produce, from scratch: the file read in order, watermark =
/// max seen - bound; a record behind the watermark arrives at the watermark; lateness per window
/// (a record counts in each of its windows whose `end + lateness` is still ahead of its arrival,
/// from `max(arrival, end - 1)`; a record that counts in none is late); tumbling or sliding
/// windows in Final mode, with a diff column when `lateness > 0`. Rows are
/// `(start, end, key, count, sum, min, max[, diff])` in output order — by the time a result
/// completes (a window's last instant, or the arrival of a correction), then window start and
/// key, retractions first; also the late records as `time,key,value` lines, in the order they
/// arrived (then by time, key and value).
fn expected(inputs: &[Input], size: u64, slide: u64, bound: u64, lateness: u64) -> (Vec<String>, Vec<String>) {
    let mut max_seen: Option<u64> = None;
    let mut groups: BTreeMap<(u64, String), Vec<(u64, i64)>> = BTreeMap::new();
    let mut late = Vec::new();
    for input in inputs {
        let watermark = max_seen.map_or(0, |m| m.saturating_sub(bound));
        let at = if input.time >= watermark {
            max_seen = Some(max_seen.map_or(input.time, |m| m.max(input.time)));
            input.time
        } else {
            watermark
        };
        let mut taken = false;
        let mut start = input.time - input.time % slide;
        while start + size > input.time {
            if at < start + size + lateness {
                taken = true;
                groups.entry((start, input.key.clone())).or_default().push((at.max(start + size - 1), input.value));
            }
            if start < slide {
                break;
            }
            start -= slide;
        }
        if !taken {
            late.push((at, input.time, input.key.clone(), input.value));
        }
    }
    // (result time, start, key, insertion?, row)
    let mut rows: Vec<(u64, u64, String, bool, String)> = Vec::new();
    for ((start, key), records) in groups {
        let mut times: Vec<u64> = records.iter().map(|(t, _)| *t).collect();
        times.sort();
        times.dedup();
        let mut previous: Option<String> = None;
        for time in times {
            let values: Vec<i64> = records.iter().filter(|(t, _)| *t <= time).map(|(_, v)| *v).collect();
            let row = format!(
                "{start},{},{key},{},{},{},{}",
                start + size,
                values.len(),
                values.iter().map(|v| i128::from(*v)).sum::<i128>(),
                values.iter().min().unwrap(),
                values.iter().max().unwrap()
            );
            let mut push = |insert: bool, text: String| rows.push((time, start, key.clone(), insert, text));
            match (&previous, lateness > 0) {
                (None, false) => push(true, row.clone()),
                (None, true) => push(true, format!("{row},1")),
                (Some(old), _) => {
                    push(false, format!("{old},-1"));
                    push(true, format!("{row},1"));
                }
            }
            previous = Some(row);
        }
    }
    rows.sort();
    late.sort();
    let late = late.into_iter().map(|(_, time, key, value)| format!("{time},{key},{value}")).collect();
    (rows.into_iter().map(|(_, _, _, _, row)| row).collect(), late)
}

fn body(csv: &str) -> Vec<String> {
    csv.lines().skip(1).map(String::from).collect()
}

#[test]
fn tumbling_output_matches_a_from_scratch_computation_at_every_worker_count() {
    let dir = temp_dir("tumbling");
    let input = dir.join("in.csv");
    ok(&["--write-input", input.to_str().unwrap(), "--events", "30000", "--quiet"]);
    let (inputs, bad) = read_input(&input);
    assert!(bad.is_empty());
    let (want, want_late) = expected(&inputs, 10_000, 10_000, 2_000, 15_000);
    assert!(want.iter().any(|r| r.ends_with(",-1")), "the data set should produce late corrections");
    assert!(!want_late.is_empty(), "the data set should have late records");
    let mut outputs = Vec::new();
    for workers in ["1", "2", "3"] {
        let late = dir.join(format!("late-{workers}.csv"));
        let out = ok(&[
            "--input",
            input.to_str().unwrap(),
            "--tumbling",
            "10s",
            "--out-of-orderness",
            "2s",
            "--allowed-lateness",
            "15s",
            "--late-output",
            late.to_str().unwrap(),
            "-w",
            workers,
            "--quiet",
        ]);
        assert_eq!(out.lines().next().unwrap(), "window_start_ms,window_end_ms,key,count,sum,min,max,diff");
        assert_eq!(body(&out), want, "{workers} workers");
        let late_text = std::fs::read_to_string(&late).unwrap();
        assert_eq!(body(&late_text), want_late, "late output, {workers} workers");
        outputs.push(out);
    }
    assert!(outputs.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn sliding_windows_and_built_in_data() {
    let dir = temp_dir("sliding");
    let input = dir.join("in.csv");
    ok(&["--write-input", input.to_str().unwrap(), "--events", "20000", "--quiet"]);
    let (inputs, _) = read_input(&input);
    let (want, _) = expected(&inputs, 10_000, 2_000, 5_000, 0);
    let from_file = ok(&["--input", input.to_str().unwrap(), "--sliding", "10s,2s", "-w", "2", "--quiet"]);
    assert_eq!(body(&from_file), want);
    assert_eq!(from_file.lines().next().unwrap(), "window_start_ms,window_end_ms,key,count,sum,min,max");
    // The built-in data set gives the same windows as its CSV form (same records, same
    // partitions' watermark semantics are per partition, so compare only the totals).
    let built_in = ok(&["--sliding", "10s,2s", "--events", "20000", "--quiet"]);
    assert!(body(&built_in).len() > 100);
}

#[test]
fn updates_mode_accumulates_to_the_final_result() {
    let dir = temp_dir("updates");
    let input = dir.join("in.csv");
    ok(&["--write-input", input.to_str().unwrap(), "--events", "5000", "--quiet"]);
    let finals = ok(&["--input", input.to_str().unwrap(), "--tumbling", "5s", "--quiet"]);
    let updates =
        ok(&["--input", input.to_str().unwrap(), "--tumbling", "5s", "--emit", "updates", "-w", "2", "--quiet"]);
    assert!(updates.starts_with("window_start_ms,window_end_ms,key,count,sum,min,max,diff\n"));
    let mut net: BTreeMap<String, i64> = BTreeMap::new();
    for line in body(&updates) {
        let (row, diff) = line.rsplit_once(',').unwrap();
        *net.entry(row.to_string()).or_default() += diff.parse::<i64>().unwrap();
    }
    let accumulated: Vec<String> = net
        .into_iter()
        .filter(|(_, n)| *n != 0)
        .map(|(r, n)| {
            assert_eq!(n, 1);
            r
        })
        .collect();
    let mut finals = body(&finals);
    finals.sort();
    assert_eq!(accumulated, finals);
    assert!(body(&updates).len() > 2 * finals.len(), "updates mode refines results");
}

#[test]
fn malformed_lines_go_to_the_dead_letter_output_and_the_rest_is_processed() {
    let dir = temp_dir("dead");
    let input = dir.join("in.csv");
    let mut text = String::from("event_time_ms,key,value\n");
    let mut bad_lines = Vec::new();
    for i in 0..2_000u64 {
        let line_number = i + 2;
        match i % 97 {
            13 => {
                text.push_str(&format!("{},k{},not-a-number\n", 1_000 + i * 10, i % 7));
                bad_lines.push(line_number);
            }
            41 => {
                text.push_str(&format!("{},k{}\n", 1_000 + i * 10, i % 7));
                bad_lines.push(line_number);
            }
            71 => {
                text.push_str("garbage\n");
                bad_lines.push(line_number);
            }
            _ => text.push_str(&format!("{},k{},{}\n", 1_000 + i * 10, i % 7, i as i64 - 300)),
        }
    }
    std::fs::write(&input, text).unwrap();
    let (inputs, bad) = read_input(&input);
    assert_eq!(bad, bad_lines);
    let (want, _) = expected(&inputs, 1_000, 1_000, 5_000, 0);
    for workers in ["1", "3"] {
        let dead = dir.join(format!("dead-{workers}.csv"));
        let output = run(&[
            "--input",
            input.to_str().unwrap(),
            "--tumbling",
            "1s",
            "--dead-letter-output",
            dead.to_str().unwrap(),
            "-w",
            workers,
        ]);
        assert!(output.status.success());
        assert_eq!(body(&String::from_utf8(output.stdout).unwrap()), want, "good lines are all processed");
        let dead_text = std::fs::read_to_string(&dead).unwrap();
        let dead_rows = body(&dead_text);
        let lines: Vec<u64> = dead_rows.iter().map(|r| r.split(',').nth(1).unwrap().parse().unwrap()).collect();
        assert_eq!(lines, bad_lines, "every bad line is reported, with its line number");
        assert!(dead_rows.iter().any(|r| r.contains("column \"\"value\"\": invalid digit")), "{dead_rows:?}");
        assert!(dead_rows.iter().any(|r| r.contains("expected 3 fields, found 2")), "{dead_rows:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(&format!("{} malformed", bad_lines.len())), "{stderr}");
    }
}

#[test]
fn two_processes_give_the_single_worker_output() {
    let dir = temp_dir("cluster");
    let input = dir.join("in.csv");
    ok(&["--write-input", input.to_str().unwrap(), "--events", "20000", "--quiet"]);
    let single = ok(&["--input", input.to_str().unwrap(), "--tumbling", "10s", "--allowed-lateness", "10s", "--quiet"]);
    // Free ports for the two processes, in a hostfile.
    let ports: Vec<u16> =
        (0..2).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()).collect();
    let hostfile = dir.join("hosts.txt");
    std::fs::write(&hostfile, ports.iter().map(|p| format!("127.0.0.1:{p}\n")).collect::<String>()).unwrap();
    let output = dir.join("out.csv");
    let args = |process: &str| -> Vec<String> {
        [
            "--input",
            input.to_str().unwrap(),
            "--tumbling",
            "10s",
            "--allowed-lateness",
            "10s",
            "--output",
            output.to_str().unwrap(),
            "-w",
            "2",
            "-n",
            "2",
            "-p",
            process,
            "-h",
            hostfile.to_str().unwrap(),
            "--quiet",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let second = Command::new(BIN).args(args("1")).spawn().unwrap();
    let first = Command::new(BIN).args(args("0")).output().unwrap();
    let second = second.wait_with_output().unwrap();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    assert!(second.status.success(), "{}", String::from_utf8_lossy(&second.stderr));
    assert_eq!(std::fs::read_to_string(&output).unwrap(), single);
}

#[test]
fn bad_flags_and_bad_files_give_clear_errors() {
    let dir = temp_dir("bad");
    let no_header = dir.join("no-header.csv");
    std::fs::write(&no_header, "1000,a,1\n").unwrap();
    let empty = dir.join("empty.csv");
    std::fs::write(&empty, "").unwrap();
    let cases: Vec<(Vec<String>, i32, &str)> = vec![
        (vec!["--bogus".into()], 2, "unexpected argument '--bogus'"),
        (vec![], 2, "choose a window"),
        (vec!["--tumbling".into(), "10s".into(), "--sliding".into(), "10s,2s".into()], 2, "cannot be used with"),
        (vec!["--tumbling".into(), "10".into()], 2, "expected a number followed by"),
        (vec!["--tumbling".into(), "0s".into()], 2, "at least 1ms"),
        (vec!["--sliding".into(), "10s".into()], 2, "SIZE,SLIDE"),
        (vec!["--tumbling".into()], 2, "a value is required for '--tumbling <SIZE>'"),
        (
            vec!["--tumbling".into(), "1s".into(), "--late".into(), "sometimes".into()],
            2,
            "[possible values: drop, side, accept]",
        ),
        (
            vec!["--tumbling".into(), "1s".into(), "--emit".into(), "never".into()],
            2,
            "[possible values: final, updates]",
        ),
        (vec!["--tumbling".into(), "1s".into(), "-w".into(), "zero".into()], 2, "whole number"),
        (vec!["--tumbling".into(), "1s".into(), "-n".into(), "2".into(), "-p".into(), "5".into()], 2, "out of range"),
        (vec!["--session".into(), "0s".into()], 2, "'--session <GAP>': must be at least 1ms"),
        (vec!["--tumbling".into(), "1s".into(), "--late".into(), "side".into()], 2, "needs --late-output"),
        // The slide is at most the size: events between windows would be silently skipped.
        (vec!["--sliding".into(), "2s,10s".into()], 2, "the slide (10s) is longer than the window (2s)"),
        (
            vec!["--input".into(), dir.join("missing.csv").display().to_string(), "--tumbling".into(), "1s".into()],
            1,
            "No such file",
        ),
        (vec!["--input".into(), no_header.display().to_string(), "--tumbling".into(), "1s".into()], 1, "has no column"),
        (vec!["--input".into(), empty.display().to_string(), "--tumbling".into(), "1s".into()], 1, "is empty"),
        (vec!["--input".into(), dir.display().to_string(), "--tumbling".into(), "1s".into()], 1, "directory"),
        (
            vec![
                "--tumbling".into(),
                "1s".into(),
                "--events".into(),
                "10".into(),
                "--output".into(),
                "/nonexistent-dir/out.csv".into(),
            ],
            1,
            "/nonexistent-dir/out.csv",
        ),
    ];
    for (args, code, message) in cases {
        let strs: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = run(&strs);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: expected {message:?} in {stderr:?}");
        if code == 2 {
            assert!(stderr.contains("try '--help'"), "a usage error says where help is: {stderr}");
        }
    }
    let version = ok(&["--version"]);
    assert_eq!(version.trim(), format!("window_agg {}", env!("CARGO_PKG_VERSION")));
    let help = ok(&["--help"]);
    for flag in [
        "--input",
        "--output",
        "--late-output",
        "--tumbling",
        "--sliding",
        "--session",
        "--out-of-orderness",
        "--allowed-lateness",
        "--late",
        "--emit",
        "-w",
        "-n",
        "-p",
        "-h",
    ] {
        assert!(help.contains(flag), "--help documents {flag}");
    }
}

/// Sessions from scratch (DESIGN §3–4): the file read in order with a bounded watermark, a
/// record behind it arriving at the watermark; per key and arrival time, in order, the new
/// records merge with the key's live sessions (`last + gap + lateness ≥ arrival`) into groups
/// of events at most `gap` apart; a group of new records only is late if its session would
/// already have expired. Returns every session in its final form, in output order: by end
/// (`last + gap`, when it completes), then start and key.
fn expected_sessions(inputs: &[Input], gap: u64, bound: u64, lateness: u64) -> Vec<String> {
    let mut max_seen: Option<u64> = None;
    let mut arrivals: BTreeMap<(String, u64), Vec<(u64, i64)>> = BTreeMap::new();
    for input in inputs {
        let watermark = max_seen.map_or(0, |m| m.saturating_sub(bound));
        let at = if input.time >= watermark {
            max_seen = Some(max_seen.map_or(input.time, |m| m.max(input.time)));
            input.time
        } else {
            watermark
        };
        arrivals.entry((input.key.clone(), at)).or_default().push((input.time, input.value));
    }
    // Per key: sessions as (first, last, values); final ones set aside.
    let mut finished: Vec<(String, u64, u64, Vec<i64>)> = Vec::new();
    let mut live: BTreeMap<String, Vec<(u64, u64, Vec<i64>)>> = BTreeMap::new();
    for ((key, at), records) in arrivals {
        let sessions = live.entry(key.clone()).or_default();
        let (still, expired): (Vec<_>, Vec<_>) =
            std::mem::take(sessions).into_iter().partition(|(_, last, _)| last + gap + lateness >= at);
        finished.extend(expired.into_iter().map(|(f, l, v)| (key.clone(), f, l, v)));
        let mut items: Vec<(u64, u64, Vec<i64>, bool)> = still.into_iter().map(|(f, l, v)| (f, l, v, true)).collect();
        items.extend(records.iter().map(|(t, v)| (*t, *t, vec![*v], false)));
        items.sort_by_key(|(f, l, _, _)| (*f, *l));
        let mut groups: Vec<(u64, u64, Vec<i64>, bool)> = Vec::new();
        for (first, last, values, old) in items {
            match groups.last_mut() {
                Some(group) if first <= group.1 + gap => {
                    group.1 = group.1.max(last);
                    group.2.extend(values);
                    group.3 |= old;
                }
                _ => groups.push((first, last, values, old)),
            }
        }
        for (first, last, values, old) in groups {
            if old || last + gap + lateness >= at {
                sessions.push((first, last, values));
            }
        }
    }
    for (key, sessions) in live {
        finished.extend(sessions.into_iter().map(|(f, l, v)| (key.clone(), f, l, v)));
    }
    let mut rows: Vec<(u64, u64, String, String)> = finished
        .into_iter()
        .map(|(key, first, last, values)| {
            let row = format!(
                "{first},{},{key},{},{},{},{}",
                last + gap,
                values.len(),
                values.iter().map(|v| i128::from(*v)).sum::<i128>(),
                values.iter().min().unwrap(),
                values.iter().max().unwrap()
            );
            (last + gap, first, key, row)
        })
        .collect();
    rows.sort();
    rows.into_iter().map(|(_, _, _, row)| row).collect()
}

#[test]
fn session_output_matches_a_from_scratch_sort_and_split() {
    let dir = temp_dir("sessions");
    let input = dir.join("in.csv");
    // Five keys, bursts of events 0-400 ms apart separated by pauses of 0.5-3 s, out of order
    // by up to 300 ms, and a few late ones.
    let mut text = String::from("event_time_ms,key,value\n");
    let mut clock = 1_000_000u64;
    for i in 0..6_000u64 {
        clock += if i % 37 == 0 { 500 + (i * 7919) % 2_500 } else { (i * 104_729) % 60 };
        let jitter = (i * 31) % 300;
        let time = if i % 211 == 0 { clock.saturating_sub(5_000) } else { clock - jitter };
        text.push_str(&format!("{time},k{},{}\n", (i * 13) % 5, (i % 97) as i64 - 40));
    }
    std::fs::write(&input, text).unwrap();
    let (inputs, _) = read_input(&input);
    let want = expected_sessions(&inputs, 1_000, 1_000, 0);
    assert!(want.len() > 50, "several sessions per key: {}", want.len());
    for workers in ["1", "2", "3"] {
        let out = ok(&[
            "--input",
            input.to_str().unwrap(),
            "--session",
            "1s",
            "--out-of-orderness",
            "1s",
            "-w",
            workers,
            "--quiet",
        ]);
        assert_eq!(out.lines().next().unwrap(), "window_start_ms,window_end_ms,key,count,sum,min,max");
        assert_eq!(body(&out), want, "{workers} workers");
    }
    // With an allowed lateness, records behind the watermark correct emitted sessions: the
    // changelog (merges retract sessions) nets out to the final sessions.
    let want = expected_sessions(&inputs, 1_000, 1_000, 10_000);
    let out = ok(&[
        "--input",
        input.to_str().unwrap(),
        "--session",
        "1s",
        "--out-of-orderness",
        "1s",
        "--allowed-lateness",
        "10s",
        "-w",
        "2",
        "--quiet",
    ]);
    let mut net: BTreeMap<String, i64> = BTreeMap::new();
    for line in body(&out) {
        let (row, diff) = line.rsplit_once(',').unwrap();
        *net.entry(row.to_string()).or_default() += diff.parse::<i64>().unwrap();
    }
    assert!(net.values().all(|n| *n == 0 || *n == 1));
    let mut got: Vec<String> = net.into_iter().filter(|(_, n)| *n == 1).map(|(r, _)| r).collect();
    let mut want = want;
    got.sort();
    want.sort();
    assert_eq!(got, want);
    assert!(body(&out).iter().any(|l| l.ends_with(",-1")), "late records merged or extended sessions");
}

/// A FIFO at `path` (made with `mkfifo`).
fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().expect("mkfifo runs");
    assert!(status.success(), "mkfifo {}", path.display());
}

/// Waits for `child` at most `limit`, killing it after that.
fn wait_at_most(child: &mut std::process::Child, limit: std::time::Duration) -> std::process::ExitStatus {
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("window_agg did not finish within {limit:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn regression_outputs_to_dev_null_dev_stdout_and_fifos() {
    let dir = temp_dir("special-outputs");
    let input = dir.join("in.csv");
    ok(&["--write-input", input.to_str().unwrap(), "--events", "3000", "--quiet"]);
    let input = input.to_str().unwrap();
    let want = ok(&["--input", input, "--tumbling", "1s", "--quiet"]);
    assert!(body(&want).len() > 10);
    let late = dir.join("late.csv");
    // /dev/null for every output: fsync's EINVAL on a device is no error.
    let out = ok(&[
        "--input",
        input,
        "--tumbling",
        "1s",
        "--output",
        "/dev/null",
        "--late-output",
        late.to_str().unwrap(),
        "--dead-letter-output",
        "/dev/null",
        "--quiet",
    ]);
    assert_eq!(out, "");
    let out = ok(&["--input", input, "--tumbling", "1s", "--late-output", "/dev/null", "--quiet"]);
    assert_eq!(out, want);
    // /dev/stdout, here a pipe to this test.
    let out = ok(&["--input", input, "--tumbling", "1s", "--output", "/dev/stdout", "--quiet"]);
    assert_eq!(out, want);
    // A FIFO: opened once, when the writer starts, and read to the end by its reader.
    let fifo = dir.join("out.fifo");
    mkfifo(&fifo);
    let mut child = Command::new(BIN)
        .args(["--input", input, "--tumbling", "1s", "--output", fifo.to_str().unwrap(), "--quiet"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let read = std::fs::read_to_string(&fifo).unwrap();
    let status = wait_at_most(&mut child, std::time::Duration::from_secs(60));
    assert!(status.success());
    assert_eq!(read, want);
}

/// Free loopback ports for `n` processes, in a hostfile.
pub(crate) fn hostfile(dir: &Path, n: usize) -> PathBuf {
    let listeners: Vec<std::net::TcpListener> =
        (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let path = dir.join("hosts.txt");
    let text: String = listeners.iter().map(|l| format!("127.0.0.1:{}\n", l.local_addr().unwrap().port())).collect();
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `args` as processes 0 and 1 of a two-process cluster on loopback ports, each with
/// `workers` threads; returns both outputs (process 0's first).
fn cluster_of_two(dir: &Path, workers: &str, args: &[&str]) -> (Output, Output) {
    let hosts = hostfile(dir, 2);
    let with = |process: &str| -> Vec<String> {
        let cluster = ["-w", workers, "-n", "2", "-p", process, "-h", hosts.to_str().unwrap()];
        args.iter().chain(cluster.iter()).map(|s| s.to_string()).collect()
    };
    let second = Command::new(BIN).args(with("1")).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let first = Command::new(BIN).args(with("0")).output().unwrap();
    let second = second.wait_with_output().unwrap();
    (first, second)
}

#[test]
fn regression_two_process_cluster_with_late_output() {
    // Late rows read by process 1 crossed to process 0's late-output writer, whose row type
    // did not deserialize what it serialized: process 0 panicked (issue 13, item 1).
    let dir = temp_dir("cluster-late");
    let input = dir.join("in.csv");
    ok(&["--write-input", input.to_str().unwrap(), "--events", "20000", "--quiet"]);
    let input = input.to_str().unwrap();
    let late = dir.join("late-single.csv");
    let single = ok(&["--input", input, "--tumbling", "10s", "--late-output", late.to_str().unwrap(), "--quiet"]);
    let single_late = std::fs::read_to_string(&late).unwrap();
    let (inputs, _) = read_input(Path::new(input));
    let (_, late_lines) = expected(&inputs, 10_000, 10_000, 5_000, 0);
    assert!(late_lines.len() > 5, "the data set has late rows");
    let middle = inputs[inputs.len() / 2].time;
    let late_time = |row: &String| row.split(',').next().unwrap().parse::<u64>().unwrap();
    // Late rows are held back by at least 5 s of event time: these were read in the second half.
    assert!(late_lines.iter().any(|l| late_time(l) + 5_000 > middle), "late rows in the second half");
    assert_eq!(body(&single_late).len(), late_lines.len());
    for workers in ["1", "2"] {
        let (output, late) = (dir.join(format!("out-{workers}.csv")), dir.join(format!("late-{workers}.csv")));
        let (first, second) = cluster_of_two(
            &dir,
            workers,
            &[
                "--input",
                input,
                "--tumbling",
                "10s",
                "--output",
                output.to_str().unwrap(),
                "--late-output",
                late.to_str().unwrap(),
                "--quiet",
            ],
        );
        for (process, run) in [(0, &first), (1, &second)] {
            let stderr = String::from_utf8_lossy(&run.stderr);
            assert!(run.status.success(), "process {process} of {workers}-worker processes: {stderr}");
        }
        assert_eq!(std::fs::read_to_string(&output).unwrap(), single, "{workers} workers per process");
        assert_eq!(std::fs::read_to_string(&late).unwrap(), single_late, "{workers} workers per process");
    }
}

#[test]
fn regression_two_flags_naming_the_same_file_are_refused_before_anything_is_touched() {
    // --late-output equal to --input replaced the input with the late rows (issue 13, item 4).
    let dir = temp_dir("same-file");
    let input = dir.join("in.csv");
    ok(&["--write-input", input.to_str().unwrap(), "--events", "2000", "--quiet"]);
    let before = std::fs::read(&input).unwrap();
    let out = dir.join("out.csv");
    std::fs::write(&out, "an earlier run's output\n").unwrap();
    let link = dir.join("link.csv");
    std::os::unix::fs::symlink(&input, &link).unwrap();
    let (input, out, link) = (input.to_str().unwrap(), out.to_str().unwrap(), link.to_str().unwrap());
    let new = dir.join("new.csv");
    let new = new.to_str().unwrap();
    for (args, message) in [
        (vec!["--input", input, "--late-output", input], "--input and --late-output name the same file"),
        (vec!["--input", input, "--output", out, "--late-output", out], "--output and --late-output name"),
        (vec!["--input", input, "--output", out, "--dead-letter-output", out], "--output and --dead-letter-output"),
        (vec!["--input", input, "--output", link], "--input and --output name the same file"),
        (vec!["--input", input, "--output", new, "--late-output", new], "--output and --late-output name"),
    ] {
        let mut args = args;
        args.extend(["--tumbling", "1s"]);
        let output = run(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: expected {message:?} in {stderr}");
    }
    // Standard input redirected from the output file.
    let output = Command::new(BIN)
        .args(["--input", "-", "--tumbling", "1s", "--output", out])
        .stdin(std::fs::File::open(out).unwrap())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(std::fs::read(input).unwrap(), before, "the input is untouched");
    assert_eq!(std::fs::read_to_string(out).unwrap(), "an earlier run's output\n", "the output is untouched");
    assert!(!Path::new(new).exists());
    // /dev/null may take several outputs.
    ok(&["--input", input, "--tumbling", "1s", "--output", "/dev/null", "--late-output", "/dev/null", "--quiet"]);
}

/// Runs `window_agg args` with `input` written to its standard input.
fn run_with_stdin(args: &[&str], input: &[u8]) -> Output {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    output
}

#[test]
fn regression_piped_input_is_read_once() {
    // A first pass over the input consumed the pipe: 0 events, exit 0 (issue 13, item 2).
    let dir = temp_dir("piped");
    let input = dir.join("in.csv");
    ok(&["--write-input", input.to_str().unwrap(), "--events", "20000", "--quiet"]);
    let text = std::fs::read(&input).unwrap();
    let want = ok(&["--input", input.to_str().unwrap(), "--tumbling", "1s", "--quiet"]);
    assert!(body(&want).len() > 100);
    for workers in ["1", "2"] {
        for path in ["-", "/dev/stdin"] {
            let output = run_with_stdin(&["--input", path, "--tumbling", "1s", "-w", workers], &text);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(output.status.success(), "--input {path} -w {workers}: {stderr}");
            assert_eq!(String::from_utf8_lossy(&output.stdout), want, "--input {path} -w {workers}");
            assert!(stderr.contains("20000 events"), "{stderr}");
        }
        // What `--input <(cat in.csv)` names: a pipe behind a path.
        let fifo = dir.join(format!("in-{workers}.fifo"));
        mkfifo(&fifo);
        let writer = {
            let (fifo, text) = (fifo.clone(), text.clone());
            std::thread::spawn(move || std::fs::write(fifo, text))
        };
        let out = ok(&["--input", fifo.to_str().unwrap(), "--tumbling", "1s", "-w", workers, "--quiet"]);
        writer.join().unwrap().unwrap();
        assert_eq!(out, want, "a FIFO, -w {workers}");
    }
}

#[test]
fn input_from_stdin_writes_each_window_as_soon_as_it_is_complete() {
    // `producer | window_agg --input -`: a window's row appears while the producer is still
    // running (issue 14; issue 13, item 8: results were held until the end of the input).
    use std::io::{BufRead, Write};
    let mut child = Command::new(BIN)
        .args(["--input", "-", "--tumbling", "10s", "--out-of-orderness", "1s", "-w", "2"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let (lines, received) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            if lines.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let next_line = || received.recv_timeout(std::time::Duration::from_secs(30)).expect("a line within 30 s");
    writeln!(stdin, "event_time_ms,key,value").unwrap();
    // Window [0, 10 s) of key a, line by line.
    for (time, value) in [(1_000, 5), (4_000, 7), (9_500, -2)] {
        writeln!(stdin, "{time},a,{value}").unwrap();
        stdin.flush().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(received.recv_timeout(std::time::Duration::from_millis(300)).is_err(), "nothing is complete yet");
    // 11.5 s - 1 s passes 10 s: the first window is complete, and written now.
    writeln!(stdin, "11500,b,1").unwrap();
    stdin.flush().unwrap();
    assert_eq!(next_line(), "window_start_ms,window_end_ms,key,count,sum,min,max");
    assert_eq!(next_line(), "0,10000,a,3,10,-2,7");
    // The producer is still open; more of it, then its end flushes the rest.
    writeln!(stdin, "12000,b,2").unwrap();
    drop(stdin);
    assert_eq!(next_line(), "10000,20000,b,2,3,1,2");
    let status = wait_at_most(&mut child, std::time::Duration::from_secs(30));
    assert!(status.success());
    reader.join().unwrap();
    assert!(received.try_recv().is_err(), "nothing more");
}

#[test]
fn regression_a_failed_run_leaves_no_earlier_output_behind() {
    // The output was truncated only at the end: a run killed early left the previous run's
    // complete output in place (issue 13, item 5).
    use std::io::Write;
    let dir = temp_dir("partial");
    let out = dir.join("out.csv");
    let partial = dir.join("out.csv.partial");
    let input = dir.join("in.csv");
    ok(&["--write-input", input.to_str().unwrap(), "--events", "3000", "--quiet"]);
    ok(&["--input", input.to_str().unwrap(), "--tumbling", "1s", "--output", out.to_str().unwrap(), "--quiet"]);
    assert!(body(&std::fs::read_to_string(&out).unwrap()).len() > 10);
    assert!(!partial.exists());
    // A run on a stream that never ends, killed.
    let mut child = Command::new(BIN)
        .args(["--input", "-", "--tumbling", "1s", "--output", out.to_str().unwrap(), "--quiet"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "event_time_ms,key,value\n1000,a,1\n9000,a,2").unwrap();
    stdin.flush().unwrap();
    let started = std::time::Instant::now();
    while !partial.exists() || out.exists() {
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "the writer starts");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!out.exists(), "no earlier output passes for this run's");
    let partial_text = std::fs::read_to_string(&partial).unwrap();
    assert!(
        partial_text.starts_with("window_start_ms,") && partial_text.contains("\n1000,2000,a,1,1,1,1\n"),
        "{partial_text:?}"
    );
    // A complete run replaces the partial file.
    ok(&["--input", input.to_str().unwrap(), "--tumbling", "1s", "--output", out.to_str().unwrap(), "--quiet"]);
    assert!(out.exists() && !partial.exists());
}

#[test]
fn regression_cluster_processes_with_different_flags_fail_clearly() {
    // Two processes with different windows both exited 0 with wrong windows (issue 13, item 9).
    let dir = temp_dir("cluster-mismatch");
    let input = dir.join("in.csv");
    ok(&["--write-input", input.to_str().unwrap(), "--events", "2000", "--quiet"]);
    let output = dir.join("out.csv");
    let hosts = hostfile(&dir, 2);
    let args = |process: &str, window: &str| -> Vec<String> {
        let input = input.to_str().unwrap();
        let (output, hosts) = (output.to_str().unwrap(), hosts.to_str().unwrap());
        ["--input", input, "--tumbling", window, "--output", output, "-n", "2", "-p", process, "-h", hosts, "--quiet"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let second = Command::new(BIN)
        .args(args("1", "5s"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let first = Command::new(BIN).args(args("0", "10s")).stdout(std::process::Stdio::null()).output().unwrap();
    let second = second.wait_with_output().unwrap();
    for run in [&first, &second] {
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("run different configurations"), "{stderr}");
        assert!(stderr.contains("--tumbling 10s") && stderr.contains("--tumbling 5s"), "{stderr}");
    }
    assert!(!output.exists(), "nothing written");
}

#[test]
fn regression_byte_order_marks_and_huge_malformed_lines() {
    // A UTF-8 BOM before the header was rejected; a 10 MB malformed line was echoed whole to
    // stderr (issue 13, item 9).
    let dir = temp_dir("bom");
    let input = dir.join("in.csv");
    let huge = "x".repeat(1 << 20);
    std::fs::write(&input, format!("\u{feff}event_time_ms,key,value\n1000,a,5\n2000,a,{huge}\n3000,a,7\n")).unwrap();
    let dead = dir.join("dead.csv");
    for workers in ["1", "2"] {
        let output = run(&[
            "--input",
            input.to_str().unwrap(),
            "--tumbling",
            "10s",
            "--dead-letter-output",
            dead.to_str().unwrap(),
            "-w",
            workers,
        ]);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            "window_start_ms,window_end_ms,key,count,sum,min,max\n0,10000,a,2,12,5,7\n"
        );
        assert!(std::fs::read_to_string(&dead).unwrap().contains(&huge), "the dead-letter file keeps the line");
        let output = run(&["--input", input.to_str().unwrap(), "--tumbling", "10s", "-w", workers]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.len() < 2_000, "stderr shows a cut line: {} bytes", stderr.len());
        assert!(stderr.contains(&format!("({} bytes in all)", huge.len() + 7)), "{stderr}");
    }
}

#[test]
fn regression_sums_past_i64_do_not_overflow() {
    // Three values of 9e18 summed to 8553255926290448384 (issue 13, item 6): sums are i128.
    let dir = temp_dir("overflow");
    let input = dir.join("in.csv");
    std::fs::write(
        &input,
        "event_time_ms,key,value\n1000,a,9000000000000000000\n2000,a,9000000000000000000\n3000,a,9000000000000000000\n\
         4000,b,-9000000000000000000\n5000,b,-9000000000000000000\n",
    )
    .unwrap();
    for workers in ["1", "2"] {
        let out = ok(&["--input", input.to_str().unwrap(), "--tumbling", "10s", "-w", workers]);
        assert_eq!(
            body(&out),
            vec![
                "0,10000,a,3,27000000000000000000,9000000000000000000,9000000000000000000".to_string(),
                "0,10000,b,2,-18000000000000000000,-9000000000000000000,-9000000000000000000".to_string(),
            ]
        );
    }
}

#[test]
fn regression_events_at_the_top_of_the_time_range_are_counted() {
    // An event at 18446744073709550000 was read and then neither output, late nor malformed
    // (issue 13, item 7): its window ends at the end of time (saturating) and is output. An
    // event at u64::MAX itself is outside every window (windows are half-open and end at
    // u64::MAX at most): it is counted late, not lost silently.
    let dir = temp_dir("top-of-time");
    let input = dir.join("in.csv");
    std::fs::write(
        &input,
        "event_time_ms,key,value\n1000,a,1\n18446744073709550000,a,2\n18446744073709551614,b,3\n18446744073709551615,c,4\n",
    )
    .unwrap();
    for workers in ["1", "2"] {
        let output = run(&["--input", input.to_str().unwrap(), "--tumbling", "10s", "-w", workers]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stderr}");
        let rows = body(&String::from_utf8_lossy(&output.stdout));
        assert_eq!(
            rows,
            vec![
                "0,10000,a,1,1,1,1".to_string(),
                "18446744073709550000,18446744073709551615,a,1,2,2,2".to_string(),
                "18446744073709550000,18446744073709551615,b,1,3,3,3".to_string(),
            ],
            "{stderr}"
        );
        assert!(stderr.contains("1 late dropped"), "the event at u64::MAX is counted late: {stderr}");
    }
}
