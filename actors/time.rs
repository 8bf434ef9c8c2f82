//! Durations and times as people type them, and as bgnode prints them.
//!
//! Durations: `90s`, `10 minutes`, `1 hour`, `day`, `1h30m`. Times: RFC 3339
//! (`2014-12-31T23:59:59+01:00`) and human forms (`December 31st 2014 23:59:59`,
//! `31 Dec 2014 11pm`), UTC unless an offset is written (`+1:00`, `-0500`, `Z`). Every time is
//! Unix milliseconds.

pub use crate::decide::times::{format_duration, format_timestamp, parse_duration, parse_time};
pub use crate::model::task::now_ms;
