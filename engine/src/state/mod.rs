//! Operator state: the temporal driver every stateful operator is built on.

pub(crate) mod driver;

/// Hash maps with a fast, fixed-seed hasher for operator state (keys come from the data, so
/// iteration order never decides results; a fixed seed keeps runs reproducible).
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::FixedState>;
