"""Type stub of ``ferroloop._ferroloop``, the native (Rust/pyo3) module.

Everything ``src/lib.rs`` registers. The public face of these classes is
``ferroloop.Loop`` (``python/ferroloop/_loop.py``) and the transport faces in
``_transports.py`` / ``_pipes.py``; the underscore methods are the hooks that
Python code calls. Checked against the built module by
``python -m mypy.stubtest ferroloop._ferroloop`` (``tests/test_types.py``).
"""

import socket
import ssl
import sys
import traceback
from asyncio import BaseProtocol, BaseTransport, Future, Task
from asyncio.base_events import Server
from asyncio.events import _TaskFactory
from asyncio.trsock import TransportSocket
from collections.abc import Callable, Coroutine, Generator, Iterable
from contextvars import Context
from enum import Enum
from typing import Any, Literal, TypeAlias, TypedDict, TypeVar, final, overload, type_check_only

from _typeshed import FileDescriptorLike, ReadableBuffer
from typing_extensions import Self, TypeVarTuple, Unpack, disjoint_base

__all__ = [
    "Acceptor",
    "EventLoop",
    "Handle",
    "MetricsServer",
    "StreamTransport",
    "ThreadPool",
    "TimerHandle",
    "TlsCore",
    "__version__",
    "_debug_assertions",
    "_histogram_bounds",
    "_openmetrics",
    "_python_exiting",
    "_value_names",
    "install_face",
    "install_tls",
    "recv_nowait",
    "send_nowait",
    "sockaddr_names",
]

__version__: str
_debug_assertions: bool

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")

# What create_task accepts (asyncio.tasks._CoroutineLike): a coroutine, and
# before 3.12 a generator-based one too.
if sys.version_info >= (3, 12):
    _CoroutineLike: TypeAlias = Coroutine[Any, Any, _T]
else:
    _CoroutineLike: TypeAlias = Generator[Any, None, _T] | Coroutine[Any, Any, _T]

# A socket address as the socket module gives it: (host, port) for AF_INET,
# (host, port, flowinfo, scope_id) for AF_INET6, str or bytes (abstract
# namespace) for AF_UNIX.
_SockAddr: TypeAlias = tuple[str, int] | tuple[str, int, int, int] | str | bytes

# A histogram as src/event_loop/stats.rs gives it: (buckets, count, sum, max),
# buckets the non-empty ones as (upper bound, count) pairs.
_RawHistogram: TypeAlias = tuple[list[tuple[int, int]], int, int, int]

# A slow-callback record (ferroloop.SlowCallback's fields, in order): start,
# duration, kind, handle repr, task, coroutine, started_at, location, stack.
_SlowTuple: TypeAlias = tuple[
    float, float, str, str, str | None, str | None, str | None, str | None, str | None
]

@type_check_only
class _StatsRaw(TypedDict):
    """EventLoop._stats_raw(): metrics::VALUES plus the per-kind callback
    counts and the histograms (src/event_loop/stats.rs)."""

    loop_id: int
    ticks: int
    polls: int
    polls_blocking: int
    fd_read_events: int
    fd_write_events: int
    cb_ready: int
    cb_timer: int
    cb_io: int
    cb_threadsafe: int
    threadsafe_wakeups: int
    timers_scheduled: int
    timers_fired: int
    timers_cancelled: int
    tasks_created: int
    tasks_finished: int
    tasks_counted: int
    tasks_alive: int
    transports_opened: int
    transports_closed: int
    bytes_received: int
    bytes_sent: int
    tls_handshakes: int
    ready_queue_depth: int
    ready_queue_depth_max: int
    run_ns: int
    idle_ns: int
    poll_ns: int
    callbacks_ns: int
    slow_callbacks: int
    slow_threshold_ns: int
    page_writes: int
    callbacks: dict[str, int]
    precise: bool
    enabled: bool
    tick_duration: _RawHistogram
    poll_wait: _RawHistogram
    callbacks_per_tick: _RawHistogram
    timer_lateness: _RawHistogram
    callback_duration: _RawHistogram

@disjoint_base
class EventLoop:
    """The native core of ``ferroloop.Loop``: the ready queue, the timer
    heap, the fd watchers and one loop iteration."""

    def __new__(cls, *args: object, **kwargs: object) -> Self: ...

    # Scheduling callbacks (hand-written METH_FASTCALL entries).
    def call_soon(
        self,
        callback: Callable[[Unpack[_Ts]], object],
        *args: Unpack[_Ts],
        context: Context | None = None,
    ) -> Handle: ...
    def call_soon_threadsafe(
        self,
        callback: Callable[[Unpack[_Ts]], object],
        *args: Unpack[_Ts],
        context: Context | None = None,
    ) -> Handle: ...
    def call_later(
        self,
        delay: float,
        callback: Callable[[Unpack[_Ts]], object],
        *args: Unpack[_Ts],
        context: Context | None = None,
    ) -> TimerHandle: ...
    def call_at(
        self,
        when: float,
        callback: Callable[[Unpack[_Ts]], object],
        *args: Unpack[_Ts],
        context: Context | None = None,
    ) -> TimerHandle: ...
    def time(self) -> float: ...
    def create_future(self) -> Future[Any]: ...
    # Extra keyword arguments (eager_start on 3.13.3+) go to the task
    # factory or the Task constructor.
    def create_task(
        self,
        coro: _CoroutineLike[_T],
        *,
        name: str | None = None,
        context: Context | None = None,
        **kwargs: Any,
    ) -> Task[_T]: ...
    def set_task_factory(self, factory: _TaskFactory | None) -> None: ...
    def get_task_factory(self) -> _TaskFactory | None: ...
    def get_debug(self) -> bool: ...
    def stop(self) -> None: ...
    def is_running(self) -> bool: ...
    def is_closed(self) -> bool: ...

    # Hooks of _loop.py and the mixins.
    def _set_debug_flag(self, enabled: bool) -> None: ...
    def _check_thread(self) -> None: ...
    def _check_closed(self) -> None: ...
    def _enter_running(self) -> None: ...
    def _leave_running(self) -> None: ...
    def _run_ticks(self) -> None: ...
    def _run_once(self) -> None: ...
    def _new_handle(
        self, callback: Callable[[Unpack[_Ts]], object], *args: Unpack[_Ts]
    ) -> Handle: ...
    def _add_reader(
        self, fd: FileDescriptorLike, callback: Callable[[Unpack[_Ts]], object], *args: Unpack[_Ts]
    ) -> Handle: ...
    def _add_writer(
        self, fd: FileDescriptorLike, callback: Callable[[Unpack[_Ts]], object], *args: Unpack[_Ts]
    ) -> Handle: ...
    def _remove_reader(self, fd: FileDescriptorLike) -> bool: ...
    def _remove_writer(self, fd: FileDescriptorLike) -> bool: ...
    def _add_callback(self, handle: Handle) -> None: ...
    def _watch_signal_fd(self, fd: int) -> None: ...
    def _unwatch_signal_fd(self) -> None: ...
    def _close_native(self) -> None: ...
    @property
    def _thread_id(self) -> int | None: ...
    @property
    def _stopping(self) -> bool: ...
    @property
    def _closed(self) -> bool: ...
    @property
    def _debug(self) -> bool: ...
    @property
    def _timer_cancelled_count(self) -> int: ...
    def _ready_count(self) -> int: ...
    def _fd_has_transport(self, fd: int) -> bool: ...
    def _set_fd_has_transport(self, fd: int, owned: bool) -> None: ...
    def _sock_recv_wait(self, fd: int, n: int) -> Future[bytes]: ...
    def _scheduled_count(self) -> int: ...
    def _stats_raw(self) -> _StatsRaw: ...
    def _slow_records(self) -> list[_SlowTuple]: ...
    def _push_slow_record(self, record: _SlowTuple) -> None: ...
    def _set_slow_threshold(self, seconds: float) -> None: ...
    def _set_task_stats(self, enabled: bool) -> None: ...
    def _set_precise_metrics(self, enabled: bool) -> None: ...

@disjoint_base
class Handle:
    """A callback scheduled with call_soon / call_soon_threadsafe (asyncio's
    ``events.Handle`` interface; not a subclass of it). Made only by the
    loop."""

    def cancel(self) -> None: ...
    def cancelled(self) -> bool: ...
    def get_context(self) -> Context: ...
    def _run(self) -> None: ...
    # None once the handle is cancelled (the callback is dropped).
    @property
    def _callback(self) -> Callable[..., object] | None: ...
    @property
    def _args(self) -> tuple[Any, ...] | None: ...
    @property
    def _cancelled(self) -> bool: ...
    @property
    def _context(self) -> Context: ...
    @property
    def _loop(self) -> EventLoop: ...
    @property
    def _source_traceback(self) -> traceback.StackSummary | None: ...

@final
class TimerHandle(Handle):
    """A callback scheduled with call_later / call_at."""

    def when(self) -> float: ...
    @property
    def _when(self) -> float: ...
    @property
    def _scheduled(self) -> bool: ...
    def __lt__(self, value: TimerHandle, /) -> bool: ...
    def __le__(self, value: TimerHandle, /) -> bool: ...
    def __gt__(self, value: TimerHandle, /) -> bool: ...
    def __ge__(self, value: TimerHandle, /) -> bool: ...
    def __eq__(self, value: object, /) -> bool: ...
    def __ne__(self, value: object, /) -> bool: ...
    def __hash__(self) -> int: ...

@final
class ThreadPool:
    """The default executor's native work queue (``_loop._DefaultExecutor``)."""

    def __new__(cls, max_workers: int) -> Self: ...
    # True when the caller should start one more worker thread (running
    # work()).
    def submit_job(
        self,
        event_loop: EventLoop,
        future: Future[_T],
        func: Callable[[Unpack[_Ts]], _T],
        args: tuple[Unpack[_Ts]],
    ) -> bool: ...
    def work(self) -> None: ...
    def shutdown(self, cancel_futures: bool = False) -> None: ...
    @property
    def max_workers(self) -> int: ...
    @property
    def started(self) -> int: ...

@final
class StreamTransport:
    """The native core of a stream transport: a TCP/Unix socket (the face is
    ``_transports.SocketTransport``) or a pipe (``_pipes``)."""

    def __new__(
        cls,
        event_loop: EventLoop,
        shell: BaseTransport,
        sock: socket.socket,
        protocol: BaseProtocol,
        server: Server | None = None,
    ) -> Self: ...
    @staticmethod
    def pipe(
        event_loop: EventLoop,
        shell: BaseTransport,
        pipe: FileDescriptorLike,
        fd: int,
        protocol: BaseProtocol,
        write: bool,
        grow: bool,
    ) -> StreamTransport: ...
    def write(self, data: ReadableBuffer, /) -> None: ...
    def writelines(self, list_of_data: Iterable[ReadableBuffer]) -> None: ...
    def write_eof(self) -> None: ...
    def can_write_eof(self) -> bool: ...
    def get_write_buffer_size(self) -> int: ...
    def get_write_buffer_limits(self) -> tuple[int, int]: ...
    def is_closing(self) -> bool: ...
    def is_reading(self) -> bool: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...
    def set_protocol(self, protocol: BaseProtocol) -> None: ...
    def get_protocol(self) -> BaseProtocol | None: ...
    def _start_reading(self) -> None: ...
    def _set_limits(self, high: int, low: int) -> None: ...
    # True when the call changed the reading state.
    def _pause_reading(self) -> bool: ...
    def _resume_reading(self) -> bool: ...
    def _stop_reading(self) -> None: ...
    def _force_close(self, exc: BaseException | None) -> None: ...
    def _call_connection_lost(self, exc: BaseException | None) -> None: ...
    def _make_empty_waiter(self) -> Future[None]: ...
    def _reset_empty_waiter(self) -> None: ...
    def _read_ready(self) -> None: ...
    def _write_ready(self) -> None: ...
    @property
    def _protocol_paused(self) -> bool: ...
    @property
    def _conn_lost(self) -> int: ...
    @property
    def _closing(self) -> bool: ...
    @property
    def _paused(self) -> bool: ...
    @property
    def _eof(self) -> bool: ...
    @property
    def _reading_registered(self) -> bool: ...
    @property
    def _writing_registered(self) -> bool: ...
    @property
    def _protocol(self) -> BaseProtocol | None: ...
    @property
    def _fd(self) -> int: ...
    @property
    def _is_open(self) -> bool: ...
    @property
    def _server(self) -> Server | None: ...
    def _socket(self) -> socket.socket | None: ...
    @overload
    def _extra_info(self, name: Literal["socket"]) -> TransportSocket: ...
    @overload
    def _extra_info(self, name: Literal["sockname", "peername"]) -> _SockAddr | None: ...
    @overload
    def _extra_info(self, name: str) -> _SockAddr | TransportSocket | None: ...
    def _set_shell(self, shell: BaseTransport) -> None: ...
    def _close_fd(self) -> None: ...

@final
class Acceptor:
    """A TCP/Unix server's native accept loop (``_network``): accepted
    connections become transports through ``adopt``."""

    def __new__(
        cls,
        event_loop: EventLoop,
        listener: socket.socket,
        protocol_factory: Callable[[], BaseProtocol],
        server: Server | None,
        backlog: int,
        adopt: Callable[[EventLoop, StreamTransport, BaseProtocol, Server | None], object],
        on_error: Callable[[OSError], object],
        nodelay: bool,
    ) -> Self: ...
    def _accept_ready(self) -> None: ...

@final
class TlsCore:
    """The native data path of a TLS connection's WRAPPED state (``_tls``)."""

    def __new__(cls, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO) -> Self: ...
    def _unsync(self) -> None: ...

@final
class MetricsServer:
    """Serves ``ferroloop.metrics.openmetrics()`` on ``GET /metrics`` from a
    native thread (``ferroloop.metrics.serve``)."""

    def __new__(cls, port: int, host: str = "127.0.0.1") -> Self: ...
    @property
    def port(self) -> int: ...
    @property
    def host(self) -> str: ...
    def close(self) -> None: ...
    def is_serving(self) -> bool: ...

def recv_nowait(fd: int, n: int) -> bytes | None:
    """``sock.recv(n)`` on fd; None if it would block."""

def send_nowait(fd: int, data: bytes) -> int:
    """``sock.send(data)`` on fd: bytes sent (0 if it would block)."""

def sockaddr_names(fd: int) -> tuple[_SockAddr | None, _SockAddr | None]:
    """Test helper: ``(local, peer)`` addresses of fd, as the socket module
    would give them."""

def install_face(ty: type[BaseTransport]) -> None:
    """Installs the native ``write`` / ``is_closing`` on a transport face."""

def install_tls(
    protocol_type: type[BaseProtocol],
    app_transport_type: type[BaseTransport],
    wrapped: Enum,
    again_errors: tuple[type[ssl.SSLError], ...],
    ssl_error: type[ssl.SSLError],
    ssl_object: type[ssl.SSLObject],
) -> None:
    """Installs the native TLS data path on asyncio's SSLProtocol subclass."""

def _openmetrics() -> str: ...
def _python_exiting() -> None: ...
def _histogram_bounds() -> list[int]: ...
def _value_names() -> list[str]: ...
