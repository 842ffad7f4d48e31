//! The engine's error type.

use std::path::PathBuf;
use std::sync::Arc;

/// Errors reported by the Tideline engine.
///
/// Bad *data* never shows up here: it goes to a dead-letter or late side output. These are
/// errors of configuration, of the environment (files, sockets) and of the engine itself.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is invalid; the message says which and what to do.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A duration could not be parsed (expects e.g. `500ms`, `10s`, `5m`, `1h`).
    #[error("invalid duration {input:?}: {reason} (expected a number followed by ms, s, m or h, e.g. 10s)")]
    Duration {
        /// The text that failed to parse.
        input: String,
        /// Why it failed.
        reason: String,
    },
    /// An I/O operation on a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A sink stopped writing: one of its writers failed with `source` (on `worker`, a global
    /// worker index). What the sink wrote before stays written; nothing after it is.
    #[error("sink {sink} (worker {worker}): {source}")]
    Sink {
        /// The sink's name.
        sink: String,
        /// The worker whose writer failed.
        worker: usize,
        /// The writer's error, as it reported it (shared: every reader of the sink's handle
        /// sees the same error).
        #[source]
        source: Arc<Error>,
    },
    /// A sink was given a retraction, but it only appends (its output cannot take back a
    /// row): the collection is not append-only (late corrections or progressive updates
    /// retract results). Write it as a changelog or upserts instead.
    #[error("received a retraction of {row}: the collection is not append-only; write it as a changelog instead")]
    NotAppendOnly {
        /// The retracted row (its `Debug` text).
        row: String,
    },
    /// A row could not be encoded for output (serialization failed).
    #[error("cannot encode a row: {source}")]
    Encode {
        /// The serializer's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An error of a connector (Kafka, files, ...), keeping its type: get it back with
    /// [`Error::connector_error`].
    #[error("{connector}: {source}")]
    Connector {
        /// The connector's name (`"kafka"`, `"file"`, ...).
        connector: &'static str,
        /// Whether retrying the operation (or restarting the pipeline) may succeed: the
        /// connector's own judgement.
        retryable: bool,
        /// The connector's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The timely runtime could not start, e.g. the processes of a cluster could not connect.
    #[error("the runtime could not start: {reason}")]
    Startup {
        /// Timely's description.
        reason: String,
    },
    /// A worker thread panicked; the dataflow did not complete.
    #[error("worker {worker} panicked: {message}")]
    WorkerPanicked {
        /// The worker's index in this process.
        worker: usize,
        /// The panic's message.
        message: String,
    },
    /// The metrics endpoint could not listen on its address.
    #[error("metrics endpoint {addr}: {source}")]
    MetricsEndpoint {
        /// The address asked for.
        addr: String,
        /// Why it could not listen.
        #[source]
        source: std::io::Error,
    },
    /// A broken internal invariant: this is a bug in Tideline, please report it.
    #[error("internal error (this is a bug in Tideline): {0}")]
    Internal(String),
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    /// A connector's error, keeping its type (see [`Error::connector_error`]).
    pub fn connector(
        connector: &'static str,
        retryable: bool,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Error::Connector { connector, retryable, source: source.into() }
    }

    /// The connector error of type `E` behind this error, if it is one (directly, or as the
    /// cause of a failed sink).
    ///
    /// ```
    /// use tideline::Error;
    ///
    /// #[derive(Debug, thiserror::Error)]
    /// #[error("broker down")]
    /// struct BrokerDown;
    ///
    /// let error = Error::connector("kafka", true, BrokerDown);
    /// assert!(error.connector_error::<BrokerDown>().is_some());
    /// assert!(error.is_retryable());
    /// ```
    pub fn connector_error<E: std::error::Error + 'static>(&self) -> Option<&E> {
        match self {
            Error::Connector { source, .. } => source.downcast_ref::<E>(),
            Error::Sink { source, .. } => source.connector_error(),
            _ => None,
        }
    }

    /// Whether retrying (the operation, or a restart of the pipeline from its last committed
    /// position) may succeed: transient I/O conditions and the connector errors their
    /// connector marks retryable. Configuration errors, bad output and bugs are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Io { source, .. } => is_transient(source.kind()),
            Error::Connector { retryable, .. } => *retryable,
            Error::Sink { source, .. } => source.is_retryable(),
            _ => false,
        }
    }
}

/// I/O error kinds that a retry may get past.
fn is_transient(kind: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind::*;
    matches!(kind, Interrupted | WouldBlock | TimedOut | ConnectionReset | ConnectionAborted | BrokenPipe)
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
