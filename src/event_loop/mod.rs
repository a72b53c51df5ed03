//! The `EventLoop` pyclass: the native core under `ferroloop.Loop`.
//!
//! Threading model: every field is either immutable, atomic, or behind a
//! parking_lot lock that is never held while Python code runs (dropping a
//! Python object can run arbitrary code, so things taken out of a locked
//! structure are dropped after the lock is released).

mod api;
pub(crate) mod fastcall;
mod fd_watch;
mod ready;
pub(crate) mod sock_recv;
mod stats;
mod tasks;
mod tick;
pub(crate) mod watcher;

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Once};

use mio::Waker;
use parking_lot::{Mutex, RwLock};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::{PyTraverseError, PyVisit};

use crate::errors;
use crate::handles::{self, TimerHandle};
use crate::io::fd_set::FdSet;
use crate::io::fd_watchers::FdWatchers;
use crate::io::poller::{IoEvent, Poller};
use crate::metrics::LoopMetrics;
use crate::ready_queue::ReadyQueue;
use crate::timers::TimerHeap;
use watcher::{Ready, Watcher};

/// Bumped in the child after every `fork()`: a loop created before the fork
/// shares its epoll instance with the parent and must not run in the child.
static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);
static FORK_HOOK: Once = Once::new();

extern "C" fn after_fork_in_child() {
    FORK_GENERATION.fetch_add(1, Ordering::Relaxed);
}

fn install_fork_hook() {
    FORK_HOOK.call_once(|| {
        // SAFETY: registers a handler that only touches an atomic, which is
        // async-signal-safe and valid in a freshly forked child.
        unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
    });
}

#[cold]
#[inline(never)]
pub(crate) fn closed_error() -> PyErr {
    PyRuntimeError::new_err("Event loop is closed")
}

/// Loop-thread state behind one lock.
#[derive(Default)]
pub(crate) struct Core {
    /// asyncio's `_ready`.
    pub ready: ReadyQueue<Ready>,
    /// asyncio's `_scheduled`.
    pub timers: TimerHeap<Py<TimerHandle>>,
    /// add_reader / add_writer registrations (asyncio's selector keys).
    pub watchers: FdWatchers<Watcher>,
    /// fds of native stream transports that are open and not closing (the
    /// selector loop's `_transports` check for add_reader & co.).
    pub transport_fds: FdSet,
    /// The watched signal wakeup fd (see `io::poller::watch_signal_fd`).
    pub signal_fd: Option<RawFd>,
}

#[pyclass(frozen, subclass, module = "ferroloop._ferroloop")]
pub struct EventLoop {
    pub(crate) core: Mutex<Core>,
    /// `None` once the loop is closed.
    pub(crate) poller: Mutex<Option<Poller>>,
    /// The poller's epoll fd, for fd watcher registrations (which must not
    /// wait for the poller's lock; see `io::fd_watchers`). Only used under
    /// the core lock after checking `closed`, which is set before the
    /// poller (and so this fd) is dropped.
    pub(crate) epoll_fd: RawFd,
    /// The poller's eventfd waker, for other threads; `None` once the loop
    /// is closed (close() closes the eventfd, as asyncio's closes its
    /// self-pipe). A wake holds the read lock while it writes, so the fd is
    /// never closed, and its number reused, under a writer.
    pub(crate) waker: RwLock<Option<Arc<Waker>>>,
    /// The loop is (about to be) blocked in poll: wake it on new work.
    pub(crate) sleeping: AtomicBool,
    pub(crate) stopping: AtomicBool,
    pub(crate) closed: AtomicBool,
    pub(crate) debug: AtomicBool,
    /// `threading.get_ident()` of the running thread; 0 when not running.
    pub(crate) thread_id: AtomicU64,
    /// asyncio's `_timer_cancelled_count`.
    pub(crate) timer_cancelled: AtomicUsize,
    /// User I/O registrations: with none, a zero-timeout poll is skipped.
    pub(crate) io_sources: AtomicUsize,
    pub(crate) task_factory: Mutex<Option<Py<PyAny>>>,
    /// Ready user fds of the current tick (a buffer reused by the loop thread).
    pub(crate) io_events: Mutex<Vec<IoEvent>>,
    /// The last poll returned user fd events (see `wait_for_work`).
    pub(crate) io_busy: AtomicBool,
    /// Always-on counters and histograms (see `metrics`).
    pub(crate) metrics: Arc<LoopMetrics>,
    fork_generation: u64,
    creator_pid: u32,
}

/// The current fork generation (bumped in every forked child).
pub(crate) fn fork_generation() -> u64 {
    FORK_GENERATION.load(Ordering::Relaxed)
}

impl EventLoop {
    pub(crate) fn create() -> PyResult<Self> {
        install_fork_hook();
        let poller = Poller::new().map_err(errors::os_error)?;
        let waker = poller.waker();
        let epoll_fd = poller.epoll_fd();
        Ok(Self {
            core: Mutex::new(Core::default()),
            poller: Mutex::new(Some(poller)),
            epoll_fd,
            waker: RwLock::new(Some(waker)),
            sleeping: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            debug: AtomicBool::new(false),
            thread_id: AtomicU64::new(0),
            timer_cancelled: AtomicUsize::new(0),
            io_sources: AtomicUsize::new(0),
            task_factory: Mutex::new(None),
            io_events: Mutex::new(Vec::new()),
            io_busy: AtomicBool::new(false),
            metrics: LoopMetrics::new(fork_generation()),
            fork_generation: fork_generation(),
            creator_pid: std::process::id(),
        })
    }

    #[inline]
    pub(crate) fn debug_enabled(&self) -> bool {
        self.debug.load(Ordering::Relaxed)
    }

    #[inline]
    pub(crate) fn closed_flag(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    #[inline]
    pub(crate) fn running(&self) -> bool {
        self.thread_id.load(Ordering::Acquire) != 0
    }

    /// asyncio's `_check_closed`, plus the fork check.
    #[inline]
    pub(crate) fn check_usable(&self) -> PyResult<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(closed_error());
        }
        self.check_not_forked()
    }

    #[inline]
    pub(crate) fn check_not_forked(&self) -> PyResult<()> {
        if self.fork_generation != fork_generation() {
            return Err(self.forked_error());
        }
        Ok(())
    }

    #[cold]
    #[inline(never)]
    fn forked_error(&self) -> PyErr {
        PyRuntimeError::new_err(format!(
            "this event loop was created in process {} and cannot be used \
             after os.fork() in a child process; create a new event loop \
             in the child",
            self.creator_pid
        ))
    }

    /// The loop starts running in this thread: its metrics name the thread,
    /// count this thread's socket bytes, and the watchdog watches it.
    pub(crate) fn metrics_enter_running(&self) {
        let m = &self.metrics;
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() } as u64;
        m.thread_ident
            .store(crate::py::thread_ident(), Ordering::Relaxed);
        m.native_thread.store(tid, Ordering::Release);
        crate::metrics::set_current(Some(m));
        if m.enabled {
            m.ensure_page();
            crate::metrics::slow::ensure_watchdog();
        }
    }

    pub(crate) fn metrics_leave_running(&self) {
        crate::metrics::set_current(None);
        self.metrics.publish_now();
        self.metrics.native_thread.store(0, Ordering::Release);
        self.metrics.thread_ident.store(0, Ordering::Relaxed);
    }

    /// asyncio's `_check_thread` (debug mode only).
    pub(crate) fn check_thread(&self) -> PyResult<()> {
        let tid = self.thread_id.load(Ordering::Acquire);
        if tid != 0 && tid != crate::py::thread_ident() {
            return Err(PyRuntimeError::new_err(
                "Non-thread-safe operation invoked on an event loop other than the current one",
            ));
        }
        Ok(())
    }

    /// Clears the queues and releases the poller (asyncio's `close()` core).
    pub(crate) fn close_core(&self) {
        // NOTE: set before taking the core lock, and the poller (owner of
        // `epoll_fd`) is dropped only after that lock was taken once: a fd
        // watcher registration, which checks `closed` under the lock, never
        // uses a closed epoll fd.
        self.closed.store(true, Ordering::Release);
        self.metrics.closed.store(true, Ordering::Release);
        if let Some(page) = self.metrics.page.get() {
            page.unlink();
        }
        let (ready, timers, watchers) = {
            let mut core = self.core.lock();
            (
                core.ready.drain(),
                core.timers.drain(),
                core.watchers.drain(),
            )
        };
        for t in &timers {
            t.get().set_unscheduled();
        }
        self.timer_cancelled.store(0, Ordering::Relaxed);
        let poller = self.poller.lock().take();
        drop(poller);
        let waker = self.waker.write().take();
        drop(waker);
        // Released outside the lock: handles may hold objects with __del__.
        Python::attach(|py| {
            ready.into_iter().for_each(|r| r.release(py));
            timers.into_iter().for_each(|h| handles::release(py, h));
            watchers.into_iter().for_each(|w| w.release(py));
        });
    }

    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(core) = self.core.try_lock() {
            for r in core.ready.iter() {
                r.visit(visit)?;
            }
            let mut err = Ok(());
            core.timers_for_each(|t| {
                if err.is_ok() {
                    err = visit.call(t);
                }
            });
            err?;
            let mut err = Ok(());
            core.watchers.for_each(|w| {
                if err.is_ok() {
                    err = w.visit(visit);
                }
            });
            err?;
        }
        if let Some(f) = self.task_factory.try_lock() {
            visit.call(&*f)?;
        }
        Ok(())
    }

    fn clear(&self) {
        let (ready, timers, watchers) = {
            let mut core = self.core.lock();
            (
                core.ready.drain(),
                core.timers.drain(),
                core.watchers.drain(),
            )
        };
        let factory = self.task_factory.lock().take();
        Python::attach(|py| {
            ready.into_iter().for_each(|r| r.release(py));
            timers.into_iter().for_each(|h| handles::release(py, h));
            watchers.into_iter().for_each(|w| w.release(py));
        });
        drop(factory);
    }
}

impl Core {
    fn timers_for_each(&self, f: impl FnMut(&Py<TimerHandle>)) {
        self.timers.for_each(f);
    }
}
