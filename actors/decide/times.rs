//! Human durations: `90s`, `250ms`, `10 minutes`, `1 hour`, `day`, `1h30m`, `2 days 3 hours`.
//!
//! One parser serves the configuration file, the environment and the CLI, so a duration means the
//! same thing everywhere. A bare number is seconds.

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
    let (year, month, day) = crate::decide::cron::civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60,
        ms % 1000
    )
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
}
