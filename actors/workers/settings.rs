//! Per-script settings: a `NAME.toml` beside the script `NAME` (or `NAME.sh`, `NAME.py`...)
//! sets that worker's concurrency, run-time limit, attempts and retry backoff, overriding
//! `[workers]` for it alone:
//!
//! ```toml
//! concurrency = 2        # tasks at once on each node (1..=10000)
//! timeout = "90s"        # run-time limit of one attempt
//! attempts = 5           # attempts per task (1..=1000)
//! backoff = "2s"         # first retry delay
//! backoff_cap = "5m"     # longest retry delay
//! ```
//!
//! Every key is optional; an unknown key or a bad value is an error that names the file and the
//! key, and the script is then not offered until the file is fixed (a worker running with
//! settings it was not meant to have could overload what it protects).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::Settings;
use crate::decide::times::parse_duration;
use crate::workers::rust::WorkerOptions;

/// Largest settings file read.
const MAX_BYTES: u64 = 64 << 10;

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    concurrency: Option<u32>,
    timeout: Option<String>,
    attempts: Option<u32>,
    backoff: Option<String>,
    backoff_cap: Option<String>,
}

/// The settings of one script worker; `None` is "as `[workers]` says".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ScriptSettings {
    /// Tasks at once on each node.
    pub(crate) concurrency: Option<u32>,
    /// Run-time limit of one attempt.
    pub(crate) timeout: Option<Duration>,
    /// Attempts per task.
    pub(crate) attempts: Option<u32>,
    /// First retry delay.
    pub(crate) backoff: Option<Duration>,
    /// Longest retry delay.
    pub(crate) backoff_cap: Option<Duration>,
}

impl ScriptSettings {
    /// As worker options, the backoff completed from `[workers]` when only one half is set (a
    /// cap below the base is raised to it).
    pub(crate) fn options(&self, settings: &Settings) -> WorkerOptions {
        let backoff = (self.backoff.is_some() || self.backoff_cap.is_some()).then(|| {
            let base = self.backoff.unwrap_or(settings.workers.backoff);
            let cap = self.backoff_cap.unwrap_or(settings.workers.backoff_cap);
            (base, cap.max(base))
        });
        WorkerOptions {
            concurrency: self.concurrency,
            timeout: self.timeout,
            attempts: self.attempts,
            backoff,
        }
    }
}

/// Where the settings of the script worker `name` in `dir` live.
pub(crate) fn path_of(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.toml"))
}

/// Reads the settings of the script worker `name` in `dir`: `None` without a settings file,
/// else its options (unset keys stay `None`, to be filled from `[workers]`), or an error that
/// names the file and the key.
pub(crate) fn read(dir: &Path, name: &str) -> Result<Option<ScriptSettings>, String> {
    let path = path_of(dir, name);
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    if meta.len() > MAX_BYTES {
        return Err(format!(
            "{}: {} bytes, more than a settings file may have ({MAX_BYTES})",
            path.display(),
            meta.len()
        ));
    }
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse(&text)
        .map(Some)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The settings a file's text gives.
fn parse(text: &str) -> Result<ScriptSettings, String> {
    let file: File = toml::from_str(text).map_err(|e| e.message().to_owned())?;
    let duration = |key: &str, value: &Option<String>| -> Result<Option<Duration>, String> {
        value
            .as_deref()
            .map(|v| parse_duration(v).map_err(|e| format!("`{key}`: {e}")))
            .transpose()
    };
    let mut options = ScriptSettings::default();
    if let Some(n) = file.concurrency {
        if !(1..=10_000).contains(&n) {
            return Err(format!("`concurrency`: {n} is outside 1..=10000"));
        }
        options.concurrency = Some(n);
    }
    if let Some(n) = file.attempts {
        if !(1..=1_000).contains(&n) {
            return Err(format!("`attempts`: {n} is outside 1..=1000"));
        }
        options.attempts = Some(n);
    }
    options.timeout = duration("timeout", &file.timeout)?;
    if options.timeout == Some(Duration::ZERO) {
        return Err("`timeout`: must be more than 0".into());
    }
    options.backoff = duration("backoff", &file.backoff)?;
    options.backoff_cap = duration("backoff_cap", &file.backoff_cap)?;
    if let (Some(base), Some(cap)) = (options.backoff, options.backoff_cap)
        && cap < base
    {
        return Err("`backoff_cap` is shorter than `backoff`".into());
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_read_and_each_is_optional() {
        let o = parse(
            "concurrency = 2\ntimeout = \"90s\"\nattempts = 5\nbackoff = \"2s\"\nbackoff_cap = \"5m\"\n",
        )
        .unwrap();
        assert_eq!(o.concurrency, Some(2));
        assert_eq!(o.timeout, Some(Duration::from_secs(90)));
        assert_eq!(o.attempts, Some(5));
        assert_eq!(o.backoff, Some(Duration::from_secs(2)));
        assert_eq!(o.backoff_cap, Some(Duration::from_secs(300)));
        let o = parse("timeout = \"1 minute\"").unwrap();
        assert_eq!(o.concurrency, None);
        assert_eq!(o.timeout, Some(Duration::from_secs(60)));
        assert_eq!((o.backoff, o.backoff_cap), (None, None));
        // Half a backoff is completed from [workers]; a cap below the base is raised to it.
        let mut settings = Settings::defaults();
        settings.workers.backoff = Duration::from_secs(1);
        settings.workers.backoff_cap = Duration::from_secs(10);
        let o = parse("backoff = \"30s\"").unwrap().options(&settings);
        assert_eq!(
            o.backoff,
            Some((Duration::from_secs(30), Duration::from_secs(30)))
        );
        let o = parse("backoff_cap = \"5s\"").unwrap().options(&settings);
        assert_eq!(
            o.backoff,
            Some((Duration::from_secs(1), Duration::from_secs(5)))
        );
        assert_eq!(parse("").unwrap().options(&settings).backoff, None);
    }

    #[test]
    fn bad_files_name_what_is_wrong() {
        for (text, want) in [
            ("concurency = 2", "unknown field `concurency`"),
            ("concurrency = 0", "`concurrency`: 0 is outside"),
            ("concurrency = \"two\"", "invalid type"),
            ("attempts = 0", "`attempts`: 0 is outside"),
            ("timeout = \"soon\"", "`timeout`:"),
            ("timeout = \"0s\"", "`timeout`: must be more than 0"),
            (
                "backoff = \"1m\"\nbackoff_cap = \"1s\"",
                "shorter than `backoff`",
            ),
            ("concurrency = 2\nconcurrency = 3", "duplicate key"),
            ("[x", "unclosed table"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn a_missing_file_is_no_settings_and_a_bad_one_names_its_path() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(dir.path(), "email").unwrap().is_none());
        std::fs::write(dir.path().join("email.toml"), "attempts = -1").unwrap();
        let e = read(dir.path(), "email").unwrap_err();
        assert!(e.contains("email.toml"), "{e}");
    }
}
