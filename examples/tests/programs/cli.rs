//! What every example program's command line has in common (clap, with timely's cluster
//! flags in the same parser): `--version`, `--help` with the cluster flags, and usage errors
//! that exit 2 with a hint.

use std::process::Command;

const BINARIES: [(&str, &str); 4] = [
    ("window_agg", env!("CARGO_BIN_EXE_window_agg")),
    ("nexmark", env!("CARGO_BIN_EXE_nexmark")),
    ("ledger", env!("CARGO_BIN_EXE_ledger")),
    ("kafka_pipeline", env!("CARGO_BIN_EXE_kafka_pipeline")),
];

#[test]
fn every_program_has_version_help_and_cluster_flags() {
    for (name, bin) in BINARIES {
        let version = Command::new(bin).arg("--version").output().unwrap();
        assert!(version.status.success(), "{name} --version");
        assert_eq!(String::from_utf8_lossy(&version.stdout).trim(), format!("{name} {}", env!("CARGO_PKG_VERSION")));
        let help = Command::new(bin).arg("--help").output().unwrap();
        assert!(help.status.success(), "{name} --help");
        let help = String::from_utf8_lossy(&help.stdout);
        for flag in ["-w, --workers", "-n, --processes", "-p, --process", "-h, --hostfile", "-r, --report", "--version"]
        {
            assert!(help.contains(flag), "{name} --help lists {flag}:\n{help}");
        }
    }
}

#[test]
fn every_program_reports_usage_errors_with_exit_code_2_and_a_hint() {
    for (name, bin) in BINARIES {
        for (args, message) in [
            (vec!["--no-such-flag"], "unexpected argument '--no-such-flag'"),
            (vec!["-w", "zero"], "expected a whole number"),
            (vec!["-n", "2", "-p", "2"], "-p 2 is out of range: with -n 2 processes are numbered 0..1"),
        ] {
            let output = Command::new(bin).args(&args).output().unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(2), "{name} {args:?}: {stderr}");
            // A program may report a missing required flag first; the hint is always there.
            assert!(stderr.contains("try '--help'"), "{name} {args:?}: {stderr}");
            if !stderr.contains("required arguments were not provided") {
                assert!(stderr.contains(message), "{name} {args:?}: expected {message:?} in {stderr}");
            }
        }
    }
}
