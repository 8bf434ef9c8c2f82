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
//!    first, then the others in the order of `ENVELOPE_FIELDS`. Then come the rules that take
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
use crate::decide::cron::{Cron, Recurrence};
use crate::decide::times::{parse_duration, parse_time};
use crate::model::names::{shorten, validate_worker_name};
use crate::model::task::{Target, TaskSpec, validate_token};

/// Fields a task envelope may carry, in the order they are checked (the tests hold the
/// envelope struct to this list).
#[cfg(test)]
pub(crate) const ENVELOPE_FIELDS: &[&str] = &[
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
    "reply",
];

/// A message read from the task channel.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ChannelMessage {
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
    /// Worker type `worker` was paused (`paused`) or resumed cluster-wide (sent on a node's
    /// control channel by `pause.lua`).
    Pause {
        /// The worker.
        worker: String,
        /// Paused now, or resumed.
        paused: bool,
    },
}

/// Why a channel message was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejection {
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
pub(crate) fn parse_message(bytes: &[u8], limit: usize) -> Result<ChannelMessage, Rejection> {
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
    // A field given twice would silently keep its last value; which one the sender meant is
    // unknowable, so the message is refused.
    if let Some(field) = repeated_field(bytes) {
        return Err(reject(
            format!("field `{}` is given more than once", shorten(&field, 40)),
            id,
            worker,
        ));
    }
    read_object(obj).map_err(|reason| reject(reason, id, worker))
}

/// A task envelope refused outside the channel (the HTTP API): why, the field at fault when
/// one is, and the envelope's place in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EnvelopeError {
    /// What is wrong, for people (the same reason the channel gives).
    pub reason: String,
    /// The field at fault, when one is.
    pub field: Option<String>,
    /// The envelope's index, when it came in a batch.
    pub index: Option<usize>,
}

/// Reads one task envelope (a JSON object) or a batch (an array of them) for the HTTP API, with
/// the same steps and rules as a channel message: each envelope at most `limit` bytes, fields
/// read one by one, unknown or repeated fields refused. Nothing is returned unless every
/// envelope is valid. Returns the tasks and whether they came as a batch.
pub(crate) fn parse_tasks(
    bytes: &[u8],
    limit: usize,
    max_batch: usize,
) -> Result<(Vec<TaskSpec>, bool), EnvelopeError> {
    let refuse = |reason: String, index| EnvelopeError {
        field: field_of(&reason),
        reason,
        index,
    };
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'[') {
        return parse_task(bytes, limit)
            .map(|spec| (vec![spec], false))
            .map_err(|reason| refuse(reason, None));
    }
    let items: Vec<&serde_json::value::RawValue> = serde_json::from_slice(bytes)
        .map_err(|e| refuse(format!("body is not a JSON array of envelopes: {e}"), None))?;
    if items.is_empty() {
        return Err(refuse("the batch holds no envelope".into(), None));
    }
    if items.len() > max_batch {
        return Err(refuse(
            format!(
                "the batch holds {} envelopes, more than {max_batch}",
                items.len()
            ),
            None,
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, raw)| {
            parse_task(raw.get().as_bytes(), limit)
                .map_err(|reason| refuse(format!("envelope {i}: {reason}"), Some(i)))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(|specs| (specs, true))
}

/// One task envelope of at most `limit` bytes, as the channel reads it but never a notice.
fn parse_task(bytes: &[u8], limit: usize) -> Result<TaskSpec, String> {
    if bytes.len() > limit {
        return Err(format!(
            "envelope is {} bytes, over the {limit}-byte limit",
            bytes.len()
        ));
    }
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| format!("body is not valid JSON: {e}"))?;
    let Value::Object(obj) = value else {
        return Err(format!(
            "an envelope must be a JSON object with a `worker` field, got {}",
            kind(&value)
        ));
    };
    if let Some(field) = repeated_field(bytes) {
        return Err(format!(
            "field `{}` is given more than once",
            shorten(&field, 40)
        ));
    }
    let task: TaskEnvelope = from_object(obj)?;
    task.into_spec()
}

/// The field a refusal names: its first `quoted` word after `field`, `fields`, or the worker
/// name's own wording.
fn field_of(reason: &str) -> Option<String> {
    let reason = reason
        .strip_prefix("envelope ")
        .and_then(|r| r.split_once(": ").map(|(_, rest)| rest))
        .unwrap_or(reason);
    if reason.starts_with("worker name") {
        return Some("worker".into());
    }
    let rest = ["field `", "unknown field `", "missing field `", "fields `"]
        .iter()
        .find_map(|p| reason.strip_prefix(p))?;
    rest.split_once('`').map(|(name, _)| name.to_owned())
}

/// The first top-level field of a JSON object (already known to parse) that appears twice.
fn repeated_field(bytes: &[u8]) -> Option<String> {
    struct Keys(Option<String>);
    impl<'de> Deserialize<'de> for Keys {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Keys, D::Error> {
            struct Seen;
            impl<'de> Visitor<'de> for Seen {
                type Value = Keys;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Keys, A::Error> {
                    let mut seen = std::collections::HashSet::new();
                    let mut repeated = None;
                    while let Some(key) = map.next_key::<String>()? {
                        map.next_value::<de::IgnoredAny>()?;
                        if repeated.is_none() && !seen.insert(key.clone()) {
                            repeated = Some(key);
                        }
                    }
                    Ok(Keys(repeated))
                }
            }
            d.deserialize_map(Seen)
        }
    }
    serde_json::from_slice::<Keys>(bytes).ok().and_then(|k| k.0)
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
        Op::Pause(paused) => from_object::<PauseNotice>(obj)?.into_message(paused),
    }
}

/// A task envelope as it arrives: every field read and converted on its own, before the rules
/// that take more than one field. The field order is that of `ENVELOPE_FIELDS`.
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
    /// Push the final event on the task's reply list (`{prefix}:reply:{id}`).
    #[serde(deserialize_with = "boolean")]
    reply: Option<bool>,
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
            reply: self.reply.unwrap_or_default(),
            ..TaskSpec::new(worker, self.args)
        };
        spec.validate().map_err(|e| e.to_string())?;
        Ok(spec)
    }
}

/// The operations a notice may ask for, as its `op` field spells them.
const OPS: &str = "wake, schedule, cancel, pause, resume, stop or reload";

/// What a notice asks for: its `op` field.
#[derive(Debug, Clone, Copy)]
enum Op {
    Wake,
    Schedule,
    Cancel,
    /// `pause` (true) or `resume` (false).
    Pause(bool),
    Control(ControlOp),
}

impl Op {
    /// Only these strings: not a number, not an object naming one.
    fn read(op: &Value) -> Result<Op, String> {
        match op.as_str() {
            Some("wake") => Ok(Op::Wake),
            Some("schedule") => Ok(Op::Schedule),
            Some("cancel") => Ok(Op::Cancel),
            Some("pause") => Ok(Op::Pause(true)),
            Some("resume") => Ok(Op::Pause(false)),
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

/// `{"op":"pause"|"resume","worker":…}`, published on every node's control channel.
#[derive(Debug, Deserialize)]
struct PauseNotice {
    #[serde(default, deserialize_with = "text")]
    worker: Option<String>,
}

impl PauseNotice {
    fn into_message(self, paused: bool) -> Result<ChannelMessage, String> {
        let worker = self.worker.ok_or("pause message without `worker`")?;
        validate_worker_name(&worker).map_err(|e| e.to_string())?;
        Ok(ChannelMessage::Pause { worker, paused })
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

/// `true` or `false`.
fn boolean<'de, D: Deserializer<'de>>(value: D) -> Result<Option<bool>, D::Error> {
    field(value, |value| match value {
        Value::Bool(b) => Ok(b),
        other => Err(format!("expected true or false, got {}", kind(&other))),
    })
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
mod tests;
