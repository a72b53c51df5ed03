//! A transport's pending output.
//!
//! NOTE: a large `bytes` written while nothing is pending is kept by
//! reference instead of copied: when the socket or pipe takes only part of
//! it at once (a full pipe takes nothing: a bulk writer that waits for
//! `drain()` finds the pipe still almost full each time), the rest would
//! otherwise be copied into the buffer, about one extra copy of every byte
//! of a bulk transfer. Only an exact `bytes` (immutable, no `__del__`) is
//! kept; everything written after it is copied behind it as before.

use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// A `bytes` at least this large is kept by reference.
pub(super) const SHARE_MIN: usize = 64 * 1024;

/// Pending output: `shared[shared_sent..]`, then `data[sent..]`.
#[derive(Default)]
pub(super) struct WriteBuffer {
    shared: Option<Py<PyBytes>>,
    shared_len: usize,
    shared_sent: usize,
    data: Vec<u8>,
    sent: usize,
}

impl WriteBuffer {
    pub(super) fn len(&self) -> usize {
        (self.shared_len - self.shared_sent) + (self.data.len() - self.sent)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What to send next (the kept `bytes` first).
    pub(super) fn pending<'a>(&'a self, py: Python<'a>) -> &'a [u8] {
        match &self.shared {
            Some(b) => &b.as_bytes(py)[self.shared_sent..],
            None => &self.data[self.sent..],
        }
    }

    /// Appends a copy of `bytes`.
    pub(super) fn extend(&mut self, bytes: &[u8]) {
        if self.sent > 0 && self.sent >= self.data.len() / 2 {
            self.data.drain(..self.sent);
            self.sent = 0;
        }
        self.data.extend_from_slice(bytes);
    }

    /// Appends `obj[offset..]`: kept by reference if the buffer is empty
    /// and `obj` is an exact `bytes` of at least `SHARE_MIN` bytes, else
    /// copied.
    pub(super) fn extend_from(&mut self, obj: &Bound<'_, PyBytes>, offset: usize) {
        let bytes = obj.as_bytes();
        if self.is_empty() && bytes.len() >= SHARE_MIN && obj.is_exact_instance_of::<PyBytes>() {
            self.clear();
            self.shared_len = bytes.len();
            self.shared_sent = offset;
            self.shared = Some(obj.clone().unbind());
        } else {
            self.extend(&bytes[offset..]);
        }
    }

    /// `n` bytes of `pending()` were sent.
    pub(super) fn consume(&mut self, n: usize) {
        if self.shared.is_some() {
            self.shared_sent += n;
            if self.shared_sent >= self.shared_len {
                self.drop_shared();
            }
            return;
        }
        self.sent += n;
        if self.sent >= self.data.len() {
            self.data.clear();
            self.sent = 0;
        }
    }

    pub(super) fn clear(&mut self) {
        self.drop_shared();
        self.data.clear();
        self.sent = 0;
    }

    fn drop_shared(&mut self) {
        // NOTE: dropped under the transport's lock: an exact `bytes` runs
        // no Python code when freed.
        self.shared = None;
        self.shared_len = 0;
        self.shared_sent = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain_all(py: Python<'_>, buf: &mut WriteBuffer, step: usize) -> Vec<u8> {
        let mut out = Vec::new();
        while !buf.is_empty() {
            let chunk = buf.pending(py);
            let n = chunk.len().min(step);
            out.extend_from_slice(&chunk[..n]);
            buf.consume(n);
        }
        out
    }

    #[test]
    fn large_bytes_are_kept_and_later_writes_follow_them() {
        Python::initialize();
        Python::attach(|py| {
            let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
            let obj = PyBytes::new(py, &big);
            let mut buf = WriteBuffer::default();
            buf.extend_from(&obj, 1000);
            assert!(buf.shared.is_some());
            assert_eq!(buf.len(), big.len() - 1000);
            buf.extend(b"tail");
            buf.extend_from(&PyBytes::new(py, &big), 0); // not empty: copied
            assert!(buf.data.len() > 4);
            let out = drain_all(py, &mut buf, 70_000);
            let mut expected = big[1000..].to_vec();
            expected.extend_from_slice(b"tail");
            expected.extend_from_slice(&big);
            assert_eq!(out, expected);
            assert!(buf.shared.is_none() && buf.is_empty());
        });
    }

    #[test]
    fn small_bytes_are_copied_and_clear_drops_everything() {
        Python::initialize();
        Python::attach(|py| {
            let mut buf = WriteBuffer::default();
            buf.extend_from(&PyBytes::new(py, b"hello"), 1);
            assert!(buf.shared.is_none());
            assert_eq!(buf.pending(py), b"ello");
            buf.clear();
            let big = vec![7u8; SHARE_MIN];
            buf.extend_from(&PyBytes::new(py, &big), 0);
            assert!(buf.shared.is_some());
            buf.clear();
            assert!(buf.is_empty() && buf.shared.is_none());
        });
    }
}
