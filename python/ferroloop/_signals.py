"""add_signal_handler / remove_signal_handler, as asyncio's Unix loop does them.

CPython's C-level handler writes the signal number to the fd given to
``signal.set_wakeup_fd``; the native poller watches the other end of that
socketpair and calls ``_read_signal_fd``, which schedules the handlers.
"""

from __future__ import annotations

import errno
import logging
import signal
import socket
import sys
import warnings
from asyncio import coroutines
from typing import TYPE_CHECKING

from ._compat import iscoroutinefunction

if TYPE_CHECKING:
    from collections.abc import Callable

    from typing_extensions import TypeVarTuple, Unpack

    from ._ferroloop import EventLoop as _MixinBase

    _Ts = TypeVarTuple("_Ts")
else:
    # For the type checker, the mixin is a part of Loop, with the native
    # base's methods (at run time Loop has both bases).
    _MixinBase = object

logger = logging.getLogger("asyncio")


def _sighandler_noop(signum, frame):
    """Dummy signal handler: the wakeup fd does the work."""


class SignalsMixin(_MixinBase):
    # Both set in Loop.__init__ (they are slots of Loop).
    _signal_handlers: dict
    _signal_socks: tuple | None

    def _check_signal(self, sig):
        if not isinstance(sig, int):
            raise TypeError(f"sig must be an int, not {sig!r}")
        if sig not in signal.valid_signals():
            raise ValueError(f"invalid signal number {sig}")

    def _ensure_signal_socks(self):
        if self._signal_socks is None:
            rsock, wsock = socket.socketpair()
            rsock.setblocking(False)
            wsock.setblocking(False)
            self._signal_socks = (rsock, wsock)
            self._watch_signal_fd(rsock.fileno())
        return self._signal_socks

    def _close_signal_socks(self):
        socks, self._signal_socks = self._signal_socks, None
        if socks is not None:
            if not self.is_closed():
                self._unwatch_signal_fd()
            for s in socks:
                s.close()

    def add_signal_handler(
        self, sig: int, callback: Callable[[Unpack[_Ts]], object], *args: Unpack[_Ts]
    ) -> None:
        """Add a handler for a signal. UNIX only.

        Raise ValueError if the signal number is invalid or uncatchable.
        Raise RuntimeError if there is a problem setting up the handler.
        """
        if coroutines.iscoroutine(callback) or iscoroutinefunction(callback):
            raise TypeError("coroutines cannot be used with add_signal_handler()")
        self._check_signal(sig)
        self._check_closed()
        _, wsock = self._ensure_signal_socks()
        try:
            # set_wakeup_fd() raises ValueError if this is not the main
            # thread: a loop running in another thread cannot add a handler.
            signal.set_wakeup_fd(wsock.fileno())
        except (ValueError, OSError) as exc:
            raise RuntimeError(str(exc))

        handle = self._new_handle(callback, *args)
        self._signal_handlers[sig] = handle
        try:
            # The dummy handler asks Python to write the signal number to the
            # wakeup fd; SA_RESTART limits EINTR.
            signal.signal(sig, _sighandler_noop)
            signal.siginterrupt(sig, False)
        except OSError as exc:
            del self._signal_handlers[sig]
            if not self._signal_handlers:
                try:
                    signal.set_wakeup_fd(-1)
                except (ValueError, OSError) as nexc:
                    logger.info("set_wakeup_fd(-1) failed: %s", nexc)
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig} cannot be caught")
            raise

    def _handle_signal(self, sig):
        handle = self._signal_handlers.get(sig)
        if handle is None:
            return  # Assume it's some race condition.
        if handle.cancelled():
            self.remove_signal_handler(sig)  # Remove it properly.
        else:
            self._add_callback(handle)

    def _read_signal_fd(self):
        socks = self._signal_socks
        if socks is None:
            return
        while True:
            try:
                data = socks[0].recv(4096)
            except InterruptedError:
                continue
            except BlockingIOError:
                return
            if not data:
                return
            for signum in data:
                if signum:
                    self._handle_signal(signum)

    def remove_signal_handler(self, sig: int) -> bool:
        """Remove a handler for a signal. UNIX only.

        Return True if a signal handler was removed, False if not.
        """
        self._check_signal(sig)
        try:
            del self._signal_handlers[sig]
        except KeyError:
            return False
        handler = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
        try:
            signal.signal(sig, handler)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig} cannot be caught")
            raise
        if not self._signal_handlers:
            try:
                signal.set_wakeup_fd(-1)
            except (ValueError, OSError) as exc:
                logger.info("set_wakeup_fd(-1) failed: %s", exc)
        return True

    def _close_signals(self):
        """close()'s last step: the wakeup socketpair (asyncio's self-pipe,
        closed first), then the handlers."""
        self._close_signal_socks()
        if not sys.is_finalizing():
            for sig in list(self._signal_handlers):
                self.remove_signal_handler(sig)
        elif self._signal_handlers:
            warnings.warn(
                f"Closing the loop {self!r} on interpreter shutdown stage, "
                f"skipping signal handlers removal",
                ResourceWarning,
                source=self,
            )
            self._signal_handlers.clear()
