//! Streams over the rate-limited link lab ([`super::Lab::rate_limited_link`]):
//! the adaptive source plugin on a device node in `dev`, `fogconnect stream`
//! in `app` printing its reports and the plugin's stats.

use std::time::Duration;

use anyhow::ensure;

use super::{LINK_DEVICE, Lab, lab_available};
use crate::common::key_value;

/// The link's rate: `tc` rate and bits per second.
pub const LINK: (&str, f64) = ("4mbit", 4e6);

/// One report of `fogconnect stream`.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    pub secs: f64,
    pub mbit: f64,
}

/// One `stream` line of the plugin's `stats`, after the report at `secs`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    pub secs: f64,
    pub bitrate: u64,
    pub buffered: u64,
    pub max_buffered: u64,
    pub warn: u64,
    pub high: u64,
    pub low: u64,
    /// Milliseconds from the start until the buffer first fell below the
    /// low mark after an overshoot, if it did.
    pub settled_ms: Option<u64>,
}

/// Streams from the device to the application over the link for
/// `seconds` with `params`; returns the reports, the stats and the summary.
pub fn stream_over_link(params: &str, seconds: u64) -> anyhow::Result<(Vec<Report>, Vec<Stats>, String)> {
    lab_available()?;
    let mut lab = Lab::rate_limited_link(LINK.0)?;
    let plugin = crate::common::plugin("adaptive-source");
    let listen = format!("{LINK_DEVICE}:7700");
    let spec = format!("5={}", plugin.display());
    let mut device =
        lab.spawn("dev", &["node", "--listen", &listen, "--id", "camera", "--no-cache", "--plugin", &spec], &[])?;
    device.wait_line("listening on", Duration::from_secs(10))?;
    let secs = seconds.to_string();
    let args = [
        "stream",
        "--addr",
        &listen,
        "--service",
        "5",
        "--params",
        params,
        "--seconds",
        &secs,
        "--report-ms",
        "500",
        "--watch-command",
        "stats",
    ];
    let mut app = lab.spawn("app", &args, &[])?;
    let lines = app.rest(Duration::from_secs(seconds + 20))?;
    let mut reports = Vec::new();
    let mut stats = Vec::new();
    let mut summary = String::new();
    for line in &lines {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let ["|", "stream", ..] = words[..] {
            let secs = reports.last().map_or(0.0, |r: &Report| r.secs);
            stats.push(Stats {
                secs,
                bitrate: key_value(line, "bitrate")?,
                buffered: key_value(line, "buffered")?,
                max_buffered: key_value(line, "max_buffered")?,
                warn: key_value(line, "warn")?,
                high: key_value(line, "high")?,
                low: key_value(line, "low")?,
                settled_ms: key_value(line, "settled_ms").ok(),
            });
        } else if let [secs, "s", mbit, "Mbit/s", ..] = words[..] {
            reports.push(Report { secs: secs.parse()?, mbit: mbit.parse()? });
        } else if line.starts_with("ended:") {
            summary = line.clone();
        }
    }
    ensure!(reports.len() as u64 >= seconds * 2 - 2, "too few reports: {lines:#?}");
    ensure!(stats.len() as u64 >= seconds * 2 - 4, "too few stats: {lines:#?}");
    Ok((reports, stats, summary))
}
