//! The example programs, end to end: one test binary (each costs a long link).

mod checkpoints;
mod cli;
mod kafka_pipeline;
mod ledger;
mod nexmark;
mod patterns;
mod round_trip;
mod window_agg;
