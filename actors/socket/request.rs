//! The socket service's protocol, without I/O: where a request ends in a TCP stream
//! ([`frame`]), what it asks for ([`parse`]), and how answers and refusals are written
//! ([`result_text`], [`Refusal::line`]). PROTOCOL.md, "Socket service", is the reference.

use serde_json::Value;

use crate::model::names::{shorten, validate_worker_name};
use crate::model::task::validate_task_id;

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Request {
    /// `worker:data`: run the task now, wait for it, answer its result.
    Call {
        /// The worker name, cleaned.
        worker: String,
        /// The data, handed to the worker as a JSON string.
        data: String,
    },
    /// `queue:add:worker:data`: store the task, answer `id:<id>` at once.
    Add {
        /// The worker name, cleaned.
        worker: String,
        /// The data, handed to the worker as a JSON string.
        data: String,
    },
    /// `queue:get:id:<id>`: wait for the task, answer as [`Request::Call`] would.
    Get {
        /// The task id.
        id: String,
    },
    /// `queue:check:id:<id>`: answer `0`, `1` or `2`.
    Check {
        /// The task id.
        id: String,
    },
}

/// The status of a refusal: the three digits that start its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// 400: the request does not parse.
    BadRequest,
    /// 404: no live node offers the worker, or there is no such task.
    NotFound,
    /// 408: the request or the task's result did not come in time.
    Timeout,
    /// 413: the request is over `[limits] message_bytes`.
    TooLarge,
    /// 500: the task ended without a result.
    Failed,
    /// 503: Redis cannot be reached, or the node has no room for another connection.
    Unavailable,
}

impl Status {
    /// The three digits.
    pub(crate) fn code(self) -> u16 {
        match self {
            Status::BadRequest => 400,
            Status::NotFound => 404,
            Status::Timeout => 408,
            Status::TooLarge => 413,
            Status::Failed => 500,
            Status::Unavailable => 503,
        }
    }
}

/// A request refused, or a task that ended without a result: one line, `NNN:message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// The status.
    pub(crate) status: Status,
    /// What went wrong, for people.
    pub(crate) message: String,
}

impl Refusal {
    /// A refusal with `status` and `message`.
    pub(crate) fn new(status: Status, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            message: message.into(),
        }
    }

    fn bad(message: impl Into<String>) -> Refusal {
        Refusal::new(Status::BadRequest, message)
    }

    /// The answer: `NNN:message` on one line (line breaks in the message become spaces).
    pub(crate) fn line(&self) -> String {
        let message: String = self
            .message
            .chars()
            .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
            .collect();
        format!("{}:{}", self.status.code(), message.trim_end())
    }
}

/// Where a TCP request ends, in the bytes read so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// The request is the first `n` bytes (a newline, and a `\r` before it, excluded).
    Complete(usize),
    /// More bytes are needed.
    More,
    /// The request is longer than the limit.
    TooLarge,
}

/// Finds the end of the request in `buf`: the first newline, or the end of the stream when the
/// client half-closed (`eof`) without one. A request of more than `limit` bytes (its newline
/// not counted) is [`Framing::TooLarge`], known as soon as `limit + 1` bytes without a newline
/// came.
pub(crate) fn frame(buf: &[u8], eof: bool, limit: usize) -> Framing {
    let end = match buf.iter().position(|&b| b == b'\n') {
        Some(newline) => {
            let mut end = newline;
            if end > 0 && buf[end - 1] == b'\r' {
                end -= 1;
            }
            end
        }
        None if buf.len() > limit => return Framing::TooLarge,
        None if eof => buf.len(),
        None => return Framing::More,
    };
    if end > limit {
        Framing::TooLarge
    } else {
        Framing::Complete(end)
    }
}

/// A worker name as the socket service reads it: only `A-Z a-z 0-9 - _` are kept, every other
/// character is dropped (`he/llo` is `hello`).
pub(crate) fn clean_name(raw: &str) -> String {
    raw.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        .collect()
}

/// Reads one request (its framing already removed).
pub(crate) fn parse(bytes: &[u8]) -> Result<Request, Refusal> {
    let text =
        std::str::from_utf8(bytes).map_err(|_| Refusal::bad("the request is not UTF-8 text"))?;
    if text.is_empty() {
        return Err(Refusal::bad(
            "empty request: send `worker:data`, `queue:add:worker:data`, `queue:get:id:<id>` or `queue:check:id:<id>`",
        ));
    }
    if text == "queue" {
        return Err(Refusal::bad("`queue` needs a command: add, get or check"));
    }
    let Some(rest) = text.strip_prefix("queue:") else {
        let (worker, data) = call(text)?;
        return Ok(Request::Call { worker, data });
    };
    let (command, rest) = rest.split_once(':').unwrap_or((rest, ""));
    match command {
        "add" => {
            if rest.is_empty() {
                return Err(Refusal::bad("`queue:add:` needs `worker:data` after it"));
            }
            let (worker, data) = call(rest)?;
            Ok(Request::Add { worker, data })
        }
        "get" => Ok(Request::Get { id: id_of(rest)? }),
        "check" => Ok(Request::Check { id: id_of(rest)? }),
        other => Err(Refusal::bad(format!(
            "unknown queue command `{}` (add, get or check)",
            shorten(other, 40)
        ))),
    }
}

/// `worker:data` (or a bare `worker`, with empty data): the cleaned name and the data.
fn call(text: &str) -> Result<(String, String), Refusal> {
    let (raw, data) = text.split_once(':').unwrap_or((text, ""));
    let worker = clean_name(raw);
    if worker.is_empty() {
        return Err(Refusal::bad(format!(
            "no worker name before the first colon in \"{}\" (letters, digits, `_` and `-`)",
            shorten(raw, 40)
        )));
    }
    validate_worker_name(&worker).map_err(|e| Refusal::bad(e.to_string()))?;
    Ok((worker, data.to_owned()))
}

/// The id of `id:<id>`.
fn id_of(rest: &str) -> Result<String, Refusal> {
    let id = rest
        .strip_prefix("id:")
        .ok_or_else(|| Refusal::bad("name the task as `id:<id>`"))?;
    validate_task_id(id).map_err(|e| Refusal::bad(e.to_string()))?;
    Ok(id.to_owned())
}

/// A result as it is written back: a JSON string as its text, anything else as compact JSON.
pub(crate) fn result_text(result: &Value) -> String {
    match result {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_request_ends_at_a_newline_or_at_the_end_of_the_stream() {
        assert_eq!(frame(b"echo:hi", false, 100), Framing::More);
        assert_eq!(frame(b"echo:hi", true, 100), Framing::Complete(7));
        assert_eq!(frame(b"echo:hi\nmore", false, 100), Framing::Complete(7));
        assert_eq!(frame(b"echo:hi\r\n", false, 100), Framing::Complete(7));
        assert_eq!(frame(b"\n", false, 100), Framing::Complete(0));
        assert_eq!(frame(b"", true, 100), Framing::Complete(0));
        // Over the limit: known before the newline comes, and counted without it.
        assert_eq!(frame(&[b'a'; 11], false, 10), Framing::TooLarge);
        assert_eq!(frame(&[b'a'; 10], false, 10), Framing::More);
        assert_eq!(frame(b"aaaaaaaaaa\n", false, 10), Framing::Complete(10));
        assert_eq!(frame(b"aaaaaaaaaaa\n", false, 10), Framing::TooLarge);
    }

    #[test]
    fn worker_names_are_cleaned_as_the_original_service_did() {
        assert_eq!(clean_name("he/llo"), "hello");
        assert_eq!(clean_name("../../bin/sh"), "binsh");
        assert_eq!(clean_name("a-b_C9"), "a-b_C9");
        assert_eq!(clean_name("ü ."), "");
        assert_eq!(
            parse(b"less:.a { color: red }").unwrap(),
            Request::Call {
                worker: "less".into(),
                data: ".a { color: red }".into()
            }
        );
        assert_eq!(
            parse(b"e.c/ho:a:b").unwrap(),
            Request::Call {
                worker: "echo".into(),
                data: "a:b".into()
            }
        );
        // No colon: the whole string is the name, the data is empty.
        assert_eq!(
            parse(b"hello").unwrap(),
            Request::Call {
                worker: "hello".into(),
                data: String::new()
            }
        );
    }

    #[test]
    fn queue_commands_are_read() {
        assert_eq!(
            parse(b"queue:add:echo:{\"a\":1}").unwrap(),
            Request::Add {
                worker: "echo".into(),
                data: "{\"a\":1}".into()
            }
        );
        assert_eq!(
            parse(b"queue:get:id:0190-ab").unwrap(),
            Request::Get {
                id: "0190-ab".into()
            }
        );
        assert_eq!(
            parse(b"queue:check:id:x1").unwrap(),
            Request::Check { id: "x1".into() }
        );
    }

    #[test]
    fn bad_requests_are_refused_with_400() {
        for bad in [
            &b""[..],
            b":data",
            b"//:data",
            b"\xff\xfe:x",
            b"queue:add",
            b"queue:add:",
            b"queue:add::x",
            b"queue:get:x1",
            b"queue:get:id:",
            b"queue:check:id:a b",
            b"queue:drop:id:x",
            b"queue",
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.status, Status::BadRequest, "{bad:?}");
            assert!(e.line().starts_with("400:"), "{bad:?}: {}", e.line());
        }
        let long = format!("{}:x", "a".repeat(65));
        assert_eq!(
            parse(long.as_bytes()).unwrap_err().status,
            Status::BadRequest
        );
    }

    #[test]
    fn refusals_are_one_line() {
        let r = Refusal::new(Status::Failed, "task failed: line one\nline two\r\n");
        assert_eq!(r.line(), "500:task failed: line one line two");
        for (status, code) in [
            (Status::BadRequest, "400:"),
            (Status::NotFound, "404:"),
            (Status::Timeout, "408:"),
            (Status::TooLarge, "413:"),
            (Status::Failed, "500:"),
            (Status::Unavailable, "503:"),
        ] {
            assert!(Refusal::new(status, "x").line().starts_with(code));
        }
    }

    #[test]
    fn results_are_written_as_text_or_compact_json() {
        assert_eq!(result_text(&json!("body { }")), "body { }");
        assert_eq!(result_text(&json!({"n": 1})), "{\"n\":1}");
        assert_eq!(result_text(&json!(42)), "42");
        assert_eq!(result_text(&Value::Null), "null");
    }
}
