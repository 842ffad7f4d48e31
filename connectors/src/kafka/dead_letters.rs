//! Dead letters to a topic: produced as they come, and known until delivered (their offsets
//! are not committed before).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use tideline::time::late::DeadLetter;
use tideline::time::watermark::PartitionId;

use crate::error::ConnectorError;
use crate::kafka::plan::Plan;
use crate::kafka::stats::KafkaSourceStats;

type Delivered = ((PartitionId, i64), Result<(), String>);

struct DeadLetterContext {
    delivered: Mutex<Vec<Delivered>>,
}

impl ClientContext for DeadLetterContext {}

impl ProducerContext for DeadLetterContext {
    type DeliveryOpaque = Box<(PartitionId, i64)>;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: Self::DeliveryOpaque) {
        let outcome = result.as_ref().map(|_| ()).map_err(|(e, _)| e.to_string());
        self.delivered.lock().expect("delivery lock poisoned").push((*opaque, outcome));
    }
}

/// Produces dead letters to a topic, and knows which are not delivered yet (their offsets are
/// not committed).
pub(super) struct DeadLetterProducer {
    topic: String,
    /// Undelivered: the letter, its Kafka partition, and whether it is in flight.
    pending: BTreeMap<(PartitionId, i64), (DeadLetter, i32, bool)>,
    producer: BaseProducer<DeadLetterContext>,
}

impl DeadLetterProducer {
    pub(super) fn new(plan: &Plan, topic: String, index: usize) -> Result<Self, ConnectorError> {
        let producer = plan
            .config
            .clone()
            .set("client.id", format!("tideline-{}-dead-letters-{index}", plan.name))
            .set_default("enable.idempotence", "true")
            .client_config()
            .create_with_context(DeadLetterContext { delivered: Mutex::new(Vec::new()) })
            .map_err(|e| plan.config.redact(ConnectorError::kafka("creating the dead-letter producer", e)))?;
        Ok(DeadLetterProducer { topic, pending: BTreeMap::new(), producer })
    }

    pub(super) fn push(&mut self, id: PartitionId, offset: i64, partition: i32, letter: &DeadLetter) {
        self.pending.insert((id, offset), (letter.clone(), partition, false));
    }

    pub(super) fn first_pending(&self, id: PartitionId) -> Option<i64> {
        self.pending.range((id, i64::MIN)..=(id, i64::MAX)).next().map(|((_, offset), _)| *offset)
    }

    pub(super) fn is_idle(&self) -> bool {
        self.pending.is_empty()
    }

    /// Takes delivery reports and sends what is not in flight.
    pub(super) fn serve(&mut self, stats: &KafkaSourceStats) {
        self.producer.poll(Duration::ZERO);
        let delivered = std::mem::take(&mut *self.producer.context().delivered.lock().expect("delivery lock poisoned"));
        for (key, outcome) in delivered {
            match outcome {
                Ok(()) => {
                    self.pending.remove(&key);
                    stats.record_dead_letter_produced();
                }
                Err(error) => {
                    if let Some(entry) = self.pending.get_mut(&key) {
                        entry.2 = false; // sent again below
                    }
                    stats.record_error(format!("dead-letter topic {}: {error}", self.topic));
                }
            }
        }
        for ((id, offset), (letter, partition, in_flight)) in self.pending.iter_mut() {
            if *in_flight {
                continue;
            }
            let (partition_text, offset_text) = (partition.to_string(), offset.to_string());
            let headers = OwnedHeaders::new()
                .insert(Header { key: "tideline.topic", value: Some(letter.source.as_bytes()) })
                .insert(Header { key: "tideline.partition", value: Some(partition_text.as_bytes()) })
                .insert(Header { key: "tideline.offset", value: Some(offset_text.as_bytes()) })
                .insert(Header { key: "tideline.reason", value: Some(letter.reason.as_bytes()) });
            let mut record = BaseRecord::with_opaque_to(&self.topic, Box::new((*id, *offset)))
                .payload(&letter.payload)
                .headers(headers);
            if let Some(key) = &letter.key {
                record = record.key(key);
            }
            match self.producer.send(record) {
                Ok(()) => *in_flight = true,
                Err((error, _)) => {
                    stats.record_error(format!("dead-letter topic {}: {error}", self.topic));
                    break; // the queue is full: later
                }
            }
        }
    }
}

impl Drop for DeadLetterProducer {
    fn drop(&mut self) {
        // Give letters in flight a moment; undelivered ones were never committed past.
        let _ = self.producer.flush(Duration::from_secs(5));
    }
}
