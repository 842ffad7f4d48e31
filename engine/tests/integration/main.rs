//! Engine integration tests, in one binary to keep link times down.

mod common;
mod dedup_oracle;
mod session_oracle;
mod state_bounded;
mod topn_oracle;
mod window_oracle;
