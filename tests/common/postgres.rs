//! A real PostgreSQL server of the tests' own: `initdb` into a temporary folder, `postgres` on a
//! free port with its socket in that folder, killed on drop. Names nothing of the library, and
//! needs nothing else of `tests/common`, so the library's own tests could load it as they load
//! `redis.rs`.
//!
//! PostgreSQL refuses to run as root: a test run as root runs `initdb` and `postgres` as the
//! `postgres` system user, which owns the folder.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};

/// How long a start (initdb aside) or a stop may take.
const DEADLINE: Duration = Duration::from_secs(30);

/// What the server logs each time it is ready (in English: the cluster's locale is C).
const READY: &str = "database system is ready to accept connections";

/// A `postgres` of our own; trusts every local connection as the superuser `postgres`.
pub struct Postgres {
    pub port: u16,
    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub url: String,
    server: PathBuf,
    /// The uid and gid the server runs as, when the tests run as root.
    owner: Option<(u32, u32)>,
    dir: tempfile::TempDir,
    /// Server settings of every start beyond the defaults (`-c` values: TLS).
    options: Vec<String>,
    child: Option<Child>,
}

impl Postgres {
    /// Makes a database cluster in a temporary folder and starts a server on a free port;
    /// panics with the tools' output when it cannot.
    pub fn start() -> Postgres {
        Postgres::init().launch()
    }

    /// [`Postgres::start`] with TLS on (`ssl=on`) with the PEM certificate `cert` and its key
    /// `key` (copied into the server's folder, the key owned by the server's user with mode
    /// 0600 as PostgreSQL demands). Clients may still connect without TLS.
    pub fn start_tls(cert: &Path, key: &Path) -> Postgres {
        use std::os::unix::fs::PermissionsExt;
        let mut pg = Postgres::init();
        let (cert_copy, key_copy) = (
            pg.dir.path().join("server.crt"),
            pg.dir.path().join("server.key"),
        );
        std::fs::copy(cert, &cert_copy).expect("copy the server certificate");
        std::fs::copy(key, &key_copy).expect("copy the server key");
        for file in [&cert_copy, &key_copy] {
            if let Some((uid, gid)) = pg.owner {
                std::os::unix::fs::chown(file, Some(uid), Some(gid)).expect("chown a TLS file");
            }
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))
                .expect("chmod a TLS file");
        }
        pg.options = vec![
            "ssl=on".into(),
            format!("ssl_cert_file={}", cert_copy.display()),
            format!("ssl_key_file={}", key_copy.display()),
        ];
        pg.launch()
    }

    /// `initdb` into a new temporary folder; nothing runs yet.
    fn init() -> Postgres {
        let (initdb, server) = binaries();
        let owner = owner();
        let dir = tempfile::tempdir().expect("tempdir");
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown the folder");
        }
        let mut cmd = Command::new(&initdb);
        cmd.arg("-D")
            .arg(dir.path().join("data"))
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8"])
            .args(["--locale=C", "--no-sync"]);
        as_owner(&mut cmd, owner, dir.path());
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", initdb.display()));
        assert!(
            out.status.success(),
            "initdb failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Postgres {
            port: 0,
            url: String::new(),
            server,
            owner,
            dir,
            options: Vec::new(),
            child: None,
        }
    }

    /// Starts the server of [`Postgres::init`] on a free port.
    fn launch(mut self) -> Postgres {
        // Another process may take the free port before the server binds it: try another.
        for _ in 0..10 {
            self.port = free_port();
            self.url = format!("postgres://postgres@127.0.0.1:{}/postgres", self.port);
            if self.spawn(Instant::now() + DEADLINE) {
                return self;
            }
        }
        panic!("could not start postgres; its log:\n{}", self.log());
    }

    /// Starts the server process and waits until it accepts connections; false (the process
    /// reaped) when it exits first or `deadline` passes.
    fn spawn(&mut self, deadline: Instant) -> bool {
        let readies = self.readies();
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open the server log");
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(self.log_path(), Some(uid), Some(gid)).expect("chown the log");
        }
        let mut cmd = Command::new(&self.server);
        cmd.arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .args(["-c", "synchronous_commit=off", "-c", "full_page_writes=off"])
            .args(self.options.iter().flat_map(|o| ["-c", o.as_str()]))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        as_owner(&mut cmd, self.owner, self.dir.path());
        self.child = Some(cmd.spawn().expect("spawn postgres"));
        while Instant::now() < deadline {
            if !self.running() {
                self.kill();
                return false;
            }
            if self.readies() > readies && TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        false
    }

    /// The server's log (every start appends to it).
    /// The server's (postmaster's) process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// How often the log says the server is ready.
    fn readies(&self) -> usize {
        self.log().matches(READY).count()
    }

    /// Whether the server process runs.
    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_wait().ok().flatten().is_none(),
            None => false,
        }
    }

    /// Stops the server the fast way (SIGINT: sessions are ended, the data is kept) and waits
    /// until it has exited: an outage.
    pub fn stop(&mut self) {
        self.signal(Signal::INT);
        let deadline = Instant::now() + DEADLINE;
        while self.running() {
            assert!(
                Instant::now() < deadline,
                "postgres did not stop within {DEADLINE:?}; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = None;
    }

    /// Starts the server again on the same port with the same data, and waits until it is
    /// ready. After [`Postgres::kill`] the old server's processes may hold on a moment longer:
    /// the start is tried again until the deadline.
    pub fn start_again(&mut self) {
        assert!(
            !self.running(),
            "postgres is running: stop or kill it first"
        );
        let deadline = Instant::now() + DEADLINE;
        while Instant::now() < deadline {
            if self.spawn(deadline) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("postgres did not start again; its log:\n{}", self.log());
    }

    /// Kills the server at once (SIGKILL): a crash, after which it recovers on the next start.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `sig` to the server's main process.
    pub fn signal(&self, sig: Signal) {
        if let Some(pid) = self
            .child
            .as_ref()
            .and_then(|c| Pid::from_raw(c.id() as i32))
        {
            let _ = kill_process(pid, sig);
        }
    }

    /// The URL of database `db` of this server (`url` is that of `postgres`).
    pub fn url_of(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// A new connection, its driver spawned on the current runtime.
    pub async fn client(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        self.client_in("postgres").await
    }

    /// A new connection to database `db`, its driver spawned on the current runtime.
    pub async fn client_in(
        &self,
        db: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) =
            tokio_postgres::connect(&self.url_of(db), tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        Ok(client)
    }

    /// The rows `sql` returns, each value as text (None for NULL), on a fresh connection.
    pub async fn query_async(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        self.query_in_async("postgres", sql).await
    }

    /// [`Postgres::query_async`] in database `db`.
    pub async fn query_in_async(&self, db: &str, sql: &str) -> Vec<Vec<Option<String>>> {
        let client = self
            .client_in(db)
            .await
            .expect("connect to the test postgres");
        let messages = client
            .simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        messages
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                    (0..row.len())
                        .map(|i| row.get(i).map(str::to_owned))
                        .collect(),
                ),
                _ => None,
            })
            .collect()
    }

    /// Runs the statements in `sql` on a fresh connection.
    pub async fn execute_async(&self, sql: &str) {
        self.execute_in_async("postgres", sql).await;
    }

    /// [`Postgres::execute_async`] in database `db`.
    pub async fn execute_in_async(&self, db: &str, sql: &str) {
        let client = self
            .client_in(db)
            .await
            .expect("connect to the test postgres");
        client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// [`Postgres::query_async`] for any test, async or not: it runs on a thread of its own.
    pub fn query(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        blocking(self.query_async(sql))
    }

    /// [`Postgres::query_in_async`] for any test, async or not.
    pub fn query_in(&self, db: &str, sql: &str) -> Vec<Vec<Option<String>>> {
        blocking(self.query_in_async(db, sql))
    }

    /// [`Postgres::execute_async`] for any test, async or not.
    pub fn execute(&self, sql: &str) {
        blocking(self.execute_async(sql));
    }

    /// [`Postgres::execute_in_async`] for any test, async or not.
    pub fn execute_in(&self, db: &str, sql: &str) {
        blocking(self.execute_in_async(db, sql));
    }
}

impl Drop for Postgres {
    /// An immediate shutdown (SIGQUIT), so that no server process writes in the folder while it
    /// is removed; SIGKILL if it lingers.
    fn drop(&mut self) {
        self.signal(Signal::QUIT);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }
}

/// Runs `future` to its end on a current-thread runtime in a thread of its own, so that a test
/// already inside a runtime can call it too.
fn blocking<T: Send>(future: impl std::future::Future<Output = T> + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime")
                .block_on(future)
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// A free TCP port on loopback.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

/// `initdb` and `postgres`: on the PATH, else in the newest `/usr/lib/postgresql/VERSION/bin`
/// (where Debian puts them).
fn binaries() -> (PathBuf, PathBuf) {
    let on_path = |name: &str| {
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    };
    if let (Some(initdb), Some(server)) = (on_path("initdb"), on_path("postgres")) {
        return (initdb, server);
    }
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version: Vec<u32> = e
                .file_name()
                .to_str()?
                .split('.')
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("postgres").is_file())
                .then_some((version, bin))
        })
        .max();
    match newest {
        Some((_, bin)) => (bin.join("initdb"), bin.join("postgres")),
        None => panic!(
            "PostgreSQL's initdb and postgres are neither on the PATH nor under \
             /usr/lib/postgresql/VERSION/bin: install postgresql (./dev test does it)"
        ),
    }
}

/// The uid and gid of the `postgres` system user when the tests run as root (PostgreSQL
/// refuses root); None otherwise.
fn owner() -> Option<(u32, u32)> {
    if !rustix::process::getuid().is_root() {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let found = passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        match fields[..] {
            ["postgres", _, uid, gid, ..] => Some((uid.parse().ok()?, gid.parse().ok()?)),
            _ => None,
        }
    });
    Some(found.expect(
        "the tests run as root, which PostgreSQL refuses, and there is no `postgres` user in \
         /etc/passwd to run it as: install postgresql (./dev test does it), or run as another user",
    ))
}

/// Runs `cmd` in `dir`, as `owner` when there is one.
fn as_owner(cmd: &mut Command, owner: Option<(u32, u32)>, dir: &Path) {
    cmd.current_dir(dir);
    if let Some((uid, gid)) = owner {
        cmd.uid(uid).gid(gid);
    }
}
