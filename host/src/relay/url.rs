//! TURN server URLs (RFC 7065): `turn:host[:port][?transport=udp|tcp]` and
//! `turns:host[:port][?transport=tcp]`.

use std::fmt;
use std::str::FromStr;

/// How a node talks to its TURN server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TurnTransport {
    /// TURN over UDP, from the node's own socket.
    Udp,
    /// TURN over TCP (for networks that block UDP).
    Tcp,
    /// TURN over TLS over TCP (`turns:`).
    Tls,
}

impl TurnTransport {
    /// Whether messages travel in a byte stream (TCP, TLS): ChannelData is
    /// then padded to 4 bytes and requests are not retransmitted.
    pub fn is_stream(self) -> bool {
        self != TurnTransport::Udp
    }
}

impl fmt::Display for TurnTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TurnTransport::Udp => "udp",
            TurnTransport::Tcp => "tcp",
            TurnTransport::Tls => "tls",
        })
    }
}

/// A parsed TURN server URL.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TurnUrl {
    /// Host name or IP literal (IPv6 without brackets).
    pub host: String,
    /// Port (default 3478, or 5349 for `turns:`).
    pub port: u16,
    /// Transport.
    pub transport: TurnTransport,
}

/// Why a TURN URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid TURN URL {url:?}: {reason} (expected turn:host[:port][?transport=udp|tcp] or turns:host[:port])")]
pub struct TurnUrlError {
    /// The URL given.
    pub url: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl TurnUrl {
    /// `host:port`, with brackets around an IPv6 literal.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for TurnUrl {
    type Err = TurnUrlError;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let err = |reason| TurnUrlError { url: url.to_string(), reason };
        let (secure, rest) = if let Some(rest) = url.strip_prefix("turns:") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("turn:") {
            (false, rest)
        } else {
            return Err(err("the scheme must be turn: or turns:"));
        };
        let (authority, query) = rest.split_once('?').unwrap_or((rest, ""));
        let transport = match (secure, query) {
            (false, "" | "transport=udp") => TurnTransport::Udp,
            (false, "transport=tcp") => TurnTransport::Tcp,
            (true, "" | "transport=tcp") => TurnTransport::Tls,
            (true, "transport=udp") => return Err(err("DTLS (turns: over UDP) is not supported")),
            _ => return Err(err("the only query is transport=udp or transport=tcp")),
        };
        let default_port = if secure { 5349 } else { 3478 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| err("unclosed [ in the host"))?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| err("junk after the IPv6 host"))?),
            };
            (host, port)
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() || host.contains(['/', '@', ' ']) {
            return Err(err("missing or invalid host"));
        }
        let port = match port {
            Some(p) => p.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(|| err("invalid port"))?,
            None => default_port,
        };
        Ok(TurnUrl { host: host.to_string(), port, transport })
    }
}

impl fmt::Display for TurnUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.transport {
            TurnTransport::Udp => write!(f, "turn:{}", self.authority()),
            TurnTransport::Tcp => write!(f, "turn:{}?transport=tcp", self.authority()),
            TurnTransport::Tls => write!(f, "turns:{}", self.authority()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc_7065_forms_and_round_trips() {
        for (text, host, port, transport) in [
            ("turn:relay.example", "relay.example", 3478, TurnTransport::Udp),
            ("turn:203.0.113.10:3480", "203.0.113.10", 3480, TurnTransport::Udp),
            ("turn:203.0.113.10:3480?transport=tcp", "203.0.113.10", 3480, TurnTransport::Tcp),
            ("turns:relay.example", "relay.example", 5349, TurnTransport::Tls),
            ("turn:[2001:db8::1]:9000?transport=udp", "2001:db8::1", 9000, TurnTransport::Udp),
        ] {
            let url: TurnUrl = text.parse().expect("valid URL");
            assert_eq!((url.host.as_str(), url.port, url.transport), (host, port, transport), "{text}");
            let again: TurnUrl = url.to_string().parse().expect("printed URL parses");
            assert_eq!(again, url);
        }
    }

    #[test]
    fn refuses_what_is_not_a_turn_url() {
        for bad in [
            "stun:relay:3478",
            "turn:",
            "turn::3478",
            "turn:relay:0",
            "turn:relay:99999",
            "turn:relay?transport=sctp",
            "turns:relay?transport=udp",
            "turn:[2001:db8::1",
            "turn:user@relay",
        ] {
            assert!(bad.parse::<TurnUrl>().is_err(), "{bad} accepted");
        }
    }
}
