"""TLS: asyncio's ``sslproto.SSLProtocol`` with a native data path.

NOTE: the protocol between a TLS connection's socket transport and the
application is the running Python's own ``SSLProtocol`` (3.11+): its state
machine, handshake, shutdown, timeouts, error handling, the application
transport and every ``get_extra_info`` key are asyncio's code. The subclass
below only moves the per-record work of the WRAPPED state to the native core
(``src/transports/tls.rs``): a native transport feeds what it reads straight
into the incoming BIO and decrypts there, and ``_write_appdata`` encrypts
and sends natively. Anything the native path does not cover calls back into
asyncio's methods (``_ferroloop_fed``, ``_ferroloop_write_appdata``).

On 3.10, whose ``sslproto`` is the older design, TLS is asyncio's protocol
unchanged; so it is on a later version whose SSLProtocol lacks a method or
attribute the native path calls (``_NATIVE_NEEDS``), rather than a native
path that would guess.
"""

import sys
from asyncio import sslproto

try:
    import ssl
except ImportError:  # a Python built without OpenSSL: no TLS at all
    ssl = None  # type: ignore[assignment]  # (typeshed's ssl is always there)

from . import _ferroloop

# What src/transports/tls.rs calls or reads on asyncio's SSLProtocol (3.11-3.14
# have them all; the data path methods are the same code in each).
_NATIVE_NEEDS = (
    "_do_read",
    "_do_read__copied",
    "_do_read__buffered",
    "_process_outgoing",
    "_do_write",
    "_do_handshake",
    "_on_handshake_complete",
    "_do_flush",
    "_do_shutdown",
    "_call_eof_received",
    "_start_shutdown",
    "_control_app_writing",
    "_control_ssl_reading",
    "_fatal_error",
    "_write_appdata",
    "_get_app_transport",
    "max_size",
)
_NATIVE = (
    ssl is not None
    and sys.version_info >= (3, 11)
    and hasattr(sslproto, "SSLProtocolState")
    and hasattr(sslproto, "_SSLProtocolTransport")
    and all(hasattr(sslproto.SSLProtocol, name) for name in _NATIVE_NEEDS)
)

# (The version test again, for the type checker: _NATIVE implies it.)
if sys.version_info >= (3, 11) and _NATIVE:
    _State = sslproto.SSLProtocolState
    _Base = sslproto.SSLProtocol

    class _SSLProtocolTransport(sslproto._SSLProtocolTransport):
        """asyncio's application transport (same name: code checks it); ``write`` is native."""

    class SSLProtocol(_Base):
        """asyncio's SSLProtocol; the WRAPPED state's data path is native."""

        # The native state (TlsCore): a slot, read by the native methods at
        # its offset.
        __slots__ = ("_tls",)

        def __init__(self, *args, **kwargs):
            # NOTE: asyncio's __init__ allocates and zeroes a 256 KiB read
            # buffer (bytearray(self.max_size)) for get_buffer(), ~90 us per
            # connection in page faults, which a native transport never
            # uses: start it empty. get_buffer() grows it on first use, as
            # asyncio's does for a larger request.
            self.max_size = 0
            try:
                super().__init__(*args, **kwargs)
            finally:
                del self.max_size
            self._tls = _ferroloop.TlsCore(self._incoming, self._outgoing)

        # _write_appdata, _do_handshake, _do_read__copied,
        # _do_read__buffered and _process_outgoing are native (install_tls
        # below).
        _ferroloop_write_appdata = _Base._write_appdata

        def buffer_updated(self, nbytes):
            # Fed by a Python transport (TLS over TLS: the outer
            # connection's application transport): the native record
            # framing did not see these bytes.
            self._tls._unsync()
            super().buffer_updated(nbytes)

        def _get_app_transport(self):
            if self._app_transport is None and not self._app_transport_created:
                self._app_transport = _SSLProtocolTransport(self._loop, self)
                self._app_transport_created = True
            return super()._get_app_transport()

        def _ferroloop_fed(self):
            """asyncio's buffer_updated after the BIO write, for every state
            but WRAPPED (which the native core handles)."""
            state = self._state
            if state == _State.DO_HANDSHAKE:
                self._do_handshake()
            elif state == _State.WRAPPED:
                self._do_read()
            elif state == _State.FLUSHING:
                self._do_flush()
            elif state == _State.SHUTDOWN:
                self._do_shutdown()

    _ferroloop.install_tls(
        SSLProtocol,
        _SSLProtocolTransport,
        _State.WRAPPED,
        sslproto.SSLAgainErrors,
        ssl.SSLError,
        ssl.SSLObject,
    )
else:
    # No ssl module: asyncio's class, which then fails as asyncio's does.
    SSLProtocol = sslproto.SSLProtocol  # type: ignore[misc, assignment]
