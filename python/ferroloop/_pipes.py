"""Pipe transports: what ``connect_read_pipe`` / ``connect_write_pipe`` and
subprocess pipes hand to protocols.

``ReadPipeTransport`` and ``WritePipeTransport`` are the Python faces of the
native stream core (``_ferroloop.StreamTransport`` in pipe mode: ``read`` /
``write`` on the fd, the same write buffer, flow control and close as socket
transports). They behave as asyncio's ``_UnixReadPipeTransport`` /
``_UnixWritePipeTransport``: the same accepted file types, the same EOF,
close and error semantics (see ``src/transports/stream/pipe.rs``), the same
``get_extra_info('pipe')`` and ``ResourceWarning``.
"""

import errno
import os
import stat
import warnings
from asyncio import base_subprocess, futures, transports

from . import _ferroloop
from ._transports import _CoreFace, _ReadingFace, _WritingFace


def _childs_pipe(protocol):
    """Whether the transport is for a pipe the loop made for a child (its
    protocol is the subprocess transport's own) and the program did not
    choose its size (Popen's ``pipesize``): such a pipe may grow when busy
    (``src/transports/stream/pipe.rs``, ``PipeGrowth``)."""
    if not isinstance(protocol, base_subprocess.WriteSubprocessPipeProto):
        return False
    popen = getattr(protocol.proc, "_proc", None)
    return getattr(popen, "pipesize", None) == -1


class _PipeFace(_CoreFace):
    """What both pipe faces share: construction, reprs, the unclosed-transport
    warning (the rest is ``_CoreFace``'s)."""

    __slots__ = ()

    _FATAL_ERROR = "Fatal error on pipe transport"

    def _setup(self, loop, pipe, protocol, waiter, extra, write, kinds, message):
        """asyncio's pipe transport ``__init__``: refuse a file of another
        kind (ValueError), make the fd non-blocking, then connection_made(),
        reading (a write pipe reads only to learn that the read end closed:
        pipes, FIFOs and sockets say so) and the waiter, in that order."""
        transports.BaseTransport.__init__(self, extra)
        self._extra["pipe"] = pipe
        self._loop = loop
        self._pipe = pipe
        self._fileno = fileno = pipe.fileno()
        mode = os.fstat(fileno).st_mode
        if not any(kind(mode) for kind in kinds):
            self._pipe = None
            raise ValueError(message)
        os.set_blocking(fileno, False)
        self._core = _ferroloop.StreamTransport.pipe(
            loop, self, pipe, fileno, protocol, write, _childs_pipe(protocol)
        )
        loop.call_soon(protocol.connection_made, self)
        if not write or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            # Only start reading once connection_made() has run.
            loop.call_soon(self._core._start_reading)
        if waiter is not None:
            # Only wake the waiter once connection_made() has run.
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None)

    def _open(self):
        core = getattr(self, "_core", None)
        return core is not None and core._is_open and getattr(self, "_pipe", None) is not None

    def _repr_info(self, polling):
        info = [self.__class__.__name__]
        if not self._open():
            info.append("closed")
        elif self._core.is_closing():
            info.append("closing")
        info.append(f"fd={getattr(self, '_fileno', None)}")
        if self._open() and not self._loop.is_closed():
            info.append("polling" if polling else "idle")
        elif self._open():
            info.append("open")
        else:
            info.append("closed")
        return info

    def __del__(self, _warn=warnings.warn):
        if self._open():
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            self._core._close_fd()


class ReadPipeTransport(_PipeFace, _ReadingFace, transports.ReadTransport):
    """The read end of a pipe, a FIFO, a character device or a socket."""

    # NOTE: with an instance dict, as asyncio's pipe transports have (tests
    # and programs set attributes on them, e.g. mock a method).
    __slots__ = ("__dict__", "__weakref__", "_core", "_fileno", "_loop", "_pipe")

    max_size = 256 * 1024  # the most one read takes (asyncio's)

    def __init__(self, loop, pipe, protocol, waiter=None, extra=None):
        kinds = (stat.S_ISFIFO, stat.S_ISSOCK, stat.S_ISCHR)
        message = "Pipe transport is for pipes/sockets only."
        self._setup(loop, pipe, protocol, waiter, extra, False, kinds, message)

    def __repr__(self):
        core = getattr(self, "_core", None)
        polling = core is not None and core._reading_registered
        return "<{}>".format(" ".join(self._repr_info(polling)))

    @staticmethod
    def _is_quiet_error(exc):
        # NOTE: asyncio's read pipe reports every error but EIO (a pty whose
        # other side closed), OSErrors included.
        return isinstance(exc, OSError) and exc.errno == errno.EIO


class WritePipeTransport(
    _PipeFace, _WritingFace, transports._FlowControlMixin, transports.WriteTransport
):
    """The write end of a pipe, a FIFO, a character device or a socket.

    NOTE: a ``_FlowControlMixin`` like asyncio's, whose state lives in the
    core (the mixin's ``__init__`` is skipped, as for ``SocketTransport``).
    """

    __slots__ = ("__dict__", "__weakref__", "_core", "_fileno", "_pipe")

    def __init__(self, loop, pipe, protocol, waiter=None, extra=None):
        kinds = (stat.S_ISCHR, stat.S_ISFIFO, stat.S_ISSOCK)
        message = "Pipe transport is only for pipes, sockets and character devices"
        self._setup(loop, pipe, protocol, waiter, extra, True, kinds, message)

    def __repr__(self):
        core = getattr(self, "_core", None)
        polling = core is not None and core._writing_registered
        info = self._repr_info(polling)
        if self._open() and not self._loop.is_closed():
            info.append(f"bufsize={self.get_write_buffer_size()}")
        return "<{}>".format(" ".join(info))

    def write(self, data):
        self._core.write(data)

    def can_write_eof(self):
        return True
