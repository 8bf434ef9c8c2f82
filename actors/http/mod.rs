//! The node's HTTP side: the JSON API under `/api/v1` (PROTOCOL.md, "HTTP API"), and this
//! node's Prometheus metrics at `/metrics`.
//!
//! - [`router`] builds every route on one shared [`ApiState`]; other routes (a dashboard's
//!   assets, metrics) are added there, on the same state and middleware.
//! - [`Http`] is the actor that serves it, a child of the node's supervisor like the others: it
//!   serves on a listener bound once at start (so a bind error fails the start with a clear
//!   message, and a restart of the actor takes up the same socket), and fails when its server
//!   ends, so the supervisor restarts it.
//! - `api.rs` has the handlers, `history.rs` those of the archive (and the one connection to
//!   it they share), `sse.rs` the event stream, `dashboard.rs` the dashboard's files (served at
//!   `/`).
//!
//! Every request passes [`guard`]: with `[http] token` set it must carry
//! `Authorization: Bearer <token>` (compared in constant time), reads included, since task
//! arguments, results and errors may hold secrets; only the dashboard's files, which hold none,
//! are read without it. On a loopback listener the `Host` must name a loopback address (a web
//! page cannot reach the API through a name that resolves to it), and a request that changes
//! something and carries an `Origin` must come from the API's own origin. Every answer carries
//! a restrictive `Content-Security-Policy` ([`CSP`]: scripts, styles and connections from this
//! origin only, nothing inline, and Trusted Types, so that the browser refuses to parse strings
//! into HTML or code), `X-Content-Type-Options: nosniff` and `Cache-Control: no-store` (the
//! dashboard's files: `no-cache` with an `ETag`). Errors are JSON `{"error", "field"}`
//! ([`ApiError`]).

mod api;
mod dashboard;
mod history;
mod sse;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::client::{Client, ClientError};
use crate::cluster::handle::ClusterHandle;
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::wiring::watch_task;

/// Most event streams (`GET /api/v1/events`) open at once on one node; each holds a Redis
/// subscription.
pub(crate) const MAX_STREAMS: usize = 64;
/// Most envelopes in one `POST /api/v1/tasks` batch.
pub(crate) const MAX_BATCH: usize = 1000;
/// A batch body may be this many times `[limits] message_bytes` (each envelope in it at most
/// `message_bytes`).
pub(crate) const BATCH_FACTOR: usize = 8;
/// Longest `?wait=` of `POST /api/v1/tasks`.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(300);

/// What every handler shares: the store (through the client), this node's view of the
/// cluster, and the limits.
pub(crate) struct ApiState {
    /// The durable enqueue and every read, on the node's own Redis connection.
    pub(crate) client: Client,
    /// This node's id.
    pub(crate) node: String,
    /// The members this node sees.
    pub(crate) cluster: Arc<ClusterHandle>,
    /// `[limits] message_bytes`: the largest envelope.
    pub(crate) message_bytes: usize,
    /// `[http] token`, when set.
    pub(crate) token: Option<String>,
    /// The API listens on a loopback address: `Host` must name one.
    pub(crate) loopback: bool,
    /// Open event streams.
    pub(crate) streams: Arc<Semaphore>,
    /// Ends the event streams when the server stops.
    pub(crate) stop: CancellationToken,
    /// This node's metrics, rendered at `/metrics`.
    pub(crate) metrics: Metrics,
    /// The archive (`[saver] archive`), connected on first use.
    pub(crate) archive: history::ArchiveLink,
}

/// The shared state, as handlers receive it.
pub(crate) type Shared = Arc<ApiState>;

/// Every route of the node's HTTP side on `state`, behind [`guard`].
pub(crate) fn router(state: Shared) -> Router {
    let api = Router::new()
        .route("/overview", get(api::overview))
        .route("/tasks", get(api::list).post(api::enqueue))
        .route("/tasks/{id}", get(api::detail).delete(api::remove))
        .route("/tasks/{id}/cancel", post(api::cancel))
        .route("/tasks/{id}/retry", post(api::retry))
        .route("/dead/retry", post(api::retry_dead))
        .route("/dead", delete(api::delete_dead))
        .route("/workers/{name}/pause", post(api::pause))
        .route("/workers/{name}/resume", post(api::resume))
        .route("/history", get(history::list))
        .route("/history/{id}", get(history::one))
        .route("/nodes", get(api::nodes))
        .route("/events", get(sse::events));
    let mut app = Router::new()
        .nest("/api/v1", api)
        .route("/metrics", get(metrics));
    for (index, asset) in dashboard::ASSETS.iter().enumerate() {
        let serve = move |headers: HeaderMap| async move { dashboard::serve(index, &headers) };
        app = app.route(asset.path, get(serve));
    }
    app.fallback(not_found)
        .method_not_allowed_fallback(not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// `GET /metrics`: this node's metrics in the Prometheus text format (behind the token, when
/// one is set, like every other route).
async fn metrics(State(state): State<Shared>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// A refusal or failure, answered as JSON `{"error": "...", "field": ...}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    /// The status code.
    pub(crate) status: StatusCode,
    /// What is wrong, for people.
    pub(crate) message: String,
    /// The field (or query parameter) at fault, when one is.
    pub(crate) field: Option<String>,
}

impl ApiError {
    /// An error with `status` and `message`.
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            field: None,
        }
    }

    /// A 400 naming `field`.
    pub(crate) fn bad(field: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            field: Some(field.to_owned()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": self.message, "field": self.field});
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<ClientError> for ApiError {
    fn from(e: ClientError) -> ApiError {
        match e {
            ClientError::Invalid(spec) => {
                let message = spec.to_string();
                let field = match &spec {
                    crate::model::task::SpecError::Worker(_) => "worker".to_owned(),
                    crate::model::task::SpecError::Field { field, .. } => (*field).to_owned(),
                };
                ApiError::bad(&field, message)
            }
            ClientError::KeyFull { .. } => ApiError {
                status: StatusCode::CONFLICT,
                message: e.to_string(),
                field: Some("key".into()),
            },
            other => {
                // Internal details are logged here, once; the caller learns the kind.
                tracing::warn!("http api: {other}");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the cluster's store cannot be reached now; try again",
                )
            }
        }
    }
}

/// The answer to a path the API does not have.
async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such path: the API is under /api/v1 (see API.md), the dashboard at /",
    )
}

/// The answer to a method a path does not take.
async fn not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "this path does not take that method",
    )
}

/// True when `given` is the token `want`: both are hashed first, then compared byte by byte
/// without an early exit, so the time taken says nothing about either.
pub(crate) fn same_token(given: &str, want: &str) -> bool {
    let (a, b) = (Sha256::digest(given), Sha256::digest(want));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// The authority (`host[:port]`) of a `Host` header or an `Origin`, lowercased.
fn authority(value: &str) -> String {
    let rest = value.split_once("://").map_or(value, |(_, rest)| rest);
    rest.split('/').next().unwrap_or("").to_ascii_lowercase()
}

/// True when the host of `authority` is a loopback name or address.
fn loopback_host(authority: &str) -> bool {
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Checks every request (token, `Host`, `Origin`) and adds the security headers to every
/// answer.
async fn guard(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let checked = check(
        &state,
        request.headers(),
        request.method(),
        request.uri().path(),
    );
    let mut response = match checked {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    };
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// The `Content-Security-Policy` of every answer: the dashboard's scripts, styles and images
/// come from this origin only (none inline), it connects only here, and with Trusted Types the
/// browser refuses to turn a string into HTML or script (`innerHTML`, `eval`, …).
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; require-trusted-types-for 'script'; trusted-types 'none'";

fn check(
    state: &ApiState,
    headers: &HeaderMap,
    method: &Method,
    path: &str,
) -> Result<(), ApiError> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(authority)
        .unwrap_or_default();
    if state.loopback && !loopback_host(&host) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "this API listens on a loopback address: ask for it by a loopback name (localhost, 127.0.0.1, [::1])",
        ));
    }
    let changes = !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    if changes
        && let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok())
        && authority(origin) != host
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "a request from another origin cannot change anything here",
        ));
    }
    let public = matches!(*method, Method::GET | Method::HEAD) && dashboard::is_asset(path);
    if let Some(token) = state.token.as_ref().filter(|_| !public) {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if !given.is_some_and(|g| same_token(g, token)) {
            return Err(ApiError {
                status: StatusCode::UNAUTHORIZED,
                message: "this API needs `Authorization: Bearer <token>` ([http] token)".into(),
                field: None,
            });
        }
    }
    Ok(())
}

/// Binds the API's listener (at start, so a taken or forbidden address fails the start).
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// The HTTP actor: serves [`router`] on the node's listener.
pub(crate) struct Http;

/// What the HTTP actor needs.
pub(crate) struct HttpArgs {
    /// The listener bound at start; each incarnation of the actor serves a clone of it.
    pub(crate) listener: Arc<std::net::TcpListener>,
    /// The store, through a client whose `local` is this node.
    pub(crate) client: Client,
    /// The members this node sees.
    pub(crate) cluster: Arc<ClusterHandle>,
    /// `[http]`, `[limits]` and `[saver] archive`.
    pub(crate) settings: Settings,
    /// This node's id.
    pub(crate) node: String,
    /// This node's metrics.
    pub(crate) metrics: Metrics,
}

/// The HTTP actor's state: its server task.
pub(crate) struct HttpState {
    server: JoinHandle<()>,
    stop: CancellationToken,
}

/// Messages to the HTTP actor.
pub(crate) enum HttpMsg {
    /// The server ended unexpectedly.
    ServerDied(String),
}

impl ractor::Message for HttpMsg {}

impl Actor for Http {
    type Msg = HttpMsg;
    type State = HttpState;
    type Arguments = HttpArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<HttpMsg>,
        args: HttpArgs,
    ) -> Result<HttpState, ActorProcessingErr> {
        let listener = tokio::net::TcpListener::from_std(args.listener.try_clone()?)?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let state = Arc::new(ApiState {
            client: args.client,
            node: args.node,
            cluster: args.cluster,
            message_bytes: args.settings.limits.message_bytes as usize,
            token: Some(args.settings.http.token.clone()).filter(|t| !t.is_empty()),
            loopback: addr.ip().is_loopback(),
            streams: Arc::new(Semaphore::new(MAX_STREAMS)),
            stop: stop.clone(),
            metrics: args.metrics,
            archive: history::ArchiveLink::new(&args.settings),
        });
        let app = router(state);
        let ended = stop.clone();
        let serve = async move {
            let server = axum::serve(listener, app)
                .with_graceful_shutdown(async move { ended.cancelled().await });
            if let Err(e) = server.await {
                tracing::error!("the HTTP server failed: {e}");
            }
        };
        let server = watch_task(serve, myself, HttpMsg::ServerDied);
        tracing::info!("HTTP API on http://{addr}/api/v1");
        Ok(HttpState { server, stop })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<HttpMsg>,
        state: &mut HttpState,
    ) -> Result<(), ActorProcessingErr> {
        // Abort first, so that the server's end is not reported as a failure; the token ends
        // the event streams of connections still open.
        state.server.abort();
        state.stop.cancel();
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<HttpMsg>,
        msg: HttpMsg,
        _state: &mut HttpState,
    ) -> Result<(), ActorProcessingErr> {
        let HttpMsg::ServerDied(why) = msg;
        Err(format!("HTTP server ended: {why}").into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_equal_only_when_equal() {
        assert!(same_token("s3cret", "s3cret"));
        assert!(!same_token("s3cret", "s3cre"));
        assert!(!same_token("", "s3cret"));
        assert!(!same_token("S3cret", "s3cret"));
    }

    #[test]
    fn loopback_hosts_are_told_from_others() {
        for host in [
            "127.0.0.1:7780",
            "localhost",
            "localhost:80",
            "[::1]:7780",
            "127.3.4.5",
        ] {
            assert!(loopback_host(&authority(host)), "{host}");
        }
        for host in [
            "evil.example:7780",
            "10.0.0.1:7780",
            "",
            "localhost.evil.example",
        ] {
            assert!(!loopback_host(&authority(host)), "{host}");
        }
        assert_eq!(authority("http://LocalHost:7780/x"), "localhost:7780");
    }
}
