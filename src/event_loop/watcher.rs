//! What the loop's queues hold: asyncio's `Handle`s, plus native transports
//! whose readiness is dispatched without a Handle.
//!
//! NOTE: asyncio's selector transports register a Handle per direction (a
//! bound `_read_ready` plus a context copy: ~250 bytes per connection) and
//! each event goes Handle -> context -> bound method -> transport. A native
//! stream transport registers itself instead: the fd watcher keeps the
//! transport, an event queues `(transport, direction)` in the ready queue at
//! the position asyncio would queue the Handle, and running it enters the
//! transport's context and calls its reader or writer directly.

use pyo3::prelude::*;
use pyo3::{PyTraverseError, PyVisit};

use super::sock_recv::SockRecvWaiter;
use crate::handles::{self, Handle};
use crate::io::fd_watchers::Direction;
use crate::transports::stream::StreamTransport;

/// An fd watcher's callback.
pub(crate) enum Watcher {
    /// add_reader / add_writer: a Handle, cancelled when replaced or removed.
    Handle(Py<Handle>),
    /// A native stream transport's reader or writer.
    Stream(Py<StreamTransport>),
    /// sock_recv waiting on a plain socket.
    SockRecv(Py<SockRecvWaiter>),
}

/// An entry of the ready queue (asyncio's `_ready`).
pub(crate) enum Ready {
    Handle(Py<Handle>),
    /// A transport's fd is ready in this direction.
    Stream(Py<StreamTransport>, Direction),
    SockRecv(Py<SockRecvWaiter>),
}

impl Watcher {
    pub(crate) fn is_cancelled(&self, py: Python<'_>) -> bool {
        match self {
            Watcher::Handle(h) => h.bind(py).get().is_cancelled(),
            Watcher::Stream(_) | Watcher::SockRecv(_) => false,
        }
    }

    /// Done after one wake-up (a sock_recv wait), so it can be armed with
    /// EPOLLONESHOT (see `FdWatchers::add_oneshot_reader`).
    pub(crate) fn wants_one_wake_up(&self) -> bool {
        matches!(self, Watcher::SockRecv(_))
    }

    /// The ready-queue entry for an event in `dir`.
    pub(crate) fn ready(&self, py: Python<'_>, dir: Direction) -> Ready {
        match self {
            Watcher::Handle(h) => Ready::Handle(h.clone_ref(py)),
            Watcher::Stream(t) => Ready::Stream(t.clone_ref(py), dir),
            Watcher::SockRecv(w) => Ready::SockRecv(w.clone_ref(py)),
        }
    }

    /// Cancels a replaced or removed add_reader/add_writer Handle (asyncio
    /// does) or sock_recv wait; a transport's registration has nothing to
    /// cancel.
    pub(crate) fn cancel(&self, py: Python<'_>) -> PyResult<()> {
        match self {
            Watcher::Handle(h) => {
                Handle::cancel_once(h.bind(py))?;
            }
            Watcher::SockRecv(w) => w.get().cancel(),
            Watcher::Stream(_) => {}
        }
        Ok(())
    }

    /// Drops the loop's reference (outside any lock: it may run Python code).
    pub(crate) fn release(self, py: Python<'_>) {
        match self {
            Watcher::Handle(h) => handles::release(py, h),
            Watcher::Stream(t) => drop(t),
            Watcher::SockRecv(w) => drop(w),
        }
    }

    pub(crate) fn visit(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        match self {
            Watcher::Handle(h) => visit.call(h),
            Watcher::Stream(t) => visit.call(t),
            Watcher::SockRecv(w) => visit.call(w),
        }
    }
}

impl Ready {
    pub(crate) fn release(self, py: Python<'_>) {
        match self {
            Ready::Handle(h) => handles::release(py, h),
            Ready::Stream(t, _) => drop(t),
            Ready::SockRecv(w) => drop(w),
        }
    }

    pub(crate) fn visit(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        match self {
            Ready::Handle(h) => visit.call(h),
            Ready::Stream(t, _) => visit.call(t),
            Ready::SockRecv(w) => visit.call(w),
        }
    }
}
