//! Browsers: WebRTC DataChannels on the node's own UDP socket (transport
//! RTC, code 0).
//!
//! [`agent`] is the sans-IO WebRTC peer of one browser connection (str0m
//! under it); [`host`] is the task that drives every agent of a node on its
//! socket and turns open DataChannels into connections.

pub mod agent;
pub mod host;

pub use host::{RtcHost, RtcLink};
