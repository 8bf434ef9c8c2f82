//! The archive: every finished task as a row in PostgreSQL (`[saver] archive`), kept as long as
//! the team keeps it, for audits, billing and debugging long after `result_ttl`.
//!
//! The scripts stage each final row in Redis in the same step as the end itself (the outbox,
//! `store/archive.rs`); the [`crate::engine::archiver`] of every archiving node moves batches
//! from there into `bgnode_tasks`. This module is the PostgreSQL side: connecting (TLS through
//! rustls when the URL asks for it, `tls`), the versioned schema (`schema`), writing rows
//! (`rows`) and reading the history back ([`Archive::history`], behind `bgnode history`,
//! `bgnode status` once a task has left Redis, and `GET /api/v1/history`).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_postgres::config::SslMode;
use tokio_postgres::types::ToSql;

use crate::config::{Settings, redact_url};

pub(crate) mod rows;
pub(crate) mod schema;
mod tls;

/// What went wrong with the archive.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// No archive is configured.
    #[error("no archive is configured: set saver.archive to a PostgreSQL URL (or --save URL)")]
    Off,
    /// A `saver.archive*` setting cannot be used.
    #[error("archive settings: {0}")]
    Settings(String),
    /// PostgreSQL is unreachable or the connection failed.
    #[error("archive: {}", with_causes(.0))]
    Db(#[from] tokio_postgres::Error),
    /// PostgreSQL refused a statement.
    #[error("archive: postgresql refused it: {0}")]
    Refused(String),
    /// PostgreSQL refused the data of a row (a data exception or an integrity violation).
    #[error("archive: postgresql refused a row: {0}")]
    RowRefused(String),
    /// A migration failed.
    #[error("archive schema: {0}")]
    Migration(String),
    /// The schema is newer than this build.
    #[error(
        "the archive's schema is at version {found}, newer than this bgnode knows ({known}): upgrade bgnode"
    )]
    Newer {
        /// The version recorded in the database.
        found: i32,
        /// The newest version this build knows.
        known: i32,
    },
    /// A history query that cannot be answered.
    #[error("{0}")]
    Query(String),
}

/// A PostgreSQL client error with its causes: its own text names only its kind ("error
/// connecting to server", "error performing TLS handshake"), so a log line or a message built
/// from it alone would not say why.
fn with_causes(e: &tokio_postgres::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

/// A connection to the archive of one cluster (its key prefix names it in the table, so
/// clusters may share a database).
pub struct Archive {
    db: tokio_postgres::Client,
    cluster: String,
    /// The insert, prepared once the schema is up to date (parsed and planned once per
    /// connection, not once per batch).
    insert: Option<tokio_postgres::Statement>,
}

impl std::fmt::Debug for Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Archive")
            .field("cluster", &self.cluster)
            .finish()
    }
}

impl Archive {
    /// Connects to the archive that `settings` name (`saver.archive`); fails with
    /// [`ArchiveError::Off`] when none is set. The schema is left as it is: nodes migrate it.
    pub async fn connect(settings: &Settings) -> Result<Archive, ArchiveError> {
        if !settings.saver.archives() {
            return Err(ArchiveError::Off);
        }
        let mut config: tokio_postgres::Config = settings.saver.archive.parse().map_err(|e| {
            ArchiveError::Settings(format!(
                "saver.archive `{}`: {e}",
                redact_url(&settings.saver.archive)
            ))
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        if config.get_application_name().is_none() {
            config.application_name("bgnode");
        }
        let db = if config.get_ssl_mode() == SslMode::Require {
            let tls = tls::Rustls::new(&settings.saver.archive_ca)?;
            let (db, connection) = config.connect(tls).await?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!("archive connection ended: {e}");
                }
            });
            db
        } else {
            let (db, connection) = config.connect(tokio_postgres::NoTls).await?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!("archive connection ended: {e}");
                }
            });
            db
        };
        Ok(Archive {
            db,
            cluster: settings.redis.prefix.clone(),
            insert: None,
        })
    }

    /// Brings the schema up to date; returns the versions applied now.
    pub(crate) async fn migrate(&mut self) -> Result<Vec<i32>, ArchiveError> {
        let applied = schema::migrate(&mut self.db).await?;
        self.insert = Some(self.db.prepare(rows::INSERT).await?);
        Ok(applied)
    }

    /// The schema's version (0: none yet).
    pub async fn schema_version(&self) -> Result<i32, ArchiveError> {
        schema::version(&self.db).await
    }

    /// Writes rows, idempotent by id.
    pub(crate) async fn insert(&self, rows: &[rows::Row]) -> Result<u64, ArchiveError> {
        match &self.insert {
            Some(prepared) => rows::insert(&self.db, prepared, &self.cluster, rows).await,
            None => rows::insert(&self.db, rows::INSERT, &self.cluster, rows).await,
        }
    }

    /// True once the connection is gone (then connect again).
    pub(crate) fn is_closed(&self) -> bool {
        self.db.is_closed()
    }

    /// The archived row of task `id`, if any.
    pub async fn find(&self, id: &str) -> Result<Option<HistoryRow>, ArchiveError> {
        let page = self
            .history(&HistoryQuery {
                id: Some(id.to_owned()),
                limit: 1,
                ..HistoryQuery::default()
            })
            .await?;
        Ok(page.rows.into_iter().next())
    }

    /// Finished tasks, latest end first, filtered by `query`.
    pub async fn history(&self, query: &HistoryQuery) -> Result<HistoryPage, ArchiveError> {
        let limit = query.limit();
        query.check()?;
        let mut sql = String::from(
            "SELECT id, worker, state, args::text, result::text, error, attempts, node, priority,
                key, (extract(epoch FROM created_at) * 1000)::int8,
                (extract(epoch FROM started_at) * 1000)::int8,
                (extract(epoch FROM finished_at) * 1000)::int8, run_ms, template, parent
            FROM bgnode_tasks WHERE cluster = $1",
        );
        let mut params: Vec<Box<dyn ToSql + Sync + Send>> = vec![Box::new(self.cluster.clone())];
        let mut filter = |sql: &mut String, clause: &str, value: Box<dyn ToSql + Sync + Send>| {
            params.push(value);
            sql.push_str(&clause.replace('?', &format!("${}", params.len())));
        };
        if let Some(w) = &query.worker {
            filter(&mut sql, " AND worker = ?", Box::new(w.clone()));
        }
        if let Some(s) = &query.state {
            filter(&mut sql, " AND state = ?", Box::new(s.clone()));
        }
        if let Some(id) = &query.id {
            filter(&mut sql, " AND id = ?", Box::new(id.clone()));
        }
        if let Some(t) = query.since {
            filter(
                &mut sql,
                " AND finished_at >= to_timestamp(?::int8 / 1000.0)",
                Box::new(t as i64),
            );
        }
        if let Some(t) = query.until {
            filter(
                &mut sql,
                " AND finished_at < to_timestamp(?::int8 / 1000.0)",
                Box::new(t as i64),
            );
        }
        if let Some(cursor) = &query.cursor {
            let (at, id) = read_cursor(cursor)?;
            filter(
                &mut sql,
                " AND (finished_at, id) < (to_timestamp(?::int8 / 1000.0)",
                Box::new(at),
            );
            filter(&mut sql, ", ?::text)", Box::new(id));
        }
        sql.push_str(&format!(
            " ORDER BY finished_at DESC, id DESC LIMIT {}",
            limit + 1
        ));
        let refs: Vec<&(dyn ToSql + Sync)> = params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect();
        let found = self.db.query(&sql, &refs).await?;
        let mut rows: Vec<HistoryRow> = found.iter().map(HistoryRow::from_sql).collect();
        let next = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(|r| format!("{}:{}", r.finished, r.id))
        } else {
            None
        };
        Ok(HistoryPage { rows, next })
    }
}

/// The next page's position, `{finished ms}:{id}`.
pub(crate) fn read_cursor(cursor: &str) -> Result<(i64, String), ArchiveError> {
    cursor
        .split_once(':')
        .and_then(|(at, id)| Some((at.parse::<i64>().ok()?, id.to_owned())))
        .ok_or_else(|| {
            ArchiveError::Query(format!(
                "cursor `{}` is not one this archive gave",
                crate::model::names::shorten(cursor, 64)
            ))
        })
}

/// Which finished tasks to list. Times are Unix ms; `since` is inclusive and `until`
/// exclusive, both on the end of the task.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryQuery {
    /// Only this worker type.
    pub worker: Option<String>,
    /// Only this final state (`done`, `failed`, `dead`, `cancelled`, `expired`).
    pub state: Option<String>,
    /// Only tasks that ended at or after this time.
    pub since: Option<u64>,
    /// Only tasks that ended before this time.
    pub until: Option<u64>,
    /// Only this task.
    pub id: Option<String>,
    /// Most rows (0: [`HistoryQuery::DEFAULT_LIMIT`]; at most [`HistoryQuery::MAX_LIMIT`]).
    pub limit: usize,
    /// Where the previous page ended ([`HistoryPage::next`]).
    pub cursor: Option<String>,
}

impl HistoryQuery {
    /// Rows per page unless asked otherwise.
    pub const DEFAULT_LIMIT: usize = 50;
    /// Most rows per page.
    pub const MAX_LIMIT: usize = 10_000;

    /// Fails with [`ArchiveError::Query`] when the query cannot be answered whatever the
    /// archive holds (a state that is not final, a cursor the archive never gave), so a caller
    /// can say so before it connects.
    pub fn check(&self) -> Result<(), ArchiveError> {
        if let Some(state) = self.state.as_deref().filter(|s| !FINAL_STATES.contains(s)) {
            return Err(ArchiveError::Query(format!(
                "state `{}` is not a final state; use one of {}",
                crate::model::names::shorten(state, 32),
                FINAL_STATES.join(", ")
            )));
        }
        if let Some(cursor) = &self.cursor {
            read_cursor(cursor)?;
        }
        Ok(())
    }

    fn limit(&self) -> usize {
        match self.limit {
            0 => Self::DEFAULT_LIMIT,
            n => n.min(Self::MAX_LIMIT),
        }
    }
}

/// The final states a task can be archived in.
pub const FINAL_STATES: [&str; 5] = ["done", "failed", "dead", "cancelled", "expired"];

/// One archived task. Times are Unix ms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryRow {
    /// Task id.
    pub id: String,
    /// Worker type.
    pub worker: String,
    /// Final state.
    pub state: String,
    /// Arguments.
    pub args: Option<serde_json::Value>,
    /// Result (done).
    pub result: Option<serde_json::Value>,
    /// Error of the last attempt.
    pub error: Option<String>,
    /// Attempts that started.
    pub attempts: i32,
    /// The node that ran the last attempt.
    pub node: Option<String>,
    /// Priority.
    pub priority: i32,
    /// Key limit group.
    pub key: Option<String>,
    /// Creation time.
    pub created: Option<i64>,
    /// Start of the last attempt.
    pub started: Option<i64>,
    /// End.
    pub finished: i64,
    /// Run time of the last attempt, ms.
    pub run_ms: Option<i64>,
    /// The recurring template this occurrence came from.
    pub template: Option<String>,
    /// The broadcast (`target all`) this occurrence belongs to.
    pub parent: Option<String>,
}

impl HistoryRow {
    fn from_sql(r: &tokio_postgres::Row) -> HistoryRow {
        let json = |i: usize| {
            r.get::<_, Option<String>>(i)
                .and_then(|t| serde_json::from_str(&t).ok())
        };
        HistoryRow {
            id: r.get(0),
            worker: r.get(1),
            state: r.get(2),
            args: json(3),
            result: json(4),
            error: r.get(5),
            attempts: r.get(6),
            node: r.get(7),
            priority: r.get(8),
            key: r.get(9),
            created: r.get(10),
            started: r.get(11),
            finished: r.get(12),
            run_ms: r.get(13),
            template: r.get(14),
            parent: r.get(15),
        }
    }
}

/// A page of history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryPage {
    /// The rows, latest end first.
    pub rows: Vec<HistoryRow>,
    /// The cursor of the next page, when there is one.
    pub next: Option<String>,
}
