"""The long tail of the loop, in Python, over the Rust core.

`Loop` combines the native `EventLoop` (scheduling, timers, the tick, polling)
with `asyncio.AbstractEventLoop`. What lives here is rare or pure policy:
run_until_complete, the exception handler, debug mode, the default executor,
async generators. It mirrors asyncio's `BaseEventLoop` so behaviour and
messages match; asyncio is the reference wherever the two could differ.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import sys
import threading
import traceback
import warnings
import weakref
from asyncio import coroutines, events, format_helpers, futures, tasks
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from typing import TYPE_CHECKING, Any, TypeVar

from . import _ferroloop, _stats
from ._compat import iscoroutinefunction
from ._network import NetworkMixin
from ._signals import SignalsMixin
from ._sockets import SocketsMixin
from ._subprocess import SubprocessMixin

if TYPE_CHECKING:
    import socket
    from types import TracebackType
    from typing import TypeAlias

    from _typeshed import FileDescriptorLike
    from typing_extensions import TypeVarTuple, Unpack

    _Ts = TypeVarTuple("_Ts")
    # asyncio's (typeshed's) names for what these methods take.
    _AwaitableLike: TypeAlias = "Generator[Any, None, _T] | Awaitable[_T]"
    _Context: TypeAlias = dict[str, Any]
    _ExceptionHandler: TypeAlias = Callable[[asyncio.AbstractEventLoop, _Context], object]

_T = TypeVar("_T")

__all__ = ("Loop",)

logger = logging.getLogger("asyncio")

_PY312 = sys.version_info >= (3, 12)
_DEBUG_STACK_DEPTH = 10


def _run_until_complete_cb(fut):
    if not fut.cancelled():
        exc = fut.exception()
        if isinstance(exc, (SystemExit, KeyboardInterrupt)):
            # Issue #22429: run_forever() already finished, no need to
            # stop it.
            return
    futures._get_loop(fut).stop()


class _Worker(threading.Thread):
    """A worker thread of a default executor's native pool (``pool``)."""

    def __init__(self, pool, name):
        super().__init__(target=pool.work, name=name, daemon=True)
        self.pool = pool


def _join_workers_at_exit():
    """What concurrent.futures does for its workers at interpreter exit:
    every native pool stops taking jobs, its workers finish the queued ones
    and are joined. Also for the pools of closed loops, which close() shut
    down without waiting: a worker left running would wake during
    finalization, need the GIL and be forced to exit through Rust frames
    (the process aborts)."""
    workers = [t for t in threading.enumerate() if isinstance(t, _Worker)]
    for t in workers:
        t.pool.shutdown(False)
    for t in workers:
        t.join()


# threading's atexit hooks run before the interpreter finalizes, while
# threads can still run (and in the reverse order: this one after those
# registered later, e.g. concurrent.futures' own).
try:
    threading._register_atexit(_join_workers_at_exit)  # type: ignore[attr-defined]
except (AttributeError, RuntimeError):  # imported while the interpreter exits
    pass


class _DefaultExecutor(concurrent.futures.ThreadPoolExecutor):
    """The loop's default executor: a real ThreadPoolExecutor (same
    max_workers, thread names ``asyncio_N``, submit/shutdown) whose
    run_in_executor path uses a native work queue and worker loop
    (src/executor.rs) instead of concurrent.futures' Python machinery.
    At interpreter exit, ``_join_workers_at_exit`` finishes its queued jobs."""

    def __init__(self):
        super().__init__(thread_name_prefix="asyncio")
        self._native = _ferroloop.ThreadPool(self._max_workers)
        self._native_threads = []
        self._native_lock = threading.Lock()

    def _run_in_executor(self, loop, func, args):
        fut = loop.create_future()
        if self._native.submit_job(loop, fut, func, args):
            with self._native_lock:
                name = f"{self._thread_name_prefix}_{len(self._native_threads)}"
                t = _Worker(self._native, name)
                t.start()
                self._native_threads.append(t)
        return fut

    def __del__(self):
        # Dropped without shutdown() (set_default_executor() replaced it):
        # its idle workers exit, as concurrent.futures' do when their
        # executor is collected; queued jobs still run first.
        native = getattr(self, "_native", None)
        if native is not None:
            native.shutdown(False)

    def shutdown(self, wait=True, *, cancel_futures=False):
        self._native.shutdown(cancel_futures)
        super().shutdown(wait=wait, cancel_futures=cancel_futures)
        if wait:
            with self._native_lock:
                threads = list(self._native_threads)
            for t in threads:
                if t is not threading.current_thread():
                    t.join()


# The ignore below is for two kinds of base-class conflicts only: the
# native call_soon / call_soon_threadsafe / call_later / call_at return
# ferroloop's Handle / TimerHandle, which have asyncio's Handle interface but
# are not subclasses of asyncio.Handle; and typeshed's BaseEventLoop
# .create_datagram_endpoint (asyncio's own, reused as is) differs from its
# AbstractEventLoop declaration.
class Loop(  # type: ignore[misc]
    SignalsMixin,
    SocketsMixin,
    NetworkMixin,
    SubprocessMixin,
    _ferroloop.EventLoop,
    asyncio.AbstractEventLoop,
):
    """An asyncio event loop whose core is written in Rust."""

    # NOTE: the loop's own attributes are slots, and the instance __dict__
    # (kept for code that sets attributes of its own or mock-patches a
    # method) exists only once something does. Without one, 3.12+ specialise
    # `loop.call_soon(...)` and every other method lookup on the loop
    # (LOAD_ATTR_METHOD_LAZY_DICT); with one they cannot (3.12 dropped
    # 3.11's LOAD_METHOD_WITH_DICT), and each lookup takes the generic path:
    # ~230 instructions of a ~2,600-instruction call_soon + run on 3.13.
    __slots__ = (
        "__dict__",
        "__weakref__",
        "_asyncgens",
        "_asyncgens_shutdown_called",
        "_child_pidfds",
        "_clock_resolution",
        "_coroutine_origin_tracking_enabled",
        "_coroutine_origin_tracking_saved_depth",
        "_current_handle",
        "_default_executor",
        "_exception_handler",
        "_executor_shutdown_called",
        "_old_agen_hooks",
        "_signal_handlers",
        "_signal_socks",
        "_slow_callback_handler",
        "_task_stats",
        "_task_stats_group",
        "_transports",
        "_unix_server_sockets",
        "_watched_objects",
        "slow_callback_duration",
    )

    def __init__(self) -> None:
        self._signal_handlers = {}
        self._signal_socks = None
        self._old_agen_hooks = None
        self._exception_handler: _ExceptionHandler | None = None
        self._default_executor: concurrent.futures.Executor | None = None
        self._executor_shutdown_called = False
        # (fd, "r" or "w") -> the file object add_reader/add_writer got.
        self._watched_objects: dict[tuple[int, str], Any] = {}
        self._asyncgens: weakref.WeakSet[AsyncGenerator[Any, Any]] = weakref.WeakSet()
        self._asyncgens_shutdown_called = False
        self._coroutine_origin_tracking_enabled = False
        self._coroutine_origin_tracking_saved_depth = None
        self._current_handle = None
        self._clock_resolution = 1e-9
        # fd -> transport, as asyncio's selector loop keeps it: add_reader &
        # co. refuse an fd a live transport owns.
        self._transports: weakref.WeakValueDictionary[int, asyncio.BaseTransport] = (
            weakref.WeakValueDictionary()
        )
        # Unix server socket -> inode, for cleanup_socket (3.13+).
        self._unix_server_sockets: dict[socket.socket, int] = {}
        # The pidfds of the children whose exit the loop watches.
        self._child_pidfds: set[int] = set()
        # Called (later, on the loop) with each SlowCallback record.
        self._slow_callback_handler: Callable[[_stats.SlowCallback], object] | None = None
        # Per-task stats (set_task_stats): task -> accumulator, weakly.
        self._task_stats: (
            weakref.WeakKeyDictionary[asyncio.Task[Any], _stats._TaskAccumulator] | None
        ) = None
        self._task_stats_group: str | None = None
        # In debug mode, a callback or task step longer than this (seconds)
        # is logged.
        self.slow_callback_duration = 0.1
        self.set_debug(coroutines._is_debug_mode())  # type: ignore[attr-defined]  # private

    @property
    def _task_factory(self):
        # asyncio's create_task, which _create_task_slow calls, reads it.
        return self.get_task_factory()

    @_task_factory.setter
    def _task_factory(self, factory):
        self.set_task_factory(factory)

    def __repr__(self):
        return (
            f"<{self.__class__.__name__} running={self.is_running()} "
            f"closed={self.is_closed()} debug={self.get_debug()}>"
        )

    # -- running and stopping ------------------------------------------------

    def _check_running(self):
        if self.is_running():
            raise RuntimeError("This event loop is already running")
        if events._get_running_loop() is not None:
            raise RuntimeError("Cannot run the event loop while another loop is running")

    def _run_forever_setup(self):
        self._check_closed()
        self._check_running()
        self._set_coroutine_origin_tracking(self.get_debug())
        self._old_agen_hooks = sys.get_asyncgen_hooks()
        self._enter_running()
        sys.set_asyncgen_hooks(
            firstiter=self._asyncgen_firstiter_hook,
            finalizer=self._asyncgen_finalizer_hook,
        )
        events._set_running_loop(self)

    def _run_forever_cleanup(self):
        self._leave_running()
        events._set_running_loop(None)
        self._set_coroutine_origin_tracking(False)
        old = getattr(self, "_old_agen_hooks", None)
        if old is not None:
            self._old_agen_hooks = None
            sys.set_asyncgen_hooks(*old)

    def run_forever(self) -> None:
        """Run until stop() is called."""
        self._run_forever_setup()
        try:
            self._run_ticks()
        finally:
            self._run_forever_cleanup()

    def run_until_complete(self, future: _AwaitableLike[_T]) -> _T:
        """Run until the Future is done; return its result or raise its exception.

        A coroutine is wrapped in a Task.
        """
        self._check_closed()
        self._check_running()

        new_task = not futures.isfuture(future)
        # (ignore: typeshed's ensure_future does not declare the generator-based
        # coroutines that 3.10 and 3.11 still accept)
        fut = tasks.ensure_future(future, loop=self)  # type: ignore[arg-type]
        if new_task:
            # An exception is raised if the future didn't complete, so there
            # is no need to log the "destroy pending task" message.
            fut._log_destroy_pending = False  # type: ignore[attr-defined]  # Task's, private

        fut.add_done_callback(_run_until_complete_cb)
        try:
            self.run_forever()
        except BaseException:
            if new_task and fut.done() and not fut.cancelled():
                # The coroutine raised a BaseException. Consume the exception
                # to not log a warning, the caller doesn't have access to the
                # local task.
                fut.exception()
            raise
        finally:
            fut.remove_done_callback(_run_until_complete_cb)
        if not fut.done():
            raise RuntimeError("Event loop stopped before Future completed.")

        return fut.result()

    def close(self) -> None:
        """Close the loop: clear the queues and shut down the default executor
        without waiting for it. The loop must not be running."""
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self.is_closed():
            return
        if self.get_debug():
            logger.debug("Close %r", self)
        self._close_native()
        self._watched_objects.clear()
        self._close_child_watching()
        self._executor_shutdown_called = True
        executor = self._default_executor
        if executor is not None:
            self._default_executor = None
            executor.shutdown(wait=False)
        # Last, as asyncio's: removing a handler raises ValueError outside
        # the main thread, and the loop is closed by then.
        self._close_signals()

    def __del__(self, _warn=warnings.warn):
        if not self.is_closed():
            _warn(f"unclosed event loop {self!r}", ResourceWarning, source=self)
            if not self.is_running():
                self.close()

    # -- observability (src/metrics, ferroloop._stats) -----------------------

    def stats(self) -> _stats.LoopStats:
        """A snapshot of the loop's metrics (see ``ferroloop.LoopStats``)."""
        return _stats.LoopStats._from_raw(self, self._stats_raw())

    def utilization(self, previous: _stats.Utilization | None = None) -> _stats.Utilization:
        """Node.js's ``eventLoopUtilization()``: idle and active seconds since
        the loop was created (or since ``previous``, an earlier result), and
        the active share."""
        return _stats.utilization(self._stats_raw(), previous)

    def set_slow_callback_handler(
        self,
        callback: Callable[[_stats.SlowCallback], object] | None,
        threshold: float | None = None,
    ) -> None:
        """Call ``callback(record)`` (later, on the loop) for every callback
        that runs longer than ``threshold`` seconds (default: the current
        threshold, initially 0.05; at least 0.001). ``None`` removes the
        handler; records are kept either way (``ferroloop.slow_callbacks``)."""
        if callback is not None and not callable(callback):
            raise TypeError(f"a callable object or None is expected, got {callback!r}")
        if threshold is not None:
            self._set_slow_threshold(threshold)
        self._slow_callback_handler = callback

    def set_task_stats(self, enabled: bool = True, group: str | None = None) -> None:
        """Per-task stats (opt-in; every callback is then timed and each task
        step costs a Python call): for every task, or with ``group`` only for
        tasks whose name starts with it. ``task_stats()`` reads them;
        turning them off drops what was collected."""
        if group is not None and not isinstance(group, str):
            raise TypeError(f"group must be a str or None, got {type(group).__name__}")
        enabled = bool(enabled)
        self._task_stats = weakref.WeakKeyDictionary() if enabled else None
        self._task_stats_group = group if enabled else None
        self._set_task_stats(enabled)

    def task_stats(self) -> dict[asyncio.Task, _stats.TaskStats]:
        """``{task: TaskStats}`` for the tasks seen since ``set_task_stats``
        (while they are alive)."""
        return _stats.task_table(self)

    def set_metrics_precise(self, enabled: bool) -> None:
        """Precise mode: time every callback (``stats().callback_duration``)."""
        self._set_precise_metrics(bool(enabled))

    # -- debug mode ----------------------------------------------------------

    def set_debug(self, enabled: bool) -> None:
        self._set_debug_flag(bool(enabled))
        if self.is_running():
            self.call_soon_threadsafe(self._set_coroutine_origin_tracking, enabled)

    def _set_coroutine_origin_tracking(self, enabled):
        if bool(enabled) == bool(self._coroutine_origin_tracking_enabled):
            return
        if enabled:
            self._coroutine_origin_tracking_saved_depth = sys.get_coroutine_origin_tracking_depth()
            sys.set_coroutine_origin_tracking_depth(_DEBUG_STACK_DEPTH)
        else:
            sys.set_coroutine_origin_tracking_depth(self._coroutine_origin_tracking_saved_depth)
        self._coroutine_origin_tracking_enabled = enabled

    def _check_callback(self, callback, method):
        _check_callback(callback, method)

    def _timer_handle_cancelled(self, handle):
        """Kept for API parity; the native TimerHandle notifies the core."""

    # -- async generators ----------------------------------------------------

    def _asyncgen_finalizer_hook(self, agen):
        self._asyncgens.discard(agen)
        if not self.is_closed():
            self.call_soon_threadsafe(self.create_task, agen.aclose())

    def _asyncgen_firstiter_hook(self, agen):
        if self._asyncgens_shutdown_called:
            warnings.warn(
                f"asynchronous generator {agen!r} was scheduled after "
                f"loop.shutdown_asyncgens() call",
                ResourceWarning,
                source=self,
            )
        self._asyncgens.add(agen)

    async def shutdown_asyncgens(self) -> None:
        """Shutdown all active asynchronous generators."""
        self._asyncgens_shutdown_called = True
        if not len(self._asyncgens):
            return
        closing_agens = list(self._asyncgens)
        self._asyncgens.clear()
        results = await tasks.gather(*[ag.aclose() for ag in closing_agens], return_exceptions=True)
        for result, agen in zip(results, closing_agens):
            if isinstance(result, Exception):
                self.call_exception_handler(
                    {
                        "message": f"an error occurred during closing of "
                        f"asynchronous generator {agen!r}",
                        "exception": result,
                        "asyncgen": agen,
                    }
                )

    # -- executor ------------------------------------------------------------

    def _check_default_executor(self):
        if self._executor_shutdown_called:
            raise RuntimeError("Executor shutdown has been called")

    def run_in_executor(
        self,
        executor: concurrent.futures.Executor | None,
        func: Callable[[Unpack[_Ts]], _T],
        *args: Unpack[_Ts],
    ) -> asyncio.Future[_T]:
        self._check_closed()
        if self.get_debug():
            _check_callback(func, "run_in_executor")
        if executor is None:
            executor = self._default_executor
            # Only check when the default executor is being used.
            self._check_default_executor()
            if executor is None:
                executor = _DefaultExecutor()
                self._default_executor = executor
        if type(executor) is _DefaultExecutor:
            return executor._run_in_executor(self, func, args)
        return futures.wrap_future(executor.submit(func, *args), loop=self)

    def set_default_executor(self, executor: concurrent.futures.Executor) -> None:
        if not isinstance(executor, concurrent.futures.ThreadPoolExecutor):
            if sys.version_info >= (3, 11):
                raise TypeError("executor must be ThreadPoolExecutor instance")
            # 3.10's asyncio only warns, and takes it.
            warnings.warn(
                "Using the default executor that is not an instance of "
                "ThreadPoolExecutor is deprecated and will be prohibited "
                "in Python 3.9",
                DeprecationWarning,
                2,
            )
        self._default_executor = executor

    if sys.version_info >= (3, 12):

        async def shutdown_default_executor(self, timeout: float | None = None) -> None:
            """Schedule the shutdown of the default executor.

            The timeout parameter specifies the amount of time the executor
            will be given to finish joining; None waits for it.
            """
            await self._shutdown_default_executor(timeout)

    else:

        async def shutdown_default_executor(self) -> None:
            """Schedule the shutdown of the default executor."""
            await self._shutdown_default_executor(None)

    async def _shutdown_default_executor(self, timeout):
        self._executor_shutdown_called = True
        if self._default_executor is None:
            return
        future = self.create_future()
        thread = threading.Thread(target=self._do_shutdown, args=(future,))
        thread.start()
        try:
            if timeout is None:
                await future
            else:
                await tasks.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            warnings.warn(
                f"The executor did not finishing joining its threads within {timeout} seconds.",
                RuntimeWarning,
                stacklevel=2,
            )
            self._default_executor.shutdown(wait=False)
        else:
            thread.join()

    def _do_shutdown(self, future):
        try:
            self._default_executor.shutdown(wait=True)
            if not self.is_closed():
                self.call_soon_threadsafe(_set_result_unless_cancelled, future, None)
        except Exception as ex:
            if not self.is_closed() and not future.cancelled():
                self.call_soon_threadsafe(future.set_exception, ex)

    # -- exception handling --------------------------------------------------

    def get_exception_handler(self) -> _ExceptionHandler | None:
        """Return an exception handler, or None if the default one is in use."""
        return self._exception_handler

    def set_exception_handler(self, handler: _ExceptionHandler | None) -> None:
        """Set handler(loop, context) as the loop's exception handler; None
        restores the default."""
        if handler is not None and not callable(handler):
            raise TypeError(f"A callable object or None is expected, got {handler!r}")
        self._exception_handler = handler

    def default_exception_handler(self, context: _Context) -> None:
        """Log the context's message, exception and other keys, as asyncio's
        default handler does."""
        message = context.get("message")
        if not message:
            message = "Unhandled exception in event loop"

        exception = context.get("exception")
        exc_info: tuple[type[BaseException], BaseException, TracebackType | None] | bool
        if exception is not None:
            exc_info = (type(exception), exception, exception.__traceback__)
        else:
            exc_info = False

        current = self._current_handle
        if "source_traceback" not in context and current is not None and current._source_traceback:
            context["handle_traceback"] = current._source_traceback

        log_lines = [message]
        for key in sorted(context):
            if key in {"message", "exception"}:
                continue
            value = context[key]
            if key == "source_traceback":
                tb = "".join(traceback.format_list(value))
                value = "Object created at (most recent call last):\n"
                value += tb.rstrip()
            elif key == "handle_traceback":
                tb = "".join(traceback.format_list(value))
                value = "Handle created at (most recent call last):\n"
                value += tb.rstrip()
            else:
                value = repr(value)
            log_lines.append(f"{key}: {value}")

        logger.error("\n".join(log_lines), exc_info=exc_info)

    def call_exception_handler(self, context: _Context) -> None:
        """Call the loop's exception handler with a context dict (keys:
        message, exception, future, task, handle, protocol, transport,
        socket, asyncgen)."""
        if self._exception_handler is None:
            try:
                self.default_exception_handler(context)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException:
                # Second protection layer for unexpected errors in the default
                # implementation, as well as for subclassed event loops with
                # an overloaded "default_exception_handler".
                logger.error("Exception in default exception handler", exc_info=True)
        else:
            try:
                if not _PY312:
                    # 3.10/3.11's asyncio calls the handler as is (3.12 first
                    # looks the context up in the dict, below).
                    self._exception_handler(self, context)
                    return
                ctx = None
                thing = context.get("task")
                if thing is None:
                    # Even though Futures don't have a context, Task is a
                    # subclass of Future, and sometimes the 'future' key holds
                    # a Task.
                    thing = context.get("future")
                if thing is None:
                    # Handles also have a context.
                    thing = context.get("handle")
                if thing is not None and hasattr(thing, "get_context"):
                    ctx = thing.get_context()
                if ctx is not None and hasattr(ctx, "run"):
                    ctx.run(self._exception_handler, self, context)
                else:
                    self._exception_handler(self, context)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                # Exception in the user set custom exception handler.
                try:
                    # Let's try default handler.
                    self.default_exception_handler(
                        {
                            "message": "Unhandled error in exception handler",
                            "exception": exc,
                            "context": context,
                        }
                    )
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException:
                    # Guard 'default_exception_handler' in case it is
                    # overloaded.
                    logger.error(
                        "Exception in default exception handler "
                        "while handling an unexpected error "
                        "in custom exception handler",
                        exc_info=True,
                    )

    # -- fd watchers (native: _add_reader & co.) -----------------------------

    def _ensure_fd_no_transport(self, fd):
        fileno = fd
        if not isinstance(fileno, int):
            try:
                fileno = int(fileno.fileno())
            except (AttributeError, TypeError, ValueError):
                # This code matches selectors._fileobj_to_fd function.
                raise ValueError(f"Invalid file object: {fd!r}") from None
        if not 0 <= fileno <= _FD_MAX:
            # Owned by no transport. What else is wrong with it is for
            # _add_reader & co. to say, as in asyncio: a closed loop's
            # remove_reader() answers False without looking at it.
            return
        if self._fd_has_transport(fileno):
            raise RuntimeError(
                f"File descriptor {fd!r} is used by transport <SocketTransport fd={fileno}>"
            )
        # Datagram transports (asyncio's Python ones) register here.
        transport = self._transports.get(fileno)
        if transport is not None and not transport.is_closing():
            raise RuntimeError(f"File descriptor {fd!r} is used by transport {transport!r}")

    def add_reader(
        self, fd: FileDescriptorLike, callback: Callable[[Unpack[_Ts]], object], *args: Unpack[_Ts]
    ) -> None:
        """Start watching the file descriptor for read availability."""
        self._ensure_fd_no_transport(fd)
        self._add_reader(fd, callback, *args)
        self._remember_object(fd, "r")

    def remove_reader(self, fd: FileDescriptorLike) -> bool:
        """Stop watching the file descriptor for read availability."""
        self._ensure_fd_no_transport(fd)
        return self._remove_watch(fd, "r", self._remove_reader)

    def add_writer(
        self, fd: FileDescriptorLike, callback: Callable[[Unpack[_Ts]], object], *args: Unpack[_Ts]
    ) -> None:
        """Start watching the file descriptor for write availability."""
        self._ensure_fd_no_transport(fd)
        self._add_writer(fd, callback, *args)
        self._remember_object(fd, "w")

    def remove_writer(self, fd: FileDescriptorLike) -> bool:
        """Stop watching the file descriptor for write availability."""
        self._ensure_fd_no_transport(fd)
        return self._remove_watch(fd, "w", self._remove_writer)

    # NOTE: asyncio's selector keeps the file object it was given, and finds
    # a registration by that object when its fileno() no longer answers:
    # "sock.close(); loop.remove_reader(sock)" removes it (True). The
    # native watchers know fds only, so the objects are kept here, for that
    # case alone (an int fd costs nothing).

    def _remember_object(self, fd, direction):
        if isinstance(fd, int):
            self._watched_objects.pop((fd, direction), None)
        else:
            self._watched_objects[(int(fd.fileno()), direction)] = fd

    def _remove_watch(self, fd, direction, remove):
        if not isinstance(fd, int):
            try:
                fileno = int(fd.fileno())
            except Exception:
                return remove(fd)  # the native lookup's own error
            if fileno < 0:
                # Closed since: its registration, found by the object.
                for key, obj in self._watched_objects.items():
                    if obj is fd and key[1] == direction:
                        del self._watched_objects[key]
                        return remove(key[0])
                return remove(fd)  # asyncio's ValueError
            fd_key = (fileno, direction)
        else:
            fd_key = (fd, direction)
        self._watched_objects.pop(fd_key, None)
        return remove(fd)


# The largest fd number (a C int).
_FD_MAX = 2**31 - 1


def _set_future_state(fut, ok, value):
    """Copy a default-executor job's outcome to its asyncio Future."""
    if fut.cancelled():
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(futures._convert_future_exc(value))


def _set_result_unless_cancelled(fut, result):
    if not fut.cancelled():
        fut.set_result(result)


# -- helpers called from the Rust core -----------------------------------------


def _check_callback(callback, method):
    if coroutines.iscoroutine(callback) or iscoroutinefunction(callback):
        raise TypeError(f"coroutines cannot be used with {method}()")
    if not callable(callback):
        raise TypeError(f"a callable object was expected by {method}(), got {callback!r}")


# Called by the native loop (src/event_loop/tick.rs, src/metrics/slow.rs).
_slow_callback = _stats.slow_callback
_capture_stack = _stats.capture_stack
_task_created = _stats.task_created
_task_step = _stats.task_step
_task_step_probe = _stats.task_step_probe


def _extract_stack():
    """The creation stack of a handle, ending at the caller of call_soon & co
    (the native method adds no Python frame)."""
    return format_helpers.extract_stack(sys._getframe(1))


def _handle_repr(handle):
    info = [handle.__class__.__name__]
    if handle.cancelled():
        info.append("cancelled")
    callback = handle._callback
    if callback is not None:
        info.append(format_helpers._format_callback_source(callback, handle._args))
    tb = handle._source_traceback
    if tb:
        frame = tb[-1]
        info.append(f"created at {frame[0]}:{frame[1]}")
    if isinstance(handle, _ferroloop.TimerHandle):
        info.insert(2 if handle.cancelled() else 1, f"when={handle.when()}")
    return "<{}>".format(" ".join(info))


def _report_callback_error(loop, handle, exc):
    callback = handle._callback
    cb = format_helpers._format_callback_source(callback, handle._args)
    context = {
        "message": f"Exception in callback {cb}",
        "exception": exc,
        "handle": handle,
    }
    tb = handle._source_traceback
    if tb:
        context["source_traceback"] = tb
    loop.call_exception_handler(context)


def _log_slow_callback(handle, dt):
    # asyncio's _format_handle: a Task step is reported as the task.
    cb = handle._callback
    if isinstance(getattr(cb, "__self__", None), tasks.Task):
        what = repr(cb.__self__)
    else:
        what = str(handle)
    logger.warning("Executing %s took %.3f seconds", what, dt)


def _trim_source_traceback(task):
    tb = getattr(task, "_source_traceback", None)
    if tb:
        del tb[-1]


# The running Python's own BaseEventLoop.create_task: see _create_task_slow.
# Called as (loop, coro, **kwargs); its keywords differ by patch release
# (3.13.3 added eager_start), which typeshed does not follow.
_asyncio_create_task: Callable[..., asyncio.Task[Any]] = asyncio.BaseEventLoop.create_task


def _create_task_slow(loop, coro, name, context, kwargs):
    """create_task with a task factory or extra keyword arguments.

    This is asyncio's own create_task of the running Python, called on this
    loop (it reads only _check_closed and _task_factory), so what a factory
    is called with, how the name is set afterwards and which extra keywords
    pass through are exactly that version's: factory(loop, coro) and the
    name set when given up to 3.12, set_name(name) always on 3.13, extra
    keywords passed to the factory or Task from 3.13.3, and on 3.14 every
    keyword (eager_start too) handed to the factory, with no set_name.
    name and context are passed on only when not None (the fast path in
    Rust cannot tell an explicit None from an omitted one).
    """
    kwargs = dict(kwargs or {})
    if name is not None:
        kwargs["name"] = name
    if context is not None:
        kwargs["context"] = context
    task = _asyncio_create_task(loop, coro, **kwargs)
    # In debug mode, drop this helper's frame from where the task was made,
    # as asyncio drops its create_task frame.
    tb = getattr(task, "_source_traceback", None)
    if tb:
        tb[:] = [f for f in tb if not (f.name == "_create_task_slow" and f.filename == __file__)]
    return task
