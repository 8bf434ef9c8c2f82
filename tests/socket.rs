//! The socket service of a real `bgnode` process against a real `redis-server`, spoken to over
//! raw TCP and UDP: every request form, every error prefix, both framings, the limits, many
//! connections at once, a client that never sends, and fire-and-forget datagrams.

mod common;

use std::time::{Duration, Instant};

use common::{NodeProc, Redis, eventually, free_port, runs, test_workers, wait_state};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

const T: Duration = common::WAIT;

/// A node `n1` with the socket service on a free port and `env`; ready, and its worker report
/// written (so that an unknown worker is known to be unknown). Returns the service's address.
async fn node_with_socket(
    redis: &Redis,
    workers: &std::path::Path,
    env: &[(&str, &str)],
) -> (NodeProc, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut all = vec![("BGNODE_SOCKET__LISTEN", addr.as_str())];
    all.extend_from_slice(env);
    let node = NodeProc::start(redis, "n1", workers, &all);
    node.ready().await;
    node.wait_log("socket service on", T).await;
    // A starting node, with no worker report yet, is taken to offer every worker.
    let con = redis.con().await;
    eventually(T, "the node's worker report", || {
        let mut con = con.clone();
        async move {
            let info: Option<String> = redis::cmd("GET")
                .arg("bg:node:n1:info")
                .query_async(&mut con)
                .await
                .ok()?;
            let info: serde_json::Value = serde_json::from_str(&info?).ok()?;
            info["workers"].get("echo").map(|_| ())
        }
    })
    .await;
    (node, addr)
}

/// Sends `request` on a new connection, half-closes when `half_close`, and reads the whole
/// answer (until the service closes).
async fn ask_with(addr: &str, request: &[u8], half_close: bool) -> String {
    let mut stream = TcpStream::connect(addr)
        .await
        .expect("connect to the socket");
    // The service may answer (413) and close before it read everything.
    let _ = stream.write_all(request).await;
    if half_close {
        stream.shutdown().await.unwrap();
    }
    let mut raw = Vec::new();
    tokio::time::timeout(T, stream.read_to_end(&mut raw))
        .await
        .expect("the service answers and closes")
        .expect("read the answer");
    String::from_utf8(raw).expect("a UTF-8 answer")
}

/// Sends one request ended by a newline and reads the answer.
async fn ask(addr: &str, request: &str) -> String {
    ask_with(addr, format!("{request}\n").as_bytes(), false).await
}

/// True when `answer` is an error line as the protocol defines them: `^[45][0-9]{2}:`, one line.
fn is_error(answer: &str) -> bool {
    let b = answer.as_bytes();
    b.len() >= 4
        && (b[0] == b'4' || b[0] == b'5')
        && b[1].is_ascii_digit()
        && b[2].is_ascii_digit()
        && b[3] == b':'
        && !answer.contains('\n')
}

/// Asserts that `answer` is an error line with status `code`.
fn assert_error(answer: &str, code: &str) {
    assert!(
        is_error(answer) && answer.starts_with(&format!("{code}:")),
        "want a {code}: line, got {answer:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_form_answers_through_the_cluster() {
    let redis = Redis::start();
    let workers = test_workers();
    let (_node, addr) = node_with_socket(&redis, workers.path(), &[]).await;

    // worker:data, ended by a newline: run now, wait, the result written back as text.
    assert_eq!(ask(&addr, "echo:hello").await, "hello");
    // The rest of the line after the first colon is the data, colons and all; the name is
    // cleaned (only letters, digits, `-`, `_` kept).
    assert_eq!(ask(&addr, "e.c/ho:a:b c").await, "a:b c");
    // Ended by the client's half-close instead of a newline (and `\r\n` ends a line too).
    assert_eq!(ask_with(&addr, b"echo:half", true).await, "half");
    assert_eq!(
        ask_with(&addr, b"echo:crlf\r\nignored", false).await,
        "crlf"
    );
    // Data that looks like JSON is still a string: the worker gets it as a JSON string.
    assert_eq!(ask(&addr, "echo:{\"a\": 1}").await, "{\"a\": 1}");

    // queue:add answers the id at once; the task is stored with the data as a JSON string.
    let answer = ask(&addr, "queue:add:echo:later").await;
    let id = answer
        .strip_prefix("id:")
        .unwrap_or_else(|| panic!("want id:<id>, got {answer:?}"))
        .to_owned();
    assert_eq!(
        redis.task_field(&id, "worker").await.as_deref(),
        Some("echo")
    );
    assert_eq!(
        redis.task_field(&id, "args").await.as_deref(),
        Some("\"later\"")
    );
    wait_state(&redis, &id, "done").await;
    assert_eq!(ask(&addr, &format!("queue:check:id:{id}")).await, "2");
    // queue:get answers as the direct call would.
    assert_eq!(ask(&addr, &format!("queue:get:id:{id}")).await, "later");

    // queue:check: 0 before a worker takes the task, 1 while it runs. A paused worker type is
    // not started, so the task waits where 0 is the only answer.
    let (code, out, err) = common::cli(&redis, &["pause", "forever"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let waiting = ask(&addr, "queue:add:forever:x").await;
    let waiting = waiting.strip_prefix("id:").unwrap().to_owned();
    assert_eq!(ask(&addr, &format!("queue:check:id:{waiting}")).await, "0");
    let (code, out, err) = common::cli(&redis, &["resume", "forever"]).await;
    assert_eq!(code, 0, "{out}{err}");
    eventually(T, "the task to start", || async {
        (ask(&addr, &format!("queue:check:id:{waiting}")).await == "1").then_some(())
    })
    .await;

    // queue:get waits for a task that is still running and answers when it ends.
    let answer = ask(&addr, "queue:add:nap:x").await;
    let napping = answer.strip_prefix("id:").unwrap().to_owned();
    assert_eq!(ask(&addr, &format!("queue:get:id:{napping}")).await, "x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_error_prefix_is_one_line_and_affects_nothing_else() {
    let redis = Redis::start();
    let workers = test_workers();
    let (_node, addr) = node_with_socket(
        &redis,
        workers.path(),
        &[
            ("BGNODE_SOCKET__WAIT", "1s"),
            ("BGNODE_LIMITS__MESSAGE_BYTES", "1024"),
        ],
    )
    .await;
    let mut redis = redis;

    // 400: no worker name, a malformed queue command, text that is not UTF-8.
    for bad in [":nothing", "queue:get:x1", "queue:purge:id:x1", "queue"] {
        assert_error(&ask(&addr, bad).await, "400");
    }
    assert_error(&ask_with(&addr, b"echo:\xff\xfe\n", false).await, "400");
    // 404: a worker no live node offers, an id no task has.
    let unknown = ask(&addr, "nosuch:x").await;
    assert_error(&unknown, "404");
    assert!(unknown.contains("nosuch"), "{unknown}");
    assert_error(&ask(&addr, "queue:get:id:missing").await, "404");
    assert_error(&ask(&addr, "queue:check:id:missing").await, "404");
    // 408: the task did not finish within [socket] wait; it goes on, and the line says how
    // to ask for it again.
    let started = Instant::now();
    let slow = ask(&addr, "forever:x").await;
    assert_error(&slow, "408");
    assert!(started.elapsed() >= Duration::from_millis(900), "{slow}");
    let id = slow
        .split("queue:get:id:")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("no id in {slow:?}"))
        .to_owned();
    wait_state(&redis, &id, "running").await;
    // 413: a request over [limits] message_bytes, with a newline and without one.
    let big = format!("echo:{}\n", "a".repeat(2000));
    assert_error(&ask_with(&addr, big.as_bytes(), false).await, "413");
    assert_error(&ask_with(&addr, &[b'a'; 1025], false).await, "413");
    // Exactly at the limit is fine.
    let at_limit = format!("echo:{}", "b".repeat(1024 - 5));
    assert_eq!(ask(&addr, &at_limit).await, "b".repeat(1024 - 5));
    // 500: the worker failed, with its error on the same line.
    let failed = ask(&addr, "fail:x").await;
    assert_error(&failed, "500");
    assert!(failed.contains("the disk is on fire"), "{failed}");
    // After all that, a good request is answered as ever.
    assert_eq!(ask(&addr, "echo:still here").await, "still here");
    // 503: Redis is unreachable.
    redis.kill();
    assert_error(&ask(&addr, "echo:x").await, "503");
    assert_error(&ask(&addr, "queue:add:echo:x").await, "503");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_connections_at_once_each_get_their_own_answer() {
    let redis = Redis::start();
    let workers = test_workers();
    let (_node, addr) = node_with_socket(&redis, workers.path(), &[]).await;
    let started = Instant::now();
    let answers = futures::future::join_all((0..200).map(|i| {
        let addr = addr.clone();
        async move {
            let request = if i % 2 == 0 {
                format!("echo:n{i}\n")
            } else {
                format!("queue:add:echo:n{i}\n")
            };
            (i, ask_with(&addr, request.as_bytes(), false).await)
        }
    }))
    .await;
    let mut ids = Vec::new();
    for (i, answer) in answers {
        if i % 2 == 0 {
            assert_eq!(answer, format!("n{i}"));
        } else {
            ids.push(
                answer
                    .strip_prefix("id:")
                    .unwrap_or_else(|| panic!("{answer:?}"))
                    .to_owned(),
            );
        }
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 100, "every queue:add stored its own task");
    for id in &ids {
        wait_state(&redis, id, "done").await;
    }
    eprintln!("200 connections answered in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_sends_nothing_is_closed_and_connections_are_limited() {
    let redis = Redis::start();
    let workers = test_workers();
    let (_node, addr) = node_with_socket(
        &redis,
        workers.path(),
        &[
            ("BGNODE_SOCKET__IDLE_TIMEOUT", "700ms"),
            ("BGNODE_SOCKET__CONNECTIONS", "2"),
        ],
    )
    .await;
    // Two clients connect and send nothing; a third is told at once that there is no room.
    let started = Instant::now();
    let silent: Vec<TcpStream> = futures::future::join_all(
        (0..2).map(|_| async { TcpStream::connect(&addr).await.unwrap() }),
    )
    .await;
    // The service counts a connection once it accepted it: wait until both are held.
    let full = eventually(T, "the third connection to be refused", || async {
        let answer = ask(&addr, "echo:third").await;
        answer.starts_with("503:").then_some(answer)
    })
    .await;
    assert!(full.contains("too many connections"), "{full}");
    // The silent ones are answered 408 after the idle timeout, and closed.
    for mut stream in silent {
        let mut raw = Vec::new();
        tokio::time::timeout(T, stream.read_to_end(&mut raw))
            .await
            .expect("closed by the service")
            .unwrap();
        let answer = String::from_utf8(raw).unwrap();
        assert_error(&answer, "408");
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(600),
        "closed after {waited:?}, before the idle timeout"
    );
    // With the slots free again, requests are served.
    eventually(T, "a free slot", || async {
        (ask(&addr, "echo:again").await == "again").then_some(())
    })
    .await;
    // A client that sends part of a request and never ends it is cut off the same way.
    let started = Instant::now();
    let mut trickle = TcpStream::connect(&addr).await.unwrap();
    trickle.write_all(b"echo:").await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(T, trickle.read_to_end(&mut raw))
        .await
        .expect("closed by the service")
        .unwrap();
    assert_error(&String::from_utf8(raw).unwrap(), "408");
    assert!(started.elapsed() >= Duration::from_millis(600));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_are_stored_and_never_answered() {
    let redis = Redis::start();
    let workers = test_workers();
    let (node, addr) = node_with_socket(&redis, workers.path(), &[]).await;
    let events = redis.events().await;
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    udp.send_to(b"record:one\n", &addr).await.unwrap();
    eventually(T, "the datagram's task to run", || async {
        (runs(workers.path()).len() == 1).then_some(())
    })
    .await;
    // A refused datagram is logged and announced as `rejected`; the next one is stored.
    udp.send_to(b":no worker", &addr).await.unwrap();
    udp.send_to(b"queue:get:id:x1", &addr).await.unwrap();
    node.wait_log("rejected a socket datagram", T).await;
    eventually(T, "two rejected events", || async {
        (events.of("rejected").len() >= 2).then_some(())
    })
    .await;
    udp.send_to(b"queue:add:record:two", &addr).await.unwrap();
    eventually(T, "the second datagram's task to run", || async {
        (runs(workers.path()).len() == 2).then_some(())
    })
    .await;
    for (id, ..) in runs(workers.path()) {
        wait_state(&redis, &id, "done").await;
    }
    // Nothing is ever sent back.
    let mut buf = [0u8; 64];
    let nothing = tokio::time::timeout(Duration::from_millis(200), udp.recv_from(&mut buf)).await;
    assert!(nothing.is_err(), "a datagram was answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_socket_address_stops_the_start() {
    let redis = Redis::start();
    let workers = test_workers();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut node = NodeProc::start(
        &redis,
        "n1",
        workers.path(),
        &[("BGNODE_SOCKET__LISTEN", &addr)],
    );
    let status = node.wait_exit(T).await;
    assert_eq!(status.code(), Some(1), "{}", node.log());
    assert!(
        node.log()
            .contains(&format!("cannot serve the socket service on {addr}")),
        "{}",
        node.log()
    );
}
