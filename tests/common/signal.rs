//! A raw signaling protocol client, to check what goes over the wire.

use anyhow::bail;
use fogconnect::signal::protocol::{ClientMessage, ErrorCode, PROTOCOL_VERSION, ServerMessage};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use super::WAIT;

/// A client WebSocket.
pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A raw protocol client, to check the wire behaviour.
pub struct Raw(pub Ws);

impl Raw {
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let (ws, _) = tokio_tungstenite::connect_async(url).await?;
        Ok(Raw(ws))
    }

    pub async fn send(&mut self, message: &ClientMessage) -> anyhow::Result<()> {
        self.send_text(message.encode()).await
    }

    pub async fn send_text(&mut self, text: String) -> anyhow::Result<()> {
        Ok(self.0.send(Message::text(text)).await?)
    }

    pub async fn recv(&mut self) -> anyhow::Result<ServerMessage> {
        self.recv_within(WAIT).await
    }

    /// The next protocol message within `limit`.
    pub async fn recv_within(&mut self, limit: std::time::Duration) -> anyhow::Result<ServerMessage> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.0.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => return Ok(ServerMessage::decode(text.as_str())?),
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Ok(other) => bail!("unexpected {other:?}"),
                Err(_) => bail!("no message within {limit:?}"),
            }
        }
    }

    pub async fn register(url: &str, id: &str, token: &str) -> anyhow::Result<(Self, ServerMessage)> {
        let mut raw = Raw::connect(url).await?;
        raw.send(&ClientMessage::Register { version: PROTOCOL_VERSION, id: id.into(), token: token.into() }).await?;
        let reply = raw.recv().await?;
        Ok((raw, reply))
    }

    pub async fn expect_error(&mut self, code: ErrorCode) -> anyhow::Result<String> {
        match self.recv().await? {
            ServerMessage::Error { code: got, message, .. } if got == code.code() => Ok(message),
            other => bail!("expected error {code:?}, got {other:?}"),
        }
    }

    pub async fn ping(&mut self, nonce: u64) -> anyhow::Result<()> {
        self.send(&ClientMessage::Ping { nonce }).await?;
        match self.recv().await? {
            ServerMessage::Pong { nonce: n } if n == nonce => Ok(()),
            other => bail!("expected pong, got {other:?}"),
        }
    }
}
