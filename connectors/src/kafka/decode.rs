//! Decoders: how a Kafka message becomes a record.

use std::fmt;
use std::sync::Arc;

use rdkafka::message::{BorrowedHeaders, Headers};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tideline::{EventTime, Time};

/// A Kafka message as a [`Decoder`] sees it.
#[derive(Clone, Copy)]
pub struct KafkaMessage<'a> {
    /// The topic it was read from.
    pub topic: &'a str,
    /// Its partition.
    pub partition: i32,
    /// Its offset in the partition.
    pub offset: i64,
    /// Its timestamp (create or log-append time, ms since the Unix epoch), if it has one.
    pub timestamp: Option<Time>,
    /// Its key; `None` for a message without one.
    pub key: Option<&'a [u8]>,
    /// Its value; `None` for a tombstone.
    pub payload: Option<&'a [u8]>,
    /// The client's message, for its headers: parsed only when a decoder asks for one.
    message: Option<&'a rdkafka::message::BorrowedMessage<'a>>,
}

impl<'a> KafkaMessage<'a> {
    /// A message without headers (for tests and custom decoders).
    pub fn new(
        topic: &'a str,
        partition: i32,
        offset: i64,
        timestamp: Option<Time>,
        key: Option<&'a [u8]>,
        payload: Option<&'a [u8]>,
    ) -> Self {
        KafkaMessage { topic, partition, offset, timestamp, key, payload, message: None }
    }

    /// A view of `message`, read from `topic` (its name, which the caller knows).
    pub(crate) fn from_rdkafka(message: &'a rdkafka::message::BorrowedMessage<'a>, topic: &'a str) -> Self {
        use rdkafka::Message;
        KafkaMessage {
            topic,
            partition: message.partition(),
            offset: message.offset(),
            timestamp: message.timestamp().to_millis().and_then(|t| Time::try_from(t).ok()),
            key: message.key(),
            payload: message.payload(),
            message: Some(message),
        }
    }

    /// The value of the first header called `name`, if any.
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        use rdkafka::Message;
        let headers: &'a BorrowedHeaders = self.message?.headers()?;
        headers.iter().find(|h| h.key == name).and_then(|h| h.value)
    }

    /// The key as UTF-8 text, or why it is not.
    pub fn key_str(&self) -> Result<&'a str, String> {
        let key = self.key.ok_or_else(|| "the message has no key".to_string())?;
        std::str::from_utf8(key).map_err(|e| format!("the key is not UTF-8: {e}"))
    }

    /// The value, or why there is none.
    pub fn value(&self) -> Result<&'a [u8], String> {
        self.payload.ok_or_else(|| "the message has no value (a tombstone)".to_string())
    }

    /// The value as UTF-8 text, or why it is not.
    pub fn value_str(&self) -> Result<&'a str, String> {
        std::str::from_utf8(self.value()?).map_err(|e| format!("the value is not UTF-8: {e}"))
    }

    /// The value decoded from JSON, or why it cannot be.
    pub fn value_json<D: DeserializeOwned>(&self) -> Result<D, String> {
        serde_json::from_slice(self.value()?).map_err(|e| format!("the value is not the expected JSON: {e}"))
    }
}

impl fmt::Debug for KafkaMessage<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaMessage")
            .field("topic", &self.topic)
            .field("partition", &self.partition)
            .field("offset", &self.offset)
            .field("timestamp", &self.timestamp)
            .field("key", &self.key.map(String::from_utf8_lossy))
            .field("payload_bytes", &self.payload.map(<[u8]>::len))
            .finish()
    }
}

type DecodeFn<D> = Arc<dyn Fn(&KafkaMessage<'_>) -> Result<D, String> + Send + Sync>;

/// Turns a [`KafkaMessage`] into a record, or says why it cannot: the message then goes to
/// the source's dead letters with that reason.
///
/// ```
/// use tideline_connectors::kafka::{Decoder, KafkaMessage, Keyed};
///
/// #[derive(Debug, PartialEq, serde::Deserialize)]
/// struct Reading { time: u64, value: i64 }
///
/// let message = KafkaMessage::new("readings", 0, 7, Some(1_000), Some(b"sensor-1"), Some(br#"{"time":5,"value":3}"#));
/// let keyed = Decoder::<Keyed<String, Reading>>::json_keyed().decode(&message).unwrap();
/// assert_eq!(keyed, Keyed { key: "sensor-1".into(), value: Reading { time: 5, value: 3 } });
///
/// let broken = KafkaMessage::new("readings", 0, 8, None, None, Some(b"{oops"));
/// let reason = Decoder::<Reading>::json().decode(&broken).unwrap_err();
/// assert!(reason.contains("JSON"), "{reason}");
/// ```
pub struct Decoder<D> {
    decode: DecodeFn<D>,
}

impl<D> Clone for Decoder<D> {
    fn clone(&self) -> Self {
        Decoder { decode: Arc::clone(&self.decode) }
    }
}

impl<D> fmt::Debug for Decoder<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Decoder")
    }
}

impl<D> Decoder<D> {
    /// A decoder from a function: `Err(reason)` sends the message to the dead letters.
    pub fn new(decode: impl Fn(&KafkaMessage<'_>) -> Result<D, String> + Send + Sync + 'static) -> Self {
        Decoder { decode: Arc::new(decode) }
    }

    /// Decodes one message.
    pub fn decode(&self, message: &KafkaMessage<'_>) -> Result<D, String> {
        (self.decode)(message)
    }
}

impl<D: DeserializeOwned> Decoder<D> {
    /// The value as JSON (the key is ignored). Tombstones and broken JSON are dead letters.
    pub fn json() -> Self {
        Decoder::new(|m| m.value_json())
    }
}

impl<V: DeserializeOwned> Decoder<Keyed<String, V>> {
    /// The key as UTF-8 text and the value as JSON. Messages without a key, tombstones and
    /// broken JSON are dead letters.
    pub fn json_keyed() -> Self {
        Decoder::new(|m| Ok(Keyed { key: m.key_str()?.to_string(), value: m.value_json()? }))
    }
}

impl Decoder<String> {
    /// The value as UTF-8 text (the key is ignored).
    pub fn string() -> Self {
        Decoder::new(|m| m.value_str().map(str::to_string))
    }
}

impl Decoder<Keyed<String, String>> {
    /// The key and the value as UTF-8 text.
    pub fn keyed_string() -> Self {
        Decoder::new(|m| Ok(Keyed { key: m.key_str()?.to_string(), value: m.value_str()?.to_string() }))
    }
}

impl Decoder<RawMessage> {
    /// The raw key, value and timestamp: never fails.
    pub fn raw() -> Self {
        Decoder::new(|m| {
            Ok(RawMessage {
                timestamp: m.timestamp,
                key: m.key.map(<[u8]>::to_vec),
                payload: m.payload.map(<[u8]>::to_vec),
            })
        })
    }
}

/// A record with a key (a Kafka message's key, or the key a sink partitions by).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Keyed<K, V> {
    /// The key.
    pub key: K,
    /// The value.
    pub value: V,
}

impl<K, V: EventTime> EventTime for Keyed<K, V> {
    fn event_time(&self) -> Time {
        self.value.event_time()
    }
}

/// A message's raw contents ([`Decoder::raw`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RawMessage {
    /// Its timestamp, ms since the Unix epoch, if it has one.
    pub timestamp: Option<Time>,
    /// Its key.
    pub key: Option<Vec<u8>>,
    /// Its value (`None`: a tombstone).
    pub payload: Option<Vec<u8>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message<'a>(key: Option<&'a [u8]>, payload: Option<&'a [u8]>) -> KafkaMessage<'a> {
        KafkaMessage::new("t", 1, 42, Some(5), key, payload)
    }

    #[test]
    fn decoders_say_why_a_message_does_not_decode() {
        let reason = Decoder::<u64>::json().decode(&message(None, None)).unwrap_err();
        assert!(reason.contains("tombstone"), "{reason}");
        let reason = Decoder::<Keyed<String, u64>>::json_keyed().decode(&message(None, Some(b"1"))).unwrap_err();
        assert!(reason.contains("no key"), "{reason}");
        let reason = Decoder::string().decode(&message(None, Some(&[0xff, 0xfe]))).unwrap_err();
        assert!(reason.contains("UTF-8"), "{reason}");
        let reason = Decoder::<u64>::json().decode(&message(None, Some(b"\"x\""))).unwrap_err();
        assert!(reason.contains("JSON"), "{reason}");
    }

    #[test]
    fn decoders_decode() {
        assert_eq!(Decoder::<u64>::json().decode(&message(None, Some(b"17"))), Ok(17));
        assert_eq!(
            Decoder::keyed_string().decode(&message(Some(b"k"), Some(b"v"))),
            Ok(Keyed { key: "k".to_string(), value: "v".to_string() })
        );
        assert_eq!(
            Decoder::raw().decode(&message(Some(b"k"), None)),
            Ok(RawMessage { timestamp: Some(5), key: Some(b"k".to_vec()), payload: None })
        );
        let custom = Decoder::new(|m| Ok((m.partition, m.offset)));
        assert_eq!(custom.decode(&message(None, None)), Ok((1, 42)));
    }
}
