//! Cached Python lookups and small call helpers shared by the core.

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyTuple;

static FUTURE_TYPE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static TASK_TYPE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static HELPERS: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
static KW_LOOP: PyOnceLock<Py<PyTuple>> = PyOnceLock::new();
static KW_TASK: PyOnceLock<Py<PyTuple>> = PyOnceLock::new();
static KW_TASK_310: PyOnceLock<Py<PyTuple>> = PyOnceLock::new();
static VERSION: std::sync::OnceLock<(u8, u8)> = std::sync::OnceLock::new();

/// The running interpreter's (major, minor). Cached: pyo3's `version_info()`
/// formats and parses `Py_GetVersion()` on every call (~1,000 instructions
/// of `snprintf`, seen in a perf profile of `create_task`).
pub fn version(py: Python<'_>) -> (u8, u8) {
    *VERSION.get_or_init(|| {
        let v = py.version_info();
        (v.major, v.minor)
    })
}

/// `asyncio.Future` (the C implementation when available).
pub fn future_type(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    FUTURE_TYPE.import(py, "asyncio", "Future")
}

/// `asyncio.Task` (the C implementation when available).
pub fn task_type(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    TASK_TYPE.import(py, "asyncio", "Task")
}

/// `ferroloop._loop`: the long tail written in Python (error reports, reprs,
/// debug-mode checks). Imported lazily: it imports this extension.
pub fn helpers(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    HELPERS
        .get_or_try_init(py, || py.import("ferroloop._loop").map(Bound::unbind))
        .map(|m| m.bind(py))
}

/// Calls `ferroloop._loop.<name>(*args)`.
pub fn call_helper<'py, A>(py: Python<'py>, name: &str, args: A) -> PyResult<Bound<'py, PyAny>>
where
    A: pyo3::call::PyCallArgs<'py>,
{
    helpers(py)?.getattr(name)?.call1(args)
}

fn kwnames(py: Python<'_>, cell: &'static PyOnceLock<Py<PyTuple>>, names: &[&str]) -> Py<PyTuple> {
    cell.get_or_init(py, || {
        PyTuple::new(py, names).expect("tuple of str").unbind()
    })
    .clone_ref(py)
}

/// Vectorcall `callable(*positional, **dict(zip(kwnames, kwvalues)))` without
/// building a dict.
fn vectorcall<'py>(
    py: Python<'py>,
    callable: &Bound<'py, PyAny>,
    args: &[*mut ffi::PyObject],
    npositional: usize,
    kwnames: Option<&Py<PyTuple>>,
) -> PyResult<Bound<'py, PyAny>> {
    let kw = kwnames.map_or(std::ptr::null_mut(), |k| k.as_ptr());
    // SAFETY: `args` holds borrowed, live object pointers (the caller keeps
    // them alive for the call); `npositional + len(kwnames) == args.len()`;
    // the result is a new reference or NULL with an exception set.
    unsafe {
        let r = ffi::PyObject_Vectorcall(callable.as_ptr(), args.as_ptr(), npositional, kw);
        Bound::from_owned_ptr_or_err(py, r)
    }
}

/// `asyncio.Future(loop=loop)`.
pub fn new_future<'py>(
    py: Python<'py>,
    event_loop: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let names = kwnames(py, &KW_LOOP, &["loop"]);
    vectorcall(
        py,
        future_type(py)?,
        &[event_loop.as_ptr()],
        0,
        Some(&names),
    )
}

/// `asyncio.Task(coro, loop=loop, name=name, context=context)`.
pub fn new_task<'py>(
    py: Python<'py>,
    coro: &Bound<'py, PyAny>,
    event_loop: &Bound<'py, PyAny>,
    name: &Bound<'py, PyAny>,
    context: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    if version(py) < (3, 11) {
        // NOTE: 3.10's Task and create_task() take no context.
        if !context.is_none() {
            return Err(pyo3::exceptions::PyTypeError::new_err(
                "create_task() got an unexpected keyword argument 'context'",
            ));
        }
        let names = kwnames(py, &KW_TASK_310, &["loop", "name"]);
        return vectorcall(
            py,
            task_type(py)?,
            &[coro.as_ptr(), event_loop.as_ptr(), name.as_ptr()],
            1,
            Some(&names),
        );
    }
    let names = kwnames(py, &KW_TASK, &["loop", "name", "context"]);
    vectorcall(
        py,
        task_type(py)?,
        &[
            coro.as_ptr(),
            event_loop.as_ptr(),
            name.as_ptr(),
            context.as_ptr(),
        ],
        1,
        Some(&names),
    )
}

/// `contextvars.copy_context()`.
pub fn copy_context(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    // SAFETY: returns a new reference or NULL with an exception set.
    unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyContext_CopyCurrent()) }
}

/// Runs `f` inside the Context `ctx`, as `ctx.run(f)`.
pub fn run_in_context<R>(
    py: Python<'_>,
    ctx: &Bound<'_, PyAny>,
    f: impl FnOnce() -> PyResult<R>,
) -> PyResult<R> {
    // SAFETY: `ctx` is a live object; PyContext_Enter type-checks it and
    // fails (with an exception set) if it is not a Context or is entered.
    if unsafe { pyo3::ffi::PyContext_Enter(ctx.as_ptr()) } < 0 {
        return Err(PyErr::fetch(py));
    }
    let result = f();
    // SAFETY: paired with the Enter above, as Context.run pairs them; no
    // exception is set here (`f`'s error is held in `result`).
    if unsafe { pyo3::ffi::PyContext_Exit(ctx.as_ptr()) } < 0 {
        return Err(PyErr::fetch(py));
    }
    result
}

/// `threading.get_ident()` of the calling thread.
pub fn thread_ident() -> u64 {
    // SAFETY: pthread_self never fails. CPython's threading.get_ident() is
    // this same value cast to unsigned long.
    unsafe { libc::pthread_self() as u64 }
}
