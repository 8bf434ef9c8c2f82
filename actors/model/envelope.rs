//! Channel messages: the JSON anyone may `PUBLISH` on the task channel, checked before anything
//! is stored.
//!
//! A message is read in three steps, each refusing with a reason that names what is wrong:
//!
//! 1. its size, before any parsing (`message is 2097200 bytes, over the 1048576-byte limit`);
//! 2. the JSON text, into a [`Value`] (`message is not valid JSON: expected value at line 1
//!    column 1`); an object with `op` is a notice (wake, schedule, cancel, stop, reload), any
//!    other object is a task envelope;
//! 3. the fields, with serde into `TaskEnvelope` or a notice struct. Each field is read on its
//!    own first: an unknown field, a wrong type or a value that does not read is refused naming
//!    the field (``field `priority`: expected an integer, got a string``); unknown fields come
//!    first, then the others in the order of [`ENVELOPE_FIELDS`]. Then come the rules that take
//!    more than one field, and those of [`TaskSpec::validate`].
//!
//! A task envelope refuses unknown fields (a typo is an error, not a silent default). Notices are
//! written by scripts and nodes and carry fields a reader may not need (a schedule notice has
//! `due`), so a notice reads only its own fields and ignores the rest.
//!
//! A refused message becomes a [`Rejection`], which the ingress logs and announces as a
//! `rejected` event; it never stops the node and never touches a neighbouring message.

use std::fmt;
use std::time::Duration;

use serde::de::value::StrDeserializer;
use serde::de::{self, DeserializeOwned, DeserializeSeed, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use crate::cluster::wire::ControlOp;
use crate::decide::cron::{Cron, Recurrence, parse_time};
use crate::decide::times::parse_duration;
use crate::model::names::{shorten, validate_worker_name};
use crate::model::task::{Target, TaskSpec, validate_token};

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
    let reject = |reason: String, id: Option<String>, worker: Option<String>| Rejection {
        reason,
        id,
        worker,
        excerpt: shorten(
            &String::from_utf8_lossy(&bytes[..bytes.len().min(256)]),
            120,
        ),
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
    // Read before the fields are checked, so that a refusal still says which task it was.
    let id = obj.get("id").and_then(Value::as_str).map(str::to_owned);
    let worker = obj
        .get("worker")
        .and_then(Value::as_str)
        .filter(|w| validate_worker_name(w).is_ok())
        .map(str::to_owned);
    read_object(obj).map_err(|reason| reject(reason, id, worker))
}

fn read_object(obj: Map<String, Value>) -> Result<ChannelMessage, String> {
    let Some(op) = obj.get("op") else {
        let task: TaskEnvelope = from_object(obj)?;
        return Ok(ChannelMessage::Task(Box::new(task.into_spec()?)));
    };
    match Op::read(op)? {
        Op::Wake => from_object::<WakeNotice>(obj)?.into_message(),
        Op::Control(op) => from_object::<ControlNotice>(obj)?.into_message(op),
        Op::Schedule => Ok(ChannelMessage::Schedule),
        Op::Cancel => from_object::<CancelNotice>(obj)?.into_message(),
    }
}

/// A task envelope as it arrives: every field read and converted on its own, before the rules
/// that take more than one field. The field order is that of [`ENVELOPE_FIELDS`].
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct TaskEnvelope {
    #[serde(deserialize_with = "text")]
    id: Option<String>,
    /// Optional here so that a missing worker and `"worker": null` get the same reason.
    #[serde(deserialize_with = "text")]
    worker: Option<String>,
    args: Value,
    #[serde(deserialize_with = "integer")]
    priority: Option<i32>,
    #[serde(deserialize_with = "integer")]
    attempts: Option<u32>,
    #[serde(deserialize_with = "seconds")]
    timeout: Option<Duration>,
    #[serde(deserialize_with = "seconds")]
    backoff: Option<Duration>,
    #[serde(deserialize_with = "seconds")]
    backoff_cap: Option<Duration>,
    #[serde(rename = "in", deserialize_with = "seconds")]
    delay: Option<Duration>,
    #[serde(deserialize_with = "time")]
    at: Option<u64>,
    #[serde(deserialize_with = "seconds")]
    every: Option<Duration>,
    #[serde(deserialize_with = "cron")]
    cron: Option<Cron>,
    #[serde(deserialize_with = "seconds")]
    deadline: Option<Duration>,
    #[serde(deserialize_with = "text")]
    key: Option<String>,
    #[serde(deserialize_with = "text")]
    result_key: Option<String>,
    #[serde(deserialize_with = "target")]
    target: Option<Target>,
}

impl TaskEnvelope {
    /// The task, once the rules across fields and those of [`TaskSpec::validate`] hold.
    fn into_spec(self) -> Result<TaskSpec, String> {
        let worker = self.worker.ok_or("missing field `worker`")?;
        let repeat = match (self.every, self.cron) {
            (Some(_), Some(_)) => return Err("fields `every` and `cron` exclude each other".into()),
            (Some(every), None) => Some(Recurrence::Every(every)),
            (None, cron) => cron.map(Recurrence::Cron),
        };
        let spec = TaskSpec {
            id: self.id,
            priority: self.priority.unwrap_or_default(),
            attempts: self.attempts,
            timeout: self.timeout,
            backoff: self.backoff,
            backoff_cap: self.backoff_cap,
            run_at: self.at,
            delay: self.delay,
            repeat,
            deadline: self.deadline,
            key: self.key,
            result_key: self.result_key,
            target: self.target.unwrap_or_default(),
            ..TaskSpec::new(worker, self.args)
        };
        spec.validate().map_err(|e| e.to_string())?;
        Ok(spec)
    }
}

/// The operations a notice may ask for, as its `op` field spells them.
const OPS: &str = "wake, schedule, cancel, stop or reload";

/// What a notice asks for: its `op` field.
#[derive(Debug, Clone, Copy)]
enum Op {
    Wake,
    Schedule,
    Cancel,
    Control(ControlOp),
}

impl Op {
    /// Only these five strings: not a number, not an object naming one.
    fn read(op: &Value) -> Result<Op, String> {
        match op.as_str() {
            Some("wake") => Ok(Op::Wake),
            Some("schedule") => Ok(Op::Schedule),
            Some("cancel") => Ok(Op::Cancel),
            Some("stop") => Ok(Op::Control(ControlOp::Stop)),
            Some("reload") => Ok(Op::Control(ControlOp::Reload)),
            Some(other) => Err(format!(
                "field `op`: unknown operation `{}` ({OPS})",
                shorten(other, 40)
            )),
            None => Err(format!(
                "field `op`: expected a string ({OPS}), got {}",
                kind(op)
            )),
        }
    }
}

/// `{"op":"wake","worker":…,"node":…}`, published when a durable task is stored.
#[derive(Debug, Deserialize)]
struct WakeNotice {
    #[serde(default, deserialize_with = "text")]
    worker: Option<String>,
    #[serde(default, deserialize_with = "text")]
    node: Option<String>,
}

impl WakeNotice {
    fn into_message(self) -> Result<ChannelMessage, String> {
        let worker = self.worker.ok_or("wake message without `worker`")?;
        validate_worker_name(&worker).map_err(|e| e.to_string())?;
        if let Some(node) = &self.node {
            validate_token("node", node).map_err(|e| e.to_string())?;
        }
        Ok(ChannelMessage::Wake {
            worker,
            node: self.node,
        })
    }
}

/// `{"op":"stop"|"reload","node":…,"reply":…}`, published by `bgnode stop` and `bgnode reload`.
#[derive(Debug, Deserialize)]
struct ControlNotice {
    #[serde(default, deserialize_with = "text")]
    node: Option<String>,
    #[serde(default, deserialize_with = "text")]
    reply: Option<String>,
}

impl ControlNotice {
    fn into_message(self, op: ControlOp) -> Result<ChannelMessage, String> {
        if let Some(node) = &self.node {
            validate_token("node", node).map_err(|e| e.to_string())?;
        }
        let reply = self.reply.ok_or("control message without `reply`")?;
        Ok(ChannelMessage::Control {
            op,
            node: self.node,
            reply,
        })
    }
}

/// `{"op":"cancel","id":…}`, published on a node's control channel.
#[derive(Debug, Deserialize)]
struct CancelNotice {
    #[serde(default, deserialize_with = "text")]
    id: Option<String>,
}

impl CancelNotice {
    fn into_message(self) -> Result<ChannelMessage, String> {
        let id = self.id.ok_or("cancel message without `id`")?;
        Ok(ChannelMessage::Cancel { id })
    }
}

/// Reads one field with `read`; `null` is the same as leaving the field out.
fn field<'de, D, T>(
    value: D,
    read: impl FnOnce(Value) -> Result<T, String>,
) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
{
    match Value::deserialize(value)? {
        Value::Null => Ok(None),
        value => read(value).map(Some).map_err(de::Error::custom),
    }
}

fn string(value: Value) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s),
        other => Err(format!("expected a string, got {}", kind(&other))),
    }
}

/// A string.
fn text<'de, D: Deserializer<'de>>(value: D) -> Result<Option<String>, D::Error> {
    field(value, string)
}

/// A whole number that fits `T`.
fn integer<'de, D, T>(value: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i64>,
{
    field(value, |value| {
        let n = match value {
            Value::Number(n) => n
                .as_i64()
                .ok_or_else(|| format!("expected an integer, got {n}"))?,
            other => return Err(format!("expected an integer, got {}", kind(&other))),
        };
        T::try_from(n).map_err(|_| format!("{n} is out of range"))
    })
}

/// A number of seconds, or a duration such as `"90s"` or `"10 minutes"`.
fn seconds<'de, D: Deserializer<'de>>(value: D) -> Result<Option<Duration>, D::Error> {
    field(value, |value| match value {
        Value::Number(n) => match n.as_f64() {
            Some(secs) if secs > 0.0 && secs < 1e9 => Ok(Duration::from_secs_f64(secs)),
            _ => Err(format!("{n} is not a positive number of seconds")),
        },
        Value::String(s) => parse_duration(&s),
        other => Err(format!(
            "expected seconds or a duration such as \"90s\", got {}",
            kind(&other)
        )),
    })
}

/// A time: RFC 3339 or a date people write, or Unix milliseconds.
fn time<'de, D: Deserializer<'de>>(value: D) -> Result<Option<u64>, D::Error> {
    field(value, |value| match value {
        Value::String(s) => parse_time(&s),
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| "expected Unix milliseconds".to_owned()),
        other => Err(format!("expected a time, got {}", kind(&other))),
    })
}

/// A cron expression.
fn cron<'de, D: Deserializer<'de>>(value: D) -> Result<Option<Cron>, D::Error> {
    field(value, |value| Cron::parse(&string(value)?))
}

/// `any`, `all`, `local` or `node:<id>`.
fn target<'de, D: Deserializer<'de>>(value: D) -> Result<Option<Target>, D::Error> {
    field(value, |value| Target::parse(&string(value)?))
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

/// Reads `T` from a JSON object with serde, naming the field in every error.
///
/// The derived code knows which field it is reading, but the errors of a field's value do not
/// say. [`Fields`] hands `T` the object one entry at a time and puts the entry's key in front of
/// its error; unknown and missing fields get their own wording through [`FieldError`].
fn from_object<T: DeserializeOwned>(obj: Map<String, Value>) -> Result<T, String> {
    let fields = Fields {
        entries: obj.into_iter().collect::<Vec<_>>().into_iter(),
        current: None,
    };
    T::deserialize(fields).map_err(|FieldError(reason)| reason)
}

/// A JSON object read as a struct, entry by entry.
struct Fields {
    /// The entries still to read.
    entries: std::vec::IntoIter<(String, Value)>,
    /// The entry whose key was just read: its value is read next.
    current: Option<(String, Value)>,
}

impl<'de> Deserializer<'de> for Fields {
    type Error = FieldError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, FieldError> {
        visitor.visit_map(self)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        mut self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, FieldError> {
        // Unknown keys first, then the known ones in declaration order: a message with several
        // faults is refused for the same one whatever the order of its keys.
        let rank = |key: &str| fields.iter().position(|f| *f == key).map_or(0, |i| i + 1);
        self.entries
            .as_mut_slice()
            .sort_by_key(|(key, _)| rank(key));
        visitor.visit_map(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

impl<'de> MapAccess<'de> for Fields {
    type Error = FieldError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, FieldError> {
        let Some((key, value)) = self.entries.next() else {
            return Ok(None);
        };
        let field = seed.deserialize(StrDeserializer::<FieldError>::new(&key))?;
        self.current = Some((key, value));
        Ok(Some(field))
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<S::Value, FieldError> {
        let (key, value) = self
            .current
            .take()
            .ok_or_else(|| FieldError("a value was read before its key".into()))?;
        seed.deserialize(value)
            .map_err(|e| FieldError(format!("field `{}`: {e}", shorten(&key, 40))))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

/// Why [`Fields`] could not read a struct: a reason that names the field.
#[derive(Debug)]
struct FieldError(String);

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FieldError {}

impl de::Error for FieldError {
    fn custom<T: fmt::Display>(msg: T) -> FieldError {
        FieldError(msg.to_string())
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> FieldError {
        FieldError(format!(
            "unknown field `{}` (allowed: {})",
            shorten(field, 40),
            expected.join(", ")
        ))
    }

    fn missing_field(field: &'static str) -> FieldError {
        FieldError(format!("missing field `{field}`"))
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

    fn task(bytes: &[u8]) -> TaskSpec {
        match parse_message(bytes, LIMIT) {
            Ok(ChannelMessage::Task(spec)) => *spec,
            other => panic!("not a task: {other:?}"),
        }
    }

    /// Asserts that `bytes` is refused with a reason containing every one of `parts`.
    #[track_caller]
    fn refused(bytes: &[u8], parts: &[&str]) {
        let got = reason(bytes);
        for part in parts {
            assert!(got.contains(part), "expected {part:?} in {got:?}");
        }
    }

    /// Checks a table of `message => part of the reason` lines; `{..}` is the message, anything
    /// else is fields added to `{"worker":"w", …}`.
    #[track_caller]
    fn refused_table(table: &str) {
        for line in table.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let (msg, want) = line.split_once(" => ").expect("a `message => reason` line");
            let msg = if msg.starts_with('{') {
                msg.to_owned()
            } else {
                format!(r#"{{"worker":"w",{msg}}}"#)
            };
            refused(msg.as_bytes(), &[want]);
        }
    }

    #[test]
    fn every_field_is_read() {
        let spec = task(
            br#"{"id":"a.b:c-1_2","worker":"w","args":[1,"two",null],"priority":-100,"attempts":100,
                "timeout":1.5,"backoff":"250ms","backoff_cap":"1h","in":"10 minutes","deadline":"day",
                "key":"cust-42","result_key":"report-42","target":"node:n2"}"#,
        );
        assert_eq!(spec.id.as_deref(), Some("a.b:c-1_2"));
        assert_eq!(spec.args, json!([1, "two", null]));
        assert_eq!(spec.priority, -100);
        assert_eq!(spec.attempts, Some(100));
        assert_eq!(spec.timeout, Some(Duration::from_millis(1500)));
        assert_eq!(spec.backoff, Some(Duration::from_millis(250)));
        assert_eq!(spec.backoff_cap, Some(Duration::from_secs(3600)));
        assert_eq!(spec.delay, Some(Duration::from_secs(600)));
        assert_eq!(spec.deadline, Some(Duration::from_secs(86_400)));
        assert_eq!(spec.key.as_deref(), Some("cust-42"));
        assert_eq!(spec.result_key.as_deref(), Some("report-42"));
        assert_eq!(spec.target, Target::Node("n2".into()));
        assert!(!spec.reply, "a raw task never has a waiting caller");

        let spec = task(br#"{"worker":"w","at":1420066799000,"every":60,"priority":100}"#);
        assert_eq!(spec.run_at, Some(1_420_066_799_000));
        assert_eq!(
            spec.repeat,
            Some(Recurrence::Every(Duration::from_secs(60)))
        );
        assert_eq!(spec.priority, 100);
        assert_eq!(
            task(br#"{"worker":"w","at":"December 31st 2014 23:59:59 +01:00"}"#).run_at,
            Some(1_420_066_799_000)
        );
        assert_eq!(
            task(br#"{"worker":"w","cron":"@daily"}"#).repeat,
            Some(Recurrence::Cron(Cron::parse("@daily").unwrap()))
        );
        for (text, target) in [
            ("any", Target::Any),
            ("all", Target::All),
            ("local", Target::Local),
            ("", Target::Any),
        ] {
            let msg = format!(r#"{{"worker":"w","target":"{text}"}}"#);
            assert_eq!(task(msg.as_bytes()).target, target, "{text}");
        }
    }

    #[test]
    fn null_is_the_same_as_leaving_a_field_out() {
        for name in ENVELOPE_FIELDS.iter().filter(|f| **f != "worker") {
            let msg = format!(r#"{{"worker":"w","{name}":null}}"#);
            assert_eq!(
                task(msg.as_bytes()),
                TaskSpec::new("w", Value::Null),
                "{name}"
            );
        }
        refused(br#"{"worker":null}"#, &["missing field `worker`"]);
    }

    #[test]
    fn the_envelope_accepts_exactly_its_documented_fields() {
        let unknown = reason(br#"{"worker":"w","prority":1}"#);
        assert_eq!(
            unknown,
            format!(
                "unknown field `prority` (allowed: {})",
                ENVELOPE_FIELDS.join(", ")
            )
        );
        // `op` belongs to notices; `reply` is set by the durable client, never by a publisher.
        for name in ["op_", "reply", "node", "Worker", "due"] {
            let msg = format!(r#"{{"worker":"w","{name}":1}}"#);
            refused(msg.as_bytes(), &[&format!("unknown field `{name}`")]);
        }
        let long = format!(r#"{{"worker":"w","{}":1}}"#, "x".repeat(500));
        assert!(
            reason(long.as_bytes()).len() < 400,
            "a long unknown name is cut short"
        );
    }

    #[test]
    fn wrong_types_name_the_field_and_what_was_expected() {
        refused_table(
            r#"
            {"worker":true}         => field `worker`: expected a string, got a boolean
            {"worker":["w"]}        => field `worker`: expected a string, got an array
            "id":5                  => field `id`: expected a string, got a number
            "priority":[1]          => field `priority`: expected an integer, got an array
            "priority":2.5          => field `priority`: expected an integer, got 2.5
            "priority":2.0          => field `priority`: expected an integer, got 2.0
            "attempts":"3"          => field `attempts`: expected an integer, got a string
            "timeout":{}            => field `timeout`: expected seconds or a duration such as "90s", got an object
            "backoff":false         => field `backoff`: expected seconds or a duration such as "90s", got a boolean
            "backoff_cap":[]        => field `backoff_cap`: expected seconds or a duration
            "in":true               => field `in`: expected seconds or a duration
            "at":true               => field `at`: expected a time, got a boolean
            "at":-5                 => field `at`: expected Unix milliseconds
            "at":1.5                => field `at`: expected Unix milliseconds
            "every":{}              => field `every`: expected seconds or a duration
            "cron":5                => field `cron`: expected a string, got a number
            "deadline":[]           => field `deadline`: expected seconds or a duration
            "key":{}                => field `key`: expected a string, got an object
            "result_key":1          => field `result_key`: expected a string, got a number
            "target":1              => field `target`: expected a string, got a number
            "#,
        );
    }

    #[test]
    fn every_rule_names_its_field() {
        refused_table(
            r#"
            "priority":101                  => field `priority`: 101 is outside -100..=100
            "priority":-101                 => field `priority`: -101 is outside -100..=100
            "priority":2147483648           => field `priority`: 2147483648 is out of range
            "priority":18446744073709551615 => field `priority`: expected an integer, got 18446744073709551615
            "attempts":0                    => field `attempts`: 0 is outside 1..=100
            "attempts":101                  => field `attempts`: 101 is outside 1..=100
            "attempts":-1                   => field `attempts`: -1 is out of range
            "timeout":0                     => field `timeout`: 0 is not a positive number of seconds
            "timeout":1e9                   => field `timeout`: 1000000000.0 is not a positive number of seconds
            "timeout":"0s"                  => field `timeout`: must be longer than zero
            "timeout":""                    => field `timeout`: empty duration
            "backoff":"0"                   => field `backoff`: must be longer than zero
            "backoff_cap":"0m"              => field `backoff_cap`: must be longer than zero
            "deadline":"0h"                 => field `deadline`: must be longer than zero
            "in":"later"                    => field `in`: `later`
            "every":0.5                     => field `every`: the interval must be at least 1s
            "in":5,"at":1                   => field `in`: a delay and a time (`at`) exclude each other
            "every":60,"cron":"@daily"      => fields `every` and `cron` exclude each other
            "cron":"61 * * * *"             => field `cron`: 
            "at":"yesterday-ish"            => field `at`: 
            "target":"mars"                 => field `target`: target `mars` is not any, all, local or node:<id>
            "target":"node:"                => field `target`: is empty
            "target":"all","key":"k"        => field `target`: `all` cannot be combined with a recurrence or a key
            "target":"all","every":5        => field `target`: `all` cannot be combined
            "id":""                         => field `id`: is empty
            "key":"a/b"                     => field `key`: "a/b" contains '/'
            "result_key":"r k"              => field `result_key`: "r k" contains ' '
            {"worker":""}                   => worker name is empty
            {"worker":"a.b"}                => worker name "a.b" contains a dot
            "#,
        );
        let long_id = format!(r#"{{"worker":"w","id":"{}"}}"#, "i".repeat(129));
        refused(
            long_id.as_bytes(),
            &["field `id`: is 129 bytes long (at most 128)"],
        );
        let longest = format!(r#"{{"worker":"w","id":"{}"}}"#, "i".repeat(128));
        assert_eq!(task(longest.as_bytes()).id.map(|id| id.len()), Some(128));
    }

    #[test]
    fn a_message_with_several_faults_is_refused_for_the_first_in_field_order() {
        // Unknown fields come first, whatever the order of the keys.
        refused(
            br#"{"attempts":"x","worker":5,"zzz":1}"#,
            &["unknown field `zzz`"],
        );
        // Then the fields as ENVELOPE_FIELDS lists them.
        refused(
            br#"{"target":5,"priority":"x","worker":"w"}"#,
            &["field `priority`"],
        );
        // Then the rules across fields.
        refused(
            br#"{"worker":"../x","every":1,"cron":"x"}"#,
            &["field `cron`"],
        );
        refused(
            br#"{"worker":"../x","every":1,"cron":"@daily"}"#,
            &["exclude"],
        );
    }

    #[test]
    fn wrong_json_is_refused_with_its_position() {
        refused(b"", &["not valid JSON", "EOF"]);
        refused(br#"{"worker":"w""#, &["not valid JSON", "line 1 column 13"]);
        refused(
            b"{\"worker\":\"w\",\n \"args\":}",
            &["not valid JSON", "line 2"],
        );
        refused(
            br#"{"worker":"w"} {}"#,
            &["not valid JSON", "trailing characters"],
        );
        refused(b"{\"worker\":\"\xff\"}", &["not valid JSON"]);
        for (msg, kind) in [
            ("null", "null"),
            ("true", "a boolean"),
            ("3", "a number"),
            (r#""w""#, "a string"),
            ("[]", "an array"),
        ] {
            refused(
                msg.as_bytes(),
                &[
                    "must be a JSON object with a `worker` field",
                    &format!("got {kind}"),
                ],
            );
        }
    }

    #[test]
    fn the_limit_is_inclusive_and_checked_first() {
        let msg = br#"{"worker":"w"}"#;
        assert!(parse_message(msg, msg.len()).is_ok());
        let r = parse_message(msg, msg.len() - 1).unwrap_err();
        assert_eq!(r.reason, "message is 14 bytes, over the 13-byte limit");
        assert_eq!(r.excerpt, r#"{\"worker\":\"w\"}"#);
        // Over the limit, even the broken JSON is not looked at.
        let r = parse_message(b"\xff\xff\xff", 2).unwrap_err();
        assert!(r.reason.contains("over the 2-byte limit"), "{}", r.reason);
    }

    #[test]
    fn notices_read_their_own_fields_and_ignore_the_rest() {
        assert_eq!(
            parse_message(br#"{"op":"schedule","due":1795401681914}"#, LIMIT).unwrap(),
            ChannelMessage::Schedule
        );
        assert_eq!(
            parse_message(
                br#"{"op":"wake","worker":"w","node":null,"reply":5}"#,
                LIMIT
            )
            .unwrap(),
            ChannelMessage::Wake {
                worker: "w".into(),
                node: None
            }
        );
        assert_eq!(
            parse_message(
                br#"{"op":"stop","node":"n1","reply":"r","worker":7}"#,
                LIMIT
            )
            .unwrap(),
            ChannelMessage::Control {
                op: ControlOp::Stop,
                node: Some("n1".into()),
                reply: "r".into()
            }
        );
        // The id of a cancellation is any string: it names a task that was already stored.
        assert_eq!(
            parse_message(
                br#"{"op":"cancel","id":"tpl@1795401681914","worker":[]}"#,
                LIMIT
            )
            .unwrap(),
            ChannelMessage::Cancel {
                id: "tpl@1795401681914".into()
            }
        );
    }

    #[test]
    fn notices_refuse_what_they_read() {
        refused_table(
            r#"
            {"op":"wake"}                           => wake message without `worker`
            {"op":"wake","worker":null}             => wake message without `worker`
            {"op":"wake","worker":1}                => field `worker`: expected a string, got a number
            {"op":"wake","worker":"../x"}           => worker name "../x" contains a dot
            {"op":"wake","worker":"w","node":"a b"} => field `node`: "a b" contains ' '
            {"op":"wake","worker":"w","node":5}     => field `node`: expected a string, got a number
            {"op":"reload","node":"n1"}             => control message without `reply`
            {"op":"reload","reply":["r"]}           => field `reply`: expected a string, got an array
            {"op":"stop","node":"","reply":"r"}     => field `node`: is empty
            {"op":"cancel"}                         => cancel message without `id`
            {"op":"cancel","id":7}                  => field `id`: expected a string, got a number
            {"op":"Wake","worker":"w"}              => field `op`: unknown operation `Wake` (wake, schedule, cancel, stop or reload)
            {"op":null,"worker":"w"}                => field `op`: expected a string (wake, schedule, cancel, stop or reload), got null
            {"op":0,"worker":"w"}                   => field `op`: expected a string (wake, schedule, cancel, stop or reload), got a number
            {"op":{"wake":null},"worker":"w"}       => field `op`: expected a string (wake, schedule, cancel, stop or reload), got an object
            "#,
        );
    }

    #[test]
    fn a_refusal_keeps_what_identifies_the_task() {
        let r = parse_message(br#"{"id":"x1","worker":"w","zzz":1}"#, LIMIT).unwrap_err();
        assert_eq!(
            (r.id.as_deref(), r.worker.as_deref()),
            (Some("x1"), Some("w"))
        );
        let r = parse_message(br#"{"id":"a b","worker":"w"}"#, LIMIT).unwrap_err();
        assert_eq!(
            r.id.as_deref(),
            Some("a b"),
            "the id is kept even when it is refused"
        );
        let r = parse_message(br#"{"id":5,"worker":7}"#, LIMIT).unwrap_err();
        assert_eq!((r.id, r.worker), (None, None));
        let r = parse_message(br#"{"op":"wake","worker":"w","node":"a b"}"#, LIMIT).unwrap_err();
        assert_eq!(r.worker.as_deref(), Some("w"));
        let r = parse_message(b"[1]", LIMIT).unwrap_err();
        assert_eq!(r.excerpt, "[1]");
    }
}
