//! The handlers of `/api/v1`. Each reads and checks its input, calls the [`Client`] (the same
//! durable enqueue and the same store queries as the CLI), and answers JSON; failures are
//! [`ApiError`]s.
//!
//! [`Client`]: crate::client::Client

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{ApiError, BATCH_FACTOR, MAX_BATCH, MAX_WAIT, Shared};
use crate::client::{ClientError, TaskResult};
use crate::decide::times::parse_duration;
use crate::model::envelope::parse_tasks;
use crate::model::names::{shorten, validate_worker_name};
use crate::model::task::{validate_stored_id, validate_token};
use crate::store::{Accepted, CancelResult, Cursor, DeleteResult, Listed, RetryResult, TaskQuery};

/// Most tasks in one page of `GET /tasks`.
const MAX_LIMIT: usize = 500;
/// Tasks in a page of `GET /tasks` when `limit` is not given.
const DEFAULT_LIMIT: usize = 50;

/// The query parameters of a request, each at most once and each one of `allowed`.
/// The `limit` parameter: `default` when absent, else a number in `1..=max` (400 otherwise).
pub(super) fn limit_param(
    p: &HashMap<String, String>,
    default: usize,
    max: usize,
) -> Result<usize, ApiError> {
    let Some(text) = p.get("limit") else {
        return Ok(default);
    };
    text.parse::<usize>()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| {
            ApiError::bad(
                "limit",
                format!("`{}` is not a number in 1..={max}", shorten(text, 40)),
            )
        })
}

pub(super) fn params(
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    allowed: &[&str],
) -> Result<HashMap<String, String>, ApiError> {
    let Query(pairs) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("bad query: {e}")))?;
    let mut out = HashMap::new();
    for (name, value) in pairs {
        if !allowed.contains(&name.as_str()) {
            return Err(ApiError::bad(
                &shorten(&name, 40),
                format!(
                    "unknown query parameter `{}` (allowed: {})",
                    shorten(&name, 40),
                    if allowed.is_empty() {
                        "none".to_owned()
                    } else {
                        allowed.join(", ")
                    }
                ),
            ));
        }
        if out.insert(name.clone(), value).is_some() {
            return Err(ApiError::bad(
                &name,
                format!("query parameter `{name}` is given more than once"),
            ));
        }
    }
    Ok(out)
}

/// A worker name from the path or the query, through the allowlist.
pub(super) fn worker_name(field: &str, name: &str) -> Result<String, ApiError> {
    validate_worker_name(name).map_err(|e| ApiError::bad(field, e.to_string()))?;
    Ok(name.to_owned())
}

/// A task id from the path: a client's, or one the cluster made (an occurrence's
/// `{template}@{due}`, a node's copy `{parent}@{node}`).
pub(super) fn task_id(id: &str) -> Result<(), ApiError> {
    validate_stored_id(id).map_err(|e| ApiError::bad("id", e.to_string()))
}

fn no_task(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no task {id} (never enqueued, deleted, or expired)"),
    )
}

/// `GET /overview`: counts per state and per worker, the members, the throughput.
pub(super) async fn overview(
    State(s): State<Shared>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    params(query, &[])?;
    let counts = s.client.counts().await?;
    let members = s.client.info().await?;
    let throughput = s.client.throughput().await?;
    let mut workers: BTreeMap<String, BTreeMap<&str, Value>> = BTreeMap::new();
    for (worker, c) in &counts.workers {
        let entry = workers.entry(worker.clone()).or_default();
        entry.insert("pending", json!(c.get("pending").copied().unwrap_or(0)));
    }
    for m in &members {
        for (worker, load) in &m.workers {
            let entry = workers.entry(worker.clone()).or_default();
            for (name, n) in [
                ("running", load.running),
                ("claimed", load.queued),
                ("capacity", load.capacity),
            ] {
                let sum = entry.get(name).and_then(Value::as_u64).unwrap_or(0) + u64::from(n);
                entry.insert(name, json!(sum));
            }
            let nodes = entry.entry("nodes").or_insert_with(|| json!([]));
            if let Some(list) = nodes.as_array_mut() {
                list.push(json!(m.id));
            }
        }
    }
    for worker in &counts.paused {
        workers.entry(worker.clone()).or_default();
    }
    for (worker, entry) in &mut workers {
        for name in ["pending", "running", "claimed", "capacity"] {
            entry.entry(name).or_insert(json!(0));
        }
        entry.entry("nodes").or_insert_with(|| json!([]));
        entry.insert("paused", json!(counts.paused.contains(worker)));
    }
    Ok(Json(json!({
        "node": s.node,
        "states": counts.states,
        "workers": workers,
        "paused": counts.paused,
        "members": members,
        "throughput": throughput,
    })))
}

/// `GET /tasks?state=&worker=&node=&limit=&cursor=`: one page, newest first.
pub(super) async fn list(
    State(s): State<Shared>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let p = params(query, &["state", "worker", "node", "limit", "cursor"])?;
    let listed = match p.get("state") {
        None => None,
        Some(text) => Some(Listed::parse(text).ok_or_else(|| {
            let all: Vec<&str> = Listed::ALL.iter().map(|l| l.as_str()).collect();
            ApiError::bad(
                "state",
                format!(
                    "unknown state `{}` (one of: {})",
                    shorten(text, 40),
                    all.join(", ")
                ),
            )
        })?),
    };
    let worker = p
        .get("worker")
        .map(|w| worker_name("worker", w))
        .transpose()?;
    let node = match p.get("node") {
        Some(n) => {
            validate_token("node", n).map_err(|e| ApiError::bad("node", e.to_string()))?;
            Some(n.clone())
        }
        None => None,
    };
    let limit = limit_param(&p, DEFAULT_LIMIT, MAX_LIMIT)?;
    let after = match p.get("cursor") {
        None => None,
        Some(text) => Some(Cursor::parse(text).ok_or_else(|| {
            ApiError::bad(
                "cursor",
                "not a cursor: pass the `next` of the previous page as it is",
            )
        })?),
    };
    let page = s
        .client
        .tasks(&TaskQuery {
            listed,
            worker,
            node,
            limit,
            after,
        })
        .await?;
    Ok(Json(json!(page)))
}

/// `GET /tasks/{id}`: the record, its attempts and its timeline; once Redis no longer holds
/// it, its row in the archive (when the node has one), marked `"archived": true`.
pub(super) async fn detail(
    State(s): State<Shared>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    task_id(&id)?;
    if let Some(d) = s.client.detail(&id).await? {
        return Ok(Json(json!(d)));
    }
    match super::history::archived(&s, &id).await? {
        Some(row) => Ok(Json(row)),
        None => Err(no_task(&id)),
    }
}

/// Reads a request body of at most `limit` bytes: 413 beyond.
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    let too_big = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is over the {limit}-byte limit"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_big());
    }
    axum::body::to_bytes(body, limit)
        .await
        .map(|b| b.to_vec())
        .map_err(|_| too_big())
}

/// `POST /tasks[?wait=30s]`: stores one envelope or an array of them, durably; with `wait`,
/// answers with the results.
pub(super) async fn enqueue(
    State(s): State<Shared>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let p = params(query, &["wait"])?;
    let wait = match p.get("wait") {
        None => None,
        Some(text) => {
            let d = parse_duration(text).map_err(|e| ApiError::bad("wait", e))?;
            if d > MAX_WAIT {
                return Err(ApiError::bad(
                    "wait",
                    format!("at most {}s", MAX_WAIT.as_secs()),
                ));
            }
            Some(d)
        }
    };
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        });
    if !json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the envelope as `Content-Type: application/json`",
        ));
    }
    let bytes = read_body(&headers, body, s.message_bytes * BATCH_FACTOR).await?;
    let (specs, batch) = parse_tasks(&bytes, s.message_bytes, MAX_BATCH).map_err(|e| {
        let mut err = ApiError::new(StatusCode::BAD_REQUEST, e.reason);
        err.field = e.field;
        err
    })?;
    let (specs, stored) = s.client.store_each(specs).await?;
    s.metrics
        .stored(specs.iter().map(|t| t.worker.as_str()), &stored);
    let why = s.client.unrunnable_each(&specs).await.unwrap_or_default();
    if !batch && stored[0].1 == Accepted::Refused {
        return Err(ClientError::KeyFull {
            key: specs[0].key.clone().unwrap_or_default(),
            limit: s.client.key_limit(),
        }
        .into());
    }
    if let Some(wait) = wait {
        let ids: Vec<String> = stored.iter().map(|(id, _)| id.clone()).collect();
        let results = futures::future::join_all(ids.iter().map(|id| waited(&s, id, wait))).await;
        let mut answers = Vec::new();
        for r in results {
            answers.push(r?);
        }
        if batch {
            return Ok(Json(json!({ "tasks": answers })).into_response());
        }
        let answer = answers.remove(0);
        let status = if answer["finished"] == true {
            StatusCode::OK
        } else {
            StatusCode::ACCEPTED
        };
        return Ok((status, Json(answer)).into_response());
    }
    let answers: Vec<Value> = stored
        .iter()
        .enumerate()
        .map(|(i, (id, accepted))| {
            json!({
                "id": id,
                "outcome": accepted,
                "unrunnable": why.get(i).cloned().flatten().map(|u| u.to_string()),
            })
        })
        .collect();
    if batch {
        return Ok(Json(json!({ "tasks": answers })).into_response());
    }
    let status = if stored[0].1 == Accepted::Exists {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(answers[0].clone())).into_response())
}

/// Waits up to `wait` for task `id`; its outcome as `{"id","state","result","error",
/// "finished"}`.
async fn waited(s: &Shared, id: &str, wait: Duration) -> Result<Value, ApiError> {
    match s.client.wait(id, wait).await {
        Ok(result) => Ok(json!({
            "id": id, "state": "done", "result": result, "error": null, "finished": true
        })),
        Err(ClientError::Failed { state, error, .. }) => Ok(json!({
            "id": id, "state": state, "result": null, "error": error, "finished": true
        })),
        Err(ClientError::Timeout { .. }) => {
            let state = match s.client.result(id).await? {
                TaskResult::Pending(state) => state,
                _ => "unknown".to_owned(),
            };
            Ok(json!({
                "id": id, "state": state, "result": null, "error": null, "finished": false
            }))
        }
        Err(e) => Err(e.into()),
    }
}

/// `POST /tasks/{id}/cancel`.
pub(super) async fn cancel(
    State(s): State<Shared>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    task_id(&id)?;
    match s.client.cancel(&id).await? {
        CancelResult::NotFound => Err(no_task(&id)),
        CancelResult::Finished => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("task {id} has already finished"),
        )),
        outcome => Ok(Json(json!({"id": id, "outcome": outcome}))),
    }
}

/// `POST /tasks/{id}/retry`.
pub(super) async fn retry(
    State(s): State<Shared>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    task_id(&id)?;
    match s.client.retry(&id).await? {
        RetryResult::NotFound => Err(no_task(&id)),
        RetryResult::NotFinished => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("task {id} has not finished (or is a recurring template): nothing to retry"),
        )),
        outcome => Ok(Json(json!({"id": id, "outcome": outcome}))),
    }
}

/// `DELETE /tasks/{id}`: a finished task only.
pub(super) async fn remove(
    State(s): State<Shared>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    task_id(&id)?;
    match s.client.delete(&id).await? {
        DeleteResult::NotFound => Err(no_task(&id)),
        DeleteResult::NotFinished => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "task {id} has not finished: only done, failed, dead, cancelled or expired tasks are deleted (cancel it first)"
            ),
        )),
        DeleteResult::Deleted => Ok(Json(json!({"id": id, "outcome": "deleted"}))),
    }
}

/// The `worker` query parameter of the dead-set actions.
fn dead_worker(
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Option<String>, ApiError> {
    params(query, &["worker"])?
        .get("worker")
        .map(|w| worker_name("worker", w))
        .transpose()
}

/// `POST /dead/retry[?worker=]`.
pub(super) async fn retry_dead(
    State(s): State<Shared>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let worker = dead_worker(query)?;
    let n = s.client.retry_dead(worker.as_deref()).await?;
    Ok(Json(json!({"retried": n, "worker": worker})))
}

/// `DELETE /dead[?worker=]`.
pub(super) async fn delete_dead(
    State(s): State<Shared>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let worker = dead_worker(query)?;
    let n = s.client.delete_dead(worker.as_deref()).await?;
    Ok(Json(json!({"deleted": n, "worker": worker})))
}

/// `POST /workers/{name}/pause`.
pub(super) async fn pause(
    State(s): State<Shared>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let worker = worker_name("name", &name)?;
    let changed = s.client.pause(&worker).await?;
    Ok(Json(
        json!({"worker": worker, "paused": true, "changed": changed}),
    ))
}

/// `POST /workers/{name}/resume`.
pub(super) async fn resume(
    State(s): State<Shared>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let worker = worker_name("name", &name)?;
    let changed = s.client.resume(&worker).await?;
    Ok(Json(
        json!({"worker": worker, "paused": false, "changed": changed}),
    ))
}

/// `GET /nodes`: the members as this node's cluster view has them (address, load per worker,
/// leaving), with what each reports in Redis; a live member this node does not see is listed
/// with `"seen": false`.
pub(super) async fn nodes(State(s): State<Shared>) -> Result<Json<Value>, ApiError> {
    let view = s.cluster.view();
    let reported = s.client.info().await?;
    let mut out = Vec::new();
    let me = reported.iter().find(|m| m.id == s.node);
    out.push(json!({
        "id": s.node,
        "this": true,
        "seen": true,
        "leaving": s.cluster.is_leaving(&s.node),
        "workers": s.cluster.own_load(),
        "addr": me.and_then(|m| m.addr.clone()),
        "generation": me.and_then(|m| m.generation),
        "peers": view.peers.keys().collect::<Vec<_>>(),
    }));
    for (id, peer) in &view.peers {
        let report = reported.iter().find(|m| &m.id == id);
        out.push(json!({
            "id": id,
            "this": false,
            "seen": true,
            "leaving": peer.leaving,
            "workers": peer.load,
            "addr": peer.addr,
            "generation": peer.generation,
            "peers": report.map(|m| m.peers.clone()).unwrap_or_default(),
        }));
    }
    for m in &reported {
        if m.id != s.node && !view.peers.contains_key(&m.id) {
            out.push(json!({
                "id": m.id,
                "this": false,
                "seen": false,
                "leaving": m.state == "leaving",
                "workers": m.workers,
                "addr": m.addr,
                "generation": m.generation,
                "peers": m.peers,
            }));
        }
    }
    Ok(Json(json!({"node": s.node, "nodes": out})))
}
