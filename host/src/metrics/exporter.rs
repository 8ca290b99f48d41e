//! A Prometheus endpoint for the servers (`--metrics ADDR` of `fogconnect
//! signal` and `fogconnect relay`): `GET /metrics` answers what the given
//! function renders, within the bounds of [`crate::limits::http`].

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

/// Renders the exposition text at each scrape.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// A running metrics endpoint; stops when dropped.
#[derive(Debug)]
pub struct MetricsExporter {
    addr: SocketAddr,
    stop: CancellationToken,
}

impl MetricsExporter {
    /// Serves `render` on `http://<listen>/metrics`.
    ///
    /// # Errors
    /// The address cannot be bound.
    pub async fn start(listen: SocketAddr, render: Render) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let router = Router::new().route(
            "/metrics",
            get(move || {
                let render = render.clone();
                async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], render()).into_response() }
            }),
        );
        let stop = CancellationToken::new();
        tokio::spawn(crate::limits::http::serve_connections(listener, router, stop.clone(), "metrics"));
        Ok(Self { addr, stop })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsExporter {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
