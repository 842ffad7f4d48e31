//! What the example programs' command lines share, for `clap`'s derive API.
//!
//! Each program's parser is a `#[derive(clap::Parser)]` struct of its own flags with shared
//! groups flattened into it: [`ClusterArgs`] (timely's `-w -n -p -h -r`) today; a group for
//! another concern (observability, say) is one more `#[derive(clap::Args)]` struct here and
//! one more `#[command(flatten)]` field in each program.
//!
//! Timely's `-h` names the hostfile, so the programs turn off clap's `-h` and keep `--help`
//! (see [`HelpFlag`]). Usage errors exit with code 2 and a hint to run `--help`.

use std::time::Duration;

use tideline::runtime::Cluster;
use tideline::time::{format_duration, parse_duration};

/// Timely's cluster flags, as one group of a program's flags.
///
/// ```
/// use clap::Parser;
/// use tideline_examples::cli::{ClusterArgs, HelpFlag};
///
/// #[derive(Parser)]
/// #[command(disable_help_flag = true)]
/// struct Cli {
///     #[command(flatten)]
///     help: HelpFlag,
///     #[arg(long)]
///     input: String,
///     #[command(flatten)]
///     cluster: ClusterArgs,
/// }
///
/// let cli = Cli::try_parse_from(["prog", "--input", "x.csv", "-w", "4", "-n2", "-p", "1"]).unwrap();
/// let cluster = cli.cluster.to_cluster().unwrap();
/// assert_eq!((cluster.workers, cluster.processes, cluster.process), (4, 2, 1));
/// assert!(Cli::try_parse_from(["prog", "--input", "x.csv", "-w", "0"]).is_err());
/// ```
#[derive(clap::Args, Clone, Debug, PartialEq, Eq)]
#[command(next_help_heading = "Cluster (timely)")]
pub struct ClusterArgs {
    /// Worker threads per process
    #[arg(short = 'w', long = "workers", visible_alias = "threads", value_name = "N", default_value_t = 1,
          value_parser = at_least_one)]
    pub workers: usize,
    /// Number of processes in the cluster
    #[arg(short = 'n', long = "processes", value_name = "N", default_value_t = 1, value_parser = at_least_one)]
    pub processes: usize,
    /// Index of this process, 0..N
    #[arg(short = 'p', long = "process", value_name = "I", default_value_t = 0)]
    pub process: usize,
    /// One host:port per process [default: localhost:2101, localhost:2102, ...]
    #[arg(short = 'h', long = "hostfile", value_name = "FILE")]
    pub hostfile: Option<String>,
    /// Report cluster connection progress
    #[arg(short = 'r', long = "report")]
    pub report: bool,
}

impl ClusterArgs {
    /// The cluster these flags describe; an error names the flag to change.
    pub fn to_cluster(&self) -> Result<Cluster, String> {
        if self.process >= self.processes {
            return Err(format!(
                "-p {} is out of range: with -n {} processes are numbered 0..{}",
                self.process,
                self.processes,
                self.processes - 1
            ));
        }
        Ok(Cluster {
            workers: self.workers,
            processes: self.processes,
            process: self.process,
            hostfile: self.hostfile.clone(),
            report: self.report,
        })
    }

    /// A warning when this process runs more worker threads than the machine has cores:
    /// each worker is a busy thread, and timely connects every pair of workers for each data
    /// exchange, so far more workers than cores costs time and memory for nothing.
    pub fn oversubscription_warning(&self) -> Option<String> {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        (self.workers > cores).then(|| {
            format!(
                "warning: -w {} runs more worker threads than this machine's {cores} cores; every pair of \
                 workers is connected for each data exchange, so this costs time and memory without \
                 adding parallelism",
                self.workers
            )
        })
    }
}

/// `--help` alone (its short form `-h` is timely's hostfile): flatten into a parser that has
/// `#[command(disable_help_flag = true)]`, before any group with a heading of its own (so that
/// it is listed with `--version`).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct HelpFlag {
    /// Print help
    #[arg(long = "help", action = clap::ArgAction::Help)]
    help: Option<bool>,
}

/// A whole number.
pub fn whole_number(text: &str) -> Result<u64, String> {
    text.parse::<u64>().map_err(|_| format!("expected a whole number, got {text:?}"))
}

/// A whole number of at least 1.
pub fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("expected a whole number, got {text:?}")),
    }
}

/// A duration: a whole number with a unit, `ms`, `s`, `m` or `h` (`250ms`, `10s`, `5m`).
pub fn duration(text: &str) -> Result<Duration, String> {
    parse_duration(text).map_err(|e| e.to_string())
}

/// A duration of at least 1 ms (window sizes, session gaps).
pub fn positive_duration(text: &str) -> Result<Duration, String> {
    let d = duration(text)?;
    if d.is_zero() {
        return Err("must be at least 1ms long".into());
    }
    Ok(d)
}

/// Sliding windows: `SIZE,SLIDE`, both at least 1 ms, the slide no longer than the size
/// (otherwise events between two windows would belong to none and be silently skipped).
pub fn size_and_slide(text: &str) -> Result<(Duration, Duration), String> {
    let (size, slide) =
        text.split_once(',').ok_or_else(|| format!("expected SIZE,SLIDE (e.g. 10s,2s), got {text:?}"))?;
    let (size, slide) = (positive_duration(size)?, positive_duration(slide)?);
    if slide > size {
        return Err(format!(
            "the slide ({}) is longer than the window ({}): events between two windows would belong to \
             none; use a slide of at most the size (a tumbling window when equal)",
            format_duration(slide),
            format_duration(size)
        ));
    }
    Ok((size, slide))
}

/// Exits with a usage error (code 2, with a hint to run `--help`), as clap does for the errors
/// it finds itself.
pub fn usage_error<C: clap::CommandFactory>(message: impl std::fmt::Display) -> ! {
    C::command().error(clap::error::ErrorKind::ValueValidation, message).exit()
}

/// What a path names on this machine, to tell whether two flags name the same file.
#[derive(Clone, Debug, PartialEq, Eq)]
enum FileIdentity {
    /// An existing file: its device and inode.
    Inode(u64, u64),
    /// A file yet to be created: its canonical path.
    Path(std::path::PathBuf),
}

/// The identity of `path` (`-`: standard input), or `None` for what may be shared
/// harmlessly: a character device such as `/dev/null` or a terminal.
fn file_identity(path: &str) -> Option<FileIdentity> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let path = if path == "-" { "/dev/stdin" } else { path };
    match std::fs::metadata(path) {
        Ok(meta) if meta.file_type().is_char_device() => None,
        Ok(meta) => Some(FileIdentity::Inode(meta.dev(), meta.ino())),
        Err(_) => {
            let path = std::path::Path::new(path);
            let parent = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => std::path::Path::new("."),
            };
            let parent = std::fs::canonicalize(parent).unwrap_or_else(|_| parent.to_path_buf());
            Some(FileIdentity::Path(parent.join(path.file_name()?)))
        }
    }
}

/// Refuses two flags that name the same file — by device and inode for existing files
/// (links, `/dev/stdin` and `/proc/self/fd/N` included), by canonical path for new ones —
/// before anything is read or written: an output that is also the input, or two outputs
/// that would overwrite each other, destroy data. Character devices (`/dev/null`) may be
/// shared. `named` is `(flag, path)`; `None` paths are skipped.
///
/// ```
/// use tideline_examples::cli::refuse_same_files;
///
/// let dir = std::env::temp_dir();
/// let out = dir.join("refuse-doc-out.csv").display().to_string();
/// let late = dir.join("refuse-doc-late.csv").display().to_string();
/// assert!(refuse_same_files(&[("--output", Some(&out)), ("--late-output", Some(&late))]).is_ok());
/// let error = refuse_same_files(&[("--output", Some(&out)), ("--late-output", Some(&out))]).unwrap_err();
/// assert!(error.contains("--output and --late-output name the same file"));
/// assert!(refuse_same_files(&[("--output", Some("/dev/null")), ("--late-output", Some("/dev/null"))]).is_ok());
/// ```
pub fn refuse_same_files(named: &[(&str, Option<&str>)]) -> Result<(), String> {
    let identities: Vec<(&str, &str, FileIdentity)> = named
        .iter()
        .filter_map(|(flag, path)| {
            let path = (*path)?;
            Some((*flag, path, file_identity(path)?))
        })
        .collect();
    for (i, (flag, path, identity)) in identities.iter().enumerate() {
        if let Some((other, other_path, _)) = identities[..i].iter().find(|(_, _, id)| id == identity) {
            let shown = if path == other_path { path.to_string() } else { format!("{other_path} and {path}") };
            return Err(format!(
                "{other} and {flag} name the same file ({shown}): one would overwrite the other; give each its own file"
            ));
        }
    }
    Ok(())
}

/// Checks, on every worker of a cluster, that every process runs with the same
/// `configuration` (a text naming whatever decides the results: windows, watermarks, input…),
/// and fails clearly otherwise: processes started with different flags would exchange data
/// under different rules and write wrong results without noticing (issue 13, item 9).
///
/// Call it first in each worker, before building the program's dataflows (it builds and runs
/// one small dataflow of its own: every worker must build the same dataflows in the same
/// order). Every worker sees every process's configuration, so all fail together.
pub fn same_configuration(worker: &mut tideline::timely::worker::Worker, configuration: &str) -> Result<(), String> {
    use std::cell::RefCell;
    use std::rc::Rc;
    use tideline::timely::dataflow::operators::probe::Handle;
    use tideline::timely::dataflow::operators::vec::{Broadcast, ToStream};
    use tideline::timely::dataflow::operators::{Inspect, Probe};

    let seen: Rc<RefCell<Vec<(usize, String)>>> = Rc::default();
    let probe = Handle::new();
    let mine = (worker.index(), configuration.to_string());
    let sink = Rc::clone(&seen);
    worker.dataflow::<u64, _, _>(|scope| {
        vec![mine].to_stream(scope).broadcast().inspect(move |x| sink.borrow_mut().push(x.clone())).probe_with(&probe);
    });
    while !probe.done() {
        worker.step();
    }
    let seen = seen.borrow();
    let differing: Vec<&(usize, String)> = seen.iter().filter(|(_, c)| c != configuration).collect();
    match differing.first() {
        None => Ok(()),
        Some((peer, theirs)) => Err(format!(
            "the processes of this cluster run different configurations: worker {} has {configuration:?}, worker \
             {peer} has {theirs:?}; start every process with the same flags (apart from -p)",
            worker.index()
        )),
    }
}

/// `--checkpoint-dir DIR` of an example program: the checkpoint store, its lock held by process
/// 0 for the whole run (the returned file: a second instance is refused), opened with
/// `interval`; says on standard error which checkpoint the run resumes from, unless `quiet`.
/// `None` without a directory.
pub fn open_checkpoints(
    program: &str,
    dir: Option<&str>,
    interval: std::time::Duration,
    process: usize,
    quiet: bool,
) -> Result<(Option<tideline::checkpoint::Checkpointing>, Option<std::fs::File>), String> {
    use tideline::checkpoint::{Checkpointing, LocalDirStore};
    let Some(dir) = dir else { return Ok((None, None)) };
    let store = LocalDirStore::new(dir).map_err(|e| format!("--checkpoint-dir {dir}: {e}"))?;
    let lock = match process {
        0 => Some(store.lock().map_err(|e| e.to_string())?),
        _ => None,
    };
    let checkpoints = Checkpointing::open(store, interval).map_err(|e| format!("--checkpoint-dir {dir}: {e}"))?;
    if let Some(restored) = checkpoints.restored()
        && !quiet
    {
        match restored.snapshot_at() {
            Some(at) => eprintln!(
                "{program}: resuming from checkpoint {} in {dir} (taken by {} worker(s); operator state as of event \
                 time {at} ms, input re-read from there)",
                restored.id(),
                restored.workers(),
            ),
            None => eprintln!(
                "{program}: resuming from checkpoint {} in {dir} (taken by {} worker(s); no operator state: input \
                 replayed from event time {} ms)",
                restored.id(),
                restored.workers(),
                restored.replay_from()
            ),
        }
    }
    Ok((Some(checkpoints), lock))
}
