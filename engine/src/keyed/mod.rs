//! Keyed operators beyond windows: deduplication within a horizon, top-N per group, and
//! keyed process functions (user code with per-key state and event-time timers).

pub mod dedup;
pub mod process;
pub mod topn;
