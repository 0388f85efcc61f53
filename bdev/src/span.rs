//! Any byte range as the whole blocks a device transfers.
//!
//! Devices move whole blocks; callers (the content store, HTTP ranges) ask for any offset
//! and length. A read covers the range with whole blocks and the caller narrows the buffer's
//! window to the bytes it asked for ([`Span::trim`]): never an error.

use crate::IoBuf;

/// A byte range and the block-aligned range that covers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// First byte of the aligned range.
    pub offset: u64,
    /// Length of the aligned range.
    pub len: u64,
    /// Where the asked-for bytes start inside the aligned range.
    pub head: usize,
    /// The asked-for length.
    pub want: usize,
}

impl Span {
    /// The blocks of `block` bytes covering `want` bytes at `offset`, or `None` if the range
    /// overflows.
    pub fn cover(offset: u64, want: usize, block: u32) -> Option<Self> {
        let bs = u64::from(block.max(1));
        let end = offset.checked_add(want as u64)?;
        let start = offset - offset % bs;
        let end = end.checked_next_multiple_of(bs)?;
        Some(Self {
            offset: start,
            len: end - start,
            head: usize::try_from(offset - start).ok()?,
            want,
        })
    }

    /// Narrows a buffer holding the aligned range to the asked-for bytes.
    pub fn trim(&self, buf: &mut IoBuf) {
        buf.set_window(self.head, self.want);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unaligned_ranges_round_out_to_blocks() {
        assert_eq!(
            Span::cover(0, 100_000, 512),
            Some(Span {
                offset: 0,
                len: 100_352,
                head: 0,
                want: 100_000
            })
        );
        let s = Span::cover(4095, 2, 4096).unwrap();
        assert_eq!((s.offset, s.len, s.head), (0, 8192, 4095));
        let s = Span::cover(8192, 4096, 4096).unwrap();
        assert_eq!((s.offset, s.len, s.head), (8192, 4096, 0));
        let s = Span::cover(10, 0, 512).unwrap();
        assert_eq!((s.offset, s.len, s.head, s.want), (0, 512, 10, 0));
        assert_eq!(Span::cover(u64::MAX - 1, 10, 512), None);
    }
}
