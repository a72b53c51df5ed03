//! The hot methods of the Python transport face (`_transports.SocketTransport`)
//! as native method descriptors of that class.
//!
//! NOTE: the face is an `asyncio.Transport` subclass with `__slots__` (no
//! instance dict: ~100 bytes instead of ~300 per connection) whose `_core`
//! slot holds the native `StreamTransport`. Binding the core's `write` into
//! each instance would cost a bound method per connection, and a Python
//! `def write(self, data): self._core.write(data)` a frame per call; instead
//! `write` and `is_closing` are method descriptors of the face class (so
//! `transport.write(data)` is one C call, no bound method) that read the
//! core from the slot's offset.

use std::sync::atomic::{AtomicIsize, Ordering};

use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyType;

use super::stream::StreamTransport;
use crate::event_loop::fastcall::{add_methods, guard, noargs, one_arg};

/// Byte offset of the face's `_core` slot (0: not installed).
static CORE_OFFSET: AtomicIsize = AtomicIsize::new(0);

/// The core in `face`'s `_core` slot.
///
/// # Safety
/// `face` must be a live instance of the installed face class (the method
/// descriptors check that before calling), with the GIL held.
unsafe fn core_of<'a, 'py>(
    py: Python<'py>,
    face: *mut ffi::PyObject,
) -> PyResult<Borrowed<'a, 'py, StreamTransport>> {
    let offset = CORE_OFFSET.load(Ordering::Relaxed);
    // SAFETY: `offset` is the `_core` member's offset in the face's layout
    // (read from its member descriptor by `install_face`), and `face` is an
    // instance of that class: the slot holds NULL or a strong reference.
    let core = unsafe {
        *face
            .cast::<u8>()
            .offset(offset)
            .cast::<*mut ffi::PyObject>()
    };
    if offset == 0 || core.is_null() {
        return Err(PyRuntimeError::new_err("the transport is not initialized"));
    }
    // SAFETY: a live object owned by the slot for the duration of the call.
    let core = unsafe { Borrowed::from_ptr(py, core) };
    core.cast::<StreamTransport>()
        .map_err(|_| PyTypeError::new_err("the transport's core is not a StreamTransport"))
}

unsafe extern "C" fn face_write(
    slf: *mut ffi::PyObject,
    data: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: METH_O method of the face class (the descriptor checked the
    // type), GIL held, `data` a live borrowed object.
    unsafe {
        guard(|py| {
            let core = core_of(py, slf)?;
            StreamTransport::write(&core, &Borrowed::from_ptr(py, data))?;
            Ok(py.None().into_ptr())
        })
    }
}

unsafe extern "C" fn face_is_closing(
    slf: *mut ffi::PyObject,
    _: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: METH_NOARGS method of the face class, GIL held.
    unsafe {
        guard(|py| {
            let closing = core_of(py, slf)?.get().closing();
            Ok(pyo3::types::PyBool::new(py, closing)
                .to_owned()
                .into_any()
                .into_ptr())
        })
    }
}

/// Installs `write` and `is_closing` on the face class `ty`, whose `_core`
/// slot holds the core.
#[pyfunction]
pub(crate) fn install_face(ty: &Bound<'_, PyType>) -> PyResult<()> {
    let py = ty.py();
    let descr = ty.getattr(pyo3::intern!(py, "_core"))?;
    // SAFETY: PyMemberDescr_Type is CPython's static type object; the type
    // check guarantees the layout read below.
    let offset = unsafe {
        if ffi::PyObject_TypeCheck(descr.as_ptr(), &raw mut ffi::PyMemberDescr_Type) == 0 {
            return Err(PyTypeError::new_err("_core must be a __slots__ member"));
        }
        // NOTE: CPython's `d_member` is a `PyMemberDef *` on every version;
        // pyo3-ffi types it as `PyGetSetDef *` before 3.11, hence the cast.
        let member = (*descr.as_ptr().cast::<ffi::PyMemberDescrObject>())
            .d_member
            .cast::<ffi::PyMemberDef>();
        if (*member).type_code != ffi::Py_T_OBJECT_EX {
            return Err(PyTypeError::new_err("_core must be an object slot"));
        }
        (*member).offset
    };
    CORE_OFFSET.store(offset as isize, Ordering::Relaxed);
    add_methods(
        ty,
        vec![
            one_arg(
                c"write",
                c"write($self, data, /)\n--\n\nWrite bytes-like data to the transport.",
                face_write,
            ),
            noargs(
                c"is_closing",
                c"is_closing($self, /)\n--\n\nWhether the transport is closing or closed.",
                face_is_closing,
            ),
        ],
    )
}
