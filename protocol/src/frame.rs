//! Length-prefixed framing: every Kafka request and response is an `int32`
//! size followed by that many bytes.

use bytes::{Buf, Bytes, BytesMut};
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame declares {declared} bytes, more than the limit of {limit} (socket.request.max.bytes)")]
    TooLarge { declared: i64, limit: usize },
    #[error("frame declares a negative size {0}")]
    Negative(i32),
}

/// Splits a byte stream into frames. Feed it whatever the socket delivered with
/// [`FrameDecoder::buffer_mut`], then take whole frames with [`FrameDecoder::next_frame`].
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max_frame: usize,
}

impl FrameDecoder {
    pub fn new(max_frame: usize) -> Self {
        Self {
            buf: BytesMut::with_capacity(64 * 1024),
            max_frame,
        }
    }

    /// The buffer to read socket bytes into.
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Bytes received but not yet returned as a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next whole frame without its size prefix, `Ok(None)` when more bytes are needed.
    /// A size over the limit is an error before any of the body is buffered, so a
    /// client that declares 2 GiB costs four bytes of memory.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let declared = i32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        if declared < 0 {
            return Err(FrameError::Negative(declared));
        }
        let size = declared as usize;
        if size > self.max_frame {
            return Err(FrameError::TooLarge {
                declared: i64::from(declared),
                limit: self.max_frame,
            });
        }
        if self.buf.len() < 4 + size {
            self.buf.reserve(4 + size - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(4);
        Ok(Some(self.buf.split_to(size).freeze()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_frames_across_partial_reads() {
        let mut d = FrameDecoder::new(1024);
        d.buffer_mut().extend_from_slice(&[0, 0, 0, 3, b'a']);
        assert_eq!(d.next_frame(), Ok(None));
        d.buffer_mut()
            .extend_from_slice(&[b'b', b'c', 0, 0, 0, 1, b'x']);
        assert_eq!(d.next_frame(), Ok(Some(Bytes::from_static(b"abc"))));
        assert_eq!(d.next_frame(), Ok(Some(Bytes::from_static(b"x"))));
        assert_eq!(d.next_frame(), Ok(None));
    }

    #[test]
    fn rejects_oversized_and_negative() {
        let mut d = FrameDecoder::new(1024);
        d.buffer_mut()
            .extend_from_slice(&0x7fff_ffffi32.to_be_bytes());
        assert!(matches!(d.next_frame(), Err(FrameError::TooLarge { .. })));
        let mut d = FrameDecoder::new(1024);
        d.buffer_mut().extend_from_slice(&(-5i32).to_be_bytes());
        assert_eq!(d.next_frame(), Err(FrameError::Negative(-5)));
    }
}
