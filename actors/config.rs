//! Configuration: `cluster.toml` < environment < command-line flags, read with the `config` crate.
//!
//! The annotated `cluster.toml` at the project root is built into the binary and is the single
//! list of keys and defaults. Every source is checked against it before merging, so an unknown
//! key (`workers.concurency`, `BGNODE_REDIS_URL` with one underscore) stops the node with a
//! message naming the key, where it came from, and the nearest known key. Values are then checked
//! for meaning (a zero concurrency, an address that does not parse) with the same kind of message.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use config::{Config, Environment, File, FileFormat, Source, Value, ValueKind};
use serde::{Deserialize, Serialize};

use crate::decide::cron::Missed;
use crate::decide::times::serde_human;

/// The annotated defaults, exactly as shipped in `cluster.toml`.
pub const DEFAULTS_TOML: &str = include_str!("../cluster.toml");

/// Prefix of the environment variables that set keys: `BGNODE_<SECTION>__<KEY>`.
pub const ENV_PREFIX: &str = "BGNODE_";

/// The environment variable naming a configuration file (the same as `--config FILE`).
pub const ENV_CONFIG_FILE: &str = "BGNODE_CONFIG";

/// Every setting of a node and of the client commands.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `[node]`: identity and cluster link.
    pub node: NodeSettings,
    /// `[redis]`: store and channels.
    pub redis: RedisSettings,
    /// `[workers]`: script folder, concurrency, timeouts.
    pub workers: WorkerSettings,
    /// `[scheduler]`: delayed and recurring tasks.
    pub scheduler: SchedulerSettings,
    /// `[keys]`: per-key limits.
    pub keys: KeySettings,
    /// `[tasks]`: what happens to tasks no live node can run.
    pub tasks: TaskSettings,
    /// `[saver]`: durable writes.
    pub saver: SaverSettings,
    /// `[limits]`: input sizes.
    pub limits: LimitSettings,
    /// `[http]`: the JSON API.
    pub http: HttpSettings,
    /// `[socket]`: the plain TCP and UDP socket service.
    pub socket: SocketSettings,
}

/// `[node]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSettings {
    /// Node id; empty means the host name.
    pub id: String,
    /// Cluster listener address.
    pub listen: String,
    /// Address peers use to reach this node; empty: `listen`.
    pub advertise: String,
    /// Seed nodes, `host:port`.
    pub seeds: Vec<String>,
    /// Cluster secret.
    pub cookie: String,
    /// Grace period for running tasks on shutdown.
    #[serde(with = "serde_human")]
    pub shutdown_timeout: Duration,
    /// Liveness lease time to live.
    #[serde(with = "serde_human")]
    pub lease_ttl: Duration,
    /// TLS certificate chain (PEM); empty: no TLS.
    pub tls_cert: PathBuf,
    /// TLS private key (PEM).
    pub tls_key: PathBuf,
    /// CA certificates (PEM) that peers' certificates must chain to.
    pub tls_ca: PathBuf,
}

/// `[redis]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    /// Redis URL.
    pub url: String,
    /// Task channel.
    pub channel: String,
    /// Events channel.
    pub events: String,
    /// Which events are published: every transition, or only the final ones.
    pub event_level: EventLevel,
    /// Key prefix.
    pub prefix: String,
    /// CA certificates (PEM) a `rediss://` server's certificate must chain to; empty: the
    /// system's trusted roots.
    pub tls_ca: PathBuf,
    /// Client certificate chain (PEM) shown to a `rediss://` server; empty: none.
    pub tls_cert: PathBuf,
    /// The client certificate's private key (PEM).
    pub tls_key: PathBuf,
}

/// `[workers]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    /// Script worker folder.
    pub dir: PathBuf,
    /// Concurrent tasks per worker type on this node.
    pub concurrency: u32,
    /// Default run-time limit of one attempt.
    #[serde(with = "serde_human")]
    pub timeout: Duration,
    /// Node-local queue length per worker type (0: automatic).
    pub queue: u32,
    /// Default attempts per task.
    pub attempts: u32,
    /// Default backoff of the first retry.
    #[serde(with = "serde_human")]
    pub backoff: Duration,
    /// Default longest backoff.
    #[serde(with = "serde_human")]
    pub backoff_cap: Duration,
    /// Pick up changes in the folder as they happen.
    pub watch: bool,
}

/// `[scheduler]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerSettings {
    /// What to do with occurrences missed during an outage.
    pub missed: Missed,
}

/// `[tasks]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSettings {
    /// A waiting task that no live node has been able to run for this long (its worker offered
    /// by none, or its target node not live) ends `expired`; zero: it waits for ever.
    #[serde(with = "serde_human")]
    pub unrunnable_after: Duration,
}

/// `[keys]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySettings {
    /// Tasks per key pending or running at once.
    pub limit: u32,
    /// What happens over the limit.
    pub policy: KeyPolicy,
}

/// Which events the cluster publishes on its events channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventLevel {
    /// Every transition: `available`, `started`, attempts' errors, retries and the final ones.
    All,
    /// All but `available` and `started`, the two every task passes through: a task costs two
    /// messages less (the final events, retries, errors and refusals are still published).
    Final,
}

impl EventLevel {
    /// The configured spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            EventLevel::All => "all",
            EventLevel::Final => "final",
        }
    }
}

/// What happens to a task whose key is at its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyPolicy {
    /// Refuse it with an error.
    Reject,
    /// Store it and run it when a slot frees.
    Defer,
}

impl KeyPolicy {
    /// The configured spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyPolicy::Reject => "reject",
            KeyPolicy::Defer => "defer",
        }
    }
}

/// `[saver]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaverSettings {
    /// How long finished tasks are kept.
    #[serde(with = "serde_human")]
    pub result_ttl: Duration,
    /// Most writes per pipeline.
    pub batch: u32,
    /// How long dead tasks are kept.
    #[serde(with = "serde_human")]
    pub dead_ttl: Duration,
    /// PostgreSQL URL of the archive of finished tasks (`postgres://user@host/db`); empty: no
    /// archive. `sslmode=require` in the URL connects with TLS, verified against `archive_ca`.
    pub archive: String,
    /// PEM file of the CA that signed the archive server's certificate (TLS only).
    pub archive_ca: PathBuf,
    /// Most rows the archive writes in one insert.
    pub archive_batch: u32,
    /// Rows that may wait in the cluster's outbox (PostgreSQL away or slow) before nodes hold
    /// their claims; a warning is logged from 80% of it.
    pub archive_outbox: u64,
}

impl SaverSettings {
    /// True when finished tasks are archived to PostgreSQL.
    pub fn archives(&self) -> bool {
        !self.archive.is_empty()
    }
}

/// `[limits]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    /// Largest message, argument or script output, in bytes.
    pub message_bytes: u64,
}

/// `[http]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// Address of the HTTP API (`host:port`); empty: no HTTP server.
    pub listen: String,
    /// Bearer token the API asks for; empty: none (allowed on a loopback address only).
    pub token: String,
}

/// `[socket]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SocketSettings {
    /// Address of the socket service, TCP and UDP on one port (`host:port`); empty: none.
    pub listen: String,
    /// Most TCP connections open at once; one more is answered `503:` and closed.
    pub connections: u32,
    /// The longest a TCP client may take to send its whole request.
    #[serde(with = "serde_human")]
    pub idle_timeout: Duration,
    /// The longest `worker:data` and `queue:get` wait for a task to finish (then `408:`).
    #[serde(with = "serde_human")]
    pub wait: Duration,
}

/// Most connections `[socket] connections` may allow.
pub const MAX_SOCKET_CONNECTIONS: u32 = 65_536;

/// Longest `[socket] wait`.
pub const MAX_SOCKET_WAIT: Duration = Duration::from_secs(3600);

/// A configuration problem, naming the key and its source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A key that no section has.
    #[error("unknown key `{key}` in {origin}{}", suggestion.as_ref().map(|s| format!("; did you mean `{s}`?")).unwrap_or_default())]
    UnknownKey {
        /// The key, `section.name`.
        key: String,
        /// Where it came from.
        origin: String,
        /// The nearest known key.
        suggestion: Option<String>,
    },
    /// A value that parses but makes no sense.
    #[error("bad value for `{key}` in {origin}: {reason}")]
    Invalid {
        /// The key, `section.name`.
        key: String,
        /// Where it came from.
        origin: String,
        /// What is wrong.
        reason: String,
    },
    /// The file named with `--config` is missing or unreadable.
    #[error("cannot read configuration file {path}: {reason}")]
    File {
        /// The path given.
        path: String,
        /// The I/O error.
        reason: String,
    },
    /// The `config` crate could not read or convert a value; its message names key and origin.
    #[error("configuration: {0}")]
    Load(String),
}

/// Where settings come from, besides the built-in defaults.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// A configuration file that must exist.
    pub file: Option<PathBuf>,
    /// With no `file`, read `./cluster.toml` when it exists.
    pub search_cwd: bool,
    /// Environment variables (normally `std::env::vars()`).
    pub env: Vec<(String, String)>,
    /// Command-line overrides: (key, value, flag as typed).
    pub flags: Vec<(String, String, String)>,
}

impl Sources {
    /// The process environment, with the file from `BGNODE_CONFIG` when set.
    pub fn from_env() -> Sources {
        let env: Vec<(String, String)> = std::env::vars().collect();
        let file = env
            .iter()
            .find(|(k, _)| k == ENV_CONFIG_FILE)
            .map(|(_, v)| PathBuf::from(v));
        Sources {
            file,
            search_cwd: true,
            env,
            flags: Vec::new(),
        }
    }

    /// Adds a command-line override of `key`, typed as `flag`.
    pub fn flag(&mut self, key: &str, value: impl Into<String>, flag: &str) -> &mut Sources {
        self.flags.push((key.into(), value.into(), flag.into()));
        self
    }
}

impl Settings {
    /// `redis.url` as it may be shown in logs and errors: a password in it is replaced by
    /// `***`.
    pub fn redis_url_shown(&self) -> String {
        redact_url(&self.redis.url)
    }

    /// The built-in defaults alone.
    pub fn defaults() -> Settings {
        Settings::load(&Sources::default()).expect("the built-in cluster.toml is valid")
    }

    /// Loads, merges, checks and resolves settings from `sources`.
    pub fn load(sources: &Sources) -> Result<Settings, ConfigError> {
        let known = collect_keys(&File::from_str(DEFAULTS_TOML, FileFormat::Toml))
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        let mut builder =
            Config::builder().add_source(File::from_str(DEFAULTS_TOML, FileFormat::Toml));
        let mut origins: BTreeMap<String, String> = BTreeMap::new();

        let file = match &sources.file {
            Some(path) => Some(path.clone()),
            None => {
                Some(PathBuf::from("cluster.toml")).filter(|p| sources.search_cwd && p.is_file())
            }
        };
        if let Some(path) = &file {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
            let origin = path.display().to_string();
            let source = File::from_str(&text, FileFormat::Toml);
            let keys = collect_keys(&source).map_err(|e| {
                ConfigError::Load(format!("{origin}: {}", strip_uri_noise(&e.to_string())))
            })?;
            for key in keys.keys() {
                check_known(&known, key, &origin)?;
                origins.insert(key.clone(), origin.clone());
            }
            builder = builder.add_source(File::from(path.as_path()).format(FileFormat::Toml));
        }

        let mut env_map = config::Map::new();
        for (name, value) in &sources.env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if name == ENV_CONFIG_FILE {
                continue;
            }
            let origin = format!("environment variable {name}");
            let Some((section, key)) = rest.split_once("__") else {
                return Err(ConfigError::UnknownKey {
                    key: rest.to_ascii_lowercase(),
                    origin: format!("{origin} (settings are named BGNODE_<SECTION>__<KEY>)"),
                    suggestion: nearest(&known, &rest.to_ascii_lowercase().replacen('_', ".", 1)),
                });
            };
            let key = format!(
                "{}.{}",
                section.to_ascii_lowercase(),
                key.to_ascii_lowercase()
            );
            check_known(&known, &key, &origin)?;
            origins.insert(key, origin);
            env_map.insert(name.clone(), value.clone());
        }
        builder = builder.add_source(
            Environment::with_prefix("BGNODE")
                .prefix_separator("_")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("node.seeds")
                .try_parsing(true)
                .source(Some(env_map)),
        );

        for (key, value, flag) in &sources.flags {
            let origin = format!("command-line flag {flag}");
            check_known(&known, key, &origin)?;
            origins.insert(key.clone(), origin);
            builder = if key == "node.seeds" {
                let seeds: Vec<String> = value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect();
                builder.set_override(key.as_str(), seeds)
            } else {
                builder.set_override(key.as_str(), value.as_str())
            }
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        }

        let merged = builder
            .build()
            .map_err(|e| ConfigError::Load(strip_uri_noise(&e.to_string())))?;
        let mut settings: Settings = merged
            .try_deserialize()
            .map_err(|e| ConfigError::Load(strip_uri_noise(&e.to_string())))?;
        let origin_of = |key: &str| {
            origins
                .get(key)
                .cloned()
                .unwrap_or_else(|| "the built-in defaults".into())
        };
        settings.check(&origin_of)?;
        if settings.node.id.is_empty() {
            settings.node.id = host_name();
        }
        Ok(settings)
    }

    fn check(&self, origin_of: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
        let bad = |key: &str, reason: String| ConfigError::Invalid {
            key: key.into(),
            origin: origin_of(key),
            reason,
        };
        if !self.node.id.is_empty() {
            crate::model::task::validate_task_id(&self.node.id).map_err(|e| {
                bad(
                    "node.id",
                    e.to_string().replace("field `id`: ", "the node id "),
                )
            })?;
        }
        self.node.listen.parse::<SocketAddr>().map_err(|e| {
            bad(
                "node.listen",
                format!("`{}` is not host:port ({e})", self.node.listen),
            )
        })?;
        if !self.node.advertise.is_empty() {
            self.node.advertise.parse::<SocketAddr>().map_err(|e| {
                bad(
                    "node.advertise",
                    format!("`{}` is not host:port ({e})", self.node.advertise),
                )
            })?;
        } else if self
            .listen_addr()
            .map(|a| a.ip().is_unspecified())
            .unwrap_or(false)
        {
            return Err(bad(
                "node.advertise",
                format!(
                    "must be set when node.listen is {} (peers need a reachable address)",
                    self.node.listen
                ),
            ));
        }
        let tls = [&self.node.tls_cert, &self.node.tls_key, &self.node.tls_ca];
        let set = tls.iter().filter(|p| !p.as_os_str().is_empty()).count();
        if set != 0 && set != 3 {
            return Err(bad(
                "node.tls_cert",
                "set tls_cert, tls_key and tls_ca together, or none of them".into(),
            ));
        }
        for seed in &self.node.seeds {
            if seed
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .is_none()
            {
                return Err(bad("node.seeds", format!("`{seed}` is not host:port")));
            }
        }
        if self.node.cookie.is_empty() {
            return Err(bad("node.cookie", "must not be empty".into()));
        }
        if self.node.lease_ttl < Duration::from_millis(300) {
            return Err(bad("node.lease_ttl", "must be at least 300ms".into()));
        }
        redis::Client::open(self.redis.url.as_str())
            .map_err(|e| bad("redis.url", format!("`{}`: {e}", self.redis_url_shown())))?;
        self.redis
            .tls_certificates()
            .map_err(|RedisTlsError { key, reason }| bad(key, reason))?;
        for (key, value) in [
            ("redis.channel", &self.redis.channel),
            ("redis.events", &self.redis.events),
            ("redis.prefix", &self.redis.prefix),
        ] {
            if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(bad(
                    key,
                    format!("`{value}` must be non-empty, without spaces"),
                ));
            }
        }
        if self.redis.channel == self.redis.events {
            return Err(bad("redis.events", "must differ from redis.channel".into()));
        }
        if self.workers.concurrency == 0 || self.workers.concurrency > 10_000 {
            return Err(bad(
                "workers.concurrency",
                format!("{} is outside 1..=10000", self.workers.concurrency),
            ));
        }
        if self.workers.timeout.is_zero() {
            return Err(bad("workers.timeout", "must be longer than zero".into()));
        }
        if self.workers.attempts == 0 || self.workers.attempts > crate::model::task::MAX_ATTEMPTS {
            return Err(bad(
                "workers.attempts",
                format!(
                    "{} is outside 1..={}",
                    self.workers.attempts,
                    crate::model::task::MAX_ATTEMPTS
                ),
            ));
        }
        if self.workers.backoff.is_zero() || self.workers.backoff_cap < self.workers.backoff {
            return Err(bad(
                "workers.backoff_cap",
                "backoff must be longer than zero and backoff_cap at least backoff".into(),
            ));
        }
        if self.keys.limit == 0 {
            return Err(bad("keys.limit", "must be at least 1".into()));
        }
        if self.saver.dead_ttl < Duration::from_secs(1) {
            return Err(bad("saver.dead_ttl", "must be at least 1s".into()));
        }
        if self.saver.result_ttl < Duration::from_secs(1) {
            return Err(bad("saver.result_ttl", "must be at least 1s".into()));
        }
        if !self.tasks.unrunnable_after.is_zero()
            && self.tasks.unrunnable_after < Duration::from_secs(1)
        {
            return Err(bad(
                "tasks.unrunnable_after",
                "must be at least 1s (or 0 to keep such tasks for ever)".into(),
            ));
        }
        if self.saver.batch == 0 {
            return Err(bad("saver.batch", "must be at least 1".into()));
        }
        if self.saver.archives() {
            let url = self.saver.archive.parse::<tokio_postgres::Config>().map_err(|e| {
                bad(
                    "saver.archive",
                    format!(
                        "`{}` is not a PostgreSQL URL ({e}); write postgres://user@host:port/db",
                        redact_url(&self.saver.archive)
                    ),
                )
            })?;
            let tls = url.get_ssl_mode() == tokio_postgres::config::SslMode::Require;
            if tls && self.saver.archive_ca.as_os_str().is_empty() {
                return Err(bad(
                    "saver.archive_ca",
                    "saver.archive asks for TLS (sslmode=require): set archive_ca to the PEM file of the CA that signed the server's certificate".into(),
                ));
            }
            if !tls && !self.saver.archive_ca.as_os_str().is_empty() {
                return Err(bad(
                    "saver.archive_ca",
                    "is set but saver.archive does not ask for TLS: add sslmode=require to the URL"
                        .into(),
                ));
            }
        }
        if self.saver.archive_batch == 0 {
            return Err(bad("saver.archive_batch", "must be at least 1".into()));
        }
        if self.saver.archive_outbox < 1000 {
            return Err(bad("saver.archive_outbox", "must be at least 1000".into()));
        }
        if self.limits.message_bytes < 1024 {
            return Err(bad("limits.message_bytes", "must be at least 1024".into()));
        }
        if !self.http.listen.is_empty() {
            let addr = self.http.listen.parse::<SocketAddr>().map_err(|e| {
                bad(
                    "http.listen",
                    format!(
                        "`{}` is not host:port ({e}; empty turns the HTTP API off)",
                        self.http.listen
                    ),
                )
            })?;
            if !addr.ip().is_loopback() && self.http.token.is_empty() {
                return Err(bad(
                    "http.token",
                    format!(
                        "must be set when http.listen ({}, from {}) is not a loopback address: anyone who reaches it could enqueue and cancel tasks",
                        self.http.listen,
                        origin_of("http.listen")
                    ),
                ));
            }
        }
        if self
            .http
            .token
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(bad(
                "http.token",
                "must not contain spaces or control characters".into(),
            ));
        }
        if !self.socket.listen.is_empty() {
            self.socket.listen.parse::<SocketAddr>().map_err(|e| {
                bad(
                    "socket.listen",
                    format!(
                        "`{}` is not host:port ({e}; empty turns the socket service off)",
                        self.socket.listen
                    ),
                )
            })?;
        }
        if self.socket.connections == 0 || self.socket.connections > MAX_SOCKET_CONNECTIONS {
            return Err(bad(
                "socket.connections",
                format!(
                    "{} is outside 1..={MAX_SOCKET_CONNECTIONS}",
                    self.socket.connections
                ),
            ));
        }
        if self.socket.idle_timeout < Duration::from_millis(10) {
            return Err(bad("socket.idle_timeout", "must be at least 10ms".into()));
        }
        if self.socket.wait < Duration::from_millis(10) || self.socket.wait > MAX_SOCKET_WAIT {
            return Err(bad(
                "socket.wait",
                format!("must be between 10ms and {}s", MAX_SOCKET_WAIT.as_secs()),
            ));
        }
        Ok(())
    }

    /// The socket service's address, or `None` when it is off (`socket.listen` empty).
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.socket.listen.parse().ok()
    }

    /// The HTTP API's address, or `None` when it is off (`http.listen` empty).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.listen.parse().ok()
    }

    /// The cluster listen address.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.node.listen.parse().ok()
    }

    /// The address peers reach this node at.
    pub fn advertise_addr(&self) -> Option<SocketAddr> {
        if self.node.advertise.is_empty() {
            self.listen_addr()
        } else {
            self.node.advertise.parse().ok()
        }
    }

    /// True when the cluster link uses TLS.
    pub fn tls(&self) -> bool {
        !self.node.tls_cert.as_os_str().is_empty()
    }

    /// The node-local queue length for one worker type.
    pub fn queue_len(&self) -> usize {
        match self.workers.queue {
            0 => (self.workers.concurrency as usize * 4).max(64),
            n => n as usize,
        }
    }

    /// True when the cluster runs with the shipped development cookie.
    pub fn uses_development_cookie(&self) -> bool {
        self.node.cookie == Settings::defaults().node.cookie
    }
}

/// A `[redis]` TLS setting that cannot be used: the key and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub(crate) struct RedisTlsError {
    /// The key, `redis.tls_*`.
    pub(crate) key: &'static str,
    /// What is wrong, naming the file.
    pub(crate) reason: String,
}

impl RedisSettings {
    /// True when `url` asks for TLS (`rediss://`).
    pub fn uses_tls(&self) -> bool {
        self.url
            .get(..9)
            .is_some_and(|s| s.eq_ignore_ascii_case("rediss://"))
    }

    /// The CA and client certificate to connect with, read from `tls_ca`, `tls_cert` and
    /// `tls_key`; `None` when none is set (a `rediss://` URL then trusts the system's roots).
    /// Fails naming the key and file when a file is missing or holds no usable PEM, when only
    /// one of `tls_cert` and `tls_key` is set, or when any is set but the URL is not `rediss://`.
    pub(crate) fn tls_certificates(&self) -> Result<Option<redis::TlsCertificates>, RedisTlsError> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};

        let set = |p: &PathBuf| !p.as_os_str().is_empty();
        if set(&self.tls_cert) != set(&self.tls_key) {
            let (key, missing) = if set(&self.tls_cert) {
                ("redis.tls_key", "redis.tls_key")
            } else {
                ("redis.tls_cert", "redis.tls_cert")
            };
            return Err(RedisTlsError {
                key,
                reason: format!(
                    "set redis.tls_cert and redis.tls_key together, or neither ({missing} is empty)"
                ),
            });
        }
        if !set(&self.tls_ca) && !set(&self.tls_cert) {
            return Ok(None);
        }
        if !self.uses_tls() {
            let key = if set(&self.tls_ca) {
                "redis.tls_ca"
            } else {
                "redis.tls_cert"
            };
            return Err(RedisTlsError {
                key,
                reason: format!(
                    "is set but redis.url ({}) is not a rediss:// URL, so it would not be used",
                    redact_url(&self.url)
                ),
            });
        }
        let read = |key: &'static str, path: &PathBuf| {
            std::fs::read(path).map_err(|e| RedisTlsError {
                key,
                reason: format!("cannot read {}: {e}", path.display()),
            })
        };
        let certs = |key: &'static str, path: &PathBuf| {
            let pem = read(key, path)?;
            let count = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| RedisTlsError {
                    key,
                    reason: format!("{}: {e}", path.display()),
                })?
                .len();
            if count == 0 {
                return Err(RedisTlsError {
                    key,
                    reason: format!("{}: no PEM certificate in it", path.display()),
                });
            }
            Ok(pem)
        };
        let root_cert = if set(&self.tls_ca) {
            Some(certs("redis.tls_ca", &self.tls_ca)?)
        } else {
            None
        };
        let client_tls = if set(&self.tls_cert) {
            let client_cert = certs("redis.tls_cert", &self.tls_cert)?;
            let client_key = read("redis.tls_key", &self.tls_key)?;
            PrivateKeyDer::from_pem_slice(&client_key).map_err(|e| RedisTlsError {
                key: "redis.tls_key",
                reason: format!(
                    "{}: no usable PEM private key ({e})",
                    self.tls_key.display()
                ),
            })?;
            Some(redis::ClientTlsConfig {
                client_cert,
                client_key,
            })
        } else {
            None
        };
        Ok(Some(redis::TlsCertificates {
            client_tls,
            root_cert,
        }))
    }
}

/// Flattens a source into `section.key` → value.
fn collect_keys(source: &dyn Source) -> Result<BTreeMap<String, Value>, config::ConfigError> {
    let mut out = BTreeMap::new();
    for (section, value) in source.collect()? {
        match value.kind {
            ValueKind::Table(table) => {
                for (key, v) in table {
                    out.insert(format!("{section}.{key}"), v);
                }
            }
            _ => {
                out.insert(section, value);
            }
        }
    }
    Ok(out)
}

fn check_known(
    known: &BTreeMap<String, Value>,
    key: &str,
    origin: &str,
) -> Result<(), ConfigError> {
    if known.contains_key(key) {
        return Ok(());
    }
    Err(ConfigError::UnknownKey {
        key: key.into(),
        origin: origin.into(),
        suggestion: nearest(known, key),
    })
}

/// The known key closest to `key` by edit distance, when it is close enough to be a typo.
fn nearest(known: &BTreeMap<String, Value>, key: &str) -> Option<String> {
    known
        .keys()
        .map(|k| (strsim::levenshtein(k, key), k))
        .filter(|(d, _)| *d <= 3)
        .min()
        .map(|(_, k)| k.clone())
}

fn strip_uri_noise(message: &str) -> String {
    message.replace(
        "the environment",
        "the environment (BGNODE_<SECTION>__<KEY>)",
    )
}

/// The host name, used as the node id when none is configured.
pub fn host_name() -> String {
    let name = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    let clean: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        .take(64)
        .collect();
    if clean.is_empty() {
        "node".into()
    } else {
        clean
    }
}

/// `url` with the password of its user part (`redis://user:secret@host`,
/// `redis://:secret@host`) replaced by `***`; a user part without a colon is taken as a password
/// and replaced whole. The value of a `password` parameter, in a URL's query
/// (`postgres://app@db/x?password=secret`) or in a PostgreSQL `key=value` connection string
/// (`host=db password=secret`), is replaced too. Anything else comes back unchanged.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return redact_password_param(url);
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return redact_password_param(url);
    };
    let user = match rest[..at].split_once(':') {
        Some((name, _)) => format!("{name}:***"),
        None => "***".to_owned(),
    };
    redact_password_param(&format!("{scheme}://{user}{}", &rest[at..]))
}

/// `text` with the value of every `password` parameter replaced by `***`: `password=secret`
/// after the start, a space, `?` or `&`, its value running to the next space or `&`, or quoted
/// (`password='a secret'`, with `\'` inside).
fn redact_password_param(text: &str) -> String {
    const KEY: &str = "password";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(found) = rest.find(KEY) {
        let starts_key = rest[..found]
            .chars()
            .next_back()
            .is_none_or(|c| c.is_whitespace() || c == '?' || c == '&');
        let after = &rest[found + KEY.len()..];
        let value = after.trim_start().strip_prefix('=').map(str::trim_start);
        let (Some(value), true) = (value, starts_key) else {
            out.push_str(&rest[..found + KEY.len()]);
            rest = after;
            continue;
        };
        out.push_str(&rest[..rest.len() - value.len()]);
        out.push_str("***");
        let end = if let Some(quoted) = value.strip_prefix('\'') {
            let mut escaped = false;
            let close = quoted.char_indices().find(|&(_, c)| {
                let closes = c == '\'' && !escaped;
                escaped = c == '\\' && !escaped;
                closes
            });
            close.map_or(value.len(), |(i, _)| i + 2)
        } else {
            value
                .find(|c: char| c.is_whitespace() || c == '&')
                .unwrap_or(value.len())
        };
        rest = &value[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests;
