//! Browsers: WebRTC DataChannels on the node's own UDP socket (transport
//! RTC, code 0).
//!
//! [`agent`] is the sans-IO WebRTC peer of one browser connection (str0m
//! under it).

pub mod agent;
