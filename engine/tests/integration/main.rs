//! Engine integration tests, in one binary to keep link times down.

mod common;
mod join_asof_oracle;
mod join_equi_oracle;
mod join_interval_oracle;
mod join_state_bounded;
mod join_window_oracle;
mod read_model;
mod source_watermarks;
mod table_upsert;
mod window_oracle;
mod window_state_bounded;
