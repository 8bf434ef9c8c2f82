//! `bgnode`: the command line. Parses flags and configuration, sets up logging, and calls the
//! library; no logic of its own.

mod logs;

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use background::time::{format_duration, format_timestamp, parse_duration, parse_time};
use background::{
    Accepted, Archive, ArchiveError, CancelResult, Client, ClientError, ControlOp, Cron,
    HistoryQuery, MemberInfo, Node, Outcome, Overview, Recurrence, RetryResult, Settings, Sources,
    Target, TaskResult, TaskRow, TaskSpec, TaskStatus,
};
use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};

/// Prints a line on stdout. When the reader has gone (`bgnode bg | head`), stops quietly with
/// success, as a filter's upstream does, instead of panicking on the broken pipe.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            eprintln!("error: cannot write to stdout: {e}");
            std::process::exit(i32::from(EXIT_FAILED));
        }
    }};
}

/// Exit code: the task failed, or the command could not do its work.
const EXIT_FAILED: u8 = 1;
/// Exit code: bad usage or configuration.
const EXIT_USAGE: u8 = 2;
/// Exit code: no such task.
const EXIT_NOT_FOUND: u8 = 3;
/// Exit code: the task has not finished.
const EXIT_PENDING: u8 = 4;
/// Exit code: interrupted by ctrl-c or SIGTERM (128 + SIGINT, as shells report it).
const EXIT_INTERRUPTED: u8 = 130;
/// Exit code: `--wait` timed out.
const EXIT_TIMEOUT: u8 = 5;
/// Exit code: the task was refused (its key is at its limit).
const EXIT_REFUSED: u8 = 6;

#[derive(Parser)]
#[command(
    name = "bgnode",
    version,
    about = "A distributed background-task cluster on Redis"
)]
struct Cli {
    /// Configuration file (default: ./cluster.toml when present; also BGNODE_CONFIG).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Redis URL (overrides redis.url).
    #[arg(long, global = true, value_name = "URL")]
    redis: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node until SIGTERM or ctrl-c.
    Start {
        /// Node id (overrides node.id).
        #[arg(long)]
        id: Option<String>,
        /// Cluster listen address (overrides node.listen).
        #[arg(long)]
        listen: Option<String>,
        /// Other nodes to join, `host:port,host:port` (overrides node.seeds).
        #[arg(long, value_name = "ADDRS")]
        seeds: Option<String>,
        /// Script workers folder (overrides workers.dir).
        #[arg(long, value_name = "DIR")]
        workers: Option<String>,
        /// Tasks per worker type running at once (overrides workers.concurrency).
        #[arg(long, value_name = "N")]
        concurrency: Option<String>,
        /// HTTP API address (overrides http.listen; empty: no HTTP server).
        #[arg(long, value_name = "ADDR")]
        http: Option<String>,
        /// Archive every finished task to this PostgreSQL URL (overrides saver.archive).
        #[arg(long, value_name = "URL")]
        save: Option<String>,
    },
    /// Enqueue a task; prints its id (with --wait, its result).
    Do {
        /// Worker name.
        worker: String,
        /// Arguments as JSON (`-` reads standard input).
        args: Option<String>,
        #[command(flatten)]
        task: Box<TaskOpts>,
        /// Wait for the result and print it.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits.
        #[arg(long, value_name = "D", default_value = "10m")]
        wait_timeout: String,
        /// With --wait: print the outcome as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a task's state.
    Status {
        /// Task id.
        id: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Print a task's result, or the result stored under a result key.
    Result {
        /// Task id (or, with --key, nothing).
        id: Option<String>,
        /// Read the result stored under this result key instead.
        #[arg(long, value_name = "K")]
        key: Option<String>,
        /// With --key: delete the stored result.
        #[arg(long, requires = "key")]
        reset: bool,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a task: scheduled or queued ones at once, running ones by asking their node.
    Cancel {
        /// Task id.
        id: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Queue a finished task (dead, failed, cancelled, expired) again.
    Retry {
        /// Task id.
        id: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// List the live nodes: state, workers, capacity, running and queued.
    Info {
        /// Print one JSON object: `{"members": [...]}`.
        #[arg(long)]
        json: bool,
    },
    /// Pause a worker type cluster-wide: no node claims its tasks; running ones finish.
    Pause(WorkerSelect),
    /// Resume a paused worker type: every node claims its tasks again.
    Resume(WorkerSelect),
    /// Stop a node (or every node) gracefully, through the cluster.
    Stop(NodeSelect),
    /// Make a node (or every node) rescan its workers folder, through the cluster.
    Reload(NodeSelect),
    /// List pending (pinned ones too), claimed, deferred, scheduled, running and dead tasks.
    Bg {
        /// Most tasks listed per group.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// List finished tasks from the PostgreSQL archive (saver.archive), latest end first.
    History {
        /// Only this worker type.
        #[arg(long, value_name = "W")]
        worker: Option<String>,
        /// Only this final state: done, failed, dead, cancelled or expired.
        #[arg(long, value_name = "S")]
        state: Option<String>,
        /// Only tasks that ended at or after this time (or this long ago, e.g. 1h).
        #[arg(long, value_name = "D")]
        since: Option<String>,
        /// Only tasks that ended before this time (or this long ago).
        #[arg(long, value_name = "D")]
        until: Option<String>,
        /// Only this task.
        #[arg(long, value_name = "ID")]
        id: Option<String>,
        /// Most tasks listed.
        #[arg(long, value_name = "N", default_value_t = 50)]
        limit: usize,
        /// Print one JSON object per task, one per line.
        #[arg(long)]
        json: bool,
    },
    /// Run a worker once, here, without Redis or a cluster.
    Eval {
        /// Worker name.
        worker: String,
        /// Arguments as JSON (`-` reads standard input).
        args: Option<String>,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// The worker type `pause` and `resume` act on.
#[derive(Args)]
struct WorkerSelect {
    /// Worker name.
    worker: String,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Which nodes `stop` and `reload` reach.
#[derive(Args)]
struct NodeSelect {
    /// The node.
    #[arg(long, conflicts_with = "all", required_unless_present = "all")]
    node: Option<String>,
    /// Every node.
    #[arg(long)]
    all: bool,
    /// Print the answers as JSON.
    #[arg(long)]
    json: bool,
}

/// Options of a task, for `bgnode do`.
#[derive(Args)]
struct TaskOpts {
    /// Task id (the idempotency key); default a new UUIDv7.
    #[arg(long)]
    id: Option<String>,
    /// Priority, -100..=100, higher first.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    priority: i32,
    /// Maximum attempts (default: the worker's, else workers.attempts).
    #[arg(long)]
    attempts: Option<u32>,
    /// Run-time limit of one attempt (`90s`, `10 minutes`).
    #[arg(long, value_name = "D")]
    timeout: Option<String>,
    /// Retry backoff: first delay, doubling each attempt (`2s`).
    #[arg(long, value_name = "D")]
    backoff: Option<String>,
    /// Longest retry backoff.
    #[arg(long, value_name = "D")]
    backoff_cap: Option<String>,
    /// Run after this delay (`10 minutes`).
    #[arg(long = "in", value_name = "D", conflicts_with = "at")]
    delay: Option<String>,
    /// Run at this time (`2014-12-31T23:59:59+01:00`, `December 31st 2014 23:59:59`,
    /// `2014-12-31H23:59:59TZ+1:00`; UTC unless an offset is given).
    #[arg(long, value_name = "T")]
    at: Option<String>,
    /// Run again at this interval (`day`, `4 hours`).
    #[arg(long, value_name = "D", conflicts_with = "cron")]
    every: Option<String>,
    /// Run on this cron schedule, in UTC (`0 3 * * *`).
    #[arg(long, value_name = "EXPR")]
    cron: Option<String>,
    /// Expire the task if it has not started this long after it was enqueued (or due).
    #[arg(long, value_name = "D")]
    deadline: Option<String>,
    /// Per-key limit group (`[keys] limit` tasks with one key pending or running at once).
    #[arg(long, value_name = "K")]
    key: Option<String>,
    /// Also store the result under this name (`bgnode result --key`).
    #[arg(long, value_name = "K")]
    result_key: Option<String>,
    /// Where it runs: any (by load), all (once per live node), local (the node this
    /// configuration names), `node:<id>`.
    #[arg(long, value_name = "T", default_value = "any")]
    target: String,
}

impl TaskOpts {
    fn spec(&self, worker: &str, args: Value) -> Result<TaskSpec, Exit> {
        let dur = |flag: &str, v: &Option<String>| -> Result<_, Exit> {
            v.as_deref()
                .map(|t| parse_duration(t).map_err(|e| usage(format!("--{flag}: {e}"))))
                .transpose()
        };
        let mut spec = TaskSpec::new(worker, args).priority(self.priority);
        spec.id = self.id.clone();
        spec.attempts = self.attempts;
        spec.timeout = dur("timeout", &self.timeout)?;
        spec.backoff = dur("backoff", &self.backoff)?;
        spec.backoff_cap = dur("backoff-cap", &self.backoff_cap)?;
        spec.deadline = dur("deadline", &self.deadline)?;
        spec.key = self.key.clone();
        spec.result_key = self.result_key.clone();
        spec.target = Target::parse(&self.target).map_err(|e| usage(format!("--target: {e}")))?;
        if let Some(d) = dur("in", &self.delay)? {
            spec = spec.delay(d);
        }
        if let Some(t) = &self.at {
            spec.run_at = Some(parse_time(t).map_err(|e| usage(format!("--at: {e}")))?);
        }
        if let Some(d) = dur("every", &self.every)? {
            spec.repeat = Some(Recurrence::Every(d));
        }
        if let Some(expr) = &self.cron {
            let cron = Cron::parse(expr).map_err(|e| usage(format!("--cron: {e}")))?;
            spec.repeat = Some(Recurrence::Cron(cron));
        }
        Ok(spec)
    }
}

/// An error with the exit code it should produce.
struct Exit(u8, anyhow::Error);

impl<E: Into<anyhow::Error>> From<E> for Exit {
    fn from(e: E) -> Exit {
        Exit(EXIT_FAILED, e.into())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let is_start = matches!(cli.command, Command::Start { .. });
    init_logging(if is_start { "info" } else { "warn" });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(Exit(code, e)) => {
            eprintln!("error: {}", describe(&e));
            ExitCode::from(code)
        }
    }
}

/// The error and its causes, each said once (library errors often repeat their cause).
fn describe(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

/// Logs to stderr: `RUST_LOG` when it is set (and not empty), else `default` for bgnode with
/// the cluster libraries quiet (their per-session chatter shows with `RUST_LOG=info`).
/// Repeated warnings are limited, and a known harmless one dropped ([`logs::Throttle`]).
/// ractor_cluster's node server logs the end of every session, a normal one included, as a
/// warning with a dump of the peer's name struct; the membership logs each end itself, in words
/// and at the level it deserves, so that module is limited to errors unless `RUST_LOG` asks.
/// Its session module warns once per connection the cluster port's guard closes before login
/// (a flood of them would flood the log); the guard counts those and logs them itself, at most
/// once every 10 s per kind, so that module is limited to errors too.
fn init_logging(default: &str) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| tracing_subscriber::EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| {
            tracing_subscriber::EnvFilter::new(format!(
                "{default},ractor=warn,ractor_cluster=warn,ractor_cluster::node=error,\
                 ractor_cluster::node::node_session=warn,ractor_cluster::node::client=warn,\
                 ractor_cluster::node::auth=warn,ractor_cluster::net::session=error,chitchat=warn"
            ))
        });
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    tracing_subscriber::registry()
        .with(filter)
        .with(logs::Throttle::default())
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .init();
}

fn settings(cli: &Cli, flags: &[(&str, Option<&String>, &str)]) -> Result<Settings, Exit> {
    let mut sources = Sources::from_env();
    if let Some(file) = &cli.config {
        sources.file = Some(file.clone());
    }
    if let Some(url) = &cli.redis {
        sources.flag("redis.url", url.as_str(), "--redis");
    }
    for (key, value, flag) in flags {
        if let Some(value) = value {
            sources.flag(key, value.as_str(), flag);
        }
    }
    Settings::load(&sources).map_err(|e| Exit(EXIT_USAGE, e.into()))
}

fn print_json(v: &impl serde::Serialize) -> Result<(), Exit> {
    out!("{}", serde_json::to_string(v).map_err(anyhow::Error::from)?);
    Ok(())
}

async fn dispatch(cli: Cli) -> Result<u8, Exit> {
    match &cli.command {
        Command::Start {
            id,
            listen,
            seeds,
            workers,
            concurrency,
            http,
            save,
        } => {
            let settings = settings(
                &cli,
                &[
                    ("node.id", id.as_ref(), "--id"),
                    ("node.listen", listen.as_ref(), "--listen"),
                    ("node.seeds", seeds.as_ref(), "--seeds"),
                    ("workers.dir", workers.as_ref(), "--workers"),
                    ("workers.concurrency", concurrency.as_ref(), "--concurrency"),
                    ("http.listen", http.as_ref(), "--http"),
                    ("saver.archive", save.as_ref(), "--save"),
                ],
            )?;
            start(settings).await
        }
        Command::Do {
            worker,
            args,
            task,
            wait,
            wait_timeout,
            json,
        } => {
            let settings = settings(&cli, &[])?;
            let mut spec = task.spec(worker, read_args(args.as_deref(), &settings)?)?;
            spec.reply = *wait;
            spec.validate().map_err(|e| usage(e.to_string()))?;
            let wait_for =
                parse_duration(wait_timeout).map_err(|e| usage(format!("--wait-timeout: {e}")))?;
            let client = connect(&settings).await?;
            let check = spec.clone();
            let (id, accepted) = match client.submit(vec![spec]).await {
                Ok(mut v) => v.remove(0),
                Err(e @ ClientError::KeyFull { .. }) => return Err(Exit(EXIT_REFUSED, e.into())),
                Err(e) => return Err(e.into()),
            };
            match accepted {
                Accepted::Deferred => {
                    eprintln!("note: its key is at its limit; the task waits for a slot");
                }
                Accepted::Exists => {
                    eprintln!("note: a task with id {id} exists; nothing was added");
                }
                _ => {}
            }
            if accepted != Accepted::Exists {
                warn_unrunnable(&client, &check, &id, &settings).await;
            }
            if !*wait {
                out!("{id}");
                return Ok(0);
            }
            report_wait(&id, client.wait(&id, wait_for).await, *json)
        }
        Command::Status { id, json } => {
            let settings = settings(&cli, &[])?;
            let client = connect(&settings).await?;
            match client.status(id).await? {
                None => archived_status(&settings, id, *json).await,
                Some(status) if *json => print_json(&status).map(|()| 0),
                Some(status) => {
                    print_status(&status);
                    Ok(0)
                }
            }
        }
        Command::Result {
            id,
            key,
            reset,
            json,
        } => {
            let client = connect(&settings(&cli, &[])?).await?;
            match (id, key) {
                (None, Some(key)) => result_by_key(&client, key, *reset, *json).await,
                (Some(id), None) => result(&client, id, *json).await,
                _ => Err(usage("give a task id, or --key K".into())),
            }
        }
        Command::Cancel { id, json } => {
            let client = connect(&settings(&cli, &[])?).await?;
            let outcome = client.cancel(id).await?;
            if *json {
                print_json(&json!({"id": id, "outcome": outcome}))?;
            }
            match outcome {
                CancelResult::Cancelled => {
                    if !*json {
                        out!("cancelled {id}");
                    }
                    Ok(0)
                }
                CancelResult::Requested => {
                    if !*json {
                        out!("cancellation of {id} requested from the node running it");
                    }
                    Ok(0)
                }
                CancelResult::NotFound => Err(not_found(id)),
                CancelResult::Finished => {
                    Err(Exit(EXIT_FAILED, anyhow!("task {id} has already finished")))
                }
            }
        }
        Command::Retry { id, json } => {
            let client = connect(&settings(&cli, &[])?).await?;
            let outcome = client.retry(id).await?;
            if *json {
                print_json(&json!({"id": id, "outcome": outcome}))?;
            }
            match outcome {
                RetryResult::Queued | RetryResult::Deferred => {
                    if !*json {
                        out!("queued {id} again");
                    }
                    Ok(0)
                }
                RetryResult::NotFound => Err(not_found(id)),
                RetryResult::NotFinished => Err(Exit(
                    EXIT_FAILED,
                    anyhow!(
                        "task {id} has not finished (or is a recurring template): nothing to retry"
                    ),
                )),
            }
        }
        Command::Info { json } => {
            let client = connect(&settings(&cli, &[])?).await?;
            let members = client.info().await?;
            let paused = client.paused().await?;
            if *json {
                print_json(&json!({ "members": members, "paused": paused }))?;
            } else {
                print_info(&members);
                if !paused.is_empty() {
                    out!("paused cluster-wide: {}", paused.join(", "));
                }
            }
            Ok(0)
        }
        Command::Pause(select) => pause(&cli, select, true).await,
        Command::Resume(select) => pause(&cli, select, false).await,
        Command::Stop(select) => control(&cli, ControlOp::Stop, select).await,
        Command::Reload(select) => control(&cli, ControlOp::Reload, select).await,
        Command::Bg { limit, json } => {
            let client = connect(&settings(&cli, &[])?).await?;
            let overview = client.overview(*limit).await?;
            if *json {
                print_json(&overview)?;
            } else {
                print_overview(&overview);
            }
            Ok(0)
        }
        Command::History {
            worker,
            state,
            since,
            until,
            id,
            limit,
            json,
        } => {
            let query = HistoryQuery {
                worker: worker.clone(),
                state: state.clone(),
                since: since.as_deref().map(|t| when(t, "--since")).transpose()?,
                until: until.as_deref().map(|t| when(t, "--until")).transpose()?,
                id: id.clone(),
                limit: *limit,
                cursor: None,
            };
            history(&settings(&cli, &[])?, &query, *json).await
        }
        Command::Eval { worker, args, json } => {
            let settings = settings(&cli, &[])?;
            eval(
                &settings,
                worker,
                read_args(args.as_deref(), &settings)?,
                *json,
            )
            .await
        }
    }
}

/// A time given to `history`: a time (`parse_time`), or a duration meaning that long ago.
fn when(text: &str, flag: &str) -> Result<u64, Exit> {
    if let Ok(ago) = parse_duration(text) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        return Ok(now.saturating_sub(ago.as_millis() as u64));
    }
    parse_time(text).map_err(|e| usage(format!("{flag}: {e} (or a duration ago, e.g. 2h)")))
}

/// Connects to the archive, with an error that says what to set.
async fn archive(settings: &Settings) -> Result<Archive, Exit> {
    Archive::connect(settings).await.map_err(|e| match e {
        ArchiveError::Off | ArchiveError::Settings(_) => usage(e.to_string()),
        e => Exit(EXIT_FAILED, e.into()),
    })
}

/// `bgnode history`.
async fn history(settings: &Settings, query: &HistoryQuery, json: bool) -> Result<u8, Exit> {
    // A query no archive can answer is bad usage, said before connecting.
    query.check().map_err(|e| usage(e.to_string()))?;
    let archive = archive(settings).await?;
    let page = archive.history(query).await.map_err(|e| match e {
        ArchiveError::Query(_) => usage(e.to_string()),
        e => Exit(EXIT_FAILED, e.into()),
    })?;
    if json {
        for row in &page.rows {
            print_json(row)?;
        }
        return Ok(0);
    }
    if page.rows.is_empty() {
        eprintln!("no finished task in the archive matches");
        return Ok(0);
    }
    out!(
        "{:<38} {:<16} {:<9} {:>3} {:<12} {:<24} {:>9}",
        "ID",
        "WORKER",
        "STATE",
        "TRY",
        "NODE",
        "FINISHED",
        "RUN"
    );
    for r in &page.rows {
        out!(
            "{:<38} {:<16} {:<9} {:>3} {:<12} {:<24} {:>9}",
            r.id,
            r.worker,
            r.state,
            r.attempts,
            r.node.as_deref().unwrap_or("-"),
            format_timestamp(r.finished.max(0) as u64),
            r.run_ms.map_or_else(
                || "-".to_owned(),
                |ms| format_duration(std::time::Duration::from_millis(ms.max(0) as u64))
            ),
        );
    }
    if page.next.is_some() {
        eprintln!("(more: raise --limit, or narrow with --until)");
    }
    Ok(0)
}

/// `bgnode status` of a task Redis no longer holds: its row in the archive, when there is one.
async fn archived_status(settings: &Settings, id: &str, json: bool) -> Result<u8, Exit> {
    if !settings.saver.archives() {
        return Err(not_found(id));
    }
    let row = archive(settings)
        .await?
        .find(id)
        .await
        .map_err(|e| Exit(EXIT_FAILED, e.into()))?;
    let Some(r) = row else {
        return Err(not_found(id));
    };
    if json {
        let mut value = serde_json::to_value(&r).map_err(anyhow::Error::from)?;
        value["archived"] = serde_json::Value::Bool(true);
        print_json(&value)?;
        return Ok(0);
    }
    let time =
        |ms: Option<i64>| ms.map_or_else(|| "-".to_owned(), |t| format_timestamp(t.max(0) as u64));
    out!("id:       {}", r.id);
    out!("worker:   {}", r.worker);
    out!("state:    {} (archived: no longer in Redis)", r.state);
    out!("node:     {}", r.node.as_deref().unwrap_or("-"));
    out!("attempt:  {}", r.attempts);
    out!("priority: {}", r.priority);
    out!("created:  {}", time(r.created));
    if let Some(k) = &r.key {
        out!("key:      {k}");
    }
    if let Some(t) = &r.template {
        out!("template: {t}");
    }
    out!("started:  {}", time(r.started));
    out!("finished: {}", time(Some(r.finished)));
    if let Some(v) = &r.result {
        out!("result:   {v}");
    }
    if let Some(e) = &r.error {
        out!("error:    {e}");
    }
    Ok(0)
}

/// Says on stderr when no live node can run the task just enqueued, why, and what becomes of
/// it.
async fn warn_unrunnable(client: &Client, spec: &TaskSpec, id: &str, settings: &Settings) {
    let Ok(Some(why)) = client.unrunnable(spec).await else {
        return;
    };
    let limit = settings.tasks.unrunnable_after;
    let fate = if limit.is_zero() {
        "with no limit ([tasks] unrunnable_after is 0)".to_owned()
    } else {
        format!(
            "and expires if it still cannot run after {} ([tasks] unrunnable_after)",
            format_duration(limit)
        )
    };
    eprintln!(
        "warning: {why}: task {id} cannot run now; it waits for {}, {fate}",
        why.waits_for()
    );
}

/// `bgnode pause` and `bgnode resume`.
async fn pause(cli: &Cli, select: &WorkerSelect, paused: bool) -> Result<u8, Exit> {
    let client = connect(&settings(cli, &[])?).await?;
    let worker = &select.worker;
    let changed = match if paused {
        client.pause(worker).await
    } else {
        client.resume(worker).await
    } {
        Ok(changed) => changed,
        Err(e @ ClientError::Invalid(_)) => return Err(usage(e.to_string())),
        Err(e) => return Err(e.into()),
    };
    if select.json {
        print_json(&json!({"worker": worker, "paused": paused, "changed": changed}))?;
    } else {
        out!(
            "{worker} {}",
            match (paused, changed) {
                (true, true) => "paused cluster-wide: no node claims its tasks until it is resumed",
                (true, false) => "was paused already",
                (false, true) => "resumed: the nodes claim its tasks again",
                (false, false) => "was not paused",
            }
        );
    }
    Ok(0)
}

async fn control(cli: &Cli, op: ControlOp, select: &NodeSelect) -> Result<u8, Exit> {
    let (node, json) = (select.node.as_deref(), select.json);
    let client = connect(&settings(cli, &[])?).await?;
    let answers = client
        .control(op, node, std::time::Duration::from_secs(10))
        .await?;
    if json {
        print_json(&answers)?;
    } else {
        for a in &answers {
            out!("{}: {}", a.node, a.message);
        }
    }
    match (node, answers.iter().all(|a| a.ok), answers.is_empty()) {
        (_, _, true) => Err(Exit(EXIT_FAILED, anyhow!("no node answered within 10s"))),
        (_, false, _) => Ok(EXIT_FAILED),
        _ => Ok(0),
    }
}

fn print_info(members: &[MemberInfo]) {
    if members.is_empty() {
        out!("no live node");
    }
    for m in members {
        out!(
            "{}  {}  {}  capacity {}  running {}  queued {}  peers [{}]",
            m.id,
            m.state,
            m.addr.as_deref().unwrap_or("-"),
            m.capacity,
            m.running,
            m.queued,
            m.peers.join(", ")
        );
        for (w, l) in &m.workers {
            let settings = m.settings.get(w).map_or(String::new(), |s| {
                let ms = |ms: u64| format_duration(std::time::Duration::from_millis(ms));
                format!(
                    "  (timeout {}, {} attempt{}, backoff {}..{}{})",
                    ms(s.timeout_ms),
                    s.attempts,
                    if s.attempts == 1 { "" } else { "s" },
                    ms(s.backoff_ms),
                    ms(s.backoff_cap_ms),
                    s.file
                        .as_deref()
                        .map_or(String::new(), |f| format!(", from {f}"))
                )
            });
            out!(
                "    {w}: {}/{} running, {} queued{settings}",
                l.running,
                l.capacity,
                l.queued
            );
        }
    }
}

fn usage(message: String) -> Exit {
    Exit(EXIT_USAGE, anyhow!(message))
}

fn not_found(id: &str) -> Exit {
    Exit(
        EXIT_NOT_FOUND,
        anyhow!("no task {id} (never enqueued, or expired)"),
    )
}

async fn connect(settings: &Settings) -> Result<Client, Exit> {
    Client::from_settings(settings)
        .await
        .with_context(|| format!("cannot reach redis at {}", settings.redis_url_shown()))
        .map_err(|e| Exit(EXIT_FAILED, e))
}

/// Reads ARGS_JSON (or stdin for `-`), size-checked before parsing.
fn read_args(args: Option<&str>, settings: &Settings) -> Result<Value, Exit> {
    let limit = settings.limits.message_bytes as usize;
    let text = match args {
        None => return Ok(json!({})),
        Some("-") => {
            let mut buf = Vec::new();
            std::io::stdin()
                .take(limit as u64 + 1)
                .read_to_end(&mut buf)
                .context("reading arguments from standard input")?;
            String::from_utf8(buf)
                .map_err(|_| usage("arguments on standard input are not UTF-8".into()))?
        }
        Some(text) => text.to_owned(),
    };
    if text.len() > limit {
        return Err(usage(format!(
            "arguments are over the {limit}-byte limit (limits.message_bytes)"
        )));
    }
    serde_json::from_str(&text).map_err(|e| usage(format!("ARGS_JSON is not valid JSON: {e}")))
}

fn report_wait(id: &str, outcome: Result<Value, ClientError>, json: bool) -> Result<u8, Exit> {
    match outcome {
        Ok(v) => {
            if json {
                out!(
                    "{}",
                    json!({"id": id, "state": "done", "result": v, "error": null})
                );
            } else {
                out!("{v}");
            }
            Ok(0)
        }
        Err(ClientError::Failed { state, error, .. }) => {
            if json {
                out!(
                    "{}",
                    json!({"id": id, "state": state, "result": null, "error": error})
                );
            }
            Err(Exit(EXIT_FAILED, anyhow!("task {id} {state}: {error}")))
        }
        Err(e @ ClientError::Timeout { .. }) => Err(Exit(EXIT_TIMEOUT, e.into())),
        Err(e) => Err(e.into()),
    }
}

async fn result(client: &Client, id: &str, json: bool) -> Result<u8, Exit> {
    let result = client.result(id).await?;
    if json {
        let (state, value, error) = match &result {
            TaskResult::Done(v) => ("done", v.clone(), Value::Null),
            TaskResult::Failed { state, error } => (state.as_str(), Value::Null, json!(error)),
            TaskResult::Pending(s) => (s.as_str(), Value::Null, Value::Null),
            TaskResult::NotFound => ("unknown", Value::Null, Value::Null),
        };
        out!(
            "{}",
            json!({"id": id, "state": state, "result": value, "error": error})
        );
    }
    match result {
        TaskResult::Done(v) => {
            if !json {
                out!("{v}");
            }
            Ok(0)
        }
        TaskResult::Failed { state, error } => {
            Err(Exit(EXIT_FAILED, anyhow!("task {id} {state}: {error}")))
        }
        TaskResult::Pending(s) => Err(Exit(
            EXIT_PENDING,
            anyhow!("task {id} has not finished (state: {s})"),
        )),
        TaskResult::NotFound => Err(not_found(id)),
    }
}

async fn result_by_key(client: &Client, key: &str, reset: bool, json: bool) -> Result<u8, Exit> {
    let value = client.result_by_key(key).await?;
    if reset {
        let removed = client.reset_result_key(key).await?;
        if json {
            print_json(&json!({"key": key, "result": value, "reset": removed}))?;
        } else {
            out!("reset {key}");
        }
        return Ok(0);
    }
    match value {
        Some(v) => {
            if json {
                print_json(&json!({"key": key, "result": v}))?;
            } else {
                out!("{v}");
            }
            Ok(0)
        }
        None => Err(Exit(
            EXIT_NOT_FOUND,
            anyhow!("no result stored under key {key} (none finished yet, reset, or expired)"),
        )),
    }
}

fn print_status(s: &TaskStatus) {
    let time = |ms: Option<u64>| ms.map_or_else(|| "-".to_owned(), format_timestamp);
    out!("id:       {}", s.id);
    out!("worker:   {}", s.worker);
    out!("state:    {} ({})", s.state, s.progress);
    out!("node:     {}", s.node.as_deref().unwrap_or("-"));
    match s.attempts {
        Some(n) => out!("attempt:  {} of {n}", s.attempt),
        None => out!("attempt:  {}", s.attempt),
    }
    out!("priority: {}", s.priority);
    out!("created:  {}", time(s.created));
    if let Some(every) = s.every {
        out!(
            "every:    {}",
            format_duration(std::time::Duration::from_millis(every))
        );
    }
    if let Some(cron) = &s.cron {
        out!("cron:     {cron}");
    }
    if s.run_at.is_some() {
        out!("run at:   {}", time(s.run_at));
    }
    if s.retry_at.is_some() && s.state == "retrying" {
        out!("retry at: {}", time(s.retry_at));
    }
    if s.deadline.is_some() {
        out!("deadline: {}", time(s.deadline));
    }
    if let Some(k) = &s.key {
        out!("key:      {k}");
    }
    if let Some(t) = &s.template {
        out!("template: {t}");
    }
    out!("started:  {}", time(s.started));
    out!("finished: {}", time(s.finished));
    if let Some(r) = &s.result {
        out!("result:   {r}");
    }
    if let Some(e) = &s.error {
        out!("error:    {e}");
    }
}

fn print_overview(o: &Overview) {
    let time = |ms: Option<u64>| ms.map_or_else(|| "-".to_owned(), format_timestamp);
    let count = |k: &str| o.counts.get(k).copied().unwrap_or(0);
    let groups: [(&str, &[TaskRow]); 6] = [
        ("pending", &o.pending),
        ("claimed", &o.claimed),
        ("deferred", &o.deferred),
        ("scheduled", &o.scheduled),
        ("running", &o.running),
        ("dead", &o.dead),
    ];
    if !o.paused.is_empty() {
        out!("paused cluster-wide: {}", o.paused.join(", "));
    }
    for (name, rows) in groups {
        match (name, count("unrunnable")) {
            ("pending", n) if n > 0 => {
                out!("{name} ({}, {n} that no live node can run):", count(name));
            }
            _ => out!("{name} ({}):", count(name)),
        }
        for r in rows {
            let mut line = format!("  {}  {}  {}", r.id, r.worker, r.state);
            if o.paused.contains(&r.worker) && name != "running" && name != "dead" {
                line.push_str("  PAUSED");
            }
            match name {
                "pending" | "deferred" => {
                    line.push_str(&format!("  priority {}", r.priority));
                    if let Some(node) = r.target.as_deref().and_then(|t| t.strip_prefix("node:")) {
                        line.push_str(&format!("  only on {node}"));
                    }
                    if let Some(key) = &r.key {
                        line.push_str(&format!("  key {key}"));
                    }
                    if let Some(why) = &r.unrunnable {
                        line.push_str(&format!("  CANNOT RUN NOW: {why}"));
                    }
                }
                "claimed" => {
                    line.push_str(&format!(
                        "  on {}  attempt {}  not started",
                        r.node.as_deref().unwrap_or("-"),
                        r.attempt
                    ));
                    if let Some(node) = r.target.as_deref().and_then(|t| t.strip_prefix("node:")) {
                        line.push_str(&format!("  only on {node}"));
                    }
                }
                "scheduled" => {
                    line.push_str(&format!("  due {}", time(r.due)));
                    if let Some(every) = r.every {
                        let every = format_duration(std::time::Duration::from_millis(every));
                        line.push_str(&format!("  every {every}"));
                    }
                    if let Some(cron) = &r.cron {
                        line.push_str(&format!("  cron {cron}"));
                    }
                }
                "running" => line.push_str(&format!(
                    "  on {}  attempt {}",
                    r.node.as_deref().unwrap_or("-"),
                    r.attempt
                )),
                _ => line.push_str(&format!(
                    "  after {} attempts: {}",
                    r.attempt,
                    r.error.as_deref().unwrap_or("-")
                )),
            }
            out!("{line}");
        }
    }
}

async fn start(settings: Settings) -> Result<u8, Exit> {
    // Listen before the node starts: a signal during start-up then stops it gracefully rather
    // than killing the process.
    let shutdown = shutdown_signal().map_err(|e| Exit(EXIT_FAILED, e))?;
    match Node::builder(settings).run(shutdown).await {
        Ok(report) if report.drained && report.flushed => Ok(0),
        Ok(_) => Ok(EXIT_FAILED),
        Err(e) => Err(Exit(EXIT_FAILED, e.into())),
    }
}

/// Starts listening for ctrl-c (SIGINT) and SIGTERM; the future resolves on the first.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for ctrl-c")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => tracing::info!("ctrl-c received"),
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
        }
    })
}

async fn eval(settings: &Settings, worker: &str, args: Value, json: bool) -> Result<u8, Exit> {
    // On ctrl-c or SIGTERM the attempt is abandoned: dropping it kills a script's whole process
    // group, so nothing it started outlives the command.
    let stop = shutdown_signal().map_err(|e| Exit(EXIT_FAILED, e))?;
    let run = tokio::select! {
        run = background::eval(settings, worker, &args) => run.map_err(|e| usage(e.to_string()))?,
        () = stop => {
            return Err(Exit(EXIT_INTERRUPTED, anyhow!("{worker} interrupted; its processes were stopped")));
        }
    };
    let (task_id, outcome) = (run.id, run.outcome);
    match outcome {
        Outcome::Done(v) => {
            if json {
                out!(
                    "{}",
                    json!({"id": task_id, "state": "done", "result": v, "error": null})
                );
            } else {
                out!("{v}");
            }
            Ok(0)
        }
        other => {
            let error = match other {
                Outcome::Failed { error, .. } => error,
                _ => "stopped".to_owned(),
            };
            if json {
                out!(
                    "{}",
                    json!({"id": task_id, "state": "failed", "result": null, "error": error})
                );
            }
            Err(Exit(EXIT_FAILED, anyhow!("{worker} failed: {error}")))
        }
    }
}
