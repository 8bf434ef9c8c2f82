//! `GET /api/v1/events[?worker=&id=]`: the events channel as Server-Sent Events, one `data:`
//! line per event (the event's JSON as published; a message carrying several events is sent as
//! one `data:` line each, in order), optionally only those of one worker or one
//! task. Each stream holds a subscription of its own; at most [`super::MAX_STREAMS`] are open
//! on a node at once (503 beyond), a comment every 15 s keeps idle connections open, and every
//! stream ends when the server stops.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::Value;
use serde_json::value::RawValue;

use super::api::params;
use super::{ApiError, Shared};
use crate::model::names::validate_worker_name;
use crate::model::task::validate_stored_id;

/// The events of message `payload` that pass the stream's filters, each as it was published.
/// Without filters a message that is not JSON is passed on as it is.
fn wanted(payload: &[u8], worker: Option<&str>, id: Option<&str>) -> Vec<String> {
    let Ok(events) = crate::events_in::<Box<RawValue>>(payload) else {
        if worker.is_none() && id.is_none() {
            return vec![String::from_utf8_lossy(payload).into_owned()];
        }
        return Vec::new();
    };
    events
        .into_iter()
        .filter(|raw| passes(raw, worker, id))
        .map(|raw| raw.get().to_owned())
        .collect()
}

/// Whether one event passes the stream's filters.
fn passes(raw: &RawValue, worker: Option<&str>, id: Option<&str>) -> bool {
    if worker.is_none() && id.is_none() {
        return true;
    }
    let Ok(event) = serde_json::from_str::<Value>(raw.get()) else {
        return false;
    };
    worker.is_none_or(|w| event.get("worker").and_then(Value::as_str) == Some(w))
        && id.is_none_or(|i| event.get("id").and_then(Value::as_str) == Some(i))
}

/// Opens an event stream.
pub(super) async fn events(
    State(s): State<Shared>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let p = params(query, &["worker", "id"])?;
    let worker = p.get("worker").cloned();
    if let Some(w) = &worker {
        validate_worker_name(w).map_err(|e| ApiError::bad("worker", e.to_string()))?;
    }
    let id = p.get("id").cloned();
    if let Some(i) = &id {
        validate_stored_id(i).map_err(|e| ApiError::bad("id", e.to_string()))?;
    }
    let permit = s.streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many event streams are open on this node; try another node or later",
        )
    })?;
    let pubsub = s.client.subscribe_events().await?;
    let stop = s.stop.clone();
    let stream = pubsub
        .into_on_message()
        .flat_map(move |msg| {
            // The permit lives as long as the stream.
            let _held = &permit;
            let events = wanted(msg.get_payload_bytes(), worker.as_deref(), id.as_deref());
            futures::stream::iter(
                events
                    .into_iter()
                    .map(|text| Ok::<Event, Infallible>(Event::default().data(text))),
            )
        })
        .take_until(async move { stop.cancelled().await });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_keep_the_events_asked_for() {
        let e = br#"{"event":"done","id":"t1","worker":"w"}"#;
        assert_eq!(wanted(e, None, None), [std::str::from_utf8(e).unwrap()]);
        assert_eq!(wanted(e, Some("w"), Some("t1")).len(), 1);
        assert!(wanted(e, Some("v"), None).is_empty());
        assert!(wanted(e, None, Some("t2")).is_empty());
        assert!(wanted(b"not json", Some("w"), None).is_empty());
        assert_eq!(wanted(b"not json", None, None), ["not json"]);
    }

    #[test]
    fn a_message_of_several_events_is_sent_as_one_line_each() {
        let batch = br#"[{"event":"started","id":"t1","worker":"w"},{"event":"done","id":"t2","worker":"v"},{"event":"done","id":"t1","worker":"w"}]"#;
        assert_eq!(
            wanted(batch, None, None),
            [
                r#"{"event":"started","id":"t1","worker":"w"}"#,
                r#"{"event":"done","id":"t2","worker":"v"}"#,
                r#"{"event":"done","id":"t1","worker":"w"}"#,
            ]
        );
        assert_eq!(
            wanted(batch, None, Some("t1")),
            [
                r#"{"event":"started","id":"t1","worker":"w"}"#,
                r#"{"event":"done","id":"t1","worker":"w"}"#,
            ]
        );
        assert_eq!(
            wanted(batch, Some("v"), None),
            [r#"{"event":"done","id":"t2","worker":"v"}"#]
        );
    }
}
