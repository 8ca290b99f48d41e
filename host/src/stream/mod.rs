//! Stream services: the device SDK's push model, where the host pulls data
//! from a server every 10 ms and the server controls congestion with
//! send-buffer watermarks. The sans-IO cores (watermark state, pull
//! schedule, send status meter, command table, send queues), the
//! bookkeeping of one service ([`core`]), the serving logic every kind of
//! server shares ([`serve`]: Wasm plugins through
//! [`crate::runtime::stream_actor`], native code through [`native`]), and
//! the task that pumps the queues into a connection. The application side
//! is [`crate::StreamSession`].

pub mod command;
pub mod core;
pub mod harness;
pub mod mux;
pub mod native;
pub mod pump;
pub mod schedule;
pub mod serve;
pub mod status;
pub mod watermark;

pub use core::{CommandFailure, Pull, SendStatistics, StreamHostError};
pub use native::{
    NativeStreamHarness, StreamHost, StreamService, StreamServiceError, StreamServiceEvent, StreamServiceHandle,
};
pub use watermark::WatermarkEvent;
