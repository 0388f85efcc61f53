//! Reusable connection buffers: an output buffer that is appended to and drained by socket
//! writes, and an input buffer that socket reads fill and the PDU parser consumes.
//!
//! Both grow only when a larger PDU than ever before arrives (bounded by the negotiated
//! limits), so a connection in steady state does not allocate; after a burst the connection
//! shrinks the output buffer back (`shrink_to`) once it is empty, so a quiet connection
//! holds little.

/// Bytes waiting to be written to the socket.
#[derive(Debug, Default)]
pub struct OutBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Bytes appended since creation (a position in the outgoing stream).
    appended: u64,
    /// Bytes consumed since creation.
    consumed: u64,
}

impl OutBuf {
    /// An empty buffer with `capacity` bytes ready.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            buf: vec![0; capacity],
            start: 0,
            end: 0,
            appended: 0,
            consumed: 0,
        }
    }

    /// Stream position of the next byte appended.
    pub fn position(&self) -> u64 {
        self.appended
    }

    /// Stream position of the next byte to write.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Bytes not yet written.
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Number of bytes not yet written.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// Whether everything has been written.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Marks `n` bytes as written.
    pub fn consume(&mut self, n: usize) {
        let n = n.min(self.len());
        self.start += n;
        self.consumed += n as u64;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Current end, to roll back an append with [`OutBuf::truncate`].
    pub fn mark(&self) -> usize {
        self.end
    }

    /// Drops everything appended after `mark`.
    pub fn truncate(&mut self, mark: usize) {
        if mark >= self.start && mark <= self.end {
            self.appended -= (self.end - mark) as u64;
            self.end = mark;
        }
    }

    /// Appends `n` bytes (contents unspecified) and returns them for the caller to fill.
    pub fn append(&mut self, n: usize) -> &mut [u8] {
        if self.buf.len() - self.end < n {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.buf.len() - self.end < n {
                self.buf.resize(self.end + n, 0);
            }
        }
        let at = self.end;
        self.end += n;
        self.appended += n as u64;
        &mut self.buf[at..at + n]
    }

    /// Appends a copy of `bytes`.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.append(bytes.len()).copy_from_slice(bytes);
    }

    /// Bytes of memory the buffer holds.
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// Gives memory back after a burst: an empty buffer larger than `keep` bytes shrinks to
    /// `keep`.
    pub fn shrink_to(&mut self, keep: usize) {
        if self.is_empty() && self.buf.len() > keep {
            self.buf.truncate(keep);
            self.buf.shrink_to_fit();
        }
    }
}

/// Bytes read from the socket and not yet parsed.
#[derive(Debug)]
pub struct InBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl InBuf {
    /// An empty buffer with `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            buf: vec![0; capacity],
            start: 0,
            end: 0,
        }
    }

    /// Unparsed bytes.
    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Marks `n` parsed bytes as consumed.
    pub fn consume(&mut self, n: usize) {
        self.start += n.min(self.end - self.start);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Makes room for a PDU of `need` bytes at the front and returns the free space to read
    /// into.
    pub fn spare(&mut self, need: usize) -> &mut [u8] {
        if self.buf.len() - self.start < need || self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() < need {
            self.buf.resize(need, 0);
        }
        &mut self.buf[self.end..]
    }

    /// Records that `n` bytes were read into the slice [`InBuf::spare`] returned.
    pub fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_buf_appends_consumes_and_compacts() {
        let mut b = OutBuf::with_capacity(8);
        b.extend(b"hello");
        assert_eq!(b.pending(), b"hello");
        b.consume(2);
        assert_eq!(b.pending(), b"llo");
        b.extend(b"world!");
        assert_eq!(b.pending(), b"lloworld!");
        let m = b.mark();
        b.extend(b"xx");
        b.truncate(m);
        assert_eq!(b.pending(), b"lloworld!");
        b.consume(100);
        assert!(b.is_empty());
        assert_eq!(b.len(), 0);
    }

    #[test]
    fn in_buf_compacts_and_grows() {
        let mut b = InBuf::with_capacity(4);
        b.spare(4)[..4].copy_from_slice(b"abcd");
        b.filled(4);
        b.consume(3);
        assert_eq!(b.data(), b"d");
        let s = b.spare(10);
        assert!(s.len() >= 9);
        s[..2].copy_from_slice(b"ef");
        b.filled(2);
        assert_eq!(b.data(), b"def");
    }

    #[test]
    fn out_buf_shrinks_back_only_when_empty() {
        let mut o = OutBuf::with_capacity(0);
        o.append(1 << 20);
        o.shrink_to(4096);
        assert_eq!(o.capacity(), 1 << 20, "pending bytes are kept");
        o.consume(1 << 20);
        o.shrink_to(4096);
        assert_eq!(o.capacity(), 4096);
        o.extend(b"after");
        assert_eq!(o.pending(), b"after");
    }
}
