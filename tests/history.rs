//! The archive from the outside: a schema left by an older release brought up to date (and one
//! from a newer release refused), `bgnode history` and its filters, `bgnode status` of a task
//! Redis no longer holds, bad archive settings and queries, an archive that cannot be reached,
//! and TLS to PostgreSQL. Real `bgnode` processes, a real Redis and a real PostgreSQL.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use background::time::format_timestamp;
use background::{Client, TaskSpec};
use common::{NodeProc, Postgres, Redis, TlsFiles, cli_env, eventually, test_workers, wait_state};
use serde_json::{Value, json};

const T: Duration = common::WAIT;

/// `bgnode_migrations` as every release makes it.
const MIGRATIONS_TABLE: &str = "CREATE TABLE bgnode_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)";

/// What version 1 of the schema made (`actors/archive/schema.rs`), as a release that knew only
/// that version left the database.
const VERSION_1: &str = "CREATE TABLE bgnode_tasks (
    cluster text NOT NULL,
    id text NOT NULL,
    worker text NOT NULL,
    state text NOT NULL,
    args jsonb,
    result jsonb,
    error text,
    attempts integer NOT NULL DEFAULT 0,
    node text,
    priority integer NOT NULL DEFAULT 0,
    key text,
    created_at timestamptz,
    started_at timestamptz,
    finished_at timestamptz NOT NULL,
    run_ms bigint,
    PRIMARY KEY (cluster, id)
)";

/// Text values as `Postgres::query` returns them.
fn text(rows: &[&[Option<&str>]]) -> Vec<Vec<Option<String>>> {
    rows.iter()
        .map(|row| row.iter().map(|v| v.map(str::to_owned)).collect())
        .collect()
}

/// Waits until database `db` holds `n` archived tasks.
async fn wait_archived(pg: &Postgres, db: &str, n: usize) {
    let want = text(&[&[Some(&n.to_string())]]);
    let made = text(&[&[Some("t")]]);
    eventually(T, &format!("{n} rows in {db}'s bgnode_tasks"), || async {
        // The node may not have made the table yet.
        let exists = pg
            .query_in_async(db, "SELECT to_regclass('bgnode_tasks') IS NOT NULL")
            .await;
        let count = pg.query_in_async(db, "SELECT count(*) FROM bgnode_tasks");
        (exists == made && count.await == want).then_some(())
    })
    .await;
}

/// The value of a metric without labels in a node's `/metrics`.
async fn metric(node: &NodeProc, name: &str) -> f64 {
    let answer = common::http::request(&node.http, "GET", "/metrics", &[], None).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer
        .body
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{}", answer.body))
}

/// Enqueues `specs` and waits until each has reached its final state (`done` for `echo`, `dead`
/// for `fail`, which has one attempt).
async fn run(redis: &Redis, specs: Vec<TaskSpec>) {
    let client = Client::connect(&redis.url).await.unwrap();
    let ends: Vec<(String, &str)> = specs
        .iter()
        .map(|s| {
            let end = if s.worker == "fail" { "dead" } else { "done" };
            (s.id.clone().unwrap(), end)
        })
        .collect();
    client.enqueue_all(specs).await.unwrap();
    for (id, end) in ends {
        wait_state(redis, &id, end).await;
    }
}

fn echo(id: &str, n: u32) -> TaskSpec {
    TaskSpec::new("echo", json!({ "n": n })).id(id)
}

fn fail(id: &str, n: u32) -> TaskSpec {
    TaskSpec::new("fail", json!({ "n": n })).id(id)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_older_schema_is_brought_up_to_date_at_start() {
    let pg = Postgres::start();
    // As a release that knew only version 1 left it, with one task archived.
    pg.execute_async(&format!(
        "{MIGRATIONS_TABLE};
        INSERT INTO bgnode_migrations (version, name, applied_at)
            VALUES (1, 'finished tasks', '2020-01-01T00:00:00Z');
        {VERSION_1};
        INSERT INTO bgnode_tasks (cluster, id, worker, state, args, attempts, node, finished_at,
                run_ms)
            VALUES ('bg', 'from-v1', 'echo', 'done', '{{\"old\": true}}', 1, 'n0',
                '2020-01-02T03:04:05.678Z', 12)"
    ))
    .await;
    // As a release that knows version 99 left it.
    pg.execute_async("CREATE DATABASE newer").await;
    pg.execute_in_async(
        "newer",
        &format!(
            "{MIGRATIONS_TABLE};
            INSERT INTO bgnode_migrations (version, name)
                VALUES (1, 'finished tasks'), (99, 'from a later release');
            {VERSION_1}"
        ),
    )
    .await;

    let redis = Redis::start();
    let workers = test_workers();
    let node = NodeProc::start(
        &redis,
        "n1",
        workers.path(),
        &[("BGNODE_SAVER__ARCHIVE", &pg.url)],
    );
    let two = text(&[&[Some("2")]]);
    eventually(T, "version 2 in bgnode_migrations", || async {
        (pg.query_async("SELECT max(version) FROM bgnode_migrations")
            .await
            == two)
            .then_some(())
    })
    .await;
    node.wait_log("the archive's schema was brought up to date", T)
        .await;
    assert!(node.log().contains("applied=[2]"), "{}", node.log());

    // Version 1 was left as it was; version 2 was added.
    assert_eq!(
        pg.query_async(
            "SELECT version, name, applied_at = '2020-01-01T00:00:00Z' FROM bgnode_migrations
            ORDER BY version"
        )
        .await,
        text(&[
            &[Some("1"), Some("finished tasks"), Some("t")],
            &[Some("2"), Some("origins and history indexes"), Some("f")],
        ])
    );
    assert_eq!(
        pg.query_async(
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns
            WHERE table_name = 'bgnode_tasks' AND column_name IN ('template', 'parent', 'archived_at')
            ORDER BY column_name"
        )
        .await,
        text(&[
            &[
                Some("archived_at"),
                Some("timestamp with time zone"),
                Some("NO")
            ],
            &[Some("parent"), Some("text"), Some("YES")],
            &[Some("template"), Some("text"), Some("YES")],
        ])
    );
    let indexes = pg
        .query_async(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'bgnode_tasks'
            ORDER BY indexname",
        )
        .await;
    let names: Vec<&str> = indexes.iter().map(|r| r[0].as_deref().unwrap()).collect();
    assert_eq!(
        names,
        [
            "bgnode_tasks_finished",
            "bgnode_tasks_pkey",
            "bgnode_tasks_worker"
        ]
    );
    let finished_def = indexes[0][1].as_deref().unwrap();
    assert!(
        finished_def.contains("(cluster, finished_at DESC, id DESC)"),
        "{finished_def}"
    );

    // The old row is still there, and reads back through the new columns.
    assert_eq!(
        pg.query_async(
            "SELECT id, worker, state, args::text, attempts, node, run_ms, template, parent,
                archived_at IS NOT NULL
            FROM bgnode_tasks WHERE cluster = 'bg'"
        )
        .await,
        text(&[&[
            Some("from-v1"),
            Some("echo"),
            Some("done"),
            Some(r#"{"old": true}"#),
            Some("1"),
            Some("n0"),
            Some("12"),
            None,
            None,
            Some("t"),
        ]])
    );
    let env = [("BGNODE_SAVER__ARCHIVE", pg.url.as_str())];
    let (code, out, err) = cli_env(
        &redis,
        &env,
        &["history", "--json", "--until", "2021-01-01"],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let old: Value = serde_json::from_str(out.trim()).expect("one JSON line");
    assert_eq!(
        (&old["id"], &old["args"], &old["finished"], &old["node"]),
        (
            &json!("from-v1"),
            &json!({"old": true}),
            &json!(1_577_934_245_678_i64),
            &json!("n0")
        )
    );

    // New tasks land in the new columns, archived after they ended.
    run(&redis, vec![echo("after-1", 1), fail("after-2", 2)]).await;
    wait_archived(&pg, "postgres", 3).await;
    assert_eq!(
        pg.query_async(
            "SELECT id, state, archived_at >= finished_at,
                archived_at > now() - interval '5 minutes'
            FROM bgnode_tasks WHERE id LIKE 'after-%' ORDER BY id"
        )
        .await,
        text(&[
            &[Some("after-1"), Some("done"), Some("t"), Some("t")],
            &[Some("after-2"), Some("dead"), Some("t"), Some("t")],
        ])
    );
    drop(node);

    // A schema newer than this build: refused, nothing written, tasks still run and their rows
    // wait in Redis.
    let redis = Redis::start();
    let newer_url = pg.url_of("newer");
    let node = NodeProc::start(
        &redis,
        "n2",
        workers.path(),
        &[("BGNODE_SAVER__ARCHIVE", &newer_url)],
    );
    node.ready().await;
    run(&redis, vec![echo("v99-1", 1), echo("v99-2", 2)]).await;
    node.wait_log("newer than this bgnode knows", T).await;
    assert!(node.log().contains("at version 99"), "{}", node.log());
    assert_eq!(
        redis.archive_waiting(&["n2"]).await,
        2,
        "both rows wait in the outbox"
    );
    assert_eq!(
        pg.query_in_async("newer", "SELECT count(*) FROM bgnode_tasks")
            .await,
        text(&[&[Some("0")]])
    );
    assert_eq!(
        pg.query_in_async(
            "newer",
            "SELECT version FROM bgnode_migrations ORDER BY version"
        )
        .await,
        text(&[&[Some("1")], &[Some("99")]])
    );
    assert_eq!(
        pg.query_in_async(
            "newer",
            "SELECT column_name FROM information_schema.columns
            WHERE table_name = 'bgnode_tasks' AND column_name = 'archived_at'"
        )
        .await,
        text(&[]),
        "no migration ran on a newer schema"
    );
}

/// `bgnode history ARGS --json` against the archive at `url`: the ids listed, in order.
async fn history_ids(redis: &Redis, url: &str, args: &[&str]) -> Vec<String> {
    let mut all = vec!["history"];
    all.extend(args);
    all.push("--json");
    let (code, out, err) = cli_env(redis, &[("BGNODE_SAVER__ARCHIVE", url)], &all).await;
    assert_eq!(code, 0, "{args:?}: {err}");
    out.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            v["id"].as_str().expect("an id").to_owned()
        })
        .collect()
}

/// `bgnode history ARGS` as a table against the archive at `url`: its rows split at
/// whitespace, and stderr.
async fn history_table(redis: &Redis, url: &str, args: &[&str]) -> (Vec<Vec<String>>, String) {
    let mut all = vec!["history"];
    all.extend(args);
    let (code, out, err) = cli_env(redis, &[("BGNODE_SAVER__ARCHIVE", url)], &all).await;
    assert_eq!(code, 0, "{args:?}: {err}");
    let mut lines = out.lines();
    let rows = match lines.next() {
        None => Vec::new(),
        Some(header) => {
            assert!(header.starts_with("ID "), "{args:?}: {out}");
            lines
                .map(|l| l.split_whitespace().map(str::to_owned).collect())
                .collect()
        }
    };
    (rows, err)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test(flavor = "multi_thread")]
async fn history_filters_and_status_falls_back_to_the_archive() {
    let pg = Postgres::start();
    let (redis, _workers, _node) = common::one_node(&[("BGNODE_SAVER__ARCHIVE", &pg.url)]).await;
    // Two done and one dead, then, three seconds later at least, one done and two dead.
    run(
        &redis,
        vec![echo("early-1", 1), echo("early-2", 2), fail("early-3", 3)],
    )
    .await;
    wait_archived(&pg, "postgres", 3).await;
    let later = Duration::from_secs(3);
    run(
        &redis,
        vec![
            echo("late-1", 4).delay(later),
            fail("late-2", 5).delay(later),
            fail("late-3", 6).delay(later),
        ],
    )
    .await;
    wait_archived(&pg, "postgres", 6).await;

    // Every row with its end (ms), latest first, as the archive orders them.
    let all: Vec<(String, String, i64)> = pg
        .query_async(
            "SELECT id, worker, (extract(epoch FROM finished_at) * 1000)::int8 FROM bgnode_tasks
            ORDER BY finished_at DESC, id DESC",
        )
        .await
        .into_iter()
        .map(|r| {
            (
                r[0].clone().unwrap(),
                r[1].clone().unwrap(),
                r[2].as_deref().unwrap().parse().unwrap(),
            )
        })
        .collect();
    let ends = |prefix: &str| {
        all.iter()
            .filter(|(id, ..)| id.starts_with(prefix))
            .map(|(.., at)| *at)
            .collect::<Vec<_>>()
    };
    let (early_first, early_last) = (
        *ends("early").iter().min().unwrap(),
        *ends("early").iter().max().unwrap(),
    );
    let late_first = *ends("late").iter().min().unwrap();
    assert!(
        late_first - early_last >= 2_000,
        "the late tasks ended at least 2 s after the early ones: {all:?}"
    );
    let only = |keep: &dyn Fn(&str, &str, i64) -> bool| -> Vec<String> {
        all.iter()
            .filter(|(id, worker, at)| keep(id, worker, *at))
            .map(|(id, ..)| id.clone())
            .collect()
    };
    let at = |ms: i64| format_timestamp(ms as u64);
    let (late_at, early_first_at) = (at(late_first), at(early_first));
    // The middle of the gap, as a duration ago when the command runs (it has 1 s of slack).
    let middle = (early_last + late_first) / 2;
    let ago = format!("{}ms", now_ms() - middle);

    let cases: Vec<(Vec<&str>, Vec<String>)> = vec![
        (vec![], only(&|_, _, _| true)),
        (vec!["--worker", "echo"], only(&|_, w, _| w == "echo")),
        (vec!["--worker", "fail"], only(&|_, w, _| w == "fail")),
        (vec!["--worker", "nap"], vec![]),
        (vec!["--state", "done"], only(&|_, w, _| w == "echo")),
        (vec!["--state", "dead"], only(&|_, w, _| w == "fail")),
        (vec!["--state", "cancelled"], vec![]),
        (vec!["--worker", "fail", "--state", "done"], vec![]),
        // `since` is inclusive, `until` exclusive.
        (
            vec!["--since", &late_at],
            only(&|id, _, _| id.starts_with("late")),
        ),
        (
            vec!["--until", &late_at],
            only(&|id, _, _| id.starts_with("early")),
        ),
        (
            vec!["--since", &early_first_at, "--until", &late_at],
            only(&|id, _, _| id.starts_with("early")),
        ),
        (
            vec!["--worker", "fail", "--since", &late_at],
            only(&|id, w, _| w == "fail" && id.starts_with("late")),
        ),
        (vec!["--since", "1h"], only(&|_, _, _| true)),
        (vec!["--until", "1h"], vec![]),
        (
            vec!["--since", &ago],
            only(&|id, _, _| id.starts_with("late")),
        ),
        (
            vec!["--until", &ago],
            only(&|id, _, _| id.starts_with("early")),
        ),
        (vec!["--id", "late-2"], vec!["late-2".into()]),
        (vec!["--id", "early-2", "--state", "dead"], vec![]),
        (vec!["--id", "nowhere"], vec![]),
        (vec!["--limit", "2"], only(&|_, _, _| true)[..2].to_vec()),
        (
            vec!["--limit", "2", "--worker", "fail"],
            only(&|_, w, _| w == "fail")[..2].to_vec(),
        ),
    ];
    for (args, want) in &cases {
        assert_eq!(
            &history_ids(&redis, &pg.url, args).await,
            want,
            "history {args:?} --json; every row: {all:?}"
        );
        let (rows, err) = history_table(&redis, &pg.url, args).await;
        let ids: Vec<&String> = rows.iter().map(|r| &r[0]).collect();
        assert_eq!(
            ids,
            want.iter().collect::<Vec<_>>(),
            "history {args:?}; every row: {all:?}"
        );
        assert_eq!(
            err.contains("no finished task in the archive matches"),
            want.is_empty(),
            "history {args:?}: {err}"
        );
    }
    // No filter above came out empty by accident.
    assert_eq!(
        cases.iter().filter(|(_, want)| want.is_empty()).count(),
        6,
        "{cases:?}"
    );
    let (_, err) = history_table(&redis, &pg.url, &["--limit", "2"]).await;
    assert!(err.contains("(more: raise --limit"), "{err}");
    let (_, err) = history_table(&redis, &pg.url, &["--limit", "6"]).await;
    assert!(!err.contains("more"), "{err}");

    // A row in full, as JSON and in the table, against the task's record in Redis.
    let (code, out, err) = cli_env(
        &redis,
        &[("BGNODE_SAVER__ARCHIVE", &pg.url)],
        &["history", "--id", "early-3", "--json"],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let row: Value = serde_json::from_str(out.trim()).unwrap();
    let created = common::num_field(&redis, "early-3", "created").await as i64;
    let started = common::num_field(&redis, "early-3", "started").await as i64;
    let finished = common::num_field(&redis, "early-3", "finished").await as i64;
    assert_eq!(
        row,
        json!({
            "id": "early-3", "worker": "fail", "state": "dead", "args": {"n": 3},
            "result": null, "error": redis.task_field("early-3", "error").await,
            "attempts": 1, "node": "n1", "priority": 0, "key": null,
            "created": created, "started": started, "finished": finished,
            "run_ms": finished - started, "template": null, "parent": null,
        })
    );
    assert!(
        row["error"]
            .as_str()
            .unwrap()
            .contains("the disk is on fire"),
        "{row}"
    );
    let (rows, _) = history_table(&redis, &pg.url, &["--id", "early-3"]).await;
    assert_eq!(
        rows[0][..6],
        [
            "early-3".to_owned(),
            "fail".into(),
            "dead".into(),
            "1".into(),
            "n1".into(),
            format_timestamp(finished as u64)
        ]
    );

    // Gone from Redis: `bgnode status` reads the archive.
    let archive = [("BGNODE_SAVER__ARCHIVE", pg.url.as_str())];
    let (code, out, err) = cli_env(&redis, &archive, &["status", "early-1"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("archived"), "still in Redis: {out}");
    let mut con = redis.con().await;
    let removed: u32 = redis::cmd("DEL")
        .arg("bg:task:early-1")
        .arg("bg:task:early-3")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(removed, 2);
    let (code, out, err) = cli_env(&redis, &archive, &["status", "early-1"]).await;
    assert_eq!(code, 0, "{err}");
    for line in [
        "id:       early-1",
        "worker:   echo",
        "state:    done (archived: no longer in Redis)",
        "node:     n1",
        "attempt:  1",
        r#"result:   {"n":1}"#,
    ] {
        assert!(out.contains(line), "{line:?} in:\n{out}");
    }
    let (code, out, err) = cli_env(&redis, &archive, &["status", "early-3", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let status: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(status["archived"], true, "{status}");
    assert_eq!(
        (&status["id"], &status["state"], &status["worker"]),
        (&json!("early-3"), &json!("dead"), &json!("fail"))
    );
    assert_eq!(status["error"], row["error"]);
    // Without the archive, or in neither: not found.
    let (code, _, err) = common::cli(&redis, &["status", "early-1"]).await;
    assert_eq!(code, 3, "{err}");
    let (code, out, err) = cli_env(&redis, &archive, &["status", "nowhere"]).await;
    assert_eq!((code, out.as_str()), (3, ""), "{err}");
    assert!(err.contains("no task nowhere"), "{err}");
}

/// A refused start: its environment, its arguments, what its error must say.
type StartCase<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str], &'a [&'a str]);

/// `bgnode start ARGS` with `env`, which must exit within the deadline: its exit code and
/// stderr.
async fn start_refused(redis: &Redis, env: &[(&str, &str)], args: &[&str]) -> (i32, String) {
    let workers = test_workers();
    let child = tokio::process::Command::new(common::bgnode_bin())
        .arg("start")
        .args(args)
        .env_remove("BGNODE_CONFIG")
        .env("BGNODE_REDIS__URL", &redis.url)
        .env("BGNODE_NODE__COOKIE", "test-cookie")
        .env(
            "BGNODE_NODE__LISTEN",
            format!("127.0.0.1:{}", common::free_port()),
        )
        .env("BGNODE_WORKERS__DIR", workers.path())
        .env("BGNODE_HTTP__LISTEN", "")
        .envs(env.iter().copied())
        .current_dir(std::env::temp_dir())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run bgnode start");
    let out = tokio::time::timeout(T, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("bgnode start {args:?} with {env:?} kept running"))
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_archive_settings_and_queries_get_clear_errors() {
    let redis = Redis::start();
    // Nothing listens there.
    let port = common::free_port();
    let unreachable = format!("postgres://bob:hunter2@127.0.0.1:{port}/db");

    let bad = format!("postgres://bob:hunter2@127.0.0.1:{port}/db?sslmode=require");
    let ca = std::env::temp_dir().join("no-such-ca.pem");
    let ca = ca.to_str().unwrap();
    let cases: &[StartCase] = &[
        (
            &[],
            &["--save", "postgres://bob:hunter2@127.0.0.1:notaport/db"],
            &[
                "saver.archive",
                "--save",
                "postgres://bob:***@127.0.0.1:notaport/db",
            ],
        ),
        (
            &[(
                "BGNODE_SAVER__ARCHIVE",
                "postgres://bob@127.0.0.1:notaport/db?password=hunter2",
            )],
            &[],
            &["saver.archive", "BGNODE_SAVER__ARCHIVE", "password=***"],
        ),
        (
            &[(
                "BGNODE_SAVER__ARCHIVE",
                "host=127.0.0.1 password=hunter2 port=notaport",
            )],
            &[],
            &["saver.archive", "not a PostgreSQL URL"],
        ),
        (
            &[("BGNODE_SAVER__ARCHIVE", &bad)],
            &[],
            &["saver.archive_ca", "sslmode=require"],
        ),
        (
            &[
                ("BGNODE_SAVER__ARCHIVE", &unreachable),
                ("BGNODE_SAVER__ARCHIVE_CA", ca),
            ],
            &[],
            &["saver.archive_ca", "add sslmode=require"],
        ),
    ];
    for (env, args, want) in cases {
        let (code, err) = start_refused(&redis, env, args).await;
        assert_eq!(code, 2, "{env:?} {args:?}: {err}");
        for w in *want {
            assert!(err.contains(w), "{w:?} for {env:?} {args:?} in: {err}");
        }
        assert!(!err.contains("hunter2"), "a password shown: {err}");
    }

    // Queries: bad ones are refused before any connection (none could be made here).
    let archive = [("BGNODE_SAVER__ARCHIVE", unreachable.as_str())];
    let (code, _, err) = cli_env(&redis, &archive, &["history", "--state", "bogus"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("`bogus`"), "{err}");
    assert!(
        err.contains("done, failed, dead, cancelled, expired"),
        "{err}"
    );
    for flag in ["--since", "--until"] {
        let (code, _, err) = cli_env(&redis, &archive, &["history", flag, "nonsense"]).await;
        assert_eq!(code, 2, "{err}");
        assert!(err.contains(&format!("{flag}: `nonsense`")), "{err}");
    }
    let (code, _, err) = common::cli(&redis, &["history"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("set saver.archive"), "{err}");
    // A good query the archive cannot answer: a failure, not bad usage, without the password.
    let (code, _, err) = cli_env(&redis, &archive, &["history"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(!err.contains("hunter2"), "{err}");

    // A node whose archive cannot be reached runs its tasks; their rows wait in the outbox and
    // the outage is logged once.
    let workers = test_workers();
    let node = NodeProc::start(&redis, "n1", workers.path(), &archive);
    node.ready().await;
    common::http::api_up(&node).await;
    run(&redis, vec![echo("w-1", 1), echo("w-2", 2), fail("w-3", 3)]).await;
    assert_eq!(redis.archive_waiting(&["n1"]).await, 3);
    run(&redis, vec![echo("w-4", 4), echo("w-5", 5)]).await;
    assert_eq!(redis.archive_waiting(&["n1"]).await, 5, "the outbox grows");
    eventually(T, "four failed tries to write the archive", || async {
        (metric(&node, "bgnode_archive_failures_total").await >= 4.0).then_some(())
    })
    .await;
    let log = node.log();
    assert_eq!(
        log.matches("cannot write the archive").count(),
        1,
        "one warning for the outage:\n{log}"
    );
    assert!(log.contains("postgres://bob:***@127.0.0.1:"), "{log}");
    assert!(!log.contains("hunter2"), "{log}");
    assert_eq!(redis.archive_waiting(&["n1"]).await, 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_archive_can_be_reached_over_tls() {
    let certs = tempfile::tempdir().unwrap();
    let tls = TlsFiles::make(certs.path(), false);
    let other = tempfile::tempdir().unwrap();
    let stranger = TlsFiles::make(other.path(), false);
    let pg = Postgres::start_tls(&tls.server_cert, &tls.server_key);
    let url = format!(
        "postgres://postgres@localhost:{}/postgres?sslmode=require",
        pg.port
    );
    let workers = test_workers();

    let redis = Redis::start();
    let ca = tls.ca.display().to_string();
    let node = NodeProc::start(
        &redis,
        "n1",
        workers.path(),
        &[
            ("BGNODE_SAVER__ARCHIVE", &url),
            ("BGNODE_SAVER__ARCHIVE_CA", &ca),
        ],
    );
    node.ready().await;
    run(&redis, vec![echo("tls-1", 1), fail("tls-2", 2)]).await;
    wait_archived(&pg, "postgres", 2).await;
    // The node's connection, seen from the server: TLS.
    let ssl = pg
        .query_async(
            "SELECT ssl FROM pg_stat_ssl JOIN pg_stat_activity USING (pid)
            WHERE application_name = 'bgnode'",
        )
        .await;
    assert_eq!(ssl, text(&[&[Some("t")]]), "the node's one connection");
    drop(node);

    // A CA that did not sign the server's certificate: nothing written, a warning that says so.
    let redis = Redis::start();
    let ca = stranger.ca.display().to_string();
    let node = NodeProc::start(
        &redis,
        "n2",
        workers.path(),
        &[
            ("BGNODE_SAVER__ARCHIVE", &url),
            ("BGNODE_SAVER__ARCHIVE_CA", &ca),
        ],
    );
    node.ready().await;
    run(&redis, vec![echo("untrusted-1", 1)]).await;
    node.wait_log("cannot write the archive", T).await;
    let log = node.log();
    let warning = log
        .lines()
        .find(|l| l.contains("cannot write the archive"))
        .unwrap();
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains("certificate"), "{warning}");
    assert_eq!(
        redis.archive_waiting(&["n2"]).await,
        1,
        "its row waits in the outbox"
    );
    assert_eq!(
        pg.query_async("SELECT id FROM bgnode_tasks ORDER BY id")
            .await,
        text(&[&[Some("tls-1")], &[Some("tls-2")]])
    );
}
