//! Engine integration tests, in one binary to keep link times down.

mod common;
mod dedup_oracle;
mod session_oracle;
mod topn_oracle;
mod window_oracle;
