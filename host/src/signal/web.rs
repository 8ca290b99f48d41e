//! The web side of the signaling port: the browser module and the web app
//! (built into the binary) over plain HTTP/1.1 GETs, beside the WebSocket
//! on [`WS_PATH`].
//!
//! The request head is read here (bounded in size and time) and parsed
//! with `httparse`; a WebSocket upgrade is handed to tungstenite with the
//! bytes already read put back in front of the stream ([`Replayed`]).
//! Written by hand because tungstenite's handshake refuses plain GETs
//! before any callback sees them, and a whole HTTP server for two static
//! files would put the session limits behind another layer.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::server::WS_PATH;

/// The browser module: sign in, peers and presence, connections over
/// DataChannels, stream sessions.
pub const MODULE_PATH: &str = "/fogconnect.js";
/// The web app (its page).
pub const APP_PATH: &str = "/";

/// Largest request head read, in bytes.
const MAX_HEAD: usize = 8 * 1024;

/// A file served at a fixed path.
#[derive(Debug)]
pub struct Asset {
    /// The path it is served at.
    pub path: &'static str,
    /// Its media type.
    pub content_type: &'static str,
    /// Its contents.
    pub body: &'static str,
}

/// Everything served besides the WebSocket.
pub const ASSETS: [Asset; 2] = [
    Asset { path: APP_PATH, content_type: "text/html; charset=utf-8", body: include_str!("../../../web/index.html") },
    Asset {
        path: MODULE_PATH,
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../../web/fogconnect.js"),
    },
];

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// A WebSocket upgrade on [`WS_PATH`] (or any request there: the
    /// WebSocket handshake answers what is wrong with it).
    WebSocket,
    /// A GET of an asset.
    Asset(&'static Asset),
    /// An answer without a body: status code and reason.
    Refused(u16, &'static str),
}

impl PartialEq for Asset {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path
    }
}

impl Eq for Asset {}

/// Routes a complete request head.
pub fn route(head: &[u8]) -> Request {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Request::Refused(400, "Bad Request"),
    }
    let path = request.path.unwrap_or("").split(['?', '#']).next().unwrap_or("");
    if path == WS_PATH {
        return Request::WebSocket;
    }
    let Some(asset) = ASSETS.iter().find(|a| a.path == path) else { return Request::Refused(404, "Not Found") };
    match request.method {
        Some("GET") => Request::Asset(asset),
        _ => Request::Refused(405, "Method Not Allowed"),
    }
}

/// Reads a request head (up to the blank line), at most [`MAX_HEAD`]
/// bytes. `None` when the peer closes or sends more without ending it.
pub async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> Option<Vec<u8>> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&chunk[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            return Some(head);
        }
        if head.len() > MAX_HEAD {
            return None;
        }
    }
}

/// Answers a request that is not a WebSocket upgrade, then closes.
pub async fn respond<S: AsyncWrite + Unpin>(stream: &mut S, request: &Request) {
    let (status, reason, content_type, body) = match request {
        Request::Asset(asset) => (200, "OK", asset.content_type, asset.body),
        Request::Refused(status, reason) => (*status, *reason, "text/plain; charset=utf-8", *reason),
        Request::WebSocket => return,
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-cache\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// A stream with bytes already read from it put back in front.
#[derive(Debug)]
pub struct Replayed<S> {
    prefix: Vec<u8>,
    read: usize,
    inner: S,
}

impl<S> Replayed<S> {
    /// `inner`, whose next bytes are `prefix`.
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self { prefix, read: 0, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Replayed<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if self.read < self.prefix.len() {
            let n = (self.prefix.len() - self.read).min(buf.remaining());
            let start = self.read;
            buf.put_slice(&self.prefix[start..start + n]);
            self.read += n;
            if self.read == self.prefix.len() {
                self.prefix = Vec::new();
                self.read = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replayed<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_routed_by_path_and_method() {
        let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(route(get("/").as_bytes()), Request::Asset(&ASSETS[0]));
        assert_eq!(route(get("/?id=web").as_bytes()), Request::Asset(&ASSETS[0]));
        assert_eq!(route(get("/fogconnect.js").as_bytes()), Request::Asset(&ASSETS[1]));
        assert_eq!(route(get("/ws").as_bytes()), Request::WebSocket);
        assert_eq!(route(get("/other").as_bytes()), Request::Refused(404, "Not Found"));
        assert_eq!(route(b"POST / HTTP/1.1\r\n\r\n"), Request::Refused(405, "Method Not Allowed"));
        assert_eq!(route(b"\x16\x03\x01 garbage\r\n\r\n"), Request::Refused(400, "Bad Request"));
    }

    #[tokio::test]
    async fn a_replayed_stream_gives_the_prefix_first() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(b" world").await.expect("write");
        drop(a);
        let mut replayed = Replayed::new(b"hello".to_vec(), b);
        let mut all = String::new();
        replayed.read_to_string(&mut all).await.expect("read");
        assert_eq!(all, "hello world");
    }

    #[tokio::test]
    async fn heads_are_bounded() {
        let (mut a, mut b) = tokio::io::duplex(64 * 1024);
        a.write_all(&vec![b'a'; MAX_HEAD + 2048]).await.expect("write");
        assert_eq!(read_head(&mut b).await, None);
    }
}
