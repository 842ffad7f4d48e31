//! `patterns` end to end: random logins, out of order within the watermark bound, at 1 and 2
//! workers, against a from-scratch scan of each user's logins in time order; and killed at
//! random moments with checkpoints, resumed from the process function's state.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_patterns");

/// A small deterministic generator.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// `count` random logins, about 5 per second over 40 users, a fifth of them successes,
/// out of order by up to 2 s (under the 5 s bound: nothing is behind the watermark), written
/// to `dir/logins.csv`.
fn write_logins(dir: &Path, count: u64, seed: u64) -> (Vec<(u64, String, &'static str)>, std::path::PathBuf) {
    let mut rng = Lcg(seed);
    let mut logins = Vec::new();
    for i in 0..count {
        let time = 1_767_225_600_000 + i * 200 - rng.below(2_000);
        let user = format!("user-{:02}", rng.below(40));
        let outcome = if rng.below(5) == 0 { "ok" } else { "fail" };
        logins.push((time, user, outcome));
    }
    let input = dir.join("logins.csv");
    let mut text = String::from("event_time_ms,user,outcome\n");
    for (time, user, outcome) in &logins {
        text.push_str(&format!("{time},{user},{outcome}\n"));
    }
    std::fs::write(&input, text).unwrap();
    (logins, input)
}

/// Alerts from scratch: per user, logins sorted by (time, outcome) — the order the process
/// function sees them when nothing is behind the watermark — failures within `within` before a
/// success, at least `failures` of them, a success starting over.
fn model(logins: &[(u64, String, &str)], failures: usize, within: u64) -> Vec<String> {
    let mut per_user: BTreeMap<&str, Vec<(u64, &str)>> = BTreeMap::new();
    for (time, user, outcome) in logins {
        per_user.entry(user).or_default().push((*time, outcome));
    }
    let mut alerts = Vec::new();
    for (user, mut events) in per_user {
        events.sort();
        let mut failed: Vec<u64> = Vec::new();
        for (time, outcome) in events {
            failed.retain(|f| f + within > time);
            if outcome == "ok" {
                if failed.len() >= failures {
                    alerts.push((time, format!("{user},{},{time},{}", failed[0], failed.len())));
                }
                failed.clear();
            } else {
                failed.push(time);
            }
        }
    }
    // The sink writes by time (each alert at its success's time), then by row.
    alerts.sort();
    alerts.into_iter().map(|(_, row)| row).collect()
}

#[test]
fn brute_force_alerts_match_a_from_scratch_scan_at_every_worker_count() {
    let dir = std::env::temp_dir().join(format!("tideline-patterns-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (logins, input) = write_logins(&dir, 20_000, 29);
    let want = model(&logins, 3, 10_000);
    assert!(want.len() > 100, "the data should give alerts ({})", want.len());
    for workers in ["1", "2"] {
        let output = Command::new(BIN)
            .args(["--input", input.to_str().unwrap(), "--failures", "3", "--within", "10s", "-w", workers])
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let stdout = String::from_utf8(output.stdout).unwrap();
        let mut lines = stdout.lines();
        assert_eq!(lines.next(), Some("user,first_failure_ms,success_ms,failures"));
        let got: Vec<String> = lines.map(str::to_string).collect();
        assert_eq!(got, want, "{workers} workers");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn killed_at_random_moments_it_resumes_from_the_process_functions_state_and_alerts_as_uninterrupted() {
    let dir = std::env::temp_dir().join(format!("tideline-patterns-kill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let (logins, input) = write_logins(&dir, 400_000, seed % 1_000);
    let want = model(&logins, 3, 10_000);
    let output = dir.join("alerts.csv");
    let checkpoints = dir.join("checkpoints");
    let args = |workers: &str| {
        [
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
            "--failures",
            "3",
            "--within",
            "10s",
            "--checkpoint-dir",
            checkpoints.to_str().unwrap(),
            "--checkpoint-interval",
            "30ms",
            "-w",
            workers,
        ]
        .map(String::from)
    };
    let mut rng = Lcg(seed);
    let (mut kills, mut resumes) = (0, String::new());
    for attempt in 0..5 {
        let workers = ["1", "2"][rng.below(2) as usize];
        let before = crate::checkpoints::newest_checkpoint(&checkpoints);
        let fault = (attempt == 2).then_some("part");
        let mut command = Command::new(BIN);
        command.args(args(workers)).env("RUST_LOG", "warn").stdout(Stdio::null()).stderr(Stdio::piped());
        if let Some(fault) = fault {
            command.env("TIDELINE_FAULT", fault);
        }
        let mut child = command.spawn().unwrap();
        if fault.is_none() {
            // Killed once a new checkpoint is committed, after a random further delay.
            let delay = Duration::from_millis(rng.below(60));
            kills += crate::checkpoints::kill_after_a_new_checkpoint(&mut child, &checkpoints, before, delay) as usize;
        }
        let status = child.wait().unwrap();
        let mut stderr = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        assert!(!stderr.contains("panicked"), "attempt {attempt} (seed {seed}): {stderr}");
        resumes.extend(stderr.lines().filter(|l| l.contains("resuming from")).map(|l| format!("{l}\n")));
        if fault.is_some() && !status.success() {
            assert!(stderr.contains("fault injected"), "attempt {attempt} (seed {seed}): {stderr}");
            kills += 1;
        }
        if status.success() {
            break;
        }
    }
    let last = Command::new(BIN).args(args("2")).output().unwrap();
    let stderr = String::from_utf8_lossy(&last.stderr);
    assert!(last.status.success(), "seed {seed}: {stderr}");
    resumes.extend(stderr.lines().filter(|l| l.contains("resuming from")).map(|l| format!("{l}\n")));
    assert!(kills >= 2, "seed {seed}: the runs should have been killed mid-way ({kills} kills)");
    assert!(
        resumes.contains("operator state as of event time 1"),
        "seed {seed}: no run resumed from the process function's state:\n{resumes}"
    );
    let text = std::fs::read_to_string(&output).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("user,first_failure_ms,success_ms,failures"));
    let got: Vec<String> = lines.map(str::to_string).collect();
    assert!(got == want, "seed {seed}: {} alerts, {} expected; resumes:\n{resumes}", got.len(), want.len());
    assert_eq!(crate::checkpoints::newest_checkpoint(&checkpoints), None, "a completed run removes its checkpoints");
    let _ = std::fs::remove_dir_all(&dir);
}
