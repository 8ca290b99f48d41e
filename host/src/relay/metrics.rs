//! The relay's counters in the Prometheus text format (`fogconnect relay
//! --metrics ADDR` serves them on `/metrics`).

use std::fmt::Write as _;

use super::server::ServerStats;

/// The Prometheus text exposition of a relay's counters.
pub fn render(stats: &ServerStats) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, lines: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in lines {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let one = |value: u64| [(String::new(), value)];
    metric("fogconnect_relay_allocations", "gauge", "Allocations now.", &one(stats.allocations as u64));
    metric(
        "fogconnect_relay_allocations_granted_total",
        "counter",
        "Allocations granted since start.",
        &one(stats.allocations_granted),
    );
    metric(
        "fogconnect_relay_datagrams_total",
        "counter",
        "Datagrams relayed, by direction.",
        &[("{direction=\"to_peer\"}".into(), stats.to_peers), ("{direction=\"to_client\"}".into(), stats.to_clients)],
    );
    metric(
        "fogconnect_relay_bytes_total",
        "counter",
        "Payload bytes relayed, by direction.",
        &[
            ("{direction=\"to_peer\"}".into(), stats.bytes_to_peers),
            ("{direction=\"to_client\"}".into(), stats.bytes_to_clients),
        ],
    );
    metric(
        "fogconnect_relay_dropped_total",
        "counter",
        "Datagrams dropped: no permission, over bandwidth, garbage.",
        &one(stats.dropped),
    );
    let refusals: Vec<(String, u64)> =
        stats.refused_by_code.iter().map(|(code, n)| (format!("{{code=\"{code}\"}}"), *n)).collect();
    metric(
        "fogconnect_relay_refusals_total",
        "counter",
        "Requests answered with an error, by TURN error code (401 challenges included).",
        &refusals,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_as_prometheus_text() {
        let mut stats =
            ServerStats { allocations: 2, allocations_granted: 5, bytes_to_peers: 1200, ..Default::default() };
        stats.refused_by_code.insert(401, 3);
        stats.refused_by_code.insert(508, 1);
        let text = render(&stats);
        for line in [
            "fogconnect_relay_allocations 2",
            "fogconnect_relay_allocations_granted_total 5",
            "fogconnect_relay_bytes_total{direction=\"to_peer\"} 1200",
            "fogconnect_relay_refusals_total{code=\"401\"} 3",
            "fogconnect_relay_refusals_total{code=\"508\"} 1",
            "# TYPE fogconnect_relay_dropped_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing from\n{text}");
        }
    }
}
