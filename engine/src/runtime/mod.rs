//! The runtime: worker and cluster configuration, helpers that run a dataflow to completion,
//! and the pieces every dataflow shares — control channels between workers ([`control`]), flow
//! control and durability bookkeeping ([`flow`]), and metrics ([`metrics`]).
//!
//! Any Tideline program runs with N worker threads in one process (`-w N`) and as several
//! processes forming a cluster through timely's own communication layer
//! (`-n PROCESSES -p INDEX [-h HOSTFILE]`). [`Cluster::from_args`] takes those flags out of
//! the command line and leaves the program's own flags, because timely's parser rejects any
//! flag it does not know.

pub mod control;
pub mod flow;
pub mod metrics;

use std::sync::Arc;

use differential_dataflow::VecCollection;
use timely::dataflow::Scope;
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::{CommunicationConfig, WorkerConfig};

use crate::error::{Error, Result};
use crate::sink::{Collected, Sink};
use crate::time::Time;

/// Data that can live in a collection and travel between workers and processes: the bounds
/// of differential's `ExchangeData`, plus `Hash` (for exchange by key).
pub trait ExchangeData: differential_dataflow::ExchangeData + std::hash::Hash {}
impl<T: differential_dataflow::ExchangeData + std::hash::Hash> ExchangeData for T {}

/// Worker and process configuration of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    /// Worker threads in this process (`-w`, `--workers`, `--threads`).
    pub workers: usize,
    /// Number of processes (`-n`, `--processes`).
    pub processes: usize,
    /// This process's index, `0..processes` (`-p`, `--process`).
    pub process: usize,
    /// A file with one `host:port` per process (`-h`, `--hostfile`); default
    /// `localhost:2101`, `localhost:2102`, ….
    pub hostfile: Option<String>,
    /// Report connection progress (`-r`, `--report`).
    pub report: bool,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster { workers: 1, processes: 1, process: 0, hostfile: None, report: false }
    }
}

/// The flags [`Cluster::from_args`] understands, for `--help` texts.
pub const CLUSTER_FLAGS_HELP: &str = "\
\x20 -w, --workers N      worker threads per process (default 1)
  -n, --processes N    number of processes in the cluster (default 1)
  -p, --process I      index of this process, 0..N (default 0)
  -h, --hostfile FILE  one host:port per process (default localhost:2101, 2102, ...)
  -r, --report         report cluster connection progress";

impl Cluster {
    /// A single process with `workers` threads.
    pub fn threads(workers: usize) -> Self {
        Cluster { workers: workers.max(1), ..Cluster::default() }
    }

    /// Takes the cluster flags out of `args` and returns them with the remaining arguments,
    /// in order.
    ///
    /// ```
    /// use tideline::runtime::Cluster;
    ///
    /// let args = ["--input", "x.csv", "-w", "4", "--tumbling", "10s", "-n2", "-p", "1"];
    /// let (cluster, rest) = Cluster::from_args(args.iter().map(|s| s.to_string())).unwrap();
    /// assert_eq!((cluster.workers, cluster.processes, cluster.process), (4, 2, 1));
    /// assert_eq!(rest, ["--input", "x.csv", "--tumbling", "10s"]);
    /// ```
    pub fn from_args(args: impl IntoIterator<Item = String>) -> Result<(Cluster, Vec<String>)> {
        let mut cluster = Cluster::default();
        let mut rest = Vec::new();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let (flag, inline) = split_flag(&arg);
            let target = match flag {
                "-w" | "--workers" | "--threads" => Some("workers"),
                "-n" | "--processes" => Some("processes"),
                "-p" | "--process" => Some("process"),
                "-h" | "--hostfile" => Some("hostfile"),
                "-r" | "--report" => {
                    cluster.report = true;
                    None
                }
                _ => {
                    rest.push(arg);
                    continue;
                }
            };
            let Some(target) = target else { continue };
            let value = match inline {
                Some(v) => v.to_string(),
                None => args.next().ok_or_else(|| Error::Config(format!("{flag} needs a value")))?,
            };
            let number = || {
                value
                    .parse::<usize>()
                    .map_err(|_| Error::Config(format!("{flag} expects a whole number, got {value:?}")))
            };
            match target {
                "workers" => cluster.workers = number()?,
                "processes" => cluster.processes = number()?,
                "process" => cluster.process = number()?,
                _ => cluster.hostfile = Some(value.clone()),
            }
        }
        cluster.validate()?;
        Ok((cluster, rest))
    }

    fn validate(&self) -> Result<()> {
        if self.workers == 0 {
            return Err(Error::Config("-w must be at least 1".into()));
        }
        if self.processes == 0 {
            return Err(Error::Config("-n must be at least 1".into()));
        }
        if self.process >= self.processes {
            return Err(Error::Config(format!(
                "-p {} is out of range: with -n {} processes are numbered 0..{}",
                self.process,
                self.processes,
                self.processes - 1
            )));
        }
        Ok(())
    }

    /// The timely configuration for this cluster.
    pub fn timely_config(&self) -> Result<timely::Config> {
        self.validate()?;
        let communication = if self.processes > 1 {
            let addresses = match &self.hostfile {
                Some(path) => {
                    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
                    let lines: Vec<String> =
                        text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
                    if lines.len() < self.processes {
                        return Err(Error::Config(format!(
                            "hostfile {path} lists {} addresses but -n is {}",
                            lines.len(),
                            self.processes
                        )));
                    }
                    lines.into_iter().take(self.processes).collect()
                }
                None => (0..self.processes).map(|i| format!("localhost:{}", 2101 + i)).collect(),
            };
            CommunicationConfig::Cluster {
                threads: self.workers,
                process: self.process,
                addresses,
                report: self.report,
                zerocopy: false,
            }
        } else if self.workers > 1 {
            CommunicationConfig::Process(self.workers)
        } else {
            CommunicationConfig::Thread
        };
        Ok(timely::Config { communication, worker: WorkerConfig::default() })
    }

    /// Total workers over all processes.
    pub fn peers(&self) -> usize {
        self.workers * self.processes
    }
}

fn split_flag(arg: &str) -> (&str, Option<&str>) {
    if let Some(long) = arg.strip_prefix("--") {
        match long.split_once('=') {
            Some((name, value)) => (&arg[..name.len() + 2], Some(value)),
            None => (arg, None),
        }
    } else if arg.len() > 2 && arg.starts_with('-') && matches!(&arg[..2], "-w" | "-n" | "-p" | "-h") {
        (&arg[..2], Some(&arg[2..]))
    } else {
        (arg, None)
    }
}

/// Runs `logic` on every worker of `cluster` and returns the results of this process's
/// workers, in worker order. A runtime that cannot start is an [`Error::Startup`]; a panicking
/// worker becomes an [`Error::WorkerPanicked`] (the first, in worker order).
pub fn execute<T, F>(cluster: &Cluster, logic: F) -> Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(&mut timely::worker::Worker) -> T + Send + Sync + 'static,
{
    let config = cluster.timely_config()?;
    // The panic is caught on the worker's thread, where its message is still at hand (timely's
    // join reports only that a thread panicked).
    let guards = timely::execute(config, move |worker| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| logic(worker)))
            .map_err(|payload| panic_message(&*payload))
    })
    .map_err(|reason| {
        tracing::error!(%reason, "the runtime could not start");
        Error::Startup { reason }
    })?;
    guards
        .join()
        .into_iter()
        .enumerate()
        .map(|(worker, result)| {
            result.and_then(|r| r).map_err(|message| {
                tracing::error!(worker, %message, "a worker panicked");
                Error::WorkerPanicked { worker, message }
            })
        })
        .collect()
}

/// The text of a panic's payload (`panic!` with a message gives a `&str` or a `String`).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    match (payload.downcast_ref::<&str>(), payload.downcast_ref::<String>()) {
        (Some(s), _) => (*s).to_string(),
        (_, Some(s)) => s.clone(),
        _ => "a panic without a message".to_string(),
    }
}

/// Runs the dataflow built by `build` on `workers` threads until it completes, and returns
/// the changelog of the collection it returns: consolidated `(data, time, diff)`, sorted by
/// time, then data. For tests, examples and documentation over bounded inputs.
pub fn collect<D, F>(workers: usize, build: F) -> Vec<(D, Time, isize)>
where
    D: ExchangeData,
    F: for<'scope> Fn(Scope<'scope, Time>) -> VecCollection<'scope, Time, D> + Send + Sync + 'static,
{
    let collected = Collected::new();
    let shared = collected.clone();
    let build = Arc::new(build);
    execute(&Cluster::threads(workers), move |worker| {
        let probe = ProbeHandle::new();
        let shared = shared.clone();
        let build = Arc::clone(&build);
        worker.dataflow::<Time, _, _>(|scope| {
            let output = build(scope).probe_with(&probe);
            output.collect_into(&shared);
        });
        while !probe.done() {
            worker.step();
        }
    })
    .expect("dataflow failed");
    collected.changelog()
}
