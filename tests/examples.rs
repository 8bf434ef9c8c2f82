//! The examples run as a user would run them, against a Redis of the test's own: the node
//! embedded with its builder, and the node started as a linked child of a host's ractor actor.
//! `cargo test` builds the examples beside the binaries; each is run as its own process.

mod common;

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use common::{Redis, free_port};

/// The built example `name`, beside the `bgnode` binary.
fn example(name: &str) -> PathBuf {
    let bin = PathBuf::from(common::bgnode_bin());
    let path = bin
        .parent()
        .expect("the binary has a folder")
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "{} is not built: run the whole `cargo test`, which builds the examples",
        path.display()
    );
    path
}

/// Runs example `name` against `redis` in an empty folder, at most a minute.
async fn run(name: &str, redis: &Redis) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let run = tokio::process::Command::new(example(name))
        .current_dir(dir.path())
        .env("BGNODE_REDIS__URL", &redis.url)
        .env("BGNODE_NODE__LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("BGNODE_NODE__COOKIE", "test-cookie")
        .env("BGNODE_HTTP__LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("BGNODE_WORKERS__DIR", dir.path())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .unwrap_or_else(|_| panic!("example {name} did not finish within a minute"))
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_embedded_example_runs_its_tasks_and_shuts_down() {
    let redis = Redis::start();
    let out = run("embedded", &redis).await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("flaky (panic): Err("),
        "a panicking worker fails its task: {stdout}"
    );
    assert!(
        stdout.contains("flaky after the crash: \"fine\""),
        "the worker runs again after a panic: {stdout}"
    );
    assert!(stdout.contains("\"width\":640"), "{stdout}");
    assert!(
        stdout.contains("drained: true") && stdout.contains("flushed: true"),
        "a graceful shutdown: {stdout}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_linked_example_runs_the_node_under_a_host_actor() {
    let redis = Redis::start();
    let out = run("linked", &redis).await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("started under the host actor"), "{stdout}");
    assert!(
        stdout.contains("greet Ada: \"hello, Ada (from "),
        "{stdout}"
    );
    assert!(
        stdout.contains("greet Grace: \"hello, Grace (from "),
        "{stdout}"
    );
    assert!(
        stdout.contains("node shut down: ShutdownReport { drained: true, flushed: true"),
        "the host's post_stop shuts the node down gracefully: {stdout}"
    );
}
