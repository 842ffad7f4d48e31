//! The ledger's serialized events, and how their schema evolves: versioned JSON lines,
//! upcast to the current [`LedgerEvent`] as they are decoded.
//!
//! This is the `ledger` example's own decoder, not an engine feature: Tideline's connectors
//! decode with serde into one type, and a pipeline whose events change shape decodes them
//! itself, like this, in its [`SourceReader`](tideline::source::SourceReader) (see
//! [`run_lines`](super::run_lines)).
//!
//! # Wire format
//!
//! One event per line, a JSON object with an integer `"version"` field that says how to read
//! the rest:
//!
//! - **Version 1**, the original schema: the movement is a signed amount, positive for a
//!   deposit, negative for a withdrawal.
//!
//!   ```json
//!   {"version":1,"account":"acct-001","time_ms":1767225600000,"amount_cents":-1234}
//!   ```
//!
//! - **Version 2**, the current schema ([`LedgerEvent`]): the movement says what it is.
//!
//!   ```json
//!   {"version":2,"account":"acct-001","time_ms":1767225600000,"movement":{"Withdrawal":1234}}
//!   ```
//!
//! Fields a version does not know are ignored (a writer may add fields without a new version);
//! a missing or mistyped field of the version is an error.
//!
//! # Upcasting
//!
//! [`decode`] dispatches on the version and *upcasts* an old event to the current type: a v1
//! amount `a ≥ 0` becomes `Deposit(a)`, `a < 0` becomes `Withdrawal(-a)`. Every consumer sees
//! only [`LedgerEvent`]s, so the read models built from a log that mixes v1 and v2 events are
//! the ones built from the same log written all in v2. Adding a version 3 means adding its
//! body type and an arm to [`decode`] (and upcasting v1 and v2 to it, or v1 to v2 to v3).
//!
//! v1 cannot express every v2 movement (a withdrawal of 0 would read back as a deposit of 0;
//! a negative deposit as a withdrawal): [`encode_v1`] refuses those, and [`log_lines`] writes
//! them as v2.
//!
//! # Unknown versions
//!
//! A line whose version this reader does not know (an event written by a newer producer), or
//! with no version, or that is not valid JSON for its version, is a [`DecodeError`] whose
//! message is the reason; [`run_lines`](super::run_lines) sends it to the source's dead letters
//! with the raw line, and reading goes on. It is never guessed at, and never dropped silently.
//!
//! ```
//! use tideline_examples::ledger::schema::{DecodeError, decode};
//! use tideline_examples::ledger::Movement;
//!
//! let v1 = decode(r#"{"version":1,"account":"acct-001","time_ms":5,"amount_cents":-1234}"#).unwrap();
//! let v2 = decode(r#"{"version":2,"account":"acct-001","time_ms":5,"movement":{"Withdrawal":1234}}"#).unwrap();
//! assert_eq!(v1, v2);
//! assert_eq!(v1.value, Movement::Withdrawal(1234));
//!
//! let v3 = decode(r#"{"version":3,"account":"acct-001","time_ms":5,"cents":1}"#);
//! assert_eq!(v3, Err(DecodeError::UnknownVersion(3)));
//! assert_eq!(v3.unwrap_err().to_string(), "unknown event version 3 (this reader knows versions 1 and 2)");
//! ```

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tideline::{Event, Time};

use super::{LedgerEvent, Movement};

/// The version [`encode`] writes: the one [`LedgerEvent`] is.
pub const CURRENT_VERSION: u64 = 2;

/// A version-1 event: the movement as a signed amount.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct EventV1 {
    version: u64,
    account: String,
    time_ms: Time,
    /// Positive: a deposit; negative: a withdrawal.
    amount_cents: i64,
}

/// A version-2 event: the current [`LedgerEvent`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct EventV2 {
    version: u64,
    account: String,
    time_ms: Time,
    movement: Movement,
}

impl EventV1 {
    /// The v1 event as the current type.
    fn upcast(self) -> LedgerEvent {
        let movement = if self.amount_cents >= 0 {
            Movement::Deposit(self.amount_cents)
        } else {
            // `i64::MIN` is refused before: its withdrawal has no `i64` amount.
            Movement::Withdrawal(-self.amount_cents)
        };
        Event::new(self.time_ms, self.account, movement)
    }
}

/// Why a line is not a ledger event: the reason its dead letter carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The line is not a JSON object.
    Malformed(String),
    /// The object has no `"version"` field.
    MissingVersion,
    /// The `"version"` field is not a non-negative integer.
    BadVersion(String),
    /// The version is one this reader does not know.
    UnknownVersion(u64),
    /// The object does not match the schema of its version.
    Body {
        /// The event's version.
        version: u64,
        /// What is wrong with it.
        reason: String,
    },
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Malformed(reason) => write!(f, "not a JSON object: {reason}"),
            DecodeError::MissingVersion => write!(f, "no \"version\" field"),
            DecodeError::BadVersion(found) => write!(f, "\"version\" is not a non-negative integer: {found}"),
            DecodeError::UnknownVersion(version) => {
                write!(f, "unknown event version {version} (this reader knows versions 1 and {CURRENT_VERSION})")
            }
            DecodeError::Body { version, reason } => write!(f, "bad version-{version} event: {reason}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Decodes one line of a ledger log, of any known version, as the current [`LedgerEvent`].
///
/// # Errors
///
/// A [`DecodeError`] naming what is wrong: not JSON, no version, an unknown version, or a body
/// that does not match its version's schema.
pub fn decode(line: &str) -> Result<LedgerEvent, DecodeError> {
    let object = match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(object)) => object,
        Ok(other) => return Err(DecodeError::Malformed(format!("found {other}"))),
        Err(error) => return Err(DecodeError::Malformed(error.to_string())),
    };
    let version = match object.get("version") {
        None => return Err(DecodeError::MissingVersion),
        Some(value) => value.as_u64().ok_or_else(|| DecodeError::BadVersion(value.to_string()))?,
    };
    let body = |reason: serde_json::Error| DecodeError::Body { version, reason: reason.to_string() };
    // ANCHOR: upcast
    match version {
        1 => {
            let event: EventV1 = serde_json::from_value(Value::Object(object)).map_err(body)?;
            if event.amount_cents == i64::MIN {
                return Err(DecodeError::Body { version, reason: "amount_cents out of range".into() });
            }
            Ok(event.upcast())
        }
        2 => {
            let event: EventV2 = serde_json::from_value(Value::Object(object)).map_err(body)?;
            Ok(Event::new(event.time_ms, event.account, event.movement))
        }
        unknown => Err(DecodeError::UnknownVersion(unknown)),
    }
    // ANCHOR_END: upcast
}

/// `event` as a line of the current version (without the newline).
pub fn encode(event: &LedgerEvent) -> String {
    let line = EventV2 {
        version: CURRENT_VERSION,
        account: event.key.clone(),
        time_ms: event.time,
        movement: event.value.clone(),
    };
    serde_json::to_string(&line).expect("a ledger event serializes")
}

/// `event` as a version-1 line (without the newline), as an old producer wrote it, or `None`
/// if v1 cannot express its movement (a withdrawal of 0 or less, a negative deposit).
pub fn encode_v1(event: &LedgerEvent) -> Option<String> {
    let amount_cents = match event.value {
        Movement::Deposit(cents) if cents >= 0 => cents,
        Movement::Withdrawal(cents) if cents > 0 => -cents,
        _ => return None,
    };
    let line = EventV1 { version: 1, account: event.key.clone(), time_ms: event.time, amount_cents };
    Some(serde_json::to_string(&line).expect("a ledger event serializes"))
}

/// `log` as JSON lines (without newlines): every `v1_every`-th event (the 1st, the
/// `v1_every + 1`-th, …) in version 1 where v1 can express it, the others in the current
/// version; all in the current version if `v1_every` is `None`. `Some(1)`: as much v1 as
/// possible.
pub fn log_lines(log: &[LedgerEvent], v1_every: Option<usize>) -> Vec<String> {
    log.iter()
        .enumerate()
        .map(|(i, event)| {
            v1_every
                .filter(|&every| i % every.max(1) == 0)
                .and_then(|_| encode_v1(event))
                .unwrap_or_else(|| encode(event))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(time: Time, movement: Movement) -> LedgerEvent {
        Event::new(time, "acct-001".to_string(), movement)
    }

    #[test]
    fn v1_upcasts_to_the_v2_event() {
        for movement in [Movement::Deposit(1234), Movement::Deposit(0), Movement::Withdrawal(1)] {
            let event = event(1_000, movement);
            let v1 = encode_v1(&event).expect("v1 expresses it");
            assert!(v1.contains("\"version\":1"), "{v1}");
            assert_eq!(decode(&v1), Ok(event.clone()), "{v1}");
            assert_eq!(decode(&encode(&event)), Ok(event));
        }
        let v1 = r#"{"version":1,"account":"acct-002","time_ms":7,"amount_cents":-250}"#;
        let v2 = r#"{"version":2,"account":"acct-002","time_ms":7,"movement":{"Withdrawal":250}}"#;
        assert_eq!(decode(v1), decode(v2));
        assert_eq!(decode(v1), Ok(Event::new(7, "acct-002".to_string(), Movement::Withdrawal(250))));
    }

    #[test]
    fn v1_refuses_what_it_cannot_express() {
        assert_eq!(encode_v1(&event(1, Movement::Withdrawal(0))), None);
        assert_eq!(encode_v1(&event(1, Movement::Deposit(-5))), None);
        let log = [event(1, Movement::Withdrawal(0)), event(2, Movement::Deposit(3))];
        let lines = log_lines(&log, Some(1));
        assert!(lines[0].contains("\"version\":2") && lines[1].contains("\"version\":1"), "{lines:?}");
        let decoded: Vec<_> = lines.iter().map(|l| decode(l).unwrap()).collect();
        assert_eq!(decoded, log);
    }

    #[test]
    fn an_unknown_version_is_an_error_naming_it() {
        let line = r#"{"version":3,"account":"acct-001","time_ms":5,"movement":{"Deposit":1}}"#;
        let error = decode(line).unwrap_err();
        assert_eq!(error, DecodeError::UnknownVersion(3));
        assert!(error.to_string().contains("unknown event version 3"), "{error}");
        assert_eq!(decode(r#"{"version":0}"#), Err(DecodeError::UnknownVersion(0)));
    }

    #[test]
    fn a_missing_or_mistyped_version_is_an_error() {
        let line = r#"{"account":"acct-001","time_ms":5,"movement":{"Deposit":1}}"#;
        assert_eq!(decode(line), Err(DecodeError::MissingVersion));
        assert_eq!(DecodeError::MissingVersion.to_string(), "no \"version\" field");
        for version in [r#""2""#, "-1", "1.5", "null"] {
            let line = format!(r#"{{"version":{version},"account":"a","time_ms":5,"amount_cents":1}}"#);
            assert_eq!(decode(&line), Err(DecodeError::BadVersion(version.to_string())), "{line}");
        }
    }

    #[test]
    fn a_malformed_line_is_an_error_with_the_reason() {
        assert!(matches!(decode("{\"version\":2,"), Err(DecodeError::Malformed(_))));
        assert!(matches!(decode("[1,2]"), Err(DecodeError::Malformed(_))));
        assert!(decode("not json").unwrap_err().to_string().starts_with("not a JSON object: "));
        // A body that does not match its version: the v2 field in a v1 event, and a bad amount.
        let error = decode(r#"{"version":1,"account":"a","time_ms":5,"movement":{"Deposit":1}}"#).unwrap_err();
        assert!(
            matches!(&error, DecodeError::Body { version: 1, reason } if reason.contains("amount_cents")),
            "{error}"
        );
        assert!(error.to_string().starts_with("bad version-1 event: "), "{error}");
        let error = decode(r#"{"version":2,"account":"a","time_ms":5,"movement":{"Refund":1}}"#).unwrap_err();
        assert!(matches!(&error, DecodeError::Body { version: 2, reason } if reason.contains("Refund")), "{error}");
        let min = format!(r#"{{"version":1,"account":"a","time_ms":5,"amount_cents":{}}}"#, i64::MIN);
        assert!(matches!(decode(&min), Err(DecodeError::Body { version: 1, .. })));
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let line = r#"{"version":2,"account":"a","time_ms":5,"movement":{"Deposit":1},"note":"x"}"#;
        assert_eq!(decode(line), Ok(Event::new(5, "a".to_string(), Movement::Deposit(1))));
    }
}
