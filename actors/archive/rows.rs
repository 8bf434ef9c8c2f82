//! Rows of the archive: read from the outbox (the JSON `stage_row` in `common.lua` writes) and
//! written to `bgnode_tasks` in one statement per batch, idempotent by id.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::ArchiveError;
use super::schema::db_text;

/// A finished task as the outbox holds it: the record's fields as Redis keeps them (text).
#[derive(Debug, Deserialize)]
struct Staged {
    id: String,
    worker: Option<String>,
    state: Option<String>,
    attempt: Option<String>,
    node: Option<String>,
    priority: Option<String>,
    key: Option<String>,
    created: Option<String>,
    started: Option<String>,
    finished: Option<String>,
    args: Option<String>,
    result: Option<String>,
    error: Option<String>,
    template: Option<String>,
    parent: Option<String>,
}

/// One row of `bgnode_tasks`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Row {
    pub(crate) id: String,
    pub(crate) worker: String,
    pub(crate) state: String,
    /// JSON text.
    pub(crate) args: Option<String>,
    /// JSON text.
    pub(crate) result: Option<String>,
    pub(crate) error: Option<String>,
    pub(crate) attempts: i32,
    pub(crate) node: Option<String>,
    pub(crate) priority: i32,
    pub(crate) key: Option<String>,
    /// Unix ms.
    pub(crate) created: Option<i64>,
    /// Unix ms; `None` when no attempt started.
    pub(crate) started: Option<i64>,
    /// Unix ms.
    pub(crate) finished: i64,
    pub(crate) template: Option<String>,
    pub(crate) parent: Option<String>,
}

impl Row {
    /// Reads one outbox entry; `None` when it is not a staged row.
    pub(crate) fn read(entry: &str) -> Option<Row> {
        let s: Staged = serde_json::from_str(entry).ok()?;
        let int = |v: &Option<String>| v.as_deref().and_then(|v| v.parse::<i64>().ok());
        let text = |v: Option<String>| v.filter(|v| !v.is_empty()).map(|v| clean(&v));
        let finished = int(&s.finished)?;
        let done = s.state.as_deref() == Some("done");
        Some(Row {
            worker: s.worker.filter(|w| !w.is_empty())?,
            state: s.state.filter(|w| !w.is_empty())?,
            args: s.args.as_deref().map(json),
            result: s.result.as_deref().map(json),
            // A done task's record may keep the error of an earlier attempt; its row does not.
            error: text(s.error).filter(|_| !done),
            attempts: int(&s.attempt).unwrap_or(0).clamp(0, i32::MAX as i64) as i32,
            node: text(s.node),
            priority: int(&s.priority)
                .unwrap_or(0)
                .clamp(i32::MIN as i64, i32::MAX as i64) as i32,
            key: text(s.key),
            created: int(&s.created).filter(|t| *t > 0),
            started: int(&s.started).filter(|t| *t > 0),
            finished,
            template: text(s.template),
            parent: text(s.parent),
            id: s.id,
        })
    }

    /// Run time of the last attempt, ms.
    fn run_ms(&self) -> Option<i64> {
        self.started.map(|s| (self.finished - s).max(0))
    }
}

/// Text PostgreSQL accepts: no NUL character.
fn clean(text: &str) -> String {
    text.replace('\0', "")
}

/// JSON text `jsonb` accepts: the text itself when it is JSON without a `\u0000` escape (which
/// `jsonb` refuses), else the text as a JSON string.
fn json(text: &str) -> String {
    let ok = serde_json::from_str::<&RawValue>(text).is_ok();
    if ok && !text.contains("\\u0000") {
        return text.to_owned();
    }
    let text = if ok {
        text.replace("\\u0000", "")
    } else {
        clean(text)
    };
    if serde_json::from_str::<&RawValue>(&text).is_ok() {
        return text;
    }
    serde_json::Value::String(text).to_string()
}

/// Keeps one row per id, the latest end (a task queued again by `retry` and finished twice
/// within one batch would otherwise meet itself in the upsert).
pub(crate) fn latest_per_id(rows: Vec<Row>) -> Vec<Row> {
    let mut at: HashMap<String, usize> = HashMap::with_capacity(rows.len());
    let mut out: Vec<Row> = Vec::with_capacity(rows.len());
    for row in rows {
        match at.get(&row.id) {
            Some(&i) if out[i].finished <= row.finished => out[i] = row,
            Some(_) => {}
            None => {
                at.insert(row.id.clone(), out.len());
                out.push(row);
            }
        }
    }
    out
}

pub(crate) const INSERT: &str =
    "INSERT INTO bgnode_tasks (cluster, id, worker, state, args, result, error,
        attempts, node, priority, key, created_at, started_at, finished_at, run_ms, template,
        parent)
    SELECT $1, r.id, r.worker, r.state, r.args::jsonb, r.result::jsonb, r.error, r.attempts,
        r.node, r.priority, r.key, to_timestamp(r.created / 1000.0),
        to_timestamp(r.started / 1000.0), to_timestamp(r.finished / 1000.0), r.run_ms,
        r.template, r.parent
    FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
        $8::int4[], $9::text[], $10::int4[], $11::text[], $12::int8[], $13::int8[], $14::int8[],
        $15::int8[], $16::text[], $17::text[])
        AS r(id, worker, state, args, result, error, attempts, node, priority, key, created,
            started, finished, run_ms, template, parent)
    ON CONFLICT (cluster, id) DO UPDATE SET worker = excluded.worker, state = excluded.state,
        args = excluded.args, result = excluded.result, error = excluded.error,
        attempts = excluded.attempts, node = excluded.node, priority = excluded.priority,
        key = excluded.key, created_at = excluded.created_at, started_at = excluded.started_at,
        finished_at = excluded.finished_at, run_ms = excluded.run_ms,
        template = excluded.template, parent = excluded.parent, archived_at = now()
    WHERE bgnode_tasks.finished_at <= excluded.finished_at";

/// Writes `rows` (one id at most once) in one statement; a row already there is replaced only
/// by a later end of the same task, so writing a batch again changes nothing.
pub(crate) async fn insert<S>(
    db: &tokio_postgres::Client,
    statement: &S,
    cluster: &str,
    rows: &[Row],
) -> Result<u64, ArchiveError>
where
    S: tokio_postgres::ToStatement + ?Sized,
{
    macro_rules! col {
        ($f:expr) => {
            rows.iter().map($f).collect::<Vec<_>>()
        };
    }
    let ids = col!(|r| r.id.as_str());
    let workers = col!(|r| r.worker.as_str());
    let states = col!(|r| r.state.as_str());
    let args = col!(|r| r.args.as_deref());
    let results = col!(|r| r.result.as_deref());
    let errors = col!(|r| r.error.as_deref());
    let attempts = col!(|r| r.attempts);
    let nodes = col!(|r| r.node.as_deref());
    let priorities = col!(|r| r.priority);
    let keys = col!(|r| r.key.as_deref());
    let created = col!(|r| r.created);
    let started = col!(|r| r.started);
    let finished = col!(|r| r.finished);
    let run_ms = col!(|r| r.run_ms());
    let templates = col!(|r| r.template.as_deref());
    let parents = col!(|r| r.parent.as_deref());
    db.execute(
        statement,
        &[
            &cluster,
            &ids,
            &workers,
            &states,
            &args,
            &results,
            &errors,
            &attempts,
            &nodes,
            &priorities,
            &keys,
            &created,
            &started,
            &finished,
            &run_ms,
            &templates,
            &parents,
        ],
    )
    .await
    .map_err(|e| match e.as_db_error().map(|db| db.code().code()) {
        // Data exceptions and integrity violations: a row is at fault, not the database.
        Some(code) if code.starts_with("22") || code.starts_with("23") => {
            ArchiveError::RowRefused(db_text(&e))
        }
        Some(_) => ArchiveError::Refused(db_text(&e)),
        None => ArchiveError::Db(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn staged(extra: &str) -> String {
        format!(
            r#"{{"id":"t1","worker":"echo","state":"done","attempt":"2","node":"n1","priority":"5","created":"1000","started":"2000","finished":"2500"{extra}}}"#
        )
    }

    #[test]
    fn a_staged_row_is_read_with_its_times_and_json() {
        let row = Row::read(&staged(r#","args":"{\"a\":1}","result":"[1,2]""#)).unwrap();
        assert_eq!(row.id, "t1");
        assert_eq!((row.attempts, row.priority), (2, 5));
        assert_eq!(
            (row.created, row.started, row.finished),
            (Some(1000), Some(2000), 2500)
        );
        assert_eq!(row.run_ms(), Some(500));
        assert_eq!(row.args.as_deref(), Some(r#"{"a":1}"#));
        assert_eq!(row.result.as_deref(), Some("[1,2]"));
        assert_eq!(row.key, None);
    }

    #[test]
    fn an_attempt_that_never_started_has_no_start_or_run_time() {
        let row =
            Row::read(&staged("").replace(r#""started":"2000""#, r#""started":"0""#)).unwrap();
        assert_eq!((row.started, row.run_ms()), (None, None));
    }

    #[test]
    fn text_jsonb_would_refuse_is_made_acceptable() {
        assert_eq!(json("not json"), r#""not json""#);
        assert_eq!(json(r#""a\u0000b""#), r#""ab""#);
        assert_eq!(json("{\"x\":true}"), "{\"x\":true}");
        assert_eq!(clean("a\0b"), "ab");
    }

    #[test]
    fn what_is_not_a_staged_row_is_not_read() {
        assert_eq!(Row::read("garbage"), None);
        assert_eq!(Row::read(r#"{"id":"x"}"#), None, "no worker, state or end");
    }

    #[test]
    fn one_row_per_id_the_latest_end() {
        let a = Row::read(&staged("")).unwrap();
        let mut later = a.clone();
        later.finished = 9000;
        later.state = "failed".into();
        let mut other = a.clone();
        other.id = "t2".into();
        let rows = latest_per_id(vec![a.clone(), other.clone(), later.clone()]);
        assert_eq!(rows, vec![later, other]);
        let rows = latest_per_id(vec![
            Row {
                finished: 9000,
                ..a.clone()
            },
            a.clone(),
        ]);
        assert_eq!(rows[0].finished, 9000);
    }
}
