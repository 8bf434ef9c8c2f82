//! Shared test helpers: a real `redis-server` on a free port in a temporary folder, real `bgnode`
//! processes, and polling under a deadline. Everything started here is killed on drop.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};

/// Path of the `bgnode` binary under test.
pub fn bgnode_bin() -> &'static str {
    env!("CARGO_BIN_EXE_bgnode")
}

/// A free TCP port on loopback (the OS picks it; a start that races for it is retried).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

/// A `redis-server` of our own, with an append-only file so a restart keeps the data.
pub struct Redis {
    pub port: u16,
    pub url: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Redis {
    /// Starts a server on a free port; panics with the server log when it cannot.
    pub fn start() -> Redis {
        for _ in 0..10 {
            let port = free_port();
            let mut redis = Redis {
                port,
                url: format!("redis://127.0.0.1:{port}"),
                dir: tempfile::tempdir().expect("tempdir"),
                child: None,
            };
            if redis.spawn() {
                return redis;
            }
        }
        panic!("could not start redis-server (is it installed? apt-get install -y redis-server)");
    }

    fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
            ])
            .arg(self.dir.path())
            .args(["--logfile", "redis.log"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install -y redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                eprintln!("redis-server exited at start ({status}): {}", self.log());
                self.child = None;
                return false;
            }
            if self.ping() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        false
    }

    fn ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        if s.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 16];
        matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
    }

    /// Settings pointing at this server (defaults otherwise).
    pub fn settings(&self) -> background::Settings {
        let mut s = background::Settings::defaults();
        s.redis.url = self.url.clone();
        s.node.cookie = "test-cookie".into();
        s.node.listen = format!("127.0.0.1:{}", free_port());
        s
    }

    /// The server log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// Kills the server at once (SIGKILL): an outage.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port with the same data.
    pub fn restart(&mut self) {
        self.kill();
        assert!(
            self.spawn(),
            "redis-server did not come back: {}",
            self.log()
        );
    }

    /// A multiplexed async connection.
    pub async fn con(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("connect to test redis")
    }

    /// Publishes `msg` on `channel`; returns the number of receivers.
    pub async fn publish(&self, channel: &str, msg: impl redis::ToRedisArgs) -> i64 {
        let mut con = self.con().await;
        redis::cmd("PUBLISH")
            .arg(channel)
            .arg(msg)
            .query_async(&mut con)
            .await
            .unwrap()
    }

    /// A field of a task's hash.
    pub async fn task_field(&self, id: &str, field: &str) -> Option<String> {
        let mut con = self.con().await;
        redis::cmd("HGET")
            .arg(format!("bg:task:{id}"))
            .arg(field)
            .query_async(&mut con)
            .await
            .unwrap()
    }

    /// Subscribes to the events channel and collects every event in the background.
    pub async fn events(&self) -> Events {
        let client = redis::Client::open(self.url.as_str()).unwrap();
        let mut pubsub = client.get_async_pubsub().await.unwrap();
        pubsub.subscribe("background:events").await.unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = seen.clone();
        let task = tokio::spawn(async move {
            use futures::StreamExt;
            let mut stream = pubsub.into_on_message();
            while let Some(msg) = stream.next().await {
                let text: String = msg.get_payload().unwrap_or_default();
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                    sink.lock().unwrap().push(v);
                }
            }
        });
        Events { seen, task }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Events seen on the events channel.
pub struct Events {
    seen: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Events {
    /// Every event so far.
    pub fn all(&self) -> Vec<serde_json::Value> {
        self.seen.lock().unwrap().clone()
    }

    /// Events of one kind.
    pub fn of(&self, kind: &str) -> Vec<serde_json::Value> {
        self.all()
            .into_iter()
            .filter(|e| e["event"] == kind)
            .collect()
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A `bgnode start` process; killed on drop. Its stderr goes to a log file.
pub struct NodeProc {
    pub id: String,
    child: Child,
    log: PathBuf,
    _logdir: tempfile::TempDir,
}

impl NodeProc {
    /// Starts `bgnode start` with id `id`, the script workers in `workers`, and `env`.
    pub fn start(redis: &Redis, id: &str, workers: &Path, env: &[(&str, &str)]) -> NodeProc {
        let logdir = tempfile::tempdir().unwrap();
        let log = logdir.path().join(format!("{id}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(bgnode_bin());
        cmd.arg("start")
            .env_remove("BGNODE_CONFIG")
            .env("RUST_LOG", "info,background=debug")
            .env("BGNODE_REDIS__URL", &redis.url)
            .env("BGNODE_NODE__ID", id)
            .env("BGNODE_NODE__LISTEN", format!("127.0.0.1:{}", free_port()))
            .env("BGNODE_NODE__COOKIE", "test-cookie")
            .env("BGNODE_WORKERS__DIR", workers)
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
            child,
            log,
            _logdir: logdir,
        }
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
