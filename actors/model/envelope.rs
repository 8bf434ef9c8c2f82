//! Channel messages: the JSON envelope anyone may `PUBLISH`, checked before anything is stored.
//!
//! The size is checked before parsing; the JSON is then read field by field so that every error
//! names the field and the rule (`field `priority`: expected an integer, got a string`). A
//! refused message becomes a [`Rejection`], which the ingress logs and announces as a `rejected`
//! event; it never stops the node and never touches a neighbouring message.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::cluster::wire::ControlOp;
use crate::decide::cron::{Cron, Recurrence};
use crate::decide::times::{parse_duration, parse_time};
use crate::model::names::shorten;
use crate::model::task::{SpecError, Target, TaskSpec};

/// Fields a task envelope may carry.
pub const ENVELOPE_FIELDS: &[&str] = &[
    "id",
    "worker",
    "args",
    "priority",
    "attempts",
    "timeout",
    "backoff",
    "backoff_cap",
    "in",
    "at",
    "every",
    "cron",
    "deadline",
    "key",
    "result_key",
    "target",
];

/// A message read from the task channel.
#[derive(Debug, Clone, PartialEq)]
pub enum ChannelMessage {
    /// A task to accept (the raw path).
    Task(Box<TaskSpec>),
    /// A durable task was written to the pending set of `worker`: claim it (the client path).
    Wake {
        /// The worker whose pending set grew.
        worker: String,
        /// Set when the task is pinned to that node.
        node: Option<String>,
    },
    /// `bgnode stop` / `bgnode reload`: carry `op` to `node` (all nodes when `None`) and publish
    /// each node's answer on `reply`.
    Control {
        /// The operation.
        op: ControlOp,
        /// The node, or every node.
        node: Option<String>,
        /// The channel the caller listens on for answers.
        reply: String,
    },
    /// Something was added to the scheduled set: schedulers should look again.
    Schedule,
    /// Stop this task (sent on a node's control channel).
    Cancel {
        /// The task id.
        id: String,
    },
}

/// Why a channel message was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// What was wrong, for people.
    pub reason: String,
    /// The task id, when the message carried a readable one.
    pub id: Option<String>,
    /// The worker name, when the message carried a valid one.
    pub worker: Option<String>,
    /// The start of the message, escaped and cut short.
    pub excerpt: String,
}

/// Parses and validates one channel message of at most `limit` bytes.
pub fn parse_message(bytes: &[u8], limit: usize) -> Result<ChannelMessage, Rejection> {
    let excerpt = || {
        shorten(
            &String::from_utf8_lossy(&bytes[..bytes.len().min(256)]),
            120,
        )
    };
    let reject = |reason: String, id: Option<String>, worker: Option<String>| Rejection {
        reason,
        id,
        worker,
        excerpt: excerpt(),
    };
    if bytes.len() > limit {
        return Err(reject(
            format!(
                "message is {} bytes, over the {limit}-byte limit",
                bytes.len()
            ),
            None,
            None,
        ));
    }
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| reject(format!("message is not valid JSON: {e}"), None, None))?;
    let Value::Object(obj) = value else {
        return Err(reject(
            format!(
                "message must be a JSON object with a `worker` field, got {}",
                kind(&value)
            ),
            None,
            None,
        ));
    };
    let id = obj.get("id").and_then(Value::as_str).map(str::to_owned);
    let worker = obj
        .get("worker")
        .and_then(Value::as_str)
        .filter(|w| crate::model::names::validate_worker_name(w).is_ok())
        .map(str::to_owned);
    read_object(&obj).map_err(|reason| reject(reason, id, worker))
}

fn read_object(obj: &Map<String, Value>) -> Result<ChannelMessage, String> {
    if let Some(op) = obj.get("op") {
        return match op.as_str() {
            Some("wake") => {
                let worker = str_field(obj, "worker")?.ok_or("wake message without `worker`")?;
                crate::model::names::validate_worker_name(worker).map_err(|e| e.to_string())?;
                let node = str_field(obj, "node")?.map(str::to_owned);
                if let Some(n) = &node {
                    crate::model::task::validate_token("node", n).map_err(|e| e.to_string())?;
                }
                Ok(ChannelMessage::Wake {
                    worker: worker.to_owned(),
                    node,
                })
            }
            Some(op @ ("stop" | "reload")) => {
                let node = str_field(obj, "node")?.map(str::to_owned);
                if let Some(n) = &node {
                    crate::model::task::validate_token("node", n).map_err(|e| e.to_string())?;
                }
                let reply = str_field(obj, "reply")?.ok_or("control message without `reply`")?;
                Ok(ChannelMessage::Control {
                    op: if op == "stop" {
                        ControlOp::Stop
                    } else {
                        ControlOp::Reload
                    },
                    node,
                    reply: reply.to_owned(),
                })
            }
            Some("schedule") => Ok(ChannelMessage::Schedule),
            Some("cancel") => {
                let id = str_field(obj, "id")?.ok_or("cancel message without `id`")?;
                Ok(ChannelMessage::Cancel { id: id.to_owned() })
            }
            _ => Err(format!(
                "field `op`: unknown operation {} (wake, schedule, cancel, stop or reload)",
                shorten(&op.to_string(), 40)
            )),
        };
    }
    if let Some(unknown) = obj.keys().find(|k| !ENVELOPE_FIELDS.contains(&k.as_str())) {
        return Err(format!(
            "unknown field `{}` (allowed: {})",
            shorten(unknown, 40),
            ENVELOPE_FIELDS.join(", ")
        ));
    }
    let worker = str_field(obj, "worker")?.ok_or("missing field `worker`")?;
    let mut spec = TaskSpec::new(worker, obj.get("args").cloned().unwrap_or(Value::Null));
    spec.id = str_field(obj, "id")?.map(str::to_owned);
    if let Some(p) = int_field(obj, "priority")? {
        spec.priority =
            i32::try_from(p).map_err(|_| format!("field `priority`: {p} is out of range"))?;
    }
    if let Some(a) = int_field(obj, "attempts")? {
        spec.attempts =
            Some(u32::try_from(a).map_err(|_| format!("field `attempts`: {a} is out of range"))?);
    }
    spec.timeout = duration_field(obj, "timeout")?;
    spec.backoff = duration_field(obj, "backoff")?;
    spec.backoff_cap = duration_field(obj, "backoff_cap")?;
    spec.deadline = duration_field(obj, "deadline")?;
    spec.key = str_field(obj, "key")?.map(str::to_owned);
    spec.result_key = str_field(obj, "result_key")?.map(str::to_owned);
    if let Some(t) = str_field(obj, "target")? {
        spec.target = Target::parse(t).map_err(|e| format!("field `target`: {e}"))?;
    }
    if let Some(delay) = duration_field(obj, "in")? {
        spec = spec.delay(delay);
    }
    match obj.get("at") {
        None | Some(Value::Null) => {}
        Some(Value::String(t)) => {
            spec.run_at = Some(parse_time(t).map_err(|e| format!("field `at`: {e}"))?);
        }
        Some(Value::Number(n)) => {
            spec.run_at = Some(n.as_u64().ok_or("field `at`: expected Unix milliseconds")?);
        }
        Some(other) => return Err(format!("field `at`: expected a time, got {}", kind(other))),
    }
    if let Some(every) = duration_field(obj, "every")? {
        spec.repeat = Some(Recurrence::Every(every));
    }
    if let Some(cron) = str_field(obj, "cron")? {
        if spec.repeat.is_some() {
            return Err("fields `every` and `cron` exclude each other".into());
        }
        spec.repeat = Some(Recurrence::Cron(Cron::parse(cron)?));
    }
    spec.validate().map_err(|e| match e {
        SpecError::Worker(name) => name.to_string(),
        other => other.to_string(),
    })?;
    Ok(ChannelMessage::Task(Box::new(spec)))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn str_field<'a>(obj: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, String> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(format!(
            "field `{name}`: expected a string, got {}",
            kind(other)
        )),
    }
}

fn int_field(obj: &Map<String, Value>, name: &str) -> Result<Option<i64>, String> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| format!("field `{name}`: expected an integer, got {n}")),
        Some(other) => Err(format!(
            "field `{name}`: expected an integer, got {}",
            kind(other)
        )),
    }
}

fn duration_field(obj: &Map<String, Value>, name: &str) -> Result<Option<Duration>, String> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(secs) if secs > 0.0 && secs < 1e9 => Ok(Some(Duration::from_secs_f64(secs))),
            _ => Err(format!(
                "field `{name}`: {n} is not a positive number of seconds"
            )),
        },
        Some(Value::String(s)) => parse_duration(s)
            .map(Some)
            .map_err(|e| format!("field `{name}`: {e}")),
        Some(other) => Err(format!(
            "field `{name}`: expected seconds or a duration such as \"90s\", got {}",
            kind(other)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LIMIT: usize = 1 << 20;

    fn reason(bytes: &[u8]) -> String {
        parse_message(bytes, LIMIT).unwrap_err().reason
    }

    #[test]
    fn reads_a_full_envelope() {
        let msg = br#"{"id":"t-1","worker":"email","args":{"to":"a@b"},"priority":5,"attempts":3,"timeout":"90s"}"#;
        let ChannelMessage::Task(spec) = parse_message(msg, LIMIT).unwrap() else {
            panic!("not a task")
        };
        assert_eq!(spec.id.as_deref(), Some("t-1"));
        assert_eq!(spec.worker, "email");
        assert_eq!(spec.args, json!({"to": "a@b"}));
        assert_eq!(spec.priority, 5);
        assert_eq!(spec.attempts, Some(3));
        assert_eq!(spec.timeout, Some(Duration::from_secs(90)));
    }

    #[test]
    fn reads_schedules_limits_and_result_keys() {
        let msg = br#"{"worker":"w","at":"2014-12-31T23:59:59+01:00","every":"4 hours","deadline":30,"key":"cust-1","result_key":"report","backoff":"2s","backoff_cap":"1m"}"#;
        let ChannelMessage::Task(spec) = parse_message(msg, LIMIT).unwrap() else {
            panic!("not a task")
        };
        assert_eq!(spec.run_at, Some(1_420_066_799_000));
        assert_eq!(
            spec.repeat,
            Some(Recurrence::Every(Duration::from_secs(14_400)))
        );
        assert_eq!(spec.deadline, Some(Duration::from_secs(30)));
        assert_eq!(spec.key.as_deref(), Some("cust-1"));
        assert_eq!(spec.result_key.as_deref(), Some("report"));
        assert_eq!(spec.backoff, Some(Duration::from_secs(2)));
        let ChannelMessage::Task(spec) =
            parse_message(br#"{"worker":"w","cron":"0 3 * * *"}"#, LIMIT).unwrap()
        else {
            panic!("not a task")
        };
        assert!(matches!(spec.repeat, Some(Recurrence::Cron(_))));
        assert!(reason(br#"{"worker":"w","cron":"0 3 * *"}"#).contains("has 4 fields"));
        assert!(reason(br#"{"worker":"w","every":"1h","cron":"@daily"}"#).contains("exclude"));
        assert!(reason(br#"{"worker":"w","at":"soonish"}"#).contains("field `at`"));
        assert!(reason(br#"{"worker":"w","key":"a b"}"#).contains("field `key`"));
    }

    #[test]
    fn reads_control_messages() {
        assert_eq!(
            parse_message(br#"{"op":"schedule"}"#, LIMIT).unwrap(),
            ChannelMessage::Schedule
        );
        assert_eq!(
            parse_message(br#"{"op":"cancel","id":"t1"}"#, LIMIT).unwrap(),
            ChannelMessage::Cancel { id: "t1".into() }
        );
        assert!(reason(br#"{"op":"cancel"}"#).contains("without `id`"));
        assert_eq!(
            parse_message(br#"{"op":"wake","worker":"w","node":"n2"}"#, LIMIT).unwrap(),
            ChannelMessage::Wake {
                worker: "w".into(),
                node: Some("n2".into())
            }
        );
        assert_eq!(
            parse_message(br#"{"op":"reload","reply":"r1"}"#, LIMIT).unwrap(),
            ChannelMessage::Control {
                op: ControlOp::Reload,
                node: None,
                reply: "r1".into()
            }
        );
        assert!(reason(br#"{"op":"stop","node":"n1"}"#).contains("without `reply`"));
        assert!(reason(br#"{"worker":"w","target":"mars"}"#).contains("field `target`"));
    }

    #[test]
    fn minimal_envelope_gets_defaults() {
        let ChannelMessage::Task(spec) = parse_message(br#"{"worker":"w"}"#, LIMIT).unwrap() else {
            panic!("not a task")
        };
        assert_eq!(*spec, TaskSpec::new("w", Value::Null));
    }

    #[test]
    fn reads_a_wake() {
        assert_eq!(
            parse_message(br#"{"op":"wake","worker":"email"}"#, LIMIT).unwrap(),
            ChannelMessage::Wake {
                worker: "email".into(),
                node: None
            }
        );
        assert!(reason(br#"{"op":"explode"}"#).contains("unknown operation"));
        assert!(reason(br#"{"op":"wake","worker":"../x"}"#).contains("dot"));
    }

    #[test]
    fn every_bad_input_has_a_clear_reason() {
        assert!(reason(b"not json").contains("not valid JSON"));
        assert!(reason(b"[1,2]").contains("got an array"));
        assert!(reason(b"\"email\"").contains("got a string"));
        assert!(reason(br#"{"args":{}}"#).contains("missing field `worker`"));
        assert!(
            reason(br#"{"worker":5}"#).contains("field `worker`: expected a string, got a number")
        );
        assert!(
            reason(br#"{"worker":"w","priority":"high"}"#)
                .contains("field `priority`: expected an integer")
        );
        assert!(reason(br#"{"worker":"w","priority":1.5}"#).contains("expected an integer"));
        assert!(reason(br#"{"worker":"w","priority":99999999999}"#).contains("priority"));
        assert!(reason(br#"{"worker":"w","attempts":-1}"#).contains("attempts"));
        assert!(reason(br#"{"worker":"w","timeout":"soon"}"#).contains("field `timeout`"));
        assert!(reason(br#"{"worker":"w","timeout":-3}"#).contains("positive"));
        assert!(reason(br#"{"worker":"w","prority":1}"#).contains("unknown field `prority`"));
        assert!(reason(br#"{"worker":"../x"}"#).contains("dot"));
        assert!(reason(br#"{"worker":"/bin/sh"}"#).contains("path separator"));
        assert!(reason(br#"{"worker":"a\u0000b"}"#).contains("NUL"));
        let long = format!(r#"{{"worker":"{}"}}"#, "a".repeat(10_000));
        assert!(reason(long.as_bytes()).contains("10000 bytes long"));
        assert!(reason(br#"{"worker":"w","id":"has space"}"#).contains("field `id`"));
    }

    #[test]
    fn size_is_checked_before_parsing() {
        let big = vec![b'{'; 2048];
        let r = parse_message(&big, 1024).unwrap_err();
        assert!(
            r.reason.contains("over the 1024-byte limit"),
            "{}",
            r.reason
        );
        assert!(r.excerpt.chars().count() <= 121);
    }

    #[test]
    fn rejection_keeps_what_it_could_read() {
        let r = parse_message(br#"{"id":"x1","worker":"w","priority":"hi"}"#, LIMIT).unwrap_err();
        assert_eq!(r.id.as_deref(), Some("x1"));
        assert_eq!(r.worker.as_deref(), Some("w"));
        let r = parse_message(br#"{"worker":"../etc"}"#, LIMIT).unwrap_err();
        assert_eq!(
            r.worker, None,
            "an invalid name is never echoed as a worker"
        );
    }
}
