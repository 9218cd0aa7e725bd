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

/// The next request frame, or `None` when the client closed the connection between requests.
pub async fn read(stream: &mut Stream, size_max: usize) -> Result<Option<Bytes>, FrameError> {
    let mut prefix = [0u8; 4];
    match stream.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error.into()),
    }
    let size = i32::from_be_bytes(prefix);
    if size < REQUEST_PREFIX_BYTES as i32 || size as usize > size_max {
        return Err(FrameError::BadSize { size, max: size_max });
    }
    let size = size as usize;
    let mut body = BytesMut::with_capacity(size.min(READ_STEP_BYTES));
    while body.len() < size {
        let want = (size - body.len()).min(READ_STEP_BYTES);
        stream.read_into(&mut body, want).await?;
    }
    Ok(Some(body.freeze()))
}
