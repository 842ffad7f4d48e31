//! Engine integration tests, in one binary to keep link times down.

mod common;
mod dedup_oracle;
mod ingestion_time;
mod join_asof_oracle;
mod join_equi_oracle;
mod join_interval_oracle;
mod join_state_bounded;
mod join_window_oracle;
mod metrics_endpoint;
mod peer_scenarios;
mod process_oracle;
mod processing_timers;
mod read_model;
mod session_oracle;
mod source_finish;
mod source_watermarks;
mod state_bounded;
mod table_upsert;
mod topn_oracle;
mod window_oracle;
mod window_state_bounded;
