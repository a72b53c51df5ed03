//! `sock_recv`'s wait on a plain socket: a native reader that receives and
//! resolves the future itself.
//!
//! NOTE: asyncio's `sock_recv` (when the first try would block) makes a
//! future, a reader Handle (with a context copy) running a Python callback,
//! and a `functools.partial` done callback that removes the reader. Here one
//! native object is all of it: it is the fd's watcher (`Watcher::SockRecv`,
//! dispatched without a Handle), it receives natively when the fd is ready,
//! and it is itself the future's done callback (`__call__`), which removes
//! the reader when the wait ends early (a cancelled `sock_recv`).

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;
use pyo3::{PyTraverseError, PyVisit};

use super::watcher::Watcher;
use super::EventLoop;
use crate::io::fd_watchers::Direction;
use crate::sock_io::recv_bytes;

#[pyclass(frozen, module = "ferroloop._ferroloop")]
pub struct SockRecvWaiter {
    event_loop: Py<EventLoop>,
    fd: RawFd,
    n: usize,
    fut: Py<PyAny>,
    /// Still the fd's reader: false once done, removed, or replaced by
    /// another reader (asyncio's cancelled reader Handle).
    registered: AtomicBool,
}

/// The context the done callback runs in (it runs no Python code): one
/// empty Context, instead of a copy of the caller's per wait.
static EMPTY_CONTEXT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

impl SockRecvWaiter {
    /// Waits for `fd` to be readable, then `recv(n)`: returns the future.
    pub(crate) fn start<'py>(
        event_loop: &Bound<'py, EventLoop>,
        fd: RawFd,
        n: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = event_loop.py();
        let fut = EventLoop::create_future_impl(event_loop)?;
        let waiter = Bound::new(
            py,
            Self {
                event_loop: event_loop.clone().unbind(),
                fd,
                n,
                fut: fut.clone().unbind(),
                registered: AtomicBool::new(true),
            },
        )?;
        EventLoop::add_watcher(
            event_loop,
            fd,
            Direction::Read,
            Watcher::SockRecv(waiter.clone().unbind()),
        )?;
        let context = EMPTY_CONTEXT.get_or_try_init(py, || {
            py.import(intern!(py, "contextvars"))?
                .getattr(intern!(py, "Context"))?
                .call0()
                .map(Bound::unbind)
        })?;
        let kwargs = PyDict::new(py);
        kwargs.set_item(intern!(py, "context"), context)?;
        fut.call_method(intern!(py, "add_done_callback"), (waiter,), Some(&kwargs))?;
        Ok(fut)
    }

    /// The fd is readable (queued by the loop like a reader Handle).
    pub(crate) fn on_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if !this.registered.load(Ordering::Relaxed) {
            return Ok(());
        }
        let fut = this.fut.bind(py);
        if fut.call_method0(intern!(py, "done"))?.is_truthy()? {
            return Self::unregister(slf);
        }
        let Some(outcome) = recv_bytes(py, this.fd, this.n).transpose() else {
            // A spurious wake-up: keep waiting (the oneshot registration
            // needs arming again).
            return match this.event_loop.get().rearm_watch(this.fd) {
                Ok(()) => Ok(()),
                Err(e) => {
                    Self::unregister(slf)?;
                    fut.call_method1(intern!(py, "set_exception"), (e.into_value(py),))?;
                    Ok(())
                }
            };
        };
        Self::unregister(slf)?;
        match outcome {
            Ok(data) => fut.call_method1(intern!(py, "set_result"), (data,))?,
            Err(e) => fut.call_method1(intern!(py, "set_exception"), (e.into_value(py),))?,
        };
        Ok(())
    }

    /// Removes the reader, if it is still ours.
    fn unregister(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        if this.registered.swap(false, Ordering::Relaxed) {
            EventLoop::remove_watch(this.event_loop.bind(slf.py()), this.fd, Direction::Read)?;
        }
        Ok(())
    }

    /// Replaced or removed as the fd's reader by someone else.
    pub(crate) fn cancel(&self) {
        self.registered.store(false, Ordering::Relaxed);
    }
}

#[pymethods]
impl SockRecvWaiter {
    /// The future's done callback: a wait that ended without us (cancelled)
    /// stops watching the fd (asyncio's `_sock_recv_done`).
    fn __call__(slf: &Bound<'_, Self>, _fut: &Bound<'_, PyAny>) -> PyResult<()> {
        Self::unregister(slf)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.event_loop)?;
        visit.call(&self.fut)?;
        Ok(())
    }
}
