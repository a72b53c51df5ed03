//! The data path of TLS connections.
//!
//! The protocol between a TLS connection's socket transport and the
//! application is asyncio's own `sslproto.SSLProtocol` (the running Python's
//! copy, 3.11+): its state machine, handshake, shutdown, timeouts, errors and
//! the application transport stay asyncio's code. `ferroloop._tls` subclasses
//! it and hands the per-record work of the WRAPPED state to this module:
//!
//! - `feed`: what arrived on the socket goes into the incoming `MemoryBIO`
//!   straight from the transport's read buffer (no `get_buffer` /
//!   `buffer_updated` round trip through Python), then, while the connection
//!   is WRAPPED, the records are decrypted with the C `_ssl` object's `read`
//!   (no `ssl.SSLObject` wrapper, one `data_received` per burst), the
//!   outgoing BIO is flushed to the transport and read flow control is
//!   checked: asyncio's `_do_read` / `_do_read__copied` /
//!   `_process_outgoing` / `_control_ssl_reading`.
//! - `_write_appdata`: asyncio's `_write_appdata` / `_do_write` /
//!   `_process_outgoing` as one native method of the protocol class, and
//!   the application transport's `write` before it.
//! - `_do_handshake`, `_do_read__copied`, `_do_read__buffered` (straight
//!   into a BufferedProtocol's buffer) and `_process_outgoing` replace
//!   asyncio's on the protocol class, for the paths that stay asyncio's (after the
//!   handshake, flushing before shutdown, resumed reading).
//!
//! Everything else, and every state but WRAPPED, calls back into asyncio's
//! Python methods, so behaviour is asyncio's by construction. The protocol's
//! state is read from its instance dict, where asyncio's methods keep it.
//!
//! "Would block" without an exception: SSL_read consumes whole TLS records
//! (Python never turns on read-ahead), so the incoming BIO holds complete
//! records followed by at most one incomplete one. `Framing` follows the
//! record headers of what was fed, and the read loop stops when only the
//! incomplete record is left instead of letting `read` raise
//! `SSLWantReadError` (~2.5 µs each). Until the framing is in step with the
//! BIO (at the start, and after a record header it cannot trust), the loop
//! reads until `SSLWantReadError` as asyncio does.

use std::os::raw::c_char;
use std::sync::atomic::{AtomicIsize, Ordering};

use parking_lot::Mutex;
use pyo3::exceptions::{PyException, PyRuntimeError, PyTypeError};
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyType};
use pyo3::{PyTraverseError, PyVisit};

use super::face::{object_slot_offset, slot_object};
use super::stream::WritableBuffer;
use crate::event_loop::fastcall::{add_methods, guard, noargs, one_arg};
use crate::sock_io;

/// What the native path needs from the running Python's `sslproto`.
struct Consts {
    /// `ferroloop._tls.SSLProtocol`.
    protocol_type: Py<PyType>,
    /// `SSLProtocolState.WRAPPED`.
    wrapped: Py<PyAny>,
    /// `sslproto.SSLAgainErrors`: what `_do_read` / `_do_write` swallow.
    again_errors: Py<PyAny>,
    /// `ssl.SSLError`: what ends `_do_handshake`.
    ssl_error: Py<PyAny>,
    /// `ssl.SSLObject`: the class whose C object is called directly.
    ssl_object: Py<PyAny>,
}

static CONSTS: PyOnceLock<Consts> = PyOnceLock::new();
/// Byte offset of the protocol class's `_tls` slot (0: not installed).
static TLS_OFFSET: AtomicIsize = AtomicIsize::new(0);

fn consts(py: Python<'_>) -> PyResult<&Consts> {
    CONSTS
        .get(py)
        .ok_or_else(|| PyRuntimeError::new_err("ferroloop's TLS path is not installed"))
}

/// TLS record header: content type, version, 16-bit length.
const HEADER: usize = 5;
/// The largest record body a peer may send (TLS 1.2: 2^14 + 2048). A
/// header announcing more is left for OpenSSL to refuse.
const MAX_BODY: usize = (1 << 14) + 2048;

/// Where the bytes fed so far stand in the record stream.
#[derive(Default, Debug)]
struct Framing {
    /// The position is known (see the module notes).
    synced: bool,
    /// The header of the current record, as far as it has arrived.
    header: [u8; HEADER],
    header_len: usize,
    /// Body bytes of the current record still to come (after its header).
    body_left: usize,
    /// Bytes of the current, incomplete record that were fed.
    partial: usize,
}

impl Framing {
    /// Follows `data`, fed after everything before it.
    fn feed(&mut self, mut data: &[u8]) {
        if !self.synced {
            return;
        }
        while !data.is_empty() {
            if self.header_len < HEADER {
                let take = (HEADER - self.header_len).min(data.len());
                self.header[self.header_len..self.header_len + take].copy_from_slice(&data[..take]);
                self.header_len += take;
                self.partial += take;
                data = &data[take..];
                if self.header_len < HEADER {
                    return;
                }
                let body = usize::from(u16::from_be_bytes([self.header[3], self.header[4]]));
                if body > MAX_BODY {
                    // Not a record OpenSSL will wait for: let it see it.
                    self.synced = false;
                    return;
                }
                self.body_left = body;
            }
            let take = self.body_left.min(data.len());
            self.body_left -= take;
            self.partial += take;
            data = &data[take..];
            if self.body_left == 0 {
                // A complete record.
                self.header_len = 0;
                self.partial = 0;
            }
        }
    }

    /// Whether `bio_pending` bytes in the incoming BIO hold a complete
    /// record: None while out of step.
    fn complete_record(&self, bio_pending: usize) -> Option<bool> {
        self.synced.then_some(bio_pending > self.partial)
    }

    /// `read` raised "want read" with the BIO empty: the next byte fed
    /// starts a record.
    fn resync(&mut self) {
        *self = Framing {
            synced: true,
            ..Framing::default()
        };
    }
}

/// Per-connection native state of `ferroloop._tls.SSLProtocol` (its `_tls`
/// slot).
#[pyclass(module = "ferroloop._ferroloop", frozen)]
pub(crate) struct TlsCore {
    incoming: Py<PyAny>,
    outgoing: Py<PyAny>,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// (`ssl.SSLObject`, its C `_sslobj`), once seen in the WRAPPED state.
    ssl: Option<(Py<PyAny>, Py<PyAny>)>,
    framing: Framing,
}

/// An attribute of the protocol, from its instance dict (asyncio's
/// SSLProtocol keeps all its state there).
fn item<'py>(
    dict: &Bound<'py, PyDict>,
    key: &Bound<'py, pyo3::types::PyString>,
) -> PyResult<Bound<'py, PyAny>> {
    dict.get_item(key)?.ok_or_else(|| {
        pyo3::exceptions::PyAttributeError::new_err(format!("SSLProtocol has no attribute {key}"))
    })
}

fn instance_dict<'py>(protocol: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyDict>> {
    // SAFETY: `protocol` is live; PyObject_GenericGetDict returns a new
    // reference to its instance dict (made if missing) or NULL with an
    // exception set.
    let d = unsafe {
        Bound::from_owned_ptr_or_err(
            protocol.py(),
            ffi::PyObject_GenericGetDict(protocol.as_ptr(), std::ptr::null_mut()),
        )?
    };
    Ok(d.cast_into::<PyDict>()?)
}

/// A read-only memoryview of `data` for `f`: see `with_memory`.
fn with_view<'py, R>(
    py: Python<'py>,
    data: &[u8],
    f: impl FnOnce(&Bound<'py, PyAny>) -> PyResult<R>,
) -> PyResult<R> {
    // SAFETY: `data` is readable for the duration of the call.
    unsafe { with_memory(py, data.as_ptr().cast_mut(), data.len(), ffi::PyBUF_READ, f) }
}

/// A writable memoryview of `room` for `f`: see `with_memory`.
fn with_view_mut<'py, R>(
    py: Python<'py>,
    room: &mut [u8],
    f: impl FnOnce(&Bound<'py, PyAny>) -> PyResult<R>,
) -> PyResult<R> {
    // SAFETY: `room` is lent mutably for the duration of the call.
    unsafe { with_memory(py, room.as_mut_ptr(), room.len(), ffi::PyBUF_WRITE, f) }
}

/// A memoryview of `len` bytes at `ptr` for `f`, then released unless
/// nothing else holds it (so nothing can reach the memory through it after
/// this returns).
///
/// # Safety
/// The memory must stay valid for the call, and writable if `flags` is
/// `PyBUF_WRITE`.
unsafe fn with_memory<'py, R>(
    py: Python<'py>,
    ptr: *mut u8,
    len: usize,
    flags: std::os::raw::c_int,
    f: impl FnOnce(&Bound<'py, PyAny>) -> PyResult<R>,
) -> PyResult<R> {
    // SAFETY: per the contract; returns a new reference or NULL with an
    // exception set.
    let view = unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            ffi::PyMemoryView_FromMemory(ptr.cast::<c_char>(), len as ffi::Py_ssize_t, flags),
        )?
    };
    let result = f(&view);
    // SAFETY: `view` is a live object.
    if unsafe { ffi::Py_REFCNT(view.as_ptr()) } > 1 {
        view.call_method0(intern!(py, "release"))?;
    }
    result
}

impl TlsCore {
    /// The C SSL object of the protocol's `_sslobj` (cached).
    fn sslobj<'py>(&self, dict: &Bound<'py, PyDict>) -> PyResult<Bound<'py, PyAny>> {
        let py = dict.py();
        let wrapper = item(dict, intern!(py, "_sslobj"))?;
        {
            let inner = self.inner.lock();
            if let Some((w, c)) = &inner.ssl {
                if w.is(&wrapper) {
                    return Ok(c.bind(py).clone());
                }
            }
        }
        // NOTE: an SSLContext whose `sslobject_class` is a subclass may
        // override read/write/do_handshake in Python: call those through
        // the wrapper; only the stdlib's own class is bypassed.
        let c = if wrapper.get_type().is(consts(py)?.ssl_object.bind(py)) {
            wrapper.getattr(intern!(py, "_sslobj"))?
        } else {
            wrapper.clone()
        };
        let old = self
            .inner
            .lock()
            .ssl
            .replace((wrapper.unbind(), c.clone().unbind()));
        drop(old);
        Ok(c)
    }

    /// What arrived on the socket (`data`, the transport's read buffer)
    /// into the incoming BIO: the first half of asyncio's `buffer_updated`.
    /// Runs no Python code but the BIO's `write`.
    pub(crate) fn fill(&self, py: Python<'_>, data: &[u8]) -> PyResult<()> {
        let incoming = self.incoming.bind(py);
        with_view(py, data, |view| {
            incoming
                .call_method1(intern!(py, "write"), (view,))
                .map(drop)
        })?;
        self.inner.lock().framing.feed(data);
        Ok(())
    }

    /// The rest of asyncio's `buffer_updated`: the WRAPPED state's reads
    /// here, the other states' processing in asyncio's code.
    pub(crate) fn process(slf: &Bound<'_, Self>, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let c = consts(py)?;
        let dict = instance_dict(protocol)?;
        if !item(&dict, intern!(py, "_state"))?.is(&c.wrapped) {
            // Handshake, flushing, shutdown: asyncio's code.
            protocol.call_method0(intern!(py, "_ferroloop_fed"))?;
            return Ok(());
        }
        Self::do_read(slf, protocol, &dict)
    }

    /// asyncio's `_do_read` in the WRAPPED state.
    fn do_read(
        slf: &Bound<'_, Self>,
        protocol: &Bound<'_, PyAny>,
        dict: &Bound<'_, PyDict>,
    ) -> PyResult<()> {
        let py = slf.py();
        let result = (|| {
            if !item(dict, intern!(py, "_app_reading_paused"))?.is_truthy()? {
                if item(dict, intern!(py, "_app_protocol_is_buffer"))?.is_truthy()? {
                    Self::read_buffered(slf, protocol, dict)?;
                } else {
                    Self::read_copied(slf, protocol, dict)?;
                }
                if item(dict, intern!(py, "_write_backlog"))?.is_truthy()? {
                    protocol.call_method0(intern!(py, "_do_write"))?;
                } else {
                    Self::process_outgoing(slf, protocol, dict)?;
                }
            }
            Self::control_ssl_reading(slf, protocol, dict)
        })();
        Self::fatal_on_error(protocol, result)
    }

    /// asyncio's `except Exception as ex: self._fatal_error(ex, 'Fatal
    /// error on SSL protocol')`.
    fn fatal_on_error(protocol: &Bound<'_, PyAny>, result: PyResult<()>) -> PyResult<()> {
        let py = protocol.py();
        match result {
            Err(e) if e.is_instance_of::<PyException>(py) => {
                protocol.call_method1(
                    intern!(py, "_fatal_error"),
                    (e.into_value(py), "Fatal error on SSL protocol"),
                )?;
                Ok(())
            }
            other => other,
        }
    }

    /// asyncio's `_do_read__copied`: decrypt what is there, one
    /// `data_received` for all of it, then close_notify handling. Records
    /// are decrypted into the thread's scratch buffer (`read(n, buffer)`)
    /// and copied once into the `bytes` handed over; `read(max_size)` would
    /// allocate 256 KiB per record and shrink it.
    fn read_copied(
        slf: &Bound<'_, Self>,
        protocol: &Bound<'_, PyAny>,
        dict: &Bound<'_, PyDict>,
    ) -> PyResult<()> {
        let py = slf.py();
        let sslobj = slf.get().sslobj(dict)?;
        let (data, close_notify) =
            sock_io::with_scratch(sock_io::SCRATCH_SIZE, |buf| slf.get().decrypt(&sslobj, buf))?;
        if let Some(data) = data {
            item(dict, intern!(py, "_app_protocol"))?
                .call_method1(intern!(py, "data_received"), (data,))?;
        }
        if close_notify {
            protocol.call_method0(intern!(py, "_call_eof_received"))?;
            protocol.call_method0(intern!(py, "_start_shutdown"))?;
        }
        Ok(())
    }

    /// Decrypts what the incoming BIO holds, using `buf` as room: the data
    /// (None if there was none) and whether close_notify arrived. A
    /// non-"again" SSL error drops what was decrypted, as asyncio's loop does.
    fn decrypt<'py>(
        &self,
        sslobj: &Bound<'py, PyAny>,
        buf: &mut [u8],
    ) -> PyResult<(Option<Bound<'py, PyBytes>>, bool)> {
        let py = sslobj.py();
        let mut chunks: Vec<Bound<'py, PyBytes>> = Vec::new();
        let close_notify = loop {
            let (filled, close_notify) = self.decrypt_into(sslobj, buf)?;
            if filled > 0 {
                chunks.push(PyBytes::new(py, &buf[..filled]));
            }
            if filled < buf.len() || close_notify {
                break close_notify;
            }
        };
        let data = match chunks.len() {
            0 => None,
            1 => chunks.pop(),
            _ => Some(join(py, &chunks)?),
        };
        Ok((data, close_notify))
    }

    /// Decrypts into `buf` until it is full, no complete record is left
    /// ("again"), or close_notify: how many bytes, and whether close_notify
    /// arrived.
    fn decrypt_into(&self, sslobj: &Bound<'_, PyAny>, buf: &mut [u8]) -> PyResult<(usize, bool)> {
        let py = sslobj.py();
        let c = consts(py)?;
        let incoming = self.incoming.bind(py);
        let mut filled = 0;
        while filled < buf.len() {
            let pending: usize = incoming.getattr(intern!(py, "pending"))?.extract()?;
            if self.inner.lock().framing.complete_record(pending) == Some(false) {
                break;
            }
            let room = &mut buf[filled..];
            let len = room.len();
            let read = with_view_mut(py, room, |view| {
                sslobj.call_method1(intern!(py, "read"), (len, view))
            });
            match read {
                Ok(n) => {
                    let n: usize = n.extract()?;
                    if n == 0 {
                        return Ok((filled, true));
                    }
                    filled += n;
                }
                Err(e) if e.matches(py, c.again_errors.bind(py))? => {
                    let pending: usize = incoming.getattr(intern!(py, "pending"))?.extract()?;
                    if pending == 0 {
                        self.inner.lock().framing.resync();
                    }
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok((filled, false))
    }

    /// asyncio's `_do_read__buffered`: decrypt straight into the
    /// application's `get_buffer()` (sized by what the BIO holds), then
    /// `buffer_updated`; a full buffer schedules another `_do_read`, as
    /// asyncio's does. NOTE: asyncio reads the rest of a burst into
    /// `buf[offset:]`, a copy for a bytearray (those bytes are lost there);
    /// here every byte lands in the buffer itself.
    fn read_buffered(
        slf: &Bound<'_, Self>,
        protocol: &Bound<'_, PyAny>,
        dict: &Bound<'_, PyDict>,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let sslobj = this.sslobj(dict)?;
        let hint: usize = this
            .incoming
            .bind(py)
            .getattr(intern!(py, "pending"))?
            .extract()?;
        let buf = item(dict, intern!(py, "_app_protocol_get_buffer"))?.call1((hint,))?;
        let mut view = WritableBuffer::get(&buf)?;
        let wants = view.len();
        // NOTE: asyncio's read(0, buf) answers 0, which it takes for
        // close_notify.
        let (offset, close_notify) = if wants == 0 {
            (0, true)
        } else {
            this.decrypt_into(&sslobj, view.as_mut_slice())?
        };
        drop(view);
        if offset == wants && !close_notify {
            let again = protocol.getattr(intern!(py, "_do_read"))?;
            item(dict, intern!(py, "_loop"))?.call_method1(intern!(py, "call_soon"), (again,))?;
        }
        if offset > 0 {
            item(dict, intern!(py, "_app_protocol_buffer_updated"))?.call1((offset,))?;
        }
        if close_notify {
            protocol.call_method0(intern!(py, "_call_eof_received"))?;
            protocol.call_method0(intern!(py, "_start_shutdown"))?;
        }
        Ok(())
    }

    /// asyncio's `_process_outgoing` and `_control_app_writing`.
    fn process_outgoing(
        slf: &Bound<'_, Self>,
        protocol: &Bound<'_, PyAny>,
        dict: &Bound<'_, PyDict>,
    ) -> PyResult<()> {
        let py = slf.py();
        let outgoing = slf.get().outgoing.bind(py);
        if !item(dict, intern!(py, "_ssl_writing_paused"))?.is_truthy()? {
            let data = outgoing.call_method0(intern!(py, "read"))?;
            if data.len()? > 0 {
                item(dict, intern!(py, "_transport"))?
                    .call_method1(intern!(py, "write"), (data,))?;
            }
        }
        let size: usize = outgoing
            .getattr(intern!(py, "pending"))?
            .extract::<usize>()?
            + item(dict, intern!(py, "_write_buffer_size"))?.extract::<usize>()?;
        let paused = item(dict, intern!(py, "_app_writing_paused"))?.is_truthy()?;
        let crosses = if paused {
            size <= item(dict, intern!(py, "_outgoing_low_water"))?.extract::<usize>()?
        } else {
            size >= item(dict, intern!(py, "_outgoing_high_water"))?.extract::<usize>()?
        };
        if crosses {
            protocol.call_method0(intern!(py, "_control_app_writing"))?;
        }
        Ok(())
    }

    /// asyncio's `_control_ssl_reading`, calling it only when a water mark
    /// is crossed.
    fn control_ssl_reading(
        slf: &Bound<'_, Self>,
        protocol: &Bound<'_, PyAny>,
        dict: &Bound<'_, PyDict>,
    ) -> PyResult<()> {
        let py = slf.py();
        let size: usize = slf
            .get()
            .incoming
            .bind(py)
            .getattr(intern!(py, "pending"))?
            .extract()?;
        let paused = item(dict, intern!(py, "_ssl_reading_paused"))?.is_truthy()?;
        let crosses = if paused {
            size <= item(dict, intern!(py, "_incoming_low_water"))?.extract::<usize>()?
        } else {
            size >= item(dict, intern!(py, "_incoming_high_water"))?.extract::<usize>()?
        };
        if crosses {
            protocol.call_method0(intern!(py, "_control_ssl_reading"))?;
        }
        Ok(())
    }

    /// asyncio's `_write_appdata`: in the WRAPPED state with nothing queued,
    /// each piece is encrypted at once (`_do_write`); anything else is
    /// asyncio's code.
    fn write_appdata(
        slf: &Bound<'_, Self>,
        protocol: &Bound<'_, PyAny>,
        list_of_data: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let py = slf.py();
        let dict = instance_dict(protocol)?;
        if !Self::can_write_now(&dict)? {
            protocol.call_method1(intern!(py, "_ferroloop_write_appdata"), (list_of_data,))?;
            return Ok(());
        }
        let result = list_of_data
            .try_iter()
            .and_then(|items| Self::encrypt(slf, &dict, items));
        let result = result.and_then(|()| Self::process_outgoing(slf, protocol, &dict));
        Self::fatal_on_error(protocol, result)
    }

    /// The application transport's `write(data)` (asyncio's
    /// `_SSLProtocolTransport.write`), after its checks.
    fn write_one(
        slf: &Bound<'_, Self>,
        protocol: &Bound<'_, PyAny>,
        data: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let py = slf.py();
        let dict = instance_dict(protocol)?;
        if !Self::can_write_now(&dict)? {
            let list_of_data = pyo3::types::PyTuple::new(py, [data])?;
            protocol.call_method1(intern!(py, "_ferroloop_write_appdata"), (list_of_data,))?;
            return Ok(());
        }
        let result = Self::encrypt(slf, &dict, std::iter::once(Ok(data.clone())));
        let result = result.and_then(|()| Self::process_outgoing(slf, protocol, &dict));
        Self::fatal_on_error(protocol, result)
    }

    /// asyncio's `_do_handshake`, on the C SSL object: "again" flushes what
    /// the handshake wrote, an `SSLError` (or success) completes it.
    fn do_handshake(
        slf: &Bound<'_, Self>,
        protocol: &Bound<'_, PyAny>,
        dict: &Bound<'_, PyDict>,
    ) -> PyResult<()> {
        let py = slf.py();
        let c = consts(py)?;
        let sslobj = slf.get().sslobj(dict)?;
        match sslobj.call_method0(intern!(py, "do_handshake")) {
            Ok(_) => {
                crate::metrics::count_tls_handshake();
                protocol.call_method1(intern!(py, "_on_handshake_complete"), (py.None(),))?;
            }
            Err(e) if e.matches(py, c.again_errors.bind(py))? => {
                Self::process_outgoing(slf, protocol, dict)?;
            }
            Err(e) if e.matches(py, c.ssl_error.bind(py))? => {
                protocol
                    .call_method1(intern!(py, "_on_handshake_complete"), (e.into_value(py),))?;
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// WRAPPED with nothing queued: what asyncio's `_write_appdata` would
    /// write at once.
    fn can_write_now(dict: &Bound<'_, PyDict>) -> PyResult<bool> {
        let py = dict.py();
        Ok(item(dict, intern!(py, "_state"))?.is(&consts(py)?.wrapped)
            && !item(dict, intern!(py, "_write_backlog"))?.is_truthy()?)
    }

    /// asyncio's `_do_write` for `items` with an empty backlog: each piece
    /// into the SSL object; what it does not take (a partial write,
    /// SSLAgainErrors) and everything after it waits in the backlog.
    fn encrypt<'py>(
        slf: &Bound<'py, Self>,
        dict: &Bound<'py, PyDict>,
        mut items: impl Iterator<Item = PyResult<Bound<'py, PyAny>>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let c = consts(py)?;
        let sslobj = slf.get().sslobj(dict)?;
        while let Some(data) = items.next() {
            let data = data?;
            let len = data.len()?;
            let written = match sslobj.call_method1(intern!(py, "write"), (&data,)) {
                Ok(n) => n.extract::<usize>()?,
                Err(e) if e.matches(py, c.again_errors.bind(py))? => 0,
                Err(e) => return Err(e),
            };
            if written < len {
                let rest = if written == 0 {
                    data
                } else {
                    data.get_item(pyo3::types::PySlice::new(
                        py,
                        written as isize,
                        len as isize,
                        1,
                    ))?
                };
                let backlog = item(dict, intern!(py, "_write_backlog"))?;
                let mut queued = len - written;
                backlog.call_method1(intern!(py, "append"), (rest,))?;
                for more in items.by_ref() {
                    let more = more?;
                    queued += more.len()?;
                    backlog.call_method1(intern!(py, "append"), (more,))?;
                }
                let size: usize = item(dict, intern!(py, "_write_buffer_size"))?.extract()?;
                dict.set_item(intern!(py, "_write_buffer_size"), size + queued)?;
                break;
            }
        }
        Ok(())
    }
}

/// `b''.join(chunks)`.
fn join<'py>(py: Python<'py>, chunks: &[Bound<'py, PyBytes>]) -> PyResult<Bound<'py, PyBytes>> {
    let total = chunks.iter().map(|c| c.as_bytes().len()).sum();
    PyBytes::new_with(py, total, |out| {
        let mut at = 0;
        for c in chunks {
            let b = c.as_bytes();
            out[at..at + b.len()].copy_from_slice(b);
            at += b.len();
        }
        Ok(())
    })
}

#[pymethods]
impl TlsCore {
    #[new]
    fn new(incoming: Bound<'_, PyAny>, outgoing: Bound<'_, PyAny>) -> Self {
        Self {
            incoming: incoming.unbind(),
            outgoing: outgoing.unbind(),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Bytes reached the incoming BIO without `fill` (asyncio's Python
    /// `buffer_updated`, e.g. TLS over TLS): the framing is out of step.
    fn _unsync(&self) {
        self.inner.lock().framing = Framing::default();
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.incoming)?;
        visit.call(&self.outgoing)?;
        if let Some(inner) = self.inner.try_lock() {
            if let Some((w, c)) = &inner.ssl {
                visit.call(w)?;
                visit.call(c)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        let old = self.inner.lock().ssl.take();
        drop(old);
    }
}

/// The `TlsCore` of a protocol of the installed class, if it is one.
pub(crate) fn core_of(protocol: &Bound<'_, PyAny>) -> PyResult<Option<Py<TlsCore>>> {
    let py = protocol.py();
    let Some(c) = CONSTS.get(py) else {
        return Ok(None);
    };
    if !protocol.is_instance(c.protocol_type.bind(py))? {
        return Ok(None);
    }
    let core = protocol.getattr(intern!(py, "_tls"))?;
    Ok(Some(core.cast_into::<TlsCore>()?.unbind()))
}

/// The core in `protocol`'s `_tls` slot.
///
/// # Safety
/// `protocol` must be a live instance of the installed protocol class (the
/// method descriptor checks that), with the GIL held.
unsafe fn slot_core<'a, 'py>(
    py: Python<'py>,
    protocol: *mut ffi::PyObject,
) -> PyResult<Borrowed<'a, 'py, TlsCore>> {
    // SAFETY: the offset is the protocol class's `_tls` slot (install_tls).
    let core = unsafe {
        slot_object(
            py,
            protocol,
            TLS_OFFSET.load(Ordering::Relaxed),
            "the TLS protocol is not initialized",
        )?
    };
    core.cast::<TlsCore>()
        .map_err(|_| PyTypeError::new_err("_tls is not a TlsCore"))
}

unsafe extern "C" fn protocol_write_appdata(
    slf: *mut ffi::PyObject,
    list_of_data: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: METH_O method of the protocol class (the descriptor checked
    // the type), GIL held, `list_of_data` a live borrowed object.
    unsafe {
        guard(|py| {
            let core = slot_core(py, slf)?;
            let protocol = Borrowed::from_ptr(py, slf);
            TlsCore::write_appdata(&core, &protocol, &Borrowed::from_ptr(py, list_of_data))?;
            Ok(py.None().into_ptr())
        })
    }
}

unsafe extern "C" fn app_transport_write(
    slf: *mut ffi::PyObject,
    data: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: METH_O method of the application transport class (the
    // descriptor checked the type), GIL held, `data` a live borrowed object.
    unsafe {
        guard(|py| {
            let transport = Borrowed::from_ptr(py, slf);
            let data = Borrowed::from_ptr(py, data);
            app_write(&transport, &data)?;
            Ok(py.None().into_ptr())
        })
    }
}

/// asyncio's `_SSLProtocolTransport.write`.
fn app_write(transport: &Bound<'_, PyAny>, data: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = transport.py();
    // SAFETY: type checks on a live object.
    let bytes_like = unsafe {
        ffi::PyBytes_Check(data.as_ptr()) != 0
            || ffi::PyByteArray_Check(data.as_ptr()) != 0
            || ffi::PyMemoryView_Check(data.as_ptr()) != 0
    };
    if !bytes_like {
        return Err(PyTypeError::new_err(format!(
            "data: expecting a bytes-like instance, got {}",
            data.get_type().name()?
        )));
    }
    if !data.is_truthy()? {
        return Ok(());
    }
    let protocol = item(&instance_dict(transport)?, intern!(py, "_ssl_protocol"))?;
    match core_of(&protocol)? {
        Some(core) => TlsCore::write_one(core.bind(py), &protocol, data),
        None => {
            let list_of_data = pyo3::types::PyTuple::new(py, [data])?;
            protocol.call_method1(intern!(py, "_write_appdata"), (list_of_data,))?;
            Ok(())
        }
    }
}

/// A `TlsCore` operation on (core, protocol, the protocol's instance dict).
type ProtocolOp =
    for<'py> fn(&Bound<'py, TlsCore>, &Bound<'py, PyAny>, &Bound<'py, PyDict>) -> PyResult<()>;

/// A METH_NOARGS method of the protocol class running `f` on its core,
/// itself and its instance dict.
///
/// # Safety
/// `slf` must be an instance of the protocol class (the method descriptor
/// checks that), with the GIL held.
unsafe fn protocol_noargs(slf: *mut ffi::PyObject, f: ProtocolOp) -> *mut ffi::PyObject {
    // SAFETY: per the contract.
    unsafe {
        guard(|py| {
            let core = slot_core(py, slf)?;
            let protocol = Borrowed::from_ptr(py, slf);
            let dict = instance_dict(&protocol)?;
            f(&core, &protocol, &dict)?;
            Ok(py.None().into_ptr())
        })
    }
}

unsafe extern "C" fn protocol_do_read_copied(
    slf: *mut ffi::PyObject,
    _: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: METH_NOARGS method of the protocol class, GIL held.
    unsafe { protocol_noargs(slf, TlsCore::read_copied) }
}

unsafe extern "C" fn protocol_do_read_buffered(
    slf: *mut ffi::PyObject,
    _: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: METH_NOARGS method of the protocol class, GIL held.
    unsafe { protocol_noargs(slf, TlsCore::read_buffered) }
}

unsafe extern "C" fn protocol_process_outgoing(
    slf: *mut ffi::PyObject,
    _: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: METH_NOARGS method of the protocol class, GIL held.
    unsafe { protocol_noargs(slf, TlsCore::process_outgoing) }
}

unsafe extern "C" fn protocol_do_handshake(
    slf: *mut ffi::PyObject,
    _: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: METH_NOARGS method of the protocol class, GIL held.
    unsafe { protocol_noargs(slf, TlsCore::do_handshake) }
}

/// Installs the native path for `protocol_type` (`ferroloop._tls.SSLProtocol`,
/// whose `_tls` slot holds a `TlsCore`): its `_write_appdata`, feeding from
/// stream transports, and the `write` of its application transport class
/// `app_transport_type`.
#[pyfunction]
pub(crate) fn install_tls(
    protocol_type: &Bound<'_, PyType>,
    app_transport_type: &Bound<'_, PyType>,
    wrapped: Bound<'_, PyAny>,
    again_errors: Bound<'_, PyAny>,
    ssl_error: Bound<'_, PyAny>,
    ssl_object: Bound<'_, PyAny>,
) -> PyResult<()> {
    let py = protocol_type.py();
    let offset = object_slot_offset(protocol_type, "_tls")?;
    TLS_OFFSET.store(offset, Ordering::Relaxed);
    let _ = CONSTS.set(
        py,
        Consts {
            protocol_type: protocol_type.clone().unbind(),
            wrapped: wrapped.unbind(),
            again_errors: again_errors.unbind(),
            ssl_error: ssl_error.unbind(),
            ssl_object: ssl_object.unbind(),
        },
    );
    add_methods(
        protocol_type,
        vec![
            one_arg(
                c"_write_appdata",
                c"_write_appdata($self, list_of_data, /)\n--\n\nasyncio's _write_appdata, natively in the WRAPPED state.",
                protocol_write_appdata,
            ),
            noargs(
                c"_do_handshake",
                c"_do_handshake($self, /)\n--\n\nasyncio's _do_handshake, natively.",
                protocol_do_handshake,
            ),
            noargs(
                c"_do_read__copied",
                c"_do_read__copied($self, /)\n--\n\nasyncio's _do_read__copied, natively.",
                protocol_do_read_copied,
            ),
            noargs(
                c"_do_read__buffered",
                c"_do_read__buffered($self, /)\n--\n\nasyncio's _do_read__buffered, natively.",
                protocol_do_read_buffered,
            ),
            noargs(
                c"_process_outgoing",
                c"_process_outgoing($self, /)\n--\n\nasyncio's _process_outgoing and _control_app_writing, natively.",
                protocol_process_outgoing,
            ),
        ],
    )?;
    add_methods(
        app_transport_type,
        vec![one_arg(
            c"write",
            c"write($self, data, /)\n--\n\nWrite some data bytes to the transport.",
            app_transport_write,
        )],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(len: usize) -> Vec<u8> {
        let mut r = vec![23, 3, 3, (len >> 8) as u8, len as u8];
        r.resize(HEADER + len, 7);
        r
    }

    #[test]
    fn unsynced_framing_knows_nothing() {
        let mut f = Framing::default();
        f.feed(&record(10));
        assert_eq!(f.complete_record(15), None);
    }

    #[test]
    fn complete_and_partial_records() {
        let mut f = Framing::default();
        f.resync();
        assert_eq!(f.complete_record(0), Some(false));
        let mut stream = record(100);
        stream.extend(record(30));
        // All of the first record and 3 bytes of the second's header.
        f.feed(&stream[..108]);
        assert_eq!(f.complete_record(108), Some(true));
        // OpenSSL consumed the first record: 3 bytes left, incomplete.
        assert_eq!(f.complete_record(3), Some(false));
        // The rest, one byte at a time.
        for b in &stream[108..stream.len() - 1] {
            f.feed(std::slice::from_ref(b));
            assert_eq!(f.complete_record(f.partial), Some(false));
        }
        f.feed(&stream[stream.len() - 1..]);
        assert_eq!(f.complete_record(35), Some(true));
        assert_eq!(f.partial, 0);
    }

    #[test]
    fn oversized_header_unsyncs() {
        let mut f = Framing::default();
        f.resync();
        f.feed(&[23, 3, 3, 0xff, 0xff]);
        assert_eq!(f.complete_record(5), None);
    }

    #[test]
    fn empty_record_body() {
        let mut f = Framing::default();
        f.resync();
        f.feed(&record(0));
        assert_eq!(f.partial, 0);
        assert_eq!(f.complete_record(5), Some(true));
    }
}
