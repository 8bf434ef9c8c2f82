//! The node's actors and what only they use.

pub(crate) mod archiver;
pub(crate) mod control;
pub(crate) mod dispatcher;
pub(crate) mod inbox;
pub(crate) mod ingress;
pub(crate) mod peer;
pub(crate) mod pool;
pub(crate) mod saver;
pub(crate) mod scheduler;
pub(crate) mod supervisor;
pub(crate) mod watch;
