//! The task model and the formats tasks travel in.

pub mod envelope;
pub mod events;
pub mod names;
pub mod task;
