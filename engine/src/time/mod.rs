//! Event time: timestamps, events that carry their time, and duration parsing.
//!
//! Tideline's timestamps are event time, `u64` milliseconds since the Unix epoch. The same
//! type is the timely/differential timestamp of every collection, so the progress frontier
//! of a collection is its event-time watermark.

pub mod clock;
pub mod late;
pub mod watermark;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Event time: milliseconds since the Unix epoch.
///
/// This is also the timestamp type of every Tideline collection: a collection's frontier is
/// its watermark, and "complete for time `t`" means the frontier has passed `t`.
pub type Time = u64;

/// A keyed event that carries its own event time in its data.
///
/// The event time travels with the record, so a record re-timestamped by a late policy
/// (DESIGN §3) still knows when it happened: operators assign it to windows by
/// [`Event::time`], not by the timestamp it travels at.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Event<K, V> {
    /// When the event happened, in ms since the Unix epoch.
    pub time: Time,
    /// The key the event belongs to.
    pub key: K,
    /// The payload.
    pub value: V,
}

impl<K, V> Event<K, V> {
    /// Creates an event.
    pub fn new(time: Time, key: K, value: V) -> Self {
        Event { time, key, value }
    }
}

/// Records that know their own event time.
///
/// Sources read a record's event time through this trait unless they are given an explicit
/// extractor.
pub trait EventTime {
    /// The record's event time, in ms since the Unix epoch.
    fn event_time(&self) -> Time;
}

impl<K, V> EventTime for Event<K, V> {
    fn event_time(&self) -> Time {
        self.time
    }
}

impl<X> EventTime for (Time, X) {
    fn event_time(&self) -> Time {
        self.0
    }
}

/// Converts a duration to whole milliseconds, saturating at `u64::MAX`.
pub fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Parses a duration written as a non-negative integer and a unit: `ms`, `s`, `m` or `h`.
///
/// ```
/// use std::time::Duration;
/// use tideline::time::parse_duration;
///
/// assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
/// assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
/// assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
/// assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
/// assert!(parse_duration("10").is_err());
/// assert!(parse_duration("-1s").is_err());
/// ```
pub fn parse_duration(text: &str) -> Result<Duration> {
    let err = |reason: &str| Error::Duration { input: text.to_string(), reason: reason.to_string() };
    let trimmed = text.trim();
    let split = trimmed.find(|c: char| !c.is_ascii_digit()).ok_or_else(|| err("missing unit"))?;
    let (number, unit) = trimmed.split_at(split);
    if number.is_empty() {
        return Err(err("missing number"));
    }
    let n: u64 = number.parse().map_err(|_| err("number too large"))?;
    let ms_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(err(&format!("unknown unit {unit:?}"))),
    };
    let ms = n.checked_mul(ms_per_unit).ok_or_else(|| err("duration too large"))?;
    Ok(Duration::from_millis(ms))
}

/// Formats a duration in the largest unit that represents it exactly (`1h`, `90s`, `250ms`).
pub fn format_duration(duration: Duration) -> String {
    let ms = millis(duration);
    match ms {
        0 => "0ms".to_string(),
        _ if ms.is_multiple_of(3_600_000) => format!("{}h", ms / 3_600_000),
        _ if ms.is_multiple_of(60_000) => format!("{}m", ms / 60_000),
        _ if ms.is_multiple_of(1_000) => format!("{}s", ms / 1_000),
        _ => format!("{ms}ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip() {
        for text in ["0ms", "1ms", "999ms", "1s", "90s", "1m", "2h"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
    }

    #[test]
    fn bad_durations_say_why() {
        for text in ["", "s", "10", "10x", "1.5s", "-1s", "99999999999999999999h"] {
            let message = parse_duration(text).unwrap_err().to_string();
            assert!(message.contains("expected a number followed by"), "{message}");
        }
    }
}
