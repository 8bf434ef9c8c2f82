//! Script workers: executables in the workers folder, run without a shell.
//!
//! The worker name is the file stem (`email.py` is `email`) and must pass the name allowlist.
//! Paths are canonicalised when the folder is scanned, and a file whose real path leaves the
//! folder (a symlink pointing out) is refused. A run gets the arguments JSON on stdin, the
//! variables `BG_TASK_ID`, `BG_ATTEMPT`, `BG_WORKER`, `BG_NODE`, `BG_DIR` and only `PATH`, `HOME`
//! and `LANG` from the node's environment. Stdout is the result (JSON when it parses, else a
//! string), exit 0 is success, any other exit fails the attempt with the tail of stderr. The
//! script runs in its own process group, which is killed when the time limit passes, when the
//! run is abandoned, and when the script exits (so nothing it spawned outlives the task).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process_group};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::decide::times::format_duration;
use crate::model::names::validate_worker_name;
use crate::model::task::Outcome;
use tokio_util::sync::CancellationToken;

/// How long a cancelled attempt may take to stop before it is dropped (Rust) or killed (script).
pub(crate) const CANCEL_GRACE: Duration = Duration::from_secs(5);

/// How much of stderr is kept for the error message.
pub(crate) const STDERR_TAIL: usize = 2048;

/// What scanning the workers folder found.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    /// Runnable scripts by worker name, with canonical paths.
    pub found: BTreeMap<String, PathBuf>,
    /// Files that were not taken, with the reason (for the log).
    pub skipped: Vec<(PathBuf, String)>,
}

/// Scans `dir` for script workers.
pub(crate) fn scan_dir(dir: &Path) -> std::io::Result<Scan> {
    let root = dir.canonicalize()?;
    let mut scan = Scan::default();
    let mut seen: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for entry in std::fs::read_dir(&root)? {
        let path = entry?.path();
        let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
            scan.skipped
                .push((path.clone(), "file name is not UTF-8".into()));
            continue;
        };
        if file_name.starts_with('.') {
            continue;
        }
        let stem = file_name.split_once('.').map_or(file_name, |(s, _)| s);
        let real = match path.canonicalize() {
            Ok(real) => real,
            Err(e) => {
                scan.skipped
                    .push((path.clone(), format!("cannot resolve: {e}")));
                continue;
            }
        };
        if !real.starts_with(&root) {
            scan.skipped.push((
                path.clone(),
                format!("resolves outside the folder, to {}", real.display()),
            ));
            continue;
        }
        let meta = match std::fs::metadata(&real) {
            Ok(m) => m,
            Err(e) => {
                scan.skipped.push((path.clone(), e.to_string()));
                continue;
            }
        };
        if !meta.is_file() {
            continue;
        }
        if meta.permissions().mode() & 0o111 == 0 {
            // Data and documentation files may sit beside the workers; a script that lacks its
            // run bit is a mistake worth saying, with the fix.
            if looks_like_a_script(&path) {
                scan.skipped.push((
                    path.clone(),
                    format!(
                        "it is not executable (run `chmod +x {}` to offer it)",
                        path.display()
                    ),
                ));
            }
            continue;
        }
        if let Err(e) = validate_worker_name(stem) {
            scan.skipped.push((path.clone(), e.to_string()));
            continue;
        }
        seen.entry(stem.to_owned()).or_default().push(real);
    }
    for (name, mut paths) in seen {
        if paths.len() == 1 {
            scan.found.insert(name, paths.remove(0));
        } else {
            for p in paths {
                scan.skipped
                    .push((p, format!("more than one file is named `{name}`")));
            }
        }
    }
    Ok(scan)
}

/// One run of a script.
#[derive(Debug, Clone)]
pub(crate) struct ScriptRun<'a> {
    /// Canonical path of the executable.
    pub path: &'a Path,
    /// The workers folder (working directory and `BG_DIR`).
    pub dir: &'a Path,
    /// Task id.
    pub id: &'a str,
    /// Worker name.
    pub worker: &'a str,
    /// Attempt number.
    pub attempt: u32,
    /// Node id.
    pub node: &'a str,
    /// Arguments JSON, written to stdin.
    pub args: &'a str,
    /// Run-time limit.
    pub timeout: Duration,
    /// Largest stdout accepted, in bytes.
    pub output_limit: usize,
    /// Signalled when the task is cancelled: the group gets SIGTERM, then SIGKILL after
    /// [`CANCEL_GRACE`].
    pub cancel: &'a CancellationToken,
}

/// Kills the process group when dropped, unless disarmed: a run that is abandoned (its actor
/// killed, the node shutting down) takes its processes with it.
struct GroupGuard(Option<Pid>);

impl GroupGuard {
    fn kill(&mut self) {
        if let Some(pid) = self.0.take() {
            let _ = kill_process_group(pid, Signal::KILL);
        }
    }

    fn terminate(&self) {
        if let Some(pid) = self.0 {
            let _ = kill_process_group(pid, Signal::TERM);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs a script once and reports how it ended.
pub(crate) async fn run_script(run: ScriptRun<'_>) -> Outcome {
    let mut cmd = tokio::process::Command::new(run.path);
    cmd.env_clear();
    for var in ["PATH", "HOME", "LANG"] {
        if let Some(value) = std::env::var_os(var) {
            cmd.env(var, value);
        }
    }
    cmd.env("BG_TASK_ID", run.id)
        .env("BG_ATTEMPT", run.attempt.to_string())
        .env("BG_WORKER", run.worker)
        .env("BG_NODE", run.node)
        .env("BG_DIR", run.dir)
        .current_dir(run.dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => return Outcome::failed(format!("cannot start {}: {e}", run.path.display())),
    };
    let mut guard = GroupGuard(child.id().and_then(|id| Pid::from_raw(id as i32)));

    let stdin = child.stdin.take();
    let args = run.args.to_owned();
    let writer = tokio::spawn(async move {
        if let Some(mut stdin) = stdin {
            // A script that does not read its stdin closes the pipe: that is fine.
            let _ = stdin.write_all(args.as_bytes()).await;
            let _ = stdin.shutdown().await;
        }
    });
    // The readers keep what they read in shared buffers, so that what a script printed counts
    // even when something it started (a daemon that left our process group) keeps the pipes
    // open after it exited.
    let out_buf = Shared::default();
    let err_buf = Shared::default();
    let stdout = child
        .stdout
        .take()
        .map(|s| tokio::spawn(read_limited(s, run.output_limit, out_buf.clone())));
    let stderr = child
        .stderr
        .take()
        .map(|s| tokio::spawn(read_tail(s, STDERR_TAIL, err_buf.clone())));

    let waited = {
        let wait = tokio::time::timeout(run.timeout, child.wait());
        tokio::pin!(wait);
        tokio::select! {
            r = &mut wait => Some(r),
            () = run.cancel.cancelled() => {
                guard.terminate();
                match tokio::time::timeout(CANCEL_GRACE, &mut wait).await {
                    Ok(Ok(Ok(status))) if status.success() => Some(Ok(Ok(status))),
                    _ => None,
                }
            }
        }
    };
    // Whatever happened, nothing of this run may outlive it.
    guard.kill();
    writer.abort();
    let readers: Vec<_> = stdout.into_iter().chain(stderr).collect();
    let aborts: Vec<_> = readers.iter().map(|h| h.abort_handle()).collect();
    let _ = tokio::time::timeout(OUTPUT_GRACE, futures::future::join_all(readers)).await;
    for reader in aborts {
        reader.abort();
    }
    let out = std::mem::take(&mut *lock(&out_buf));
    let err = std::mem::take(&mut *lock(&err_buf)).bytes;
    let tail = stderr_tail(&err);
    let status = match waited {
        None => {
            let _ = child.wait().await;
            return Outcome::Cancelled;
        }
        Some(Err(_)) => {
            let _ = child.wait().await;
            return Outcome::failed(with_tail(
                format!(
                    "timed out after {}; process group killed",
                    format_duration(run.timeout)
                ),
                &tail,
            ));
        }
        Some(Ok(Err(e))) => return Outcome::failed(format!("waiting for the script failed: {e}")),
        Some(Ok(Ok(status))) => status,
    };
    if !status.success() {
        let how = match (
            status.code(),
            std::os::unix::process::ExitStatusExt::signal(&status),
        ) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            (None, None) => "ended abnormally".into(),
        };
        return Outcome::failed(with_tail(how, &tail));
    }
    if out.overflow {
        return Outcome::failed(format!(
            "stdout exceeded the {}-byte limit",
            run.output_limit
        ));
    }
    Outcome::Done(parse_output(&out.bytes))
}

/// Reads a script's stdout as the result: JSON when it parses, else the text, `null` when empty.
pub(crate) fn parse_output(bytes: &[u8]) -> Value {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim_end_matches(['\n', '\r']);
    if text.trim().is_empty() {
        return Value::Null;
    }
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

fn with_tail(message: String, tail: &str) -> String {
    if tail.is_empty() {
        message
    } else {
        format!("{message}: {tail}")
    }
}

fn stderr_tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    text.trim().to_owned()
}

#[derive(Debug, Default)]
struct Captured {
    bytes: Vec<u8>,
    overflow: bool,
}

/// What a reader has read so far, shared with the run that collects it.
type Shared = Arc<Mutex<Captured>>;

/// How long the output of a script that exited is still read: enough for the pipes to drain,
/// short enough that a daemon holding them open does not hold the result back.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Captured> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reads everything into `into`, keeping at most `limit` bytes (more sets `overflow`). Reading
/// on after the limit keeps a chatty script from blocking on a full pipe.
async fn read_limited(mut src: impl AsyncRead + Unpin, limit: usize, into: Shared) {
    let mut buf = [0u8; 8192];
    loop {
        match src.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let mut out = lock(&into);
                if out.bytes.len() + n > limit {
                    out.overflow = true;
                    let room = limit.saturating_sub(out.bytes.len());
                    out.bytes.extend_from_slice(&buf[..room]);
                } else {
                    out.bytes.extend_from_slice(&buf[..n]);
                }
            }
        }
    }
}

/// Reads everything into `into`, keeping the last `keep` bytes.
async fn read_tail(mut src: impl AsyncRead + Unpin, keep: usize, into: Shared) {
    let mut buf = [0u8; 8192];
    loop {
        match src.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let mut out = lock(&into);
                out.bytes.extend_from_slice(&buf[..n]);
                if out.bytes.len() > keep {
                    let cut = out.bytes.len() - keep;
                    out.bytes.drain(..cut);
                    out.overflow = true;
                }
            }
        }
    }
}

/// A file that is or may become a script worker: executable, or [`looks_like_a_script`].
pub(crate) fn may_be_a_script(path: &Path) -> bool {
    let executable =
        std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    executable || looks_like_a_script(path)
}

/// A file meant to be run: it starts with `#!`, or its extension names a scripting language.
fn looks_like_a_script(path: &Path) -> bool {
    const EXTENSIONS: [&str; 8] = ["sh", "bash", "py", "rb", "pl", "php", "js", "lua"];
    if path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
    {
        return true;
    }
    let mut head = [0u8; 2];
    std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
        .is_ok_and(|()| head == *b"#!")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn write_script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, body).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn run<'a>(path: &'a Path, dir: &'a Path, args: &'a str, timeout: Duration) -> ScriptRun<'a> {
        static NEVER: std::sync::LazyLock<CancellationToken> =
            std::sync::LazyLock::new(CancellationToken::new);
        ScriptRun {
            cancel: &NEVER,
            path,
            dir,
            id: "t1",
            worker: "w",
            attempt: 2,
            node: "n1",
            args,
            timeout,
            output_limit: 1 << 20,
        }
    }

    #[test]
    fn scan_takes_executables_and_refuses_the_rest() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let d = tmp.path();
        write_script(d, "email.sh", "#!/bin/sh\n");
        write_script(d, "resize", "#!/bin/sh\n");
        std::fs::write(d.join("README.md"), "docs").unwrap();
        std::fs::write(d.join("email.toml"), "concurrency = 2").unwrap();
        // Scripts without their run bit: by extension, and by `#!`.
        std::fs::write(d.join("report.py"), "print(1)").unwrap();
        std::fs::write(d.join("thumbs"), "#!/bin/sh\n").unwrap();
        write_script(d, "bad name.sh", "#!/bin/sh\n");
        write_script(d, "twin.sh", "#!/bin/sh\n");
        write_script(d, "twin.py", "#!/bin/sh\n");
        let evil = write_script(outside.path(), "evil.sh", "#!/bin/sh\n");
        symlink(&evil, d.join("escape.sh")).unwrap();
        let scan = scan_dir(d).unwrap();
        let names: Vec<&str> = scan.found.keys().map(String::as_str).collect();
        assert_eq!(names, ["email", "resize"]);
        let reasons: Vec<String> = scan.skipped.iter().map(|(_, r)| r.clone()).collect();
        assert!(
            reasons.iter().any(|r| r.contains("outside the folder")),
            "{reasons:?}"
        );
        let skipped: Vec<String> = scan
            .skipped
            .iter()
            .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert!(!skipped.contains(&"README.md".to_owned()), "{skipped:?}");
        assert!(!skipped.contains(&"email.toml".to_owned()), "{skipped:?}");
        for script in ["report.py", "thumbs"] {
            let (_, why) = scan
                .skipped
                .iter()
                .find(|(p, _)| p.ends_with(script))
                .unwrap_or_else(|| panic!("{script} not listed: {skipped:?}"));
            assert!(why.contains("chmod +x"), "{why}");
        }
        assert!(
            reasons.iter().any(|r| r.contains("more than one file")),
            "{reasons:?}"
        );
        assert!(
            reasons.iter().any(|r| r.contains("worker name")),
            "{reasons:?}"
        );
        assert!(scan.found["email"].is_absolute());
    }

    #[tokio::test]
    async fn runs_without_shell_with_args_and_minimal_env() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().canonicalize().unwrap();
        let p = write_script(
            &d,
            "env.sh",
            "#!/bin/sh\nread -r args\nprintf '{\"args\":%s,\"id\":\"%s\",\"attempt\":%s,\"node\":\"%s\",\"leak\":\"%s\"}' \"$args\" \"$BG_TASK_ID\" \"$BG_ATTEMPT\" \"$BG_NODE\" \"$CARGO_MANIFEST_DIR\"\n",
        );
        // Cargo sets this for the test process; the script must not inherit it.
        assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
        let out = run_script(run(&p, &d, r#"{"x":1}"#, Duration::from_secs(5))).await;
        let Outcome::Done(v) = out else {
            panic!("{out:?}")
        };
        assert_eq!(v["args"]["x"], 1);
        assert_eq!(v["id"], "t1");
        assert_eq!(v["attempt"], 2);
        assert_eq!(v["node"], "n1");
        assert_eq!(v["leak"], "");
    }

    #[tokio::test]
    async fn failure_carries_exit_code_and_stderr_tail() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().canonicalize().unwrap();
        let p = write_script(
            &d,
            "fail.sh",
            "#!/bin/sh\necho 'disk on fire' >&2\nexit 3\n",
        );
        let out = run_script(run(&p, &d, "{}", Duration::from_secs(5))).await;
        assert_eq!(out, Outcome::failed("exit code 3: disk on fire"));
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().canonicalize().unwrap();
        let marker = d.join("child.pid");
        let p = write_script(
            &d,
            "slow.sh",
            &format!(
                "#!/bin/sh\nsleep 30 &\necho $! > {}\nwait\n",
                marker.display()
            ),
        );
        let started = std::time::Instant::now();
        let out = run_script(run(&p, &d, "{}", Duration::from_millis(300))).await;
        assert!(started.elapsed() < Duration::from_secs(5));
        let Outcome::Failed { error: msg, .. } = out else {
            panic!("{out:?}")
        };
        assert!(msg.contains("timed out after 300ms"), "{msg}");
        let pid: i32 = std::fs::read_to_string(&marker)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The grandchild `sleep` was in the group: it must be gone (or a zombie being reaped).
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let gone = stat.is_empty() || stat.contains(") Z ");
            if gone {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "grandchild {pid} survived: {stat}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn output_forms_and_limits() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().canonicalize().unwrap();
        let text = write_script(&d, "text.sh", "#!/bin/sh\necho hello world\n");
        assert_eq!(
            run_script(run(&text, &d, "{}", Duration::from_secs(5))).await,
            Outcome::Done(Value::String("hello world".into()))
        );
        let big = write_script(&d, "big.sh", "#!/bin/sh\nhead -c 100000 /dev/zero\n");
        let mut r = run(&big, &d, "{}", Duration::from_secs(5));
        r.output_limit = 1000;
        let Outcome::Failed { error: msg, .. } = run_script(r).await else {
            panic!()
        };
        assert!(msg.contains("1000-byte limit"), "{msg}");
        let missing = d.join("missing.sh");
        let Outcome::Failed { error: msg, .. } =
            run_script(run(&missing, &d, "{}", Duration::from_secs(5))).await
        else {
            panic!()
        };
        assert!(msg.contains("cannot start"), "{msg}");
    }

    #[tokio::test]
    async fn cancellation_terminates_the_group() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().canonicalize().unwrap();
        let p = write_script(&d, "long.sh", "#!/bin/sh\nsleep 30\n");
        let token = CancellationToken::new();
        let mut r = run(&p, &d, "{}", Duration::from_secs(60));
        r.cancel = &token;
        let started = std::time::Instant::now();
        let canceller = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            canceller.cancel();
        });
        assert_eq!(run_script(r).await, Outcome::Cancelled);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "SIGTERM stopped it at once"
        );
    }

    #[test]
    fn output_parsing() {
        assert_eq!(parse_output(b"{\"a\":1}\n"), serde_json::json!({"a": 1}));
        assert_eq!(parse_output(b"42"), serde_json::json!(42));
        assert_eq!(parse_output(b"plain\n"), Value::String("plain".into()));
        assert_eq!(parse_output(b"\n"), Value::Null);
    }
}
