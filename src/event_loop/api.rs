//! The one `#[pymethods]` block of `EventLoop`: thin argument shims over the
//! logic in `ready.rs`, `tasks.rs` and `tick.rs`. The hottest methods
//! (`call_soon`, `call_soon_threadsafe`, `call_later`, `call_at`, `time`,
//! `get_debug`, `create_future`, `create_task`) have hand-written entries in
//! `fastcall.rs` instead. The long tail (run_until_complete, exception
//! handler, executor, asyncgens) is in `python/ferroloop/_loop.py`.

use std::os::fd::RawFd;
use std::sync::atomic::Ordering;

use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use super::watcher::Ready;
use super::EventLoop;
use crate::errors;
use crate::handles::Handle;
use crate::io::fd_watchers::Direction;
use crate::io::poller;
use crate::py;

#[pymethods]
impl EventLoop {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn __new__(_args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        crate::metrics::task_steps::init(_args.py());
        Self::create()
    }

    fn set_task_factory(&self, factory: Bound<'_, PyAny>) -> PyResult<()> {
        if !factory.is_none() && !factory.is_callable() {
            return Err(PyTypeError::new_err(
                "task factory must be a callable or None",
            ));
        }
        let new = (!factory.is_none()).then(|| factory.unbind());
        let old = std::mem::replace(&mut *self.task_factory.lock(), new);
        drop(old);
        Ok(())
    }

    fn get_task_factory(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.task_factory.lock().as_ref().map(|f| f.clone_ref(py))
    }

    /// Sets the flag only; `Loop.set_debug` adds asyncio's side effects.
    fn _set_debug_flag(&self, enabled: bool) {
        self.debug.store(enabled, Ordering::Relaxed);
    }

    fn stop(&self) {
        // SeqCst: ordered against the loop's `sleeping` handshake, so a stop()
        // from another thread is either seen by the loop or wakes it.
        self.stopping.store(true, Ordering::SeqCst);
        // NOTE: stop() from another thread is not thread-safe in asyncio
        // either, but waking costs nothing when the loop is not asleep.
        self.wake();
    }

    fn is_running(&self) -> bool {
        self.running()
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// asyncio's `_check_thread`.
    fn _check_thread(&self) -> PyResult<()> {
        self.check_thread()
    }

    fn _check_closed(&self) -> PyResult<()> {
        self.check_usable()
    }

    /// Marks the loop as running in the calling thread.
    fn _enter_running(&self) -> PyResult<()> {
        self.check_usable()?;
        let me = py::thread_ident();
        if self
            .thread_id
            .compare_exchange(0, me, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(PyRuntimeError::new_err(
                "This event loop is already running",
            ));
        }
        self.metrics_enter_running();
        Ok(())
    }

    fn _leave_running(&self) {
        self.metrics_leave_running();
        self.stopping.store(false, Ordering::Relaxed);
        self.thread_id.store(0, Ordering::Release);
    }

    /// asyncio's `while True: self._run_once(); if self._stopping: break`.
    fn _run_ticks(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::run_ticks(slf)
    }

    /// asyncio's `_run_once`.
    fn _run_once(slf: &Bound<'_, Self>) -> PyResult<()> {
        slf.get().check_usable()?;
        Self::run_once(slf)
    }

    /// A Handle for `callback(*args)` that is not scheduled (asyncio's
    /// `events.Handle(callback, args, loop, None)`).
    #[pyo3(signature = (callback, *args))]
    fn _new_handle<'py>(
        slf: &Bound<'py, Self>,
        callback: Bound<'py, PyAny>,
        args: Bound<'py, PyTuple>,
    ) -> PyResult<Bound<'py, Handle>> {
        let kind = crate::metrics::Kind::Ready;
        let handle = Bound::new(
            slf.py(),
            Self::make_handle(slf, callback, args, None, kind)?,
        )?;
        crate::handles::track(handle.as_any());
        Ok(handle)
    }

    /// asyncio's `_add_reader`: `add_reader` without the transport check.
    #[pyo3(signature = (fd, callback, *args))]
    fn _add_reader<'py>(
        slf: &Bound<'py, Self>,
        fd: &Bound<'py, PyAny>,
        callback: Bound<'py, PyAny>,
        args: Bound<'py, PyTuple>,
    ) -> PyResult<Bound<'py, Handle>> {
        Self::add_watch_fileobj(slf, fd, Direction::Read, callback, args)
    }

    /// asyncio's `_add_writer`.
    #[pyo3(signature = (fd, callback, *args))]
    fn _add_writer<'py>(
        slf: &Bound<'py, Self>,
        fd: &Bound<'py, PyAny>,
        callback: Bound<'py, PyAny>,
        args: Bound<'py, PyTuple>,
    ) -> PyResult<Bound<'py, Handle>> {
        Self::add_watch_fileobj(slf, fd, Direction::Write, callback, args)
    }

    /// asyncio's `_remove_reader`.
    fn _remove_reader(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        Self::remove_watch_fileobj(slf, fd, Direction::Read)
    }

    /// asyncio's `_remove_writer`.
    fn _remove_writer(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        Self::remove_watch_fileobj(slf, fd, Direction::Write)
    }

    /// asyncio's `_add_callback_signalsafe`: queue an existing handle unless
    /// it is cancelled, and wake the loop.
    fn _add_callback(&self, handle: Bound<'_, Handle>) -> PyResult<()> {
        if !handle.get().is_cancelled() {
            handle.get().set_kind(crate::metrics::Kind::Threadsafe);
            let mut core = self.core.lock();
            if self.closed_flag() {
                return Ok(()); // asyncio's closed loop drops it too
            }
            core.ready.push(Ready::Handle(handle.unbind()));
            drop(core);
            self.wake();
        }
        Ok(())
    }

    /// Watches the read end of the signal wakeup socketpair.
    fn _watch_signal_fd(&self, fd: i32) -> PyResult<()> {
        self.check_usable()?;
        let mut core = self.core.lock();
        if self.closed_flag() {
            return Err(super::closed_error());
        }
        poller::watch_signal_fd(self.epoll_fd, core.signal_fd, fd).map_err(errors::os_error)?;
        if core.signal_fd.replace(fd).is_none() {
            self.io_sources.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn _unwatch_signal_fd(&self) -> PyResult<()> {
        let mut core = self.core.lock();
        if self.closed_flag() {
            return Ok(());
        }
        if let Some(fd) = core.signal_fd.take() {
            poller::unwatch_signal_fd(self.epoll_fd, fd);
            self.io_sources.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn _close_native(&self, py: Python<'_>) {
        self.close_core();
        if self.metrics.enabled {
            crate::metrics::slow::stop_watchdog_if_unused(py);
        }
    }

    #[getter]
    fn _thread_id(&self) -> Option<u64> {
        match self.thread_id.load(Ordering::Acquire) {
            0 => None,
            t => Some(t),
        }
    }

    #[getter]
    fn _stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    #[getter]
    fn _closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    #[getter]
    fn _debug(&self) -> bool {
        self.debug_enabled()
    }

    #[getter]
    fn _timer_cancelled_count(&self) -> usize {
        self.timer_cancelled.load(Ordering::Relaxed)
    }

    /// Number of handles in the ready queue (asyncio's `len(loop._ready)`).
    fn _ready_count(&self) -> usize {
        self.core.lock().ready.len()
    }

    /// Whether `fd` belongs to an open native stream transport that is not
    /// closing (asyncio's `_ensure_fd_no_transport` check).
    fn _fd_has_transport(&self, fd: RawFd) -> bool {
        self.core.lock().transport_fds.contains(fd)
    }

    /// Sets or clears the mark `_fd_has_transport` reads (loop.sendfile
    /// lifts it while it uses the transport's socket directly).
    fn _set_fd_has_transport(&self, fd: RawFd, owned: bool) {
        self.set_transport_fd(fd, owned);
    }

    /// sock_recv's wait on a plain socket's fd: a future resolved with
    /// `recv(n)` once the fd is readable (see `sock_recv.rs`).
    fn _sock_recv_wait<'py>(
        slf: &Bound<'py, Self>,
        fd: RawFd,
        n: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        slf.get().check_usable()?;
        super::sock_recv::SockRecvWaiter::start(slf, fd, n)
    }

    /// Number of entries in the timer heap (asyncio's `len(loop._scheduled)`).
    fn _scheduled_count(&self) -> usize {
        self.core.lock().timers.len()
    }

    /// The raw metrics snapshot (`ferroloop._stats.LoopStats` shapes it).
    fn _stats_raw<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        self.stats_raw(py)
    }

    fn _slow_records<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyList>> {
        self.slow_records(py)
    }

    /// Adds a slow-callback record (a `SlowCallback`'s fields, in order).
    fn _push_slow_record(&self, record: super::stats::SlowTuple) {
        self.push_slow_record(record);
    }

    fn _set_slow_threshold(&self, seconds: f64) -> PyResult<()> {
        self.set_slow_threshold(seconds)
    }

    fn _set_task_stats(&self, enabled: bool) {
        self.metrics.task_stats.store(enabled, Ordering::Relaxed);
    }

    fn _set_precise_metrics(&self, enabled: bool) {
        self.metrics.precise.store(enabled, Ordering::Relaxed);
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.traverse(&visit)
    }

    fn __clear__(&self) {
        self.clear();
    }
}
