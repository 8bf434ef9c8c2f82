//! Schedule arithmetic, free of I/O: cron expressions, intervals, coalescing of missed
//! occurrences, and reading the times users type.
//!
//! All times are Unix milliseconds in UTC. A time typed without an offset is UTC, and cron
//! fields are matched in UTC, so every node computes the same occurrences whatever its local
//! time zone.

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
        Ok(Cron {
            text: text.trim().to_owned(),
            minute,
            hour,
            dom,
            month,
            dow,
            dom_any: parts[2] == "*",
            dow_any: parts[4] == "*",
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
        let start_min = after_ms / 60_000 + 1;
        let first_day = start_min / 1_440;
        for day in first_day..first_day + 366 * 8 {
            let (_, month, dom) = civil_from_days(day as i64);
            let dow = ((day + 4) % 7) as u32; // 1970-01-01 was a Thursday
            if !self.day_matches(dom, month, dow) {
                continue;
            }
            let from = if day == first_day {
                start_min % 1_440
            } else {
                0
            };
            for m in from..1_440 {
                let (h, mi) = ((m / 60) as u32, (m % 60) as u32);
                if self.hour.has(h) && self.minute.has(mi) {
                    return Some((day * 1_440 + m) * 60_000);
                }
            }
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
pub fn advance(rec: &Recurrence, due: u64, now: u64, missed: Missed) -> Option<u64> {
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
pub fn occurrence_id(template: &str, due: u64) -> String {
    format!("{template}@{due}")
}

/// Days since 1970-01-01 for a civil date.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Civil date (year, month, day) of a day count since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    (days_from_civil(
        if m == 12 { y + 1 } else { y },
        if m == 12 { 1 } else { m + 1 },
        1,
    ) - days_from_civil(y, m, 1)) as u32
}

/// Reads a point in time: RFC 3339 (`2014-12-31T23:59:59+01:00`), `2014-12-31 23:59[:59]`, and
/// human forms such as `December 31st 2014 23:59:59` or `31 Dec 2014 11pm`, each with an optional
/// offset (`+01:00`, `-0500`, `Z`, `UTC`). Without an offset the time is UTC.
pub fn parse_time(input: &str) -> Result<u64, String> {
    let bad = |why: &str| {
        format!(
            "`{input}`: {why} (try 2014-12-31T23:59:59+01:00 or \"December 31st 2014 23:59:59\")"
        )
    };
    let text = input.trim();
    if text.is_empty() {
        return Err(bad("empty time"));
    }
    let mut year: Option<i64> = None;
    let mut month: Option<u32> = None;
    let mut day: Option<u32> = None;
    let mut clock: Option<(u32, u32, u32, u32)> = None; // h, m, s, ms
    let mut offset_min: i64 = 0;
    // Split "2014-12-31T23:59:59+01:00" into date, clock and offset tokens.
    let chars: Vec<char> = text.chars().collect();
    let spaced: String = chars
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            let between_digits = i > 0
                && chars[i - 1].is_ascii_digit()
                && chars.get(i + 1).is_some_and(char::is_ascii_digit);
            match c {
                'T' | 't' if between_digits => ' ',
                ',' => ' ',
                c => c,
            }
        })
        .collect();
    let mut tokens: Vec<String> = Vec::new();
    for raw in spaced.split_whitespace() {
        // A clock glued to its offset: 23:59:59+01:00 or 23:59:59Z.
        let t = raw.to_owned();
        if t.contains(':') {
            if let Some(pos) = t[1..].find(['+', '-']).map(|p| p + 1) {
                tokens.push(t[..pos].to_owned());
                tokens.push(t[pos..].to_owned());
                continue;
            }
            if let Some(stripped) = t.strip_suffix(['Z', 'z']) {
                tokens.push(stripped.to_owned());
                tokens.push("Z".into());
                continue;
            }
        }
        tokens.push(t);
    }
    let mut i = 0;
    while i < tokens.len() {
        let tok = tokens[i].as_str();
        let lower = tok.to_ascii_lowercase();
        i += 1;
        if let Some((y, m, d)) = iso_date(tok) {
            (year, month, day) = (Some(y), Some(m), Some(d));
        } else if tok.contains(':') && !tok.starts_with(['+', '-']) {
            clock =
                Some(read_clock(tok).ok_or_else(|| bad(&format!("`{tok}` is not a time of day")))?);
        } else if matches!(lower.as_str(), "z" | "utc" | "gmt") {
            offset_min = 0;
        } else if tok.starts_with(['+', '-']) && tok.len() > 1 {
            offset_min =
                read_offset(tok).ok_or_else(|| bad(&format!("`{tok}` is not an offset")))?;
        } else if let Some(m) = MONTHS.iter().position(|n| lower.starts_with(n)) {
            month = Some(m as u32 + 1);
        } else if let Some(h) = read_meridiem(&lower) {
            clock = Some((h, 0, 0, 0));
        } else {
            let digits = lower.trim_end_matches(|c: char| c.is_ascii_alphabetic());
            let suffix = &lower[digits.len()..];
            let Ok(n) = digits.parse::<i64>() else {
                return Err(bad(&format!("cannot read `{tok}`")));
            };
            if !matches!(suffix, "" | "st" | "nd" | "rd" | "th") {
                return Err(bad(&format!("cannot read `{tok}`")));
            }
            if digits.len() == 4 && suffix.is_empty() {
                year = Some(n);
            } else if (1..=31).contains(&n) && day.is_none() {
                day = Some(n as u32);
            } else {
                return Err(bad(&format!("cannot read `{tok}`")));
            }
        }
    }
    let (Some(y), Some(m), Some(d)) = (year, month, day) else {
        return Err(bad("needs a year, a month and a day"));
    };
    if d == 0 || d > days_in_month(y, m) {
        return Err(bad(&format!("day {d} does not exist in that month")));
    }
    let (h, mi, s, ms) = clock.unwrap_or((0, 0, 0, 0));
    let secs = days_from_civil(y, m, d) * 86_400
        + i64::from(h) * 3_600
        + i64::from(mi) * 60
        + i64::from(s)
        - offset_min * 60;
    if secs < 0 {
        return Err(bad("before 1970"));
    }
    Ok(secs as u64 * 1000 + u64::from(ms))
}

fn iso_date(tok: &str) -> Option<(i64, u32, u32)> {
    let mut it = tok.split('-');
    let (y, m, d) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() || y.len() != 4 {
        return None;
    }
    let m: u32 = m.parse().ok()?;
    if !(1..=12).contains(&m) {
        return None;
    }
    Some((y.parse().ok()?, m, d.parse().ok()?))
}

fn read_clock(tok: &str) -> Option<(u32, u32, u32, u32)> {
    let lower = tok.to_ascii_lowercase();
    let (body, pm) = match (lower.strip_suffix("pm"), lower.strip_suffix("am")) {
        (Some(b), _) => (b.to_owned(), Some(true)),
        (_, Some(b)) => (b.to_owned(), Some(false)),
        _ => (lower.clone(), None),
    };
    let mut parts = body.split(':');
    let mut h: u32 = parts.next()?.parse().ok()?;
    let m: u32 = parts.next()?.parse().ok()?;
    let (s, ms) = match parts.next() {
        None => (0, 0),
        Some(sec) => {
            let (whole, frac) = sec.split_once('.').unwrap_or((sec, ""));
            let ms = if frac.is_empty() {
                0
            } else {
                format!("{frac:0<3}")[..3].parse().ok()?
            };
            (whole.parse().ok()?, ms)
        }
    };
    if parts.next().is_some() {
        return None;
    }
    if let Some(pm) = pm {
        if h == 0 || h > 12 {
            return None;
        }
        h = h % 12 + if pm { 12 } else { 0 };
    }
    (h < 24 && m < 60 && s < 61).then_some((h, m, s.min(59), ms))
}

fn read_meridiem(lower: &str) -> Option<u32> {
    let (n, pm) = match (lower.strip_suffix("pm"), lower.strip_suffix("am")) {
        (Some(n), _) => (n, true),
        (_, Some(n)) => (n, false),
        _ => return None,
    };
    let h: u32 = n.parse().ok()?;
    (1..=12)
        .contains(&h)
        .then_some(h % 12 + if pm { 12 } else { 0 })
}

fn read_offset(tok: &str) -> Option<i64> {
    let sign = if tok.starts_with('-') { -1 } else { 1 };
    let digits: String = tok[1..].chars().filter(char::is_ascii_digit).collect();
    let (h, m) = match digits.len() {
        2 => (digits.parse::<i64>().ok()?, 0),
        4 => (
            digits[..2].parse::<i64>().ok()?,
            digits[2..].parse::<i64>().ok()?,
        ),
        _ => return None,
    };
    (h <= 14 && m < 60).then_some(sign * (h * 60 + m))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> u64 {
        parse_time(text).unwrap()
    }

    #[test]
    fn times_in_every_documented_form() {
        let want = at("2014-12-31T22:59:59Z");
        assert_eq!(at("2014-12-31T23:59:59+01:00"), want);
        assert_eq!(at("December 31st 2014 23:59:59 +01:00"), want);
        assert_eq!(at("2014-12-31 22:59:59"), want);
        assert_eq!(at("31 Dec 2014 22:59:59 UTC"), want);
        assert_eq!(at("Dec 31, 2014 10:59:59pm"), want);
        assert_eq!(
            at("December 31st 2014 23:59:59"),
            want + 3_600_000,
            "no offset means UTC"
        );
        assert_eq!(
            at("2014-12-31T23:59:59.250-0100"),
            at("2015-01-01T00:59:59.250Z")
        );
        assert_eq!(at("1 jan 2015 3pm"), at("2015-01-01T15:00:00Z"));
        assert_eq!(at("2015-01-01"), 1_420_070_400_000);
    }

    #[test]
    fn bad_times_say_why() {
        assert!(parse_time("").unwrap_err().contains("empty"));
        assert!(
            parse_time("February 30th 2015")
                .unwrap_err()
                .contains("does not exist")
        );
        assert!(
            parse_time("next tuesday")
                .unwrap_err()
                .contains("cannot read")
        );
        assert!(parse_time("12:00").unwrap_err().contains("needs a year"));
        assert!(
            parse_time("2015-01-01 25:00")
                .unwrap_err()
                .contains("not a time")
        );
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
        assert_eq!(
            Cron::parse("0 0 31 2 *").unwrap().next_after(0),
            None,
            "never"
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

    #[test]
    fn civil_dates_round_trip() {
        for days in [-1_000_000i64, -1, 0, 59, 10_957, 20_415, 1_000_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(days_in_month(2024, 2), 29);
        assert_eq!(days_in_month(2100, 2), 28);
        assert_eq!(days_in_month(2026, 12), 31);
    }
}
