//! A real `redis-server` of the tests' own: a free port, a temporary folder, killed on drop.
//! Shared by the integration tests (through `tests/common`) and the library's own tests (as
//! `test_redis`), so it names nothing of the library.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
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
    /// The certificates of a server started with [`Redis::start_tls`].
    pub tls: Option<TlsFiles>,
    dir: tempfile::TempDir,
    /// The folder of `tls`'s files.
    certs: Option<tempfile::TempDir>,
    child: Option<Child>,
}

/// PEM files made with the `openssl` command line for a TLS server: a CA, a server certificate
/// for 127.0.0.1 and localhost, and a client certificate, all signed by the CA.
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// The server asks every client for a certificate signed by the CA.
    pub clients_must_show_cert: bool,
}

impl TlsFiles {
    /// Makes the CA and certificates in `dir`; panics with openssl's output when it fails.
    pub fn make(dir: &Path, clients_must_show_cert: bool) -> TlsFiles {
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("the openssl command must be installed");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=bgnode test CA"];
        ca.extend(ec);
        ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
        openssl(&ca);
        for (name, cn, ext) in [
            (
                "server",
                "localhost",
                "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
            ),
            (
                "client",
                "bgnode test client",
                "extendedKeyUsage=clientAuth\n",
            ),
        ] {
            let ext_file = format!("{name}.ext");
            std::fs::write(
                dir.join(&ext_file),
                format!("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n{ext}"),
            )
            .unwrap();
            let (key, csr, pem) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.pem"),
            );
            let subj = format!("/CN={cn}");
            let mut req = vec!["req", "-subj", &subj];
            req.extend(ec);
            req.extend(["-keyout", &key, "-out", &csr]);
            openssl(&req);
            openssl(&[
                "x509",
                "-req",
                "-days",
                "2",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-extfile",
                &ext_file,
                "-out",
                &pem,
            ]);
        }
        TlsFiles {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
            clients_must_show_cert,
        }
    }

    /// The CA and, when the server asks for one, the client certificate, as the redis crate
    /// takes them.
    pub fn certificates(&self) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: self.clients_must_show_cert.then(|| redis::ClientTlsConfig {
                client_cert: std::fs::read(&self.client_cert).unwrap(),
                client_key: std::fs::read(&self.client_key).unwrap(),
            }),
            root_cert: Some(std::fs::read(&self.ca).unwrap()),
        }
    }

    /// `BGNODE_REDIS__TLS_*` variables for a node or the CLI: the CA, and the client
    /// certificate when the server asks for one.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![("BGNODE_REDIS__TLS_CA", self.ca.display().to_string())];
        if self.clients_must_show_cert {
            env.push((
                "BGNODE_REDIS__TLS_CERT",
                self.client_cert.display().to_string(),
            ));
            env.push((
                "BGNODE_REDIS__TLS_KEY",
                self.client_key.display().to_string(),
            ));
        }
        env
    }
}

impl Redis {
    /// Starts a server on a free port; panics with the server log when it cannot.
    pub fn start() -> Redis {
        Redis::start_with(None)
    }

    /// Starts a server that speaks TLS only (`rediss://`), with certificates made for it; with
    /// `clients_must_show_cert`, it refuses clients without a certificate signed by its CA.
    pub fn start_tls(clients_must_show_cert: bool) -> Redis {
        let certs = tempfile::tempdir().expect("tempdir");
        let files = TlsFiles::make(certs.path(), clients_must_show_cert);
        let mut redis = Redis::start_with(Some(files));
        redis.certs = Some(certs);
        redis
    }

    fn start_with(tls: Option<TlsFiles>) -> Redis {
        let mut tls = tls;
        for _ in 0..10 {
            let port = free_port();
            let scheme = if tls.is_some() { "rediss" } else { "redis" };
            let mut redis = Redis {
                port,
                url: format!("{scheme}://127.0.0.1:{port}"),
                tls: tls.take(),
                dir: tempfile::tempdir().expect("tempdir"),
                certs: None,
                child: None,
            };
            if redis.spawn() {
                return redis;
            }
            tls = redis.tls.take();
        }
        panic!("could not start redis-server (is it installed? apt-get install -y redis-server)");
    }

    fn spawn(&mut self) -> bool {
        let readies = self.readies();
        let mut cmd = Command::new("redis-server");
        match &self.tls {
            None => cmd.args(["--port", &self.port.to_string()]),
            Some(tls) => cmd
                .args(["--port", "0", "--tls-port", &self.port.to_string()])
                .arg("--tls-cert-file")
                .arg(&tls.server_cert)
                .arg("--tls-key-file")
                .arg(&tls.server_key)
                .arg("--tls-ca-cert-file")
                .arg(&tls.ca)
                .args([
                    "--tls-auth-clients",
                    if tls.clients_must_show_cert {
                        "yes"
                    } else {
                        "no"
                    },
                ]),
        };
        let child = cmd
            .args([
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
            if self.ping(readies) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        false
    }

    /// How often the server log says the server is ready (a restart appends to it).
    fn readies(&self) -> usize {
        self.log().matches("Ready to accept connections").count()
    }

    /// True when the server answers; `readies` is [`Redis::readies`] before it was started.
    fn ping(&self, readies: usize) -> bool {
        use std::io::{Read, Write};
        if self.tls.is_some() {
            // A plain PING cannot cross TLS: the server says when it listens.
            return self.readies() > readies;
        }
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

    /// A client of this server (with the CA and client certificate of a TLS server).
    pub fn client(&self) -> redis::Client {
        match &self.tls {
            None => redis::Client::open(self.url.as_str()).unwrap(),
            Some(tls) => {
                redis::Client::build_with_tls(self.url.as_str(), tls.certificates()).unwrap()
            }
        }
    }

    /// A multiplexed async connection.
    pub async fn con(&self) -> redis::aio::MultiplexedConnection {
        self.client()
            .get_multiplexed_async_connection()
            .await
            .expect("connect to test redis")
    }

    /// The URL of a user made now (`caller`, password `s3cret`) who may run every command but
    /// `FUNCTION`: a server that refuses to load the scripts' library, as one older than 7.0
    /// (which has no functions) does.
    pub async fn url_of_user_without_functions(&self) -> String {
        let mut con = self.con().await;
        redis::cmd("ACL")
            .arg("SETUSER")
            .arg("caller")
            .arg("on")
            .arg(">s3cret")
            .arg("~*")
            .arg("&*")
            .arg("+@all")
            .arg("-function")
            .query_async::<()>(&mut con)
            .await
            .expect("ACL SETUSER");
        format!("redis://caller:s3cret@127.0.0.1:{}", self.port)
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
        let mut pubsub = self.client().get_async_pubsub().await.unwrap();
        pubsub.subscribe("background:events").await.unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = seen.clone();
        let task = tokio::spawn(async move {
            use futures::StreamExt;
            let mut stream = pubsub.into_on_message();
            while let Some(msg) = stream.next().await {
                let text: String = msg.get_payload().unwrap_or_default();
                // A message is one event, or several as an array (see PROTOCOL.md).
                match serde_json::from_str::<serde_json::Value>(&text) {
                    Ok(serde_json::Value::Array(events)) => sink.lock().unwrap().extend(events),
                    Ok(v) => sink.lock().unwrap().push(v),
                    Err(_) => {}
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
