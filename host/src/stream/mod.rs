//! Stream plugins: the device SDK's push model, where the host pulls data
//! from a plugin every 10 ms and the plugin controls congestion with
//! send-buffer watermarks. The sans-IO cores (watermark state, pull
//! schedule, send status meter, command table, send queues) and the task
//! that pumps the queues into a connection; the plugin actor is
//! [`crate::runtime::stream_actor`], the application side
//! [`crate::StreamSession`].

pub mod command;
pub mod mux;
pub mod pump;
pub mod schedule;
pub mod status;
pub mod watermark;
