//! A plugin's standard error, kept as a bounded tail in memory so a crash
//! report can quote the guest's last words (e.g. its panic message).
//!
//! Written by hand because wasmtime-wasi's `MemoryOutputPipe` traps the guest
//! once its capacity is reached; this one never refuses a write and keeps
//! only the newest bytes.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// Bytes of standard error kept per plugin instance.
pub const STDERR_TAIL_BYTES: usize = 2048;

/// The newest [`STDERR_TAIL_BYTES`] a guest wrote to standard error.
#[derive(Debug, Clone, Default)]
pub struct StderrTail {
    buffer: Arc<Mutex<VecDeque<u8>>>,
}

impl StderrTail {
    fn append(&self, bytes: &[u8]) {
        let mut buffer = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
        let keep = bytes.len().min(STDERR_TAIL_BYTES);
        buffer.extend(&bytes[bytes.len() - keep..]);
        let excess = buffer.len().saturating_sub(STDERR_TAIL_BYTES);
        buffer.drain(..excess);
    }

    /// What the guest said last, for a crash report: from its last panic
    /// message on (Rust's `panicked at ...` line and the message after it),
    /// or else its last line; `note:` hints are left out. `None` when it
    /// wrote nothing.
    pub fn summary(&self) -> Option<String> {
        let bytes: Vec<u8> = {
            let buffer = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
            buffer.iter().copied().collect()
        };
        let text = String::from_utf8_lossy(&bytes);
        let lines: Vec<&str> =
            text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with("note: ")).collect();
        let start = lines.iter().rposition(|l| l.contains("panicked at")).unwrap_or(lines.len().saturating_sub(1));
        let summary = lines.get(start..).map(|tail| tail.join(" ")).unwrap_or_default();
        (!summary.is_empty()).then_some(summary)
    }
}

impl IsTerminal for StderrTail {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for StderrTail {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl OutputStream for StderrTail {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

#[async_trait::async_trait]
impl Pollable for StderrTail {
    async fn ready(&mut self) {}
}

impl AsyncWrite for StderrTail {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.append(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_newest_bytes_and_the_last_line() {
        let tail = StderrTail::default();
        assert_eq!(tail.summary(), None);
        tail.append(b"first line\n");
        for _ in 0..100 {
            tail.append(&[b'x'; 100]);
        }
        tail.append(b"\nthread '<unnamed>' panicked at src/lib.rs:3:5:\nboom\nnote: run with `RUST_BACKTRACE=1`\n\n");
        assert_eq!(tail.buffer.lock().map(|b| b.len()).unwrap_or(0), STDERR_TAIL_BYTES);
        assert_eq!(tail.summary().as_deref(), Some("thread '<unnamed>' panicked at src/lib.rs:3:5: boom"));
        tail.append(b"later words\n");
        assert_eq!(tail.summary().as_deref(), Some("thread '<unnamed>' panicked at src/lib.rs:3:5: boom later words"));
        tail.append(&vec![b'y'; 10 * STDERR_TAIL_BYTES]);
        assert_eq!(tail.summary().map(|l| l.len()), Some(STDERR_TAIL_BYTES));
    }
}
