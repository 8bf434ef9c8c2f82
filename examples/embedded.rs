//! Embed a node with Rust workers in a program that is not built on actors: `Node::builder`
//! starts it, its handle shuts it down.
//!
//! Run: `cargo run --example embedded` (needs Redis at redis://127.0.0.1:6379, or set
//! BGNODE_REDIS__URL). It runs three tasks through the node, prints their results, and shuts
//! the node down gracefully (running tasks drain, queued ones are handed back).

use std::time::Duration;

use background::{
    Client, Node, Settings, Sources, TaskContext, TaskError, TaskSpec, Worker, WorkerOptions,
};
use serde_json::{Value, json};

/// Resizes an image (pretend): shows typed arguments and a retryable error.
struct Resize;

#[async_trait::async_trait]
impl Worker for Resize {
    async fn run(&self, ctx: TaskContext) -> Result<Value, TaskError> {
        let width: u32 = ctx.arg("width")?;
        if width == 0 {
            return Err(TaskError::fail("width must be positive"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok(json!({ "task": ctx.id, "width": width, "node": ctx.node }))
    }
}

/// Panics when asked to: the node fails that attempt, restarts the worker actor, and goes on.
struct Flaky;

#[async_trait::async_trait]
impl Worker for Flaky {
    async fn run(&self, ctx: TaskContext) -> Result<Value, TaskError> {
        if ctx.args.get("panic").and_then(Value::as_bool) == Some(true) {
            panic!("flaky worker asked to panic");
        }
        Ok(json!("fine"))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    // The same settings `bgnode start` reads: ./cluster.toml, BGNODE_* variables.
    let settings = Settings::load(&Sources::from_env())?;
    let url = settings.redis.url.clone();
    let node = Node::builder(settings)
        .worker_with("resize", Resize, WorkerOptions::default().concurrency(4))
        .worker("flaky", Flaky)
        .start()
        .await?;

    let client = Client::connect(&url).await?;
    let crashed = client
        .call(
            TaskSpec::new("flaky", json!({"panic": true})),
            Duration::from_secs(10),
        )
        .await;
    println!("flaky (panic): {crashed:?}");
    let fine = client
        .call(TaskSpec::new("flaky", json!({})), Duration::from_secs(10))
        .await?;
    println!("flaky after the crash: {fine}");
    let resized = client
        .call(
            TaskSpec::new("resize", json!({"width": 640})),
            Duration::from_secs(10),
        )
        .await?;
    println!("resize: {resized}");

    println!("node {} ran them; shutting down", node.id());
    let report = node.shutdown().await?;
    println!("stopped: {report:?}");
    Ok(())
}
