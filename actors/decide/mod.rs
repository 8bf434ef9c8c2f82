//! Pure decisions, free of I/O: each is a plain function or struct with unit tests.

pub(crate) mod backoff;
pub(crate) mod cron;
pub(crate) mod due;
#[cfg(test)]
pub(crate) mod fencing;
pub(crate) mod outbox;
pub(crate) mod outcome;
pub(crate) mod placement;
pub(crate) mod policy;
pub(crate) mod reconcile;
pub(crate) mod restart;
pub(crate) mod runnable;
pub(crate) mod times;
