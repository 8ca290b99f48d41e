//! Stream plugins (issue 6, in progress): the device SDK's push model,
//! where the host pulls data from a plugin every 10 ms and the plugin
//! controls congestion with send-buffer watermarks. So far the sans-IO
//! cores: the watermark state of a stream, the pull schedule, the send
//! status meter (rate and loss over a window), and the command table
//! (replies routed to callers, timeouts).

pub mod command;
pub mod schedule;
pub mod status;
pub mod watermark;
