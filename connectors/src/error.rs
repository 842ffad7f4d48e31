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
    /// An error of the Kafka connector ([`KafkaError`](crate::kafka::KafkaError)). Secrets of
    /// the configuration are never part of its text.
    #[cfg(feature = "kafka")]
    #[error("Kafka: {0}")]
    Kafka(#[from] crate::kafka::KafkaError),
}

#[cfg(feature = "kafka")]
impl From<rdkafka::error::KafkaError> for ConnectorError {
    /// Wraps a client error. Client configuration errors lose the rejected value (it may be a
    /// secret); the description names the property.
    fn from(error: rdkafka::error::KafkaError) -> Self {
        let error = match error {
            rdkafka::error::KafkaError::ClientConfig(result, description, key, _) => {
                rdkafka::error::KafkaError::ClientConfig(result, description, key, "[redacted]".into())
            }
            other => other,
        };
        ConnectorError::Kafka(crate::kafka::KafkaError::Client(error))
    }
}

impl ConnectorError {
    /// Whether retrying the same operation may succeed (transient I/O conditions, brokers
    /// that are down or moving leadership, timeouts).
    pub fn is_retryable(&self) -> bool {
        match self {
            ConnectorError::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            #[cfg(feature = "kafka")]
            ConnectorError::Kafka(error) => error.is_retryable(),
            _ => false,
        }
    }

    /// A Kafka client error, saying what the connector was doing.
    #[cfg(feature = "kafka")]
    pub(crate) fn kafka(context: impl Into<String>, error: rdkafka::error::KafkaError) -> Self {
        match ConnectorError::from(error) {
            ConnectorError::Kafka(crate::kafka::KafkaError::Client(source)) => {
                ConnectorError::Kafka(crate::kafka::KafkaError::Operation { context: context.into(), source })
            }
            other => other,
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
            #[cfg(feature = "kafka")]
            ConnectorError::Kafka(error) => tideline::Error::Connector {
                connector: "kafka".into(),
                retryable: error.is_retryable(),
                source: Box::new(error),
            },
            other => tideline::Error::Config(other.to_string()),
        }
    }
}
