//! Request rate of the socket service: `queue:add:bg-noop:x` over `--connections` TCP clients
//! at once (one request per connection, as the protocol has it) against one real `bgnode` on a
//! private `redis-server`, for `--seconds`. Run it (release mode) with
//! `cargo bench --bench socket -- [--connections 50] [--seconds 5]`.
//!
//! For comparison it then runs the same number of clients calling `Client::enqueue` (one task
//! per call) for the same time: the difference is what the socket door costs. Finally it waits
//! (polling, under a deadline) until every task stored by either phase is done, so that a rate
//! bought by losing tasks cannot pass.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use background::{Client, TaskSpec};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The options: `--connections N`, `--seconds S` (and `--bench`, which `cargo bench` adds).
struct Options {
    connections: usize,
    seconds: f64,
}

fn options() -> anyhow::Result<Options> {
    let mut opts = Options {
        connections: 50,
        seconds: 5.0,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bench" => {}
            "--connections" => {
                opts.connections = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|n| *n > 0)
                    .context("--connections takes a number above 0")?;
            }
            "--seconds" => {
                opts.seconds = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|s: &f64| *s > 0.0)
                    .context("--seconds takes a number above 0")?;
            }
            other => bail!("unknown option {other} (--connections N, --seconds S)"),
        }
    }
    Ok(opts)
}

fn main() -> ExitCode {
    let result = options().and_then(|opts| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(run(&opts))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("socket bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// One `queue:add` on a new connection; the task id.
async fn add(addr: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(b"queue:add:bg-noop:x\n").await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    answer
        .strip_prefix("id:")
        .map(str::to_owned)
        .with_context(|| format!("queue:add answered {answer:?}"))
}

async fn run(opts: &Options) -> anyhow::Result<()> {
    let redis = common::Redis::start();
    let mut con = redis.con().await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("appendonly")
        .arg("no")
        .query_async(&mut con)
        .await
        .context("CONFIG SET appendonly no")?;
    let workers = common::test_workers();
    let addr = format!("127.0.0.1:{}", common::free_port());
    let node = common::NodeProc::start(
        &redis,
        "bench-1",
        workers.path(),
        &[("BGNODE_SOCKET__LISTEN", addr.as_str())],
    );
    node.ready().await;
    node.wait_log("socket service on", Duration::from_secs(15))
        .await;
    let period = Duration::from_secs_f64(opts.seconds);

    // Warm up, and make sure the door is open.
    add(&addr).await?;
    let socket = rate(opts.connections, period, {
        let addr = Arc::new(addr.clone());
        move || {
            let addr = addr.clone();
            async move { add(&addr).await.map(|_| ()) }
        }
    })
    .await?;
    println!(
        "socket queue:add: {socket:.0} req/s over {} connections ({}s)",
        opts.connections, opts.seconds
    );

    let client = Client::connect(&redis.url).await?;
    let direct = rate(opts.connections, period, move || {
        let client = client.clone();
        async move {
            client
                .enqueue(TaskSpec::new("bg-noop", json!("x")))
                .await
                .map(|_| ())
                .map_err(anyhow::Error::from)
        }
    })
    .await?;
    println!(
        "Client::enqueue:  {direct:.0} tasks/s over {} concurrent callers (for comparison)",
        opts.connections
    );

    // Every task either phase stored runs: none was lost at the door.
    let client = Client::connect(&redis.url).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let counts = client.counts().await?;
        let waiting: u64 = ["pending", "claimed", "running"]
            .iter()
            .map(|s| counts.states.get(*s).copied().unwrap_or(0))
            .sum();
        if waiting == 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "tasks still waiting after the deadline: {:?}",
                counts.states
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("every stored task ran");
    Ok(())
}

/// Runs `connections` loops of `one` for `period`; completed calls per second.
async fn rate<F, Fut>(connections: usize, period: Duration, one: F) -> anyhow::Result<f64>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let end = started + period;
    let mut loops = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let one = one.clone();
        let done = done.clone();
        loops.spawn(async move {
            while Instant::now() < end {
                one().await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        });
    }
    while let Some(ended) = loops.join_next().await {
        ended??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}
