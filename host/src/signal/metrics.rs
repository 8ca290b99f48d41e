//! The signaling server's counters and their Prometheus text form
//! (`fogconnect signal --metrics ADDR` serves them on `/metrics`).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use super::protocol::ErrorCode;
use super::routes::cluster::NatsRoutes;

/// Highest error code counted (codes above are counted under it).
const CODES: usize = 16;

/// What a signaling server counts.
#[derive(Debug, Default)]
pub struct SignalCounters {
    /// Protocol messages received from clients.
    pub received: AtomicU64,
    /// Messages delivered to another client (here or on another server).
    pub forwarded: AtomicU64,
    /// Successful registrations.
    pub registrations: AtomicU64,
    /// Error answers sent, by code.
    refusals: [AtomicU64; CODES],
}

impl SignalCounters {
    /// Counts an error answer.
    pub fn refused(&self, code: u16) {
        let slot = usize::from(code).min(CODES - 1);
        self.refusals[slot].fetch_add(1, Ordering::Relaxed);
    }

    /// Error answers sent with `code` so far.
    pub fn refusals(&self, code: ErrorCode) -> u64 {
        self.refusals[usize::from(code.code()).min(CODES - 1)].load(Ordering::Relaxed)
    }
}

/// The server's state at one moment, for [`render`].
pub(crate) struct SignalSnapshot<'a> {
    pub sessions: usize,
    pub connections: usize,
    pub counters: &'a SignalCounters,
    pub cluster: Option<&'a NatsRoutes>,
}

/// The Prometheus text exposition of a signaling server.
pub(crate) fn render(s: &SignalSnapshot<'_>) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, lines: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in lines {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let count = |a: &AtomicU64| a.load(Ordering::Relaxed);
    metric(
        "fogconnect_signal_sessions",
        "gauge",
        "Registered sessions on this server.",
        &[(String::new(), s.sessions as u64)],
    );
    metric(
        "fogconnect_signal_connections",
        "gauge",
        "Open WebSocket connections, registered or not.",
        &[(String::new(), s.connections as u64)],
    );
    metric(
        "fogconnect_signal_messages_received_total",
        "counter",
        "Protocol messages received from clients.",
        &[(String::new(), count(&s.counters.received))],
    );
    metric(
        "fogconnect_signal_messages_forwarded_total",
        "counter",
        "Messages delivered to another client.",
        &[(String::new(), count(&s.counters.forwarded))],
    );
    metric(
        "fogconnect_signal_registrations_total",
        "counter",
        "Successful registrations.",
        &[(String::new(), count(&s.counters.registrations))],
    );
    let refusals: Vec<(String, u64)> = (1..CODES as u16)
        .filter_map(|code| {
            let n = count(&s.counters.refusals[usize::from(code)]);
            let name = ErrorCode::from_code(code).map(|c| c.name()).unwrap_or("other");
            (n > 0 || ErrorCode::from_code(code).is_some()).then(|| (format!("{{code=\"{name}\"}}"), n))
        })
        .collect();
    metric("fogconnect_signal_refusals_total", "counter", "Error answers sent to clients, by code.", &refusals);
    if let Some(cluster) = s.cluster {
        let c = cluster.counters();
        metric(
            "fogconnect_signal_nats_connected",
            "gauge",
            "1 while the NATS connection is up.",
            &[(String::new(), u64::from(cluster.is_connected()))],
        );
        metric(
            "fogconnect_signal_nats_connects_total",
            "counter",
            "Times the NATS connection was established.",
            &[(String::new(), count(&c.connects))],
        );
        metric(
            "fogconnect_signal_cluster_servers",
            "gauge",
            "Other signaling servers heard alive.",
            &[(String::new(), cluster.live_servers() as u64)],
        );
        metric(
            "fogconnect_signal_cluster_messages_total",
            "counter",
            "Messages to and from ids on other servers, by outcome.",
            &[
                ("{outcome=\"delivered\"}".into(), count(&c.delivered_remote)),
                ("{outcome=\"offline\"}".into(), count(&c.remote_offline)),
                ("{outcome=\"unreachable\"}".into(), count(&c.remote_unreachable)),
                ("{outcome=\"received\"}".into(), count(&c.received_remote)),
            ],
        );
        metric(
            "fogconnect_signal_cluster_servers_reaped_total",
            "counter",
            "Dead servers whose ids this server reported offline.",
            &[(String::new(), count(&c.servers_reaped))],
        );
    }
    out
}
