//! The dashboard in a real browser: Debian's headless `chromium`, driven through `chromedriver`
//! by a tiny WebDriver client written here (W3C JSON over HTTP), against a real `bgnode` whose
//! API needs a token, on a real `redis-server`. Also its files as plain HTTP answers.

mod common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::http::{Answer, api_up, request};
use common::{NodeProc, Postgres, Redis, WAIT, free_port, test_workers, wait_state, write_script};
use rustix::process::{Pid, Signal, kill_process_group};
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const TOKEN: &str = "dash-s3cret";
/// The key under which WebDriver names an element.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A call to the node's API with the token.
async fn api(node: &NodeProc, method: &str, path: &str, body: Option<Value>) -> Answer {
    let auth = format!("Bearer {TOKEN}");
    let body = body.map(|b| b.to_string());
    request(
        &node.http,
        method,
        &format!("/api/v1{path}"),
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        body.as_deref().map(str::as_bytes),
    )
    .await
}

/// A chromedriver process, in a process group of its own that drop kills (chromium with it).
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(pid) = Pid::from_raw(self.0.id() as i32) {
            let _ = kill_process_group(pid, Signal::KILL);
        }
        let _ = self.0.wait();
    }
}

/// A headless chromium under a chromedriver of its own, on a free port, with a fresh profile.
/// Dropping it ends the session, then the driver.
struct Browser {
    addr: String,
    session: String,
    _driver: Driver,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(bin).exists(),
                "{bin} is missing: `./dev test` installs it (apt-get install -y chromium chromium-driver)"
            );
        }
        let port = free_port();
        let driver = Driver(
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .expect("start chromedriver"),
        );
        let addr = format!("127.0.0.1:{port}");
        common::eventually(WAIT, "chromedriver to answer", || async {
            tokio::net::TcpStream::connect(&addr).await.ok()?;
            let a = request(&addr, "GET", "/status", &[], None).await;
            (a.json()["value"]["ready"] == true).then_some(())
        })
        .await;
        let profile = tempfile::tempdir().unwrap();
        // As root (CI) chromium needs --no-sandbox; /dev/shm may be small in containers.
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--no-first-run", "--no-default-browser-check", "--window-size=1280,1000",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        }}});
        let body = caps.to_string();
        let a = request(
            &addr,
            "POST",
            "/session",
            &[("Content-Type", "application/json")],
            Some(body.as_bytes()),
        )
        .await;
        assert_eq!(a.status, 200, "no browser session: {}", a.body);
        let session = a.json()["value"]["sessionId"]
            .as_str()
            .expect("a session id")
            .to_owned();
        Browser {
            addr,
            session,
            _driver: driver,
            _profile: profile,
        }
    }

    /// One WebDriver command of the session: its `value`, or WebDriver's error and message.
    async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, (String, String)> {
        let path = format!("/session/{}{path}", self.session);
        let body = body.map(|b| b.to_string());
        let a = request(
            &self.addr,
            method,
            &path,
            &[("Content-Type", "application/json")],
            body.as_deref().map(str::as_bytes),
        )
        .await;
        let v = a.json();
        if a.status == 200 {
            Ok(v["value"].clone())
        } else {
            let e = &v["value"];
            Err((e["error"].to_string(), e["message"].to_string()))
        }
    }

    async fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.send(method, path, body)
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e:?}"))
    }

    async fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url }))).await;
    }

    /// Runs `script` in the page (its `arguments` are `args`) and answers what it returns.
    async fn js(&self, script: &str, args: Value) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
        .await
    }

    /// The element `css` selects, when there is one.
    async fn find(&self, css: &str) -> Option<String> {
        let found = self
            .send(
                "POST",
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await
            .ok()?;
        found[ELEMENT].as_str().map(str::to_owned)
    }

    /// The text of the element `css` selects, as rendered (`innerText`), when there is one.
    async fn text(&self, css: &str) -> Option<String> {
        let script =
            "const e = document.querySelector(arguments[0]); return e ? e.innerText : null;";
        self.js(script, json!([css]))
            .await
            .as_str()
            .map(str::to_owned)
    }

    /// Polls `check` until it answers `Some`, at most [`WAIT`]; on time-out fails with what the
    /// page shows.
    async fn until<T, F, Fut>(&self, what: &str, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(v) = check().await {
                return v;
            }
            if Instant::now() > deadline {
                let shown = self.js("return document.body.innerText;", json!([])).await;
                let url = self.js("return location.href;", json!([])).await;
                panic!(
                    "timed out after {WAIT:?} waiting for {what}; {url} shows:\n{}",
                    shown.as_str().unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the element `css` selects shows `want`.
    async fn wait_text(&self, css: &str, want: &str) {
        self.until(&format!("`{css}` to show {want:?}"), || async {
            (self.text(css).await.as_deref().map(str::trim) == Some(want)).then_some(())
        })
        .await;
    }

    /// Clicks the element `css` selects, as a user would, once it is there and can be clicked
    /// (a refresh may replace it between finding and clicking: then it tries again).
    async fn click(&self, css: &str) {
        self.until(&format!("`{css}` to be clickable"), || async {
            let id = self.find(css).await?;
            self.send("POST", &format!("/element/{id}/click"), Some(json!({})))
                .await
                .ok()
        })
        .await;
    }

    /// Types `text` into the field `css` selects, after clearing it.
    async fn type_into(&self, css: &str, text: &str) {
        let id = self
            .until(&format!("`{css}` to be there"), || self.find(css))
            .await;
        self.cmd("POST", &format!("/element/{id}/clear"), Some(json!({})))
            .await;
        self.cmd(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// A screenshot of the window, as PNG bytes.
    async fn screenshot(&self) -> Vec<u8> {
        let encoded = self.cmd("GET", "/screenshot", None).await;
        base64(encoded.as_str().expect("base64 text"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // End the session (chromedriver closes chromium) without waiting long for the answer;
        // the driver's drop then kills whatever is left of its process group.
        use std::io::{Read, Write};
        if let Ok(mut s) = std::net::TcpStream::connect(&self.addr) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let head = format!(
                "DELETE /session/{} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                self.session, self.addr
            );
            if s.write_all(head.as_bytes()).is_ok() {
                let _ = s.read(&mut [0u8; 512]);
            }
        }
    }
}

/// Decodes standard base64 (WebDriver's screenshots).
fn base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let digits: Vec<u8> = text.bytes().filter(|&c| c != b'=').map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &d)| n | u32::from(d) << (18 - 6 * i));
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

#[test]
fn base64_decodes_what_webdriver_sends() {
    assert_eq!(base64("aGVsbG8="), b"hello");
    assert_eq!(base64("aGk="), b"hi");
    assert_eq!(base64("iVBORw0KGgo="), b"\x89PNG\r\n\x1a\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_follows_tasks_live_retries_the_dead_and_shows_data_as_text() {
    let redis = Redis::start();
    let workers = test_workers();
    // Fails, with markup in its error, until the file `healed` exists.
    write_script(
        workers.path(),
        "flaky.sh",
        "#!/bin/sh\nif [ -f \"$BG_DIR/healed\" ]; then cat; exit 0; fi\necho '<img src=x onerror=\"window.pwned=3\"> broke' >&2\nexit 1\n",
    );
    let node = NodeProc::start(
        &redis,
        "n1",
        workers.path(),
        &[("BGNODE_HTTP__TOKEN", TOKEN)],
    );
    node.ready().await;
    api_up(&node).await;
    let b = Browser::start().await;
    b.goto(&format!("http://{}/", node.http)).await;

    // The API needs the token: the page asks for it, refuses a wrong one, and keeps the right
    // one in the tab (no cookie); with it, the event stream is open.
    b.until("the sign-in form", || async {
        (b.js(
            "return !document.querySelector('#login').hidden;",
            json!([]),
        )
        .await
            == true)
            .then_some(())
    })
    .await;
    b.type_into("#token", "wrong").await;
    b.click("#login-form button").await;
    b.wait_text("#login-error", "The node refused this token.")
        .await;
    b.type_into("#token", TOKEN).await;
    b.click("#login-form button").await;
    b.wait_text("#node", "n1").await;
    b.wait_text("#live", "live").await;
    let kept = b
        .js(
            "return [document.cookie, sessionStorage.getItem('bgnode.token'), document.querySelector('#login').hidden];",
            json!([]),
        )
        .await;
    assert_eq!(kept, json!(["", TOKEN, true]));

    // Pause `echo` with its button; its tasks then wait, shown as queued.
    b.click("#nav a[data-route=workers]").await;
    b.click("tr[data-worker=echo] button[data-action=pause]")
        .await;
    common::eventually(WAIT, "echo to be paused", || async {
        let o = api(&node, "GET", "/overview", None).await.json();
        (o["paused"] == json!(["echo"])).then_some(())
    })
    .await;
    b.wait_text("tr[data-worker=echo] button", "Resume").await;
    let hostile = "<script>window.pwned=1</script><img src=x onerror=\"window.pwned=2\">";
    let a = api(
        &node,
        "POST",
        "/tasks",
        Some(json!([
            {"worker": "echo", "id": "live-1", "args": {"n": 1}},
            {"worker": "echo", "id": "xss-1", "args": {"html": hostile}},
        ])),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    b.click("#nav a[data-route=tasks]").await;
    b.wait_text("tr[data-id=live-1] .badge", "queued").await;
    assert_eq!(
        b.text("tr[data-id=live-1] td.info").await.as_deref(),
        Some("worker paused")
    );
    // From here on the page is never loaded again: this mark would be gone.
    b.js("window.samePage = 'yes';", json!([])).await;

    // Resumed elsewhere (the API), the row turns done by itself.
    let a = api(&node, "POST", "/workers/echo/resume", None).await;
    assert_eq!(a.status, 200, "{}", a.body);
    b.wait_text("tr[data-id=live-1] .badge", "done").await;
    wait_state(&redis, "live-1", "done").await;
    // The page heard of it through the event stream, which it reads with the token.
    let heard = b
        .js(
            "return Number(document.querySelector('#live').dataset.events);",
            json!([]),
        )
        .await;
    assert!(heard.as_u64().is_some_and(|n| n >= 2), "{heard} events");

    // A dead task, retried with its button, runs again and leaves the dead set.
    let a = api(
        &node,
        "POST",
        "/tasks",
        Some(json!({"worker": "flaky", "id": "flaky-1", "args": {"k": 2}})),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.body);
    wait_state(&redis, "flaky-1", "dead").await;
    b.click("#nav a[data-route=dead]").await;
    let error = b
        .until("the dead task's row", || {
            b.text("tr[data-id=flaky-1] td.info")
        })
        .await;
    assert!(
        error.contains(r#"<img src=x onerror="window.pwned=3"> broke"#),
        "the error is shown as text: {error}"
    );
    std::fs::write(workers.path().join("healed"), "").unwrap();
    b.click("tr[data-id=flaky-1] button[data-action=retry]")
        .await;
    wait_state(&redis, "flaky-1", "done").await;
    b.until("the retried task to leave the dead list", || async {
        b.find("tr[data-id=flaky-1]").await.is_none().then_some(())
    })
    .await;
    // Found by its id, it shows how it ended.
    b.type_into("#find-id", "flaky-1\u{E007}").await;
    b.wait_text("#task-state", "done").await;
    let result = b.text("pre.result").await.unwrap_or_default();
    assert!(result.contains("\"k\": 2"), "{result}");

    // Markup in an argument is shown as text, and nothing in it ran.
    b.type_into("#find-id", "xss-1\u{E007}").await;
    let args = b.until("the arguments", || b.find("pre.args")).await;
    let shown = b.cmd("GET", &format!("/element/{args}/text"), None).await;
    assert!(
        shown
            .as_str()
            .unwrap_or_default()
            .contains("<script>window.pwned=1</script><img src=x onerror="),
        "{shown}"
    );
    assert_eq!(
        b.cmd("GET", &format!("/element/{args}/displayed"), None)
            .await,
        json!(true)
    );
    let page = b
        .js(
            "return [typeof window.pwned, document.title, document.querySelectorAll('main script, main img').length, window.samePage];",
            json!([]),
        )
        .await;
    assert_eq!(page, json!(["undefined", "xss-1 · bgnode", 0, "yes"]));
    // And the policy stops any string from becoming markup in this page (Trusted Types).
    let refused = b
        .js(
            "try { document.body.insertAdjacentHTML('beforeend', '<b>x</b>'); return 'parsed'; } catch (e) { return e.name; }",
            json!([]),
        )
        .await;
    assert_eq!(refused, "TypeError");

    // The overview, as a screenshot.
    b.click("#nav a[data-route=overview]").await;
    b.until("the overview's chart", || b.find("#chart svg"))
        .await;
    let png = b.screenshot().await;
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "not a screenshot: {} bytes",
        png.len()
    );
    let shot = tempfile::tempdir().unwrap();
    let path = shot.path().join("dashboard.png");
    std::fs::write(&path, &png).unwrap();
    eprintln!("screenshot: {} ({} bytes)", path.display(), png.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_history_page_lists_the_archive_filters_it_by_state_and_opens_a_row() {
    let pg = Postgres::start();
    let redis = Redis::start();
    let workers = test_workers();
    let node = NodeProc::start(
        &redis,
        "n1",
        workers.path(),
        &[
            ("BGNODE_HTTP__TOKEN", TOKEN),
            ("BGNODE_SAVER__ARCHIVE", &pg.url),
        ],
    );
    node.ready().await;
    api_up(&node).await;
    let a = api(
        &node,
        "POST",
        "/tasks",
        Some(json!([
            {"worker": "echo", "id": "arch-ok-1", "args": {"n": 1}},
            {"worker": "echo", "id": "arch-ok-2", "args": {"n": 2}},
            {"worker": "fail", "id": "arch-dead", "attempts": 1, "args": {"n": 3}},
        ])),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    common::eventually(WAIT, "the archive to hold the three tasks", || async {
        let page = api(&node, "GET", "/history", None).await.json();
        (page["rows"].as_array()?.len() == 3).then_some(())
    })
    .await;

    let b = Browser::start().await;
    b.goto(&format!("http://{}/#/history", node.http)).await;
    b.type_into("#token", TOKEN).await;
    b.click("#login-form button").await;
    b.wait_text("#node", "n1").await;

    // Every archived row is listed, with how it ended.
    b.click("#nav a[data-route=history]").await;
    for (id, state) in [
        ("arch-ok-1", "done"),
        ("arch-ok-2", "done"),
        ("arch-dead", "dead"),
    ] {
        b.wait_text(&format!("tr[data-id={id}] .badge"), state)
            .await;
    }
    assert_eq!(
        b.js("return document.title;", json!([])).await,
        json!("History · bgnode")
    );

    // A filter by state narrows the rows to the dead one.
    b.click("#history-state option[value=dead]").await;
    b.until("only the dead row", || async {
        let ids = b
            .js(
                "return [...document.querySelectorAll('main tbody tr')].map((r) => r.dataset.id);",
                json!([]),
            )
            .await;
        (ids == json!(["arch-dead"])).then_some(())
    })
    .await;
    let url = b.js("return location.hash;", json!([])).await;
    assert_eq!(url, json!("#/history?state=dead"));

    // A click on the row shows its detail: state, error and arguments as the archive keeps them.
    b.click("tr[data-id=arch-dead] td.num").await;
    b.wait_text("#task-state", "dead").await;
    let error = b.until("the error", || b.text("pre.error")).await;
    assert!(error.contains("the disk is on fire"), "{error}");
    let args = b.text("pre.args").await.unwrap_or_default();
    assert!(args.contains("\"n\": 3"), "{args}");
    let url = b.js("return location.hash;", json!([])).await;
    assert_eq!(url, json!("#/history/arch-dead"));

    // The task page of a task Redis no longer holds shows its archived row.
    let mut con = redis.con().await;
    let removed: i64 = ::redis::cmd("DEL")
        .arg("bg:task:arch-ok-2")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(removed, 1);
    b.type_into("#find-id", "arch-ok-2\u{E007}").await;
    b.wait_text("#task-state", "done").await;
    let note = b
        .until("the archive's note", || b.text(".task-head .archived"))
        .await;
    assert!(note.contains("archive"), "{note}");
    let result = b.text("pre.result").await.unwrap_or_default();
    assert!(result.contains("\"n\": 2"), "{result}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_files_need_no_token_and_carry_their_types_tags_and_policy() {
    let redis = Redis::start();
    let workers = test_workers();
    let node = NodeProc::start(
        &redis,
        "n1",
        workers.path(),
        &[("BGNODE_HTTP__TOKEN", TOKEN)],
    );
    node.ready().await;
    api_up(&node).await;
    for (path, kind) in [
        ("/", "text/html"),
        ("/app.js", "text/javascript"),
        ("/app.css", "text/css"),
        ("/favicon.svg", "image/svg+xml"),
    ] {
        let a = request(&node.http, "GET", path, &[], None).await;
        assert_eq!(a.status, 200, "{path}: {}", a.body);
        assert!(
            a.header("content-type").unwrap().starts_with(kind),
            "{path}"
        );
        assert_eq!(a.header("cache-control"), Some("no-cache"), "{path}");
        let csp = a.header("content-security-policy").unwrap();
        for rule in [
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
            "require-trusted-types-for 'script'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(rule), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe"), "{csp}");
        // A copy the browser has is current: 304, no body.
        let tag = a.header("etag").expect("an etag").to_owned();
        let again = request(&node.http, "GET", path, &[("If-None-Match", &tag)], None).await;
        assert_eq!((again.status, again.body.as_str()), (304, ""), "{path}");
    }
    let page = request(&node.http, "GET", "/", &[], None).await.body;
    assert!(page.contains(r#"<script src="/app.js" defer></script>"#));
    // Only the files are open: the API, and anything but reading them, needs the token.
    for (method, path) in [
        ("GET", "/api/v1/overview"),
        ("GET", "/api/v1/events"),
        ("POST", "/"),
    ] {
        let a = request(&node.http, method, path, &[], None).await;
        assert_eq!(a.status, 401, "{method} {path}: {}", a.body);
    }
    // The files answer only to a loopback name on a loopback listener, as the API does.
    let a = request(
        &node.http,
        "GET",
        "/",
        &[("Host", "dashboard.evil.example")],
        None,
    )
    .await;
    assert_eq!(a.status, 403, "{}", a.body);
    // The overview carries the samples the chart draws.
    let samples = common::eventually(WAIT, "a sample of the counters", || async {
        let o = api(&node, "GET", "/overview", None).await.json();
        let samples = o["throughput"]["samples"].as_array()?.clone();
        (!samples.is_empty()).then_some(samples)
    })
    .await;
    for key in ["at", "accepted", "done", "failures"] {
        assert!(samples[0][key].is_u64(), "{key} in {samples:?}");
    }
}
