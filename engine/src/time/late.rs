//! Late records: the policy that decides their fate (DESIGN §3), and the record type of the
//! dead-letter side output (DESIGN §10).
//!
//! A record whose event time is below its source partition's watermark is *behind the
//! watermark*: the source emits it at the watermark, its event time kept in its data, and
//! counts it ([`PartitionStats::behind_watermark`](crate::runtime::metrics::PartitionStats)).
//! Whether it is *late* is decided by the operator whose state it reaches, per window: it joins
//! every window (session, dedup horizon, join interval) not yet emitted silently; a window
//! already emitted whose `end + allowed_lateness` is still ahead of the watermark takes it and
//! emits corrections; only a record with no such window left is late, and the operator's
//! [`LatePolicy`] decides what happens to it.

use serde::{Deserialize, Serialize};

use crate::time::watermark::PartitionId;

/// What an operator does with a record too late for every window it belongs to.
///
/// Whatever the policy, late records are counted per operator
/// ([`StateMetrics::late_skipped`](crate::runtime::metrics::StateMetrics::late_skipped)); none
/// is dropped silently.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub enum LatePolicy {
    /// Dropped, and counted.
    Drop,
    /// Emitted, unchanged, on the operator's late output at the time it arrived (the watermark
    /// of its partition then), and counted.
    #[default]
    SideOutput,
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
