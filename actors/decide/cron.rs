//! Schedule arithmetic, free of I/O: cron expressions, intervals and coalescing of missed
//! occurrences.
//!
//! All times are Unix milliseconds in UTC and cron fields are matched on the UTC calendar
//! (jiff's), so every node computes the same occurrences whatever its local time zone.

use jiff::Timestamp;
use jiff::tz::Offset;
use std::time::Duration;

/// One cron field: the allowed values as a bit set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Field(u64);

impl Field {
    fn has(self, v: u32) -> bool {
        self.0 & (1 << v) != 0
    }
}

/// A cron expression: `minute hour day-of-month month day-of-week`, matched in UTC.
///
/// Each field takes `*`, numbers, ranges `a-b`, steps `*/n` and `a-b/n`, and lists `a,b`; months
/// and weekdays take names (`jan`, `mon`); Sunday is 0 or 7. When both day fields are restricted a
/// day matching either runs (the classic cron rule). `@hourly`, `@daily`, `@weekly`, `@monthly`
/// and `@yearly` are accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    text: String,
    minute: Field,
    hour: Field,
    dom: Field,
    month: Field,
    dow: Field,
    dom_any: bool,
    dow_any: bool,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

impl Cron {
    /// Parses an expression; the error names the field and what is wrong.
    pub fn parse(text: &str) -> Result<Cron, String> {
        let expanded = match text.trim() {
            "@hourly" => "0 * * * *",
            "@daily" | "@midnight" => "0 0 * * *",
            "@weekly" => "0 0 * * 0",
            "@monthly" => "0 0 1 * *",
            "@yearly" | "@annually" => "0 0 1 1 *",
            other => other,
        };
        let parts: Vec<&str> = expanded.split_whitespace().collect();
        if parts.len() != 5 {
            return Err(format!(
                "cron `{text}` has {} fields; expected 5: minute hour day-of-month month day-of-week",
                parts.len()
            ));
        }
        let minute = field(parts[0], "minute", 0, 59, &[])?;
        let hour = field(parts[1], "hour", 0, 23, &[])?;
        let dom = field(parts[2], "day-of-month", 1, 31, &[])?;
        let month = field(parts[3], "month", 1, 12, &MONTHS)?;
        let mut dow = field(parts[4], "day-of-week", 0, 7, &DAYS)?;
        if dow.has(7) {
            dow = Field(dow.0 | 1);
        }
        // With the weekday free, the day of the month alone decides: at least one chosen day
        // must exist in at least one chosen month (February counts its 29th).
        let dom_any = parts[2] == "*";
        let dow_any = parts[4] == "*";
        if dow_any && !dom_any {
            const LONGEST: [u32; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
            let exists = (1..=12u32)
                .filter(|m| month.has(*m))
                .any(|m| (1..=LONGEST[m as usize - 1]).any(|d| dom.has(d)));
            if !exists {
                return Err(format!(
                    "cron `{}` never runs: none of its months has its day of the month `{}`",
                    text.trim(),
                    parts[2]
                ));
            }
        }
        Ok(Cron {
            text: text.trim().to_owned(),
            minute,
            hour,
            dom,
            month,
            dow,
            dom_any,
            dow_any,
        })
    }

    /// The expression as given.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    fn day_matches(&self, dom: u32, month: u32, dow: u32) -> bool {
        if !self.month.has(month) {
            return false;
        }
        match (self.dom_any, self.dow_any) {
            (true, true) => true,
            (false, true) => self.dom.has(dom),
            (true, false) => self.dow.has(dow),
            (false, false) => self.dom.has(dom) || self.dow.has(dow),
        }
    }

    /// The first matching minute strictly after `after_ms`, within eight years.
    pub fn next_after(&self, after_ms: u64) -> Option<u64> {
        let next_minute = i64::try_from(after_ms / 60_000 + 1).ok()?.checked_mul(60)?;
        let start = Offset::UTC.to_datetime(Timestamp::from_second(next_minute).ok()?);
        let mut date = start.date();
        for _ in 0..366 * 8 {
            let dow = date.weekday().to_sunday_zero_offset();
            if self.day_matches(date.day() as u32, date.month() as u32, dow as u32) {
                for hour in (0..24).filter(|h| self.hour.has(*h as u32)) {
                    for minute in (0..60).filter(|m| self.minute.has(*m as u32)) {
                        let at = date.at(hour, minute, 0, 0);
                        if at >= start {
                            let at = Offset::UTC.to_timestamp(at).ok()?;
                            return u64::try_from(at.as_millisecond()).ok();
                        }
                    }
                }
            }
            date = date.tomorrow().ok()?;
        }
        None
    }
}

fn field(text: &str, name: &str, lo: u32, hi: u32, names: &[&str]) -> Result<Field, String> {
    let bad = |why: String| format!("cron {name} `{text}`: {why}");
    let value = |s: &str| -> Result<u32, String> {
        let lower = s.to_ascii_lowercase();
        if let Some(i) = names.iter().position(|n| *n == lower) {
            // Month names are 1-based, weekday names 0-based.
            return Ok(i as u32 + lo);
        }
        let v: u32 = s
            .parse()
            .map_err(|_| bad(format!("`{s}` is not a number")))?;
        if v < lo || v > hi {
            return Err(bad(format!("{v} is outside {lo}..={hi}")));
        }
        Ok(v)
    };
    let mut bits = 0u64;
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s
                    .parse()
                    .map_err(|_| bad(format!("step `{s}` is not a number")))?;
                if step == 0 {
                    return Err(bad("a step of 0".into()));
                }
                (r, step)
            }
            None => (item, 1),
        };
        let (a, b) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else {
            let v = value(range)?;
            (v, if step > 1 { hi } else { v })
        };
        if a > b {
            return Err(bad(format!("range {a}-{b} runs backwards")));
        }
        let mut v = a;
        while v <= b {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(Field(bits))
}

/// How a template recurs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recurrence {
    /// A fixed interval.
    Every(Duration),
    /// A cron expression.
    Cron(Cron),
}

impl Recurrence {
    /// The first occurrence strictly after `after_ms`.
    pub fn next_after(&self, after_ms: u64) -> Option<u64> {
        match self {
            Recurrence::Every(d) => Some(after_ms + (d.as_millis() as u64).max(1)),
            Recurrence::Cron(c) => c.next_after(after_ms),
        }
    }
}

/// What to do with occurrences missed while no scheduler ran (an outage).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Missed {
    /// Run one occurrence for all that were missed, then continue from now (the default).
    Coalesce,
    /// Run every missed occurrence, one after the other.
    All,
}

/// The decision for a template that came due at `due`: fire the occurrence `due`, and schedule
/// the next one at `next` (`None`: the schedule has no further occurrence).
pub(crate) fn advance(rec: &Recurrence, due: u64, now: u64, missed: Missed) -> Option<u64> {
    let next = rec.next_after(due)?;
    match missed {
        Missed::All => Some(next),
        Missed::Coalesce if next > now => Some(next),
        Missed::Coalesce => match rec {
            // Jump past now in one step, staying on the interval's grid.
            Recurrence::Every(d) => {
                let step = (d.as_millis() as u64).max(1);
                Some(due + ((now - due) / step + 1) * step)
            }
            Recurrence::Cron(c) => c.next_after(now),
        },
    }
}

/// The id of the occurrence of template `template` due at `due`: the same on every node, so
/// an occurrence can be created only once.
pub(crate) fn occurrence_id(template: &str, due: u64) -> String {
    format!("{template}@{due}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_day_no_chosen_month_has_is_refused() {
        for never in ["0 0 30 2 *", "0 0 31 4,6 *", "0 0 30,31 feb *"] {
            let err = Cron::parse(never).unwrap_err();
            assert!(err.contains("never runs"), "{never}: {err}");
        }
        for some in ["0 0 29 2 *", "0 0 31 1-4 *", "0 0 30 2 mon", "0 0 31 * *"] {
            assert!(Cron::parse(some).is_ok(), "{some}");
        }
    }
    use crate::decide::times::parse_time;

    fn at(text: &str) -> u64 {
        parse_time(text).unwrap()
    }

    #[test]
    fn cron_next_occurrences() {
        let t0 = at("2026-11-23T02:25:00Z");
        let daily3 = Cron::parse("0 3 * * *").unwrap();
        assert_eq!(daily3.next_after(t0), Some(at("2026-11-23T03:00:00Z")));
        assert_eq!(
            daily3.next_after(at("2026-11-23T03:00:00Z")),
            Some(at("2026-11-24T03:00:00Z"))
        );
        let every15 = Cron::parse("*/15 * * * *").unwrap();
        assert_eq!(every15.next_after(t0), Some(at("2026-11-23T02:30:00Z")));
        let weekdays = Cron::parse("30 9 * * mon-fri").unwrap();
        // 2026-11-28 is a Saturday.
        assert_eq!(
            weekdays.next_after(at("2026-11-27T10:00:00Z")),
            Some(at("2026-11-30T09:30:00Z"))
        );
        let leap = Cron::parse("0 0 29 feb *").unwrap();
        assert_eq!(leap.next_after(t0), Some(at("2028-02-29T00:00:00Z")));
        let either = Cron::parse("0 0 13 * 5").unwrap();
        // The 13th or any Friday: 2026-11-27 is a Friday, before December 13th.
        assert_eq!(either.next_after(t0), Some(at("2026-11-27T00:00:00Z")));
        assert_eq!(
            Cron::parse("@daily").unwrap().next_after(t0),
            Some(at("2026-11-24T00:00:00Z"))
        );
        let sunday7 = Cron::parse("0 12 * * 7").unwrap();
        assert_eq!(sunday7.next_after(t0), Some(at("2026-11-29T12:00:00Z")));
    }

    #[test]
    fn bad_cron_says_which_field() {
        assert!(Cron::parse("0 3 * *").unwrap_err().contains("has 4 fields"));
        assert!(Cron::parse("61 * * * *").unwrap_err().contains("minute"));
        assert!(Cron::parse("* 24 * * *").unwrap_err().contains("hour"));
        assert!(Cron::parse("* * * foo *").unwrap_err().contains("month"));
        assert!(
            Cron::parse("*/0 * * * *")
                .unwrap_err()
                .contains("step of 0")
        );
        assert!(
            Cron::parse("5-1 * * * *")
                .unwrap_err()
                .contains("backwards")
        );
        assert!(
            Cron::parse("0 0 31 2 *")
                .unwrap_err()
                .contains("never runs"),
            "an expression that never runs is refused when typed"
        );
    }

    #[test]
    fn interval_arithmetic_and_coalescing() {
        let every = Recurrence::Every(Duration::from_secs(10));
        assert_eq!(every.next_after(1_000), Some(11_000));
        // On time: the next occurrence follows the last one.
        assert_eq!(
            advance(&every, 100_000, 100_050, Missed::Coalesce),
            Some(110_000)
        );
        // After an outage of 95 s: one run now, next on the grid after now.
        assert_eq!(
            advance(&every, 100_000, 195_000, Missed::Coalesce),
            Some(200_000)
        );
        // Catch-up mode: every missed occurrence, in order.
        assert_eq!(
            advance(&every, 100_000, 195_000, Missed::All),
            Some(110_000)
        );
        let cron = Recurrence::Cron(Cron::parse("0 * * * *").unwrap());
        let due = at("2026-11-23T00:00:00Z");
        let now = at("2026-11-23T05:30:00Z");
        assert_eq!(
            advance(&cron, due, now, Missed::Coalesce),
            Some(at("2026-11-23T06:00:00Z"))
        );
        assert_eq!(
            advance(&cron, due, now, Missed::All),
            Some(at("2026-11-23T01:00:00Z"))
        );
        assert_eq!(occurrence_id("tpl", 42), "tpl@42");
    }
}
