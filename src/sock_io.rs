//! Non-blocking socket calls for `loop.sock_*`: one syscall, and "would
//! block" is a return value, not an exception.
//!
//! NOTE: asyncio's `sock_recv` first tries `sock.recv(n)`; when no data is
//! there yet (the usual case for a server waiting for its next request) that
//! raises and catches a BlockingIOError, whose creation alone costs about a
//! microsecond. `ferroloop._sockets` calls these instead for plain
//! `socket.socket` objects (exactly that type: subclasses and stand-ins go
//! through their own methods, as asyncio would call them).

use std::cell::RefCell;
use std::os::fd::RawFd;

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::errors;

/// The largest read served from the per-thread scratch buffer (asyncio's
/// transport `max_size`).
pub const SCRATCH_SIZE: usize = 256 * 1024;

thread_local! {
    /// One read buffer per thread (in practice: per loop thread). A read
    /// lands here and only what arrived is copied into a `bytes`.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on a scratch buffer of `n` bytes (`n <= SCRATCH_SIZE` reuses
/// the thread's buffer; larger reads get their own).
pub fn with_scratch<R>(n: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
    if n > SCRATCH_SIZE {
        return f(&mut vec![0u8; n]);
    }
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < SCRATCH_SIZE {
                buf.resize(SCRATCH_SIZE, 0);
            }
            f(&mut buf[..n])
        }
        // Re-entered (cannot happen: nothing calls Python in between).
        Err(_) => f(&mut vec![0u8; n]),
    })
}

/// What one non-blocking send/recv did.
pub enum IoResult {
    Done(usize),
    WouldBlock,
    Failed(std::io::Error),
}

fn classify(rc: isize) -> IoResult {
    if rc >= 0 {
        return IoResult::Done(rc as usize);
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EINTR) => IoResult::WouldBlock,
        _ => IoResult::Failed(err),
    }
}

/// Counts bytes sent for the loop running in this thread (see `metrics`).
#[inline]
fn sent(r: IoResult) -> IoResult {
    if let IoResult::Done(n) = r {
        crate::metrics::count_sent(n);
    }
    r
}

#[inline]
fn received(r: IoResult) -> IoResult {
    if let IoResult::Done(n) = r {
        crate::metrics::count_received(n);
    }
    r
}

/// Non-blocking `send(2)` (no SIGPIPE).
pub fn send(fd: RawFd, data: &[u8]) -> IoResult {
    // SAFETY: `data` is a valid readable slice for the call; a bad fd is
    // reported as EBADF.
    sent(classify(unsafe {
        libc::send(
            fd,
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    }))
}

/// Non-blocking `recv(2)`.
pub fn recv(fd: RawFd, buf: &mut [u8]) -> IoResult {
    // SAFETY: `buf` is a valid writable slice for the call; a bad fd is
    // reported as EBADF.
    received(classify(unsafe {
        libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT)
    }))
}

/// `io(fd, buf)` (recv or read) of up to `n` bytes into the scratch
/// buffer, then a `bytes` of what arrived; None if it would block.
///
/// A read larger than the scratch buffer goes straight into a `bytes` of
/// `n`, which Python allocates: a size it cannot allocate is its
/// MemoryError, one past `Py_ssize_t` its OverflowError, as from
/// `socket.recv(n)` (never a Rust allocation failure, which aborts).
fn read_with(
    py: Python<'_>,
    fd: RawFd,
    n: usize,
    io: fn(RawFd, &mut [u8]) -> IoResult,
) -> PyResult<Option<Bound<'_, PyBytes>>> {
    if n > SCRATCH_SIZE {
        return read_into_new_bytes(py, fd, n, io);
    }
    with_scratch(n, |buf| match io(fd, buf) {
        IoResult::Done(got) => Ok(Some(PyBytes::new(py, &buf[..got]))),
        IoResult::WouldBlock => Ok(None),
        IoResult::Failed(e) => Err(errors::os_error(e)),
    })
}

/// `io(fd, buf)` of up to `n` bytes into a new `bytes` of `n` bytes; a
/// short read is copied out into one of the size that arrived.
fn read_into_new_bytes(
    py: Python<'_>,
    fd: RawFd,
    n: usize,
    io: fn(RawFd, &mut [u8]) -> IoResult,
) -> PyResult<Option<Bound<'_, PyBytes>>> {
    let Ok(size) = pyo3::ffi::Py_ssize_t::try_from(n) else {
        return Err(pyo3::exceptions::PyOverflowError::new_err(
            "Python int too large to convert to C ssize_t",
        ));
    };
    // SAFETY: with a NULL source, PyBytes_FromStringAndSize returns a new
    // bytes object of `size` uninitialized bytes (or NULL with an exception
    // set: MemoryError). It is not shared until returned, so filling it is
    // allowed; if the read comes up short, only the filled prefix is copied
    // out and the object is dropped unseen.
    unsafe {
        let obj = pyo3::ffi::PyBytes_FromStringAndSize(std::ptr::null(), size);
        if obj.is_null() {
            return Err(PyErr::fetch(py));
        }
        let bytes = Bound::from_owned_ptr(py, obj).cast_into_unchecked::<PyBytes>();
        let buf = std::slice::from_raw_parts_mut(pyo3::ffi::PyBytes_AsString(obj).cast::<u8>(), n);
        match io(fd, buf) {
            IoResult::Done(got) if got == n => Ok(Some(bytes)),
            IoResult::Done(got) => Ok(Some(PyBytes::new(py, &buf[..got]))),
            IoResult::WouldBlock => Ok(None),
            IoResult::Failed(e) => Err(errors::os_error(e)),
        }
    }
}

/// `sock.recv(n)` on fd; None if it would block. `recv(0)` is `b""` at
/// once, data or not, as from `socket.recv(0)` (recv(2) of 0 bytes would
/// say EAGAIN on an empty socket, and sock_recv would wait).
pub fn recv_bytes(py: Python<'_>, fd: RawFd, n: usize) -> PyResult<Option<Bound<'_, PyBytes>>> {
    if n == 0 {
        return Ok(Some(PyBytes::new(py, b"")));
    }
    read_with(py, fd, n, recv)
}

/// `sock.recv(n)` on fd, or None if it would block.
#[pyfunction]
pub fn recv_nowait(py: Python<'_>, fd: RawFd, n: usize) -> PyResult<Option<Py<PyBytes>>> {
    Ok(recv_bytes(py, fd, n)?.map(Bound::unbind))
}

/// `sock.send(data)` on fd: the number of bytes sent (0 if it would block).
#[pyfunction]
pub fn send_nowait(fd: RawFd, data: &[u8]) -> PyResult<usize> {
    match send(fd, data) {
        IoResult::Done(sent) => Ok(sent),
        IoResult::WouldBlock => Ok(0),
        IoResult::Failed(e) => Err(errors::os_error(e)),
    }
}

/// Non-blocking `write(2)` on a pipe, FIFO, character device or socket
/// (the fd is non-blocking: asyncio's pipe transports `os.write`).
pub fn write(fd: RawFd, data: &[u8]) -> IoResult {
    // SAFETY: `data` is a valid readable slice for the call; a bad fd is
    // reported as EBADF. SIGPIPE is ignored by Python, so a closed reader
    // is EPIPE.
    sent(classify(unsafe {
        libc::write(fd, data.as_ptr().cast(), data.len())
    }))
}

/// Non-blocking `read(2)` (asyncio's pipe transports `os.read`).
pub fn read(fd: RawFd, buf: &mut [u8]) -> IoResult {
    // SAFETY: `buf` is a valid writable slice for the call; a bad fd is
    // reported as EBADF.
    received(classify(unsafe {
        libc::read(fd, buf.as_mut_ptr().cast(), buf.len())
    }))
}

/// `os.read(fd, n)`; None if it would block.
pub fn read_bytes(py: Python<'_>, fd: RawFd, n: usize) -> PyResult<Option<Bound<'_, PyBytes>>> {
    read_with(py, fd, n, read)
}

/// A pipe read expected to be at least this large skips the scratch buffer.
pub const DIRECT_READ_MIN: usize = 32 * 1024;

/// `os.read(fd, n)` straight into a new `bytes` when at least
/// `DIRECT_READ_MIN` bytes are waiting (`FIONREAD`), one copy fewer than
/// through the scratch buffer; otherwise `read_bytes`.
///
/// NOTE: a bulk transfer (a child's output) reads 64 KiB-1 MiB at a time;
/// copying each read once more costs about a tenth of the loop thread's CPU
/// there. The ioctl is cheap next to that, and the caller asks for this
/// only after a large read.
pub fn read_bytes_direct(
    py: Python<'_>,
    fd: RawFd,
    n: usize,
) -> PyResult<Option<Bound<'_, PyBytes>>> {
    let mut waiting: libc::c_int = 0;
    // SAFETY: FIONREAD stores an int through the pointer; an fd that does
    // not support it answers ENOTTY.
    let rc = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut waiting) };
    if rc != 0 || (waiting as usize) < DIRECT_READ_MIN {
        return read_bytes(py, fd, n);
    }
    let want = (waiting as usize).min(n);
    read_into_new_bytes(py, fd, want, read)
}
