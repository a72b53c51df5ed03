//! Errors: `io::Error` to `OSError(errno, strerror)`.
//!
//! NOTE: pyo3's default `From<io::Error>` conversion drops the errno for
//! unknown kinds; asyncio code checks `exc.errno`, so every OS error goes
//! through `os_error`, which keeps it (and lets `OSError.__new__` pick the
//! subclass, e.g. `ConnectionResetError`).

use pyo3::exceptions::{PyKeyboardInterrupt, PyOSError, PySystemExit};
use pyo3::{PyErr, Python};

/// KeyboardInterrupt or SystemExit: what asyncio lets escape from a
/// callback instead of reporting it (`except (SystemExit, KeyboardInterrupt): raise`).
pub fn is_exit(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<PyKeyboardInterrupt>(py) || err.is_instance_of::<PySystemExit>(py)
}

pub fn os_error(err: std::io::Error) -> PyErr {
    match err.raw_os_error() {
        Some(code) => {
            // SAFETY: strerror returns a pointer to a static or thread-local
            // NUL-terminated string; it is copied before any other call.
            let msg = unsafe { std::ffi::CStr::from_ptr(libc::strerror(code)) }
                .to_string_lossy()
                .into_owned();
            PyOSError::new_err((code, msg))
        }
        None => PyOSError::new_err(err.to_string()),
    }
}
