//! Scheduling: `call_soon`, `call_soon_threadsafe`, `call_at`, and the wake-up
//! of a loop blocked in poll.
//!
//! NOTE: handles from other threads go into the same queue as `call_soon`'s,
//! under the same lock, so `call_soon_threadsafe` keeps FIFO order with
//! `call_soon` exactly as asyncio's single deque does. With the GIL the lock
//! is almost never contended: the other thread needs the GIL to call us, and
//! the loop thread only releases the GIL while blocked in poll, not holding
//! it. Without the GIL it is, and stays sound: nothing under it calls Python
//! or allocates or frees a Python object (docs/python-versions.md).

use std::sync::atomic::Ordering;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyFloat, PyInt, PyTuple};

use super::watcher::Ready;
use super::EventLoop;
use crate::clock;
use crate::handles::{self, Handle, TimerHandle};
use crate::metrics::Kind;
use crate::py;

/// A delay or deadline as a float, computed as asyncio computes it.
fn seconds(base: f64, value: &Bound<'_, PyAny>) -> PyResult<f64> {
    if value.is_exact_instance_of::<PyFloat>() || value.is_exact_instance_of::<PyInt>() {
        return Ok(base + value.extract::<f64>()?);
    }
    // NOTE: asyncio evaluates `self.time() + delay`; doing the same keeps its
    // exceptions (TypeError for a str, OverflowError for a huge int).
    PyFloat::new(value.py(), base).add(value)?.extract::<f64>()
}

impl EventLoop {
    /// Builds a Handle for `callback(*args)` in `context` (a copy of the
    /// current context when `None`); `kind` is what schedules it (metrics).
    pub(crate) fn make_handle<'py>(
        slf: &Bound<'py, Self>,
        callback: Bound<'py, PyAny>,
        args: Bound<'py, PyTuple>,
        context: Option<Bound<'py, PyAny>>,
        kind: Kind,
    ) -> PyResult<Handle> {
        let py = slf.py();
        let context = match context {
            Some(c) if !c.is_none() => c,
            _ => py::copy_context(py)?,
        };
        let tb = if slf.get().debug_enabled() {
            Some(py::call_helper(py, "_extract_stack", ())?.unbind())
        } else {
            None
        };
        let handle = Handle::new(
            callback.unbind(),
            args.unbind(),
            context.unbind(),
            slf.clone().unbind(),
            tb,
            kind,
        );
        if slf.get().metrics.task_stats.load(Ordering::Relaxed) {
            handle.set_scheduled_ns(crate::metrics::clock::monotonic_now_ns());
        }
        Ok(handle)
    }

    /// Debug-mode checks asyncio makes before scheduling.
    pub(crate) fn debug_checks(
        slf: &Bound<'_, Self>,
        callback: &Bound<'_, PyAny>,
        method: &str,
        check_thread: bool,
    ) -> PyResult<()> {
        if check_thread {
            slf.get().check_thread()?;
        }
        py::call_helper(slf.py(), "_check_callback", (callback, method))?;
        Ok(())
    }

    /// `call_soon` (`threadsafe == false`) and `call_soon_threadsafe`: the
    /// same queue; the thread-safe variant skips the debug thread check and
    /// wakes a sleeping loop.
    pub(crate) fn schedule_soon<'py>(
        slf: &Bound<'py, Self>,
        callback: Bound<'py, PyAny>,
        args: Bound<'py, PyTuple>,
        context: Option<Bound<'py, PyAny>>,
        threadsafe: bool,
    ) -> PyResult<Bound<'py, Handle>> {
        let this = slf.get();
        this.check_usable()?;
        if this.debug_enabled() {
            let method = if threadsafe {
                "call_soon_threadsafe"
            } else {
                "call_soon"
            };
            Self::debug_checks(slf, &callback, method, !threadsafe)?;
        }
        let kind = if threadsafe {
            Kind::Threadsafe
        } else {
            Kind::Ready
        };
        let handle = Bound::new(
            slf.py(),
            Self::make_handle(slf, callback, args, context, kind)?,
        )?;
        handles::untrack(handle.as_any());
        {
            let mut core = this.core.lock();
            // NOTE: checked again under the lock: a thread that passed
            // check_usable() may get here after close() drained the queue.
            if this.closed_flag() {
                return Err(super::closed_error());
            }
            core.ready.push(Ready::Handle(handle.clone().unbind()));
        }
        if threadsafe {
            this.wake();
        }
        Ok(handle)
    }

    /// Wakes the loop if it is blocked (or about to block) in poll. Many
    /// callers while it sleeps cost one eventfd write.
    pub(crate) fn wake(&self) {
        if self.sleeping.swap(false, Ordering::SeqCst) {
            // A failed wake (eventfd full) still leaves the fd readable.
            if let Some(waker) = self.waker.read().as_ref() {
                let _ = waker.wake();
            }
            self.metrics.wakeups.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// asyncio's `call_at` with the deadline already a float.
    pub(crate) fn call_at_impl<'py>(
        slf: &Bound<'py, Self>,
        when: f64,
        when_obj: Option<Py<PyAny>>,
        callback: Bound<'py, PyAny>,
        args: Bound<'py, PyTuple>,
        context: Option<Bound<'py, PyAny>>,
        method: &str,
    ) -> PyResult<Bound<'py, TimerHandle>> {
        let this = slf.get();
        this.check_usable()?;
        if this.debug_enabled() {
            Self::debug_checks(slf, &callback, method, true)?;
        }
        let base = Self::make_handle(slf, callback, args, context, Kind::Timer)?;
        let init = PyClassInitializer::from(base).add_subclass(TimerHandle::new(when, when_obj));
        let timer = Bound::new(slf.py(), init)?;
        handles::untrack(timer.as_any());
        {
            let mut core = this.core.lock();
            if this.closed_flag() {
                return Err(super::closed_error());
            }
            core.timers.push(when, timer.clone().unbind());
        }
        this.metrics.timers_scheduled.add(1);
        // A timer added from another thread must re-arm a sleeping loop.
        if this.sleeping.load(Ordering::Relaxed) {
            this.wake();
        }
        Ok(timer)
    }

    /// asyncio's `call_later(delay, callback, *args, context=None)`.
    pub(crate) fn call_later_impl<'py>(
        slf: &Bound<'py, Self>,
        delay: &Bound<'py, PyAny>,
        callback: Bound<'py, PyAny>,
        args: Bound<'py, PyTuple>,
        context: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, TimerHandle>> {
        if delay.is_none() {
            return Err(PyTypeError::new_err("delay must not be None"));
        }
        let when = seconds(clock::monotonic(), delay)?;
        // NOTE: asyncio's call_later goes through call_at: its debug checks
        // name "call_at".
        Self::call_at_impl(slf, when, None, callback, args, context, "call_at")
    }

    /// asyncio's `call_at(when, callback, *args, context=None)`.
    pub(crate) fn call_at_obj<'py>(
        slf: &Bound<'py, Self>,
        when: &Bound<'py, PyAny>,
        callback: Bound<'py, PyAny>,
        args: Bound<'py, PyTuple>,
        context: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, TimerHandle>> {
        if when.is_none() {
            return Err(PyTypeError::new_err("when cannot be None"));
        }
        let w = when.extract::<f64>()?;
        // asyncio's `when()` returns the object it was given.
        let obj = (!when.is_exact_instance_of::<PyFloat>()).then(|| when.clone().unbind());
        Self::call_at_impl(slf, w, obj, callback, args, context, "call_at")
    }
}
