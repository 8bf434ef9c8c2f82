//! The archive's schema, as versioned migrations applied in order at start.
//!
//! `bgnode_migrations` records each version applied. A node brings the schema up to date under
//! a transaction-scoped advisory lock, so nodes starting together apply each migration once; a
//! schema newer than this build knows is refused rather than written to.

use super::ArchiveError;

/// One step of the schema.
pub(crate) struct Migration {
    /// Its version: 1, 2, ...
    pub(crate) version: i32,
    /// What it does.
    pub(crate) name: &'static str,
    /// Its SQL, run in the migrating transaction.
    pub(crate) sql: &'static str,
}

/// Every migration, in order. A released one is never edited: a change is a new version.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "finished tasks",
        sql: "CREATE TABLE bgnode_tasks (
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
        )",
    },
    Migration {
        version: 2,
        name: "origins and history indexes",
        sql: "ALTER TABLE bgnode_tasks
                ADD COLUMN template text,
                ADD COLUMN parent text,
                ADD COLUMN archived_at timestamptz NOT NULL DEFAULT now();
            CREATE INDEX bgnode_tasks_finished ON bgnode_tasks (cluster, finished_at DESC, id DESC);
            CREATE INDEX bgnode_tasks_worker ON bgnode_tasks (cluster, worker, finished_at DESC)",
    },
];

/// The version this build writes.
pub(crate) fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// The advisory lock the migrating transaction holds (any constant shared by every node).
const LOCK: i64 = 0x6267_6e6f_6465;

/// Brings the schema up to date; returns the versions applied now.
pub(crate) async fn migrate(db: &mut tokio_postgres::Client) -> Result<Vec<i32>, ArchiveError> {
    let tx = db.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS bgnode_migrations (
            version integer PRIMARY KEY,
            name text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now()
        )",
    )
    .await?;
    let current: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM bgnode_migrations",
            &[],
        )
        .await?
        .get(0);
    if current > latest() {
        return Err(ArchiveError::Newer {
            found: current,
            known: latest(),
        });
    }
    let mut applied = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| m.version > current) {
        tx.batch_execute(m.sql).await.map_err(|e| {
            ArchiveError::Migration(format!(
                "version {} ({}): {}",
                m.version,
                m.name,
                db_text(&e)
            ))
        })?;
        tx.execute(
            "INSERT INTO bgnode_migrations (version, name) VALUES ($1, $2)",
            &[&m.version, &m.name],
        )
        .await?;
        applied.push(m.version);
    }
    tx.commit().await?;
    Ok(applied)
}

/// The schema's version as recorded (0: none).
pub(crate) async fn version(db: &tokio_postgres::Client) -> Result<i32, ArchiveError> {
    let exists: bool = db
        .query_one("SELECT to_regclass('bgnode_migrations') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        return Ok(0);
    }
    Ok(db
        .query_one(
            "SELECT coalesce(max(version), 0) FROM bgnode_migrations",
            &[],
        )
        .await?
        .get(0))
}

/// A PostgreSQL error as the server worded it, else as the client did.
pub(crate) fn db_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_run_one_by_one_from_one() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i32 + 1, "{}", m.name);
        }
        assert_eq!(latest(), MIGRATIONS.len() as i32);
    }
}
