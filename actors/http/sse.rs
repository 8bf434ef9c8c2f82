//! `GET /api/v1/events[?worker=&id=]`: the events channel as Server-Sent Events, one `data:`
//! line per event (the event's JSON as published), optionally only those of one worker or one
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

use super::api::params;
use super::{ApiError, Shared};
use crate::model::names::validate_worker_name;
use crate::model::task::validate_stored_id;

/// Whether event `payload` passes the stream's filters.
fn wanted(payload: &[u8], worker: Option<&str>, id: Option<&str>) -> bool {
    if worker.is_none() && id.is_none() {
        return true;
    }
    let Ok(event) = serde_json::from_slice::<Value>(payload) else {
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
        .filter(move |msg| {
            let keep = wanted(msg.get_payload_bytes(), worker.as_deref(), id.as_deref());
            async move { keep }
        })
        .map(move |msg| {
            // The permit lives as long as the stream.
            let _held = &permit;
            let text = String::from_utf8_lossy(msg.get_payload_bytes()).into_owned();
            Ok::<Event, Infallible>(Event::default().data(text))
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
        assert!(wanted(e, None, None));
        assert!(wanted(e, Some("w"), Some("t1")));
        assert!(!wanted(e, Some("v"), None));
        assert!(!wanted(e, None, Some("t2")));
        assert!(!wanted(b"not json", Some("w"), None));
    }
}
