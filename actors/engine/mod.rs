//! The node's actors.

pub mod dispatcher;
pub mod ingress;
pub mod pool;
pub mod saver;
pub mod scheduler;
pub mod supervisor;
