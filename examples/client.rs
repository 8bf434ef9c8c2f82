//! Use the client alone: enqueue durably, wait for a result, read a status.
//!
//! Run: `cargo run --example client` with a node running (`bgnode start`) and Redis at
//! redis://127.0.0.1:6379 (or REDIS_URL).

use std::time::Duration;

use background::{Client, TaskSpec};
use serde_json::json;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let client = Client::connect(&url).await?;

    // Fire and forget: once `enqueue` returns, the task is stored and will run.
    let id = client
        .enqueue(TaskSpec::new("hello", json!({"name": "Ada"})).priority(10))
        .await?;
    println!("enqueued {id}");

    // Call and wait for the result.
    let result = client
        .call(
            TaskSpec::new("bg-echo", json!({"ping": 1})),
            Duration::from_secs(10),
        )
        .await?;
    println!("bg-echo answered {result}");

    // Read back the first task: queued, running or done by now.
    if let Some(status) = client.status(&id).await? {
        println!(
            "{id}: {} on {:?}, result {:?}",
            status.state, status.node, status.result
        );
    }
    Ok(())
}
