//! Tideline connectors: where streams come from and where they go.
//!
//! | module | what it holds |
//! |---|---|
//! | [`file`](mod@file) | CSV and JSON Lines files: a splittable, watermarked source with dead letters, and a sink |
//! | `kafka` | Kafka (feature `kafka`, on by default): a partitioned, at-least-once source and a changelog / upsert / append-only sink |
//! | `nexmark` | the Nexmark benchmark's generator as a deterministic, partitioned source (feature `nexmark`) |
//! | [`error`] | the connectors' error type |
//!
//! Every source here is a `tideline::source::SourceReader` driven by the engine's generic
//! source operator, so watermarks, late policies and metrics behave the same everywhere.

pub mod error;
pub mod file;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "nexmark")]
pub mod nexmark;

pub use error::ConnectorError;

// The connectors guide's code blocks are compiled as doctests (its Kafka part needs the
// feature).
#[cfg(all(doctest, feature = "kafka"))]
#[doc = include_str!("../../docs/connectors.md")]
mod guide_connectors {}
