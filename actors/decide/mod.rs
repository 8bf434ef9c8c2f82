//! Pure decisions, free of I/O: each is a plain function or struct with unit tests.

pub mod backoff;
pub mod cron;
pub mod fencing;
pub mod placement;
pub mod policy;
pub mod times;
