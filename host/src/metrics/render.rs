//! The Prometheus text format of a node's service metrics, as a pure
//! function of a snapshot.

use std::fmt::Write;

use super::histogram::{BUCKETS, HistogramSnapshot};

/// The values of one service at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceMetrics {
    /// Service number.
    pub service: u8,
    /// Plugin name.
    pub plugin: String,
    /// Open connections.
    pub connections: u64,
    /// Messages delivered to the plugin.
    pub messages_received: u64,
    /// Payload bytes delivered to the plugin.
    pub bytes_received: u64,
    /// Messages or stream chunks the plugin sent.
    pub messages_sent: u64,
    /// Payload bytes the plugin sent.
    pub bytes_sent: u64,
    /// Plugin calls.
    pub calls: u64,
    /// Failed calls and instantiations (traps, deadlines, memory cap).
    pub traps: u64,
    /// Re-instantiations after failures.
    pub restarts: u64,
    /// Live swaps.
    pub swaps: u64,
    /// Plugin generation serving.
    pub generation: u64,
    /// Plugin call durations.
    pub call_seconds: HistogramSnapshot,
    /// How long events waited during swaps.
    pub swap_pause_seconds: HistogramSnapshot,
}

/// Escapes a label value (backslash, quote, newline).
fn label(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A counter or gauge family: name, type, help, and its value per service.
type ScalarFamily = (&'static str, &'static str, &'static str, fn(&ServiceMetrics) -> u64);

/// A histogram family: name, help, and its values per service.
type HistogramFamily = (&'static str, &'static str, fn(&ServiceMetrics) -> &HistogramSnapshot);

/// Renders the services' metrics.
pub fn render(services: &[ServiceMetrics]) -> String {
    let mut out = String::new();
    let scalars: [ScalarFamily; 11] = [
        ("fogconnect_service_connections", "gauge", "Open connections of the service.", |s| s.connections),
        ("fogconnect_service_messages_received_total", "counter", "Messages delivered to the plugin.", |s| {
            s.messages_received
        }),
        ("fogconnect_service_received_bytes_total", "counter", "Payload bytes delivered to the plugin.", |s| {
            s.bytes_received
        }),
        ("fogconnect_service_messages_sent_total", "counter", "Messages or stream chunks the plugin sent.", |s| {
            s.messages_sent
        }),
        ("fogconnect_service_sent_bytes_total", "counter", "Payload bytes the plugin sent.", |s| s.bytes_sent),
        ("fogconnect_plugin_calls_total", "counter", "Plugin calls made.", |s| s.calls),
        ("fogconnect_plugin_traps_total", "counter", "Failed plugin calls and instantiations.", |s| s.traps),
        ("fogconnect_plugin_restarts_total", "counter", "Plugin re-instantiations after failures.", |s| s.restarts),
        ("fogconnect_plugin_swaps_total", "counter", "Live swaps of the service's plugin.", |s| s.swaps),
        ("fogconnect_plugin_generation", "gauge", "Generation of the plugin serving.", |s| s.generation),
        ("fogconnect_services", "gauge", "Services with a plugin (one series per service).", |_| 1),
    ];
    for (name, kind, help, value) in scalars {
        family(&mut out, name, kind, help);
        for s in services {
            let _ = writeln!(out, "{name}{{service=\"{}\",plugin=\"{}\"}} {}", s.service, label(&s.plugin), value(s));
        }
    }
    let histograms: [HistogramFamily; 2] = [
        ("fogconnect_plugin_call_seconds", "Duration of plugin calls.", |s| &s.call_seconds),
        ("fogconnect_plugin_swap_pause_seconds", "How long the service's events waited during a swap.", |s| {
            &s.swap_pause_seconds
        }),
    ];
    for (name, help, histogram) in histograms {
        family(&mut out, name, "histogram", help);
        for s in services {
            let h = histogram(s);
            let labels = format!("service=\"{}\",plugin=\"{}\"", s.service, label(&s.plugin));
            for (bound, count) in BUCKETS.iter().zip(&h.cumulative) {
                let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {count}");
            }
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum_seconds);
            let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Histogram;

    #[test]
    fn the_text_format_has_every_family_once_and_escaped_labels() {
        let calls = Histogram::default();
        calls.observe(std::time::Duration::from_micros(20));
        let metrics = ServiceMetrics {
            service: 3,
            plugin: "echo \"v2\"".into(),
            connections: 6,
            messages_received: 10,
            bytes_received: 100,
            messages_sent: 9,
            bytes_sent: 90,
            calls: 12,
            traps: 1,
            restarts: 1,
            swaps: 2,
            generation: 3,
            call_seconds: calls.snapshot(),
            swap_pause_seconds: Histogram::default().snapshot(),
        };
        let text = render(&[metrics]);
        assert!(
            text.contains("fogconnect_service_connections{service=\"3\",plugin=\"echo \\\"v2\\\"\"} 6\n"),
            "{text}"
        );
        assert!(text.contains("fogconnect_plugin_swaps_total{service=\"3\",plugin=\"echo \\\"v2\\\"\"} 2\n"));
        assert!(text.contains(
            "fogconnect_plugin_call_seconds_bucket{service=\"3\",plugin=\"echo \\\"v2\\\"\",le=\"0.00001\"} 0\n"
        ));
        assert!(text.contains(
            "fogconnect_plugin_call_seconds_bucket{service=\"3\",plugin=\"echo \\\"v2\\\"\",le=\"0.000025\"} 1\n"
        ));
        assert!(text.contains("fogconnect_plugin_call_seconds_count{service=\"3\",plugin=\"echo \\\"v2\\\"\"} 1\n"));
        assert_eq!(text.matches("# TYPE fogconnect_plugin_call_seconds histogram").count(), 1);
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap_or_default();
            assert!(value.parse::<f64>().is_ok(), "not a sample: {line}");
        }
    }
}
