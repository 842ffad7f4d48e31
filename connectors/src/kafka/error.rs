//! The Kafka connector's errors, and which of the client's errors are retryable or fatal.

use rdkafka::error::KafkaError as ClientError;
use rdkafka::types::RDKafkaErrorCode;

/// What went wrong in the Kafka connector. Client errors keep the client's own
/// [`rdkafka::error::KafkaError`] (reach it with `source()` or by matching); secrets of the
/// configuration are never part of the text. [`is_retryable`](Self::is_retryable) says
/// whether the same operation, or the job run again, may succeed.
///
/// It travels inside [`ConnectorError::Kafka`](crate::ConnectorError::Kafka) and, into the
/// engine, inside `tideline::Error::Connector` with the retry hint, so a program can still
/// downcast to it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KafkaError {
    /// An error of the client (librdkafka).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// An error of the client while the connector was doing something.
    #[error("{context}: {source}")]
    Operation {
        /// What the connector was doing.
        context: String,
        /// The client's error.
        #[source]
        source: ClientError,
    },
    /// The consumer group is used by another run of the job or by another consumer: the
    /// broker refuses the source's commits, or another run's commits show up.
    #[error("{0}")]
    Group(String),
    /// A topic is missing, or exists with a configuration the connector cannot work with.
    #[error("{0}")]
    Topic(String),
}

impl KafkaError {
    /// Whether retrying may succeed: brokers unreachable, timeouts, leadership or
    /// coordinators moving, throttling. Configuration, authorization, records the broker
    /// refuses and misused groups are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            KafkaError::Client(error) | KafkaError::Operation { source: error, .. } => is_retryable(error),
            KafkaError::Group(_) | KafkaError::Topic(_) => false,
        }
    }

    /// The client's error, if this is one.
    pub fn client_error(&self) -> Option<&ClientError> {
        match self {
            KafkaError::Client(error) | KafkaError::Operation { source: error, .. } => Some(error),
            _ => None,
        }
    }
}

/// Whether an error of the client may go away by itself or on a retry: brokers unreachable,
/// timeouts, leadership or coordinators moving, throttling.
pub(crate) fn is_retryable(error: &ClientError) -> bool {
    use RDKafkaErrorCode as C;
    if matches!(error, ClientError::MessageConsumptionFatal(_)) {
        return false;
    }
    matches!(
        error.rdkafka_error_code(),
        Some(
            C::BrokerTransportFailure
                | C::AllBrokersDown
                | C::MessageTimedOut
                | C::OperationTimedOut
                | C::RequestTimedOut
                | C::QueueFull
                | C::Resolve
                | C::NetworkException
                | C::LeaderNotAvailable
                | C::NotLeaderForPartition
                | C::NotEnoughReplicas
                | C::NotEnoughReplicasAfterAppend
                | C::NotCoordinator
                | C::CoordinatorNotAvailable
                | C::CoordinatorLoadInProgress
                | C::UnknownTopicOrPartition
                | C::KafkaStorageError
                | C::FencedLeaderEpoch
                | C::UnknownLeaderEpoch
                | C::OffsetNotAvailable
                | C::PreferredLeaderNotAvailable
                | C::ThrottlingQuotaExceeded
                | C::PolicyViolation
                | C::InvalidReplicationFactor
                | C::Retry
                | C::WaitingForCoordinator
                | C::InProgress
                | C::PreviousInProgress
                | C::ISRInsufficient
                | C::NodeUpdate
        )
    )
}

/// Whether an error while reading stops the source: the client gave up (fatal), or the
/// credentials are refused. Everything else is retried by the client and only reported.
pub(crate) fn is_fatal(error: &ClientError) -> bool {
    use RDKafkaErrorCode as C;
    matches!(error, ClientError::MessageConsumptionFatal(_))
        || matches!(
            error.rdkafka_error_code(),
            Some(
                C::Fatal
                    | C::TopicAuthorizationFailed
                    | C::GroupAuthorizationFailed
                    | C::ClusterAuthorizationFailed
                    | C::SaslAuthenticationFailed
                    | C::Authentication
            )
        )
}

/// Whether the brokers are unreachable: every connection of the client is down (an outage,
/// reported while it lasts). A single broker closing an idle connection is not one.
pub(crate) fn is_outage(error: &ClientError) -> bool {
    matches!(error.rdkafka_error_code(), Some(RDKafkaErrorCode::AllBrokersDown))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified() {
        assert!(is_retryable(&ClientError::MessageProduction(RDKafkaErrorCode::MessageTimedOut)));
        assert!(is_retryable(&ClientError::ConsumerCommit(RDKafkaErrorCode::NotCoordinator)));
        assert!(!is_retryable(&ClientError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)));
        assert!(!is_retryable(&ClientError::MessageProduction(RDKafkaErrorCode::TopicAuthorizationFailed)));
        assert!(is_fatal(&ClientError::MessageConsumption(RDKafkaErrorCode::TopicAuthorizationFailed)));
        assert!(!is_fatal(&ClientError::MessageConsumption(RDKafkaErrorCode::BrokerTransportFailure)));
    }

    #[test]
    fn the_kind_survives_into_the_engine_error() {
        let error: crate::ConnectorError =
            KafkaError::Operation { context: "producing".into(), source: ClientError::Canceled }.into();
        let engine: tideline::Error = error.into();
        let tideline::Error::Connector { connector, retryable, source } = &engine else {
            panic!("a connector error: {engine:?}")
        };
        assert_eq!((*connector, *retryable), ("kafka", false));
        assert!(source.downcast_ref::<KafkaError>().is_some(), "downcastable to the Kafka error");
        let timeout: crate::ConnectorError =
            KafkaError::Client(ClientError::MessageProduction(RDKafkaErrorCode::MessageTimedOut)).into();
        assert!(matches!(tideline::Error::from(timeout), tideline::Error::Connector { retryable: true, .. }));
    }
}
