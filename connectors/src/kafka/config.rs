//! Client configuration: librdkafka properties passed through, secrets never shown.

use std::collections::BTreeMap;
use std::fmt;

use rdkafka::ClientConfig;

use crate::error::ConnectorError;

/// librdkafka client properties (`bootstrap.servers`, `security.protocol`, `sasl.*`, `ssl.*`,
/// tuning, …), passed through to every client a connector creates.
///
/// Any property librdkafka accepts can be set; the connectors set a few defaults of their own,
/// which an explicit [`set`](Self::set) overrides (each connector's documentation lists them).
/// Secrets never leave this type in text: its `Debug` output and the connectors' errors show
/// `[redacted]` instead of the value of every property that looks like one
/// ([`is_secret`](Self::is_secret)).
///
/// ```
/// use tideline_connectors::kafka::KafkaConfig;
///
/// let config = KafkaConfig::new("broker-1:9092,broker-2:9092")
///     .set("security.protocol", "SASL_SSL")
///     .set("sasl.mechanism", "SCRAM-SHA-512")
///     .set("sasl.username", "tideline")
///     .set("sasl.password", "hunter2");
/// let shown = format!("{config:?}");
/// assert!(shown.contains("SCRAM-SHA-512"));
/// assert!(!shown.contains("hunter2"));
/// assert_eq!(config.get("sasl.password"), Some("hunter2"));
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KafkaConfig {
    properties: BTreeMap<String, String>,
}

impl KafkaConfig {
    /// A configuration with `bootstrap.servers` set to `brokers` (`host:port`, comma-separated).
    pub fn new(brokers: impl Into<String>) -> Self {
        KafkaConfig::default().set("bootstrap.servers", brokers)
    }

    /// Sets a librdkafka property (overriding the connector's default for it, if any).
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(key.into(), value.into());
        self
    }

    /// Sets a property only if it is not set yet (how connectors apply their defaults).
    pub(crate) fn set_default(mut self, key: &str, value: impl Into<String>) -> Self {
        self.properties.entry(key.to_string()).or_insert_with(|| value.into());
        self
    }

    /// Removes a property.
    pub fn unset(mut self, key: &str) -> Self {
        self.properties.remove(key);
        self
    }

    /// The value of a property, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.properties.get(key).map(String::as_str)
    }

    /// The properties, in key order (values of secrets included: do not print them).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.properties.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Whether a property holds a secret: passwords, secrets, private keys, tokens, SASL
    /// mechanism configurations (`sasl.password`, `ssl.key.password`, `ssl.keystore.password`,
    /// `ssl.key.pem`, `sasl.oauthbearer.client.secret`, `sasl.oauthbearer.config`, …).
    ///
    /// ```
    /// use tideline_connectors::kafka::KafkaConfig;
    ///
    /// assert!(KafkaConfig::is_secret("sasl.password"));
    /// assert!(KafkaConfig::is_secret("ssl.key.password"));
    /// assert!(KafkaConfig::is_secret("sasl.oauthbearer.client.secret"));
    /// assert!(KafkaConfig::is_secret("ssl.key.pem"));
    /// assert!(!KafkaConfig::is_secret("sasl.username"));
    /// assert!(!KafkaConfig::is_secret("ssl.certificate.location"));
    /// ```
    pub fn is_secret(key: &str) -> bool {
        let key = key.to_ascii_lowercase();
        ["pass", "secret", "token", "credential", "jaas", "sasl.oauthbearer.config", "private"]
            .iter()
            .any(|word| key.contains(word))
            || key.starts_with("ssl.key.")
            || key == "ssl.key"
            || key.ends_with(".key")
            || key.ends_with("_key")
    }

    /// The librdkafka configuration, with the given defaults under the user's properties.
    pub(crate) fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }

    /// A property's value as it may be shown: `[redacted]` for secrets.
    pub(crate) fn shown(&self, key: &str) -> Option<&str> {
        self.get(key).map(|value| if Self::is_secret(key) { REDACTED } else { value })
    }

    /// Checks that every property names a setting librdkafka knows, with a valid value, by
    /// building (not connecting) a client configuration.
    pub(crate) fn validate(&self) -> Result<(), ConnectorError> {
        if self.get("bootstrap.servers").is_none_or(|b| b.trim().is_empty()) {
            return Err(ConnectorError::Config(
                "Kafka: set bootstrap.servers (KafkaConfig::new(\"host:9092\"))".into(),
            ));
        }
        self.client_config().create_native_config().map(|_| ()).map_err(|e| self.redact(e.into()))
    }

    /// Creates (and drops) a consumer or producer with this configuration: librdkafka checks
    /// some properties only then (e.g. `fetch.max.bytes` against `message.max.bytes`). Nothing
    /// waits for a broker.
    pub(crate) fn check_client(&self, producer: bool) -> Result<(), ConnectorError> {
        self.validate()?;
        let config = self.client_config();
        let created = if producer {
            config.create::<rdkafka::producer::BaseProducer>().map(drop)
        } else {
            config.create::<rdkafka::consumer::BaseConsumer>().map(drop)
        };
        created.map_err(|e| self.redact(ConnectorError::kafka("checking the client configuration", e)))
    }

    /// Removes secret values this configuration holds from an error's text.
    pub(crate) fn redact(&self, error: ConnectorError) -> ConnectorError {
        let secrets: Vec<&str> = self
            .properties
            .iter()
            .filter(|(key, value)| Self::is_secret(key) && !value.is_empty())
            .map(|(_, value)| value.as_str())
            .collect();
        match error {
            ConnectorError::Kafka(crate::kafka::KafkaError::Operation { context, source: error }) => {
                let scrub = |text: String| secrets.iter().fold(text, |t, s| t.replace(s, REDACTED));
                let error = match error {
                    rdkafka::error::KafkaError::ClientConfig(result, description, key, _) => {
                        rdkafka::error::KafkaError::ClientConfig(result, scrub(description), key, REDACTED.to_string())
                    }
                    rdkafka::error::KafkaError::ClientCreation(text) => {
                        rdkafka::error::KafkaError::ClientCreation(scrub(text))
                    }
                    other => other,
                };
                ConnectorError::Kafka(crate::kafka::KafkaError::Operation { context: scrub(context), source: error })
            }
            ConnectorError::Config(message) => {
                ConnectorError::Config(secrets.iter().fold(message, |t, s| t.replace(s, REDACTED)))
            }
            other => other,
        }
    }
}

const REDACTED: &str = "[redacted]";

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.properties.keys().map(|k| (k, self.shown(k).unwrap_or_default()))).finish()
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for KafkaConfig {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        KafkaConfig { properties: iter.into_iter().map(|(k, v)| (k.into(), v.into())).collect() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_redacts_every_secret() {
        let config = KafkaConfig::new("localhost:9092")
            .set("sasl.password", "p1")
            .set("ssl.key.password", "p2")
            .set("ssl.keystore.password", "p3")
            .set("ssl.key.pem", "-----BEGIN PRIVATE KEY-----p4")
            .set("sasl.oauthbearer.client.secret", "p5")
            .set("sasl.oauthbearer.config", "principal=x secret=p6")
            .set("my.plugin.secret", "p7")
            .set("sasl.username", "alice");
        let shown = format!("{config:?}");
        for secret in ["p1", "p2", "p3", "p4", "p5", "p6", "p7"] {
            assert!(!shown.contains(secret), "{secret} shown in {shown}");
        }
        assert!(shown.contains("alice") && shown.contains("localhost:9092"), "{shown}");
        assert_eq!(shown.matches("[redacted]").count(), 7, "{shown}");
    }

    #[test]
    fn errors_about_bad_properties_do_not_show_secrets() {
        // A misspelt property holding a password: librdkafka rejects the key.
        let config = KafkaConfig::new("localhost:9092").set("sasl.passwort", "hunter2");
        let error = config.validate().unwrap_err();
        let text = format!("{error} {error:?}");
        assert!(text.contains("sasl.passwort"), "names the property: {text}");
        assert!(!text.contains("hunter2"), "{text}");
        // An invalid value of an ordinary property is shown, to help fix it.
        let error = KafkaConfig::new("localhost:9092").set("acks", "most").validate().unwrap_err();
        assert!(error.to_string().contains("acks"), "{error}");
    }

    #[test]
    fn client_errors_never_show_secret_values() {
        let config = KafkaConfig::new("localhost:9092").set("ssl.key.password", "s3cr3t");
        let error = rdkafka::error::KafkaError::ClientCreation("cannot use key s3cr3t".into());
        let text = config.redact(ConnectorError::kafka("creating s3cr3t", error)).to_string();
        assert!(!text.contains("s3cr3t") && text.contains("[redacted]"), "{text}");
    }

    #[test]
    fn bootstrap_servers_are_required() {
        let error = KafkaConfig::default().validate().unwrap_err();
        assert!(error.to_string().contains("bootstrap.servers"), "{error}");
    }
}
