//! The task model and the formats tasks travel in.

pub(crate) mod envelope;
pub(crate) mod events;
pub(crate) mod names;
pub(crate) mod task;
pub(crate) mod timeline;
