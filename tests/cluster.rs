//! Cluster and chaos scenarios: a real `redis-server` and several real `bgnode` processes, load
//! from a worker that records every execution outside the cluster's own bookkeeping, faults
//! injected with signals. Each scenario prints a summary (accepted, completed, lost, duplicated,
//! in flight at the fault, time to detection and to reassignment, each node's share) and asserts
//! its figures.
//!
//! The scenarios run one at a time (they measure time on a small machine). A longer soak runs
//! when `BGNODE_SOAK=1`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use background::{Client, TaskSpec};
use common::{NodeProc, Redis, cli, eventually, free_port, write_script};
use rustix::process::Signal;
use serde_json::{Value, json};

static SERIAL: LazyLock<tokio::sync::Mutex<()>> = LazyLock::new(|| tokio::sync::Mutex::new(()));

/// The load worker: records `<id> <node> <attempt> start|end <unix µs>` around a sleep of
/// `{"ms": N}` milliseconds.
const CHAOS_SH: &str = r#"#!/bin/bash
read -r args
ms=20
[[ $args =~ \"ms\":([0-9]+) ]] && ms=${BASH_REMATCH[1]}
echo "$BG_TASK_ID $BG_NODE $BG_ATTEMPT start ${EPOCHREALTIME/./}" >> "$BG_DIR/runs.log"
sleep "$((ms / 1000)).$(printf '%03d' $((ms % 1000)))"
echo "$BG_TASK_ID $BG_NODE $BG_ATTEMPT end ${EPOCHREALTIME/./}" >> "$BG_DIR/runs.log"
echo "{\"node\":\"$BG_NODE\"}"
"#;

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// A fault injected into one node.
#[derive(Debug, Clone)]
struct Fault {
    node: String,
    at: u64,
    /// Tasks running there by the cluster's record at the fault.
    running: usize,
    /// Tasks it owned at the fault (claimed, running, or finished but not yet written).
    owned: BTreeSet<String>,
}

/// One line of the execution record.
#[derive(Debug, Clone)]
struct Run {
    id: String,
    node: String,
    start: bool,
    at: u64,
}

/// A cluster under test.
struct Scenario {
    redis: Redis,
    workers: tempfile::TempDir,
    nodes: BTreeMap<String, NodeProc>,
    ports: BTreeMap<String, u16>,
    env: Vec<(String, String)>,
    client: Client,
}

impl Scenario {
    async fn start(ids: &[&str], env: &[(&str, &str)]) -> Scenario {
        let redis = Redis::start();
        let workers = tempfile::tempdir().unwrap();
        write_script(workers.path(), "chaos.sh", CHAOS_SH);
        let client = Client::connect(&redis.url).await.unwrap();
        let mut s = Scenario {
            redis,
            workers,
            nodes: BTreeMap::new(),
            ports: ids.iter().map(|id| (id.to_string(), free_port())).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            client,
        };
        for id in ids {
            s.launch(id);
        }
        s.wait_mesh(ids).await;
        s
    }

    /// Starts (or restarts) node `id`, seeded with every other known node.
    fn launch(&mut self, id: &str) {
        self.launch_through(id, &[], None);
    }

    /// Starts node `id` cut off from the others' cluster links but not from Redis: in a network
    /// namespace of its own (`unshare`), where its seeds and its listen address reach nothing,
    /// reaching Redis over its Unix socket.
    fn launch_partitioned(&mut self, id: &str) {
        let wrap = [
            "unshare",
            "--net",
            "--map-root-user",
            "sh",
            "-c",
            "ip link set lo up && exec \"$0\" \"$@\"",
        ];
        let url = self.redis.socket_url();
        self.launch_through(id, &wrap, Some(&url));
    }

    /// Starts node `id` through the command `wrap` (none when empty), against the Redis at
    /// `redis_url` (the scenario's own when `None`).
    fn launch_through(&mut self, id: &str, wrap: &[&str], redis_url: Option<&str>) {
        let port = *self.ports.entry(id.to_owned()).or_insert_with(free_port);
        let seeds: Vec<String> = self
            .ports
            .iter()
            .filter(|(n, _)| n.as_str() != id)
            .map(|(_, p)| format!("127.0.0.1:{p}"))
            .collect();
        let listen = format!("127.0.0.1:{port}");
        let seeds = seeds.join(",");
        let mut env: Vec<(&str, &str)> = vec![
            ("BGNODE_NODE__LISTEN", &listen),
            ("BGNODE_WORKERS__CONCURRENCY", "8"),
        ];
        if !seeds.is_empty() {
            env.push(("BGNODE_NODE__SEEDS", &seeds));
        }
        env.extend(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let url = redis_url.unwrap_or(&self.redis.url);
        let node = NodeProc::start_wrapped(wrap, url, id, self.workers.path(), &env);
        if let Some(mut old) = self.nodes.insert(id.to_owned(), node) {
            let _ = old.try_exit();
        }
    }

    /// Waits until every node of `ids` reports the others as its reachable peers.
    async fn wait_mesh(&self, ids: &[&str]) {
        let want: BTreeSet<String> = ids.iter().map(|s| s.to_string()).collect();
        eventually(
            Duration::from_secs(30),
            &format!("a full mesh of {ids:?}"),
            || async {
                let info = self.client.info().await.ok()?;
                let ok = want.iter().all(|id| {
                    info.iter().any(|m| {
                        m.id == *id && m.state == "up" && {
                            let peers: BTreeSet<String> = m.peers.iter().cloned().collect();
                            let others: BTreeSet<String> =
                                want.iter().filter(|o| *o != id).cloned().collect();
                            others.is_subset(&peers)
                        }
                    })
                });
                ok.then_some(())
            },
        )
        .await;
    }

    fn signal(&self, id: &str, sig: Signal) -> u64 {
        let at = now_us();
        self.nodes[id].signal(sig);
        at
    }

    /// Injects a fault and notes what the node owned then (tasks whose completion was not yet
    /// durable).
    async fn fault(&self, id: &str, sig: Signal) -> Fault {
        let at = self.signal(id, sig);
        let mut con = self.redis.con().await;
        let owned: Vec<String> = redis::cmd("SMEMBERS")
            .arg(format!("bg:node:{id}:owned"))
            .query_async(&mut con)
            .await
            .unwrap();
        let mut pipe = redis::pipe();
        for t in &owned {
            pipe.cmd("HGET").arg(format!("bg:task:{t}")).arg("state");
        }
        let states: Vec<Option<String>> = if owned.is_empty() {
            Vec::new()
        } else {
            pipe.query_async(&mut con).await.unwrap()
        };
        let running = states
            .iter()
            .filter(|s| s.as_deref() == Some("running"))
            .count();
        Fault {
            node: id.to_owned(),
            at,
            running,
            owned: owned.into_iter().collect(),
        }
    }

    async fn enqueue(&self, prefix: &str, n: usize, ms: u64) -> Vec<String> {
        let specs: Vec<TaskSpec> = (0..n)
            .map(|i| TaskSpec::new("chaos", json!({"ms": ms})).id(format!("{prefix}{i}")))
            .collect();
        let mut ids = Vec::new();
        for chunk in specs.chunks(500) {
            ids.extend(self.client.enqueue_all(chunk.to_vec()).await.unwrap());
        }
        ids
    }

    async fn wait_done(&self, ids: &[String], timeout: Duration) {
        eventually(
            timeout,
            &format!("{} tasks to finish", ids.len()),
            || async {
                let mut con = self.redis.con().await;
                let mut pipe = redis::pipe();
                for id in ids {
                    pipe.cmd("HGET").arg(format!("bg:task:{id}")).arg("state");
                }
                let states: Vec<Option<String>> = pipe.query_async(&mut con).await.ok()?;
                states
                    .iter()
                    .all(|s| s.as_deref() == Some("done"))
                    .then_some(())
            },
        )
        .await;
    }

    fn runs(&self) -> Vec<Run> {
        std::fs::read_to_string(self.workers.path().join("runs.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Some(Run {
                    id: f.first()?.to_string(),
                    node: f.get(1)?.to_string(),
                    start: *f.get(3)? == "start",
                    at: f.get(4)?.parse().ok()?,
                })
            })
            .collect()
    }

    /// Log lines of the nodes other than `except`, with their time in µs.
    fn log_lines(&self, except: &str) -> Vec<(u64, String)> {
        self.nodes
            .iter()
            .filter(|(id, _)| id.as_str() != except)
            .flat_map(|(_, n)| n.log().lines().map(str::to_owned).collect::<Vec<_>>())
            .filter_map(|l| {
                let stamp = l.split_whitespace().next()?;
                let ms = background::time::parse_time(stamp).ok()?;
                Some((ms * 1000, l))
            })
            .collect()
    }

    async fn stat(&self, name: &str) -> u64 {
        let mut con = self.redis.con().await;
        let v: Option<u64> = redis::cmd("HGET")
            .arg("bg:stats")
            .arg(name)
            .query_async(&mut con)
            .await
            .unwrap();
        v.unwrap_or(0)
    }

    /// Counts what happened to `ids`, around `fault`, and prints it.
    async fn summary(&self, name: &str, ids: &[String], fault: Option<&Fault>) -> Summary {
        let runs = self.runs();
        let wanted: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
        let mut starts: BTreeMap<&str, Vec<&Run>> = BTreeMap::new();
        let mut ends: BTreeMap<&str, Vec<&Run>> = BTreeMap::new();
        for r in runs.iter().filter(|r| wanted.contains(r.id.as_str())) {
            if r.start {
                starts.entry(&r.id).or_default().push(r);
            } else {
                ends.entry(&r.id).or_default().push(r);
            }
        }
        let mut con = self.redis.con().await;
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("HMGET")
                .arg(format!("bg:task:{id}"))
                .arg("state")
                .arg("node");
        }
        let states: Vec<(Option<String>, Option<String>)> =
            pipe.query_async(&mut con).await.unwrap();
        let completed = states
            .iter()
            .filter(|(s, _)| s.as_deref() == Some("done"))
            .count();
        let mut share: BTreeMap<String, usize> = BTreeMap::new();
        for (_, node) in states.iter().filter(|(s, _)| s.as_deref() == Some("done")) {
            *share.entry(node.clone().unwrap_or_default()).or_default() += 1;
        }
        let duplicated = starts.values().filter(|v| v.len() > 1).count();
        for (id, v) in starts.iter().filter(|(_, v)| v.len() > 1).take(3) {
            let at = fault.map_or(0, |f| f.at);
            let show: Vec<String> = v
                .iter()
                .chain(ends.get(id).into_iter().flatten())
                .map(|r| {
                    format!(
                        "{} {} {:+}ms",
                        r.node,
                        if r.start { "start" } else { "end" },
                        (r.at as i64 - at as i64) / 1000
                    )
                })
                .collect();
            println!("   ran twice: {id}: {}", show.join(", "));
        }
        let mut s = Summary {
            accepted: ids.len(),
            completed,
            lost: ids.len() - completed,
            duplicated,
            share: share
                .into_iter()
                .map(|(n, c)| (n, c as f64 / completed.max(1) as f64))
                .collect(),
            ..Summary::default()
        };
        if let Some(f) = fault {
            let (node, at) = (f.node.as_str(), f.at);
            let orphans: Vec<&str> = starts
                .iter()
                .filter(|(id, v)| {
                    v.iter().any(|r| r.node == node && r.at < at)
                        && !ends
                            .get(*id)
                            .is_some_and(|e| e.iter().any(|r| r.node == node && r.at < at))
                })
                .map(|(id, _)| *id)
                .collect();
            // In flight: its completion was not durable at the fault (the node still owned it)
            // and its work had begun on the node. A process the node spawned just before a kill
            // may write its first record just after it, so the record's time is not compared.
            s.in_flight = starts
                .iter()
                .filter(|(id, v)| f.owned.contains(**id) && v.iter().any(|r| r.node == node))
                .count();
            s.started_not_ended = orphans.len();
            s.running_by_record = f.running;
            let mut latest = 0u64;
            for id in &orphans {
                if let Some(again) = starts[id]
                    .iter()
                    .filter(|r| r.at > at && r.node != node)
                    .map(|r| r.at)
                    .min()
                {
                    latest = latest.max(again - at);
                }
            }
            s.reassignment_ms = (!orphans.is_empty()).then_some(latest as f64 / 1000.0);
            let logs = self.log_lines(node);
            let detected = logs
                .iter()
                .filter(|(t, l)| *t + 1_000 >= at && l.contains(&format!("peer={node}")))
                .filter(|(_, l)| l.contains("session closed") || l.contains("no heartbeat"))
                .map(|(t, _)| t.saturating_sub(at))
                .min();
            s.detection_ms = detected.map(|d| d as f64 / 1000.0);
            s.failover_ms = logs
                .iter()
                .filter(|(t, l)| {
                    *t + 1_000 >= at && l.contains(&format!("failed over node {node}"))
                })
                .map(|(t, _)| t.saturating_sub(at) as f64 / 1000.0)
                .reduce(f64::min);
        }
        println!("== {name}: {s}");
        s
    }
}

#[derive(Debug, Default)]
struct Summary {
    accepted: usize,
    completed: usize,
    lost: usize,
    duplicated: usize,
    in_flight: usize,
    started_not_ended: usize,
    running_by_record: usize,
    detection_ms: Option<f64>,
    failover_ms: Option<f64>,
    reassignment_ms: Option<f64>,
    share: BTreeMap<String, f64>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0} ms"));
        let share: Vec<String> = self
            .share
            .iter()
            .map(|(n, s)| format!("{n} {:.0}%", s * 100.0))
            .collect();
        write!(
            f,
            "accepted {} completed {} lost {} duplicated {} in flight at the fault {} ({} running by the cluster's record, {} started and not ended by the worker's); detection {}, failover {}, every orphan running again after {}; share {}",
            self.accepted,
            self.completed,
            self.lost,
            self.duplicated,
            self.in_flight,
            self.running_by_record,
            self.started_not_ended,
            ms(self.detection_ms),
            ms(self.failover_ms),
            ms(self.reassignment_ms),
            share.join(", ")
        )
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_share_the_load_fairly() {
    let _serial = SERIAL.lock().await;
    let s = Scenario::start(&["n1", "n2", "n3"], &[]).await;
    let ids = s.enqueue("b", 2_000, 20).await;
    s.wait_done(&ids, Duration::from_secs(120)).await;
    let sum = s
        .summary("balance: 3 nodes, 2,000 tasks of 20 ms", &ids, None)
        .await;
    assert_eq!(sum.lost, 0);
    assert_eq!(sum.duplicated, 0);
    assert_eq!(sum.share.len(), 3, "{sum}");
    for (node, share) in &sum.share {
        assert!(
            *share >= 0.20,
            "{node} ran {:.0}% of the work: {sum}",
            share * 100.0
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_node_fails_over_in_seconds_and_rejoins_when_restarted() {
    let _serial = SERIAL.lock().await;
    let mut s = Scenario::start(&["n1", "n2", "n3"], &[]).await;
    let ids = s.enqueue("k", 900, 100).await;
    // Kill n2 once it is busy.
    eventually(Duration::from_secs(20), "n2 to run tasks", || async {
        s.runs()
            .iter()
            .filter(|r| r.node == "n2" && r.start)
            .nth(20)
            .map(|_| ())
    })
    .await;
    let fault = s.fault("n2", Signal::KILL).await;
    s.wait_done(&ids, Duration::from_secs(60)).await;
    let sum = s.summary("SIGKILL n2 mid-load", &ids, Some(&fault)).await;
    assert_eq!(sum.lost, 0, "{sum}");
    assert!(sum.in_flight > 0, "the kill hit running tasks: {sum}");
    assert!(sum.duplicated <= sum.in_flight, "{sum}");
    assert!(sum.detection_ms.is_some_and(|d| d < 2_000.0), "{sum}");
    assert!(
        sum.reassignment_ms.is_some_and(|r| r <= 3_000.0),
        "orphans ran again within 3 s: {sum}"
    );

    // The killed node comes back as a new generation and takes work again.
    s.nodes
        .get_mut("n2")
        .unwrap()
        .wait_exit(Duration::from_secs(5))
        .await;
    s.launch("n2");
    s.wait_mesh(&["n1", "n2", "n3"]).await;
    let more = s.enqueue("r", 600, 20).await;
    s.wait_done(&more, Duration::from_secs(60)).await;
    let sum = s.summary("n2 restarted", &more, None).await;
    assert!(
        sum.share.get("n2").is_some_and(|s| *s > 0.05),
        "the restarted node took work: {sum}"
    );
    assert!(s.nodes["n2"].log().contains("node starting"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_short_pause_moves_nothing_and_a_long_one_is_fenced() {
    let _serial = SERIAL.lock().await;
    let s = Scenario::start(&["n1", "n2", "n3"], &[]).await;

    // 1 s: within the lease, no failover and no duplicate.
    let ids = s.enqueue("p", 600, 100).await;
    eventually(Duration::from_secs(20), "n2 to run tasks", || async {
        s.runs()
            .iter()
            .filter(|r| r.node == "n2" && r.start)
            .nth(10)
            .map(|_| ())
    })
    .await;
    let fault = s.fault("n2", Signal::STOP).await;
    tokio::time::sleep(Duration::from_secs(1)).await; // the pause itself
    s.signal("n2", Signal::CONT);
    s.wait_done(&ids, Duration::from_secs(60)).await;
    let sum = s.summary("SIGSTOP n2 for 1 s", &ids, Some(&fault)).await;
    assert_eq!((sum.lost, sum.duplicated), (0, 0), "{sum}");
    assert!(
        sum.failover_ms.is_none(),
        "no failover for a short pause: {sum}"
    );
    assert_eq!(s.stat("stale").await, 0);

    // 5 s: the lease expires, n2 is failed over, and its late completions are refused.
    let ids = s.enqueue("q", 48, 1_500).await;
    eventually(
        Duration::from_secs(20),
        "n2 to run the long tasks",
        || async {
            s.runs()
                .iter()
                .filter(|r| r.node == "n2" && r.start && r.id.starts_with('q'))
                .nth(3)
                .map(|_| ())
        },
    )
    .await;
    let fault = s.fault("n2", Signal::STOP).await;
    tokio::time::sleep(Duration::from_secs(5)).await; // the pause itself
    s.signal("n2", Signal::CONT);
    s.wait_done(&ids, Duration::from_secs(60)).await;
    let sum = s.summary("SIGSTOP n2 for 5 s", &ids, Some(&fault)).await;
    assert_eq!(sum.lost, 0, "{sum}");
    assert!(
        sum.failover_ms.is_some_and(|f| f < 4_000.0),
        "failed over: {sum}"
    );
    assert!(sum.duplicated <= sum.in_flight, "{sum}");
    eventually(
        Duration::from_secs(20),
        "n2's late completions to be fenced out",
        || async { (s.stat("stale").await > 0).then_some(()) },
    )
    .await;
    // Every result comes from the node that owned the task when it finished.
    let mut con = s.redis.con().await;
    for id in &ids {
        let stale: Option<u64> = redis::cmd("HGET")
            .arg(format!("bg:task:{id}"))
            .arg("stale")
            .query_async(&mut con)
            .await
            .unwrap();
        if stale.is_some() {
            let node: String = redis::cmd("HGET")
                .arg(format!("bg:task:{id}"))
                .arg("node")
                .query_async(&mut con)
                .await
                .unwrap();
            assert_ne!(
                node, "n2",
                "{id}: the paused node's late result was refused"
            );
        }
    }
    s.wait_mesh(&["n1", "n2", "n3"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ingress_moves_when_its_holder_dies() {
    let _serial = SERIAL.lock().await;
    let s = Scenario::start(&["n1", "n2", "n3"], &[]).await;
    let mut con = s.redis.con().await;
    let holder: String = redis::cmd("GET")
        .arg("bg:ingress")
        .query_async(&mut con)
        .await
        .unwrap();
    let holder = holder.split(':').next().unwrap().to_owned();
    let fault = s.fault(&holder, Signal::KILL).await;
    // A raw publish is at most once: one that reaches the dead holder's socket before Redis
    // notices the close is lost. The id makes publishing again safe.
    let raw = r#"{"worker":"chaos","id":"after-the-holder-died","args":{"ms":1}}"#;
    eventually(
        Duration::from_secs(10),
        "a raw task to run after the holder died",
        || async {
            s.redis.publish("background", raw).await;
            let state = s.redis.task_field("after-the-holder-died", "state").await;
            (state.as_deref() == Some("done")).then_some(())
        },
    )
    .await;
    let moved_ms = (now_us() - fault.at) / 1_000;
    println!(
        "== the ingress moved from {holder}: a raw task published after the kill ran {moved_ms} ms after it"
    );
    assert!(moved_ms < 5_000, "{moved_ms} ms");
    let new: String = redis::cmd("GET")
        .arg("bg:ingress")
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(!new.starts_with(&format!("{holder}:")), "{new}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rolling_restart_loses_and_duplicates_nothing() {
    let _serial = SERIAL.lock().await;
    let mut s = Scenario::start(&["n1", "n2", "n3"], &[]).await;
    let ids = s.enqueue("roll", 3_000, 50).await;
    for id in ["n1", "n2", "n3"] {
        eventually(
            Duration::from_secs(20),
            &format!("{id} to run tasks"),
            || async {
                s.runs()
                    .iter()
                    .any(|r| r.node == id && r.start)
                    .then_some(())
            },
        )
        .await;
        s.signal(id, Signal::TERM);
        let status = s
            .nodes
            .get_mut(id)
            .unwrap()
            .wait_exit(Duration::from_secs(30))
            .await;
        assert!(status.success(), "{id} stopped cleanly: {status:?}");
        assert!(
            s.nodes[id]
                .log()
                .contains("handed queued tasks to the peers")
                || s.nodes[id].log().contains("node stopped")
        );
        s.launch(id);
        s.wait_mesh(&["n1", "n2", "n3"]).await;
    }
    s.wait_done(&ids, Duration::from_secs(120)).await;
    let sum = s.summary("rolling SIGTERM of n1, n2, n3", &ids, None).await;
    assert_eq!((sum.lost, sum.duplicated), (0, 0), "{sum}");
}

#[tokio::test(flavor = "multi_thread")]
async fn targets_reach_all_nodes_or_one_node() {
    let _serial = SERIAL.lock().await;
    let mut s = Scenario::start(&["n1", "n2"], &[]).await;

    // `all` with a node that joins while it runs.
    let all = s
        .client
        .enqueue(
            TaskSpec::new("chaos", json!({"ms": 3_000}))
                .id("everyone")
                .target(background::Target::All),
        )
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "the broadcast to start on n1 and n2",
        || async {
            let nodes: BTreeSet<String> = s
                .runs()
                .iter()
                .filter(|r| r.id.starts_with("everyone@"))
                .map(|r| r.node.clone())
                .collect();
            (nodes.len() == 2).then_some(())
        },
    )
    .await;
    s.launch("n3");
    s.wait_mesh(&["n1", "n2", "n3"]).await;
    s.wait_done(std::slice::from_ref(&all), Duration::from_secs(30))
        .await;
    let runs: Vec<Run> = s
        .runs()
        .into_iter()
        .filter(|r| r.start && r.id.starts_with("everyone@"))
        .collect();
    let nodes: Vec<&str> = runs.iter().map(|r| r.node.as_str()).collect();
    assert_eq!(nodes.len(), 3, "once per node: {nodes:?}");
    assert_eq!(nodes.iter().collect::<BTreeSet<_>>().len(), 3, "{nodes:?}");
    let (code, out, _) = cli(&s.redis, &["result", "everyone", "--json"]).await;
    assert_eq!(code, 0);
    let result: Value = serde_json::from_str(&out).unwrap();
    for n in ["n1", "n2", "n3"] {
        assert_eq!(result["result"][n]["state"], "done", "{result}");
        assert_eq!(result["result"][n]["result"]["node"], n, "{result}");
    }
    let (code, out, err) = cli(
        &s.redis,
        &["do", "chaos", r#"{"ms":1}"#, "--target", "all", "--wait"],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v.as_object().unwrap().len(), 3, "{v}");

    // `node:<id>` runs only there.
    let pinned: Vec<TaskSpec> = (0..30)
        .map(|i| {
            TaskSpec::new("chaos", json!({"ms": 10}))
                .id(format!("only{i}"))
                .target(background::Target::Node("n2".into()))
        })
        .collect();
    let ids = s.client.enqueue_all(pinned).await.unwrap();
    s.wait_done(&ids, Duration::from_secs(30)).await;
    let places: BTreeSet<String> = s
        .runs()
        .into_iter()
        .filter(|r| r.id.starts_with("only"))
        .map(|r| r.node)
        .collect();
    assert_eq!(places, BTreeSet::from(["n2".to_string()]));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cluster_view_and_remote_control() {
    let _serial = SERIAL.lock().await;
    let mut s = Scenario::start(&["n1", "n2", "n3"], &[]).await;
    let (code, out, _) = cli(&s.redis, &["info", "--json"]).await;
    assert_eq!(code, 0);
    let info: Value = serde_json::from_str(&out).unwrap();
    let members = info["members"].as_array().unwrap();
    assert_eq!(members.len(), 3, "{info}");
    for m in members {
        assert_eq!(m["state"], "up");
        assert_eq!(m["workers"]["chaos"]["capacity"], 8, "{m}");
        assert!(m["running"].is_u64() && m["queued"].is_u64() && m["capacity"].is_u64());
    }
    let (code, out, _) = cli(&s.redis, &["info"]).await;
    assert_eq!(code, 0);
    assert!(
        out.contains("n1  up") && out.contains("chaos: 0/8 running"),
        "{out}"
    );

    write_script(s.workers.path(), "fresh.sh", "#!/bin/sh\necho fresh\n");
    let (code, out, err) = cli(&s.redis, &["reload", "--all"]).await;
    assert_eq!(code, 0, "{err}");
    for n in ["n1", "n2", "n3"] {
        assert!(out.contains(&format!("{n}: {n} reloaded")), "{out}");
    }
    let (code, out, err) = cli(&s.redis, &["do", "fresh", "--wait"]).await;
    assert_eq!((code, out.trim()), (0, r#""fresh""#), "{err}");

    let (code, out, err) = cli(&s.redis, &["stop", "--node", "n3"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("n3 is stopping"), "{out}");
    let status = s
        .nodes
        .get_mut("n3")
        .unwrap()
        .wait_exit(Duration::from_secs(20))
        .await;
    assert!(status.success(), "{status:?}");
    eventually(Duration::from_secs(10), "n3 to leave the view", || async {
        let info = s.client.info().await.ok()?;
        (info.len() == 2).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_cookie_cannot_join_and_garbage_leaves_nodes_running() {
    let _serial = SERIAL.lock().await;
    let mut s = Scenario::start(&["n1", "n2"], &[]).await;
    // Another cookie: refused at start with a clear error.
    s.env.push((
        "BGNODE_NODE__COOKIE".into(),
        "not-the-cluster-cookie".into(),
    ));
    s.launch("intruder");
    let status = s
        .nodes
        .get_mut("intruder")
        .unwrap()
        .wait_exit(Duration::from_secs(20))
        .await;
    assert!(!status.success());
    assert!(
        s.nodes["intruder"].log().contains("has another cookie"),
        "{}",
        s.nodes["intruder"].log()
    );
    s.env.pop();
    s.nodes.remove("intruder");
    s.ports.remove("intruder");

    // Garbage on the cluster port (TCP) and the gossip port (UDP).
    let port = s.ports["n1"];
    use tokio::io::AsyncWriteExt;
    for junk in [
        vec![0xffu8; 70_000],
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        vec![0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff],
    ] {
        if let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            let _ = stream.write_all(&junk).await;
        }
    }
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for junk in [&[0u8; 1][..], &[0xff; 1_400][..], b"\x00\x01garbage"] {
        let _ = udp.send_to(junk, ("127.0.0.1", port)).await;
    }
    let ids = s.enqueue("g", 40, 10).await;
    s.wait_done(&ids, Duration::from_secs(30)).await;
    for id in ["n1", "n2"] {
        assert!(
            s.nodes.get_mut(id).unwrap().try_exit().is_none(),
            "{id} kept running"
        );
    }
    s.wait_mesh(&["n1", "n2"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cluster_link_can_use_tls() {
    let _serial = SERIAL.lock().await;
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls");
    let cert = fixtures.join("node.pem");
    let key = fixtures.join("node.key");
    let ca = fixtures.join("ca.pem");
    let env = [
        ("BGNODE_NODE__TLS_CERT", cert.to_str().unwrap()),
        ("BGNODE_NODE__TLS_KEY", key.to_str().unwrap()),
        ("BGNODE_NODE__TLS_CA", ca.to_str().unwrap()),
    ];
    let s = Scenario::start(&["n1", "n2"], &env).await;
    assert!(s.nodes["n1"].log().contains("tls=true"));
    let ids = s.enqueue("tls", 200, 20).await;
    s.wait_done(&ids, Duration::from_secs(60)).await;
    let sum = s.summary("TLS link, 2 nodes", &ids, None).await;
    assert_eq!(sum.lost, 0);

    // A peer that trusts the CA but has no certificate of its own is refused in the handshake.
    use rustls_pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    for ca in rustls_pki_types::CertificateDer::pem_file_iter(&ca).unwrap() {
        roots.add(ca.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", s.ports["n1"]))
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        let mut tls = connector.connect(name, tcp).await?;
        tls.write_all(&8u64.to_be_bytes()).await?;
        let mut buf = [0u8; 1];
        tls.read(&mut buf).await
    })
    .await
    .expect("an answer within 10 s");
    let refused = answer
        .as_ref()
        .is_err_and(|e| e.to_string().to_lowercase().contains("certificate"));
    assert!(refused, "a peer without a certificate got {answer:?}");
}

/// The guard's login deadline (`actors/cluster/guard.rs`): a connection must have logged in
/// this long after it was accepted.
const LOGIN_DEADLINE: Duration = Duration::from_secs(5);

/// A field of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`).
fn proc_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// A connection to the cluster port on `port` that never logs in: it announces a frame of
/// `announce` bytes, writes `bulk` bytes of it at once and then a byte every 100 ms, until the
/// node closes it or `window` has passed. Returns how long after connecting the node closed it.
async fn never_log_in(port: u16, announce: u64, bulk: usize, window: Duration) -> Option<Duration> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let start = std::time::Instant::now();
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the cluster port");
    let (mut rd, mut wr) = stream.into_split();
    let closed_by_node = async move {
        let mut buf = [0u8; 1024];
        while let Ok(n) = rd.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    let write = async move {
        if wr.write_all(&announce.to_be_bytes()).await.is_err() {
            return;
        }
        let chunk = vec![0u8; 64 << 10];
        let mut sent = 0;
        while sent + chunk.len() <= bulk {
            if wr.write_all(&chunk).await.is_err() {
                return;
            }
            sent += chunk.len();
        }
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if wr.write_all(b"x").await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = closed_by_node => Some(start.elapsed()),
        _ = write => Some(start.elapsed()),
        _ = tokio::time::sleep(window) => None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_connections_that_never_log_in_is_bounded() {
    let _serial = SERIAL.lock().await;
    // The default log filter, as an operator runs it.
    let mut s = Scenario::start(&["n1"], &[("RUST_LOG", "")]).await;
    let warm = s.enqueue("warm", 20, 10).await;
    s.wait_done(&warm, Duration::from_secs(30)).await;
    let pid = s.nodes["n1"].pid();
    let port = s.ports["n1"];
    let before = proc_kib(pid, "VmRSS");

    // 40 connections that announce an 8 MiB frame and send all of it but the last 64 KiB, then
    // trickle; and 4 that announce a small frame and only trickle (the deadline's business).
    let window = LOGIN_DEADLINE + Duration::from_secs(3);
    let mut flood = Vec::new();
    for _ in 0..4 {
        flood.push(tokio::spawn(never_log_in(port, 100, 0, window)));
    }
    for _ in 0..40 {
        let bulk = (8 << 20) - (64 << 10);
        flood.push(tokio::spawn(never_log_in(port, 8 << 20, bulk, window)));
    }
    let mut peak = before;
    while !flood.iter().all(|h| h.is_finished()) {
        peak = peak.max(proc_kib(pid, "VmRSS"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut closed = Vec::new();
    for h in flood {
        closed.push(h.await.unwrap());
    }
    let growth_mib = peak.saturating_sub(before) as f64 / 1024.0;
    println!(
        "flood of 44 connections: RSS {:.1} MiB before, peak {:.1} MiB (+{growth_mib:.1} MiB); \
         closed after {:?} (the 4 that trickle) and at most {:?} (the 40 that flood)",
        before as f64 / 1024.0,
        peak as f64 / 1024.0,
        &closed[..4],
        closed[4..].iter().flatten().max()
    );
    assert!(
        growth_mib < 32.0,
        "the flood made n1 grow by {growth_mib:.1} MiB"
    );
    for (i, when) in closed.iter().enumerate() {
        let when = when.unwrap_or_else(|| panic!("connection {i} was still open after {window:?}"));
        assert!(
            when <= LOGIN_DEADLINE + Duration::from_secs(2),
            "connection {i} was closed only after {when:?}"
        );
    }

    // The node still works, and a peer still logs in, both ways.
    let after = s.enqueue("after", 20, 10).await;
    s.wait_done(&after, Duration::from_secs(30)).await;
    s.launch("n2");
    s.wait_mesh(&["n1", "n2"]).await;

    // The log: every warning is the guard's, a few of them, and their counts add up to the 44
    // connections (refused at once, closed for an oversized frame, or at the deadline).
    let counted = |log: &str| -> u64 {
        log.lines()
            .filter(|l| l.contains("cluster port:"))
            .filter_map(|l| l.rsplit_once("count=")?.1.trim().parse::<u64>().ok())
            .sum()
    };
    eventually(
        Duration::from_secs(15),
        "the guard to have logged all 44 connections",
        || async { (counted(&s.nodes["n1"].log()) == 44).then_some(()) },
    )
    .await;
    let log = s.nodes["n1"].log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    println!("n1's warnings:\n{}", warnings.join("\n"));
    assert!(
        warnings.iter().all(|l| l.contains("cluster port:")),
        "n1 logged other warnings:\n{}",
        warnings.join("\n")
    );
    assert!(
        warnings.len() <= 6,
        "n1 logged {} warnings about the flood:\n{}",
        warnings.len(),
        warnings.join("\n")
    );
    assert!(
        log.contains("that did not log in within 5s"),
        "no deadline warning:\n{log}"
    );
    assert!(
        s.nodes.get_mut("n1").unwrap().try_exit().is_none(),
        "n1 kept running"
    );
}

/// A longer soak: repeated kills and restarts under load. Runs with `BGNODE_SOAK=1`.
#[tokio::test(flavor = "multi_thread")]
async fn soak_repeated_kills_under_load() {
    if std::env::var("BGNODE_SOAK").as_deref() != Ok("1") {
        println!("soak skipped: set BGNODE_SOAK=1 to run it");
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut s = Scenario::start(&["n1", "n2", "n3"], &[]).await;
    let mut all = Vec::new();
    for round in 0..10 {
        let ids = s.enqueue(&format!("s{round}-"), 1_000, 30).await;
        let victim = ["n1", "n2", "n3"][round % 3];
        eventually(Duration::from_secs(20), "load on the victim", || async {
            s.runs()
                .iter()
                .any(|r| r.node == victim && r.id.starts_with(&format!("s{round}-")))
                .then_some(())
        })
        .await;
        let fault = s.fault(victim, Signal::KILL).await;
        s.wait_done(&ids, Duration::from_secs(120)).await;
        let sum = s
            .summary(
                &format!("soak round {round}: SIGKILL {victim}"),
                &ids,
                Some(&fault),
            )
            .await;
        assert_eq!(sum.lost, 0);
        assert!(sum.duplicated <= sum.in_flight);
        s.nodes
            .get_mut(victim)
            .unwrap()
            .wait_exit(Duration::from_secs(5))
            .await;
        s.launch(victim);
        s.wait_mesh(&["n1", "n2", "n3"]).await;
        all.extend(ids);
    }
    let sum = s.summary("soak total", &all, None).await;
    assert_eq!(sum.lost, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_outage_keeps_the_links_and_fails_nobody_over() {
    let _serial = SERIAL.lock().await;
    let s = Scenario::start(&["n1", "n2", "n3"], &[]).await;
    let before = s.enqueue("r", 30, 20).await;
    s.wait_done(&before, Duration::from_secs(30)).await;

    s.redis.signal(Signal::STOP);
    tokio::time::sleep(Duration::from_secs(4)).await; // the outage itself: Redis hangs
    s.redis.signal(Signal::CONT);

    let after = s.enqueue("s", 30, 20).await;
    s.wait_done(&after, Duration::from_secs(30)).await;
    // Give a wrong failover its chance: a full lease period and more after Redis is back.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (id, node) in &s.nodes {
        let log = node.log();
        for bad in [
            "no heartbeat for",
            "cluster session closed",
            "failed over node",
        ] {
            assert!(
                !log.contains(bad),
                "{id} logged `{bad}` for a Redis outage:\n{log}"
            );
        }
    }
    s.wait_mesh(&["n1", "n2", "n3"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_is_quiet_by_default() {
    let _serial = SERIAL.lock().await;
    // No RUST_LOG: the default filter.
    let s = Scenario::start(&["n1", "n2"], &[("RUST_LOG", "")]).await;
    for (id, node) in &s.nodes {
        let log = node.log();
        assert!(log.contains("cluster session ready"), "{id}: {log}");
        let chatter: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("ractor_cluster") || l.contains("chitchat"))
            .collect();
        assert!(
            chatter.is_empty(),
            "{id} logged library chatter:\n{}",
            chatter.join("\n")
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_process_whose_id_was_taken_over_changes_nothing() {
    let _serial = SERIAL.lock().await;
    let mut s = Scenario::start(&["n1", "n2", "n3"], &[]).await;
    let first = s.enqueue("a", 40, 1_000).await;
    eventually(Duration::from_secs(20), "n3 to run tasks", || async {
        s.runs()
            .iter()
            .any(|r| r.node == "n3" && r.start)
            .then_some(())
    })
    .await;

    // The old process pauses past its lease and is failed over; a new process takes the id.
    let mut old = s.nodes.remove("n3").unwrap();
    old.signal(Signal::STOP);
    eventually(Duration::from_secs(20), "n3 to be failed over", || async {
        s.log_lines("n3")
            .iter()
            .any(|(_, l)| l.contains("failed over node n3"))
            .then_some(())
    })
    .await;
    s.ports.insert("n3".into(), free_port());
    s.launch("n3");
    s.wait_mesh(&["n1", "n2", "n3"]).await;
    let second = s.enqueue("b", 48, 2_500).await;
    eventually(
        Duration::from_secs(20),
        "the new n3 to run tasks",
        || async {
            s.runs()
                .iter()
                .filter(|r| r.node == "n3" && r.start && r.id.starts_with('b'))
                .nth(2)
                .map(|_| ())
        },
    )
    .await;

    // The old one comes back: it finds its id taken and stops, touching nothing of the new one.
    old.signal(Signal::CONT);
    let status = old.wait_exit(Duration::from_secs(30)).await;
    println!("the old n3 exited with {status}");
    assert!(
        old.log().contains("another process took this id"),
        "{}",
        old.log()
    );
    let mut con = s.redis.con().await;
    let member: bool = redis::cmd("SISMEMBER")
        .arg("bg:members")
        .arg("n3")
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(
        member,
        "the old process removed the new one from the members"
    );

    // Nothing the new n3 ran was handed to anyone else while it ran.
    let killed = s.signal("n3", Signal::KILL);
    let mut starts: BTreeMap<String, usize> = BTreeMap::new();
    for r in s.runs() {
        if r.start && r.id.starts_with('b') && r.at < killed {
            *starts.entry(r.id).or_default() += 1;
        }
    }
    let twice: Vec<&String> = starts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| id)
        .collect();
    assert!(
        twice.is_empty(),
        "ran twice while the new n3 held them: {twice:?}"
    );

    // And the new process, killed, is failed over like any other.
    s.wait_done(&first, Duration::from_secs(30)).await;
    s.wait_done(&second, Duration::from_secs(40)).await;
    let sum = s.summary("same id, new process", &second, None).await;
    assert_eq!(sum.lost, 0, "{sum}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_redis_strands_no_task() {
    let _serial = SERIAL.lock().await;
    let s = Scenario::start(&["n1", "n2"], &[]).await;
    let ids = s.enqueue("h", 2_000, 30).await;
    eventually(
        Duration::from_secs(20),
        "the load to be running",
        || async { (s.runs().len() > 200).then_some(()) },
    )
    .await;

    // Redis hangs longer than a call waits for its answer, then applies every queued call.
    s.redis.signal(Signal::STOP);
    tokio::time::sleep(Duration::from_secs(7)).await; // the hang itself
    s.redis.signal(Signal::CONT);
    let resumed = std::time::Instant::now();

    s.wait_done(&ids, Duration::from_secs(40)).await;
    println!(
        "every task done {:.1}s after Redis resumed",
        resumed.elapsed().as_secs_f64()
    );
    for (id, node) in &s.nodes {
        for line in node.log().lines().filter(|l| l.contains("never received")) {
            println!("   {id}: {line}");
        }
    }
    let sum = s.summary("Redis hung for 7 s under load", &ids, None).await;
    assert_eq!(sum.lost, 0, "{sum}");
    let mut con = s.redis.con().await;
    for node in ["n1", "n2"] {
        let owned: Vec<String> = redis::cmd("SMEMBERS")
            .arg(format!("bg:node:{node}:owned"))
            .query_async(&mut con)
            .await
            .unwrap();
        assert!(owned.is_empty(), "{node} still owns {owned:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_ingress_holder_loses_and_doubles_no_acknowledged_message() {
    let _serial = SERIAL.lock().await;
    let s = Scenario::start(&["n1", "n2"], &[]).await;
    let mut con = s.redis.con().await;
    let holder: String = redis::cmd("GET")
        .arg("bg:ingress")
        .query_async(&mut con)
        .await
        .unwrap();
    let holder = holder.split(':').next().unwrap().to_owned();

    // Raw publishes at a steady pace, every other one without an id; the holder pauses for 8 s
    // in the middle.
    let publisher = {
        let url = s.redis.url.clone();
        tokio::spawn(async move {
            let client = redis::Client::open(url).unwrap();
            let config = redis::AsyncConnectionConfig::new()
                .set_response_timeout(Some(Duration::from_secs(30)));
            let mut con = client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .unwrap();
            let mut answers = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            for n in 0..1_200u32 {
                tick.tick().await;
                let msg = if n % 2 == 0 {
                    json!({"worker": "chaos", "id": format!("m{n}"), "args": {"ms": 1, "n": n}})
                } else {
                    json!({"worker": "chaos", "args": {"ms": 1, "n": n}})
                };
                let got: i64 = redis::cmd("PUBLISH")
                    .arg("background")
                    .arg(msg.to_string())
                    .query_async(&mut con)
                    .await
                    .unwrap();
                answers.push(got);
            }
            answers
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await; // publishing before the pause
    s.signal(&holder, Signal::STOP);
    tokio::time::sleep(Duration::from_secs(8)).await; // the pause itself
    s.signal(&holder, Signal::CONT);
    let answers = publisher.await.unwrap();

    let twice: Vec<usize> = (0..answers.len()).filter(|n| answers[*n] > 1).collect();
    assert!(
        twice.is_empty(),
        "{} messages reached two subscribers (first: {:?})",
        twice.len(),
        twice.first()
    );
    let acked: BTreeSet<u64> = (0..answers.len())
        .filter(|n| answers[*n] == 1)
        .map(|n| n as u64)
        .collect();
    let unheard = answers.iter().filter(|a| **a == 0).count();
    println!(
        "acknowledged {} of {} publishes ({unheard} while no node listened)",
        acked.len(),
        answers.len()
    );

    // Every acknowledged message is stored, exactly once.
    let stored = eventually(
        Duration::from_secs(30),
        "every acknowledged message to be stored",
        || async {
            let mut con = s.redis.con().await;
            let mut count: BTreeMap<u64, usize> = BTreeMap::new();
            let mut cursor = 0u64;
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg("bg:task:*")
                    .arg("COUNT")
                    .arg(1_000)
                    .query_async(&mut con)
                    .await
                    .ok()?;
                let mut pipe = redis::pipe();
                for k in &keys {
                    pipe.cmd("HGET").arg(k).arg("args");
                }
                let args: Vec<Option<String>> = pipe.query_async(&mut con).await.ok()?;
                for a in args.into_iter().flatten() {
                    let v: Value = serde_json::from_str(&a).ok()?;
                    if let Some(n) = v["n"].as_u64() {
                        *count.entry(n).or_default() += 1;
                    }
                }
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
            acked.iter().all(|n| count.contains_key(n)).then_some(count)
        },
    )
    .await;
    let doubled: Vec<(&u64, &usize)> = stored.iter().filter(|(_, c)| **c > 1).collect();
    assert!(doubled.is_empty(), "stored twice: {doubled:?}");
    for (id, node) in &s.nodes {
        for line in node.log().lines().filter(|l| {
            l.contains("ingress") || l.contains("arrived before the subscription ended")
        }) {
            println!("   {id}: {line}");
        }
    }
}

/// The libfaketime library (Debian package `faketime`), which shifts a process's clock.
fn libfaketime() -> String {
    let found = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|d| d.path().join("faketime/libfaketimeMT.so.1"))
        .chain([Path::new("/usr/lib/faketime/libfaketimeMT.so.1").to_path_buf()])
        .find(|p| p.exists());
    found
        .expect("libfaketime is missing: apt-get install -y faketime")
        .display()
        .to_string()
}

/// The environment that runs a process with its clock shifted by `offset` (`+30s`, `-30s`).
fn skewed(offset: &str) -> Vec<(String, String)> {
    vec![
        ("LD_PRELOAD".into(), libfaketime()),
        ("FAKETIME".into(), offset.into()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
    ]
}

/// Redis's clock (`TIME`), Unix ms.
async fn redis_now(redis: &Redis) -> u64 {
    let mut con = redis.con().await;
    let (s, us): (u64, u64) = redis::cmd("TIME").query_async(&mut con).await.unwrap();
    s * 1000 + us / 1000
}

#[tokio::test(flavor = "multi_thread")]
async fn clocks_minutes_apart_decide_nothing() {
    let _serial = SERIAL.lock().await;
    let redis = Redis::start();
    let workers = common::test_workers();
    let ports = [free_port(), free_port()];
    let mut nodes = Vec::new();
    for (i, (id, offset)) in [("fast", "+30s"), ("slow", "-30s")].into_iter().enumerate() {
        let listen = format!("127.0.0.1:{}", ports[i]);
        let seeds = format!("127.0.0.1:{}", ports[1 - i]);
        let mut env: Vec<(String, String)> = vec![
            ("BGNODE_NODE__LISTEN".into(), listen),
            ("BGNODE_NODE__SEEDS".into(), seeds),
        ];
        env.extend(skewed(offset));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        nodes.push(NodeProc::start(&redis, id, workers.path(), &env));
    }
    let client = Client::connect(&redis.url).await.unwrap();
    eventually(Duration::from_secs(30), "both nodes up", || async {
        let info = client.info().await.ok()?;
        (info.iter().filter(|m| m.state == "up").count() == 2).then_some(())
    })
    .await;
    // The preload works: the fast node's log runs half a minute ahead.
    let line = nodes[0].log();
    let stamp = line
        .lines()
        .find(|l| l.contains("node starting"))
        .and_then(|l| background::time::parse_time(l.split_whitespace().next()?).ok())
        .expect("a timestamped start line");
    let ahead = stamp as i64 - redis_now(&redis).await as i64;
    assert!(
        (25_000..35_000).contains(&ahead),
        "the fast node's clock is {ahead} ms ahead"
    );

    // Delayed by 3 s: from this process, and from CLIs 30 s fast and 30 s slow.
    let t0 = redis_now(&redis).await;
    client
        .enqueue(
            TaskSpec::new("record", json!({}))
                .id("in-client")
                .delay(Duration::from_secs(3)),
        )
        .await
        .unwrap();
    for (id, offset) in [("in-fast-cli", "+30s"), ("in-slow-cli", "-30s")] {
        let env = skewed(offset);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let (code, _, err) = common::cli_env(
            &redis,
            &env,
            &["do", "record", "{}", "--in", "3s", "--id", id],
        )
        .await;
        assert_eq!(code, 0, "{err}");
    }
    // A recurring task every second, fired by both skewed schedulers.
    client
        .enqueue(
            TaskSpec::new("record", json!({}))
                .id("tick")
                .repeat(background::Recurrence::Every(Duration::from_secs(1))),
        )
        .await
        .unwrap();
    // Deadlines: one that no node can meet (nobody offers the worker) must not expire early;
    // one each node can meet must run there.
    client
        .enqueue(
            TaskSpec::new("nobody-runs-this", json!({}))
                .id("orphan")
                .deadline(Duration::from_secs(2)),
        )
        .await
        .unwrap();
    for node in ["fast", "slow"] {
        client
            .enqueue(
                TaskSpec::new("record", json!({}))
                    .id(format!("dl-{node}"))
                    .deadline(Duration::from_secs(20))
                    .target(background::Target::Node(node.into())),
            )
            .await
            .unwrap();
    }
    // Plain tasks on each node, for the recorded times.
    for node in ["fast", "slow"] {
        for i in 0..5 {
            client
                .enqueue(
                    TaskSpec::new("record", json!({}))
                        .id(format!("on-{node}-{i}"))
                        .target(background::Target::Node(node.into())),
                )
                .await
                .unwrap();
        }
    }

    let state = |id: &'static str| {
        let redis = &redis;
        async move { common::state_of(redis, id).await }
    };
    // The orphan expires when its deadline passes by Redis's clock, not before; its record says
    // so too.
    let mut figures = Vec::new();
    let seen = eventually(Duration::from_secs(10), "the orphan to expire", || async {
        let expired = state("orphan").await.as_deref() == Some("expired");
        match expired {
            true => Some(redis_now(&redis).await),
            false => None,
        }
    })
    .await;
    let finished = common::num_field(&redis, "orphan", "finished").await;
    let created = common::num_field(&redis, "orphan", "created").await;
    let (seen, finished) = (seen as i64 - t0 as i64, finished as i64 - t0 as i64);
    figures.push(format!(
        "a 2 s deadline expired after {seen} ms (recorded {finished} ms)"
    ));
    assert!(
        (2_000..4_000).contains(&seen) && (2_000..4_000).contains(&finished),
        "a 2 s deadline expired {seen} ms after enqueue, recorded as {finished} ms"
    );
    assert!(
        created.abs_diff(t0) < 1_000,
        "created {created}, enqueued at {t0}"
    );

    // Nothing delayed ran early or late.
    eventually(
        Duration::from_secs(10),
        "the delayed tasks to finish",
        || async {
            for id in ["in-client", "in-fast-cli", "in-slow-cli"] {
                if state(id).await.as_deref() != Some("done") {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    let runs = common::runs(workers.path());
    for id in ["in-client", "in-fast-cli", "in-slow-cli"] {
        let ran = runs.iter().find(|r| r.0 == id).map(|r| r.3).unwrap();
        let after = ran as i64 - t0 as i64;
        figures.push(format!("{id} ran after {after} ms"));
        assert!(
            (3_000..4_500).contains(&after),
            "{id}, due in 3 s, ran {after} ms after it was enqueued"
        );
    }
    for node in ["fast", "slow"] {
        let id = format!("dl-{node}");
        eventually(WAIT_CLOCK, &format!("{id} to end"), || async {
            let s = common::state_of(&redis, &id).await?;
            (s != "queued" && s != "running").then_some(s)
        })
        .await;
        assert_eq!(
            common::state_of(&redis, &id).await.as_deref(),
            Some("done"),
            "{id} had 20 s to start"
        );
    }

    // The recurrence: every occurrence once, one second apart, none early or late.
    let ticks = eventually(Duration::from_secs(10), "5 occurrences", || async {
        let r: Vec<_> = common::runs(workers.path())
            .into_iter()
            .filter(|r| r.0.starts_with("tick@"))
            .collect();
        (r.len() >= 5).then_some(r)
    })
    .await;
    client.cancel("tick").await.unwrap();
    let mut dues: Vec<u64> = ticks
        .iter()
        .map(|r| r.0.rsplit('@').next().unwrap().parse().unwrap())
        .collect();
    dues.sort_unstable();
    assert!(
        dues[0].abs_diff(t0) < 1_000,
        "first occurrence due {dues:?}, enqueued at {t0}"
    );
    for pair in dues.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            1_000,
            "one occurrence a second: {dues:?}"
        );
    }
    for r in &ticks {
        let due: u64 = r.0.rsplit('@').next().unwrap().parse().unwrap();
        let late = r.3 as i64 - due as i64;
        figures.push(format!("occurrence {} ms after its time", late));
        assert!(
            (0..1_000).contains(&late),
            "{} ran {late} ms after its due time",
            r.0
        );
    }
    println!("clocks 30 s fast and slow: {}", figures.join(", "));

    // Every record's times are in order, whichever clock ran it.
    let mut ids: Vec<String> = [
        "in-client",
        "in-fast-cli",
        "in-slow-cli",
        "dl-fast",
        "dl-slow",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    ids.extend(ticks.iter().map(|r| r.0.clone()));
    for node in ["fast", "slow"] {
        ids.extend((0..5).map(|i| format!("on-{node}-{i}")));
    }
    for id in &ids {
        common::wait_state(&redis, id, "done").await;
        let created = common::num_field(&redis, id, "created").await;
        let started = common::num_field(&redis, id, "started").await;
        let finished = common::num_field(&redis, id, "finished").await;
        assert!(
            created <= started && started <= finished,
            "{id}: created {created}, started {started}, finished {finished}"
        );
    }
}

/// How long a task with a deadline may take to end.
const WAIT_CLOCK: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread")]
async fn a_graceful_leave_logs_clean_lines() {
    let _serial = SERIAL.lock().await;
    // No RUST_LOG: the default filter.
    let mut s = Scenario::start(&["n1", "n2", "n3"], &[("RUST_LOG", "")]).await;
    let ids = s.enqueue("leave", 30, 20).await;
    s.wait_done(&ids, Duration::from_secs(30)).await;

    // n3 leaves on SIGTERM, n2 on `bgnode stop`.
    s.signal("n3", Signal::TERM);
    let n3 = s.nodes.get_mut("n3").unwrap();
    assert!(n3.wait_exit(Duration::from_secs(20)).await.success());
    // The ingress lease may still be moving off n3: ask until a node listens.
    eventually(
        Duration::from_secs(10),
        "`bgnode stop` to reach n2",
        || async {
            let (code, _, _) = cli(&s.redis, &["stop", "--node", "n2"]).await;
            (code == 0).then_some(())
        },
    )
    .await;
    let n2 = s.nodes.get_mut("n2").unwrap();
    assert!(n2.wait_exit(Duration::from_secs(20)).await.success());
    for gone in ["n2", "n3"] {
        s.nodes["n1"]
            .wait_log(
                &format!("INFO background::cluster::membership: node {gone} left the cluster"),
                Duration::from_secs(10),
            )
            .await;
    }
    for (id, node) in &s.nodes {
        let log = node.log();
        let unclean: Vec<&str> = log
            .lines()
            .filter(|l| !l.contains(" INFO ") || l.contains("Some(") || l.contains(" { "))
            .collect();
        assert!(
            unclean.is_empty(),
            "{id} logged more than clean INFO lines for a graceful leave:\n{}",
            unclean.join("\n")
        );
    }
}

/// A node whose cluster links are cut but which reaches Redis keeps taking its share of a steady
/// stream of tasks (wakes reach it through Redis), and says what is wrong once instead of
/// warning many times a second. Before, it ran tasks only when its once-a-second probe of the
/// pending set happened to find one: well under 1% of the stream.
#[tokio::test(flavor = "multi_thread")]
async fn a_partitioned_node_keeps_claiming_and_warns_a_few_times() {
    let _serial = SERIAL.lock().await;
    let mut s = Scenario::start(&["n1", "n2"], &[]).await;
    s.launch_partitioned("n3");
    eventually(Duration::from_secs(30), "n3 to be up, alone", || async {
        let info = s.client.info().await.ok()?;
        let n3 = info.iter().find(|m| m.id == "n3" && m.state == "up")?;
        let alone = n3.peers.is_empty()
            && info
                .iter()
                .filter(|m| m.id != "n3")
                .all(|m| !m.peers.iter().any(|p| p == "n3"));
        alone.then_some(())
    })
    .await;
    // A steady stream, as real traffic arrives: 10 tasks of 50 ms every 100 ms for 15 s.
    let mut ids = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    for batch in 0..150 {
        tick.tick().await;
        let specs: Vec<TaskSpec> = (0..10)
            .map(|i| TaskSpec::new("chaos", json!({"ms": 50})).id(format!("p{batch}-{i}")))
            .collect();
        ids.extend(s.client.enqueue_all(specs).await.unwrap());
    }
    s.wait_done(&ids, Duration::from_secs(60)).await;
    let sum = s
        .summary(
            "partition: n3 cut off from the links, 1,500 tasks of 50 ms over 15 s",
            &ids,
            None,
        )
        .await;
    assert_eq!(sum.lost, 0, "{sum}");
    assert_eq!(sum.duplicated, 0, "{sum}");
    let share = sum.share.get("n3").copied().unwrap_or(0.0);
    assert!(
        share >= 0.15,
        "the partitioned node ran {:.1}%: {sum}",
        share * 100.0
    );
    let log = s.nodes["n3"].log();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains(" WARN ")).collect();
    println!("n3 logged {} warnings", warnings.len());
    assert!(
        warnings.len() <= 5,
        "n3 warned too often:\n{}",
        warnings.join("\n")
    );
    for id in ["n1", "n2"] {
        let log = s.nodes[id].log();
        assert!(
            log.contains("node n3 renews its lease in redis but the cluster link cannot reach it"),
            "{id} did not say n3 is cut off:\n{log}"
        );
    }
}

/// Garbage datagrams on the gossip port, as many as a loop can send in 3 s, are logged a few
/// times, not once each (before: one warning per datagram, thousands), and leave the node
/// working.
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_gossip_garbage_is_logged_a_few_times() {
    let _serial = SERIAL.lock().await;
    let s = Scenario::start(&["n1", "n2"], &[]).await;
    let port = s.ports["n1"];
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(3);
    let mut sent = 0u64;
    while std::time::Instant::now() < until {
        for _ in 0..100 {
            if udp
                .send_to(b"\x00\x01garbage", ("127.0.0.1", port))
                .await
                .is_ok()
            {
                sent += 1;
            }
        }
        tokio::task::yield_now().await;
    }
    let ids = s.enqueue("after", 20, 10).await;
    s.wait_done(&ids, Duration::from_secs(30)).await;
    let log = s.nodes["n1"].log();
    let lines = log
        .lines()
        .filter(|l| l.contains("invalid-chitchat-payload"))
        .count();
    println!("{sent} garbage datagrams sent; {lines} lines about them logged");
    assert!(sent > 1_000, "only {sent} datagrams sent");
    assert!(
        (1..=3).contains(&lines),
        "{lines} lines about {sent} garbage datagrams:\n{}",
        log.lines()
            .filter(|l| l.contains("invalid-chitchat-payload"))
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(log.contains("repeat: at most 1 per 30s"), "{log}");
}
