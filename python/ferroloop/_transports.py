"""The transports protocols see: Python faces over native cores.

``SocketTransport`` is what ``create_connection``, servers and
``connect_accepted_socket`` hand to protocols: an ``asyncio.Transport``
subclass whose I/O (reads, the write buffer, flow control, close) is
``_ferroloop.StreamTransport``. ``write`` and ``is_closing`` are native
descriptors on the class, so ``transport.write(data)`` is one native call;
what is policy (error reporting, EOF handling, reprs) is here.
"""

from __future__ import annotations

import socket
import sys
import warnings
from asyncio import constants, futures, selector_events, transports
from asyncio.log import logger
from typing import TYPE_CHECKING

from . import _ferroloop

if TYPE_CHECKING:
    from asyncio import BaseProtocol
    from asyncio.base_events import Server

_PY313 = sys.version_info >= (3, 13)


def _delegate(name):
    def method(self, *args):
        return getattr(self._core, name)(*args)

    method.__name__ = method.__qualname__ = name
    return method


def _is_tcp(sock):
    """Whether asyncio's _set_nodelay sets TCP_NODELAY on *sock* (sockets
    accepted from a listener inherit its family, type and proto)."""
    return (
        hasattr(socket, "TCP_NODELAY")
        and sock.family in (socket.AF_INET, socket.AF_INET6)
        and sock.type == socket.SOCK_STREAM
        and sock.proto == socket.IPPROTO_TCP
    )


def _set_nodelay(sock):
    """TCP_NODELAY on TCP sockets, as asyncio sets it."""
    if _is_tcp(sock):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


# (ignore: typeshed does not declare asyncio's private _SelectorDatagramTransport)
class DatagramTransport(selector_events._SelectorDatagramTransport, transports.DatagramTransport):  # type: ignore[name-defined]
    """A UDP or Unix datagram transport: asyncio's selector datagram
    transport (its sendto buffering, error_received and flow control) on the
    loop's native fd watchers."""

    def __repr__(self):
        info = [self.__class__.__name__]
        if self._sock is None:
            info.append("closed")
        elif self._closing:
            info.append("closing")
        info.append(f"fd={self._sock_fd}")
        info.append(f"bufsize={self.get_write_buffer_size()}")
        return "<{}>".format(" ".join(info))


_NATIVE_EXTRA = frozenset(("socket", "sockname", "peername"))
_NATIVE_FAMILIES = frozenset(
    f
    for f in (socket.AF_INET, getattr(socket, "AF_INET6", None), getattr(socket, "AF_UNIX", None))
    if f is not None
)


class _CoreFace:
    """What every transport face (socket or pipe) delegates to its native
    core, ``self._core`` (``_ferroloop.StreamTransport``)."""

    __slots__ = ()
    _core: _ferroloop.StreamTransport  # set by each face's constructor

    get_protocol = _delegate("get_protocol")
    set_protocol = _delegate("set_protocol")
    # NOTE: SocketTransport's is a native descriptor (install_face).
    is_closing = _delegate("is_closing")
    close = _delegate("close")
    _call_connection_lost = _delegate("_call_connection_lost")

    @property
    def _protocol(self) -> BaseProtocol | None:
        """The protocol (None once the connection is lost)."""
        return self._core._protocol

    @property
    def _closing(self) -> bool:
        """close() was called, or EOF / an error ended it."""
        return self._core._closing

    _FATAL_ERROR = "Fatal error on transport"

    @staticmethod
    def _is_quiet_error(exc):
        """asyncio logs these only in debug mode, and reports the rest to
        the exception handler."""
        return isinstance(exc, OSError)

    def _fatal_error(self, exc, message=None):
        """asyncio's ``_fatal_error``: report, then close with *exc*. The core
        calls it for failed reads, writes and protocol callbacks."""
        if message is None:
            message = self._FATAL_ERROR
        if self._is_quiet_error(exc):
            if self._loop.get_debug():
                logger.debug("%r: %s", self, message, exc_info=exc)
        else:
            self._loop.call_exception_handler(
                {
                    "message": message,
                    "exception": exc,
                    "transport": self,
                    "protocol": self._core._protocol,
                }
            )
        self._core._force_close(exc)


class _ReadingFace(_CoreFace):
    """The reading half of a face: pause/resume (logged in debug mode)."""

    __slots__ = ()

    is_reading = _delegate("is_reading")

    @property
    def _paused(self) -> bool:
        """pause_reading() was called."""
        return self._core._paused

    def pause_reading(self):
        if self._core._pause_reading() and self._loop.get_debug():
            logger.debug("%r pauses reading", self)

    def resume_reading(self):
        if self._core._resume_reading() and self._loop.get_debug():
            logger.debug("%r resumes reading", self)


class _WritingFace(_CoreFace):
    """The writing half of a face: the write buffer and its flow control,
    which live in the core."""

    __slots__ = ()

    get_write_buffer_size = _delegate("get_write_buffer_size")
    get_write_buffer_limits = _delegate("get_write_buffer_limits")
    write_eof = _delegate("write_eof")
    abort = _delegate("abort")

    @property
    def _protocol_paused(self) -> bool:
        """The protocol was told to pause writing."""
        return self._core._protocol_paused

    @property
    def _conn_lost(self) -> int:
        """Writes after the connection was lost (asyncio's count)."""
        return self._core._conn_lost

    def set_write_buffer_limits(self, high=None, low=None):
        if high is None:
            high = 64 * 1024 if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._core._set_limits(high, low)


class SocketTransport(_ReadingFace, _WritingFace, transports._FlowControlMixin):
    """A TCP or Unix stream socket transport.

    NOTE: a ``_FlowControlMixin`` like asyncio's socket transports (loop.sendfile's
    fallback checks it), but its flow control is the native core's: the mixin's
    ``__init__`` is skipped and its state lives in the core. The class has
    ``__slots__`` (asyncio's transport bases do too), so an instance is a few
    pointers: ``_core``, plus ``_extra_dict`` for extra info passed in.
    ``socket``/``sockname``/``peername`` come from the core on demand (an
    accepted connection has no socket object until one is asked for).
    ``write`` and ``is_closing`` are native descriptors (``install_face``).
    """

    __slots__ = ("__weakref__", "_core", "_extra_dict")

    _start_tls_compatible = True
    _sendfile_compatible = constants._SendfileMode.TRY_NATIVE

    def __init__(self, loop, sock, protocol, waiter=None, extra=None, server=None):
        self._loop = loop
        self._extra_dict = dict(extra) if extra else None
        if sock.family not in _NATIVE_FAMILIES:
            # Names the core cannot convert: asyncio's eager values.
            names = self._extra_dict = self._extra_dict or {}
            for key, get in (("sockname", sock.getsockname), ("peername", sock.getpeername)):
                if key not in names:
                    try:
                        names[key] = get()
                    except OSError:
                        names[key] = None
        self._core = _ferroloop.StreamTransport(loop, self, sock, protocol, server)
        _set_nodelay(sock)
        self._setup(loop, protocol, server, waiter)

    @classmethod
    def _adopt(cls, loop, core, protocol, server):
        """The face of a natively accepted connection (``accept.rs``)."""
        self = cls.__new__(cls)
        self._loop = loop
        self._extra_dict = None
        self._core = core
        core._set_shell(self)
        self._setup(loop, protocol, server, None)

    def _setup(self, loop, protocol, server, waiter):
        if server is not None:
            if _PY313:
                server._attach(self)
            else:
                server._attach()
        loop.call_soon(protocol.connection_made, self)
        # Only start reading once connection_made() has run.
        loop.call_soon(self._core._start_reading)
        if waiter is not None:
            # Only wake the waiter once connection_made() has run.
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None)

    def get_extra_info(self, name, default=None):
        extra = self._extra_dict
        if extra is not None and name in extra:
            return extra[name]
        if name in _NATIVE_EXTRA:
            return self._core._extra_info(name)
        return default

    @property
    def _extra(self):
        """asyncio's extra-info dict (built on demand)."""
        extra = {name: self._core._extra_info(name) for name in _NATIVE_EXTRA}
        extra.update(self._extra_dict or ())
        return extra

    writelines = _delegate("writelines")
    can_write_eof = _delegate("can_write_eof")
    _force_close = _delegate("_force_close")
    _make_empty_waiter = _delegate("_make_empty_waiter")
    _reset_empty_waiter = _delegate("_reset_empty_waiter")

    @property
    def _eof(self) -> bool:
        """write_eof() was called."""
        return self._core._eof

    @property
    def _sock_fd(self) -> int:
        """The socket's fd."""
        return self._core._fd

    @property
    def _server(self) -> Server | None:
        """The Server that accepted the connection, if any."""
        return self._core._server

    @property
    def _sock(self):
        """The socket object (None once closed), as asyncio's attribute."""
        return self._core._socket()

    def __repr__(self):
        info = [self.__class__.__name__]
        core = getattr(self, "_core", None)
        if core is None or not core._is_open:
            info.append("closed")
        elif core.is_closing():
            info.append("closing")
        if core is not None:
            info.append(f"fd={core._fd}")
        if core is not None and core._is_open and not self._loop.is_closed():
            info.append("read=polling" if core._reading_registered else "read=idle")
            state = "polling" if core._writing_registered else "idle"
            info.append(f"write=<{state}, bufsize={core.get_write_buffer_size()}>")
        return "<{}>".format(" ".join(info))

    def __del__(self, _warn=warnings.warn):
        core = getattr(self, "_core", None)
        if core is not None and core._is_open:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            core._close_fd()
            # NOTE: 3.13's selector transport detaches from its server here
            # (so that Server.wait_closed() does not wait for it forever).
            server = core._server
            if _PY313 and server is not None:
                server._detach(self)

    def _read_ready__on_eof(self):
        if self._loop.get_debug():
            logger.debug("%r received EOF", self)
        try:
            keep_open = self._core._protocol.eof_received()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.eof_received() call failed.")
            return
        if keep_open:
            # The protocol may still write, but nothing more can be read.
            self._core._stop_reading()
        else:
            self._core.close()


_ferroloop.install_face(SocketTransport)
