//! Test plugin that reports what it sees, so tests can check the host's
//! side of the contract. Each message is a command, answered with one reply:
//! - `info`: the connect info and what the per-connection imports return,
//! - `close-me`: closes this connection from the plugin side (no reply),
//! - `closes`: the close reasons recorded for other connections,
//! - `dial <addr> <service> <text>`: `connect-peer`, then sends `<text>`,
//! - `dialed`: what happened to the dialled connections,
//! - `poke <first> <last>`: tries to send on every handle in the range except
//!   its own and reports whether all were refused as unknown,
//! - `stats`: the connection's stats,
//! - `transport <n>`: `answer=<n>`, the messages received so far and the
//!   connection's transport counters.

use std::collections::BTreeMap;

use fogconnect_guest::transport::TransportStats;
use fogconnect_guest::{
    CloseKind, CloseReason, ConnError, ConnectInfo, Connection, Service, Transport, connect_peer, export_service,
};

/// Recorded observations.
#[derive(Default)]
pub struct Probe {
    infos: BTreeMap<u64, ConnectInfo>,
    closes: Vec<String>,
    dial_text: BTreeMap<u64, String>,
    dial_log: Vec<String>,
}

fn kind_name(reason: &CloseReason) -> &'static str {
    match reason.kind {
        CloseKind::Eof => "eof",
        CloseKind::Error => "error",
        CloseKind::Timeout => "timeout",
        CloseKind::Refused => "refused",
        CloseKind::Local => "local",
    }
}

impl Probe {
    fn command(&mut self, conn: Connection, text: &str) -> Option<String> {
        let mut words = text.splitn(4, ' ');
        match words.next().unwrap_or_default() {
            "info" => {
                let info = self.infos.get(&conn.raw())?;
                let _ = conn.set_user_data(0xF06);
                Some(format!(
                    "passive={} convention={:#x} peer={} remote={} imports-agree={} user-data={:#x}",
                    info.passive,
                    info.convention,
                    info.peer_id,
                    info.remote_address,
                    conn.is_passive() == Ok(info.passive)
                        && conn.convention() == Ok(info.convention)
                        && conn.peer_id().as_deref() == Ok(info.peer_id.as_str()),
                    conn.user_data().unwrap_or(0),
                ))
            }
            "close-me" => {
                let _ = conn.close();
                None
            }
            "closes" => Some(self.closes.join(";")),
            "dial" => {
                let addr = words.next().unwrap_or_default();
                let service = words.next().and_then(|s| s.parse().ok()).unwrap_or(0);
                let payload = words.next().unwrap_or_default().to_string();
                match connect_peer(addr, Transport::Quic, service) {
                    Ok(dialled) => {
                        self.dial_text.insert(dialled.raw(), payload);
                        Some("dialling".into())
                    }
                    Err(e) => Some(format!("dial error: {e:?}")),
                }
            }
            "dialed" => Some(self.dial_log.join(";")),
            "poke" => {
                let first: u64 = words.next().and_then(|s| s.parse().ok()).unwrap_or(1);
                let last: u64 = words.next().and_then(|s| s.parse().ok()).unwrap_or(first);
                let leaks: Vec<String> = (first..=last)
                    .filter(|h| *h != conn.raw())
                    .filter_map(|h| match Connection::from_raw(h).send(b"intrusion") {
                        Err(ConnError::UnknownConnection) => None,
                        other => Some(format!("{h}:{other:?}")),
                    })
                    .collect();
                Some(if leaks.is_empty() { "isolated".into() } else { format!("leaked {}", leaks.join(",")) })
            }
            "stats" => conn.stats().ok().map(|s| {
                format!(
                    "path={:?} messages-received={} bytes-received={}",
                    s.path, s.messages_received, s.bytes_received
                )
            }),
            "transport" => {
                let number = words.next().unwrap_or_default();
                let received = conn.stats().map(|s| s.messages_received).unwrap_or(0);
                let counters = match conn.transport_stats() {
                    Ok(TransportStats::QuicStream) => "stream".to_string(),
                    Ok(TransportStats::Datagrams(d)) => format!("datagrams max={} lost={}", d.max_datagram, d.lost),
                    Ok(TransportStats::Kcp(k)) => format!(
                        "kcp conversation={} forged={} replayed={} malformed={}",
                        k.conversation, k.forged, k.replayed, k.malformed
                    ),
                    Err(e) => format!("error {e:?}"),
                };
                Some(format!("answer={number} received={received} {counters}"))
            }
            other => Some(format!("unknown command {other:?}")),
        }
    }
}

impl Service for Probe {
    fn on_connect(&mut self, conn: Connection, info: ConnectInfo) {
        if !info.passive {
            let text = self.dial_text.get(&conn.raw()).cloned().unwrap_or_default();
            self.dial_log.push(format!("connected:{}:{:#x}", info.peer_id, info.convention));
            let _ = conn.send(text.as_bytes());
        }
        self.infos.insert(conn.raw(), info);
    }

    fn on_recv(&mut self, conn: Connection, data: Vec<u8>) {
        if self.dial_text.contains_key(&conn.raw()) {
            self.dial_log.push(format!("reply:{}", String::from_utf8_lossy(&data)));
            return;
        }
        let text = String::from_utf8_lossy(&data).into_owned();
        if let Some(reply) = self.command(conn, &text) {
            let _ = conn.send(reply.as_bytes());
        }
    }

    fn on_close(&mut self, conn: Connection, reason: CloseReason) {
        self.infos.remove(&conn.raw());
        if self.dial_text.remove(&conn.raw()).is_some() {
            self.dial_log.push(format!("closed:{}:{}", kind_name(&reason), reason.message));
        } else {
            self.closes.push(format!("{}:{}:{}", conn.raw(), kind_name(&reason), reason.message));
        }
    }
}

export_service!(Probe);
