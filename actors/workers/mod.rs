//! The worker types a node offers: Rust workers, script workers, and the registry of both.

pub mod eval;
pub mod registry;
pub mod rust;
pub mod script;
