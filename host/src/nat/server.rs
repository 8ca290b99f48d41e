//! The STUN server of `fogconnect stun`: RFC 5389 binding, and with an
//! alternate address the RFC 5780 attributes OTHER-ADDRESS, RESPONSE-ORIGIN
//! and CHANGE-REQUEST.
//!
//! With a primary address `A1:P1` and an alternate `A2:P2` the server
//! listens on all four combinations (`A1:P1`, `A1:P2`, `A2:P1`, `A2:P2`) so
//! it can answer from a changed IP, a changed port or both.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use super::NatError;
use super::message::{self, Binding, SuccessResponse};
use crate::limits::PerIpRate;

/// A response to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The server address to send it from.
    pub from: SocketAddr,
    /// The client.
    pub to: SocketAddr,
    /// The STUN message.
    pub bytes: Vec<u8>,
}

/// The server's addresses and its answer to each request, without I/O.
#[derive(Debug, Clone)]
pub struct StunResponder {
    primary: SocketAddr,
    alternate: Option<SocketAddr>,
}

impl StunResponder {
    /// A responder for `primary` and an optional `alternate` address that
    /// differs in both IP and port.
    ///
    /// # Errors
    /// [`NatError::Config`] when the alternate shares the IP or the port
    /// with the primary, or the families differ.
    pub fn new(primary: SocketAddr, alternate: Option<SocketAddr>) -> Result<Self, NatError> {
        if let Some(alt) = alternate {
            let both_free = alt.port() == 0 && primary.port() == 0;
            if (alt.port() == 0) != (primary.port() == 0) {
                return Err(NatError::Config("with an alternate address give both ports, or 0 for both".into()));
            }
            if alt.ip() == primary.ip() || (alt.port() == primary.port() && !both_free) {
                return Err(NatError::Config(format!(
                    "the alternate address {alt} must differ from {primary} in both IP and port (RFC 5780)"
                )));
            }
            if alt.is_ipv4() != primary.is_ipv4() {
                return Err(NatError::Config(format!("{alt} and {primary} are of different address families")));
            }
            if alt.ip().is_unspecified() || primary.ip().is_unspecified() {
                return Err(NatError::Config(
                    "with an alternate address both addresses must be specific IPs, not 0.0.0.0".into(),
                ));
            }
        }
        Ok(Self { primary, alternate })
    }

    /// The addresses to listen on: one, or the four combinations.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        match self.alternate {
            None => vec![self.primary],
            Some(alt) => vec![
                self.primary,
                SocketAddr::new(self.primary.ip(), alt.port()),
                SocketAddr::new(alt.ip(), self.primary.port()),
                alt,
            ],
        }
    }

    fn flip(&self, local: SocketAddr, change_ip: bool, change_port: bool) -> Option<SocketAddr> {
        let alt = self.alternate?;
        let ip: IpAddr = match (change_ip, local.ip() == self.primary.ip()) {
            (false, _) => local.ip(),
            (true, true) => alt.ip(),
            (true, false) => self.primary.ip(),
        };
        let port = match (change_port, local.port() == self.primary.port()) {
            (false, _) => local.port(),
            (true, true) => alt.port(),
            (true, false) => self.primary.port(),
        };
        Some(SocketAddr::new(ip, port))
    }

    /// The response to a datagram received on `local` from `from`; `None`
    /// for anything that is not a binding request, a wrong FINGERPRINT
    /// included (never answered, so the server cannot be used to reflect
    /// garbage).
    pub fn respond(&self, local: SocketAddr, from: SocketAddr, bytes: &[u8]) -> Option<Response> {
        let Ok(Binding::Request { txid, change_ip, change_port, unknown, .. }) = message::decode(bytes) else {
            return None;
        };
        let error = |code: u16, reason: &str, attrs: &[u16]| {
            message::binding_error(txid, code, reason, attrs).ok().map(|bytes| Response {
                from: local,
                to: from,
                bytes,
            })
        };
        if !unknown.is_empty() {
            return error(420, "Unknown Attribute", &unknown);
        }
        let source = if change_ip || change_port {
            match self.flip(local, change_ip, change_port) {
                Some(source) => source,
                // RFC 5780 section 6.1: no alternate address, so CHANGE-REQUEST is unknown.
                None => return error(420, "Unknown Attribute: no alternate address for CHANGE-REQUEST", &[0x0003]),
            }
        } else {
            local
        };
        let response = SuccessResponse {
            mapped: Some(from),
            other: self.flip(local, true, true),
            origin: self.alternate.map(|_| source),
            pwd: None,
            server: true,
        };
        let bytes = message::binding_success(txid, &response).ok()?;
        Some(Response { from: source, to: from, bytes })
    }
}

/// Limits of the STUN server.
#[derive(Debug, Clone, Copy)]
pub struct StunServerLimits {
    /// Requests per second answered per client IP (sustained).
    pub per_ip_rate: u32,
    /// Burst allowed per client IP.
    pub per_ip_burst: u32,
    /// Client IPs tracked for rate limiting; when full, the IP seen least
    /// recently is forgotten (an IP being flooded keeps its spent budget).
    pub tracked_ips: usize,
}

impl Default for StunServerLimits {
    fn default() -> Self {
        Self { per_ip_rate: 200, per_ip_burst: 400, tracked_ips: 65_536 }
    }
}

/// Binds the four (or one) addresses. Port 0 picks free ports: with an
/// alternate address the two ports are picked so that all four
/// combinations can be bound (retried a few times).
async fn bind_all(responder: StunResponder) -> Result<(StunResponder, HashMap<SocketAddr, Arc<UdpSocket>>), NatError> {
    let bind = |addr: SocketAddr| async move {
        UdpSocket::bind(addr).await.map_err(|e| NatError::Io(format!("cannot bind {addr}: {e}")))
    };
    let local = |socket: &UdpSocket| socket.local_addr().map_err(|e| NatError::Io(e.to_string()));
    let Some(alt) = responder.alternate else {
        let socket = bind(responder.primary).await?;
        let primary = local(&socket)?;
        return Ok((StunResponder { primary, alternate: None }, HashMap::from([(primary, Arc::new(socket))])));
    };
    let mut last = None;
    for _ in 0..16 {
        let attempt = async {
            let first = bind(responder.primary).await?;
            let primary = local(&first)?;
            let second = bind(alt).await?;
            let alternate = local(&second)?;
            let responder = StunResponder { primary, alternate: Some(alternate) };
            let mut sockets = HashMap::from([(primary, Arc::new(first)), (alternate, Arc::new(second))]);
            for addr in
                [SocketAddr::new(primary.ip(), alternate.port()), SocketAddr::new(alternate.ip(), primary.port())]
            {
                sockets.insert(addr, Arc::new(bind(addr).await?));
            }
            Ok::<_, NatError>((responder, sockets))
        };
        match attempt.await {
            Ok(bound) => return Ok(bound),
            // Fixed ports fail the same way every time.
            Err(e) if responder.primary.port() != 0 => return Err(e),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| NatError::Io("cannot bind the STUN addresses".into())))
}

/// A running STUN server.
#[derive(Debug)]
pub struct StunServer {
    addrs: Vec<SocketAddr>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl StunServer {
    /// Binds the responder's addresses and serves until stopped. Port 0 in
    /// the primary address (without an alternate) picks a free port.
    ///
    /// # Errors
    /// [`NatError::Io`] when an address cannot be bound.
    pub async fn start(responder: StunResponder, limits: StunServerLimits) -> Result<Self, NatError> {
        let (responder, sockets) = bind_all(responder).await?;
        let addrs: Vec<SocketAddr> = responder.listen_addrs();
        let sockets = Arc::new(sockets);
        let stop = CancellationToken::new();
        let limiter = Arc::new(std::sync::Mutex::new(PerIpRate::new(
            limits.per_ip_rate,
            limits.per_ip_burst,
            limits.tracked_ips,
        )));
        let mut tasks = Vec::new();
        for (&local, socket) in sockets.iter() {
            let (socket, sockets, responder, stop, limiter) =
                (socket.clone(), sockets.clone(), responder.clone(), stop.clone(), limiter.clone());
            tasks.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 2048];
                loop {
                    let (len, from) = tokio::select! {
                        _ = stop.cancelled() => return,
                        r = socket.recv_from(&mut buf) => match r {
                            Ok(r) => r,
                            Err(e) => { tracing::debug!("stun recv: {e}"); continue; }
                        },
                    };
                    let allowed =
                        limiter.lock().unwrap_or_else(|p| p.into_inner()).allow(&from.ip(), 1, Instant::now());
                    if !allowed {
                        continue;
                    }
                    let Some(response) = responder.respond(local, from, &buf[..len]) else { continue };
                    let out = if response.from == local {
                        &socket
                    } else {
                        match sockets.get(&response.from) {
                            Some(out) => out,
                            None => continue,
                        }
                    };
                    if let Err(e) = out.send_to(&response.bytes, response.to).await {
                        tracing::debug!(to = %response.to, "stun send: {e}");
                    }
                }
            }));
        }
        Ok(Self { addrs, stop, tasks })
    }

    /// The bound addresses: primary first, then (with an alternate)
    /// primary IP + alternate port, alternate IP + primary port, alternate.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Stops serving.
    pub async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nat::message::BindingRequest;

    fn a(text: &str) -> SocketAddr {
        text.parse().expect("addr")
    }

    fn responder() -> StunResponder {
        StunResponder::new(a("198.51.100.1:3478"), Some(a("198.51.100.2:3479"))).expect("valid")
    }

    fn request(change_ip: bool, change_port: bool) -> Vec<u8> {
        message::binding_request([9; 12], &BindingRequest { change_ip, change_port, ..Default::default() })
            .expect("encode")
    }

    #[test]
    fn answers_with_mapped_other_and_origin() {
        let r = responder();
        let client = a("203.0.113.7:40000");
        let response = r.respond(a("198.51.100.1:3478"), client, &request(false, false)).expect("answer");
        assert_eq!(response.from, a("198.51.100.1:3478"));
        assert_eq!(response.to, client);
        assert_eq!(
            message::decode(&response.bytes).expect("decode"),
            Binding::Success {
                txid: [9; 12],
                mapped: Some(client),
                other: Some(a("198.51.100.2:3479")),
                origin: Some(a("198.51.100.1:3478")),
            }
        );
    }

    #[test]
    fn change_request_picks_the_source() {
        let r = responder();
        let client = a("203.0.113.7:40000");
        let cases = [
            ("198.51.100.1:3478", true, true, "198.51.100.2:3479"),
            ("198.51.100.1:3478", false, true, "198.51.100.1:3479"),
            ("198.51.100.1:3478", true, false, "198.51.100.2:3478"),
            ("198.51.100.2:3479", true, true, "198.51.100.1:3478"),
            ("198.51.100.2:3478", false, true, "198.51.100.2:3479"),
        ];
        for (local, ip, port, expected) in cases {
            let response = r.respond(a(local), client, &request(ip, port)).expect("answer");
            assert_eq!(response.from, a(expected), "{local} ip={ip} port={port}");
            let Binding::Success { origin, other, .. } = message::decode(&response.bytes).expect("decode") else {
                panic!("success expected")
            };
            assert_eq!(origin, Some(a(expected)));
            assert_ne!(other.map(|o| o.ip()), Some(a(local).ip()));
        }
    }

    #[test]
    fn without_alternate_change_request_gets_420_and_no_rfc_5780_attributes() {
        let r = StunResponder::new(a("198.51.100.1:3478"), None).expect("valid");
        let response = r.respond(a("198.51.100.1:3478"), a("203.0.113.7:1"), &request(true, false)).expect("answer");
        assert!(matches!(message::decode(&response.bytes), Ok(Binding::Error { code: 420, .. })));
        let response = r.respond(a("198.51.100.1:3478"), a("203.0.113.7:1"), &request(false, false)).expect("answer");
        let Ok(Binding::Success { other: None, origin: None, mapped: Some(_), .. }) = message::decode(&response.bytes)
        else {
            panic!("plain RFC 5389 answer expected")
        };
    }

    #[test]
    fn a_request_with_a_wrong_fingerprint_is_not_answered() {
        let responder = responder();
        let request = message::binding_request(
            [5; 12],
            &BindingRequest { auth: Some(("user:name", "password")), ..Default::default() },
        )
        .expect("encode");
        let (local, from) = (responder.primary, a("198.51.100.4:4444"));
        assert!(responder.respond(local, from, &request).is_some());
        let mut wrong = request;
        let last = wrong.len() - 1;
        wrong[last] ^= 0xff;
        assert!(responder.respond(local, from, &wrong).is_none());
    }

    #[test]
    fn garbage_truncated_and_responses_are_not_answered() {
        let r = responder();
        let local = a("198.51.100.1:3478");
        let from = a("203.0.113.7:1");
        let good = request(false, false);
        for cut in 0..good.len() {
            assert_eq!(r.respond(local, from, &good[..cut]), None);
        }
        assert_eq!(r.respond(local, from, b"GET / HTTP/1.1\r\n\r\n"), None);
        let success = message::binding_success([1; 12], &SuccessResponse::default()).expect("encode");
        assert_eq!(r.respond(local, from, &success), None, "responses are never answered (no loops)");
    }

    #[test]
    fn alternate_must_differ_in_ip_and_port() {
        assert!(StunResponder::new(a("198.51.100.1:3478"), Some(a("198.51.100.1:3479"))).is_err());
        assert!(StunResponder::new(a("198.51.100.1:3478"), Some(a("198.51.100.2:3478"))).is_err());
        assert!(StunResponder::new(a("0.0.0.0:3478"), Some(a("198.51.100.2:3479"))).is_err());
        assert!(StunResponder::new(a("198.51.100.1:0"), Some(a("198.51.100.2:3479"))).is_err());
        assert!(StunResponder::new(a("198.51.100.1:0"), Some(a("198.51.100.2:0"))).is_ok());
    }

    /// The whole procedure over real sockets on loopback: the server on
    /// 127.0.0.1 and 127.0.0.2 with free ports, the client without NAT.
    #[tokio::test]
    async fn discovery_against_our_server_on_loopback_finds_no_nat() {
        let responder = StunResponder::new(a("127.0.0.1:0"), Some(a("127.0.0.2:0"))).expect("valid");
        let server = StunServer::start(responder, StunServerLimits::default()).await.expect("start");
        let addrs = server.addrs().to_vec();
        assert_eq!(addrs.len(), 4);
        assert_eq!((addrs[1].ip(), addrs[1].port()), (addrs[0].ip(), addrs[3].port()));
        let report = crate::nat::discovery::discover(addrs[0], crate::nat::transaction::RetransmitPolicy::DISCOVERY)
            .await
            .expect("discover");
        assert!(report.rfc5780);
        assert_eq!(report.behind_nat(), Some(false));
        assert_eq!(report.public, Some(report.local));
        assert_eq!(report.mapping, crate::signal::protocol::NatBehaviour::EndpointIndependent);
        assert_eq!(report.filtering, crate::signal::protocol::NatBehaviour::EndpointIndependent);
        assert_eq!(report.hairpinning, Some(true));
        assert_eq!(report.kind_name(), "open internet");
        server.stop().await;
    }
}
