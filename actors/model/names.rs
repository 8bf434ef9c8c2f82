//! Worker names: the allowlist every name passes before it is looked up, logged or put in a key.
//!
//! A name is `^[A-Za-z0-9_-]{1,64}$`. Anything else (`../x`, `/bin/sh`, a NUL, 10,000 characters)
//! is refused with a message that says why, quoting at most a short, escaped prefix of the input
//! so that a hostile name cannot flood a log line or a terminal.

use std::fmt;

/// Longest worker name accepted.
pub(crate) const MAX_NAME_LEN: usize = 64;

/// Why a worker name was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameError {
    /// The name is empty.
    Empty,
    /// The name is longer than 64 bytes.
    TooLong(usize),
    /// The name holds a character outside `[A-Za-z0-9_-]`.
    BadChar {
        /// A short, escaped prefix of the name, safe to print.
        shown: String,
        /// The offending character.
        ch: char,
    },
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::Empty => write!(f, "worker name is empty"),
            NameError::TooLong(len) => write!(
                f,
                "worker name is {len} bytes long (at most {MAX_NAME_LEN}: letters, digits, `_` and `-`)"
            ),
            NameError::BadChar { shown, ch } => write!(
                f,
                "worker name \"{shown}\" contains {} (only letters, digits, `_` and `-` are allowed)",
                describe(*ch)
            ),
        }
    }
}

impl std::error::Error for NameError {}

fn describe(ch: char) -> String {
    match ch {
        '\0' => "a NUL byte".into(),
        '/' | '\\' => format!("a path separator `{ch}`"),
        '.' => "a dot `.`".into(),
        c if c.is_control() => format!("the control character {:?}", c),
        c => format!("the character {:?}", c),
    }
}

/// Checks a worker name against the allowlist.
pub(crate) fn validate_worker_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(name.len()));
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        Some(ch) => Err(NameError::BadChar {
            shown: shorten(name, 40),
            ch,
        }),
        None => Ok(()),
    }
}

/// An escaped prefix of `text`, at most `max` characters once escaped (then `…`), safe to print
/// in a log or an error.
pub(crate) fn shorten(text: &str, max: usize) -> String {
    let mut out = String::new();
    let mut len = 0;
    for ch in text.chars() {
        let escaped = ch.escape_debug();
        len += escaped.len();
        if len > max {
            out.push('…');
            return out;
        }
        out.extend(escaped);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_names() {
        for name in ["email", "resize_image", "a-b-c", "X9", &"a".repeat(64)] {
            assert_eq!(validate_worker_name(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn refuses_hostile_names_with_a_reason() {
        assert_eq!(validate_worker_name(""), Err(NameError::Empty));
        let long = "a".repeat(10_000);
        assert_eq!(validate_worker_name(&long), Err(NameError::TooLong(10_000)));
        let err = validate_worker_name("../x").unwrap_err().to_string();
        assert!(err.contains("a dot"), "{err}");
        let err = validate_worker_name("/bin/sh").unwrap_err().to_string();
        assert!(err.contains("path separator"), "{err}");
        let err = validate_worker_name("ab\0c").unwrap_err().to_string();
        assert!(err.contains("NUL"), "{err}");
        assert!(err.contains("ab\\0c"), "the name is shown escaped: {err}");
        assert!(validate_worker_name("rm -rf").is_err());
        assert!(validate_worker_name("émail").is_err());
        assert!(validate_worker_name("a$(id)").is_err());
    }

    #[test]
    fn shorten_caps_and_escapes() {
        let s = shorten(&"\u{1b}[31m".repeat(100), 10);
        assert!(s.ends_with('…'));
        assert!(!s.contains('\u{1b}'));
        assert!(s.chars().count() <= 11, "{s}");
        assert_eq!(shorten("short", 10), "short");
    }
}
