//! A server's accept loop (asyncio's `_accept_connection` and
//! `_accept_connection2`) for plain TCP and Unix servers.
//!
//! NOTE: asyncio accepts into a Python socket object, then runs a Task per
//! connection that calls the protocol factory and makes the transport. Here
//! `accept4` gives a non-blocking fd and the peer's raw address; the
//! protocol factory runs at once, in a per-connection copy of the context
//! (what the Task would have), and the transport owns the bare fd: the
//! socket object, the peername tuple and the Task are never made unless
//! asked for. TLS servers and debug mode keep asyncio's own code.

use std::os::fd::RawFd;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::{PyTraverseError, PyVisit};

use super::stream::StreamTransport;
use crate::errors;
use crate::event_loop::EventLoop;
use crate::sockaddr::SockAddr;

#[pyclass(frozen, module = "ferroloop._ferroloop")]
pub struct Acceptor {
    event_loop: Py<EventLoop>,
    /// The listening socket (kept alive as long as it is watched).
    listener: Py<PyAny>,
    fd: RawFd,
    protocol_factory: Py<PyAny>,
    server: Option<Py<PyAny>>,
    backlog: usize,
    /// `SocketTransport._adopt(loop, core, protocol, server)`: makes the
    /// face and schedules connection_made.
    adopt: Py<PyAny>,
    /// Called with an accept() error other than "try again" (asyncio's
    /// out-of-resources handling, or re-raise).
    on_error: Py<PyAny>,
    /// Accepted sockets get TCP_NODELAY (a TCP listener, as asyncio's
    /// `_set_nodelay` decides from family, type and proto).
    nodelay: bool,
}

/// TCP_NODELAY on, as asyncio sets it on TCP transports.
fn set_nodelay(fd: RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: plain syscall on an fd we own, with a valid int option value.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

impl Acceptor {
    /// One accept4(): the new fd and the peer's address, `Ok(None)` when
    /// there is nothing more to accept now.
    fn accept_one(&self) -> std::io::Result<Option<(RawFd, SockAddr)>> {
        // SAFETY: zeroed sockaddr_storage is a valid out buffer of `len`
        // bytes; accept4 writes at most `len` bytes and updates it.
        unsafe {
            let mut storage: libc::sockaddr_storage = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            let fd = libc::accept4(
                self.fd,
                (&mut storage as *mut libc::sockaddr_storage).cast(),
                &mut len,
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            );
            if fd >= 0 {
                return Ok(Some((fd, SockAddr::from_raw(&storage, len))));
            }
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            // asyncio's (BlockingIOError, InterruptedError, ConnectionAbortedError).
            Some(libc::EAGAIN | libc::EINTR | libc::ECONNABORTED) => Ok(None),
            _ => Err(err),
        }
    }

    /// asyncio's `_accept_connection2` for one accepted fd, in a fresh copy
    /// of the current context.
    fn adopt(slf: &Bound<'_, Self>, fd: RawFd, peer: SockAddr) -> PyResult<()> {
        let py = slf.py();
        let context = match crate::py::copy_context(py) {
            Ok(c) => c,
            Err(e) => {
                // SAFETY: the fd was just accepted and is ours alone.
                unsafe { libc::close(fd) };
                return Err(e);
            }
        };
        crate::py::run_in_context(py, &context, || {
            let (mut protocol, mut core) = (None, None);
            match Self::connect(slf, fd, peer, &context, &mut protocol, &mut core) {
                Ok(()) => Ok(()),
                Err(err) => Self::abandon(slf, fd, protocol, core, err),
            }
        })
    }

    /// Makes the protocol and the transport for `fd`; on failure, `protocol`
    /// and `core` hold what was made before it.
    fn connect<'py>(
        slf: &Bound<'py, Self>,
        fd: RawFd,
        peer: SockAddr,
        context: &Bound<'py, PyAny>,
        protocol: &mut Option<Bound<'py, PyAny>>,
        core: &mut Option<Bound<'py, StreamTransport>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let event_loop = this.event_loop.bind(py);
        let p = protocol
            .insert(this.protocol_factory.bind(py).call0()?)
            .clone();
        let server = this.server.as_ref().map(|s| s.bind(py).clone());
        let t = StreamTransport::accepted(
            event_loop,
            fd,
            peer,
            p.clone(),
            server.clone(),
            context.clone(),
        )?;
        let t = core.insert(Bound::new(py, t)?).clone();
        if this.nodelay {
            set_nodelay(fd);
        }
        this.adopt.bind(py).call1((event_loop, t, p, server))?;
        Ok(())
    }

    /// A connection whose protocol or transport could not be made: close
    /// it; KeyboardInterrupt/SystemExit propagate, other errors are
    /// reported in debug mode only (as asyncio does).
    fn abandon(
        slf: &Bound<'_, Self>,
        fd: RawFd,
        protocol: Option<Bound<'_, PyAny>>,
        core: Option<Bound<'_, StreamTransport>>,
        err: PyErr,
    ) -> PyResult<()> {
        let py = slf.py();
        // The transport owns the fd once it exists; before that, we do.
        match &core {
            Some(t) => StreamTransport::close_fd(t)?,
            // SAFETY: accepted above, owned by nothing else yet.
            None => unsafe {
                libc::close(fd);
            },
        }
        if errors::is_exit(py, &err) {
            return Err(err);
        }
        let event_loop = slf.get().event_loop.bind(py);
        if event_loop.get().debug_enabled() {
            let ctx = pyo3::types::PyDict::new(py);
            ctx.set_item(
                "message",
                "Error on transport creation for incoming connection",
            )?;
            ctx.set_item("exception", err.into_value(py))?;
            if let Some(p) = protocol {
                ctx.set_item("protocol", p)?;
            }
            event_loop.call_method1(intern!(py, "call_exception_handler"), (ctx,))?;
        }
        Ok(())
    }
}

#[pymethods]
impl Acceptor {
    #[new]
    #[allow(clippy::too_many_arguments)]
    fn new(
        event_loop: Bound<'_, EventLoop>,
        listener: Bound<'_, PyAny>,
        protocol_factory: Bound<'_, PyAny>,
        server: Option<Bound<'_, PyAny>>,
        backlog: usize,
        adopt: Bound<'_, PyAny>,
        on_error: Bound<'_, PyAny>,
        nodelay: bool,
    ) -> PyResult<Self> {
        let py = listener.py();
        let fd: RawFd = listener.call_method0(intern!(py, "fileno"))?.extract()?;
        Ok(Self {
            event_loop: event_loop.unbind(),
            listener: listener.unbind(),
            fd,
            protocol_factory: protocol_factory.unbind(),
            server: server.map(Bound::unbind),
            backlog: backlog.max(1),
            adopt: adopt.unbind(),
            on_error: on_error.unbind(),
            nodelay,
        })
    }

    /// The listening socket's reader callback: accept up to `backlog`
    /// connections (asyncio's `_accept_connection`).
    fn _accept_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        for _ in 0..slf.get().backlog {
            match slf.get().accept_one() {
                Ok(Some((fd, peer))) => Self::adopt(slf, fd, peer)?,
                Ok(None) => return Ok(()),
                Err(e) => {
                    slf.get()
                        .on_error
                        .bind(py)
                        .call1((errors::os_error(e).into_value(py),))?;
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.event_loop)?;
        visit.call(&self.listener)?;
        visit.call(&self.protocol_factory)?;
        visit.call(&self.server)?;
        visit.call(&self.adopt)?;
        visit.call(&self.on_error)?;
        Ok(())
    }
}
