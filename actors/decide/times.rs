//! Times as people write them: durations (`90s`, `250ms`, `10 minutes`, `1 hour`, `day`,
//! `1h30m`, `2 days 3 hours`) and points in time (`2014-12-31T23:59:59+01:00`,
//! `December 31st 2014 23:59:59`), read and written.
//!
//! One parser of each serves every place that reads them (configuration file, environment, CLI,
//! channel messages), so a time means the same thing everywhere. A duration given as a bare
//! number is seconds; a point in time without an offset is UTC. The calendar (which dates exist,
//! days since 1970) is jiff's, used without a time zone database.

use jiff::SignedDuration;
use jiff::civil::{Date, DateTime, Time};
use jiff::fmt::temporal::{DateTimeParser, Pieces};
use jiff::tz::Offset;
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

/// Formats Unix milliseconds as an RFC 3339 UTC time (`2026-11-23T02:25:29.123Z`). A time past
/// the end of year 9999, where the calendar ends, prints as that end.
pub fn format_timestamp(ms: u64) -> String {
    let at = i64::try_from(ms)
        .ok()
        .and_then(|ms| UNIX_EPOCH.checked_add(SignedDuration::from_millis(ms)).ok())
        .unwrap_or(DateTime::MAX);
    format!("{at:.3}Z")
}

/// Unix time 0 on the UTC clock. Unix times are reckoned from it on the civil calendar rather
/// than as [`jiff::Timestamp`]s, whose range stops a day short of the end of year 9999.
const UNIX_EPOCH: DateTime = DateTime::constant(1970, 1, 1, 0, 0, 0, 0);

/// Month names; a word that starts with the first three letters of one names that month.
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// The largest offset from UTC in use anywhere (Kiribati is 14 hours ahead).
const MAX_OFFSET_SECS: i32 = 14 * 3_600;

/// Reads a point in time as Unix milliseconds.
///
/// Accepted:
/// - RFC 3339 and the ISO 8601 forms of it, read by jiff: `2014-12-31T23:59:59+01:00`,
///   `2014-12-31 23:59:59`, `2014-12-31T23:59`, `2015-01-01`, with fractions of a second;
/// - human forms, their words in any order: `December 31st 2014 23:59:59`, `31 Dec 2014 11pm`,
///   `Dec 31, 2014 10:59:59pm`, `2014-12-31 11pm`, `2014-12-31 9:30am`.
///
/// - the form of the command line bgnode replaces: `2014-12-31H23:59:59TZ+1:00`.
///
/// Either kind takes an offset (`Z`, `UTC`, `GMT`, `+01:00`, `+1:00`, `-0500`, `-5:30`, `+1`),
/// glued to the time or apart from it; without one the time is UTC. Time zone names are not
/// read: there is no time zone database here. Leap seconds (`:60`) read as `:59`. Times before
/// 1970 are refused.
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
    let text = &seed_form(text);
    static ISO: DateTimeParser = DateTimeParser::new();
    let (when, offset) = match ISO.parse_pieces(text) {
        Ok(pieces) => from_pieces(&pieces),
        Err(_) => read_human(text),
    }
    .map_err(|why| bad(&why))?;
    let since =
        when.duration_since(UNIX_EPOCH) - SignedDuration::from_secs(offset.seconds().into());
    if since.is_negative() {
        return Err(bad("before 1970"));
    }
    Ok(since.as_millis() as u64)
}

/// The form the command line of the system bgnode replaces wrote, `2014-12-31H23:59:59TZ+1:00`
/// (an `H` between date and time, `TZ` before the offset), rewritten as ISO 8601
/// (`2014-12-31T23:59:59+1:00`); any other text is returned as it is.
fn seed_form(text: &str) -> String {
    let b = text.as_bytes();
    let date = b.len() > 11
        && b[..10].iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            _ => c.is_ascii_digit(),
        })
        && matches!(b[10], b'H' | b'h')
        && b[11].is_ascii_digit();
    if !date {
        return text.to_owned();
    }
    let mut out = format!("{}T{}", &text[..10], &text[11..]);
    let upper = out.to_ascii_uppercase();
    if let Some(at) = upper.find("TZ")
        && at > 11
        && out.as_bytes()[at - 1].is_ascii_digit()
        && matches!(out.as_bytes().get(at + 2), Some(b'+' | b'-'))
    {
        out.replace_range(at..at + 2, "");
    }
    out
}

/// The clock time and offset of an RFC 3339 / ISO 8601 time that jiff has split into pieces.
/// A time zone name in brackets is ignored after an offset (which fixes the instant) and refused
/// without one.
fn from_pieces(pieces: &Pieces<'_>) -> Result<(DateTime, Offset), String> {
    let offset = match (pieces.to_numeric_offset(), pieces.time_zone_annotation()) {
        (Some(offset), _) => offset,
        (None, None) => Offset::UTC,
        (None, Some(_)) => {
            return Err(
                "time zone names are not known here: write an offset such as +01:00".into(),
            );
        }
    };
    if offset.seconds().abs() > MAX_OFFSET_SECS {
        return Err(format!("offset {offset} is outside -14:00 to +14:00"));
    }
    let time = pieces.time().unwrap_or(Time::midnight());
    Ok((pieces.date().to_datetime(time), offset))
}

/// Reads the human forms word by word: each word is a date, a time of day, an offset, a month
/// name, a year or a day of the month, in whatever order they come.
fn read_human(text: &str) -> Result<(DateTime, Offset), String> {
    let mut year: Option<i16> = None;
    let mut month: Option<i8> = None;
    let mut day: Option<i8> = None;
    let mut time: Option<Time> = None;
    let mut offset = Offset::UTC;
    for word in words(text) {
        let lower = word.to_ascii_lowercase();
        if let Some((y, m, d)) = iso_date(&word) {
            (year, month, day) = (Some(y), Some(m), Some(d));
        } else if word.contains(':') && !word.starts_with(['+', '-']) {
            time = Some(read_clock(&lower).ok_or(format!("`{word}` is not a time of day"))?);
        } else if matches!(lower.as_str(), "z" | "utc" | "gmt") {
            offset = Offset::UTC;
        } else if word.len() > 1 && word.starts_with(['+', '-']) {
            offset = read_offset(&word)
                .ok_or(format!("`{word}` is not an offset (-14:00 to +14:00)"))?;
        } else if let Some(i) = MONTHS
            .iter()
            .position(|name| lower.starts_with(&name[..3].to_ascii_lowercase()))
        {
            month = Some(i as i8 + 1);
        } else if let Some(t) = read_hour(&lower) {
            time = Some(t);
        } else {
            let digits = lower.trim_end_matches(|c: char| c.is_ascii_alphabetic());
            let suffix = &lower[digits.len()..];
            let number: Option<u16> = if all_digits(digits) {
                digits.parse().ok()
            } else {
                None
            };
            match (number, suffix) {
                (Some(n), "") if digits.len() == 4 => year = Some(n as i16),
                (Some(n @ 1..=31), "" | "st" | "nd" | "rd" | "th") if day.is_none() => {
                    day = Some(n as i8);
                }
                _ => return Err(format!("cannot read `{word}`")),
            }
        }
    }
    let (Some(year), Some(month), Some(day)) = (year, month, day) else {
        return Err("needs a year, a month and a day".into());
    };
    let name = usize::try_from(month - 1).ok().and_then(|i| MONTHS.get(i));
    let date = Date::new(year, month, day).map_err(|_| match name {
        Some(name) => format!("day {day} does not exist in {name} {year}"),
        None => format!("there is no month {month}"),
    })?;
    Ok((date.to_datetime(time.unwrap_or(Time::midnight())), offset))
}

/// Splits a human time into words: at spaces and commas, between a date and a `T` time, and
/// between a time of day and the offset glued to it (`23:59:59+01:00`, `23:59:59Z`,
/// `23:59:59UTC`).
fn words(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let digit_at = |i: usize| chars.get(i).is_some_and(char::is_ascii_digit);
    let spaced: String = (0..chars.len())
        .map(|i| match chars[i] {
            ',' => ' ',
            'T' | 't' if i > 0 && digit_at(i - 1) && digit_at(i + 1) => ' ',
            c => c,
        })
        .collect();
    let mut words = Vec::new();
    for word in spaced.split_whitespace() {
        if word.contains(':') {
            let sign = word
                .char_indices()
                .skip(1)
                .find(|&(_, c)| c == '+' || c == '-');
            if let Some((sign, _)) = sign {
                words.extend([word[..sign].to_owned(), word[sign..].to_owned()]);
                continue;
            }
            let zone = ["z", "utc", "gmt"].into_iter().find(|zone| {
                word.len() > zone.len()
                    && word.is_char_boundary(word.len() - zone.len())
                    && word[word.len() - zone.len()..].eq_ignore_ascii_case(zone)
            });
            if let Some(zone) = zone {
                words.extend([word[..word.len() - zone.len()].to_owned(), "Z".to_owned()]);
                continue;
            }
        }
        words.push(word.to_owned());
    }
    words
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// A number of one or two digits.
fn small(s: &str) -> Option<i8> {
    if !all_digits(s) || s.len() > 2 {
        return None;
    }
    s.parse().ok()
}

/// A date written `2014-12-31` (month and day may have one digit), not yet checked against the
/// calendar.
fn iso_date(word: &str) -> Option<(i16, i8, i8)> {
    let mut parts = word.split('-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || y.len() != 4 || !all_digits(y) {
        return None;
    }
    Some((y.parse().ok()?, small(m)?, small(d)?))
}

/// Splits `am`/`pm` off a lowercase word: the rest, and whether it was `pm`.
fn meridiem(lower: &str) -> (&str, Option<bool>) {
    match (lower.strip_suffix("pm"), lower.strip_suffix("am")) {
        (Some(rest), _) => (rest, Some(true)),
        (_, Some(rest)) => (rest, Some(false)),
        _ => (lower, None),
    }
}

/// The 24-hour hour of `hour` on a 12-hour clock (`12am` is 0, `12pm` is 12).
fn from_twelve(hour: i8, pm: bool) -> Option<i8> {
    (1..=12)
        .contains(&hour)
        .then_some(hour % 12 + if pm { 12 } else { 0 })
}

/// A time of day `23:59`, `23:59:59`, `23:59:59.250` or `10:59:59pm` (lowercase).
fn read_clock(lower: &str) -> Option<Time> {
    let (body, pm) = meridiem(lower);
    let mut fields = body.split(':');
    let mut hour = small(fields.next()?)?;
    let minute = small(fields.next()?)?;
    let (second, nanos) = match fields.next() {
        None => (0, 0),
        Some(field) => {
            let (whole, fraction) = field.split_once('.').unwrap_or((field, ""));
            if !fraction.is_empty() && !all_digits(fraction) {
                return None;
            }
            // Nanoseconds: the first nine digits, padded with zeros.
            let nanos = format!("{:0<9.9}", fraction).parse().ok()?;
            (small(whole)?, nanos)
        }
    };
    if fields.next().is_some() {
        return None;
    }
    if let Some(pm) = pm {
        hour = from_twelve(hour, pm)?;
    }
    // A leap second reads as the last second of its minute, as in RFC 3339 parsing.
    let second = if second == 60 { 59 } else { second };
    Time::new(hour, minute, second, nanos).ok()
}

/// An hour alone on a 12-hour clock: `11pm`, `3am`.
fn read_hour(lower: &str) -> Option<Time> {
    let (hour, Some(pm)) = meridiem(lower) else {
        return None;
    };
    Time::new(from_twelve(small(hour)?, pm)?, 0, 0, 0).ok()
}

/// An offset from UTC: `+01:00`, `+1:00`, `-0530`, `+01` or `+1`, at most 14 hours.
fn read_offset(word: &str) -> Option<Offset> {
    let (sign, body) = match (word.strip_prefix('+'), word.strip_prefix('-')) {
        (Some(body), _) => (1, body),
        (_, Some(body)) => (-1, body),
        _ => return None,
    };
    let (hours, minutes) = match body.split_once(':') {
        Some((h, m)) if m.len() == 2 => (h, m),
        Some(_) => return None,
        None if body.len() == 4 && all_digits(body) => body.split_at(2),
        None => (body, "0"),
    };
    let (hours, minutes) = (i32::from(small(hours)?), i32::from(small(minutes)?));
    let secs = hours * 3_600 + minutes * 60;
    if minutes >= 60 || secs > MAX_OFFSET_SECS {
        return None;
    }
    Offset::from_seconds(sign * secs).ok()
}

/// Serde support for durations written as human strings or as integer seconds.
pub(crate) mod serde_human {
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
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Secs(s) => Ok(Duration::from_secs(s)),
            Raw::Text(t) => parse_duration(&t).map_err(D::Error::custom),
        }
    }

    /// Writes the short human form.
    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
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
        assert_eq!(want, 1_420_066_799_000);
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
        assert_eq!(at("2014-12-31 23:59"), at("2014-12-31T23:59:00Z"));
        assert_eq!(at("31 Dec 2014 11pm"), at("2014-12-31T23:00:00Z"));
        assert_eq!(at("2014-12-31 11pm"), at("2014-12-31T23:00:00Z"));
        // The seed command line's form: `H` between date and time, `TZ` before the offset.
        assert_eq!(at("2014-12-31H23:59:59TZ+1:00"), want);
        assert_eq!(at("2014-12-31h23:59:59tz+01:00"), want);
        assert_eq!(at("2014-12-31H22:59:59"), want);
        assert_eq!(at("2014-12-31H23:59:59TZ-1:00"), want + 7_200_000);
    }

    #[test]
    fn every_spelling_of_one_time() {
        let want = at("2014-12-31T22:59:59Z");
        for text in [
            // RFC 3339 and ISO 8601.
            "2014-12-31T22:59:59Z",
            "2014-12-31t22:59:59z",
            "2014-12-31T22:59:59+00:00",
            "2014-12-31T22:59:59-00:00",
            "2014-12-31T23:59:59+01:00",
            "2014-12-31T23:59:59+0100",
            "2014-12-31T23:59:59+01",
            "2014-12-31T17:29:59-05:30",
            "2014-12-31 22:59:59Z",
            "2014-12-31 22:59:59",
            "2014-12-31T22:59:59",
            "2014-12-31T23:59:59+01:00[Europe/Paris]",
            // The offset apart from the time, or glued to a human one.
            "2014-12-31 23:59:59 +01:00",
            "2014-12-31 22:59:59 Z",
            "2014-12-31 22:59:59 GMT",
            "2014-12-31 22:59:59 utc",
            "2014-12-31 22:59:59UTC",
            "2014-12-31 22:59:59.000UTC",
            "2014-12-31 10:59:59pm",
            "2014-12-31 10:59:59PM +00:00",
            "2014-12-31T9:59:59pm-01:00",
            // One-digit hours in offsets.
            "2014-12-31T23:59:59+1:00",
            "2014-12-31 23:59:59 +1:00",
            "2014-12-31 23:59:59 +1",
            "2014-12-31 17:29:59 -5:30",
            "December 31st 2014 17:29:59-5:30",
            // Human dates, in any order, with ordinals, abbreviations and commas.
            "December 31st 2014 22:59:59",
            "december 31 2014 22:59:59",
            "Dec. 31, 2014, 22:59:59",
            "31 Dec 2014 22:59:59",
            "2014 Dec 31 22:59:59",
            "22:59:59 31 December 2014",
        ] {
            assert_eq!(parse_time(text), Ok(want), "{text}");
        }
        assert_eq!(at("Sept 3rd 2015"), at("2015-09-03"));
        assert_eq!(at("2014-1-5"), at("2014-01-05"));
    }

    #[test]
    fn clock_details() {
        let midnight = at("2015-01-01");
        assert_eq!(at("2015-01-01 12am"), midnight);
        assert_eq!(at("2015-01-01 12pm"), midnight + 12 * 3_600_000);
        assert_eq!(
            at("2015-01-01 9:30am"),
            midnight + 9 * 3_600_000 + 30 * 60_000
        );
        assert_eq!(at("2015-01-01 9:30"), at("2015-01-01T09:30:00Z"));
        // Fractions keep milliseconds and drop the rest: log lines carry microseconds.
        assert_eq!(at("2015-01-01T00:00:01.123456Z"), midnight + 1_123);
        assert_eq!(at("2015-01-01 00:00:01.9999999999"), midnight + 1_999);
        assert_eq!(at("2015-01-01 00:00:01.5"), midnight + 1_500);
        // A leap second is the last second of its minute.
        assert_eq!(at("2016-12-31T23:59:60Z"), at("2016-12-31T23:59:59Z"));
        assert_eq!(at("2016-12-31 23:59:60"), at("2016-12-31T23:59:59Z"));
        // Leap years, and the calendar's ends.
        assert_eq!(at("February 29th 2016"), at("2016-02-29"));
        assert_eq!(at("1970-01-01T00:00:00Z"), 0);
        assert_eq!(at("9999-12-31T23:59:59.999Z"), 253_402_300_799_999);
        // Offsets reach from -14:00 to +14:00.
        assert_eq!(at("2014-12-31T23:59:59+14:00"), at("2014-12-31T09:59:59Z"));
        assert_eq!(at("2014-12-31 23:59:59 -14:00"), at("2015-01-01T13:59:59Z"));
    }

    #[test]
    fn bad_times_say_why() {
        let why = |text: &str| parse_time(text).unwrap_err();
        assert!(why("").contains("empty"));
        assert!(why("  ").contains("empty"));
        assert!(why("February 30th 2015").contains("day 30 does not exist in February 2015"));
        assert!(why("2015-02-29").contains("day 29 does not exist in February 2015"));
        assert!(why("2015-13-01").contains("no month 13"));
        assert!(why("next tuesday").contains("cannot read `next`"));
        assert!(why("Wed, 31 Dec 2014").contains("cannot read `Wed`"));
        assert!(why("12:00").contains("needs a year"));
        assert!(why("2015-01-01 25:00").contains("`25:00` is not a time of day"));
        assert!(why("2015-01-01 13:00pm").contains("not a time of day"));
        assert!(why("2015-01-01 10:61").contains("not a time of day"));
        assert!(why("2015-01-01 10:00 +15:00").contains("`+15:00` is not an offset"));
        assert!(why("2015-01-01T10:00+15:00").contains("offset"));
        assert!(why("2015-01-01 10:00 +5:3").contains("`+5:3` is not an offset"));
        assert!(why("2015-01-01 10:00 +123").contains("not an offset"));
        assert!(why("2015-01-01T10:00[Europe/Paris]").contains("time zone names"));
        assert!(why("1969-12-31T23:59:59.999Z").contains("before 1970"));
        assert!(why("1970-01-01T00:30:00+01:00").contains("before 1970"));
        // Whatever is typed, the answer is an error, never a panic.
        assert!(why("é:1").contains("not a time of day"));
        assert!(why("2015-01-01 10:00é").contains("not a time of day"));
        assert!(why("+").contains("cannot read"));
        // The error suggests forms that work.
        assert!(why("soonish").contains("try 2014-12-31T23:59:59+01:00"));
    }

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(format_timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_timestamp(253_402_300_799_999),
            "9999-12-31T23:59:59.999Z"
        );
        assert_eq!(format_timestamp(u64::MAX), "9999-12-31T23:59:59.999Z");
        for ms in [0, 951_782_400_000, 1_795_400_729_123, 253_402_300_799_999] {
            assert_eq!(at(&format_timestamp(ms)), ms, "read back");
        }
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
