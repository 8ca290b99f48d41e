//! Stream services over a rate-limited link (network namespaces with a
//! `tc tbf` link, root only; `make test` runs them): the adaptive source
//! settles below the link rate with its buffer under the high mark when
//! the watermarks are on, and with them off no event fires while the
//! buffer grows; the C camera (`iv_av_p2p.h`) steers by its watermarks
//! the same way.

mod common;
mod natlab;

use std::time::Duration;

use anyhow::Context;
use natlab::link::{LINK, stream_over_link};

/// The adaptive source's default high mark.
const HIGH: u64 = 196_608;
/// How far above the high mark the buffer may go: pulling pauses after the
/// pull that crossed it, so by at most that pull's chunk (10 ms of data at
/// the 8 Mbit/s the tests start at, 100 ms after a pause from below the
/// low mark). One such chunk, rounded up.
const CROSSING: u64 = 32 * 1024;

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

#[test]
fn with_watermarks_the_adaptive_source_settles_below_the_link_rate() -> anyhow::Result<()> {
    // Starts at twice the link rate.
    let (reports, stats, summary) = stream_over_link("action=live&bitrate=8000000", 16)?;
    assert!(summary.starts_with("ended: stopped by the application"), "{summary}");
    for s in &stats {
        assert!(s.max_buffered <= HIGH + CROSSING, "buffer above the high mark: {s:?}\n{stats:#?}");
    }
    let last = stats.last().context("no stats")?;
    assert!(last.warn >= 1 && last.high >= 1 && last.low >= 1, "the overshoot raised warn, high, low: {last:?}");
    let settled: Vec<f64> = stats.iter().filter(|s| s.secs >= 8.0).map(|s| s.bitrate as f64).collect();
    let bitrate = median(settled);
    assert!(bitrate < LINK.1, "median bitrate {bitrate} after 8 s is not below the link's {}\n{stats:#?}", LINK.1);
    let received = median(reports.iter().filter(|r| r.secs >= 8.0).map(|r| r.mbit).collect());
    assert!(received >= 0.5 * LINK.1 / 1e6, "only {received} Mbit/s arrive over a {} link", LINK.0);
    Ok(())
}

#[test]
fn with_watermarks_off_no_event_fires_and_the_buffer_grows() -> anyhow::Result<()> {
    let (_, stats, _) = stream_over_link("action=live&bitrate=8000000&control=none", 8)?;
    for s in &stats {
        assert_eq!((s.warn, s.high, s.low), (0, 0, 0), "an event fired with the marks off: {s:?}");
        assert_eq!(s.bitrate, 8_000_000, "the plugin ignores its buffer");
    }
    let last = stats.last().context("no stats")?;
    // Twice the link rate into the link: about 0.5 MB more every second.
    assert!(last.buffered > 4 * HIGH, "buffer only {} bytes after 8 s: {stats:#?}", last.buffered);
    let earlier = stats.iter().rev().find(|s| s.secs <= last.secs - 2.0).context("no earlier stats")?;
    assert!(last.buffered > earlier.buffered, "the buffer keeps growing: {earlier:?} then {last:?}");
    Ok(())
}

/// The C camera's high mark (`capi/examples/c/camera.c`).
const CAMERA_HIGH: u64 = 256 * 1024;
/// One frame of the camera at the 8 Mbit/s it starts at: 10 ms of data.
const CAMERA_FRAME: u64 = 8_000_000 / 8 / 100;

/// A watermark event line of the camera: its kind.
fn mark_of(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("camera: event WATERMARK_")?;
    rest.split_whitespace().next()
}

#[test]
fn the_c_camera_steers_by_its_watermarks_below_the_link_rate() -> anyhow::Result<()> {
    natlab::lab_available()?;
    let dir = tempfile::tempdir()?;
    let camera = common::c::compile(&common::c::repo().join("capi/examples/c/camera.c"), dir.path(), "camera", &[])?;
    let mut lab = natlab::Lab::rate_limited_link(LINK.0)?;
    // Signaling beside the application; the camera reaches it over the link.
    let signal_addr = format!("{}:7600", natlab::LINK_APP);
    let mut signal =
        lab.spawn("app", &["signal", "--listen", &signal_addr], &[("FOGCONNECT_SIGNAL_SECRET", natlab::SECRET)])?;
    signal.wait_line("signaling on ", Duration::from_secs(10))?;
    let camera_env =
        [("FOGCONNECT_TOKEN", lab.token("cam-1")?), ("FOGCONNECT_LISTEN", format!("{}:0", natlab::LINK_DEVICE))];
    let camera_env: Vec<(&str, &str)> = camera_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let camera_path = camera.to_string_lossy().into_owned();
    let mut device = lab.spawn_program("dev", &camera_path, &["cam-1", natlab::LINK_APP, "7600", "5"], &camera_env)?;
    device.wait_line("camera: registered", Duration::from_secs(15))?;
    // Twice the link rate asked for.
    let url = format!("ws://{signal_addr}/ws");
    let args = [
        "stream",
        "--signal",
        &url,
        "--id",
        "viewer",
        "--peer",
        "cam-1",
        "--service",
        "5",
        "--params",
        "action=live&bitrate=8000000",
        "--seconds",
        "16",
        "--report-ms",
        "500",
        "--watch-command",
        "stats",
    ];
    let token = lab.token("viewer")?;
    let mut app = lab.spawn("app", &args, &[("FOGCONNECT_TOKEN", &token)])?;
    let lines = app.rest(Duration::from_secs(40))?;
    let mut received = Vec::new();
    let mut bitrates = Vec::new();
    let mut max_buffered = 0;
    let mut secs = 0.0;
    for line in &lines {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let [at, "s", mbit, "Mbit/s", ..] = words[..] {
            secs = at.parse()?;
            received.push((secs, mbit.parse::<f64>()?));
        } else if let ["|", stats, ..] = words[..]
            && stats.starts_with("streams=")
        {
            let field = |key: &str| words.iter().find_map(|w| w.strip_prefix(key));
            max_buffered = field("max_buffered=").context("max_buffered")?.parse()?;
            // Empty while no stream is live (a report at the very start or end).
            let live = field("bitrates=").context("bitrates")?.trim_end_matches(',');
            if !live.is_empty() {
                bitrates.push((secs, live.parse::<f64>()?));
            }
        }
    }
    assert!(
        max_buffered <= CAMERA_HIGH + CAMERA_FRAME,
        "the buffer went to {max_buffered} bytes, above the high mark plus a frame\n{lines:#?}"
    );
    let settled = common::median(bitrates.iter().filter(|(s, _)| *s >= 8.0).map(|(_, b)| *b).collect());
    assert!(settled < LINK.1, "median bitrate {settled} after 8 s is not below the link's {}\n{lines:#?}", LINK.1);
    let arriving = common::median(received.iter().filter(|(s, _)| *s >= 8.0).map(|(_, m)| *m).collect());
    assert!(arriving >= 0.5 * LINK.1 / 1e6, "only {arriving} Mbit/s arrive over a {} link", LINK.0);
    // The events: warn, then high, then low, each once per crossing.
    lab.kill(device.pid)?;
    let events: Vec<String> =
        device.rest(Duration::from_secs(10))?.iter().filter_map(|l| mark_of(l)).map(str::to_string).collect();
    assert!(events.len() >= 3 && events[..3] == ["WARN", "HIGH", "LOW"], "{events:?}");
    for pair in events.windows(2) {
        let allowed = matches!(
            (pair[0].as_str(), pair[1].as_str()),
            ("WARN", "HIGH") | ("WARN", "LOW") | ("HIGH", "LOW") | ("LOW", "WARN")
        );
        assert!(allowed, "{} then {}: not one event per crossing in {events:?}", pair[0], pair[1]);
    }
    Ok(())
}
