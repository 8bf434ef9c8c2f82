//! TLS to Redis: nodes, the library client and the CLI on a `rediss://` server that speaks TLS
//! only, with a CA and certificates made by the test (`Redis::start_tls`).

mod common;

use std::time::Duration;

use background::{Client, Settings, Sources, TaskSpec};
use common::{NodeProc, Redis, cli_env, eventually, test_workers, wait_state};
use serde_json::json;

/// The `BGNODE_REDIS__TLS_*` variables of `redis`'s certificates, borrowed as the helpers take
/// them.
fn tls_env(redis: &Redis) -> Vec<(&'static str, String)> {
    redis.tls.as_ref().expect("a TLS server").env()
}

fn borrowed<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Settings for the library client, loaded as the CLI loads them (so the files are checked).
fn settings(redis: &Redis, env: &[(&'static str, String)]) -> Settings {
    let mut sources = Sources::default();
    sources.flag("redis.url", redis.url.as_str(), "--redis");
    sources.env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    Settings::load(&sources).expect("valid settings")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_runs_tasks_over_rediss_trusting_the_configured_ca() {
    let redis = Redis::start_tls(false);
    assert!(redis.url.starts_with("rediss://"));
    let workers = test_workers();
    let env = tls_env(&redis);
    let node = NodeProc::start(&redis, "n1", workers.path(), &borrowed(&env));
    // Subscribed: the ingress's own RESP3 connection crossed TLS too.
    node.ready().await;
    let events = redis.events().await;

    // The ingress subscription: a raw publish.
    let receivers = redis
        .publish(
            "background",
            r#"{"worker":"echo","id":"raw-tls","args":{"x":1}}"#,
        )
        .await;
    assert_eq!(
        receivers, 1,
        "the node listens on the task channel over TLS"
    );
    wait_state(&redis, "raw-tls", "done").await;

    // The library client, with the CA passed in its settings.
    let client = Client::from_settings(&settings(&redis, &env))
        .await
        .unwrap();
    let value = client
        .call(
            TaskSpec::new("echo", json!({"over": "tls"})),
            Duration::from_secs(20),
        )
        .await
        .unwrap();
    assert_eq!(value, json!({"over": "tls"}));

    // An event wait: a subscription of the client's own.
    let id = client
        .enqueue(TaskSpec::new("nap", json!({"s": 0.2})))
        .await
        .unwrap();
    let value = client.wait(&id, Duration::from_secs(20)).await.unwrap();
    assert_eq!(value, json!({"s": 0.2}));

    // Remote control: published to the ingress holder, answered on a reply channel.
    let (code, out, err) = cli_env(&redis, &borrowed(&env), &["reload", "--all"]).await;
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("n1"), "{out}");

    // The CLI, with the CA from the environment: `do --wait` (pub/sub wait) and `status`.
    let (code, out, err) = cli_env(
        &redis,
        &borrowed(&env),
        &["do", "echo", r#"{"cli":1}"#, "--wait", "--id", "cli-tls"],
    )
    .await;
    assert_eq!((code, out.trim()), (0, r#"{"cli":1}"#), "stderr: {err}");
    let (code, out, err) = cli_env(&redis, &borrowed(&env), &["status", "cli-tls", "--json"]).await;
    assert_eq!(code, 0, "stderr: {err}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["state"], "done");
    assert_eq!(status["node"], "n1");

    // Events crossed TLS to the test's own subscriber.
    eventually(
        Duration::from_secs(10),
        "a done event for raw-tls",
        || async {
            events
                .of("done")
                .iter()
                .any(|e| e["id"] == "raw-tls")
                .then_some(())
        },
    )
    .await;
    // The server really is TLS only: its log says so and a plain URL finds nothing to talk to.
    let plain = redis.url.replacen("rediss://", "redis://", 1);
    assert!(Client::connect(&plain).await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn client_certificates_are_shown_to_a_server_that_requires_them() {
    let redis = Redis::start_tls(true);
    let workers = test_workers();
    let env = tls_env(&redis);
    assert_eq!(env.len(), 3, "CA, client certificate and key");
    let node = NodeProc::start(&redis, "n1", workers.path(), &borrowed(&env));
    node.ready().await;

    let (code, out, err) = cli_env(
        &redis,
        &borrowed(&env),
        &["do", "echo", r#"{"mtls":true}"#, "--wait"],
    )
    .await;
    assert_eq!((code, out.trim()), (0, r#"{"mtls":true}"#), "stderr: {err}");

    // The CA alone is not enough for this server: the CLI is refused, clearly, without a panic.
    let ca_only = &env[..1];
    let (code, out, err) = cli_env(&redis, &borrowed(ca_only), &["status", "nope"]).await;
    assert_ne!(code, 0, "stdout: {out}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.to_lowercase().contains("redis"), "{err}");
    assert!(
        err.contains("redis.tls_cert"),
        "the error points at the setting: {err}"
    );
    let client = Client::from_settings(&settings(&redis, ca_only)).await;
    let err = client.expect_err("a client without a certificate is refused");
    assert!(err.to_string().contains("redis.tls_cert"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_ca_the_connection_is_refused_naming_the_certificate() {
    let redis = Redis::start_tls(false);
    // With a password in the URL, which no message may show.
    let url = redis.url.replacen("rediss://", "rediss://:s3cret@", 1);

    // The CLI: exits with an error naming Redis and the unknown certificate issuer.
    let (code, out, err) =
        cli_env(&redis, &[("BGNODE_REDIS__URL", &url)], &["status", "nope"]).await;
    assert_ne!(code, 0, "stdout: {out}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("certificate"), "{err}");
    assert!(
        err.contains("redis.tls_ca"),
        "the error points at the setting: {err}"
    );
    assert!(
        err.contains("rediss://:***@127.0.0.1") && !err.contains("s3cret"),
        "{err}"
    );

    // The library client: an error, not a panic.
    let err = Client::connect(&redis.url).await.unwrap_err().to_string();
    assert!(err.contains("certificate"), "{err}");

    // A node: stops at start with the same message in its log.
    let workers = test_workers();
    // At once: a certificate problem is not waited out as an unreachable Redis is (30 s).
    let log = NodeProc::refused_at_start(&url, "n1", workers.path()).await;
    assert!(log.contains("certificate"), "{log}");
    assert!(!log.contains("s3cret"), "{log}");
}
