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

/// The object in the slot at byte `offset` of `obj` (0: not installed,
/// `missing`: the message for an empty slot).
///
/// # Safety
/// `offset` must be 0 or the offset of an object slot in `obj`'s layout
/// (from `object_slot_offset` on a class `obj` is an instance of), and
/// `obj` live, with the GIL held.
pub(crate) unsafe fn slot_object<'a, 'py>(
    py: Python<'py>,
    obj: *mut ffi::PyObject,
    offset: isize,
    missing: &'static str,
) -> PyResult<Borrowed<'a, 'py, PyAny>> {
    if offset == 0 {
        return Err(PyRuntimeError::new_err(
            "ferroloop's native methods are not installed",
        ));
    }
    // SAFETY: per the contract, the slot holds NULL or a strong reference.
    let value = unsafe { *obj.cast::<u8>().offset(offset).cast::<*mut ffi::PyObject>() };
    if value.is_null() {
        return Err(PyRuntimeError::new_err(missing));
    }
    // SAFETY: a live object owned by the slot for the duration of the call.
    Ok(unsafe { Borrowed::from_ptr(py, value) })
}

/// The byte offset of `ty`'s `__slots__` object member `name`.
pub(crate) fn object_slot_offset(ty: &Bound<'_, PyType>, name: &str) -> PyResult<isize> {
    let descr = ty.getattr(name)?;
    // SAFETY: PyMemberDescr_Type is CPython's static type object; the type
    // check guarantees the layout read below.
    unsafe {
        if ffi::PyObject_TypeCheck(descr.as_ptr(), &raw mut ffi::PyMemberDescr_Type) == 0 {
            return Err(PyTypeError::new_err(format!(
                "{name} must be a __slots__ member"
            )));
        }
        // NOTE: CPython's `d_member` is a `PyMemberDef *` on every version;
        // pyo3-ffi types it as `PyGetSetDef *` before 3.11, hence the cast.
        let member = (*descr.as_ptr().cast::<ffi::PyMemberDescrObject>())
            .d_member
            .cast::<ffi::PyMemberDef>();
        if (*member).type_code != ffi::Py_T_OBJECT_EX {
            return Err(PyTypeError::new_err(format!(
                "{name} must be an object slot"
            )));
        }
        Ok((*member).offset)
    }
}

/// The core in `face`'s `_core` slot.
///
/// # Safety
/// `face` must be a live instance of the installed face class (the method
/// descriptors check that before calling), with the GIL held.
unsafe fn core_of<'a, 'py>(
    py: Python<'py>,
    face: *mut ffi::PyObject,
) -> PyResult<Borrowed<'a, 'py, StreamTransport>> {
    // SAFETY: the offset is the face class's `_core` slot (install_face).
    let core = unsafe {
        slot_object(
            py,
            face,
            CORE_OFFSET.load(Ordering::Relaxed),
            "the transport is not initialized",
        )?
    };
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
    let offset = object_slot_offset(ty, "_core")?;
    CORE_OFFSET.store(offset, Ordering::Relaxed);
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
