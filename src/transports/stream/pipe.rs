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

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use super::{Next, State, StreamTransport, LOG_THRESHOLD_FOR_CONNLOST_WRITES};
use crate::io::fd_watchers::Direction;
use crate::sock_io::{self, IoResult};

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
    pub(super) fn pipe_write_locked(fd: std::os::fd::RawFd, st: &mut State, bytes: &[u8]) -> Next {
        if bytes.is_empty() {
            return Next::Nothing;
        }
        if st.conn_lost > 0 || st.closing {
            let log = st.conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES;
            st.conn_lost += 1;
            return if log { Next::LogLost } else { Next::Nothing };
        }
        let mut rest = bytes;
        let mut register = false;
        if st.buffer.is_empty() {
            // Attempt to send it right away first.
            match sock_io::write(fd, bytes) {
                IoResult::Done(n) if n == bytes.len() => return Next::Nothing,
                IoResult::Done(n) => rest = &bytes[n..],
                IoResult::WouldBlock => {}
                IoResult::Failed(e) => {
                    st.conn_lost += 1;
                    return Next::Failed(e);
                }
            }
            register = true;
        }
        st.buffer.extend(rest);
        Next::Buffered { register }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_after_close_is_counted_and_logged_past_the_threshold() {
        let mut st = State::new(None, false, None, None, None);
        st.closing = true;
        let mut logged = 0;
        for _ in 0..8 {
            if let Next::LogLost = StreamTransport::pipe_write_locked(-1, &mut st, b"x") {
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
        assert!(matches!(
            StreamTransport::pipe_write_locked(-1, &mut st, b""),
            Next::Nothing
        ));
        assert_eq!(st.conn_lost, 0);
    }

    #[test]
    fn write_to_a_full_pipe_buffers_the_rest() {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills the two-element array; both fds are closed
        // below.
        assert_eq!(
            unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK) },
            0
        );
        let mut st = State::new(None, false, None, None, None);
        let data = vec![7u8; 1 << 20];
        let Next::Buffered { register } =
            StreamTransport::pipe_write_locked(fds[1], &mut st, &data)
        else {
            panic!("a 1 MiB write to an empty pipe must buffer the rest");
        };
        assert!(register);
        assert!(st.buffer.len() > 0 && st.buffer.len() < data.len());
        // The buffer is not empty: the next write only appends.
        let Next::Buffered { register } =
            StreamTransport::pipe_write_locked(fds[1], &mut st, b"ab")
        else {
            panic!("expected buffering");
        };
        assert!(!register);
        // SAFETY: both fds are ours and open.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }

    #[test]
    fn write_to_a_closed_reader_fails_and_counts() {
        let mut fds = [0; 2];
        // SAFETY: as above.
        assert_eq!(
            unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK) },
            0
        );
        // SAFETY: closing our own read end; SIGPIPE is ignored below.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
            libc::close(fds[0]);
        }
        let mut st = State::new(None, false, None, None, None);
        let Next::Failed(e) = StreamTransport::pipe_write_locked(fds[1], &mut st, b"x") else {
            panic!("EPIPE expected");
        };
        assert_eq!(e.raw_os_error(), Some(libc::EPIPE));
        assert_eq!(st.conn_lost, 1);
        // SAFETY: our write end.
        unsafe { libc::close(fds[1]) };
    }
}
