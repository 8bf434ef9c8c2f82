//! `bgnode`: the command line. Parses flags and configuration, sets up logging, and calls the
//! library; no logic of its own.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use background::duration::{format_timestamp, parse_duration};
use background::registry::{Registry, RunEnv, run_attempt};
use background::task::{Task, new_task_id};
use background::{
    Client, ClientError, Node, Outcome, Settings, Sources, TaskResult, TaskSpec, TaskStatus,
};
use clap::{Parser, Subcommand};
use futures::FutureExt;
use serde_json::{Value, json};

/// Exit code: the task failed, or the command could not do its work.
const EXIT_FAILED: u8 = 1;
/// Exit code: bad usage or configuration.
const EXIT_USAGE: u8 = 2;
/// Exit code: no such task.
const EXIT_NOT_FOUND: u8 = 3;
/// Exit code: the task has not finished.
const EXIT_PENDING: u8 = 4;
/// Exit code: `--wait` timed out.
const EXIT_TIMEOUT: u8 = 5;

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
        /// Script workers folder (overrides workers.dir).
        #[arg(long, value_name = "DIR")]
        workers: Option<String>,
        /// Tasks per worker type running at once (overrides workers.concurrency).
        #[arg(long, value_name = "N")]
        concurrency: Option<String>,
    },
    /// Enqueue a task; prints its id (with --wait, its result).
    Do {
        /// Worker name.
        worker: String,
        /// Arguments as JSON (`-` reads standard input).
        args: Option<String>,
        /// Task id (the idempotency key); default a new UUIDv7.
        #[arg(long)]
        id: Option<String>,
        /// Priority, -100..=100, higher first.
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        priority: i32,
        /// Maximum attempts.
        #[arg(long, default_value_t = 1)]
        attempts: u32,
        /// Run-time limit of one attempt (`90s`, `10 minutes`).
        #[arg(long, value_name = "D")]
        timeout: Option<String>,
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
    /// Print a task's result.
    Result {
        /// Task id.
        id: String,
        /// Print one JSON object.
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
            eprintln!("error: {e:#}");
            ExitCode::from(code)
        }
    }
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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

async fn dispatch(cli: Cli) -> Result<u8, Exit> {
    match &cli.command {
        Command::Start {
            id,
            listen,
            workers,
            concurrency,
        } => {
            let settings = settings(
                &cli,
                &[
                    ("node.id", id.as_ref(), "--id"),
                    ("node.listen", listen.as_ref(), "--listen"),
                    ("workers.dir", workers.as_ref(), "--workers"),
                    ("workers.concurrency", concurrency.as_ref(), "--concurrency"),
                ],
            )?;
            start(settings).await
        }
        Command::Do {
            worker,
            args,
            id,
            priority,
            attempts,
            timeout,
            wait,
            wait_timeout,
            json,
        } => {
            let settings = settings(&cli, &[])?;
            let mut spec = TaskSpec::new(worker.clone(), read_args(args.as_deref(), &settings)?)
                .priority(*priority)
                .attempts(*attempts);
            spec.id = id.clone();
            if let Some(t) = timeout {
                spec =
                    spec.timeout(parse_duration(t).map_err(|e| usage(format!("--timeout: {e}")))?);
            }
            spec.validate().map_err(|e| usage(e.to_string()))?;
            let wait_for =
                parse_duration(wait_timeout).map_err(|e| usage(format!("--wait-timeout: {e}")))?;
            let client = connect(&settings).await?;
            if !*wait {
                let id = client.enqueue(spec).await?;
                println!("{id}");
                return Ok(0);
            }
            spec.reply = true;
            let id = client.enqueue(spec).await?;
            report_wait(&id, client.wait(&id, wait_for).await, *json)
        }
        Command::Status { id, json } => {
            let settings = settings(&cli, &[])?;
            let client = connect(&settings).await?;
            match client.status(id).await? {
                None => Err(Exit(
                    EXIT_NOT_FOUND,
                    anyhow!("no task {id} (never enqueued, or expired)"),
                )),
                Some(status) => {
                    if *json {
                        println!(
                            "{}",
                            serde_json::to_string(&status).map_err(anyhow::Error::from)?
                        );
                    } else {
                        print_status(&status);
                    }
                    Ok(0)
                }
            }
        }
        Command::Result { id, json } => {
            let settings = settings(&cli, &[])?;
            let client = connect(&settings).await?;
            let result = client.result(id).await?;
            if *json {
                let (state, value, error) = match &result {
                    TaskResult::Done(v) => ("done", v.clone(), Value::Null),
                    TaskResult::Failed(e) => ("failed", Value::Null, json!(e)),
                    TaskResult::Pending(s) => (s.as_str(), Value::Null, Value::Null),
                    TaskResult::NotFound => ("unknown", Value::Null, Value::Null),
                };
                println!(
                    "{}",
                    json!({"id": id, "state": state, "result": value, "error": error})
                );
            }
            match result {
                TaskResult::Done(v) => {
                    if !*json {
                        println!("{v}");
                    }
                    Ok(0)
                }
                TaskResult::Failed(e) => Err(Exit(EXIT_FAILED, anyhow!("task {id} failed: {e}"))),
                TaskResult::Pending(s) => Err(Exit(
                    EXIT_PENDING,
                    anyhow!("task {id} has not finished (state: {s})"),
                )),
                TaskResult::NotFound => Err(Exit(
                    EXIT_NOT_FOUND,
                    anyhow!("no task {id} (never enqueued, or expired)"),
                )),
            }
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

fn usage(message: String) -> Exit {
    Exit(EXIT_USAGE, anyhow!(message))
}

async fn connect(settings: &Settings) -> Result<Client, Exit> {
    Client::from_settings(settings)
        .await
        .with_context(|| format!("cannot reach redis at {}", settings.redis.url))
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
                println!(
                    "{}",
                    json!({"id": id, "state": "done", "result": v, "error": null})
                );
            } else {
                println!("{v}");
            }
            Ok(0)
        }
        Err(ClientError::Failed { error, .. }) => {
            if json {
                println!(
                    "{}",
                    json!({"id": id, "state": "failed", "result": null, "error": error})
                );
            }
            Err(Exit(EXIT_FAILED, anyhow!("task {id} failed: {error}")))
        }
        Err(e @ ClientError::Timeout { .. }) => Err(Exit(EXIT_TIMEOUT, e.into())),
        Err(e) => Err(e.into()),
    }
}

fn print_status(s: &TaskStatus) {
    let time = |ms: Option<u64>| ms.map_or_else(|| "-".to_owned(), format_timestamp);
    println!("id:       {}", s.id);
    println!("worker:   {}", s.worker);
    println!("state:    {} ({})", s.state, s.progress);
    println!("node:     {}", s.node.as_deref().unwrap_or("-"));
    println!("attempt:  {} of {}", s.attempt, s.attempts);
    println!("priority: {}", s.priority);
    println!("created:  {}", time(s.created));
    println!("started:  {}", time(s.started));
    println!("finished: {}", time(s.finished));
    if let Some(r) = &s.result {
        println!("result:   {r}");
    }
    if let Some(e) = &s.error {
        println!("error:    {e}");
    }
}

async fn start(settings: Settings) -> Result<u8, Exit> {
    match Node::builder(settings).run(shutdown_signal()).await {
        Ok(report) if report.drained && report.flushed => Ok(0),
        Ok(_) => Ok(EXIT_FAILED),
        Err(e) => Err(Exit(EXIT_FAILED, e.into())),
    }
}

/// Resolves on ctrl-c or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => tracing::info!("ctrl-c received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}

async fn eval(settings: &Settings, worker: &str, args: Value, json: bool) -> Result<u8, Exit> {
    background::names::validate_worker_name(worker).map_err(|e| usage(e.to_string()))?;
    let registry = Registry::build(&[], settings);
    let Some(entry) = registry.get(worker) else {
        return Err(usage(format!(
            "no worker `{worker}` (offered here: {}; scripts come from {})",
            registry.names().join(", "),
            settings.workers.dir.display()
        )));
    };
    let task = Task {
        id: format!("eval-{}", new_task_id()),
        worker: worker.to_owned(),
        args: args.to_string(),
        priority: 0,
        attempt: 1,
        attempts: 1,
        timeout: None,
        epoch: 0,
        created: background::task::now_ms(),
        reply: false,
    };
    let env = RunEnv {
        node: format!("eval@{}", settings.node.id),
        dir: registry
            .dir
            .clone()
            .unwrap_or_else(|| settings.workers.dir.clone()),
        output_limit: settings.limits.message_bytes as usize,
    };
    let outcome = std::panic::AssertUnwindSafe(run_attempt(entry, &task, &env))
        .catch_unwind()
        .await
        .unwrap_or_else(|_| Outcome::Failed("worker crashed (panic)".into()));
    match outcome {
        Outcome::Done(v) => {
            if json {
                println!(
                    "{}",
                    json!({"id": task.id, "state": "done", "result": v, "error": null})
                );
            } else {
                println!("{v}");
            }
            Ok(0)
        }
        Outcome::Failed(e) => {
            if json {
                println!(
                    "{}",
                    json!({"id": task.id, "state": "failed", "result": null, "error": e})
                );
            }
            Err(Exit(EXIT_FAILED, anyhow!("{worker} failed: {e}")))
        }
    }
}
