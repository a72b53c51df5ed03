//! The native core of a stream (TCP / Unix) socket transport: reads, the
//! write buffer, flow control, EOF, close and abort, with asyncio's selector
//! transport semantics (`_SelectorSocketTransport`).
//!
//! The object protocols see is `ferroloop._transports.SocketTransport`, a
//! Python subclass of `asyncio.Transport` (a native class cannot be one:
//! `BaseTransport` has `__slots__`); it owns this core and binds the hot
//! methods (`write`, `is_closing`, ...) straight to it, so a protocol's
//! `transport.write(data)` is one native call. Rare paths with policy
//! (`_fatal_error`'s logging, EOF handling, reprs) stay in the shell.
//!
//! NOTE: the state lock is never held while Python code can run (a protocol
//! callback, an exception handler, even an allocation that triggers a GC
//! whose finalizer writes to this transport): every method decides under
//! the lock, releases it, then calls out.

use std::os::fd::RawFd;

use parking_lot::Mutex;
use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use crate::errors;
use crate::event_loop::fastcall::method_returning_none;
use crate::event_loop::watcher::Watcher;
use crate::event_loop::EventLoop;
use crate::handles::Handle;
use crate::io::fd_watchers::Direction;
use crate::sock_io::{self, recv, recv_bytes, send, IoResult};
use crate::sockaddr::SockAddr;

mod pipe;
mod write_buffer;
use super::tls::{self, TlsCore};
use pipe::PipeGrowth;
use write_buffer::WriteBuffer;

/// What the core's fd is: a stream socket, or one end of a pipe (asyncio's
/// `_UnixReadPipeTransport` / `_UnixWritePipeTransport`, which also take
/// FIFOs, character devices and sockets and use read/write on them).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    Socket,
    ReadPipe,
    WritePipe,
}

impl Kind {
    /// asyncio's `_fatal_error` message for a failed read or write.
    fn io_error(self, dir: Direction) -> &'static str {
        match (self, dir) {
            (Kind::Socket, Direction::Read) => "Fatal read error on socket transport",
            (Kind::Socket, Direction::Write) => "Fatal write error on socket transport",
            (_, Direction::Read) => "Fatal read error on pipe transport",
            (_, Direction::Write) => "Fatal write error on pipe transport",
        }
    }
}

/// What one read for a TLS protocol did (`StreamTransport::read_tls`).
enum TlsRead {
    Nothing,
    Eof,
    Fed(PyResult<()>),
    Failed(std::io::Error),
}

/// asyncio's `max_size`: the most one read takes from the socket.
const MAX_READ: usize = 256 * 1024;
/// asyncio's `LOG_THRESHOLD_FOR_CONNLOST_WRITES`.
const LOG_THRESHOLD_FOR_CONNLOST_WRITES: u32 = 5;

struct State {
    protocol: Option<Py<PyAny>>,
    /// The protocol is a `BufferedProtocol` (get_buffer / buffer_updated).
    buffered: bool,
    /// The protocol is ferroloop's TLS protocol: reads feed it natively.
    tls: Option<Py<TlsCore>>,
    buffer: WriteBuffer,
    /// close() was called (or the transport is being torn down).
    closing: bool,
    /// write_eof() was called.
    eof: bool,
    /// Set when connection_lost is scheduled; counts writes after that.
    conn_lost: u32,
    /// pause_reading() was called.
    paused: bool,
    /// The protocol was told to pause writing.
    protocol_paused: bool,
    high_water: usize,
    low_water: usize,
    /// The reader is registered with the loop.
    reading: bool,
    /// The writer is registered with the loop.
    writing: bool,
    /// sendfile's "buffer drained" future.
    empty_waiter: Option<Py<PyAny>>,
    /// The context the reader and writer run in (asyncio's reader Handle's).
    context: Option<Py<PyAny>>,
    server: Option<Py<PyAny>>,
    /// The Python socket object, if there is one. An accepted connection
    /// gets one only when asked for (`get_extra_info('socket')`, `_sock`):
    /// until then the fd is ours alone.
    sock: Option<Py<PyAny>>,
    /// The fd is open (owned by `sock` if there is one, else by us).
    open: bool,
    /// `get_extra_info('socket')`, made on first use.
    trsock: Option<Py<PyAny>>,
    /// Pipes: `_call_connection_lost` is scheduled (a socket uses
    /// `conn_lost > 0`; a pipe's `conn_lost` only counts failed writes and
    /// writes after close, as asyncio's pipe transports count them).
    lost_scheduled: bool,
    /// Whether the pipe may grow when found full (see `pipe::PipeGrowth`).
    growth: PipeGrowth,
    /// The last pipe read was large: read the next straight into its
    /// `bytes` (`sock_io::read_bytes_direct`).
    big_reads: bool,
}

impl State {
    fn new(
        protocol: Option<Py<PyAny>>,
        buffered: bool,
        context: Option<Py<PyAny>>,
        server: Option<Py<PyAny>>,
        sock: Option<Py<PyAny>>,
    ) -> Self {
        Self {
            protocol,
            buffered,
            tls: None,
            buffer: WriteBuffer::default(),
            closing: false,
            eof: false,
            conn_lost: 0,
            paused: false,
            protocol_paused: false,
            high_water: 64 * 1024,
            low_water: 16 * 1024,
            reading: false,
            writing: false,
            empty_waiter: None,
            context,
            server,
            sock,
            open: true,
            trsock: None,
            lost_scheduled: false,
            growth: PipeGrowth::Never,
            big_reads: false,
        }
    }

    /// Marks `_call_connection_lost` as scheduled; false if it already was.
    fn mark_lost(&mut self, kind: Kind) -> bool {
        if kind == Kind::Socket {
            // asyncio's socket transports: `_conn_lost += 1` here.
            if self.conn_lost > 0 {
                return false;
            }
            self.conn_lost = 1;
            return true;
        }
        !std::mem::replace(&mut self.lost_scheduled, true)
    }

    /// `_call_connection_lost` is scheduled (or has run).
    fn lost(&self, kind: Kind) -> bool {
        match kind {
            Kind::Socket => self.conn_lost > 0,
            _ => self.lost_scheduled,
        }
    }

    /// The "registered with the loop" flag of the reader or the writer.
    fn registered(&mut self, dir: Direction) -> &mut bool {
        match dir {
            Direction::Read => &mut self.reading,
            Direction::Write => &mut self.writing,
        }
    }
}

#[pyclass(frozen, module = "ferroloop._ferroloop")]
pub struct StreamTransport {
    event_loop: Py<EventLoop>,
    /// The `SocketTransport` protocols see; cleared once the connection is lost.
    shell: Mutex<Option<Py<PyAny>>>,
    fd: RawFd,
    kind: Kind,
    /// getsockname() / getpeername() when the transport was made (asyncio
    /// keeps them for `get_extra_info`); `None` if the call failed.
    local: Option<SockAddr>,
    peer: Option<SockAddr>,
    state: Mutex<State>,
}

static BUFFERED_PROTOCOL: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static SOCKET: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static TRANSPORT_SOCKET: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn is_buffered_protocol(protocol: &Bound<'_, PyAny>) -> PyResult<bool> {
    let cls = BUFFERED_PROTOCOL.import(protocol.py(), "asyncio", "BufferedProtocol")?;
    protocol.is_instance(cls)
}

/// The data of a write as a `bytes` (asyncio's types: bytes, bytearray,
/// memoryview).
fn with_bytes<R>(data: &Bound<'_, PyAny>, f: impl FnOnce(&Bound<'_, PyBytes>) -> R) -> PyResult<R> {
    if let Ok(b) = data.cast::<PyBytes>() {
        return Ok(f(b));
    }
    if !(data.is_instance_of::<PyByteArray>() || data.is_instance_of::<PyMemoryView>()) {
        return Err(PyTypeError::new_err(format!(
            "data argument must be a bytes-like object, not {:?}",
            data.get_type().name()?.to_string()
        )));
    }
    // NOTE: a copy, as `bytes(data)` (any memoryview format, any layout);
    // the loop may keep the bytes after write() returns anyway.
    let copy = data.py().get_type::<PyBytes>().call1((data,))?;
    let copy = copy.cast::<PyBytes>()?;
    Ok(f(copy))
}

/// What `write()` does after deciding under the lock.
enum Next {
    Nothing,
    LogLost,
    Failed(std::io::Error),
    Buffered { register: bool },
}

/// A writable, contiguous view of a Python buffer (what `recv_into` takes),
/// released on drop.
pub(crate) struct WritableBuffer {
    view: Box<ffi::Py_buffer>,
}

impl WritableBuffer {
    pub(crate) fn get(obj: &Bound<'_, PyAny>) -> PyResult<Self> {
        // SAFETY: a zeroed Py_buffer is a valid out-parameter; on success
        // PyObject_GetBuffer fills it and we release it exactly once (Drop).
        unsafe {
            let mut view: Box<ffi::Py_buffer> = Box::new(std::mem::zeroed());
            if ffi::PyObject_GetBuffer(obj.as_ptr(), &mut *view, ffi::PyBUF_WRITABLE) != 0 {
                return Err(PyErr::fetch(obj.py()));
            }
            Ok(Self { view })
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.view.len as usize
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: PyBUF_WRITABLE without PyBUF_ND asks for a contiguous
        // writable block of `len` bytes, valid until the view is released.
        unsafe { std::slice::from_raw_parts_mut(self.view.buf.cast::<u8>(), self.len()) }
    }
}

impl Drop for WritableBuffer {
    fn drop(&mut self) {
        // SAFETY: the view was filled by PyObject_GetBuffer and not yet
        // released; the GIL is held wherever a WritableBuffer lives.
        unsafe { ffi::PyBuffer_Release(&mut *self.view) };
    }
}

impl StreamTransport {
    fn shell<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.shell.lock().as_ref().map(|s| s.bind(py).clone())
    }

    fn protocol<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.state
            .lock()
            .protocol
            .as_ref()
            .map(|p| p.bind(py).clone())
    }

    /// Registers the reader or the writer with the loop (as itself: see
    /// `event_loop::watcher`), unless it already is.
    fn watch(slf: &Bound<'_, Self>, dir: Direction) -> PyResult<()> {
        let this = slf.get();
        EventLoop::add_watcher(
            this.event_loop.bind(slf.py()),
            this.fd,
            dir,
            Watcher::Stream(slf.clone().unbind()),
        )?;
        *this.state.lock().registered(dir) = true;
        Ok(())
    }

    /// Unregisters the reader or writer callback, if registered.
    fn unwatch(slf: &Bound<'_, Self>, dir: Direction) -> PyResult<()> {
        let this = slf.get();
        let was = std::mem::replace(this.state.lock().registered(dir), false);
        if was {
            EventLoop::remove_watch(this.event_loop.bind(slf.py()), this.fd, dir)?;
        }
        Ok(())
    }

    /// The shell's `_fatal_error(exc, message)`: logging / exception handler
    /// (asyncio's policy, in Python), then `_force_close(exc)`.
    fn fatal_error(slf: &Bound<'_, Self>, exc: PyErr, message: &str) -> PyResult<()> {
        let py = slf.py();
        match slf.get().shell(py) {
            Some(shell) => {
                shell.call_method1(intern!(py, "_fatal_error"), (exc.into_value(py), message))?;
                Ok(())
            }
            None => Self::force_close(slf, Some(exc.into_value(py).into_any())),
        }
    }

    fn call_soon(
        slf: &Bound<'_, Self>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
    ) -> PyResult<()> {
        let py = slf.py();
        EventLoop::schedule_soon(slf.get().event_loop.bind(py), callback, args, None, false)?;
        Ok(())
    }

    /// asyncio's `_force_close`.
    fn force_close(slf: &Bound<'_, Self>, exc: Option<Py<PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let had_buffer = {
            let mut st = this.state.lock();
            if !st.mark_lost(this.kind) {
                return Ok(());
            }
            let had_buffer = !st.buffer.is_empty();
            st.buffer.clear();
            st.closing = true;
            this.event_loop.get().set_transport_fd(this.fd, false);
            had_buffer
        };
        if had_buffer {
            Self::unwatch(slf, Direction::Write)?;
        }
        // A no-op when already unregistered (close() or EOF removed it).
        Self::unwatch(slf, Direction::Read)?;
        let lost = slf.getattr(intern!(py, "_call_connection_lost"))?;
        let exc = exc.unwrap_or_else(|| py.None());
        Self::call_soon(slf, lost, PyTuple::new(py, [exc])?)
    }

    /// Flow control after the buffer grew (asyncio's `_maybe_pause_protocol`).
    fn maybe_pause_protocol(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let protocol = {
            let mut st = slf.get().state.lock();
            if st.buffer.len() <= st.high_water || st.protocol_paused {
                return Ok(());
            }
            st.protocol_paused = true;
            st.protocol.as_ref().map(|p| p.clone_ref(py))
        };
        if let Some(p) = protocol {
            if let Err(e) = p.bind(py).call_method0(intern!(py, "pause_writing")) {
                Self::report_protocol_error(slf, e, "protocol.pause_writing() failed")?;
            }
        }
        Ok(())
    }

    /// asyncio's `_maybe_resume_protocol`.
    fn maybe_resume_protocol(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let protocol = {
            let mut st = slf.get().state.lock();
            if !(st.protocol_paused && st.buffer.len() <= st.low_water) {
                return Ok(());
            }
            st.protocol_paused = false;
            st.protocol.as_ref().map(|p| p.clone_ref(py))
        };
        if let Some(p) = protocol {
            if let Err(e) = p.bind(py).call_method0(intern!(py, "resume_writing")) {
                Self::report_protocol_error(slf, e, "protocol.resume_writing() failed")?;
            }
        }
        Ok(())
    }

    /// A protocol callback's exception, as asyncio reports it: to the loop's
    /// exception handler (KeyboardInterrupt / SystemExit propagate).
    fn report_protocol_error(slf: &Bound<'_, Self>, err: PyErr, message: &str) -> PyResult<()> {
        let py = slf.py();
        if errors::is_exit(py, &err) {
            return Err(err);
        }
        let this = slf.get();
        let context = pyo3::types::PyDict::new(py);
        context.set_item("message", message)?;
        context.set_item("exception", err.into_value(py))?;
        context.set_item("transport", this.shell(py))?;
        context.set_item("protocol", this.protocol(py))?;
        this.event_loop
            .bind(py)
            .call_method1(intern!(py, "call_exception_handler"), (context,))?;
        Ok(())
    }

    fn read_data(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        // The thread's scratch buffer: only what arrived is copied into the
        // `bytes` handed to data_received.
        let pipe = this.kind != Kind::Socket;
        let got = if pipe && this.state.lock().big_reads {
            sock_io::read_bytes_direct(py, this.fd, MAX_READ)
        } else if pipe {
            sock_io::read_bytes(py, this.fd, MAX_READ)
        } else {
            recv_bytes(py, this.fd, MAX_READ)
        };
        let data = match got {
            Ok(Some(d)) => d,
            Ok(None) => return Ok(()),
            Err(e) => return Self::fatal_error(slf, e, this.kind.io_error(Direction::Read)),
        };
        if pipe {
            this.state.lock().pipe_read(this.fd, data.as_bytes().len());
        }
        if data.as_bytes().is_empty() {
            return if pipe {
                Self::pipe_eof(slf)
            } else {
                Self::on_eof(slf)
            };
        }
        let Some(protocol) = this.protocol(py) else {
            return Ok(());
        };
        let result = protocol.call_method1(intern!(py, "data_received"), (data,));
        if let Err(e) = result {
            // NOTE: asyncio's read pipe lets data_received's exception reach
            // the reader Handle (reported, the transport stays open).
            if pipe || errors::is_exit(py, &e) {
                return Err(e);
            }
            return Self::fatal_error(slf, e, "Fatal error: protocol.data_received() call failed.");
        }
        Ok(())
    }

    fn read_into_buffer(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let Some(protocol) = this.protocol(py) else {
            return Ok(());
        };
        let buf = protocol.call_method1(intern!(py, "get_buffer"), (-1,));
        let buf = buf.and_then(|b| {
            let view = WritableBuffer::get(&b)?;
            if view.len() == 0 {
                return Err(PyRuntimeError::new_err(
                    "get_buffer() returned an empty buffer",
                ));
            }
            Ok(view)
        });
        let mut view = match buf {
            Ok(v) => v,
            Err(e) if errors::is_exit(py, &e) => return Err(e),
            Err(e) => {
                return Self::fatal_error(slf, e, "Fatal error: protocol.get_buffer() call failed.")
            }
        };
        let n = match recv(this.fd, view.as_mut_slice()) {
            IoResult::Done(n) => n,
            IoResult::WouldBlock => return Ok(()),
            IoResult::Failed(e) => {
                drop(view);
                return Self::fatal_error(
                    slf,
                    errors::os_error(e),
                    "Fatal read error on socket transport",
                );
            }
        };
        drop(view);
        if n == 0 {
            return Self::on_eof(slf);
        }
        let updated = protocol.call_method1(intern!(py, "buffer_updated"), (n,));
        if let Err(e) = updated {
            if errors::is_exit(py, &e) {
                return Err(e);
            }
            return Self::fatal_error(
                slf,
                e,
                "Fatal error: protocol.buffer_updated() call failed.",
            );
        }
        Ok(())
    }

    /// A read for ferroloop's TLS protocol: from the socket into its
    /// incoming BIO, then the protocol's processing (asyncio's
    /// `buffer_updated`), without Python's get_buffer / buffer_updated.
    fn read_tls(slf: &Bound<'_, Self>, tls: &Bound<'_, TlsCore>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let Some(protocol) = this.protocol(py) else {
            return Ok(());
        };
        // The scratch buffer is let go before any Python code runs.
        let got = sock_io::with_scratch(MAX_READ, |buf| match recv(this.fd, buf) {
            IoResult::Done(0) => TlsRead::Eof,
            IoResult::Done(n) => TlsRead::Fed(tls.get().fill(py, &buf[..n])),
            IoResult::WouldBlock => TlsRead::Nothing,
            IoResult::Failed(e) => TlsRead::Failed(e),
        });
        let result = match got {
            TlsRead::Nothing => return Ok(()),
            TlsRead::Eof => return Self::on_eof(slf),
            TlsRead::Failed(e) => {
                return Self::fatal_error(
                    slf,
                    errors::os_error(e),
                    "Fatal read error on socket transport",
                )
            }
            TlsRead::Fed(filled) => filled.and_then(|()| TlsCore::process(tls, &protocol)),
        };
        match result {
            Err(e) if errors::is_exit(py, &e) => Err(e),
            Err(e) => Self::fatal_error(
                slf,
                e,
                "Fatal error: protocol.buffer_updated() call failed.",
            ),
            Ok(()) => Ok(()),
        }
    }

    fn on_eof(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        if let Some(shell) = slf.get().shell(py) {
            shell.call_method0(intern!(py, "_read_ready__on_eof"))?;
        }
        Ok(())
    }
}

#[pymethods]
impl StreamTransport {
    #[new]
    #[pyo3(signature = (event_loop, shell, sock, protocol, server=None))]
    fn new(
        event_loop: Bound<'_, EventLoop>,
        shell: Bound<'_, PyAny>,
        sock: Bound<'_, PyAny>,
        protocol: Bound<'_, PyAny>,
        server: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let py = sock.py();
        let fd: RawFd = sock.call_method0(intern!(py, "fileno"))?.extract()?;
        let context = crate::py::copy_context(py)?;
        Self::build(
            &event_loop,
            Some(shell),
            fd,
            Kind::Socket,
            Some(sock),
            SockAddr::peer(fd).ok(),
            protocol,
            server,
            context,
        )
    }

    /// The core of a pipe transport (asyncio's `_UnixReadPipeTransport` when
    /// `write` is false, else `_UnixWritePipeTransport`) over `pipe`'s fd,
    /// already checked and made non-blocking by the face; closing the
    /// transport closes `pipe`. `grow`: a pipe the loop made for a child,
    /// which may grow when busy (see `pipe::PipeGrowth`).
    #[staticmethod]
    fn pipe(
        event_loop: Bound<'_, EventLoop>,
        shell: Bound<'_, PyAny>,
        pipe: Bound<'_, PyAny>,
        fd: RawFd,
        protocol: Bound<'_, PyAny>,
        write: bool,
        grow: bool,
    ) -> PyResult<Self> {
        let context = crate::py::copy_context(pipe.py())?;
        let kind = if write {
            Kind::WritePipe
        } else {
            Kind::ReadPipe
        };
        let core = Self::build(
            &event_loop,
            Some(shell),
            fd,
            kind,
            Some(pipe),
            None,
            protocol,
            None,
            context,
        )?;
        if grow {
            core.state.lock().growth = PipeGrowth::Allowed;
        }
        Ok(core)
    }

    /// Starts reading (scheduled right after `connection_made`).
    fn _start_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let reading = {
            let st = slf.get().state.lock();
            !st.closing && !st.paused && !st.reading
        };
        if reading {
            Self::watch(slf, Direction::Read)?;
        }
        Ok(())
    }

    fn writelines(slf: &Bound<'_, Self>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        // asyncio 3.11's Transport.writelines: one write of the joined data.
        let py = slf.py();
        let joined = PyBytes::new(py, b"").call_method1(intern!(py, "join"), (list_of_data,))?;
        Self::write(slf, &joined)
    }

    fn write_eof(slf: &Bound<'_, Self>) -> PyResult<()> {
        if slf.get().kind != Kind::Socket {
            // asyncio's write pipe: write_eof() is close().
            return Self::close(slf);
        }
        let shutdown_now = {
            let mut st = slf.get().state.lock();
            if st.closing || st.eof {
                return Ok(());
            }
            st.eof = true;
            st.buffer.is_empty()
        };
        if shutdown_now {
            Self::shutdown_write(slf)?;
        }
        Ok(())
    }

    fn can_write_eof(&self) -> bool {
        true
    }

    fn get_write_buffer_size(&self) -> usize {
        self.state.lock().buffer.len()
    }

    fn get_write_buffer_limits(&self) -> (usize, usize) {
        let st = self.state.lock();
        (st.low_water, st.high_water)
    }

    /// Sets already validated limits, then applies flow control.
    fn _set_limits(slf: &Bound<'_, Self>, high: usize, low: usize) -> PyResult<()> {
        {
            let mut st = slf.get().state.lock();
            st.high_water = high;
            st.low_water = low;
        }
        Self::maybe_pause_protocol(slf)
    }

    fn is_closing(&self) -> bool {
        self.closing()
    }

    fn is_reading(&self) -> bool {
        let st = self.state.lock();
        !st.closing && !st.paused
    }

    /// Returns whether reading was paused by this call (the shell logs it).
    fn _pause_reading(slf: &Bound<'_, Self>) -> PyResult<bool> {
        {
            let mut st = slf.get().state.lock();
            if st.closing || st.paused {
                return Ok(false);
            }
            st.paused = true;
        }
        Self::unwatch(slf, Direction::Read)?;
        Ok(true)
    }

    /// Returns whether reading was resumed by this call (the shell logs it).
    fn _resume_reading(slf: &Bound<'_, Self>) -> PyResult<bool> {
        {
            let mut st = slf.get().state.lock();
            if st.closing || !st.paused {
                return Ok(false);
            }
            st.paused = false;
        }
        Self::watch(slf, Direction::Read)?;
        Ok(true)
    }

    /// Stops reading for good (`eof_received()` returned true).
    fn _stop_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::unwatch(slf, Direction::Read)
    }

    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let kind = slf.get().kind;
        let lose_now = {
            let mut st = slf.get().state.lock();
            if st.closing || (kind == Kind::WritePipe && !st.open) {
                return Ok(());
            }
            st.closing = true;
            slf.get()
                .event_loop
                .get()
                .set_transport_fd(slf.get().fd, false);
            let empty = st.buffer.is_empty();
            if empty {
                st.mark_lost(kind);
            }
            empty
        };
        // NOTE: a write pipe still flushing keeps its reader: the read end
        // closing meanwhile ends the transport with BrokenPipeError.
        if kind != Kind::WritePipe || lose_now {
            Self::unwatch(slf, Direction::Read)?;
        }
        if lose_now {
            Self::unwatch(slf, Direction::Write)?;
            let lost = slf.getattr(intern!(py, "_call_connection_lost"))?;
            Self::call_soon(slf, lost, PyTuple::new(py, [py.None()])?)?;
        }
        Ok(())
    }

    fn abort(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::force_close(slf, None)
    }

    #[pyo3(signature = (exc))]
    fn _force_close(slf: &Bound<'_, Self>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        let exc = (!exc.is_none()).then(|| exc.unbind());
        Self::force_close(slf, exc)
    }

    /// asyncio's `_call_connection_lost`: tell the protocol, close the
    /// socket, detach from the server, fail a pending sendfile waiter.
    fn _call_connection_lost(slf: &Bound<'_, Self>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let protocol = this.protocol(py);
        let result = match &protocol {
            Some(p) => p
                .call_method1(intern!(py, "connection_lost"), (exc,))
                .map(|_| ()),
            None => Ok(()),
        };
        let (server, waiter, protocol_obj) = {
            let mut st = this.state.lock();
            (
                st.server.take(),
                st.empty_waiter.as_ref().map(|w| w.clone_ref(py)),
                st.protocol.take(),
            )
        };
        let shell = this.shell.lock().take();
        let mut cleanup = Self::close_fd(slf);
        if let Some(server) = server {
            let detached = match &shell {
                Some(s) if crate::py::version(py) >= (3, 13) => server
                    .bind(py)
                    .call_method1(intern!(py, "_detach"), (s,))
                    .map(|_| ()),
                _ => server
                    .bind(py)
                    .call_method0(intern!(py, "_detach"))
                    .map(|_| ()),
            };
            cleanup = cleanup.and(detached);
        }
        drop((shell, protocol_obj));
        if let Some(w) = waiter {
            let conn_err =
                pyo3::exceptions::PyConnectionError::new_err("Connection is closed by peer");
            let done: bool = w.bind(py).call_method0(intern!(py, "done"))?.extract()?;
            if !done {
                w.bind(py)
                    .call_method1(intern!(py, "set_exception"), (conn_err.into_value(py),))?;
            }
        }
        result.and(cleanup)
    }

    fn set_protocol(&self, protocol: Bound<'_, PyAny>) -> PyResult<()> {
        // NOTE: asyncio's pipe transports call data_received on any protocol.
        let buffered = self.kind == Kind::Socket && is_buffered_protocol(&protocol)?;
        let tls = match self.kind {
            Kind::Socket => tls::core_of(&protocol)?,
            _ => None,
        };
        let old = {
            let mut st = self.state.lock();
            st.buffered = buffered;
            let old_tls = std::mem::replace(&mut st.tls, tls);
            (st.protocol.replace(protocol.unbind()), old_tls)
        };
        drop(old);
        Ok(())
    }

    fn get_protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.protocol(py).map(Bound::unbind)
    }

    /// sendfile: a future done when the write buffer is empty.
    fn _make_empty_waiter(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let this = slf.get();
        if this.state.lock().empty_waiter.is_some() {
            return Err(PyRuntimeError::new_err("Empty waiter is already set"));
        }
        let fut = EventLoop::create_future_impl(this.event_loop.bind(py))?;
        let empty = {
            let mut st = this.state.lock();
            st.empty_waiter = Some(fut.clone().unbind());
            st.buffer.is_empty()
        };
        if empty {
            fut.call_method1(intern!(py, "set_result"), (py.None(),))?;
        }
        Ok(fut.unbind())
    }

    fn _reset_empty_waiter(&self) {
        let old = self.state.lock().empty_waiter.take();
        drop(old);
    }

    #[getter]
    fn _protocol_paused(&self) -> bool {
        self.state.lock().protocol_paused
    }

    #[getter]
    fn _conn_lost(&self) -> u32 {
        self.state.lock().conn_lost
    }

    #[getter]
    fn _closing(&self) -> bool {
        self.state.lock().closing
    }

    #[getter]
    fn _paused(&self) -> bool {
        self.state.lock().paused
    }

    #[getter]
    fn _eof(&self) -> bool {
        self.state.lock().eof
    }

    #[getter]
    fn _reading_registered(&self) -> bool {
        self.state.lock().reading
    }

    #[getter]
    fn _writing_registered(&self) -> bool {
        self.state.lock().writing
    }

    #[getter]
    fn _protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.get_protocol(py)
    }

    #[getter]
    fn _fd(&self) -> RawFd {
        self.fd
    }

    /// The socket is not closed yet.
    #[getter]
    fn _is_open(&self) -> bool {
        self.state.lock().open
    }

    #[getter]
    fn _server(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.state.lock().server.as_ref().map(|s| s.clone_ref(py))
    }

    /// asyncio's `transport._sock`: the socket object (made on first use
    /// for an accepted connection), `None` once closed.
    fn _socket<'py>(slf: &Bound<'py, Self>) -> PyResult<Option<Bound<'py, PyAny>>> {
        Self::socket(slf)
    }

    /// `get_extra_info` for 'socket', 'sockname' and 'peername' (others:
    /// None).
    fn _extra_info<'py>(slf: &Bound<'py, Self>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        match name {
            "socket" => Self::transport_socket(slf),
            "sockname" => Self::name(slf, false),
            "peername" => Self::name(slf, true),
            _ => Ok(slf.py().None().into_bound(slf.py())),
        }
    }

    fn _set_shell(&self, shell: Bound<'_, PyAny>) {
        let old = self.shell.lock().replace(shell.unbind());
        drop(old);
    }

    /// Closes the socket without telling the protocol (the shell's
    /// `__del__`: an unclosed transport).
    fn _close_fd(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::close_fd(slf)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(s) = self.shell.try_lock() {
            visit.call(&*s)?;
        }
        if let Some(st) = self.state.try_lock() {
            visit.call(&st.protocol)?;
            visit.call(&st.empty_waiter)?;
            visit.call(&st.server)?;
            visit.call(&st.sock)?;
            visit.call(&st.context)?;
            visit.call(&st.trsock)?;
            visit.call(&st.tls)?;
        }
        visit.call(&self.event_loop)?;
        Ok(())
    }

    fn __clear__(&self) {
        let shell = self.shell.lock().take();
        let taken = {
            let mut st = self.state.lock();
            (
                st.protocol.take(),
                st.empty_waiter.take(),
                st.server.take(),
                st.context.take(),
                st.trsock.take(),
                st.tls.take(),
            )
        };
        drop((shell, taken));
    }
}

impl StreamTransport {
    /// Runs the reader or writer for an event the loop queued (see
    /// `event_loop::watcher`): as asyncio's Handle would, in the transport's
    /// context, skipped if unregistered since, its exception reported
    /// through the loop's exception handler.
    pub(crate) fn on_ready(
        slf: &Bound<'_, Self>,
        event_loop: &Bound<'_, EventLoop>,
        dir: Direction,
    ) -> PyResult<()> {
        let py = slf.py();
        let context = {
            let mut st = slf.get().state.lock();
            if !*st.registered(dir) {
                return Ok(());
            }
            st.context.as_ref().map(|c| c.clone_ref(py))
        };
        if event_loop.get().debug_enabled() {
            // Debug mode runs a real Handle: asyncio's `_current_handle` and
            // slow-callback report name it.
            let handle = Self::as_handle(slf, event_loop, dir, context)?;
            return EventLoop::run_handle(event_loop, &handle, None);
        }
        let result = match &context {
            Some(ctx) => crate::py::run_in_context(py, ctx.bind(py), || Self::run_ready(slf, dir)),
            None => Self::run_ready(slf, dir),
        };
        match result {
            Ok(()) => Ok(()),
            Err(e) if errors::is_exit(py, &e) => Err(e),
            Err(e) => {
                let handle = Self::as_handle(slf, event_loop, dir, context)?;
                crate::py::call_helper(
                    py,
                    "_report_callback_error",
                    (event_loop, handle, e.into_value(py)),
                )?;
                Ok(())
            }
        }
    }

    fn run_ready(slf: &Bound<'_, Self>, dir: Direction) -> PyResult<()> {
        match dir {
            Direction::Read => Self::read_ready(slf),
            Direction::Write => Self::write_ready(slf),
        }
    }

    /// The Handle asyncio would have queued for this event.
    fn as_handle<'py>(
        slf: &Bound<'py, Self>,
        event_loop: &Bound<'py, EventLoop>,
        dir: Direction,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, Handle>> {
        let py = slf.py();
        let handle = EventLoop::make_handle(
            event_loop,
            Self::ready_method(slf, dir)?,
            PyTuple::empty(py),
            context.map(|c| c.into_bound(py)),
            crate::metrics::Kind::Io,
        )?;
        Bound::new(py, handle)
    }

    /// The bound `_read_ready` / `_write_ready` an event in `dir` runs.
    pub(crate) fn ready_method<'py>(
        slf: &Bound<'py, Self>,
        dir: Direction,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let name = match dir {
            Direction::Read => intern!(py, "_read_ready"),
            Direction::Write => intern!(py, "_write_ready"),
        };
        slf.getattr(name)
    }

    /// The reader callback: one read, handed to the protocol.
    pub(crate) fn read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let kind = slf.get().kind;
        let (lost, buffered, tls) = {
            let st = slf.get().state.lock();
            (
                st.lost(kind),
                st.buffered,
                st.tls.as_ref().map(|t| t.clone_ref(slf.py())),
            )
        };
        if lost {
            return Ok(());
        }
        if kind == Kind::WritePipe {
            return Self::pipe_peer_closed(slf);
        }
        if let Some(tls) = tls {
            Self::read_tls(slf, tls.bind(slf.py()))
        } else if buffered {
            Self::read_into_buffer(slf)
        } else {
            Self::read_data(slf)
        }
    }

    /// The writer callback: flush what the socket takes.
    pub(crate) fn write_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let pipe = this.kind != Kind::Socket;
        let outcome = {
            let mut st = this.state.lock();
            if st.lost(this.kind) || st.buffer.is_empty() {
                return Ok(());
            }
            let io = if pipe { sock_io::write } else { send };
            match io(this.fd, st.buffer.pending(py)) {
                IoResult::Done(n) => {
                    st.buffer.consume(n);
                    if pipe && !st.buffer.is_empty() {
                        st.pipe_full(this.fd);
                    }
                    Ok(())
                }
                IoResult::WouldBlock => return Ok(()),
                IoResult::Failed(e) => {
                    st.buffer.clear();
                    if pipe {
                        st.conn_lost += 1;
                    }
                    Err(e)
                }
            }
        };
        if let Err(e) = outcome {
            Self::unwatch(slf, Direction::Write)?;
            let err = errors::os_error(e);
            let value = err.value(py).clone().into_any();
            Self::fatal_error(slf, err, this.kind.io_error(Direction::Write))?;
            let waiter = this
                .state
                .lock()
                .empty_waiter
                .as_ref()
                .map(|w| w.clone_ref(py));
            if let Some(w) = waiter {
                w.bind(py)
                    .call_method1(intern!(py, "set_exception"), (value,))?;
            }
            return Ok(());
        }
        Self::maybe_resume_protocol(slf)?; // may append to the buffer
        let (drained, closing, eof, waiter) = {
            let st = this.state.lock();
            (
                st.buffer.is_empty(),
                st.closing,
                st.eof,
                st.empty_waiter.as_ref().map(|w| w.clone_ref(py)),
            )
        };
        if !drained {
            return Ok(());
        }
        Self::unwatch(slf, Direction::Write)?;
        if let Some(w) = waiter {
            w.bind(py)
                .call_method1(intern!(py, "set_result"), (py.None(),))?;
        }
        if closing {
            if pipe {
                // asyncio's write pipe: the reader (peer-closed detection)
                // goes, then connection_lost at once.
                this.state.lock().lost_scheduled = true;
                Self::unwatch(slf, Direction::Read)?;
            }
            slf.call_method1(intern!(py, "_call_connection_lost"), (py.None(),))?;
        } else if eof {
            Self::shutdown_write(slf)?;
        }
        Ok(())
    }

    /// `transport.write(data)` (a hand-written METH_O entry, see `install`).
    pub(crate) fn write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let pipe = this.kind != Kind::Socket;
        let next = with_bytes(data, |obj| -> PyResult<Next> {
            let mut st = this.state.lock();
            if pipe {
                return Ok(Self::pipe_write_locked(this.fd, &mut st, obj));
            }
            let bytes = obj.as_bytes();
            if st.eof {
                return Err(PyRuntimeError::new_err(
                    "Cannot call write() after write_eof()",
                ));
            }
            if st.empty_waiter.is_some() {
                return Err(PyRuntimeError::new_err(
                    "unable to write; sendfile is in progress",
                ));
            }
            if bytes.is_empty() {
                return Ok(Next::Nothing);
            }
            if st.conn_lost > 0 {
                let log = st.conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES;
                st.conn_lost += 1;
                return Ok(if log { Next::LogLost } else { Next::Nothing });
            }
            let mut sent = 0;
            let mut register = false;
            if st.buffer.is_empty() {
                // Optimization: try to send now.
                match send(this.fd, bytes) {
                    IoResult::Done(n) if n == bytes.len() => return Ok(Next::Nothing),
                    IoResult::Done(n) => sent = n,
                    IoResult::WouldBlock => {}
                    IoResult::Failed(e) => return Ok(Next::Failed(e)),
                }
                register = true;
            }
            st.buffer.extend_from(obj, sent);
            Ok(Next::Buffered { register })
        })??;
        match next {
            Next::Nothing => Ok(()),
            Next::LogLost => {
                let logger = py.import("asyncio.log")?.getattr("logger")?;
                let message = if pipe {
                    "pipe closed by peer or os.write(pipe, data) raised exception."
                } else {
                    "socket.send() raised exception."
                };
                logger.call_method1("warning", (message,))?;
                Ok(())
            }
            Next::Failed(e) => Self::fatal_error(
                slf,
                errors::os_error(e),
                this.kind.io_error(Direction::Write),
            ),
            Next::Buffered { register } => {
                if register {
                    Self::watch(slf, Direction::Write)?;
                }
                Self::maybe_pause_protocol(slf)
            }
        }
    }

    /// `sock.shutdown(SHUT_WR)` (write_eof once the buffer is flushed).
    fn shutdown_write(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        if !this.state.lock().open {
            return Ok(());
        }
        // SAFETY: plain syscall on our open fd.
        if unsafe { libc::shutdown(this.fd, libc::SHUT_WR) } < 0 {
            return Err(errors::os_error(std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Closes the socket (asyncio's `self._sock.close()`): through the
    /// Python socket object if there is one, else the fd itself.
    pub(crate) fn close_fd(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let sock = {
            let mut st = this.state.lock();
            if !std::mem::replace(&mut st.open, false) {
                return Ok(());
            }
            st.release_growth();
            st.sock.as_ref().map(|s| s.clone_ref(py))
        };
        let event_loop = this.event_loop.bind(py).get();
        event_loop.set_transport_fd(this.fd, false);
        event_loop.metrics.transports_closed.add(1);
        // NOTE: the fd must not stay registered once its number can be
        // reused; the reader and writer were removed by close/abort, this
        // only covers a path that left one behind.
        Self::unwatch(slf, Direction::Read)?;
        Self::unwatch(slf, Direction::Write)?;
        match sock {
            Some(sock) => {
                sock.bind(py).call_method0(intern!(py, "close"))?;
            }
            // SAFETY: the fd is ours alone (no socket object was made for
            // it) and `open` was true: it is closed exactly once.
            None => unsafe {
                libc::close(this.fd);
            },
        }
        Ok(())
    }

    /// Makes the transport (both constructors end here).
    #[allow(clippy::too_many_arguments)]
    fn build(
        event_loop: &Bound<'_, EventLoop>,
        shell: Option<Bound<'_, PyAny>>,
        fd: RawFd,
        kind: Kind,
        sock: Option<Bound<'_, PyAny>>,
        peer: Option<SockAddr>,
        protocol: Bound<'_, PyAny>,
        server: Option<Bound<'_, PyAny>>,
        context: Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        let socket = kind == Kind::Socket;
        let buffered = socket && is_buffered_protocol(&protocol)?;
        let tls = if socket {
            tls::core_of(&protocol)?
        } else {
            None
        };
        // NOTE: asyncio's pipe transports do not claim their fd (add_reader
        // on it is allowed), its socket transports do.
        if socket {
            event_loop.get().set_transport_fd(fd, true);
        }
        event_loop.get().metrics.transports_opened.add(1);
        Ok(Self {
            event_loop: event_loop.clone().unbind(),
            shell: Mutex::new(shell.map(Bound::unbind)),
            fd,
            kind,
            local: if socket {
                SockAddr::local(fd).ok()
            } else {
                None
            },
            peer,
            state: Mutex::new(State {
                tls,
                ..State::new(
                    Some(protocol.unbind()),
                    buffered,
                    Some(context.unbind()),
                    server.map(Bound::unbind),
                    sock.map(Bound::unbind),
                )
            }),
        })
    }

    /// A transport for a connection accepted natively (`accept::Acceptor`):
    /// it owns `fd` (no Python socket object until one is asked for) and
    /// runs in `context`. The caller sets its shell.
    pub(crate) fn accepted(
        event_loop: &Bound<'_, EventLoop>,
        fd: RawFd,
        peer: SockAddr,
        protocol: Bound<'_, PyAny>,
        server: Option<Bound<'_, PyAny>>,
        context: Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        Self::build(
            event_loop,
            None,
            fd,
            Kind::Socket,
            None,
            Some(peer),
            protocol,
            server,
            context,
        )
    }

    /// The Python socket object, made on first use for an accepted
    /// connection; `None` once the socket is closed.
    fn socket<'py>(slf: &Bound<'py, Self>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let py = slf.py();
        let this = slf.get();
        {
            let st = this.state.lock();
            if !st.open {
                return Ok(None);
            }
            if let Some(s) = &st.sock {
                return Ok(Some(s.bind(py).clone()));
            }
        }
        // socket.socket(fileno=fd) reads family, type and proto from the fd.
        let kwargs = pyo3::types::PyDict::new(py);
        kwargs.set_item(intern!(py, "fileno"), this.fd)?;
        let sock = SOCKET
            .import(py, "socket", "socket")?
            .call((), Some(&kwargs))?;
        sock.call_method1(intern!(py, "setblocking"), (false,))?;
        let mut st = this.state.lock();
        match &st.sock {
            // NOTE: made meanwhile by code the calls above ran (a GC
            // finalizer): keep that one; ours must not close the fd.
            Some(s) => {
                let s = s.bind(py).clone();
                drop(st);
                sock.call_method0(intern!(py, "detach"))?;
                Ok(Some(s))
            }
            None => {
                st.sock = Some(sock.clone().unbind());
                Ok(Some(sock))
            }
        }
    }

    /// getsockname()/getpeername() as asyncio's `_extra` holds them.
    fn name<'py>(slf: &Bound<'py, Self>, peer: bool) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let this = slf.get();
        let addr = if peer { &this.peer } else { &this.local };
        let Some(addr) = addr else {
            return Ok(py.None().into_bound(py));
        };
        if let Some(obj) = addr.to_py(py)? {
            return Ok(obj);
        }
        // A family sockaddr does not convert: ask the socket module.
        let Some(sock) = Self::socket(slf)? else {
            return Ok(py.None().into_bound(py));
        };
        let method = if peer {
            intern!(py, "getpeername")
        } else {
            intern!(py, "getsockname")
        };
        Ok(sock
            .call_method0(method)
            .unwrap_or_else(|_| py.None().into_bound(py)))
    }

    /// `get_extra_info('socket')`: a `TransportSocket`, the same one on
    /// every call.
    fn transport_socket<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        if let Some(t) = &slf.get().state.lock().trsock {
            return Ok(t.bind(py).clone());
        }
        let sock = match Self::socket(slf)? {
            Some(s) => s,
            // NOTE: closed before anyone asked: asyncio's would be a closed
            // socket object; so is this one (same family and type).
            None => {
                let family = slf
                    .get()
                    .local
                    .as_ref()
                    .map_or(libc::AF_INET, |a| a.family());
                let s = SOCKET
                    .import(py, "socket", "socket")?
                    .call1((family, libc::SOCK_STREAM))?;
                s.call_method0(intern!(py, "close"))?;
                s
            }
        };
        let t = TRANSPORT_SOCKET
            .import(py, "asyncio.trsock", "TransportSocket")?
            .call1((sock,))?;
        let mut st = slf.get().state.lock();
        Ok(st.trsock.get_or_insert_with(|| t.unbind()).bind(py).clone())
    }
}

impl StreamTransport {
    pub(crate) fn closing(&self) -> bool {
        self.state.lock().closing
    }
}

impl Drop for StreamTransport {
    fn drop(&mut self) {
        let st = self.state.get_mut();
        if !std::mem::replace(&mut st.open, false) {
            return;
        }
        st.release_growth();
        self.event_loop.get().set_transport_fd(self.fd, false);
        if st.sock.is_none() {
            // SAFETY: the fd is ours alone and still open (never closed:
            // the shell's __del__ did not run); nothing else uses it.
            unsafe { libc::close(self.fd) };
        }
    }
}

unsafe extern "C" fn fast_read_ready(
    slf: *mut ffi::PyObject,
    _: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: METH_NOARGS method of StreamTransport, GIL held.
    unsafe { method_returning_none::<StreamTransport>(slf, |t| StreamTransport::read_ready(t)) }
}

unsafe extern "C" fn fast_write_ready(
    slf: *mut ffi::PyObject,
    _: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: METH_NOARGS method of StreamTransport, GIL held.
    unsafe { method_returning_none::<StreamTransport>(slf, |t| StreamTransport::write_ready(t)) }
}

unsafe extern "C" fn fast_write(
    slf: *mut ffi::PyObject,
    data: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: METH_O method of StreamTransport (the descriptor checked the
    // type), GIL held, `data` a live borrowed object.
    unsafe {
        crate::event_loop::fastcall::guard(|py| {
            let t = Borrowed::from_ptr(py, slf).cast_unchecked::<StreamTransport>();
            StreamTransport::write(&t, &Borrowed::from_ptr(py, data))?;
            Ok(py.None().into_ptr())
        })
    }
}

/// Installs `write` (the hottest call of every protocol) and the readiness
/// callbacks as hand-written entries (pyo3's shim costs ~250 instructions
/// per call).
pub(crate) fn install(py: Python<'_>) -> PyResult<()> {
    use crate::event_loop::fastcall::{add_methods, noargs, one_arg};
    add_methods(
        &py.get_type::<StreamTransport>(),
        vec![
            one_arg(
                c"write",
                c"write($self, data, /)\n--\n\nWrite bytes-like data to the transport.",
                fast_write,
            ),
            noargs(
                c"_read_ready",
                c"_read_ready($self, /)\n--\n\nThe reader callback: one read.",
                fast_read_ready,
            ),
            noargs(
                c"_write_ready",
                c"_write_ready($self, /)\n--\n\nThe writer callback: flush the buffer.",
                fast_write_ready,
            ),
        ],
    )
}
