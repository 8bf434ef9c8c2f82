//! Shared test helpers: a real `redis-server` on a free port in a temporary folder, a real
//! PostgreSQL likewise (`postgres.rs`), real `bgnode` processes, polling under a deadline, and a
//! tiny HTTP client (`http.rs`). Everything started here is killed on drop.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};

/// Path of the `bgnode` binary under test.
pub fn bgnode_bin() -> &'static str {
    env!("CARGO_BIN_EXE_bgnode")
}

pub mod http;
mod postgres;
mod redis;

#[allow(unused_imports)]
pub use postgres::Postgres;
#[allow(unused_imports)]
pub use redis::{Events, Redis, TlsFiles, free_port};

impl Redis {
    /// Settings pointing at this server (defaults otherwise).
    pub fn settings(&self) -> background::Settings {
        let mut s = background::Settings::defaults();
        s.redis.url = self.url.clone();
        s.node.cookie = "test-cookie".into();
        s.node.listen = format!("127.0.0.1:{}", free_port());
        // Several nodes run in one test process: none serves HTTP unless a test asks.
        s.http.listen = String::new();
        s
    }

    /// The length of list `key`.
    pub async fn llen(&self, key: &str) -> u64 {
        let mut con = self.con().await;
        ::redis::cmd("LLEN")
            .arg(key)
            .query_async(&mut con)
            .await
            .expect("LLEN")
    }

    /// Rows waiting for the archive: in the cluster's outbox and in the own outboxes of
    /// `nodes` (key prefix `bg`).
    pub async fn archive_waiting(&self, nodes: &[&str]) -> u64 {
        let mut n = self.llen("bg:archive:outbox").await;
        for node in nodes {
            n += self.llen(&format!("bg:archive:outbox:{node}")).await;
        }
        n
    }
}

/// A `bgnode start` process; killed on drop. Its stderr goes to a log file.
pub struct NodeProc {
    pub id: String,
    /// The address of its HTTP API (a free port unless `BGNODE_HTTP__LISTEN` was given).
    pub http: String,
    child: Child,
    log: PathBuf,
    _logdir: tempfile::TempDir,
}

impl NodeProc {
    /// Starts `bgnode start` with id `id`, the script workers in `workers`, and `env`.
    pub fn start(redis: &Redis, id: &str, workers: &Path, env: &[(&str, &str)]) -> NodeProc {
        NodeProc::start_wrapped(&[], &redis.url, id, workers, env)
    }

    /// Starts `bgnode start` as [`NodeProc::start`] does, through the command `wrap` (which
    /// runs its arguments; empty: none), against the Redis at `redis_url`.
    pub fn start_wrapped(
        wrap: &[&str],
        redis_url: &str,
        id: &str,
        workers: &Path,
        env: &[(&str, &str)],
    ) -> NodeProc {
        let logdir = tempfile::tempdir().unwrap();
        let log = logdir.path().join(format!("{id}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let mut http = format!("127.0.0.1:{}", free_port());
        if let Some((_, v)) = env.iter().find(|(k, _)| *k == "BGNODE_HTTP__LISTEN") {
            http = (*v).to_owned();
        }
        let mut cmd = match wrap.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(bgnode_bin());
                cmd
            }
            None => Command::new(bgnode_bin()),
        };
        cmd.arg("start")
            .env_remove("BGNODE_CONFIG")
            .env("RUST_LOG", "info,background=debug")
            .env("BGNODE_REDIS__URL", redis_url)
            .env("BGNODE_NODE__ID", id)
            .env("BGNODE_NODE__LISTEN", format!("127.0.0.1:{}", free_port()))
            .env("BGNODE_NODE__COOKIE", "test-cookie")
            .env("BGNODE_WORKERS__DIR", workers)
            .env("BGNODE_HTTP__LISTEN", &http)
            .current_dir(logdir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn bgnode");
        NodeProc {
            id: id.to_owned(),
            http,
            child,
            log,
            _logdir: logdir,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The node's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`.
    pub async fn wait_log(&self, needle: &str, timeout: Duration) {
        let what = format!("node {} to log {needle:?}", self.id);
        eventually(timeout, &what, || async {
            self.log().contains(needle).then_some(())
        })
        .await;
    }

    /// Waits until the node holds the ingress lease and is subscribed.
    pub async fn ready(&self) {
        self.wait_log("subscribed", Duration::from_secs(15)).await;
    }

    /// Sends a signal to the process.
    pub fn signal(&self, sig: Signal) {
        if let Some(pid) = Pid::from_raw(self.child.id() as i32) {
            let _ = kill_process(pid, sig);
        }
    }

    /// The exit status, if it has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits for the process to exit, at most `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "node {} did not exit within {timeout:?}; log:\n{}",
                self.id,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts node `id` on `url` and waits for it to stop at start, as a node does when its
    /// Redis refuses it: within 10 s (not waited out as an unreachable Redis is), failed, with
    /// no panic. Returns its log.
    pub async fn refused_at_start(url: &str, id: &str, workers: &Path) -> String {
        let mut node = NodeProc::start_wrapped(&[], url, id, workers, &[]);
        let status = node.wait_exit(Duration::from_secs(10)).await;
        assert!(!status.success(), "node {id} exited with {status}");
        let log = node.log();
        assert!(!log.contains("panicked"), "{log}");
        log
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- log of node {} ----\n{}", self.id, self.log());
        }
    }
}

/// How long a test waits for a task to reach a state.
pub const WAIT: Duration = Duration::from_secs(20);

/// The `state` field of a task.
pub async fn state_of(redis: &Redis, id: &str) -> Option<String> {
    redis.task_field(id, "state").await
}

/// Waits until task `id` is in state `want`.
pub async fn wait_state(redis: &Redis, id: &str, want: &str) {
    eventually(WAIT, &format!("task {id} to be {want}"), || async {
        (state_of(redis, id).await.as_deref() == Some(want)).then_some(())
    })
    .await;
}

/// A Redis, the test workers folder and one ready node `n1` started with `env`.
pub async fn one_node(env: &[(&str, &str)]) -> (Redis, tempfile::TempDir, NodeProc) {
    let redis = Redis::start();
    let workers = test_workers();
    let node = NodeProc::start(&redis, "n1", workers.path(), env);
    node.ready().await;
    (redis, workers, node)
}

/// Polls `check` every 20 ms until it returns `Some`, at most `timeout`; panics naming `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes an executable script.
pub fn write_script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A script that appends `<task id> <node> <attempt> <unix ms>` to `runs.log` in the workers
/// folder, sleeps `{"s": N}` seconds when asked, then echoes its arguments: a record of every
/// execution kept outside the system's own bookkeeping.
pub const RECORD_SH: &str = concat!(
    "#!/bin/sh\nargs=$(cat)\n",
    "printf '%s %s %s %s\\n' \"$BG_TASK_ID\" \"$BG_NODE\" \"$BG_ATTEMPT\" \"$(date +%s%3N)\" >> \"$BG_DIR/runs.log\"\n",
    "s=$(printf '%s' \"$args\" | sed -n 's/.*\"s\"[[:space:]]*:[[:space:]]*\\([0-9.]*\\).*/\\1/p')\n",
    "if [ -n \"$s\" ]; then sleep \"$s\"; fi\n",
    "printf '%s' \"$args\"\n",
);

/// The executions recorded by [`RECORD_SH`]: (task id, node, attempt, unix ms).
pub fn runs(workers: &Path) -> Vec<(String, String, u32, u64)> {
    std::fs::read_to_string(workers.join("runs.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((
                it.next()?.to_owned(),
                it.next()?.to_owned(),
                it.next()?.parse().ok()?,
                it.next()?.parse().ok()?,
            ))
        })
        .collect()
}

/// A workers folder with scripts used across tests:
/// `echo` (returns its args), `fail` (stderr + exit 3), `nap` (sleeps {"s": N} then echoes),
/// `forever` (sleeps an hour, with a child process), `record` ([`RECORD_SH`]).
pub fn test_workers() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_script(d, "echo.sh", "#!/bin/sh\ncat\n");
    write_script(
        d,
        "fail.sh",
        "#!/bin/sh\necho 'the disk is on fire' >&2\nexit 3\n",
    );
    write_script(
        d,
        "nap.sh",
        "#!/bin/sh\nargs=$(cat)\ns=$(printf '%s' \"$args\" | sed -n 's/.*\"s\"[[:space:]]*:[[:space:]]*\\([0-9.]*\\).*/\\1/p')\nsleep \"${s:-1}\"\nprintf '%s' \"$args\"\n",
    );
    write_script(d, "forever.sh", "#!/bin/sh\nsleep 3600 &\nwait\n");
    write_script(d, "record.sh", RECORD_SH);
    dir
}

/// Runs the `bgnode` CLI with `args` against `redis`; returns (exit code, stdout, stderr).
pub async fn cli(redis: &Redis, args: &[&str]) -> (i32, String, String) {
    cli_env(redis, &[], args).await
}

/// Runs the `bgnode` CLI with extra environment variables.
pub async fn cli_env(redis: &Redis, env: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(bgnode_bin())
        .args(args)
        .env_remove("BGNODE_CONFIG")
        .env("BGNODE_REDIS__URL", &redis.url)
        .envs(env.iter().copied())
        .current_dir(std::env::temp_dir())
        .output()
        .await
        .expect("run bgnode");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A numeric field of a task's hash; panics when it has none.
pub async fn num_field(redis: &Redis, id: &str, field: &str) -> u64 {
    redis
        .task_field(id, field)
        .await
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("task {id} has no numeric `{field}`"))
}
