//! Settings: defaults, files, environment and flags, and the errors that name the key.

use super::*;

fn load(
    file: Option<&str>,
    env: &[(&str, &str)],
    flags: &[(&str, &str)],
) -> Result<Settings, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.toml");
    let file = file.map(|text| {
        std::fs::write(&path, text).unwrap();
        path.clone()
    });
    let mut sources = Sources {
        file,
        search_cwd: false,
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        flags: Vec::new(),
    };
    for (k, v) in flags {
        sources.flag(k, *v, &format!("--{}", k.rsplit('.').next().unwrap()));
    }
    Settings::load(&sources)
}

#[test]
fn defaults_come_from_the_shipped_file() {
    let s = Settings::defaults();
    assert_eq!(s.redis.channel, "background");
    assert_eq!(s.redis.prefix, "bg");
    assert_eq!(s.saver.result_ttl, Duration::from_secs(86_400));
    assert_eq!(s.workers.concurrency, 8);
    assert!(!s.node.id.is_empty(), "an empty id becomes the host name");
    assert!(s.uses_development_cookie());
    assert_eq!(s.queue_len(), 64);
    assert_eq!(s.keys.policy, KeyPolicy::Reject);
    assert_eq!(s.scheduler.missed, Missed::Coalesce);
    assert_eq!(s.workers.attempts, 1);
}

#[test]
fn file_then_environment_then_flags() {
    let file = "[workers]\nconcurrency = 3\ndir = \"/srv/w\"\n[redis]\nurl = \"redis://file:1\"\n";
    let seeds = load(None, &[], &[("node.seeds", "h1:1, h2:2")]).unwrap();
    assert_eq!(
        seeds.node.seeds,
        vec!["h1:1".to_string(), "h2:2".to_string()]
    );
    let s = load(
        Some(file),
        &[
            ("BGNODE_REDIS__URL", "redis://env:2"),
            ("BGNODE_NODE__SEEDS", "a:1,b:2"),
            ("HOME", "/x"),
        ],
        &[("workers.concurrency", "5")],
    )
    .unwrap();
    assert_eq!(s.redis.url, "redis://env:2");
    assert_eq!(s.workers.concurrency, 5);
    assert_eq!(s.workers.dir, PathBuf::from("/srv/w"));
    assert_eq!(s.node.seeds, vec!["a:1".to_string(), "b:2".to_string()]);
}

#[test]
fn unknown_keys_name_key_origin_and_suggestion() {
    let e = load(Some("[workers]\nconcurency = 3\n"), &[], &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("`workers.concurency`"), "{e}");
    assert!(e.contains("cluster.toml"), "{e}");
    assert!(e.contains("did you mean `workers.concurrency`"), "{e}");
    let e = load(None, &[("BGNODE_REDIS_URL", "redis://x")], &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("BGNODE_REDIS_URL"), "{e}");
    assert!(e.contains("BGNODE_<SECTION>__<KEY>"), "{e}");
    let e = load(None, &[("BGNODE_NOPE__X", "1")], &[])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`nope.x`") && e.contains("BGNODE_NOPE__X"),
        "{e}"
    );
}

#[test]
fn bad_values_name_key_and_origin() {
    let e = load(None, &[("BGNODE_WORKERS__CONCURRENCY", "0")], &[])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`workers.concurrency`") && e.contains("BGNODE_WORKERS__CONCURRENCY"),
        "{e}"
    );
    let e = load(Some("[node]\nlisten = \"nowhere\"\n"), &[], &[])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`node.listen`") && e.contains("cluster.toml"),
        "{e}"
    );
    let e = load(None, &[], &[("redis.url", "http://x")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("`redis.url`") && e.contains("--url"), "{e}");
    let e = load(Some("[workers]\nconcurrency = \"many\"\n"), &[], &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("workers.concurrency"), "{e}");
    let e = load(Some("[workers]\ntimeout = \"soon\"\n"), &[], &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("workers.timeout") || e.contains("soon"), "{e}");
    let e = load(Some("[workers\n"), &[], &[]).unwrap_err().to_string();
    assert!(e.contains("cluster.toml"), "{e}");
    let e = load(None, &[("BGNODE_KEYS__POLICY", "sometimes")], &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("keys.policy"), "{e}");
    let e = load(None, &[("BGNODE_SCHEDULER__MISSED", "skip")], &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("scheduler.missed"), "{e}");
    let e = load(Some("[node]\nid = \"a/b\"\n"), &[], &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("`node.id`"), "{e}");
}

#[test]
fn a_missing_config_file_is_an_error() {
    let e = Settings::load(&Sources {
        file: Some("/nonexistent/bg.toml".into()),
        ..Sources::default()
    })
    .unwrap_err();
    assert!(matches!(e, ConfigError::File { .. }), "{e}");
}

#[test]
fn suggests_only_keys_within_three_edits() {
    let known: BTreeMap<String, Value> = ["workers.concurrency", "workers.timeout", "redis.url"]
        .into_iter()
        .map(|k| (k.to_owned(), Value::from(1)))
        .collect();
    let near = |key| nearest(&known, key);
    assert_eq!(
        near("workers.concurency").as_deref(),
        Some("workers.concurrency")
    );
    assert_eq!(near("workers.timeuot").as_deref(), Some("workers.timeout"));
    assert_eq!(near("redis.uri").as_deref(), Some("redis.url"));
    assert_eq!(near("redis.host"), None, "four edits away is not a typo");
    assert_eq!(near("nope.x"), None);
}

#[test]
fn a_password_in_the_redis_url_is_never_shown() {
    for (url, shown) in [
        (
            "redis://:s3cret@127.0.0.1:6379/0",
            "redis://:***@127.0.0.1:6379/0",
        ),
        (
            "rediss://app:s3cret@cache.example:6380",
            "rediss://app:***@cache.example:6380",
        ),
        ("redis://s3cret@host", "redis://***@host"),
        ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
        ("redis://host/db@x", "redis://host/db@x"),
        ("not a url", "not a url"),
    ] {
        assert_eq!(redact_url(url), shown);
    }
    let mut sources = Sources::default();
    sources.flag("redis.url", "redis://:s3cret@[::1", "--redis");
    let err = Settings::load(&sources).unwrap_err().to_string();
    assert!(!err.contains("s3cret"), "{err}");
}

#[test]
fn a_password_parameter_in_an_archive_url_is_never_shown() {
    for (url, shown) in [
        (
            "postgres://app@db:5432/x?password=s3cret",
            "postgres://***@db:5432/x?password=***",
        ),
        (
            "postgres://db/x?sslmode=require&password=s3cret&application_name=a",
            "postgres://db/x?sslmode=require&password=***&application_name=a",
        ),
        (
            "host=db password=s3cret port=x",
            "host=db password=*** port=x",
        ),
        (
            r"host=db password = 'a \' s3cret' user=app",
            "host=db password = *** user=app",
        ),
        ("password='s3cret", "password=***"),
        ("host=db mypassword=x", "host=db mypassword=x"),
        ("postgres://db/password", "postgres://db/password"),
    ] {
        assert_eq!(redact_url(url), shown, "{url}");
    }
    let mut sources = Sources::default();
    sources.flag(
        "saver.archive",
        "host=db password=s3cret port=nope",
        "--save",
    );
    let err = Settings::load(&sources).unwrap_err().to_string();
    assert!(err.contains("saver.archive"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
}

#[test]
fn the_http_api_is_on_loopback_by_default_and_needs_a_token_elsewhere() {
    let s = Settings::defaults();
    assert_eq!(s.http_addr(), Some("127.0.0.1:7780".parse().unwrap()));
    assert!(s.http.token.is_empty());
    let off = load(None, &[("BGNODE_HTTP__LISTEN", "")], &[]).unwrap();
    assert_eq!(off.http_addr(), None, "an empty listen turns the API off");
    let e = load(None, &[("BGNODE_HTTP__LISTEN", "0.0.0.0:7780")], &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("`http.token`"), "{e}");
    assert!(e.contains("BGNODE_HTTP__LISTEN"), "{e}");
    assert!(e.contains("not a loopback address"), "{e}");
    let open = load(
        Some("[http]\nlisten = \"0.0.0.0:7780\"\ntoken = \"s3cret\"\n"),
        &[],
        &[],
    )
    .unwrap();
    assert_eq!(open.http.token, "s3cret");
    let e = load(None, &[("BGNODE_HTTP__LISTEN", "localhost")], &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("`http.listen`"), "{e}");
    let e = load(None, &[("BGNODE_HTTP__TOKEN", "two words")], &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("`http.token`"), "{e}");
    let v6 = load(None, &[("BGNODE_HTTP__LISTEN", "[::1]:7780")], &[]).unwrap();
    assert!(v6.http_addr().unwrap().ip().is_loopback());
}

#[test]
fn redis_tls_files_are_checked_at_start_naming_key_and_file() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls");
    let ca = fixtures.join("ca.pem").display().to_string();
    let cert = fixtures.join("node.pem").display().to_string();
    let key = fixtures.join("node.key").display().to_string();
    let tls_url = ("BGNODE_REDIS__URL", "rediss://:s3cret@127.0.0.1:6380");

    let s = load(None, &[], &[]).unwrap();
    assert!(
        matches!(s.redis.tls_certificates(), Ok(None)),
        "nothing set: no TLS files"
    );
    assert!(!s.redis.uses_tls());

    let s = load(
        None,
        &[
            tls_url,
            ("BGNODE_REDIS__TLS_CA", &ca),
            ("BGNODE_REDIS__TLS_CERT", &cert),
            ("BGNODE_REDIS__TLS_KEY", &key),
        ],
        &[],
    )
    .unwrap();
    assert!(s.redis.uses_tls());
    let files = s.redis.tls_certificates().unwrap().unwrap();
    assert!(files.root_cert.is_some() && files.client_tls.is_some());

    let err = |env: &[(&str, &str)]| load(None, env, &[]).unwrap_err().to_string();

    let e = err(&[tls_url, ("BGNODE_REDIS__TLS_CERT", &cert)]);
    assert!(
        e.contains("`redis.tls_key`") && e.contains("together"),
        "{e}"
    );
    let e = err(&[tls_url, ("BGNODE_REDIS__TLS_KEY", &key)]);
    assert!(
        e.contains("`redis.tls_cert`") && e.contains("together"),
        "{e}"
    );

    let e = err(&[tls_url, ("BGNODE_REDIS__TLS_CA", "/no/such/ca.pem")]);
    assert!(
        e.contains("`redis.tls_ca`")
            && e.contains("/no/such/ca.pem")
            && e.contains("BGNODE_REDIS__TLS_CA"),
        "{e}"
    );
    assert!(!e.contains("s3cret"), "{e}");

    // A file that is there but holds no certificate (here: a key).
    let e = err(&[tls_url, ("BGNODE_REDIS__TLS_CA", &key)]);
    assert!(
        e.contains("`redis.tls_ca`") && e.contains("no PEM certificate"),
        "{e}"
    );
    // A key file that holds a certificate.
    let e = err(&[
        tls_url,
        ("BGNODE_REDIS__TLS_CERT", &cert),
        ("BGNODE_REDIS__TLS_KEY", &cert),
    ]);
    assert!(
        e.contains("`redis.tls_key`") && e.contains("private key"),
        "{e}"
    );

    // Set for a plain redis:// URL, it would be ignored: an error, not a silent plain link.
    let e = err(&[
        ("BGNODE_REDIS__URL", "redis://:s3cret@h:1"),
        ("BGNODE_REDIS__TLS_CA", &ca),
    ]);
    assert!(
        e.contains("`redis.tls_ca`") && e.contains("rediss://"),
        "{e}"
    );
    assert!(!e.contains("s3cret"), "{e}");
}

#[test]
fn the_socket_service_is_off_by_default_and_its_limits_are_checked() {
    let s = Settings::defaults();
    assert_eq!(s.socket_addr(), None, "empty listen: no socket service");
    assert_eq!(s.socket.connections, 1024);
    assert_eq!(s.socket.idle_timeout, Duration::from_secs(30));
    assert_eq!(s.socket.wait, Duration::from_secs(60));
    let on = load(
        Some("[socket]\nlisten = \"127.0.0.1:12341\"\nidle_timeout = \"500ms\"\n"),
        &[("BGNODE_SOCKET__CONNECTIONS", "3")],
        &[],
    )
    .unwrap();
    assert_eq!(on.socket_addr(), Some("127.0.0.1:12341".parse().unwrap()));
    assert_eq!(on.socket.connections, 3);
    assert_eq!(on.socket.idle_timeout, Duration::from_millis(500));
    for (var, value, key) in [
        ("BGNODE_SOCKET__LISTEN", "localhost", "`socket.listen`"),
        ("BGNODE_SOCKET__CONNECTIONS", "0", "`socket.connections`"),
        (
            "BGNODE_SOCKET__CONNECTIONS",
            "70000",
            "`socket.connections`",
        ),
        ("BGNODE_SOCKET__IDLE_TIMEOUT", "0s", "`socket.idle_timeout`"),
        ("BGNODE_SOCKET__WAIT", "0s", "`socket.wait`"),
        ("BGNODE_SOCKET__WAIT", "2h", "`socket.wait`"),
    ] {
        let e = load(None, &[(var, value)], &[]).unwrap_err().to_string();
        assert!(e.contains(key), "{var}={value}: {e}");
        assert!(e.contains(var), "{var}={value}: {e}");
    }
    let e = load(None, &[("BGNODE_SOCKET__LISTN", "x")], &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("did you mean `socket.listen`"), "{e}");
}
