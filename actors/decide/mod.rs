//! Pure decisions, free of I/O: each is a plain function or struct with unit tests.

pub mod backoff;
pub mod cron;
pub mod due;
pub mod fencing;
pub mod outcome;
pub mod placement;
pub mod policy;
pub mod restart;
pub mod times;
