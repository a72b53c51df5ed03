//! The loop's side of `add_reader` / `add_writer` / `remove_*` (asyncio's
//! `_add_reader` & co. of the selector loop): handles, cancellation of
//! replaced callbacks, and queuing callbacks when their fd is ready.

use std::os::fd::RawFd;
use std::sync::atomic::Ordering;

use pyo3::exceptions::{PyAttributeError, PyOverflowError, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyInt, PyTuple};

use super::watcher::Watcher;
use super::EventLoop;
use crate::errors;
use crate::handles::{self, Handle};
use crate::io::fd_watchers::Direction;

/// What `fileobj_to_fd` found: an fd, or a non-negative number past a C
/// int (no such fd: asyncio's selector fails to register it with
/// OverflowError, and finds nothing to remove).
pub(crate) enum FdNumber {
    Fd(RawFd),
    TooLarge,
}

/// selectors' `_fileobj_to_fd`: an int, or an object whose `fileno()` is one.
pub(crate) fn fileobj_to_fd(obj: &Bound<'_, PyAny>) -> PyResult<FdNumber> {
    let py = obj.py();
    let number = if obj.is_instance_of::<PyInt>() {
        obj.clone()
    } else {
        // `int(fileobj.fileno())`; its AttributeError, TypeError or
        // ValueError become selectors' ValueError.
        match obj
            .call_method0(intern!(py, "fileno"))
            .and_then(|f| py.get_type::<PyInt>().call1((f,)))
        {
            Ok(fd) => fd,
            Err(e)
                if e.is_instance_of::<PyAttributeError>(py)
                    || e.is_instance_of::<PyTypeError>(py)
                    || e.is_instance_of::<PyValueError>(py) =>
            {
                return Err(PyValueError::new_err(format!(
                    "Invalid file object: {}",
                    obj.repr()?
                )));
            }
            Err(e) => return Err(e),
        }
    };
    if number.lt(0)? {
        return Err(PyValueError::new_err(format!(
            "Invalid file descriptor: {number}"
        )));
    }
    Ok(match number.extract::<RawFd>() {
        Ok(fd) => FdNumber::Fd(fd),
        Err(_) => FdNumber::TooLarge,
    })
}

impl EventLoop {
    /// asyncio's `_add_reader` / `_add_writer`: registers `callback(*args)`
    /// for `fileobj` (checking, as asyncio, that the loop is open first).
    pub(crate) fn add_watch_fileobj<'py>(
        slf: &Bound<'py, Self>,
        fileobj: &Bound<'py, PyAny>,
        dir: Direction,
        callback: Bound<'py, PyAny>,
        args: Bound<'py, PyTuple>,
    ) -> PyResult<Bound<'py, Handle>> {
        slf.get().check_usable()?;
        match fileobj_to_fd(fileobj)? {
            FdNumber::Fd(fd) => Self::add_watch(slf, fd, dir, callback, args),
            FdNumber::TooLarge => Err(PyOverflowError::new_err(
                "Python int too large to convert to C int",
            )),
        }
    }

    /// asyncio's `_remove_reader` / `_remove_writer` for `fileobj` (a closed
    /// loop answers False before looking at it, as asyncio does).
    pub(crate) fn remove_watch_fileobj(
        slf: &Bound<'_, Self>,
        fileobj: &Bound<'_, PyAny>,
        dir: Direction,
    ) -> PyResult<bool> {
        if slf.get().closed_flag() {
            return Ok(false);
        }
        match fileobj_to_fd(fileobj)? {
            FdNumber::Fd(fd) => Self::remove_watch(slf, fd, dir),
            FdNumber::TooLarge => Ok(false),
        }
    }

    /// Registers `callback(*args)` for `fd` and returns its handle; a
    /// callback it replaces is cancelled.
    pub(crate) fn add_watch<'py>(
        slf: &Bound<'py, Self>,
        fd: RawFd,
        dir: Direction,
        callback: Bound<'py, PyAny>,
        args: Bound<'py, PyTuple>,
    ) -> PyResult<Bound<'py, Handle>> {
        let py = slf.py();
        slf.get().check_usable()?;
        let handle = Self::make_handle(slf, callback, args, None, crate::metrics::Kind::Io)?;
        let handle = Bound::new(py, handle)?;
        // Long-lived and shared with the caller: the GC must see it.
        handles::track(handle.as_any());
        Self::add_watcher(slf, fd, dir, Watcher::Handle(handle.clone().unbind()))?;
        Ok(handle)
    }

    /// Sets `watcher` as the reader or writer of `fd`; a Handle it replaces
    /// is cancelled.
    pub(crate) fn add_watcher(
        slf: &Bound<'_, Self>,
        fd: RawFd,
        dir: Direction,
        watcher: Watcher,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let added = {
            let mut core = this.core.lock();
            let added = if this.closed_flag() {
                Err(super::closed_error())
            } else if dir == Direction::Read && watcher.wants_one_wake_up() {
                core.watchers
                    .add_oneshot_reader(this.epoll_fd, fd, watcher)
                    .map_err(errors::os_error)
            } else {
                core.watchers
                    .add(this.epoll_fd, fd, dir, watcher)
                    .map_err(errors::os_error)
            };
            // Counted under the lock, with the registration it counts.
            if let Ok((_, true)) = &added {
                this.io_sources.fetch_add(1, Ordering::Relaxed);
            }
            added
        };
        // NOTE: on error the watcher was dropped under the lock; that is safe
        // because the caller still holds its own reference.
        let (old, _) = added?;
        if let Some(old) = old {
            let cancelled = old.cancel(py);
            old.release(py);
            cancelled?;
        }
        Ok(())
    }

    /// Removes the callback for `fd`: whether one was registered (a Handle
    /// is cancelled).
    pub(crate) fn remove_watch(slf: &Bound<'_, Self>, fd: RawFd, dir: Direction) -> PyResult<bool> {
        let py = slf.py();
        let this = slf.get();
        let old = {
            let mut core = this.core.lock();
            if this.closed_flag() {
                return Ok(false);
            }
            let (old, gone) = core
                .watchers
                .remove(this.epoll_fd, fd, dir)
                .map_err(errors::os_error)?;
            if gone {
                this.io_sources.fetch_sub(1, Ordering::Relaxed);
            }
            old
        };
        match old {
            Some(old) => {
                let cancelled = old.cancel(py);
                old.release(py);
                cancelled?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Arms `fd`'s oneshot reader again after a wake-up that found nothing
    /// to read (see `FdWatchers::add_oneshot_reader`).
    pub(crate) fn rearm_watch(&self, fd: RawFd) -> PyResult<()> {
        let mut core = self.core.lock();
        if self.closed_flag() {
            return Ok(());
        }
        core.watchers
            .rearm(self.epoll_fd, fd)
            .map_err(errors::os_error)
    }

    /// Records whether `fd` belongs to an open native stream transport
    /// that is not closing (see `_fd_has_transport`).
    pub(crate) fn set_transport_fd(&self, fd: RawFd, owned: bool) {
        let mut core = self.core.lock();
        if owned {
            core.transport_fds.insert(fd);
        } else {
            core.transport_fds.remove(fd);
        }
    }

    /// asyncio's `_process_events`: queue the callbacks of ready fds
    /// (`(fd, read, write)` in selectors' terms).
    pub(crate) fn process_io_events(&self, py: Python<'_>, events: &[(RawFd, bool, bool)]) {
        let mut dropped = Vec::new();
        {
            let mut core = self.core.lock();
            let super::Core {
                ready, watchers, ..
            } = &mut *core;
            let mut n = 0;
            let (mut reads, mut writes) = (0, 0);
            for &event in events {
                reads += event.1 as u64;
                writes += event.2 as u64;
                n += watchers.on_ready(
                    self.epoll_fd,
                    event,
                    |w| w.is_cancelled(py),
                    |w, dir| ready.push(w.ready(py, dir)),
                    &mut dropped,
                );
            }
            if n > 0 {
                self.io_sources.fetch_sub(n, Ordering::Relaxed);
            }
            self.metrics.fd_read_events.add(reads);
            self.metrics.fd_write_events.add(writes);
        }
        // Released after the lock: freeing a handle may run Python code.
        for w in dropped {
            w.release(py);
        }
    }
}
