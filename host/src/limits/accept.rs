//! Accepting TCP connections when descriptors may run out.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Longest pause between failed accepts.
pub const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// The next connection on `listener`, `None` once `stop` is cancelled.
///
/// While accept fails (out of descriptors, most often) it waits 10 ms,
/// doubling up to [`MAX_ACCEPT_BACKOFF`], so a full descriptor table does
/// not make the accept loop spin; `server` names the server in the log.
pub async fn accept_with_backoff(
    listener: &TcpListener,
    stop: &CancellationToken,
    server: &str,
) -> Option<(TcpStream, SocketAddr)> {
    let mut backoff = Duration::ZERO;
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return None,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            // A listener on [::] names IPv4 clients IPv4-mapped; the
            // servers judge and report them by their plain address.
            Ok((stream, peer)) => return Some((stream, crate::transport::socket::canonical(peer))),
            Err(e) => {
                backoff = (backoff * 2).clamp(Duration::from_millis(10), MAX_ACCEPT_BACKOFF);
                tracing::warn!("{server}: accept failed: {e}; next try in {backoff:?}");
                tokio::select! {
                    _ = stop.cancelled() => return None,
                    _ = tokio::time::sleep(backoff) => {}
                }
            }
        }
    }
}
