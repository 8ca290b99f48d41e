//! Stream plugins (issue 6, in progress): the device SDK's push model,
//! where the host pulls data from a plugin every 10 ms and the plugin
//! controls congestion with send-buffer watermarks. So far the sans-IO
//! cores: the watermark state of a stream and the pull schedule.

pub mod schedule;
pub mod watermark;
