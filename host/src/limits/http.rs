//! Serving a small local HTTP API (the admin API, a metrics endpoint) with
//! bounds an unauthenticated client cannot get past: connections open at
//! once, the time to send headers, and the life of one connection.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio_util::sync::CancellationToken;

/// Longest a client may take to send a request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Most connections open at once.
pub const MAX_CONNECTIONS: usize = 16;
/// Longest one connection stays open.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(600);

/// Accepts connections (of the admin API or a metrics endpoint) until `stop`, at most [`MAX_CONNECTIONS`]
/// at once, each served by hyper with the header deadline.
pub(crate) async fn serve_connections(
    listener: tokio::net::TcpListener,
    router: Router,
    stop: CancellationToken,
    what: &'static str,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    while let Some((stream, peer)) = crate::limits::accept_with_backoff(&listener, &stop, what).await {
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "connection refused: {MAX_CONNECTIONS} open already");
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let stop = stop.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
            let connection = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            let lifetime = tokio::time::sleep(CONNECTION_LIFETIME);
            tokio::select! {
                served = connection.as_mut() => {
                    if let Err(e) = served {
                        tracing::debug!(%peer, "{what} connection: {e}");
                    }
                }
                _ = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), connection).await;
                }
                _ = lifetime => tracing::debug!(%peer, "{what} connection open for {CONNECTION_LIFETIME:?}: closed"),
            }
        });
    }
}
