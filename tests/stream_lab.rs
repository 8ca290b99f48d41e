//! Stream plugins over a rate-limited link (network namespaces with a
//! `tc tbf` link, root only; `make test` runs them): the adaptive source
//! settles below the link rate with its buffer under the high mark when
//! the watermarks are on, and with them off no event fires while the
//! buffer grows.

mod common;
mod natlab;

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
