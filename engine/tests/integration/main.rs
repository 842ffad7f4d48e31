//! Engine integration tests, in one binary to keep link times down.

mod common;
mod source_finish;
mod source_watermarks;
mod window_oracle;
mod window_state_bounded;
