//! `create_future` and `create_task`: asyncio's C Future and Task, bound to
//! this loop.

use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::EventLoop;
use crate::metrics::task_steps;
use crate::py;

impl EventLoop {
    /// asyncio's `create_future()`.
    pub(crate) fn create_future_impl<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        py::new_future(slf.py(), slf.as_any())
    }

    /// asyncio's `create_task(coro, *, name=None, context=None)`; a task
    /// factory or extra keywords (3.14's pass-through) take the Python path.
    pub(crate) fn create_task_impl<'py>(
        slf: &Bound<'py, Self>,
        coro: &Bound<'py, PyAny>,
        name: Option<Bound<'py, PyAny>>,
        context: Option<Bound<'py, PyAny>>,
        kwargs: Option<Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let this = slf.get();
        this.check_usable()?;
        // NOTE: counted once made: a call that raises (not a coroutine, a
        // failing factory) made no task, and would stay "alive" forever.
        let has_factory = this.task_factory.lock().is_some();
        if has_factory || kwargs.is_some() {
            let task =
                py::call_helper(py, "_create_task_slow", (slf, coro, name, context, kwargs))?;
            this.metrics.tasks_created.add(1);
            if this.metrics.enabled && task_steps::done_on_creation(&task) {
                this.metrics.tasks_finished.add(1);
            }
            return Ok(task);
        }
        let none = py.None().into_bound(py);
        let task = py::new_task(
            py,
            coro,
            slf.as_any(),
            name.as_ref().unwrap_or(&none),
            context.as_ref().unwrap_or(&none),
        )?;
        this.metrics.tasks_created.add(1);
        if this.debug_enabled() {
            py::call_helper(py, "_trim_source_traceback", (&task,))?;
        }
        if this
            .metrics
            .task_stats
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            let now = crate::metrics::clock::monotonic_now_ns();
            py::call_helper(py, "_task_created", (slf, &task, now))?;
        }
        Ok(task)
    }
}
