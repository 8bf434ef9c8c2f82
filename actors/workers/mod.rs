//! The worker types a node offers: Rust workers, script workers with their settings files, and
//! the registry of both.

pub(crate) mod eval;
pub(crate) mod registry;
pub(crate) mod rust;
pub(crate) mod script;
pub(crate) mod settings;
