//! Engine integration tests, in one binary to keep link times down.

mod common;
mod window_oracle;
