//! Engine integration tests, in one binary to keep link times down.

mod common;
mod session_oracle;
mod window_oracle;
