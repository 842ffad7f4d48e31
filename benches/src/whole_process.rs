//! The whole-process benchmark (`harness --whole-process`): the `window_agg` example program
//! at one and two workers against the hand-written loop `window_loop` (H), each a separate
//! process reading the same generated bid file ([`crate::bids`]) and writing CSV, with wall
//! time and peak resident memory measured per child (`wait4`), and the outputs compared with
//! H's.
//!
//! The binaries are taken from the directory of the running harness, so build them in the
//! same profile first:
//!
//! ```text
//! cargo build --release -p tideline-examples --bin window_agg
//! cargo build --release -p tideline-benches --bin harness --bin window_loop
//! target/release/harness --whole-process
//! ```

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::bids::BidShape;

/// A query of the whole-process benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Query {
    /// Tumbling 10 s windows per auction.
    Tumbling,
    /// Sliding 10 s windows every 2 s per auction.
    Sliding,
    /// Sessions with a 30 s gap per bidder.
    Sessions,
}

impl Query {
    /// Every query, in the order the table reports them.
    pub const ALL: [Query; 3] = [Query::Tumbling, Query::Sliding, Query::Sessions];

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Query::Tumbling => "tumbling",
            Query::Sliding => "sliding",
            Query::Sessions => "sessions",
        }
    }

    /// The query called `name`.
    pub fn from_name(name: &str) -> Option<Query> {
        Query::ALL.into_iter().find(|q| q.name() == name)
    }

    /// The window flags, the same for `window_agg` and `window_loop`.
    pub fn window_args(self) -> [&'static str; 2] {
        match self {
            Query::Tumbling => ["--tumbling", "10s"],
            Query::Sliding => ["--sliding", "10s,2s"],
            Query::Sessions => ["--session", "30s"],
        }
    }

    /// Sessions are per bidder, windows per auction.
    fn by_bidder(self) -> bool {
        self == Query::Sessions
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Input sizes (events).
    pub events: Vec<u64>,
    /// Runs of each program on each input.
    pub runs: usize,
    /// The queries.
    pub queries: Vec<Query>,
    /// Where the generated inputs are cached and the outputs written (default: `whole-process`
    /// in the target directory, beside the profile's directory).
    pub data_dir: Option<PathBuf>,
    /// The out-of-order rows' largest delay (ms); the default, 5 000, equals the watermark's
    /// out-of-orderness, so no record is behind the watermark. Larger makes late records.
    pub max_delay_ms: u64,
    /// Require `window_agg`'s output to be byte-identical to H's (the default); `false`: the
    /// same rows in any order are enough (and a different order is reported, not failed).
    pub byte_identical: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            events: vec![1_000_000, 2_000_000],
            runs: 3,
            queries: Query::ALL.to_vec(),
            data_dir: None,
            max_delay_ms: BidShape::new(0).max_delay_ms,
            byte_identical: true,
        }
    }
}

/// The watermark bound both programs are given.
const OUT_OF_ORDERNESS: &str = "5s";

/// One child process, measured.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct ChildRun {
    /// Wall-clock seconds from spawning the child to reaping it.
    pub seconds: f64,
    /// User + system CPU seconds of the child.
    pub cpu_seconds: f64,
    /// Peak resident memory of the child (MB, from `ru_maxrss`).
    pub peak_mb: f64,
}

/// Runs `command` (standard input and output closed, standard error to `stderr`) and measures
/// it. Fails if it cannot start or does not exit successfully.
///
/// The peak is exact only if the calling process is small: Linux carries the parent's peak
/// resident memory into the child's `ru_maxrss` when the child execs (the child reports the
/// larger of the two). So the harness, which holds outputs in memory to compare them, does
/// not call this itself but starts a fresh, small copy of itself to do it
/// ([`measure_child_main`]); [`run`] prints that copy's own peak as the floor
/// below which figures mean nothing.
pub fn measure(command: &mut Command, stderr: &Path) -> io::Result<ChildRun> {
    let errors = File::create(stderr)?;
    command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(errors);
    let started = Instant::now();
    let child = command.spawn()?;
    let (status, usage) = wait4(child)?;
    let seconds = started.elapsed().as_secs_f64();
    if !status.success() {
        let text = std::fs::read_to_string(stderr).unwrap_or_default();
        return Err(io::Error::other(format!("{command:?} failed ({status}):\n{text}")));
    }
    let time = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(ChildRun {
        seconds,
        cpu_seconds: time(usage.ru_utime) + time(usage.ru_stime),
        peak_mb: usage.ru_maxrss as f64 / 1_000.0,
    })
}

/// The measuring helper (`harness --measure-child STDERR PROGRAM ARGS…`, started by the
/// whole-process benchmark): runs the program with [`measure`] and prints its [`ChildRun`] as
/// JSON on standard output. Fails (printing the error) if the program fails.
pub fn measure_child_main(mut args: impl Iterator<Item = OsString>) -> ExitCode {
    let (Some(stderr), Some(program)) = (args.next(), args.next()) else {
        eprintln!("harness: --measure-child STDERR PROGRAM [ARGS…]");
        return ExitCode::from(2);
    };
    match measure(Command::new(program).args(args), Path::new(&stderr)) {
        Ok(run) => {
            println!("{}", serde_json::to_string(&run).expect("serializable"));
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("{error}");
            ExitCode::FAILURE
        }
    }
}

/// Measures `program args` through the measuring helper (a fresh, small harness process: see
/// [`measure`]).
fn measure_via_helper(program: &Path, args: &[OsString], stderr: &Path) -> io::Result<ChildRun> {
    let output = Command::new(std::env::current_exe()?)
        .arg("--measure-child")
        .arg(stderr)
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    if !output.status.success() {
        return Err(io::Error::other(String::from_utf8_lossy(&output.stderr).into_owned()));
    }
    serde_json::from_slice(&output.stdout).map_err(|e| io::Error::other(format!("measuring helper: {e}")))
}

/// Waits for `child` with `wait4`, which reports the resources it used; `std` only reports
/// its exit status.
#[allow(unsafe_code)]
fn wait4(child: std::process::Child) -> io::Result<(ExitStatus, libc::rusage)> {
    use std::os::unix::process::ExitStatusExt;
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: all-zero bytes are a valid `rusage` (a struct of integers).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `pid` is our child, not yet reaped (`std` reaps only in `wait`, which is
        // never called on it: `child` is dropped unwaited below); both pointers are to live,
        // writable locals of the right types.
        let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if reaped == pid {
            break;
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
    drop(child);
    Ok((ExitStatus::from_raw(status), usage))
}

/// How an output compares with H's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Comparison {
    /// The same bytes.
    Identical,
    /// The same rows (and header), in another order.
    SameRows,
    /// Different rows: how many only in this output, how many only in H's, and an example.
    Different {
        /// Rows (with multiplicity) only in this output.
        only_here: usize,
        /// Rows (with multiplicity) only in H's output.
        only_in_h: usize,
        /// The first few differing rows, each marked `<` (here) or `>` (H).
        examples: Vec<String>,
    },
}

/// Compares two CSV outputs: bytes first, then the multisets of their lines.
pub fn compare(output: &[u8], reference: &[u8]) -> Comparison {
    if output == reference {
        return Comparison::Identical;
    }
    let lines = |bytes: &[u8]| -> Vec<Vec<u8>> {
        let mut lines: Vec<Vec<u8>> = bytes.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
        if lines.last().is_some_and(Vec::is_empty) {
            lines.pop();
        }
        // The header stays first; the rows are compared as a multiset.
        if lines.len() > 1 {
            lines[1..].sort_unstable();
        }
        lines
    };
    let (a, b) = (lines(output), lines(reference));
    if a == b {
        return Comparison::SameRows;
    }
    let (mut i, mut j) = (0, 0);
    let (mut only_here, mut only_in_h, mut examples) = (0, 0, Vec::new());
    let note = |mark: char, line: &[u8], examples: &mut Vec<String>| {
        if examples.len() < 6 {
            examples.push(format!("{mark} {}", String::from_utf8_lossy(line)));
        }
    };
    while i < a.len() || j < b.len() {
        let order = match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) if i == 0 || j == 0 => {
                if x == y {
                    std::cmp::Ordering::Equal
                } else {
                    // Different headers: report both.
                    std::cmp::Ordering::Less
                }
            }
            (Some(x), Some(y)) => x.cmp(y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, _) => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Equal => (i, j) = (i + 1, j + 1),
            std::cmp::Ordering::Less => {
                note('<', &a[i], &mut examples);
                only_here += 1;
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                note('>', &b[j], &mut examples);
                only_in_h += 1;
                j += 1;
            }
        }
    }
    Comparison::Different { only_here, only_in_h, examples }
}

/// The programs of one comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Program {
    /// `window_agg -w N`.
    Engine(usize),
    /// `window_loop`.
    Hand,
}

impl Program {
    fn label(self) -> String {
        match self {
            Program::Engine(w) => format!("E -w{w}"),
            Program::Hand => "H".into(),
        }
    }

    fn file_tag(self) -> String {
        match self {
            Program::Engine(w) => format!("w{w}"),
            Program::Hand => "h".into(),
        }
    }
}

const PROGRAMS: [Program; 3] = [Program::Engine(1), Program::Engine(2), Program::Hand];

/// Runs the benchmark and prints its table; returns false if an output differed from H's
/// (in rows, or in bytes with [`Options::byte_identical`]).
pub fn run(options: &Options) -> io::Result<bool> {
    let exe = std::env::current_exe()?;
    let bin_dir = exe.parent().expect("the harness is in a directory").to_path_buf();
    let binary = |name: &str| -> io::Result<PathBuf> {
        let path = bin_dir.join(name);
        if path.is_file() {
            Ok(path)
        } else {
            Err(io::Error::other(format!(
                "{} not found: build it next to the harness, in the same profile, e.g.\n  \
                 cargo build --release -p tideline-examples --bin window_agg\n  \
                 cargo build --release -p tideline-benches --bin harness --bin window_loop",
                path.display()
            )))
        }
    };
    let (window_agg, window_loop) = (binary("window_agg")?, binary("window_loop")?);
    let data_dir = match &options.data_dir {
        Some(dir) => dir.clone(),
        None => bin_dir.parent().unwrap_or(&bin_dir).join("whole-process"),
    };
    std::fs::create_dir_all(&data_dir)?;

    println!(
        "Whole-process benchmark: window_agg (E, {}) at 1 and 2 workers vs the hand-written loop (H, {}),\n\
         bid-like input (~1 event per ms, 10 000 auctions / 100 000 bidders with rotating hot sets, \
         5 % of rows up to {} ms out of order), --out-of-orderness {OUT_OF_ORDERNESS}; {} run(s) each, median wall time; \
         data in {}",
        window_agg.display(),
        window_loop.display(),
        options.max_delay_ms,
        options.runs,
        data_dir.display()
    );
    let floor = measure_via_helper(Path::new("true"), &[], &data_dir.join("stderr-true.txt"))?;
    println!(
        "Peak memory floor (the measuring helper's own peak; smaller peaks read as this): {:.1} MB",
        floor.peak_mb
    );
    let mut inputs = Vec::new();
    for &events in &options.events {
        inputs.push((events, input_files(&data_dir, events, options.max_delay_ms)?));
    }

    println!(
        "{:<9} {:>8} {:>8} {:>8} {:>8} {:>6} {:>6} {:>9} {:>9} {:>7} {:>9}  output vs H",
        "query", "events", "E -w1 s", "E -w2 s", "H s", "E1/H", "E2/H", "E -w1 MB", "E -w2 MB", "H MB", "rows"
    );
    let mut details = String::new();
    let mut all_agree = true;
    for &query in &options.queries {
        for (events, (by_auction, by_bidder)) in &inputs {
            let input = if query.by_bidder() { by_bidder } else { by_auction };
            let mut runs: Vec<Vec<ChildRun>> = vec![Vec::new(); PROGRAMS.len()];
            let mut verdicts: Vec<Comparison> = Vec::new();
            let mut rows = 0;
            for _ in 0..options.runs.max(1) {
                // The programs alternate, so that a disturbance of the machine is shared.
                for (index, program) in PROGRAMS.into_iter().enumerate() {
                    let tag = format!("{}-{events}-{}", query.name(), program.file_tag());
                    let output = data_dir.join(format!("out-{tag}.csv"));
                    let mut args: Vec<OsString> = match program {
                        Program::Engine(workers) => vec!["-w".into(), workers.to_string().into()],
                        Program::Hand => Vec::new(),
                    };
                    args.extend(["--input".into(), input.into()]);
                    args.extend(["--out-of-orderness", OUT_OF_ORDERNESS].map(OsString::from));
                    args.extend(query.window_args().map(OsString::from));
                    args.extend(["--output".into(), output.into(), "--quiet".into()]);
                    let binary = if program == Program::Hand { &window_loop } else { &window_agg };
                    let stderr = data_dir.join(format!("stderr-{tag}.txt"));
                    runs[index].push(measure_via_helper(binary, &args, &stderr)?);
                }
                let reference = std::fs::read(data_dir.join(format!("out-{}-{events}-h.csv", query.name())))?;
                rows = reference.iter().filter(|b| **b == b'\n').count().saturating_sub(1);
                for program in [Program::Engine(1), Program::Engine(2)] {
                    let output = std::fs::read(data_dir.join(format!(
                        "out-{}-{events}-{}.csv",
                        query.name(),
                        program.file_tag()
                    )))?;
                    let verdict = compare(&output, &reference);
                    if !verdicts.contains(&verdict) {
                        if let Comparison::Different { only_here, only_in_h, examples } = &verdict {
                            let _ = writeln!(
                                details,
                                "{} {events} {}: {only_here} row(s) only in E, {only_in_h} only in H, e.g.\n    {}",
                                query.name(),
                                program.label(),
                                examples.join("\n    ")
                            );
                        }
                        verdicts.push(verdict);
                    }
                }
            }
            let agree = verdicts.iter().all(|v| match v {
                Comparison::Identical => true,
                Comparison::SameRows => !options.byte_identical,
                Comparison::Different { .. } => false,
            });
            all_agree &= agree;
            let verdict = if verdicts.iter().any(|v| matches!(v, Comparison::Different { .. })) {
                "DIFFERENT ROWS: FAIL"
            } else if verdicts.iter().all(|v| *v == Comparison::Identical) {
                "identical bytes"
            } else if options.byte_identical {
                "same rows, different order: FAIL (--byte-identical)"
            } else {
                "same rows, different order"
            };
            let median = |index: usize| median(runs[index].iter().map(|r| r.seconds).collect());
            let peak = |index: usize| runs[index].iter().map(|r| r.peak_mb).fold(0.0, f64::max);
            let (e1, e2, h) = (median(0), median(1), median(2));
            println!(
                "{:<9} {:>8} {:>8.2} {:>8.2} {:>8.2} {:>6.2} {:>6.2} {:>9.1} {:>9.1} {:>7.1} {:>9}  {verdict}",
                query.name(),
                events,
                e1,
                e2,
                h,
                e1 / h,
                e2 / h,
                peak(0),
                peak(1),
                peak(2),
                rows
            );
            for (index, program) in PROGRAMS.into_iter().enumerate() {
                let runs = &runs[index];
                let list = |f: fn(&ChildRun) -> f64| runs.iter().map(|r| format!("{:.2}", f(r))).collect::<Vec<_>>();
                let _ = writeln!(
                    details,
                    "{} {events} {}: wall {} s, cpu {} s, peak {} MB",
                    query.name(),
                    program.label(),
                    list(|r| r.seconds).join(" "),
                    list(|r| r.cpu_seconds).join(" "),
                    list(|r| r.peak_mb).join(" ")
                );
            }
        }
    }
    println!(
        "E1/H, E2/H: window_agg's median wall time at 1 and 2 workers over H's. MB: peak resident memory \
         of the whole process (ru_maxrss; the largest over the runs). rows: output rows.\nEvery run:\n{details}"
    );
    Ok(all_agree)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The input files for `events` bids (by auction, by bidder), generated unless already there.
fn input_files(dir: &Path, events: u64, max_delay_ms: u64) -> io::Result<(PathBuf, PathBuf)> {
    let shape = BidShape { max_delay_ms, ..BidShape::new(events) };
    // The name records every parameter that changes the file (and a version of the generator).
    let stem = format!("bids-v1-{events}-seed{:x}-delay{max_delay_ms}", shape.seed);
    let (by_auction, by_bidder) =
        (dir.join(format!("{stem}-by-auction.csv")), dir.join(format!("{stem}-by-bidder.csv")));
    if !(by_auction.is_file() && by_bidder.is_file()) {
        let started = Instant::now();
        crate::bids::write_csv(&shape, &by_auction, &by_bidder)?;
        println!(
            "generated {} and its by-bidder twin in {:.1}s",
            by_auction.display(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok((by_auction, by_bidder))
}
