//! The quick start's `./dev` script, run as a user would. `cargo` is replaced by a stub that
//! records how it was called (and whether Redis answered then), and a machine without Redis is
//! simulated with a PATH that hides `redis-server` and `redis-cli` and a stub `apt-get` that
//! records its arguments and then "installs" them.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{Redis, free_port, write_script};

/// The repository's root, where `dev` is.
fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Where `name` is on the PATH.
fn which(name: &str) -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is not on the PATH"))
}

/// A folder to use as the whole PATH: `stubs` (name, script), then every command of the
/// current PATH except those named in `hidden`.
fn bin_dir(hidden: &[&str], stubs: &[(&str, String)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, body) in stubs {
        write_script(dir.path(), name, body);
    }
    for folder in std::env::split_paths(&std::env::var_os("PATH").unwrap()) {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let to = dir.path().join(&name);
            if hidden.iter().any(|h| name == *h) || to.exists() || to.is_symlink() {
                continue;
            }
            std::os::unix::fs::symlink(entry.path(), to).unwrap();
        }
    }
    dir
}

/// A stub `cargo` that appends `cargo ARGS` to `$DEV_LOG`, and for `cargo run` the answer of
/// the Redis at `BGNODE_REDIS__URL` (always set by these tests: never the machine's own Redis).
fn cargo_stub() -> (&'static str, String) {
    (
        "cargo",
        concat!(
            "#!/bin/sh\necho \"cargo $*\" >> \"$DEV_LOG\"\n",
            "if [ \"$1\" = run ]; then redis-cli -u \"$BGNODE_REDIS__URL\" ping >> \"$DEV_LOG\" 2>&1; fi\n",
        )
        .into(),
    )
}

/// Runs `./dev ARGS` with `path` as the PATH; returns its output and what the stubs recorded.
fn dev(path: &Path, env: &[(&str, &str)], args: &[&str]) -> (Output, Vec<String>) {
    let log = path.join("calls.log");
    let _ = std::fs::remove_file(&log);
    let out = std::process::Command::new(root().join("dev"))
        .args(args)
        .env("PATH", path)
        .env("DEV_LOG", &log)
        .env_remove("BGNODE_REDIS__URL")
        .envs(env.iter().copied())
        .output()
        .expect("run ./dev");
    let calls = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    (out, calls)
}

#[test]
fn dev_test_installs_what_is_missing_then_runs_the_tests() {
    let server = which("redis-server");
    let client = which("redis-cli");
    let driver = which("chromedriver");
    // chromium-driver's command is not named as the package: installed is told by the command.
    let apt_get = format!(
        "#!/bin/sh\necho \"apt-get $*\" >> \"$DEV_LOG\"\ncase \"$*\" in *install*)\n  ln -s {} \"$(dirname \"$0\")/redis-server\"\n  ln -s {} \"$(dirname \"$0\")/redis-cli\"\n  ln -s {} \"$(dirname \"$0\")/chromedriver\" ;;\nesac\n",
        server.display(),
        client.display(),
        driver.display()
    );
    let sudo = "#!/bin/sh\necho \"sudo $*\" >> \"$DEV_LOG\"\nexec \"$@\"\n".to_owned();
    // postgresql is installed when initdb is where Debian puts it, even off the PATH: where it
    // is there, the PATH hides initdb too, and postgresql is still not installed again.
    let mut hidden = vec!["redis-server", "redis-cli", "chromedriver"];
    let debian_initdb = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.path().join("bin/initdb").is_file());
    if debian_initdb {
        hidden.push("initdb");
    }
    let bin = bin_dir(
        &hidden,
        &[cargo_stub(), ("apt-get", apt_get), ("sudo", sudo)],
    );
    let (out, calls) = dev(bin.path(), &[], &["test", "--lib", "tidy"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("installing redis-server chromium-driver with apt-get"),
        "{stderr}"
    );
    // As root apt-get runs directly, else through sudo (the stub records both).
    let apt: Vec<&str> = calls
        .iter()
        .filter(|c| !c.starts_with("sudo"))
        .map(String::as_str)
        .collect();
    assert_eq!(
        apt,
        [
            "apt-get update",
            "apt-get install -y redis-server chromium-driver",
            "cargo test --lib tidy"
        ],
        "{calls:?}"
    );

    // Installed now: nothing more to install.
    let (out, calls) = dev(bin.path(), &[], &["test"]);
    assert!(out.status.success());
    assert_eq!(calls, ["cargo test"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_node_uses_a_running_redis_and_starts_a_private_one_when_none_answers() {
    let bin = bin_dir(&[], &[cargo_stub()]);

    // A Redis answers at the URL: it is used, and left as it was.
    let redis = Redis::start();
    let (out, calls) = dev(
        bin.path(),
        &[("BGNODE_REDIS__URL", &redis.url)],
        &["node", "--id", "n7"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("using the Redis that answers"), "{stderr}");
    assert_eq!(calls, ["cargo run -- start --id n7", "PONG"], "{stderr}");
    let mut con = redis.con().await;
    let pong: String = redis::cmd("PING").query_async(&mut con).await.unwrap();
    assert_eq!(pong, "PONG");

    // Nothing answers at a local URL: a private redis-server runs while the node does, its
    // data under target/, and is stopped after.
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let (out, calls) = dev(bin.path(), &[("BGNODE_REDIS__URL", &url)], &["node"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(calls, ["cargo run -- start", "PONG"], "{stderr}");
    let data = root().join(format!("target/dev-redis/{port}"));
    assert!(
        stderr.contains(&format!("started a private redis-server on port {port}"))
            && stderr.contains("stopped the private redis-server"),
        "{stderr}"
    );
    assert!(data.join("redis.log").is_file());
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the private redis-server was stopped"
    );
    let _ = std::fs::remove_dir_all(data);
}
