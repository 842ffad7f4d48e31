//! Kafka: a partitioned, watermarked, at-least-once source and a changelog / upsert /
//! append-only sink, on librdkafka (the `rdkafka` crate). Behind the `kafka` feature (on by
//! default; `default-features = false` skips building librdkafka).
//!
//! - [`KafkaSource`] reads topics: partitions spread over all workers by a deterministic
//!   assignment, a watermark per partition, event time from the record or the message
//!   timestamp, dead letters for messages that do not decode, offsets committed only once
//!   everything derived from them is durable, bounded or unbounded reading.
//! - [`KafkaSink`] writes a collection with an idempotent producer per worker, partitioned by
//!   key, flushing at every frontier advance (the durability point the source's commits wait
//!   for), and reports failed deliveries instead of dropping them.
//! - [`KafkaConfig`] passes any librdkafka property through (security, SASL, SSL, tuning) and
//!   never shows secrets.
//!
//! ```no_run
//! use std::time::Duration;
//! use tideline::prelude::*;
//! use tideline::sink::SinkHandle;
//! use tideline::source::SourceConfig;
//! use tideline::window::aggregate::Count;
//! use tideline_connectors::kafka::{KafkaConfig, KafkaSink, KafkaSource, Keyed, SinkFormat};
//!
//! #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
//! struct Click { time: u64, page: String }
//!
//! let config = KafkaConfig::new("localhost:9092");
//! let clicks = KafkaSource::<Click>::json(config.clone())
//!     .topic("clicks")
//!     .group_id("click-counts")
//!     .event_time(|click: &Click| click.time)
//!     .build()?;
//! let counts = KafkaSink::builder(config, "click-counts")
//!     .format(SinkFormat::Upsert)
//!     .key(|r: &WindowResult<String, i64>| format!("{}@{}", r.key, r.window.start))
//!     .value(|r: &WindowResult<String, i64>| r.value)
//!     .build()?;
//! let handle = SinkHandle::new("click-counts");
//! tideline::runtime::execute(&tideline::runtime::Cluster::threads(2), move |worker| {
//!     let (clicks, counts, handle) = (clicks.clone(), counts.clone(), handle.clone());
//!     worker.dataflow::<Time, _, _>(move |scope| {
//!         let config = SourceConfig::new("clicks")
//!             .watermarks(WatermarkStrategy::bounded_out_of_orderness(Duration::from_secs(5)));
//!         let per_page = clicks
//!             .read(scope, config)
//!             .data
//!             .map(|c| Event::new(c.time, c.page, ()))
//!             .tumbling(Duration::from_secs(60))
//!             .aggregate(Count);
//!         counts.write(per_page, &handle);
//!     });
//! })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod admin;
mod client;
mod committer;
mod config;
mod dead_letters;
mod decode;
mod discovery;
mod error;
mod ledger;
mod plan;
mod reader;
mod sink;
mod source;
mod stats;

pub use admin::{TopicPolicy, create_topic, ensure_topic};
pub use config::KafkaConfig;
pub use decode::{Decoder, KafkaMessage, Keyed, RawMessage};
pub use error::KafkaError;
pub use plan::StartOffsets;
pub use sink::{DeliveryError, KafkaSink, KafkaSinkBuilder, KafkaSinkStats, SinkFormat};
pub use source::{KafkaSource, KafkaSourceBuilder};
pub use stats::KafkaSourceStats;
