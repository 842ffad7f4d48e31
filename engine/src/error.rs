//! The engine's error type.

use std::path::PathBuf;

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
    /// A sink could not write or deliver its output.
    #[error("sink {sink}: {message}")]
    Sink {
        /// The sink's name.
        sink: String,
        /// What went wrong.
        message: String,
    },
    /// A connector (Kafka, files, …) failed. `source` is the connector's own error, kept with
    /// its kind (downcast it, e.g. to `tideline_connectors::kafka::KafkaError`); `retryable`
    /// says whether running the same operation or job again may succeed (brokers unreachable,
    /// timeouts) or not (configuration, authorization, a record the broker refuses).
    #[error("{connector}: {source}")]
    Connector {
        /// Which connector: `kafka`, `file`, ….
        connector: String,
        /// Whether retrying may succeed.
        retryable: bool,
        /// The connector's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The timely runtime could not start or a worker failed.
    #[error("runtime: {0}")]
    Runtime(String),
    /// A broken internal invariant: this is a bug in Tideline, please report it.
    #[error("internal error (this is a bug in Tideline): {0}")]
    Internal(String),
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
