//! Reading stream services' media in tests: frames numbered with an
//! 8-byte big-endian header, as the adaptive source, the C camera and the
//! Rust test cameras send them.

use anyhow::{Context, bail};
use bytes::Bytes;
use fogconnect::{MediaEvent, MediaStream};

use super::WAIT;

/// The next chunk of `stream`, at most [`WAIT`]; an end is an error.
pub async fn frame(stream: &mut MediaStream) -> anyhow::Result<Bytes> {
    match tokio::time::timeout(WAIT, stream.recv()).await {
        Ok(MediaEvent::Data(data)) => Ok(data),
        Ok(MediaEvent::Ended(reason)) => bail!("stream {} ended instead of data: {reason}", stream.id()),
        Err(_) => bail!("no data on stream {} within {WAIT:?}", stream.id()),
    }
}

/// The number in a frame's header.
pub fn number(frame: &[u8]) -> anyhow::Result<u64> {
    Ok(u64::from_be_bytes(frame.get(..8).context("chunk shorter than its header")?.try_into()?))
}

/// Reads `stream` to its end: the frame numbers and the reason.
pub async fn to_end(stream: &mut MediaStream) -> anyhow::Result<(Vec<u64>, String)> {
    let mut numbers = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, stream.recv()).await {
            Ok(MediaEvent::Data(data)) => numbers.push(number(&data)?),
            Ok(MediaEvent::Ended(reason)) => return Ok((numbers, reason)),
            Err(_) => bail!("stream {} did not end within {WAIT:?}", stream.id()),
        }
    }
}

/// Opens `count` streams with `params` on `session`, each with its first
/// chunk read: they are flowing.
pub async fn open_flowing(
    session: &fogconnect::StreamSession,
    params: &str,
    count: usize,
) -> anyhow::Result<Vec<MediaStream>> {
    let mut streams = Vec::with_capacity(count);
    for _ in 0..count {
        let mut stream = session.open(params).await?;
        frame(&mut stream).await?;
        streams.push(stream);
    }
    Ok(streams)
}
