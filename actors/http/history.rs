//! The archive over HTTP: `GET /api/v1/history` (finished tasks, filtered and paged),
//! `GET /api/v1/history/{id}` (one archived row), and the archived row `GET /api/v1/tasks/{id}`
//! answers once a task has left Redis.
//!
//! [`ArchiveLink`] is the HTTP side's one connection to PostgreSQL: made on first use, made
//! again once it is closed, shared by every handler. Only the making of a connection is done
//! under its lock; queries run beside each other on the shared client, each under
//! [`QUERY_TIME`]. PostgreSQL away never holds the server: a failed connect is remembered for
//! [`RETRY_AFTER`], and the calls in that time are answered 503 at once, without a new try.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::api::{limit_param, params, task_id, worker_name};
use super::{ApiError, Shared};
use crate::archive::{
    Archive, ArchiveError, FINAL_STATES, HistoryPage, HistoryQuery, HistoryRow, read_cursor,
};
use crate::config::Settings;
use crate::decide::times::parse_time;
use crate::model::names::shorten;

/// Most rows in one page of `GET /history`.
pub(crate) const MAX_LIMIT: usize = 500;
/// Rows in a page when `limit` is not given.
const DEFAULT_LIMIT: usize = 50;
/// Longest a query may take before it is answered 503 (and its connection dropped).
const QUERY_TIME: Duration = Duration::from_secs(10);
/// How long after a failed connect the calls are answered 503 without trying again.
const RETRY_AFTER: Duration = Duration::from_secs(2);
/// The largest time `since` and `until` take as Unix ms: the end of the year 9999.
const MAX_MS: u64 = 253_402_300_799_999;

/// The HTTP side's connection to the archive, when the node has one (`[saver] archive`).
pub(crate) struct ArchiveLink {
    /// The settings to connect with; `None` when no archive is configured.
    settings: Option<Settings>,
    /// The connection, once made, and the time of the last failed connect.
    slot: Mutex<Slot>,
}

#[derive(Default)]
struct Slot {
    archive: Option<Arc<Archive>>,
    failed: Option<Instant>,
}

impl ArchiveLink {
    /// The link for `settings`; connects on first use.
    pub(crate) fn new(settings: &Settings) -> ArchiveLink {
        ArchiveLink {
            settings: settings.saver.archives().then(|| settings.clone()),
            slot: Mutex::new(Slot::default()),
        }
    }

    /// True when this node has an archive.
    pub(crate) fn configured(&self) -> bool {
        self.settings.is_some()
    }

    /// The open connection: the one kept, or a new one when there is none or it closed.
    async fn open(&self) -> Result<Arc<Archive>, ApiError> {
        let Some(settings) = &self.settings else {
            return Err(off());
        };
        let mut slot = self.slot.lock().await;
        if let Some(archive) = slot.archive.as_ref().filter(|a| !a.is_closed()) {
            return Ok(archive.clone());
        }
        slot.archive = None;
        if slot.failed.is_some_and(|at| at.elapsed() < RETRY_AFTER) {
            return Err(unavailable());
        }
        match Archive::connect(settings).await {
            Ok(archive) => {
                if slot.failed.take().is_some() {
                    tracing::info!("http api: the archive answers again");
                }
                let archive = Arc::new(archive);
                slot.archive = Some(archive.clone());
                Ok(archive)
            }
            Err(e) => {
                if slot.failed.replace(Instant::now()).is_none() {
                    tracing::warn!("http api: cannot reach the archive: {e}");
                }
                Err(failure(e))
            }
        }
    }

    /// Forgets `archive` when it is still the one kept (it timed out: the next call connects
    /// again).
    async fn drop_link(&self, archive: &Arc<Archive>) {
        let mut slot = self.slot.lock().await;
        if slot
            .archive
            .as_ref()
            .is_some_and(|a| Arc::ptr_eq(a, archive))
        {
            slot.archive = None;
        }
    }

    /// A page of history.
    pub(crate) async fn history(&self, query: &HistoryQuery) -> Result<HistoryPage, ApiError> {
        // A connection that closed under the query (PostgreSQL restarted) is made again once.
        for retry in [false, true] {
            let archive = self.open().await?;
            match tokio::time::timeout(QUERY_TIME, archive.history(query)).await {
                Ok(Ok(page)) => return Ok(page),
                Ok(Err(ArchiveError::Db(_))) if !retry && archive.is_closed() => continue,
                Ok(Err(e)) => return Err(failure(e)),
                Err(_) => {
                    self.drop_link(&archive).await;
                    tracing::warn!(
                        "http api: the archive did not answer within {}s",
                        QUERY_TIME.as_secs()
                    );
                    return Err(unavailable());
                }
            }
        }
        Err(unavailable())
    }

    /// The archived row of task `id`, if any.
    pub(crate) async fn find(&self, id: &str) -> Result<Option<HistoryRow>, ApiError> {
        let page = self
            .history(&HistoryQuery {
                id: Some(id.to_owned()),
                limit: 1,
                ..HistoryQuery::default()
            })
            .await?;
        Ok(page.rows.into_iter().next())
    }
}

/// The answer when the node has no archive (the dashboard tells it by its start, `no archive`).
fn off() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no archive on this node: finished tasks are kept in Redis only until saver.result_ttl; \
         set saver.archive to a PostgreSQL URL (BGNODE_SAVER__ARCHIVE, or `bgnode start --save URL`) \
         to keep them all",
    )
}

fn unavailable() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "the archive (PostgreSQL) cannot be reached now; try again",
    )
}

/// An archive failure as an answer; the details are logged here, not sent.
fn failure(e: ArchiveError) -> ApiError {
    match e {
        ArchiveError::Off => off(),
        ArchiveError::Query(message) => ApiError::new(StatusCode::BAD_REQUEST, message),
        other => {
            tracing::debug!("http api: archive: {other}");
            unavailable()
        }
    }
}

/// A time of `since` or `until`: Unix ms (digits only), or what `parse_time` reads.
fn moment(field: &str, text: &str) -> Result<u64, ApiError> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<u64>()
            .ok()
            .filter(|ms| *ms <= MAX_MS)
            .ok_or_else(|| {
                ApiError::bad(
                    field,
                    format!("`{}` is past the year 9999 in Unix ms", shorten(text, 40)),
                )
            });
    }
    parse_time(text).map_err(|e| ApiError::bad(field, shorten(&e, 200)))
}

/// The [`HistoryQuery`] of `GET /history`'s parameters, each checked.
fn history_query(
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<HistoryQuery, ApiError> {
    let p = params(
        query,
        &["worker", "state", "since", "until", "id", "limit", "cursor"],
    )?;
    let state = match p.get("state") {
        Some(s) if !FINAL_STATES.contains(&s.as_str()) => {
            return Err(ApiError::bad(
                "state",
                format!(
                    "`{}` is not a state the archive keeps (one of: {})",
                    shorten(s, 40),
                    FINAL_STATES.join(", ")
                ),
            ));
        }
        s => s.cloned(),
    };
    let worker = p
        .get("worker")
        .map(|w| worker_name("worker", w))
        .transpose()?;
    let id = match p.get("id") {
        Some(id) => {
            task_id(id)?;
            Some(id.clone())
        }
        None => None,
    };
    let since = p.get("since").map(|t| moment("since", t)).transpose()?;
    let until = p.get("until").map(|t| moment("until", t)).transpose()?;
    let limit = limit_param(&p, DEFAULT_LIMIT, MAX_LIMIT)?;
    let cursor = match p.get("cursor") {
        Some(c) => {
            read_cursor(c).map_err(|_| {
                ApiError::bad(
                    "cursor",
                    "not a cursor: pass the `next` of the previous page as it is",
                )
            })?;
            Some(c.clone())
        }
        None => None,
    };
    Ok(HistoryQuery {
        worker,
        state,
        since,
        until,
        id,
        limit,
        cursor,
    })
}

/// `GET /history?worker=&state=&since=&until=&id=&limit=&cursor=`: finished tasks from the
/// archive, latest end first.
pub(super) async fn list(
    State(s): State<Shared>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let query = history_query(query)?;
    let page = s.archive.history(&query).await?;
    Ok(Json(json!(page)))
}

/// `GET /history/{id}`: one archived row.
pub(super) async fn one(
    State(s): State<Shared>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    task_id(&id)?;
    match s.archive.find(&id).await? {
        Some(row) => Ok(Json(json!(row))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("task {id} is not in the archive"),
        )),
    }
}

/// The archived row of a task Redis no longer holds, marked `"archived": true`; `None` when the
/// node has no archive or the archive has no such task.
pub(super) async fn archived(s: &Shared, id: &str) -> Result<Option<Value>, ApiError> {
    if !s.archive.configured() {
        return Ok(None);
    }
    let row = s.archive.find(id).await.map_err(|e| {
        if e.status == StatusCode::SERVICE_UNAVAILABLE {
            ApiError::new(
                e.status,
                format!(
                    "task {id} is not in Redis, and the archive (PostgreSQL) cannot be reached now to look for it; try again"
                ),
            )
        } else {
            e
        }
    })?;
    Ok(row.map(|row| {
        let mut value = json!(row);
        value["archived"] = Value::Bool(true);
        value
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> Result<HistoryQuery, ApiError> {
        let pairs = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        history_query(Ok(Query(pairs)))
    }

    fn field(pairs: &[(&str, &str)]) -> Option<String> {
        query(pairs).expect_err("refused").field
    }

    #[test]
    fn the_parameters_become_a_query() {
        let q = query(&[
            ("worker", "echo"),
            ("state", "dead"),
            ("since", "1700000000000"),
            ("until", "2024-01-01T00:00:00Z"),
            ("limit", "7"),
            ("cursor", "1700000000123:abc"),
        ])
        .unwrap();
        assert_eq!(q.worker.as_deref(), Some("echo"));
        assert_eq!(q.state.as_deref(), Some("dead"));
        assert_eq!(q.since, Some(1_700_000_000_000));
        assert_eq!(q.until, Some(1_704_067_200_000));
        assert_eq!(q.limit, 7);
        assert_eq!(q.cursor.as_deref(), Some("1700000000123:abc"));
        assert_eq!(query(&[]).unwrap().limit, DEFAULT_LIMIT);
    }

    #[test]
    fn bad_parameters_are_refused_by_name() {
        for (pairs, want) in [
            (&[("state", "running")][..], "state"),
            (&[("since", "yesterday-ish")], "since"),
            (&[("until", "99999999999999999999")], "until"),
            (&[("limit", "0")], "limit"),
            (&[("limit", "501")], "limit"),
            (&[("cursor", "nope")], "cursor"),
            (&[("worker", "a b")], "worker"),
            (&[("id", "a b")], "id"),
            (&[("colour", "red")], "colour"),
        ] {
            assert_eq!(field(pairs).as_deref(), Some(want), "{pairs:?}");
        }
    }
}
