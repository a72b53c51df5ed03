//! Hand-written `METH_FASTCALL` entries for the methods every asyncio step
//! calls: `call_soon` (the C Task and Future schedule each step and each done
//! callback with it), `get_debug` (every C Future's constructor calls it),
//! `call_soon_threadsafe`, `call_later`, `call_at`, `time` and the handles'
//! `cancel`.
//!
//! NOTE: pyo3's generated shim for `call_soon(callback, *args, context=None)`
//! costs ~250 instructions per call (trampoline, a generic argument matcher
//! that copies `*args` and matches keywords by string compare); these parse
//! CPython's vectorcall arguments directly (~60). They are thin: argument
//! parsing here, logic in `ready.rs` and `api.rs`. `install` puts them into
//! the type dicts at module import, replacing nothing pyo3 defines.

use std::ffi::{c_char, c_int, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::panic::PanicException;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple, PyType};

use super::EventLoop;
use crate::clock;
use crate::handles::{Handle, TimerHandle};

/// Runs `body` as a CPython method body: an `Err` is raised, a panic becomes
/// pyo3's PanicException (never unwinds into C).
///
/// # Safety
/// Must be called from a CPython method slot, i.e. with the GIL held.
pub(crate) unsafe fn guard(
    body: impl FnOnce(Python<'_>) -> PyResult<*mut ffi::PyObject>,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls method slots with the thread attached (GIL held).
    let py = unsafe { Python::assume_attached() };
    let err = match catch_unwind(AssertUnwindSafe(|| body(py))) {
        Ok(Ok(obj)) => return obj,
        Ok(Err(err)) => err,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic in a ferroloop method".to_owned());
            PanicException::new_err(msg)
        }
    };
    err.restore(py);
    ptr::null_mut()
}

/// Keyword-name tuples known to be exactly `("context",)`.
///
/// NOTE: the C Task and Future pass the same module-level `("context",)`
/// tuple on every `call_soon`, and Python call sites pass their code
/// object's constant: recognising it by identity skips decoding the name.
/// A remembered tuple is kept alive (one reference each), so its address can
/// never be reused by another tuple. The slots are atomics, filled once by
/// compare-and-swap, so that they stay sound without the GIL too (a slot
/// read while another thread fills it is either empty or the tuple).
struct ContextOnly([AtomicPtr<ffi::PyObject>; 4]);

static CONTEXT_ONLY: ContextOnly = ContextOnly([const { AtomicPtr::new(ptr::null_mut()) }; 4]);

impl ContextOnly {
    fn matches(&self, names: &Borrowed<'_, '_, PyTuple>) -> bool {
        let p = names.as_ptr();
        if self.0.iter().any(|slot| slot.load(Ordering::Acquire) == p) {
            return true;
        }
        let is_context = names.len() == 1
            && names.get_borrowed_item(0).is_ok_and(|k| {
                k.cast::<pyo3::types::PyString>()
                    .is_ok_and(|k| k == "context")
            });
        if is_context {
            for slot in &self.0 {
                if !slot.load(Ordering::Acquire).is_null() {
                    continue;
                }
                // SAFETY: `p` is a live tuple (borrowed from the call); the
                // reference taken here is kept while the slot holds it, i.e.
                // forever, which keeps the address unique.
                unsafe { ffi::Py_INCREF(p) };
                match slot.compare_exchange(ptr::null_mut(), p, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(_) => break,
                    // Another thread filled this slot first.
                    // SAFETY: drops the reference taken just above.
                    Err(_) => unsafe { ffi::Py_DECREF(p) },
                }
            }
        }
        is_context
    }
}

/// The arguments of `name(<N fixed>, *args, context=None)` from a vectorcall.
struct Args<'py, const N: usize> {
    fixed: [Borrowed<'py, 'py, PyAny>; N],
    rest: Bound<'py, PyTuple>,
    context: Option<Bound<'py, PyAny>>,
}

impl<'py, const N: usize> Args<'py, N> {
    fn fixed(&self, i: usize) -> Bound<'py, PyAny> {
        self.fixed[i].to_owned()
    }
}

/// Parses `name(<fixed names>, *args, context=None)` as CPython would bind it
/// (the fixed parameters may also be given by keyword when not positionally).
///
/// # Safety
/// `args` holds `nargs` positional and `len(kwnames)` keyword values, all
/// borrowed and live for the call, as vectorcall guarantees.
unsafe fn parse<'py, const N: usize>(
    py: Python<'py>,
    name: &str,
    fixed_names: [&str; N],
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> PyResult<Args<'py, N>> {
    let nargs = usize::try_from(nargs).unwrap_or(0);
    // SAFETY: per the contract, `args[..nargs + nkw]` are live borrowed objects.
    let arg = |i: usize| unsafe { Borrowed::from_ptr(py, *args.add(i)) };
    // SAFETY: Py_None is a live immortal object; it only fills slots that
    // `seen` marks as unset, which are refused below.
    let none = unsafe { Borrowed::from_ptr(py, ffi::Py_None()) };
    let mut fixed = [none; N];
    let mut seen = [false; N];
    for i in 0..N.min(nargs) {
        fixed[i] = arg(i);
        seen[i] = true;
    }
    let mut context = None;
    if !kwnames.is_null() {
        // SAFETY: vectorcall's kwnames is a tuple of str (or NULL).
        let names = unsafe { Borrowed::from_ptr(py, kwnames).cast_unchecked::<PyTuple>() };
        if CONTEXT_ONLY.matches(&names) {
            context = Some(arg(nargs).to_owned());
        } else {
            for (k, key) in names.iter().enumerate() {
                let value = arg(nargs + k);
                let key = key.cast_into::<pyo3::types::PyString>()?;
                let key = key.to_str()?;
                if key == "context" {
                    context = Some(value.to_owned());
                } else if let Some(i) = fixed_names.iter().position(|n| *n == key) {
                    if seen[i] {
                        return Err(PyTypeError::new_err(format!(
                            "{name}() got multiple values for argument '{key}'"
                        )));
                    }
                    fixed[i] = value;
                    seen[i] = true;
                } else {
                    return Err(PyTypeError::new_err(format!(
                        "{name}() got an unexpected keyword argument '{key}'"
                    )));
                }
            }
        }
    }
    if let Some(i) = seen.iter().position(|s| !s) {
        return Err(PyTypeError::new_err(format!(
            "{name}() missing required argument '{}' (pos {})",
            fixed_names[i],
            i + 1
        )));
    }
    let rest = if nargs > N {
        // PyTuple::new increfs the borrowed items.
        PyTuple::new(py, (N..nargs).map(arg))?
    } else {
        PyTuple::empty(py)
    };
    Ok(Args {
        fixed,
        rest,
        context,
    })
}

/// # Safety
/// `slf` is an instance of `EventLoop` (the method descriptor checked it).
unsafe fn event_loop<'a, 'py>(
    py: Python<'py>,
    slf: *mut ffi::PyObject,
) -> Borrowed<'a, 'py, EventLoop> {
    // SAFETY: per the contract.
    unsafe { Borrowed::from_ptr(py, slf).cast_unchecked::<EventLoop>() }
}

/// The body of a `name(<fixed>, *args, context=None)` method of EventLoop:
/// vectorcall arguments parsed, then `f`.
///
/// # Safety
/// Called from a METH_FASTCALL|METH_KEYWORDS method of EventLoop, with the
/// GIL held and vectorcall's argument contract.
unsafe fn scheduling_method<const N: usize>(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
    name: &str,
    fixed_names: [&str; N],
    f: impl for<'py> FnOnce(&Borrowed<'_, 'py, EventLoop>, Args<'py, N>) -> PyResult<Bound<'py, PyAny>>,
) -> *mut ffi::PyObject {
    // SAFETY: per the contract, forwarded to `parse` and `event_loop`.
    unsafe {
        guard(|py| {
            let a = parse(py, name, fixed_names, args, nargs, kwnames)?;
            Ok(f(&event_loop(py, slf), a)?.into_ptr())
        })
    }
}

/// The body of a no-argument method of `T` that returns None.
///
/// # Safety
/// Called from a METH_NOARGS method of `T` (the method descriptor checked
/// that `slf` is one), with the GIL held.
pub(crate) unsafe fn method_returning_none<T: pyo3::PyClass>(
    slf: *mut ffi::PyObject,
    f: impl for<'py> FnOnce(&Borrowed<'_, 'py, T>) -> PyResult<()>,
) -> *mut ffi::PyObject {
    // SAFETY: per the contract.
    unsafe {
        guard(|py| {
            f(&Borrowed::from_ptr(py, slf).cast_unchecked::<T>())?;
            Ok(py.None().into_ptr())
        })
    }
}

unsafe extern "C" fn call_soon(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls this as a METH_FASTCALL|METH_KEYWORDS method of
    // EventLoop (see `install`); so for the three below.
    unsafe {
        scheduling_method(
            slf,
            args,
            nargs,
            kwnames,
            "call_soon",
            ["callback"],
            |lp, a| {
                let h = EventLoop::schedule_soon(lp, a.fixed(0), a.rest, a.context, false)?;
                Ok(h.into_any())
            },
        )
    }
}

unsafe extern "C" fn call_soon_threadsafe(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    let name = "call_soon_threadsafe";
    // SAFETY: as for `call_soon`.
    unsafe {
        scheduling_method(slf, args, nargs, kwnames, name, ["callback"], |lp, a| {
            let h = EventLoop::schedule_soon(lp, a.fixed(0), a.rest, a.context, true)?;
            Ok(h.into_any())
        })
    }
}

unsafe extern "C" fn call_later(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    let fixed = ["delay", "callback"];
    // SAFETY: as for `call_soon`.
    unsafe {
        scheduling_method(slf, args, nargs, kwnames, "call_later", fixed, |lp, a| {
            let t = EventLoop::call_later_impl(lp, &a.fixed(0), a.fixed(1), a.rest, a.context)?;
            Ok(t.into_any())
        })
    }
}

unsafe extern "C" fn call_at(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    let fixed = ["when", "callback"];
    // SAFETY: as for `call_soon`.
    unsafe {
        scheduling_method(slf, args, nargs, kwnames, "call_at", fixed, |lp, a| {
            let t = EventLoop::call_at_obj(lp, &a.fixed(0), a.fixed(1), a.rest, a.context)?;
            Ok(t.into_any())
        })
    }
}

unsafe extern "C" fn create_future(
    slf: *mut ffi::PyObject,
    _: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: METH_NOARGS method of EventLoop, GIL held.
    unsafe {
        guard(|py| {
            let lp = event_loop(py, slf);
            Ok(EventLoop::create_future_impl(&lp)?.into_ptr())
        })
    }
}

/// `create_task(coro, *, name=None, context=None, **kwargs)`.
unsafe extern "C" fn create_task(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: as for `call_soon`.
    unsafe {
        guard(|py| {
            let nargs = usize::try_from(nargs).unwrap_or(0);
            // SAFETY: per vectorcall's contract, as in `parse`.
            let arg = |i: usize| Borrowed::from_ptr(py, *args.add(i));
            if nargs > 1 {
                return Err(PyTypeError::new_err(format!(
                    "create_task() takes 1 positional argument but {nargs} were given"
                )));
            }
            let mut coro = (nargs == 1).then(|| arg(0));
            let (mut name, mut context, mut extra) = (None, None, None::<Bound<'_, PyDict>>);
            if !kwnames.is_null() {
                let names = Borrowed::from_ptr(py, kwnames).cast_unchecked::<PyTuple>();
                for (k, key) in names.iter().enumerate() {
                    let value = arg(nargs + k);
                    let key = key.cast_into::<pyo3::types::PyString>()?;
                    match key.to_str()? {
                        "coro" if coro.is_none() => coro = Some(value),
                        "coro" => {
                            return Err(PyTypeError::new_err(
                                "create_task() got multiple values for argument 'coro'",
                            ))
                        }
                        "name" => name = Some(value.to_owned()),
                        "context" => context = Some(value.to_owned()),
                        _ => extra
                            .get_or_insert_with(|| PyDict::new(py))
                            .set_item(key, value)?,
                    }
                }
            }
            let coro = coro.ok_or_else(|| {
                PyTypeError::new_err("create_task() missing 1 required positional argument: 'coro'")
            })?;
            let lp = event_loop(py, slf);
            let task = EventLoop::create_task_impl(
                &lp,
                &coro.to_owned(),
                name.filter(|v| !v.is_none()),
                context.filter(|v| !v.is_none()),
                extra,
            )?;
            Ok(task.into_ptr())
        })
    }
}

unsafe extern "C" fn get_debug(
    slf: *mut ffi::PyObject,
    _: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: METH_NOARGS method of EventLoop, GIL held.
    unsafe {
        guard(|py| {
            let on = event_loop(py, slf).get().debug_enabled();
            Ok(pyo3::types::PyBool::new(py, on).to_owned().into_ptr())
        })
    }
}

unsafe extern "C" fn time(_slf: *mut ffi::PyObject, _: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: METH_NOARGS method, GIL held; returns a new reference or NULL
    // with MemoryError set.
    unsafe { ffi::PyFloat_FromDouble(clock::monotonic()) }
}

unsafe extern "C" fn handle_cancel(
    slf: *mut ffi::PyObject,
    _: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: METH_NOARGS method of Handle, GIL held.
    unsafe { method_returning_none::<Handle>(slf, |h| Handle::cancel_once(h).map(drop)) }
}

unsafe extern "C" fn timer_handle_cancel(
    slf: *mut ffi::PyObject,
    _: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: METH_NOARGS method of TimerHandle, GIL held.
    unsafe { method_returning_none::<TimerHandle>(slf, |t| TimerHandle::cancel_timer(t)) }
}

const FASTCALL_KW: c_int = ffi::METH_FASTCALL | ffi::METH_KEYWORDS;

fn fast_kw(
    name: &'static CStr,
    doc: &'static CStr,
    f: ffi::PyCFunctionFastWithKeywords,
) -> ffi::PyMethodDef {
    ffi::PyMethodDef {
        ml_name: name.as_ptr(),
        ml_meth: ffi::PyMethodDefPointer {
            PyCFunctionFastWithKeywords: f,
        },
        ml_flags: FASTCALL_KW,
        ml_doc: doc.as_ptr(),
    }
}

pub(crate) fn noargs(
    name: &'static CStr,
    doc: &'static CStr,
    f: ffi::PyCFunction,
) -> ffi::PyMethodDef {
    ffi::PyMethodDef {
        ml_name: name.as_ptr(),
        ml_meth: ffi::PyMethodDefPointer { PyCFunction: f },
        ml_flags: ffi::METH_NOARGS,
        ml_doc: doc.as_ptr(),
    }
}

pub(crate) fn one_arg(
    name: &'static CStr,
    doc: &'static CStr,
    f: ffi::PyCFunction,
) -> ffi::PyMethodDef {
    ffi::PyMethodDef {
        ml_name: name.as_ptr(),
        ml_meth: ffi::PyMethodDefPointer { PyCFunction: f },
        ml_flags: ffi::METH_O,
        ml_doc: doc.as_ptr(),
    }
}

/// Adds `defs` to `ty` as methods (method descriptors, as a C type's
/// `tp_methods` would make).
pub(crate) fn add_methods(ty: &Bound<'_, PyType>, defs: Vec<ffi::PyMethodDef>) -> PyResult<()> {
    let py = ty.py();
    for def in defs {
        // The definition must outlive the type: leak it (a few per import).
        let def: &'static mut ffi::PyMethodDef = Box::leak(Box::new(def));
        // SAFETY: `def` is 'static with a NUL-terminated name; the type
        // pointer is live; PyDescr_NewMethod returns a new reference or NULL.
        let descr = unsafe {
            Bound::from_owned_ptr_or_err(py, ffi::PyDescr_NewMethod(ty.as_type_ptr(), def))?
        };
        // SAFETY: ml_name is a valid NUL-terminated static string.
        let name = unsafe { CStr::from_ptr(def.ml_name as *const c_char) }
            .to_str()
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        ty.setattr(name, descr)?;
    }
    Ok(())
}

/// Installs the fast entries on the extension's types.
pub(crate) fn install(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    add_methods(
        &py.get_type::<EventLoop>(),
        vec![
            fast_kw(c"call_soon", c"call_soon($self, callback, *args, context=None)\n--\n\nArrange for callback(*args) to be called soon.", call_soon),
            fast_kw(c"call_soon_threadsafe", c"call_soon_threadsafe($self, callback, *args, context=None)\n--\n\nLike call_soon(), but thread-safe.", call_soon_threadsafe),
            fast_kw(c"call_later", c"call_later($self, delay, callback, *args, context=None)\n--\n\nArrange for callback(*args) to be called after delay seconds.", call_later),
            fast_kw(c"call_at", c"call_at($self, when, callback, *args, context=None)\n--\n\nLike call_later(), but with an absolute time (loop.time()).", call_at),
            fast_kw(c"create_task", c"create_task($self, coro, *, name=None, context=None, **kwargs)\n--\n\nSchedule a coroutine object as a Task.", create_task),
            noargs(c"create_future", c"create_future($self, /)\n--\n\nCreate a Future attached to the loop.", create_future),
            noargs(c"get_debug", c"get_debug($self, /)\n--\n\nWhether the loop runs in debug mode.", get_debug),
            noargs(c"time", c"time($self, /)\n--\n\nThe loop's clock: time.monotonic()'s clock.", time),
        ],
    )?;
    add_methods(
        &py.get_type::<Handle>(),
        vec![noargs(
            c"cancel",
            c"cancel($self, /)\n--\n\nCancel the callback.",
            handle_cancel,
        )],
    )?;
    add_methods(
        &py.get_type::<TimerHandle>(),
        vec![noargs(
            c"cancel",
            c"cancel($self, /)\n--\n\nCancel the timer.",
            timer_handle_cancel,
        )],
    )?;
    Ok(())
}
