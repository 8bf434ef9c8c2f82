//! A real `redis-server` of the tests' own: a free port, a temporary folder, killed on drop.
//! Shared by the integration tests (through `tests/common`) and the library's own tests (as
//! `test_redis`), so it names nothing of the library.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
            .args(["--unixsocketperm", "700", "--unixsocket"])
            .arg(self.dir.path().join("redis.sock"))
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

    /// The URL of the server's Unix socket (reachable from another network namespace).
    pub fn socket_url(&self) -> String {
        format!(
            "redis+unix://{}",
            self.dir.path().join("redis.sock").display()
        )
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

    /// Sends `sig` to the server (SIGSTOP and SIGCONT make it hang and resume).
    pub fn signal(&self, sig: rustix::process::Signal) {
        if let Some(pid) = self
            .child
            .as_ref()
            .and_then(|c| rustix::process::Pid::from_raw(c.id() as i32))
        {
            let _ = rustix::process::kill_process(pid, sig);
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
