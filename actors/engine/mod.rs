//! The node's actors and what only they use.

pub mod control;
pub mod dispatcher;
pub mod ingress;
pub mod peer;
pub mod pool;
pub mod saver;
pub mod scheduler;
pub mod supervisor;
