//! The admin API's HTTP server (axum routes on hyper connections driven
//! here, so the server bounds what an unauthenticated client can hold).
//!
//! The token is checked from the headers before any byte of a body is
//! read, and a refused request closes its connection. Headers must arrive
//! within [`HEADER_TIMEOUT`](crate::limits::http::HEADER_TIMEOUT), an upload within [`BODY_TIMEOUT`], and at
//! most [`MAX_CONNECTIONS`](crate::limits::http::MAX_CONNECTIONS) connections are open at once (more are closed
//! at accept).

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::AdminError;
use crate::node::{Node, NodeError, PluginBuild, SwapReport};
use crate::runtime::PluginError;
use crate::runtime::actor::{PluginRunState, StateHandoff};
use fogconnect_proto::manifest::PluginManifest;

/// Largest plugin upload, in bytes.
pub const MAX_PLUGIN_BYTES: usize = 64 << 20;
/// Longest a client may take to send a request's body (a plugin upload).
pub const BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// How the admin API is offered.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Where to listen (loopback unless `allow_remote`).
    pub listen: SocketAddr,
    /// The bearer token every request must carry (at least 16 characters).
    pub token: String,
    /// Accept a non-loopback `listen` address.
    pub allow_remote: bool,
}

#[derive(Clone)]
struct AdminState {
    node: Node,
    token: String,
}

/// A running admin API; stopped when dropped.
#[derive(Debug)]
pub struct AdminServer {
    addr: SocketAddr,
    stop: CancellationToken,
}

impl AdminServer {
    /// Starts the admin API of `node`.
    ///
    /// # Errors
    /// [`AdminError`] for a weak token, a non-loopback address not allowed,
    /// or an address that cannot be bound.
    pub async fn start(node: Node, config: AdminConfig) -> Result<Self, AdminError> {
        if config.token.len() < 16 {
            return Err(AdminError::WeakToken);
        }
        if !config.allow_remote && !config.listen.ip().is_loopback() {
            return Err(AdminError::NotLoopback(config.listen));
        }
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| AdminError::Bind { addr: config.listen, message: e.to_string() })?;
        let addr =
            listener.local_addr().map_err(|e| AdminError::Bind { addr: config.listen, message: e.to_string() })?;
        let state = AdminState { node, token: config.token };
        let router = Router::new()
            .route("/v1/services", get(list))
            .route("/v1/services/{service}", get(show).post(load).put(swap).delete(unload))
            .route("/metrics", get(metrics))
            .layer(DefaultBodyLimit::max(MAX_PLUGIN_BYTES))
            .route_layer(axum::middleware::from_fn_with_state(state.clone(), require_token))
            .with_state(state);
        let stop = CancellationToken::new();
        tokio::spawn(crate::limits::http::serve_connections(listener, router, stop.clone(), "admin API"));
        Ok(Self { addr, stop })
    }

    /// The address the API listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting requests.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Refuses a request without the token before anything reads its body,
/// and closes the connection it came on.
async fn require_token(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    match authorized(&state, request.headers()) {
        Ok(()) => next.run(request).await,
        Err(refusal) => {
            let mut response = refusal.into_response();
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            response
        }
    }
}

/// Reads an upload's body within [`BODY_TIMEOUT`] and [`MAX_PLUGIN_BYTES`].
async fn read_upload(body: Body) -> Result<axum::body::Bytes, ApiError> {
    match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_PLUGIN_BYTES)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("cannot read the upload: {e}"))),
        Err(_) => Err(ApiError::new(StatusCode::REQUEST_TIMEOUT, format!("the upload took over {BODY_TIMEOUT:?}"))),
    }
}

/// A refused request: its status and reason (a JSON `{"error": …}`).
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(json!({ "error": self.message }))).into_response()
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        let status = match &e {
            NodeError::NoSuchService(_) => StatusCode::NOT_FOUND,
            NodeError::Plugin { source: PluginError::ServiceTaken(_), .. } => StatusCode::CONFLICT,
            NodeError::Plugin {
                source:
                    PluginError::Compile(_) | PluginError::Link(_) | PluginError::Instantiate(_) | PluginError::Handoff(_),
                ..
            } => StatusCode::UNPROCESSABLE_ENTITY,
            NodeError::Plugin { source: PluginError::Manifest { .. }, .. } => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, e.to_string())
    }
}

/// Checks the bearer token. The SHA-256 digests are compared, not the
/// tokens, so the comparison's timing tells nothing about the token.
fn authorized(state: &AdminState, headers: &HeaderMap) -> Result<(), ApiError> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let digest = |text: &str| ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    if digest(given).as_ref() == digest(&state.token).as_ref() {
        Ok(())
    } else {
        Err(ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong admin token"))
    }
}

fn state_name(state: PluginRunState) -> &'static str {
    match state {
        PluginRunState::Running => "running",
        PluginRunState::Restarting => "restarting",
        PluginRunState::Disabled => "disabled",
        PluginRunState::Stopped => "stopped",
    }
}

fn service_json(info: &crate::node::ServiceInfo) -> serde_json::Value {
    json!({
        "service": info.service,
        "name": info.name,
        "world": info.world.name(),
        "hash": info.hash,
        "version": info.version,
        "limits": {
            "memory_bytes": info.limits.memory_bytes,
            "call_deadline_ms": info.limits.call_deadline.as_millis() as u64,
            "connect_peer": info.limits.allow_connect,
        },
        "generation": info.generation,
        "state": state_name(info.state),
        "connections": info.connections,
        "calls": info.calls,
        "crashes": info.crashes,
        "restarts": info.restarts,
    })
}

fn service_number(text: &str) -> Result<u8, ApiError> {
    text.parse()
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, format!("{text:?} is not a service number (0-255)")))
}

/// What a swap did, as the `swap` member of its answer.
fn swap_json(report: &SwapReport) -> serde_json::Value {
    let mut swap = json!({
        "generation": report.generation,
        "pause_ms": report.pause.as_secs_f64() * 1e3,
        "compile_ms": report.compile.as_secs_f64() * 1e3,
        "from_cache": report.from_cache,
    });
    let state = match &report.state {
        StateHandoff::Handed { bytes } => json!({ "state": "handed", "state_bytes": bytes }),
        StateHandoff::Fresh => json!({ "state": "fresh" }),
        StateHandoff::Lost { reason } => json!({ "state": "lost", "state_error": reason }),
    };
    if let (Some(swap), Some(state)) = (swap.as_object_mut(), state.as_object()) {
        swap.extend(state.clone());
    }
    swap
}

/// The service's object, with `status` (and what a swap did).
fn service_answer(
    node: &Node,
    service: u8,
    status: StatusCode,
    swap: Option<&SwapReport>,
) -> Result<Response, ApiError> {
    let services = node.services();
    let info = services.iter().find(|s| s.service == service).ok_or(NodeError::NoSuchService(service))?;
    let mut answer = service_json(info);
    if let (Some(object), Some(report)) = (answer.as_object_mut(), swap) {
        object.insert("swap".into(), swap_json(report));
    }
    Ok((status, axum::Json(answer)).into_response())
}

async fn list(State(state): State<AdminState>) -> Result<Response, ApiError> {
    let services: Vec<_> = state.node.services().iter().map(service_json).collect();
    Ok(axum::Json(json!({ "services": services })).into_response())
}

async fn metrics(State(state): State<AdminState>) -> Result<Response, ApiError> {
    let content_type = [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")];
    Ok((content_type, state.node.metrics()).into_response())
}

async fn show(State(state): State<AdminState>, Path(service): Path<String>) -> Result<Response, ApiError> {
    service_answer(&state.node, service_number(&service)?, StatusCode::OK, None)
}

/// The query of a load or swap: `name`, the plugin's name (default
/// "plugin"), and `manifest`, the plugin manifest's TOML text (default:
/// the node's limits).
#[derive(Debug, Deserialize)]
struct UploadQuery {
    name: Option<String>,
    manifest: Option<String>,
}

async fn load(
    State(state): State<AdminState>,
    Path(service): Path<String>,
    Query(query): Query<UploadQuery>,
    body: Body,
) -> Result<Response, ApiError> {
    upload(&state, &service, query, body, Upload::Load).await
}

async fn swap(
    State(state): State<AdminState>,
    Path(service): Path<String>,
    Query(query): Query<UploadQuery>,
    body: Body,
) -> Result<Response, ApiError> {
    upload(&state, &service, query, body, Upload::Swap).await
}

/// What an uploaded plugin is for.
#[derive(Debug, Clone, Copy)]
enum Upload {
    /// A free service number.
    Load,
    /// Replacing the plugin of a service.
    Swap,
}

async fn upload(
    state: &AdminState,
    service: &str,
    query: UploadQuery,
    body: Body,
    upload: Upload,
) -> Result<Response, ApiError> {
    let service = service_number(service)?;
    let manifest = match &query.manifest {
        Some(text) => {
            PluginManifest::decode(text).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?
        }
        None => PluginManifest::default(),
    };
    let wasm = read_upload(body).await?;
    let build = PluginBuild::new(query.name.unwrap_or_else(|| "plugin".into()), wasm.to_vec()).with_manifest(manifest);
    match upload {
        Upload::Load => {
            state.node.load_plugin_build(service, build).await?;
            service_answer(&state.node, service, StatusCode::CREATED, None)
        }
        Upload::Swap => {
            let report = state.node.swap_plugin_build(service, build).await?;
            service_answer(&state.node, service, StatusCode::OK, Some(&report))
        }
    }
}

async fn unload(State(state): State<AdminState>, Path(service): Path<String>) -> Result<Response, ApiError> {
    state.node.unload_plugin(service_number(&service)?).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
