//! Kafka connector tests, in one binary to keep link times down.
//!
//! Tests that need a real broker read its address from `TIDELINE_KAFKA_BROKERS` and say that
//! they skipped without it (`scripts/test.sh` starts a broker and sets it); fault-injection
//! tests run against librdkafka's mock cluster and always run.

mod at_least_once;
mod backpressure;
mod common;
mod dead_letters;
mod end_to_end;
mod faults;
mod groups;
mod idle_partitions;
mod partitions;
mod sink_formats;
mod start_positions;
