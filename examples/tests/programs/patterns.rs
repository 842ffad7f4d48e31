//! `patterns` end to end: random logins, out of order within the watermark bound, at 1 and 2
//! workers, against a from-scratch scan of each user's logins in time order.

use std::collections::BTreeMap;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_patterns");

/// A small deterministic generator.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
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
    let mut rng = Lcg(29);
    let mut logins = Vec::new();
    for i in 0..20_000u64 {
        // About 5 logins per second over 40 users; a fifth succeed. Disorder up to 2 s, under
        // the 5 s bound: nothing is behind the watermark.
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
