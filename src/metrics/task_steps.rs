//! Tasks finished, counted natively and without a done callback.
//!
//! asyncio's C Task only ever finishes inside one of its own callbacks: the
//! step it schedules with `call_soon` (a `TaskStepMethWrapper`: its first
//! step, and the next one after a bare `yield` or a cancellation) or the
//! wake-up it adds to the future it awaits (a builtin method bound to the
//! task). The loop recognises those two callbacks by their type (and, for
//! the builtin method, by its `PyMethodDef`: every builtin method shares the
//! type) and, when one returns, asks the task `done()`: a type compare per
//! ready callback, and one C call per task step.
//!
//! The shapes are learnt once per process from a real Task run on a
//! stand-in loop (`ferroloop._stats.task_step_probe`), so nothing about the
//! interpreter's structures is assumed: if the probe does not find exactly
//! one task pointer in each callback, tasks are not counted natively and
//! `loop.stats()` falls back to counting `asyncio.all_tasks()`. Tasks made
//! by eager task factories (3.12+) may finish inside `create_task`; that
//! path is counted in `ferroloop._loop._create_task_slow`.

use std::sync::atomic::{AtomicPtr, Ordering::Relaxed};
use std::sync::OnceLock;

use pyo3::ffi;
use pyo3::prelude::*;

/// How to recognise one of a task's own callbacks and find its task.
struct Shape {
    ty: *mut ffi::PyTypeObject,
    /// The builtin method's `PyMethodDef` (`task_wakeup`), when the type is
    /// `builtin_function_or_method`; null otherwise.
    ml: *mut ffi::PyMethodDef,
    /// Where the task pointer sits in the object, in bytes.
    task_at: usize,
}

impl Shape {
    /// The task `func` belongs to (a borrowed pointer), if it is this shape.
    ///
    /// # Safety
    /// `func` is a live object and the GIL is held.
    #[inline(always)]
    unsafe fn task(&self, func: *mut ffi::PyObject) -> *mut ffi::PyObject {
        // SAFETY: `func` is live (caller). A builtin method is a
        // PyCFunctionObject (checked by type first), whose m_ml is set for
        // its whole life; an object of `ty` is at least `ty`'s basic size,
        // and `task_at` was checked to lie inside it when the shape was
        // learnt, so the read stays inside the object.
        unsafe {
            if ffi::Py_TYPE(func) != self.ty
                || (!self.ml.is_null() && (*func.cast::<ffi::PyCFunctionObject>()).m_ml != self.ml)
            {
                return std::ptr::null_mut();
            }
            *func
                .cast::<u8>()
                .add(self.task_at)
                .cast::<*mut ffi::PyObject>()
        }
    }
}

struct TaskSteps {
    step: Shape,
    wakeup: Shape,
    task_type: *mut ffi::PyTypeObject,
    /// `asyncio.Task.done` (the unbound method descriptor).
    done: Py<PyAny>,
    /// Its C function, when it takes no arguments (`METH_NOARGS`, as in
    /// 3.10-3.13): called directly, without the descriptor's vectorcall.
    done_fn: Option<ffi::PyCFunction>,
    /// The types above, kept alive.
    _types: Vec<Py<PyAny>>,
}

// SAFETY: the raw pointers name type objects and a method definition that
// `_types` keeps alive (or that are static in the interpreter); they are
// only dereferenced by threads holding the GIL.
unsafe impl Send for TaskSteps {}
// SAFETY: as above; the struct is immutable once made.
unsafe impl Sync for TaskSteps {}

static STEPS: OnceLock<Option<TaskSteps>> = OnceLock::new();

/// The two callbacks' types, null until learnt: most callbacks are neither,
/// and are told so by two compares.
static STEP_TYPE: AtomicPtr<ffi::PyTypeObject> = AtomicPtr::new(std::ptr::null_mut());
static WAKEUP_TYPE: AtomicPtr<ffi::PyTypeObject> = AtomicPtr::new(std::ptr::null_mut());

/// Learns the task callbacks' shapes (once per process, when the first
/// loop is made).
pub(crate) fn init(py: Python<'_>) {
    STEPS.get_or_init(|| match learn(py) {
        Ok(Some(steps)) => {
            STEP_TYPE.store(steps.step.ty, Relaxed);
            WAKEUP_TYPE.store(steps.wakeup.ty, Relaxed);
            Some(steps)
        }
        Ok(None) => None,
        Err(err) => {
            err.write_unraisable(py, None);
            None
        }
    });
}

/// Whether `init` found the shapes.
pub(crate) fn counted() -> bool {
    matches!(STEPS.get(), Some(Some(_)))
}

fn learn(py: Python<'_>) -> PyResult<Option<TaskSteps>> {
    let probe = crate::py::call_helper(py, "_task_step_probe", ())?;
    if probe.is_none() {
        return Ok(None);
    }
    let (step, wakeup, task, done): (Bound<PyAny>, Bound<PyAny>, Bound<PyAny>, Bound<PyAny>) =
        probe.extract()?;
    let (Some(step_shape), Some(wakeup_shape)) = (shape(&step, &task), shape(&wakeup, &task))
    else {
        return Ok(None);
    };
    let types = vec![
        step.get_type().into_any().unbind(),
        wakeup.get_type().into_any().unbind(),
        task.get_type().into_any().unbind(),
    ];
    Ok(Some(TaskSteps {
        step: step_shape,
        wakeup: wakeup_shape,
        task_type: task.get_type().as_type_ptr(),
        done_fn: noargs_function(&done),
        done: done.unbind(),
        _types: types,
    }))
}

/// A method descriptor's C function, if it is `METH_NOARGS`.
fn noargs_function(descr: &Bound<'_, PyAny>) -> Option<ffi::PyCFunction> {
    let obj = descr.as_ptr();
    // SAFETY: `obj` is live; checked to be a method descriptor before it is
    // read as one, whose `d_method` points to its static PyMethodDef. For a
    // METH_NOARGS method, `ml_meth` holds a PyCFunction.
    unsafe {
        if ffi::Py_TYPE(obj) != std::ptr::addr_of_mut!(ffi::PyMethodDescr_Type) {
            return None;
        }
        let def = (*obj.cast::<ffi::PyMethodDescrObject>()).d_method;
        if def.is_null() || (*def).ml_flags != ffi::METH_NOARGS {
            return None;
        }
        Some((*def).ml_meth.PyCFunction)
    }
}

/// `callback`'s shape: where in it the pointer to `task` is (it must be
/// there exactly once).
fn shape(callback: &Bound<'_, PyAny>, task: &Bound<'_, PyAny>) -> Option<Shape> {
    let obj = callback.as_ptr();
    let ty = callback.get_type().as_type_ptr();
    // SAFETY: `callback` is a live object of type `ty`: its first
    // `tp_basicsize` bytes are its own, read here word by word (objects are
    // pointer-aligned). PyCFunction_Type is a static type of the interpreter.
    unsafe {
        let size = usize::try_from((*ty).tp_basicsize).ok()?;
        let is_builtin = ty == std::ptr::addr_of_mut!(ffi::PyCFunction_Type)
            || ty == std::ptr::addr_of_mut!(ffi::PyCMethod_Type);
        let ml = if is_builtin {
            (*obj.cast::<ffi::PyCFunctionObject>()).m_ml
        } else {
            std::ptr::null_mut()
        };
        let word = std::mem::size_of::<usize>();
        let header = std::mem::size_of::<ffi::PyObject>();
        let hits: Vec<usize> = (header..size.saturating_sub(word - 1))
            .step_by(word)
            .filter(|&at| *obj.cast::<u8>().add(at).cast::<*mut ffi::PyObject>() == task.as_ptr())
            .collect();
        match hits[..] {
            [task_at] => Some(Shape { ty, ml, task_at }),
            _ => None,
        }
    }
}

/// After `func` returned without an error: if it was a task's step or
/// wake-up and the task is now done, true.
///
/// # Safety
/// `func` is a live object (the caller holds a reference) and the GIL is held.
#[inline(always)]
pub(crate) unsafe fn finished(py: Python<'_>, func: *mut ffi::PyObject) -> bool {
    // SAFETY: `func` is live (caller).
    let ty = unsafe { ffi::Py_TYPE(func) };
    if ty != WAKEUP_TYPE.load(Relaxed) && ty != STEP_TYPE.load(Relaxed) {
        return false;
    }
    // SAFETY: as this function's.
    unsafe { step_finished(py, func) }
}

/// `finished` for a callback of one of the two types.
///
/// # Safety
/// As `finished`'s.
#[inline(never)]
unsafe fn step_finished(py: Python<'_>, func: *mut ffi::PyObject) -> bool {
    let Some(Some(steps)) = STEPS.get() else {
        return false;
    };
    // SAFETY: `func` is live and the GIL held (caller).
    let task = unsafe {
        let t = steps.wakeup.task(func);
        if t.is_null() {
            steps.step.task(func)
        } else {
            t
        }
    };
    if task.is_null() {
        return false;
    }
    // SAFETY: `func` holds `task` (a strong reference of the task's
    // callback), so it is live for this call.
    unsafe { task_done(py, steps, task) }
}

/// A task `create_task` returned (from a task factory): done already, as
/// an eager task (3.12+) that finished in its first step is.
pub(crate) fn done_on_creation(task: &Bound<'_, PyAny>) -> bool {
    let Some(Some(steps)) = STEPS.get() else {
        return false;
    };
    // SAFETY: `task` is a live object and the GIL is held (a Bound).
    unsafe { task_done(task.py(), steps, task.as_ptr()) }
}

/// # Safety
/// `task` is live and the GIL is held.
#[inline]
unsafe fn task_done(py: Python<'_>, steps: &TaskSteps, task: *mut ffi::PyObject) -> bool {
    // SAFETY: `task` is live (caller) and checked to be a Task; `done` is
    // a method descriptor of a base of Task (Future), called with the task
    // as its one argument, or its METH_NOARGS function called directly as
    // (task, NULL). Either returns a new reference or NULL with an error.
    unsafe {
        if ffi::PyObject_TypeCheck(task, steps.task_type) == 0 {
            return false;
        }
        let r = match steps.done_fn {
            Some(f) => f(task, std::ptr::null_mut()),
            None => {
                let mut args = [task];
                ffi::PyObject_Vectorcall(
                    steps.done.as_ptr(),
                    args.as_mut_ptr(),
                    1,
                    std::ptr::null_mut(),
                )
            }
        };
        if r.is_null() {
            PyErr::fetch(py).write_unraisable(py, None);
            return false;
        }
        let done = r == ffi::Py_True();
        ffi::Py_DECREF(r);
        done
    }
}
