//! `Handle` and `TimerHandle`: what `call_soon` / `call_later` return and what
//! the ready queue holds.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

use parking_lot::Mutex;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::pyclass::CompareOp;
use pyo3::types::PyTuple;
use pyo3::{PyTraverseError, PyVisit};

use crate::event_loop::EventLoop;
use crate::metrics::{task_steps, Counter};
use crate::py;

/// The callable and its positional arguments; dropped on `cancel()` as
/// asyncio does, so a cancelled timer does not keep its arguments alive.
pub(crate) struct Callback {
    pub func: Py<PyAny>,
    pub args: Py<PyTuple>,
}

/// A callback scheduled with `call_soon` / `call_soon_threadsafe`.
#[pyclass(frozen, subclass, weakref, module = "ferroloop._ferroloop")]
pub struct Handle {
    callback: Mutex<Option<Callback>>,
    context: Py<PyAny>,
    event_loop: Py<EventLoop>,
    cancelled: AtomicBool,
    /// What scheduled it (`metrics::Kind`), for the loop's callback counts.
    kind: AtomicU8,
    /// When it was made (CLOCK_MONOTONIC ns), with per-task stats on only
    /// (a task step's scheduling delay); 0 otherwise.
    scheduled_ns: AtomicU64,
    /// `format_helpers.extract_stack()` at creation, in debug mode only.
    source_traceback: Option<Py<PyAny>>,
    /// The repr kept on cancel in debug mode (asyncio's `_repr`).
    repr_cache: Mutex<Option<Py<PyAny>>>,
}

/// A callback scheduled with `call_later` / `call_at`.
#[pyclass(frozen, extends = Handle, module = "ferroloop._ferroloop")]
pub struct TimerHandle {
    when: f64,
    /// `when` as the caller gave it, when it was not a float (asyncio's
    /// `when()` returns the object it was given).
    when_obj: Option<Py<PyAny>>,
    /// In the loop's timer heap (asyncio's `_scheduled`).
    scheduled: AtomicBool,
}

impl Handle {
    pub(crate) fn new(
        func: Py<PyAny>,
        args: Py<PyTuple>,
        context: Py<PyAny>,
        event_loop: Py<EventLoop>,
        source_traceback: Option<Py<PyAny>>,
        kind: crate::metrics::Kind,
    ) -> Self {
        Self {
            callback: Mutex::new(Some(Callback { func, args })),
            context,
            event_loop,
            cancelled: AtomicBool::new(false),
            kind: AtomicU8::new(kind as u8),
            scheduled_ns: AtomicU64::new(0),
            source_traceback,
            repr_cache: Mutex::new(None),
        }
    }

    #[inline]
    pub(crate) fn set_scheduled_ns(&self, ns: u64) {
        self.scheduled_ns.store(ns, Ordering::Relaxed);
    }

    #[inline]
    pub(crate) fn scheduled_ns(&self) -> u64 {
        self.scheduled_ns.load(Ordering::Relaxed)
    }

    /// The callable (None once cancelled).
    pub(crate) fn callback_func<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.callback
            .lock()
            .as_ref()
            .map(|cb| cb.func.bind(py).clone())
    }

    /// `metrics::Kind as u8` (0: `Ready`).
    #[inline]
    pub(crate) fn kind_raw(&self) -> u8 {
        self.kind.load(Ordering::Relaxed)
    }

    #[inline]
    pub(crate) fn set_kind(&self, kind: crate::metrics::Kind) {
        self.kind.store(kind as u8, Ordering::Relaxed);
    }

    #[inline]
    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    fn callback_parts<'py>(
        &self,
        py: Python<'py>,
    ) -> Option<(Bound<'py, PyAny>, Bound<'py, PyTuple>)> {
        self.callback
            .lock()
            .as_ref()
            .map(|cb| (cb.func.bind(py).clone(), cb.args.bind(py).clone()))
    }

    /// Runs the callback inside its context, as `context.run(cb, *args)`.
    /// Returns the callback's exception, if any; the caller reports it.
    /// With `tasks_finished`, counts a task that finished in it (see
    /// `metrics::task_steps`).
    pub(crate) fn run(&self, py: Python<'_>, tasks_finished: Option<&Counter>) -> PyResult<()> {
        let Some((func, args)) = self.callback_parts(py) else {
            return Ok(());
        };
        let ctx = self.context.as_ptr();
        // SAFETY: `ctx` is a live object we hold a strong reference to.
        let is_context = unsafe { ffi::PyContext_CheckExact(ctx) } != 0;
        if !is_context {
            // Not a contextvars.Context (call_soon(..., context=obj)):
            // asyncio calls `obj.run(cb, *args)`, whatever obj is, and
            // reports what that raises (AttributeError for most objects).
            let run = self.context.bind(py).getattr(pyo3::intern!(py, "run"))?;
            let mut all = vec![func];
            all.extend(args.iter());
            run.call1(PyTuple::new(py, all)?)?;
            return Ok(());
        }
        // SAFETY: `ctx`, `func` and `args` are live objects we hold strong
        // references to for the whole block (`args` is an exact tuple, so
        // its item array is valid for its size); PyContext_Enter/Exit are paired
        // exactly as Context.run pairs them, and an exception raised by the
        // call stays set across PyContext_Exit (which does not clear it);
        // `task_steps::finished` gets the live `func` with the GIL held.
        unsafe {
            if ffi::PyContext_Enter(ctx) < 0 {
                return Err(PyErr::fetch(py));
            }
            // The tuple's items as a vectorcall argument array (what
            // PyObject_Call would unpack them to).
            let items = (*args.as_ptr().cast::<ffi::PyTupleObject>())
                .ob_item
                .as_ptr();
            let nargs = ffi::PyTuple_GET_SIZE(args.as_ptr()) as usize;
            let result =
                ffi::PyObject_Vectorcall(func.as_ptr(), items, nargs, std::ptr::null_mut());
            let exit_failed = ffi::PyContext_Exit(ctx) < 0;
            if result.is_null() {
                return Err(PyErr::fetch(py));
            }
            ffi::Py_DECREF(result);
            if exit_failed {
                return Err(PyErr::fetch(py));
            }
            if let Some(counter) = tasks_finished {
                if task_steps::finished(py, func.as_ptr()) {
                    counter.add(1);
                }
            }
        }
        Ok(())
    }

    /// asyncio's `Handle.cancel()`: mark, keep a repr in debug mode, drop the
    /// callback and its arguments. Returns whether this call cancelled it.
    pub(crate) fn cancel_once(slf: &Bound<'_, Self>) -> PyResult<bool> {
        let this = slf.get();
        if this.cancelled.swap(true, Ordering::AcqRel) {
            return Ok(false);
        }
        if this.event_loop.get().debug_enabled() {
            let r = slf.repr()?.into_any().unbind();
            *this.repr_cache.lock() = Some(r);
        }
        let old = this.callback.lock().take();
        drop(old); // outside the lock: dropping may run Python code
        Ok(true)
    }

    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(cb) = self.callback.try_lock() {
            if let Some(cb) = cb.as_ref() {
                visit.call(&cb.func)?;
                visit.call(&cb.args)?;
            }
        }
        visit.call(&self.context)?;
        visit.call(&self.event_loop)?;
        visit.call(&self.source_traceback)?;
        if let Some(r) = self.repr_cache.try_lock() {
            visit.call(&*r)?;
        }
        Ok(())
    }
}

/// NOTE: a handle in the ready queue or the timer heap is owned by the loop,
/// so no cycle through it can be garbage while it is queued; it is untracked
/// from the cyclic GC meanwhile (gen-0 collections would otherwise traverse
/// every queued handle: ~30% of call_soon's cost). When it leaves the queue,
/// `release` tracks it again if anyone else still holds it (e.g.
/// `self._timer = loop.call_later(..., self._cb)` forms a cycle the GC must
/// see), otherwise it is freed at once.
pub(crate) fn untrack(obj: &Bound<'_, PyAny>) {
    // SAFETY: `obj` is a live GC-capable object (pyclasses with
    // __traverse__ are); untracking an object is always allowed.
    unsafe { ffi::PyObject_GC_UnTrack(obj.as_ptr().cast()) };
}

/// Tracks a handle that is not queued (a pooled handle comes untracked, see
/// `freelist`).
pub(crate) fn track(obj: &Bound<'_, PyAny>) {
    let ptr = obj.as_ptr();
    // SAFETY: `obj` is live and GC-capable; tracking is only done on an
    // untracked object, as PyObject_GC_Track requires.
    unsafe {
        if ffi::PyObject_GC_IsTracked(ptr) == 0 {
            ffi::PyObject_GC_Track(ptr.cast());
        }
    }
}

/// Drops the loop's reference to a handle that left the queue (see `untrack`).
pub(crate) fn release<T>(py: Python<'_>, obj: Py<T>) {
    let obj = obj.into_bound(py).into_any();
    // SAFETY: `obj` is a live object we hold a reference to.
    if unsafe { ffi::Py_REFCNT(obj.as_ptr()) } > 1 {
        track(&obj);
    }
}

impl TimerHandle {
    /// The deadline on the loop's clock.
    #[inline]
    pub(crate) fn when_secs(&self) -> f64 {
        self.when
    }

    pub(crate) fn new(when: f64, when_obj: Option<Py<PyAny>>) -> Self {
        Self {
            when,
            when_obj,
            scheduled: AtomicBool::new(true),
        }
    }

    /// asyncio's `TimerHandle.cancel()`: a scheduled timer also counts as
    /// cancelled for the loop's heap compaction.
    pub(crate) fn cancel_timer(slf: &Bound<'_, Self>) -> PyResult<()> {
        let base = slf.as_super();
        if Handle::cancel_once(base)? && slf.get().scheduled.load(Ordering::Relaxed) {
            base.get().event_loop.get().timer_was_cancelled(slf.py());
        }
        Ok(())
    }

    pub(crate) fn set_unscheduled(&self) {
        self.scheduled.store(false, Ordering::Relaxed);
    }
}

/// NOTE: `cancel` of both handle types is a hand-written entry in
/// `event_loop/fastcall.rs` (timer create+cancel is a hot path).
#[pymethods]
impl Handle {
    fn cancelled(&self) -> bool {
        self.is_cancelled()
    }

    fn get_context(&self, py: Python<'_>) -> Py<PyAny> {
        self.context.clone_ref(py)
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        if let Some(r) = slf.get().repr_cache.lock().as_ref() {
            return Ok(r.clone_ref(slf.py()));
        }
        Ok(py::call_helper(slf.py(), "_handle_repr", (slf,))?.unbind())
    }

    /// Runs the callback as the loop does (asyncio's `Handle._run`): an
    /// exception goes to the loop's exception handler.
    fn _run(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        let loop_obj = this.event_loop.bind(slf.py());
        let m = &loop_obj.get().metrics;
        EventLoop::run_handle(loop_obj, slf, m.enabled.then_some(&m.tasks_finished))
    }

    #[getter]
    fn _callback<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.callback_parts(py).map(|(f, _)| f)
    }

    #[getter]
    fn _args<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyTuple>> {
        self.callback_parts(py).map(|(_, a)| a)
    }

    #[getter]
    fn _cancelled(&self) -> bool {
        self.is_cancelled()
    }

    #[getter]
    fn _context(&self, py: Python<'_>) -> Py<PyAny> {
        self.context.clone_ref(py)
    }

    #[getter]
    fn _loop(&self, py: Python<'_>) -> Py<EventLoop> {
        self.event_loop.clone_ref(py)
    }

    #[getter]
    fn _source_traceback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.source_traceback.as_ref().map(|t| t.clone_ref(py))
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.traverse(&visit)
    }

    fn __clear__(&self) {
        let old = self.callback.lock().take();
        drop(old);
        let old = self.repr_cache.lock().take();
        drop(old);
    }
}

#[pymethods]
impl TimerHandle {
    fn when(&self, py: Python<'_>) -> Py<PyAny> {
        match &self.when_obj {
            Some(w) => w.clone_ref(py),
            None => self
                .when
                .into_pyobject(py)
                .map(|f| f.into_any().unbind())
                .unwrap_or_else(|e| match e {}),
        }
    }

    #[getter]
    fn _when(&self, py: Python<'_>) -> Py<PyAny> {
        self.when(py)
    }

    #[getter]
    fn _scheduled(&self) -> bool {
        self.scheduled.load(Ordering::Relaxed)
    }

    /// asyncio orders TimerHandles by `when`; equality also compares the
    /// callback, arguments and cancelled state.
    fn __richcmp__(
        slf: &Bound<'_, Self>,
        other: &Bound<'_, PyAny>,
        op: CompareOp,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let Ok(other) = other.cast::<TimerHandle>() else {
            return Ok(py.NotImplemented());
        };
        let (a, b) = (slf.get().when, other.get().when);
        let equal = || -> PyResult<bool> {
            let (x, y) = (slf.as_super().get(), other.as_super().get());
            if a != b || x.is_cancelled() != y.is_cancelled() {
                return Ok(false);
            }
            // A cancelled handle has dropped its callback: both are None.
            let (xf, xa) = x.callback_parts(py).unzip();
            let (yf, ya) = y.callback_parts(py).unzip();
            Ok(xf.into_pyobject(py)?.eq(yf.into_pyobject(py)?)?
                && xa.into_pyobject(py)?.eq(ya.into_pyobject(py)?)?)
        };
        let r = match op {
            CompareOp::Lt => a < b,
            CompareOp::Gt => a > b,
            CompareOp::Le => a < b || equal()?,
            CompareOp::Ge => a > b || equal()?,
            CompareOp::Eq => equal()?,
            CompareOp::Ne => !equal()?,
        };
        Ok(pyo3::types::PyBool::new(py, r)
            .to_owned()
            .into_any()
            .unbind())
    }

    fn __hash__(&self, py: Python<'_>) -> PyResult<isize> {
        self.when.into_pyobject(py)?.hash()
    }
}

impl crate::freelist::Pooled for Handle {
    fn pool() -> &'static crate::freelist::Pool {
        &crate::freelist::HANDLES
    }
}

impl crate::freelist::Pooled for TimerHandle {
    fn pool() -> &'static crate::freelist::Pool {
        &crate::freelist::TIMER_HANDLES
    }
}
