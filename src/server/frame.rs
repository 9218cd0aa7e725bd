//! Kafka request framing: a 4-byte big-endian size, then that many bytes.

use crate::io::Stream;
use bytes::{Bytes, BytesMut};
use std::io;

/// api_key (2) + api_version (2) + correlation_id (4): the smallest request header.
pub const REQUEST_PREFIX_BYTES: usize = 8;

/// A body is read in steps of at most this many bytes, so memory grows with the bytes a client
/// actually sends, never with the size it claims.
const READ_STEP_BYTES: usize = 256 << 10;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("request size {size} outside {REQUEST_PREFIX_BYTES}..={max}")]
    BadSize { size: i32, max: usize },
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Reads a connection's request frames, one after another. `next` may be dropped part-way
/// (the connection stops waiting for a request to write an answer): what has arrived stays
/// here and the next call goes on from it. Every byte is taken from the socket by a
/// non-blocking receive that completes at once; waits only peek.
pub struct Reader {
    size_max: usize,
    /// The size field, as much of it as has arrived.
    prefix: BytesMut,
    /// The body, as much of it as has arrived, once the size is known.
    body: Option<BytesMut>,
}

impl Reader {
    pub fn new(size_max: usize) -> Reader {
        Reader { size_max, prefix: BytesMut::with_capacity(4), body: None }
    }

    /// The next request frame, or `None` when the client closed the connection between
    /// requests.
    pub async fn next(&mut self, stream: &mut Stream) -> Result<Option<Bytes>, FrameError> {
        while self.prefix.len() < 4 {
            let want = 4 - self.prefix.len();
            match stream.read_into(&mut self.prefix, want).await {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::UnexpectedEof && self.prefix.is_empty() => {
                    return Ok(None);
                }
                Err(error) => return Err(error.into()),
            }
        }
        let size = i32::from_be_bytes([self.prefix[0], self.prefix[1], self.prefix[2], self.prefix[3]]);
        if size < REQUEST_PREFIX_BYTES as i32 || size as usize > self.size_max {
            return Err(FrameError::BadSize { size, max: self.size_max });
        }
        let size = size as usize;
        let body = self.body.get_or_insert_with(|| BytesMut::with_capacity(size.min(READ_STEP_BYTES)));
        while body.len() < size {
            let want = (size - body.len()).min(READ_STEP_BYTES);
            stream.read_into(body, want).await?;
        }
        let frame = std::mem::take(body).freeze();
        self.body = None;
        self.prefix.clear();
        Ok(Some(frame))
    }
}
