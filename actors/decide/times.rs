//! Times as people write them: durations (`90s`, `250ms`, `10 minutes`, `1 hour`, `day`,
//! `1h30m`, `2 days 3 hours`) and points in time (`2014-12-31T23:59:59+01:00`,
//! `December 31st 2014 23:59:59`), read and written.
//!
//! One parser of each serves the configuration file, the environment, the CLI and channel
//! messages, so a time means the same thing everywhere. A bare number is seconds. A point in time
//! without an offset is UTC.

use std::time::Duration;

/// Parses a human duration. Errors say what was wrong in words a user can act on.
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    let text = input.trim().to_ascii_lowercase();
    if text.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = text.as_str();
    let mut parts = 0;
    while !rest.is_empty() {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == ',');
        if rest.is_empty() {
            break;
        }
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(digits);
        let after = after.trim_start();
        let unit_len = after
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        if unit.is_empty() {
            return Err(format!(
                "`{input}`: missing unit after `{number}` (use s, m, h, d or ms)"
            ));
        }
        let amount: f64 = if number.is_empty() {
            // `day`, `hour`: a unit alone means one of it, as in `--every day`.
            if parts > 0 {
                return Err(format!("`{input}`: `{unit}` needs a number"));
            }
            1.0
        } else {
            number
                .parse()
                .map_err(|_| format!("`{input}`: `{number}` is not a number"))?
        };
        let unit_secs = unit_seconds(unit)
            .ok_or_else(|| format!("`{input}`: unknown unit `{unit}` (use ms, s, m, h, d or w)"))?;
        let secs = amount * unit_secs;
        if !secs.is_finite() || secs > 100.0 * 365.0 * 86_400.0 {
            return Err(format!("`{input}`: too long"));
        }
        total += Duration::from_secs_f64(secs);
        parts += 1;
        rest = after;
    }
    Ok(total)
}

fn unit_seconds(unit: &str) -> Option<f64> {
    Some(match unit {
        "ms" | "msec" | "msecs" | "millisecond" | "milliseconds" => 0.001,
        "s" | "sec" | "secs" | "second" | "seconds" => 1.0,
        "m" | "min" | "mins" | "minute" | "minutes" => 60.0,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3_600.0,
        "d" | "day" | "days" => 86_400.0,
        "w" | "week" | "weeks" => 604_800.0,
        _ => return None,
    })
}

/// Formats a duration the way [`parse_duration`] reads it back (`1h30m`, `250ms`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if ms % 1000 != 0 {
        return format!("{ms}ms");
    }
    let mut secs = d.as_secs();
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
}

/// Formats Unix milliseconds as an RFC 3339 UTC time (`2026-11-23T02:25:29.123Z`).
pub fn format_timestamp(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60,
        ms % 1000
    )
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];

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

/// Serde support for durations written as human strings or as integer seconds.
pub mod serde_human {
    use super::{format_duration, parse_duration};
    use serde::{Deserialize, Deserializer, Serializer, de::Error};
    use std::time::Duration;

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }

    /// Reads `"90s"`, `"10 minutes"` or `90`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Secs(s) => Ok(Duration::from_secs(s)),
            Raw::Text(t) => parse_duration(&t).map_err(D::Error::custom),
        }
    }

    /// Writes the short human form.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> u64 {
        parse_time(text).unwrap()
    }

    #[test]
    fn reads_the_documented_forms() {
        let cases = [
            ("90s", 90_000),
            ("90", 90_000),
            ("250ms", 250),
            ("10 minutes", 600_000),
            ("1 hour", 3_600_000),
            ("day", 86_400_000),
            ("1h30m", 5_400_000),
            ("2 days, 3 hours", 183_600_000),
            ("1.5s", 1_500),
            (" 4 Hours ", 14_400_000),
        ];
        for (text, ms) in cases {
            assert_eq!(parse_duration(text).unwrap().as_millis(), ms, "{text}");
        }
    }

    #[test]
    fn rejects_nonsense_with_a_reason() {
        assert!(parse_duration("").unwrap_err().contains("empty"));
        assert!(
            parse_duration("10 parsecs")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(
            parse_duration("1h day")
                .unwrap_err()
                .contains("needs a number")
        );
        assert!(parse_duration("1e400s").is_err());
        assert!(
            parse_duration("99999999999 weeks")
                .unwrap_err()
                .contains("too long")
        );
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
    fn timestamps_are_rfc3339() {
        assert_eq!(format_timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_timestamp(951_782_400_000),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(
            format_timestamp(1_795_400_729_123),
            "2026-11-23T02:25:29.123Z"
        );
    }

    #[test]
    fn formats_round_trip() {
        for text in ["1h30m", "250ms", "1d", "45s", "0s"] {
            let d = parse_duration(text).unwrap();
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }
        assert_eq!(format_duration(Duration::from_secs(5_400)), "1h30m");
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
