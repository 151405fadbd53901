//! Splitting a TCP byte stream into DC-09 frames.
//!
//! Over UDP each datagram is one frame and can go straight to
//! [`super::decode::decode`]. Over TCP a panel may send several frames back
//! to back, and a read may end in the middle of one. The [`Framer`] buffers
//! bytes and yields complete `<LF>`...`<CR>` frames.
//!
//! A frame never contains `<LF>` or `<CR>` inside (clear-text bodies are
//! printable ASCII and encrypted bodies are hex), so resynchronisation is
//! simple: bytes before an `<LF>` are garbage, and an `<LF>` seen before the
//! closing `<CR>` abandons the partial frame and starts a new one. A frame
//! that grows beyond the configured maximum without a `<CR>` is discarded.
//! Discarded bytes are reported as errors so the receiver can count them or
//! drop the connection.
//!
//! Call [`Framer::next_frame`] until it returns `None` after every
//! [`Framer::push`]; the internal buffer then never holds more than the
//! maximum frame size plus one read.

use thiserror::Error;

/// Largest frame the `0LLL` length field can describe:
/// LF + CRC(4) + length(4) + 0xFFF body bytes + CR.
pub const DEFAULT_MAX_FRAME: usize = 1 + 4 + 4 + 0xFFF + 1;

/// Bytes that had to be thrown away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum FramerError {
    /// Bytes outside any frame (before an `<LF>`, or a partial frame
    /// abandoned by a new `<LF>`).
    #[error("discarded {discarded} bytes of garbage between frames")]
    Garbage {
        /// Number of bytes dropped.
        discarded: usize,
    },
    /// A frame exceeded the maximum size without a closing `<CR>`.
    #[error("discarded {discarded} bytes of an oversize frame")]
    Oversize {
        /// Number of bytes dropped.
        discarded: usize,
    },
}

/// Incremental frame splitter for a byte stream.
#[derive(Debug, Clone)]
pub struct Framer {
    buf: Vec<u8>,
    max_frame: usize,
}

impl Default for Framer {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME)
    }
}

impl Framer {
    /// A framer that rejects frames longer than `max_frame` bytes
    /// (including `<LF>` and `<CR>`). Values below 10 are raised to 10, the
    /// size of the smallest possible frame.
    pub fn new(max_frame: usize) -> Self {
        Self {
            buf: Vec::new(),
            max_frame: max_frame.max(10),
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Number of buffered bytes not yet returned.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Returns the next complete frame, an error describing discarded bytes,
    /// or `None` when more input is needed.
    pub fn next_frame(&mut self) -> Option<Result<Vec<u8>, FramerError>> {
        let first = *self.buf.first()?;
        if first != b'\n' {
            let discarded = self
                .buf
                .iter()
                .position(|b| *b == b'\n')
                .unwrap_or(self.buf.len());
            self.buf.drain(..discarded);
            return Some(Err(FramerError::Garbage { discarded }));
        }

        // Look for the end of this frame within the size limit.
        let limit = self.buf.len().min(self.max_frame);
        let end = self.buf[1..limit]
            .iter()
            .position(|b| *b == b'\r' || *b == b'\n')
            .map(|i| i + 1);
        match end {
            Some(i) if self.buf[i] == b'\r' => {
                let frame: Vec<u8> = self.buf.drain(..=i).collect();
                Some(Ok(frame))
            }
            Some(i) => {
                // A new LF before CR: the partial frame is garbage.
                self.buf.drain(..i);
                Some(Err(FramerError::Garbage { discarded: i }))
            }
            None if self.buf.len() >= self.max_frame => {
                // No CR within the limit: drop up to the next LF, if any.
                let discarded = self.buf[1..]
                    .iter()
                    .position(|b| *b == b'\n')
                    .map_or(self.buf.len(), |i| i + 1);
                self.buf.drain(..discarded);
                Some(Err(FramerError::Oversize { discarded }))
            }
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(f: &mut Framer) -> Vec<Result<Vec<u8>, FramerError>> {
        std::iter::from_fn(|| f.next_frame()).collect()
    }

    #[test]
    fn splits_back_to_back_frames() {
        let mut f = Framer::default();
        f.push(b"\nAAAA0001x\r\nBBBB0001y\r");
        assert_eq!(
            drain(&mut f),
            vec![Ok(b"\nAAAA0001x\r".to_vec()), Ok(b"\nBBBB0001y\r".to_vec())]
        );
        assert_eq!(f.buffered(), 0);
    }

    #[test]
    fn reassembles_split_reads() {
        let mut f = Framer::default();
        f.push(b"\nAAAA00");
        assert_eq!(f.next_frame(), None);
        f.push(b"01x");
        assert_eq!(f.next_frame(), None);
        f.push(b"\r\nBB");
        assert_eq!(f.next_frame(), Some(Ok(b"\nAAAA0001x\r".to_vec())));
        assert_eq!(f.next_frame(), None);
        assert_eq!(f.buffered(), 3);
    }

    #[test]
    fn reports_leading_garbage() {
        let mut f = Framer::default();
        f.push(b"junk\nAAAA0001x\r");
        assert_eq!(
            drain(&mut f),
            vec![
                Err(FramerError::Garbage { discarded: 4 }),
                Ok(b"\nAAAA0001x\r".to_vec())
            ]
        );
    }

    #[test]
    fn garbage_without_lf_is_dropped_entirely() {
        let mut f = Framer::default();
        f.push(b"\r\r\rnoise");
        assert_eq!(
            drain(&mut f),
            vec![Err(FramerError::Garbage { discarded: 8 })]
        );
        assert_eq!(f.buffered(), 0);
    }

    #[test]
    fn new_lf_abandons_partial_frame() {
        let mut f = Framer::default();
        f.push(b"\npartial\nAAAA0001x\r");
        assert_eq!(
            drain(&mut f),
            vec![
                Err(FramerError::Garbage { discarded: 8 }),
                Ok(b"\nAAAA0001x\r".to_vec())
            ]
        );
    }

    #[test]
    fn rejects_oversize_and_resyncs() {
        let mut f = Framer::new(16);
        f.push(b"\n0123456789ABCDEFGHIJ");
        assert_eq!(
            drain(&mut f),
            vec![Err(FramerError::Oversize { discarded: 21 })]
        );
        f.push(b"\nAAAA0001x\r");
        assert_eq!(drain(&mut f), vec![Ok(b"\nAAAA0001x\r".to_vec())]);
    }

    #[test]
    fn oversize_keeps_following_frame() {
        let mut f = Framer::new(12);
        f.push(b"\n0123456789ABCDEF\nAAAA0001x\r");
        assert_eq!(
            drain(&mut f),
            vec![
                Err(FramerError::Oversize { discarded: 17 }),
                Ok(b"\nAAAA0001x\r".to_vec())
            ]
        );
    }

    #[test]
    fn frame_exactly_at_limit_is_accepted() {
        let mut f = Framer::new(11);
        f.push(b"\nAAAA0001x\r");
        assert_eq!(drain(&mut f), vec![Ok(b"\nAAAA0001x\r".to_vec())]);
        let mut f = Framer::new(10);
        f.push(b"\nAAAA0001x\r");
        assert_eq!(
            f.next_frame(),
            Some(Err(FramerError::Oversize { discarded: 11 }))
        );
    }
}
