//! The Python client's test suite (`clients/python/tests`), run by `cargo test`: a virtualenv
//! in a temporary folder with redis-py and pytest from PyPI, then pytest against a real
//! `redis-server` and a real `bgnode` that the suite starts itself. The client is written from
//! PROTOCOL.md alone, so where the document and the code disagree this test fails.

use std::path::Path;
use std::process::Command;

fn run(what: &str, cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} failed:\n{text}");
    text
}

#[test]
fn the_python_client_passes_its_suite_against_a_real_node() {
    let client = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/python");
    let venv = tempfile::tempdir().unwrap();
    run(
        "python3 -m venv (Debian: the python3-venv package; ./dev test installs it)",
        Command::new("python3")
            .arg("-m")
            .arg("venv")
            .arg(venv.path()),
    );
    let python = venv.path().join("bin/python");
    run(
        "pip install redis pytest (from PyPI)",
        Command::new(&python).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "redis",
            "pytest",
        ]),
    );
    let out = run(
        "pytest clients/python/tests",
        Command::new(&python)
            .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"])
            .current_dir(&client)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONPATH", &client)
            .env("BGNODE_BIN", env!("CARGO_BIN_EXE_bgnode")),
    );
    assert!(out.contains(" passed"), "pytest ran nothing:\n{out}");
    assert!(!out.contains("skipped"), "pytest skipped tests:\n{out}");
}
