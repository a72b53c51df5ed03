//! Where a pipe transport's policy differs from a socket's: asyncio's
//! `_UnixReadPipeTransport` / `_UnixWritePipeTransport` (unix_events.py).
//! Everything else (reads, the write buffer, flow control, close, the
//! protocol callbacks' error reporting) is the stream core's.
//!
//! NOTE: the differences asyncio's pipe transports have and keep here:
//! - a read pipe at EOF schedules `eof_received()` and then
//!   `connection_lost(None)` (a socket calls `eof_received()` at once and
//!   may stay open for writing);
//! - a write pipe watches its fd for reading: a pipe's write end becomes
//!   readable when the read end closes, which ends the transport
//!   (`BrokenPipeError` if data was still buffered);
//! - `write()` after `close()`/`write_eof()` is counted and ignored (a socket
//!   raises after `write_eof()`), and `write_eof()` is `close()`;
//! - `_conn_lost` counts failed writes and writes after close only.
//!
//! One thing is ferroloop's own: a busy pipe the loop made for a child
//! (`stdin`/`stdout`/`stderr=PIPE`) grows from Linux's default 64 KiB to
//! 1 MiB the first time it is found full (see `PipeGrowth`).

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

use super::{Next, State, StreamTransport, LOG_THRESHOLD_FOR_CONNLOST_WRITES};
use crate::io::fd_watchers::Direction;
use crate::sock_io::{self, IoResult};

/// What a pipe grows to: Linux's default `pipe-max-size`, the most an
/// unprivileged process may set.
const GROWN_SIZE: usize = 1 << 20;
/// A read this large means the pipe was full (the default capacity).
const FULL_READ: usize = 64 * 1024;

/// Whether a pipe may grow, and by how much it did.
///
/// NOTE: a pipe's capacity bounds how much moves per syscall and wake-up.
/// Linux's default is 64 KiB; uvloop's children get socketpairs, whose
/// buffers hold a few hundred KiB. asyncio (and ferroloop) use real pipes
/// (a socketpair breaks `/dev/stdin` and `/proc/self/fd/N` in the child),
/// so a pipe that is found full while moving data to or from a child is
/// grown to 1 MiB once (`F_SETPIPE_SZ`; 64 MiB through `cat`: ~1.4x the
/// throughput). Only pipes the loop made for a child grow, never a pipe the
/// program passed in; never one already larger; and the process keeps the
/// growth within a quarter of the per-user soft limit on pipe memory
/// (`/proc/sys/fs/pipe-user-pages-soft`): past that limit Linux would give
/// new pipes of an unprivileged user only two pages.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum PipeGrowth {
    /// Not a child's pipe (or a socket).
    Never,
    /// May grow when found full.
    Allowed,
    /// Tried once: grown by this many bytes (returned to the budget at close).
    Done(usize),
}

/// Bytes of pipe capacity this process added by growing pipes.
static GROWN_BYTES: AtomicUsize = AtomicUsize::new(0);

/// The most `GROWN_BYTES` may reach.
fn growth_budget() -> usize {
    static BUDGET: OnceLock<usize> = OnceLock::new();
    *BUDGET.get_or_init(|| {
        let pages = std::fs::read_to_string("/proc/sys/fs/pipe-user-pages-soft")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(16384);
        // 0 means no soft limit.
        let pages = if pages == 0 { 16384 } else { pages };
        pages * 4096 / 4
    })
}

/// Grows pipe `fd` to `GROWN_SIZE` if it is smaller and the budget allows:
/// the bytes added (0 if it did not grow).
fn grow(fd: RawFd) -> usize {
    // SAFETY: fcntl on an fd we own; a non-pipe answers EBADF/EINVAL.
    let current = unsafe { libc::fcntl(fd, libc::F_GETPIPE_SZ) };
    if current < 0 || current as usize >= GROWN_SIZE {
        return 0;
    }
    let added = GROWN_SIZE - current as usize;
    let reserved = GROWN_BYTES.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
        (used + added <= growth_budget()).then_some(used + added)
    });
    if reserved.is_err() {
        return 0;
    }
    // SAFETY: as above; EPERM (over a limit) leaves the pipe as it was.
    if unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, GROWN_SIZE as libc::c_int) } < 0 {
        GROWN_BYTES.fetch_sub(added, Ordering::Relaxed);
        return 0;
    }
    added
}

impl State {
    /// The pipe was found full: grow it, once.
    pub(super) fn pipe_full(&mut self, fd: RawFd) {
        if self.growth == PipeGrowth::Allowed {
            self.growth = PipeGrowth::Done(grow(fd));
        }
    }

    /// A read of `n` bytes: grow the pipe if it was full.
    pub(super) fn pipe_read(&mut self, fd: RawFd, n: usize) {
        self.big_reads = n >= sock_io::DIRECT_READ_MIN;
        if n >= FULL_READ {
            self.pipe_full(fd);
        }
    }

    /// The fd is being closed: return its growth to the budget.
    pub(super) fn release_growth(&mut self) {
        if let PipeGrowth::Done(added) = std::mem::replace(&mut self.growth, PipeGrowth::Never) {
            GROWN_BYTES.fetch_sub(added, Ordering::Relaxed);
        }
    }
}

impl StreamTransport {
    /// A read pipe's EOF: stop reading, then `eof_received()` and
    /// `connection_lost(None)` on the next ticks.
    pub(super) fn pipe_eof(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        Self::log_closed_by_peer(slf)?;
        let protocol = {
            let mut st = slf.get().state.lock();
            st.closing = true;
            st.lost_scheduled = true;
            st.protocol.as_ref().map(|p| p.clone_ref(py))
        };
        Self::unwatch(slf, Direction::Read)?;
        if let Some(p) = protocol {
            let eof = p.bind(py).getattr(intern!(py, "eof_received"))?;
            Self::call_soon(slf, eof, PyTuple::empty(py))?;
        }
        let lost = slf.getattr(intern!(py, "_call_connection_lost"))?;
        Self::call_soon(slf, lost, PyTuple::new(py, [py.None()])?)
    }

    /// A write pipe's fd became readable: the read end was closed.
    pub(super) fn pipe_peer_closed(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        Self::log_closed_by_peer(slf)?;
        let buffered = !slf.get().state.lock().buffer.is_empty();
        let exc = if buffered {
            let err = pyo3::exceptions::PyBrokenPipeError::new_err(());
            Some(err.into_value(py).into_any())
        } else {
            None
        };
        Self::force_close(slf, exc)
    }

    /// In debug mode, asyncio logs "%r was closed by peer" (INFO).
    fn log_closed_by_peer(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if !this.event_loop.get().debug_enabled() {
            return Ok(());
        }
        if let Some(shell) = this.shell(py) {
            let logger = py.import("asyncio.log")?.getattr("logger")?;
            logger.call_method1("info", ("%r was closed by peer", shell))?;
        }
        Ok(())
    }

    /// `write()` on a write pipe, decided under the state lock: asyncio's
    /// `_UnixWritePipeTransport.write` (the caller checked the data's type
    /// and schedules what the answer says).
    pub(super) fn pipe_write_locked(fd: RawFd, st: &mut State, obj: &Bound<'_, PyBytes>) -> Next {
        let bytes = obj.as_bytes();
        if bytes.is_empty() {
            return Next::Nothing;
        }
        if st.conn_lost > 0 || st.closing {
            let log = st.conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES;
            st.conn_lost += 1;
            return if log { Next::LogLost } else { Next::Nothing };
        }
        let mut sent = 0;
        let mut register = false;
        if st.buffer.is_empty() {
            // Attempt to send it right away first.
            match sock_io::write(fd, bytes) {
                IoResult::Done(n) if n == bytes.len() => return Next::Nothing,
                IoResult::Done(n) => sent = n,
                IoResult::WouldBlock => {}
                IoResult::Failed(e) => {
                    st.conn_lost += 1;
                    return Next::Failed(e);
                }
            }
            register = true;
            st.pipe_full(fd);
        }
        st.buffer.extend_from(obj, sent);
        Next::Buffered { register }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `pipe_write_locked` of `data` (as a `bytes`).
    fn write(fd: RawFd, st: &mut State, data: &[u8]) -> Next {
        Python::initialize();
        Python::attach(|py| StreamTransport::pipe_write_locked(fd, st, &PyBytes::new(py, data)))
    }

    #[test]
    fn write_after_close_is_counted_and_logged_past_the_threshold() {
        let mut st = State::new(None, false, None, None, None);
        st.closing = true;
        let mut logged = 0;
        for _ in 0..8 {
            if let Next::LogLost = write(-1, &mut st, b"x") {
                logged += 1;
            }
        }
        // asyncio: writes 6, 7 and 8 log (conn_lost 5, 6, 7 at the check).
        assert_eq!(logged, 3);
        assert_eq!(st.conn_lost, 8);
        assert!(st.buffer.is_empty());
    }

    #[test]
    fn empty_write_does_nothing() {
        let mut st = State::new(None, false, None, None, None);
        st.closing = true;
        assert!(matches!(write(-1, &mut st, b""), Next::Nothing));
        assert_eq!(st.conn_lost, 0);
    }

    #[test]
    fn write_to_a_full_pipe_buffers_the_rest() {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills the two-element array; both fds are closed
        // below.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK) };
        assert_eq!(rc, 0);
        let mut st = State::new(None, false, None, None, None);
        let data = vec![7u8; 1 << 20];
        let Next::Buffered { register } = write(fds[1], &mut st, &data) else {
            panic!("a 1 MiB write to an empty pipe must buffer the rest");
        };
        assert!(register);
        assert!(!st.buffer.is_empty() && st.buffer.len() < data.len());
        // The buffer is not empty: the next write only appends.
        let Next::Buffered { register } = write(fds[1], &mut st, b"ab") else {
            panic!("expected buffering");
        };
        assert!(!register);
        // SAFETY: both fds are ours and open.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }

    fn pipe_size(fd: RawFd) -> i32 {
        // SAFETY: fcntl on an open pipe of the test.
        unsafe { libc::fcntl(fd, libc::F_GETPIPE_SZ) }
    }

    #[test]
    fn a_full_childs_pipe_grows_once_and_returns_its_growth_at_close() {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills the array; both fds are closed below.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK) };
        assert_eq!(rc, 0);
        let mut st = State::new(None, false, None, None, None);
        st.growth = PipeGrowth::Allowed;
        let before = pipe_size(fds[0]);
        assert!(before < GROWN_SIZE as i32);
        // A small read says nothing; a full one grows the pipe.
        st.pipe_read(fds[0], 100);
        assert_eq!(st.growth, PipeGrowth::Allowed);
        st.pipe_read(fds[0], FULL_READ);
        assert_eq!(pipe_size(fds[0]), GROWN_SIZE as i32);
        let PipeGrowth::Done(added) = st.growth else {
            panic!("expected a grown pipe, got {:?}", st.growth);
        };
        assert_eq!(added, GROWN_SIZE - before as usize);
        // Once only.
        st.pipe_full(fds[0]);
        assert_eq!(st.growth, PipeGrowth::Done(added));
        st.release_growth();
        assert_eq!(st.growth, PipeGrowth::Never);
        // SAFETY: both fds are ours and open.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }

    #[test]
    fn a_pipe_never_shrinks_and_others_never_grow() {
        let mut fds = [0; 2];
        // SAFETY: as above.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK) };
        assert_eq!(rc, 0);
        // SAFETY: growing our own pipe beyond the target.
        let big = unsafe { libc::fcntl(fds[0], libc::F_SETPIPE_SZ, 2 * GROWN_SIZE as i32) };
        if big >= 2 * GROWN_SIZE as i32 {
            assert_eq!(grow(fds[0]), 0);
            assert_eq!(pipe_size(fds[0]), big);
        }
        // A transport that may not grow (a pipe the program passed in).
        let mut st = State::new(None, false, None, None, None);
        let mut small = [0; 2];
        // SAFETY: as above.
        let rc = unsafe { libc::pipe2(small.as_mut_ptr(), libc::O_NONBLOCK) };
        assert_eq!(rc, 0);
        let before = pipe_size(small[0]);
        st.pipe_full(small[0]);
        assert_eq!(st.growth, PipeGrowth::Never);
        assert_eq!(pipe_size(small[0]), before);
        // Not a pipe: nothing happens.
        assert_eq!(grow(-1), 0);
        // SAFETY: the four fds are ours and open.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
            libc::close(small[0]);
            libc::close(small[1]);
        }
    }

    #[test]
    fn write_to_a_closed_reader_fails_and_counts() {
        let mut fds = [0; 2];
        // SAFETY: as above.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK) };
        assert_eq!(rc, 0);
        // SAFETY: closing our own read end; SIGPIPE is ignored below.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
            libc::close(fds[0]);
        }
        let mut st = State::new(None, false, None, None, None);
        let Next::Failed(e) = write(fds[1], &mut st, b"x") else {
            panic!("EPIPE expected");
        };
        assert_eq!(e.raw_os_error(), Some(libc::EPIPE));
        assert_eq!(st.conn_lost, 1);
        // SAFETY: our write end.
        unsafe { libc::close(fds[1]) };
    }
}
