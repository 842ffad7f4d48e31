//! Keyed operators beyond windows: deduplication within a horizon and top-N per group.

pub mod dedup;
pub mod topn;
