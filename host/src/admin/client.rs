//! A client of the admin API, used by the `fogconnect plugin` commands
//! (HTTP/1.1 with hyper).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, header};
use serde::Deserialize;

use crate::node::PluginBuild;

/// How long one request may take (a swap includes a cold compile).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Errors of admin requests.
#[derive(Debug, thiserror::Error)]
pub enum AdminClientError {
    /// The node's admin API cannot be reached.
    #[error("cannot reach the admin API at {addr}: {message}")]
    Connect {
        /// The address tried.
        addr: SocketAddr,
        /// Why.
        message: String,
    },
    /// The HTTP exchange failed.
    #[error("admin request failed: {0}")]
    Http(String),
    /// The node refused the request; the message is its reason.
    #[error("{message} (HTTP {status})")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The node's reason.
        message: String,
    },
    /// The answer is not what the API documents.
    #[error("unexpected admin answer: {0}")]
    BadAnswer(String),
}

/// One service as the admin API lists it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ServiceEntry {
    /// Service number.
    pub service: u8,
    /// Plugin name.
    pub name: String,
    /// The world it implements: `service` or `stream`.
    pub world: String,
    /// Hex SHA-256 of the plugin's wasm.
    pub hash: String,
    /// The plugin's version, when its manifest gives one.
    #[serde(default)]
    pub version: Option<String>,
    /// The limits the plugin runs with.
    pub limits: LimitsEntry,
    /// Plugin generation (1 when loaded, one more per swap).
    pub generation: u64,
    /// `running`, `restarting`, `disabled` or `stopped`.
    pub state: String,
    /// Open connections.
    pub connections: u64,
    /// Plugin calls made.
    pub calls: u64,
    /// Plugin failures.
    pub crashes: u64,
    /// Re-instantiations after failures.
    pub restarts: u64,
    /// What the swap did (only in the answer to a swap).
    #[serde(default)]
    pub swap: Option<SwapEntry>,
}

/// A plugin's limits as the admin API lists them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LimitsEntry {
    /// Linear memory cap, in bytes.
    pub memory_bytes: u64,
    /// Longest a single call may run, in milliseconds.
    pub call_deadline_ms: u64,
    /// Whether the plugin may open connections.
    pub connect_peer: bool,
}

/// What a swap did, as the admin API reports it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SwapEntry {
    /// The new generation.
    pub generation: u64,
    /// How long the service's events waited, in milliseconds.
    pub pause_ms: f64,
    /// Compile (or cache load) time, in milliseconds.
    pub compile_ms: f64,
    /// Whether the compiled plugin came from the cache.
    pub from_cache: bool,
    /// `handed`, `fresh` or `lost` (see `wit/handoff`).
    pub state: String,
    /// Size of the state handed over.
    #[serde(default)]
    pub state_bytes: Option<u64>,
    /// Why the state was lost.
    #[serde(default)]
    pub state_error: Option<String>,
}

impl std::fmt::Display for SwapEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "generation {}, paused {:.3} ms, ", self.generation, self.pause_ms)?;
        match (self.state.as_str(), self.state_bytes, &self.state_error) {
            ("handed", Some(bytes), _) => write!(f, "state handed over ({bytes} bytes)"),
            ("lost", _, Some(reason)) => write!(f, "state lost: {reason}"),
            _ => f.write_str("no state handoff"),
        }
    }
}

#[derive(Debug, Deserialize)]
struct ServiceList {
    services: Vec<ServiceEntry>,
}

/// A client of one node's admin API.
#[derive(Debug, Clone)]
pub struct AdminClient {
    addr: SocketAddr,
    token: String,
}

impl AdminClient {
    /// A client of the admin API at `addr`, authenticating with `token`.
    pub fn new(addr: SocketAddr, token: impl Into<String>) -> Self {
        Self { addr, token: token.into() }
    }

    async fn request(&self, method: Method, path: &str, body: Vec<u8>) -> Result<Bytes, AdminClientError> {
        let exchange = async {
            let stream = tokio::net::TcpStream::connect(self.addr)
                .await
                .map_err(|e| AdminClientError::Connect { addr: self.addr, message: e.to_string() })?;
            let io = hyper_util::rt::TokioIo::new(stream);
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(io).await.map_err(|e| AdminClientError::Http(e.to_string()))?;
            tokio::spawn(connection);
            let request = Request::builder()
                .method(method)
                .uri(path)
                .header(header::HOST, self.addr.to_string())
                .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
                .body(Full::new(Bytes::from(body)))
                .map_err(|e| AdminClientError::Http(e.to_string()))?;
            let response = sender.send_request(request).await.map_err(|e| AdminClientError::Http(e.to_string()))?;
            let status = response.status();
            let body =
                response.into_body().collect().await.map_err(|e| AdminClientError::Http(e.to_string()))?.to_bytes();
            if status.is_success() {
                return Ok(body);
            }
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            Err(AdminClientError::Refused { status: status.as_u16(), message })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| AdminClientError::Http(format!("no answer within {REQUEST_TIMEOUT:?}")))?
    }

    fn entry(body: &[u8]) -> Result<ServiceEntry, AdminClientError> {
        serde_json::from_slice(body).map_err(|e| AdminClientError::BadAnswer(e.to_string()))
    }

    /// The node's services.
    ///
    /// # Errors
    /// [`AdminClientError`].
    pub async fn list(&self) -> Result<Vec<ServiceEntry>, AdminClientError> {
        let body = self.request(Method::GET, "/v1/services", Vec::new()).await?;
        let list: ServiceList =
            serde_json::from_slice(&body).map_err(|e| AdminClientError::BadAnswer(e.to_string()))?;
        Ok(list.services)
    }

    /// Loads a plugin build (its limits from its manifest) on a free
    /// service number.
    ///
    /// # Errors
    /// [`AdminClientError::Refused`] with the node's reason (occupied,
    /// does not compile, …).
    pub async fn load(&self, service: u8, build: PluginBuild) -> Result<ServiceEntry, AdminClientError> {
        let path = upload_path(service, &build);
        Self::entry(&self.request(Method::POST, &path, build.wasm).await?)
    }

    /// Swaps the plugin of a service for a new build (its limits from its
    /// manifest), live; the answer's `swap` says what the swap did.
    ///
    /// # Errors
    /// [`AdminClientError::Refused`] with the node's reason; the old
    /// plugin then keeps serving.
    pub async fn swap(&self, service: u8, build: PluginBuild) -> Result<ServiceEntry, AdminClientError> {
        let path = upload_path(service, &build);
        Self::entry(&self.request(Method::PUT, &path, build.wasm).await?)
    }

    /// The node's metrics in the Prometheus text format.
    ///
    /// # Errors
    /// [`AdminClientError`].
    pub async fn metrics(&self) -> Result<String, AdminClientError> {
        let body = self.request(Method::GET, "/metrics", Vec::new()).await?;
        String::from_utf8(body.to_vec()).map_err(|e| AdminClientError::BadAnswer(e.to_string()))
    }

    /// Unloads the plugin of a service.
    ///
    /// # Errors
    /// [`AdminClientError::Refused`] (e.g. no such service).
    pub async fn unload(&self, service: u8) -> Result<(), AdminClientError> {
        self.request(Method::DELETE, &format!("/v1/services/{service}"), Vec::new()).await.map(drop)
    }
}

/// The path of a load or swap: the service, the build's name and, when it
/// sets any limit, its manifest.
fn upload_path(service: u8, build: &PluginBuild) -> String {
    let mut path = format!("/v1/services/{service}?name={}", query_value(&build.name));
    let manifest = build.manifest.encode();
    if !manifest.is_empty() {
        path.push_str("&manifest=");
        path.push_str(&query_value(&manifest));
    }
    path
}

/// Percent-encodes a query value (everything but unreserved characters).
fn query_value(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}
