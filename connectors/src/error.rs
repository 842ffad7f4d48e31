//! The connectors' error type.

use std::path::PathBuf;

/// Errors of the connectors: configuration, files, brokers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectorError {
    /// The connector is misconfigured; the message says what to change.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A file could not be opened, read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file's contents do not have the expected shape (e.g. a missing CSV header).
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An error of the engine.
    #[error(transparent)]
    Engine(#[from] tideline::Error),
}

impl ConnectorError {
    /// Whether retrying the same operation may succeed (transient I/O conditions).
    pub fn is_retryable(&self) -> bool {
        match self {
            ConnectorError::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            _ => false,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ConnectorError::Io { path: path.into(), source }
    }
}

impl From<ConnectorError> for tideline::Error {
    fn from(error: ConnectorError) -> Self {
        match error {
            ConnectorError::Engine(e) => e,
            ConnectorError::Io { path, source } => tideline::Error::Io { path, source },
            other => tideline::Error::Config(other.to_string()),
        }
    }
}
