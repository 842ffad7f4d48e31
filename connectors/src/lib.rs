//! Tideline connectors.
