//! Late records: the policy that decides their fate, and the record types of the late and
//! dead-letter side outputs (DESIGN §3 and §10).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::time::watermark::PartitionId;
use crate::time::{Time, millis};

/// What happens to a record whose event time is below its partition's watermark.
///
/// Whatever the policy, late records are counted per source and per partition
/// ([`SourceMetrics`](crate::runtime::metrics::SourceMetrics)); none is dropped silently.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LatePolicy {
    /// Dropped, and counted.
    Drop,
    /// Emitted on the source's late collection at the watermark, unchanged (the record keeps
    /// its event time in its data).
    #[default]
    SideOutput,
    /// Inserted at the watermark `W` if its event time `t ≥ W - allowed_lateness`; operators
    /// assign it by `t` and emit corrections. Older records go to the late collection.
    Accept {
        /// How far behind the watermark a record may be and still be accepted.
        allowed_lateness: Duration,
    },
}

/// The outcome of [`LatePolicy::decide`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LateDecision {
    /// Not late: insert at its own event time.
    OnTime,
    /// Late and dropped.
    Drop,
    /// Late: to the late collection.
    SideOutput,
    /// Late but accepted: insert at the given time (the watermark).
    Accept(Time),
}

impl LatePolicy {
    /// Decides the fate of a record with event time `time` arriving at `watermark`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tideline::time::late::{LateDecision, LatePolicy};
    ///
    /// let policy = LatePolicy::Accept { allowed_lateness: Duration::from_millis(100) };
    /// assert_eq!(policy.decide(1_000, 1_000), LateDecision::OnTime);
    /// assert_eq!(policy.decide(950, 1_000), LateDecision::Accept(1_000));
    /// assert_eq!(policy.decide(900, 1_000), LateDecision::Accept(1_000));
    /// assert_eq!(policy.decide(899, 1_000), LateDecision::SideOutput);
    /// ```
    pub fn decide(&self, time: Time, watermark: Time) -> LateDecision {
        if time >= watermark {
            return LateDecision::OnTime;
        }
        match self {
            LatePolicy::Drop => LateDecision::Drop,
            LatePolicy::SideOutput => LateDecision::SideOutput,
            LatePolicy::Accept { allowed_lateness } => {
                if time >= watermark.saturating_sub(millis(*allowed_lateness)) {
                    LateDecision::Accept(watermark)
                } else {
                    LateDecision::SideOutput
                }
            }
        }
    }

    /// The allowed lateness in ms (zero unless `Accept`).
    pub fn allowed_lateness_ms(&self) -> u64 {
        match self {
            LatePolicy::Accept { allowed_lateness } => millis(*allowed_lateness),
            _ => 0,
        }
    }
}

/// A record that arrived behind its partition's watermark and was not accepted.
///
/// It travels on the late collection at time [`watermark`](Self::watermark), unchanged in
/// [`record`](Self::record), with where it came from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LateRecord<D> {
    /// The partition it was read from.
    pub partition: PartitionId,
    /// Its position in the partition (line number, offset, sequence number).
    pub position: u64,
    /// Its event time.
    pub event_time: Time,
    /// The partition's watermark when it arrived.
    pub watermark: Time,
    /// The record itself.
    pub record: D,
}

/// A record that could not be decoded (DESIGN §10): never a crash, never a silent drop.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The input it came from: a file path, a topic.
    pub source: String,
    /// The partition it was read from.
    pub partition: PartitionId,
    /// Its position: a line number for files, an offset for Kafka.
    pub position: u64,
    /// The raw key, where the input has keys.
    pub key: Option<Vec<u8>>,
    /// The raw bytes that failed to decode.
    pub payload: Vec<u8>,
    /// Why decoding failed.
    pub reason: String,
}

impl DeadLetter {
    /// The payload as text (invalid UTF-8 replaced).
    pub fn payload_text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

impl std::fmt::Display for DeadLetter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}: {:?}", self.source, self.position, self.reason, self.payload_text())
    }
}
