//! The connectors' error type.

/// Errors of the connectors: configuration, files ([`FileError`](crate::file::FileError)),
/// brokers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectorError {
    /// The connector is misconfigured; the message says what to change.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// An error of the file connector.
    #[error(transparent)]
    File(#[from] crate::file::FileError),
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
            ConnectorError::File(error) => error.is_retryable(),
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
}

impl From<ConnectorError> for tideline::Error {
    fn from(error: ConnectorError) -> Self {
        match error {
            ConnectorError::Engine(e) => e,
            ConnectorError::File(e) => e.into(),
            #[cfg(feature = "kafka")]
            ConnectorError::Kafka(error) => tideline::Error::Connector {
                connector: "kafka",
                retryable: error.is_retryable(),
                source: Box::new(error),
            },
            other => tideline::Error::Config(other.to_string()),
        }
    }
}
