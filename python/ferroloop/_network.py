"""Connections and servers: create_connection, create_server, Unix sockets,
connect_accepted_socket, create_datagram_endpoint, sendfile and start_tls.

NOTE: the policy of these methods (argument validation, happy eyeballs,
``all_errors``, ``reuse_port``, ``keep_alive``, the ``Server`` object and its
``wait_closed`` semantics, ...) is asyncio's own code for the running Python
version, used as is: the functions below are taken from asyncio's
``BaseEventLoop`` / ``BaseSelectorEventLoop`` / ``_UnixSelectorEventLoop``
classes, so every keyword behaves exactly as on asyncio's loop of that
version. What differs is underneath: their transports are
``_transports.SocketTransport`` (native I/O), sockets wait on the native
level-triggered fd watchers, and accepting runs on them too. Those functions
only use the loop's public API plus the hooks defined here
(``_make_socket_transport``, ``_make_ssl_transport``, ``_start_serving``,
``_stop_serving``, ``_ensure_resolved``, ``_transports``); TLS is asyncio's
``sslproto`` over the native transport.
"""

import errno
import os
import stat
import sys
import types
from asyncio import base_events, constants, selector_events, sslproto, trsock, unix_events
from asyncio.log import logger

from . import _ferroloop, _tls
from ._tls import SSLProtocol
from ._transports import DatagramTransport, SocketTransport, _is_tcp

_BaseLoop = base_events.BaseEventLoop
_SelectorLoop = selector_events.BaseSelectorEventLoop
_UnixLoop = unix_events._UnixSelectorEventLoop

_PY311 = sys.version_info >= (3, 11)
# accept() errors a server survives: it backs off and tries again.
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def _with_ferroloop_tls(func):
    """asyncio's *func* (its code, defaults and module globals) with
    ``sslproto.SSLProtocol`` meaning ferroloop's subclass: for start_tls,
    which makes its SSLProtocol itself instead of through a loop hook."""
    shim = types.SimpleNamespace(**vars(sslproto))
    shim.SSLProtocol = _tls.SSLProtocol
    globs = dict(func.__globals__, sslproto=shim)
    new = types.FunctionType(
        func.__code__, globs, func.__name__, func.__defaults__, func.__closure__
    )
    new.__kwdefaults__ = func.__kwdefaults__
    new.__qualname__ = func.__qualname__
    new.__doc__ = func.__doc__
    return new


_PY313 = sys.version_info >= (3, 13)
# NOTE: 3.11 added ssl_shutdown_timeout (constants.SSL_SHUTDOWN_TIMEOUT, a
# parameter of _start_serving, _accept_connection and SSLProtocol); on 3.10
# it is accepted here and not passed on.
_SSL_SHUTDOWN_TIMEOUT = getattr(constants, "SSL_SHUTDOWN_TIMEOUT", 30.0)


class NetworkMixin:
    """Stream connections and servers of ferroloop.Loop."""

    # -- asyncio's own policy code (see the module docstring) ----------------
    # (type: ignore[attr-defined]: asyncio's private methods, which typeshed
    # does not declare.)
    create_connection = _BaseLoop.create_connection
    _connect_sock = _BaseLoop._connect_sock  # type: ignore[attr-defined]
    _create_connection_transport = _BaseLoop._create_connection_transport  # type: ignore[attr-defined]
    create_server = _BaseLoop.create_server
    _create_server_getaddrinfo = _BaseLoop._create_server_getaddrinfo  # type: ignore[attr-defined]
    connect_accepted_socket = _BaseLoop.connect_accepted_socket
    create_datagram_endpoint = _BaseLoop.create_datagram_endpoint
    create_unix_connection = _UnixLoop.create_unix_connection
    create_unix_server = _UnixLoop.create_unix_server
    _ensure_resolved = _BaseLoop._ensure_resolved  # type: ignore[attr-defined]
    sendfile = _BaseLoop.sendfile
    _sendfile_fallback = _BaseLoop._sendfile_fallback  # type: ignore[attr-defined]
    start_tls = _with_ferroloop_tls(_BaseLoop.start_tls)
    _accept_connection2 = _SelectorLoop._accept_connection2  # type: ignore[attr-defined]

    # -- hooks ------------------------------------------------------------------

    def _start_serving(
        self,
        protocol_factory,
        sock,
        sslcontext=None,
        server=None,
        backlog=100,
        ssl_handshake_timeout=constants.SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout=_SSL_SHUTDOWN_TIMEOUT,
    ):
        """Start accepting on *sock*: natively (``transports/accept.rs``), or
        with asyncio's own accept loop in debug mode (where asyncio logs
        every connection) and for TLS servers on 3.10 (its older sslproto)."""
        args = (
            protocol_factory,
            sock,
            sslcontext,
            server,
            backlog,
            ssl_handshake_timeout,
        )
        if _PY311:
            args += (ssl_shutdown_timeout,)
        if self._debug or (sslcontext is not None and not _PY311):
            return _SelectorLoop._start_serving(self, *args)
        factory = protocol_factory
        if sslcontext is not None:
            # asyncio's _accept_connection2 with sslcontext: the application
            # protocol behind an SSLProtocol that owns the handshake (and
            # closes the connection if it fails). Nothing awaits a waiter:
            # asyncio's only reports its exception in debug mode.
            def factory():
                return SSLProtocol(
                    self,
                    protocol_factory(),
                    sslcontext,
                    None,
                    server_side=True,
                    ssl_handshake_timeout=ssl_handshake_timeout,
                    ssl_shutdown_timeout=ssl_shutdown_timeout,
                )

        def on_error(exc):
            # asyncio's _accept_connection, for errors other than "try again".
            if exc.errno not in _OUT_OF_RESOURCES:
                raise exc  # The event loop will catch, log and ignore it.
            self._accept_out_of_resources(exc, args)

        acceptor = _ferroloop.Acceptor(
            self,
            sock,
            factory,
            server,
            backlog,
            SocketTransport._adopt,
            on_error,
            _is_tcp(sock),
        )
        self._add_reader(sock.fileno(), acceptor._accept_ready)

    def _accept_connection(self, protocol_factory, sock, sslcontext, server, backlog, *timeouts):
        """asyncio's accept loop, for the servers ``_start_serving`` does not
        accept natively: up to *backlog* connections per readiness, each
        handed to asyncio's ``_accept_connection2`` in a task. Unlike
        asyncio's up to 3.13 (CPython gh-151615), the first out-of-resources
        error ends the round, as in the native acceptor: one report and one
        retry, not one of each per remaining ``backlog``."""
        for _ in range(backlog):
            try:
                conn, addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # that connection is gone; the next may not be
            except OSError as exc:
                if exc.errno not in _OUT_OF_RESOURCES:
                    raise  # The event loop will catch, log and ignore it.
                args = (protocol_factory, sock, sslcontext, server, backlog, *timeouts)
                self._accept_out_of_resources(exc, args)
                return
            if self._debug:
                logger.debug("%r got a new connection from %r: %r", server, addr, conn)
            conn.setblocking(False)
            extra = {"peername": addr}
            self.create_task(
                self._accept_connection2(
                    protocol_factory, conn, extra, sslcontext, server, *timeouts
                )
            )

    def _accept_out_of_resources(self, exc, start_serving_args):
        """Out of fds or memory while accepting: report it, stop watching
        the listening socket (Linux keeps reporting it readable) and try
        again after ACCEPT_RETRY_DELAY, as asyncio does."""
        sock = start_serving_args[1]
        self.call_exception_handler(
            {
                "message": "socket.accept() out of system resource",
                "exception": exc,
                "socket": trsock.TransportSocket(sock),
            }
        )
        self._remove_reader(sock.fileno())
        self.call_later(constants.ACCEPT_RETRY_DELAY, self._start_serving, *start_serving_args)

    async def _sendfile_native(self, transp, file, offset, count):
        # asyncio's, with the native transport mark in place of _transports.
        if not isinstance(transp, SocketTransport):
            return await _SelectorLoop._sendfile_native(self, transp, file, offset, count)
        fd = transp._sock_fd
        self._set_fd_has_transport(fd, False)
        resume_reading = transp.is_reading()
        transp.pause_reading()
        await transp._make_empty_waiter()
        try:
            return await self.sock_sendfile(transp._sock, file, offset, count, fallback=False)
        finally:
            transp._reset_empty_waiter()
            if resume_reading:
                transp.resume_reading()
            if not transp.is_closing():
                self._set_fd_has_transport(fd, True)

    def _make_socket_transport(self, sock, protocol, waiter=None, *, extra=None, server=None):
        return SocketTransport(self, sock, protocol, waiter, extra, server)

    def _make_datagram_transport(self, sock, protocol, address=None, waiter=None, extra=None):
        return DatagramTransport(self, sock, protocol, address, waiter, extra)

    def _make_ssl_transport(
        self,
        rawsock,
        protocol,
        sslcontext,
        waiter=None,
        *,
        server_side=False,
        server_hostname=None,
        extra=None,
        server=None,
        ssl_handshake_timeout=constants.SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout=_SSL_SHUTDOWN_TIMEOUT,
        **kwargs,
    ):
        # asyncio's TLS: an SSLProtocol between the socket transport and the
        # application protocol (kwargs: keywords of later Python versions,
        # passed through as asyncio's selector loop would).
        ssl_protocol = SSLProtocol(
            self,
            protocol,
            sslcontext,
            waiter,
            server_side,
            server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            **({"ssl_shutdown_timeout": ssl_shutdown_timeout} if _PY311 else {}),
            **kwargs,
        )
        SocketTransport(self, rawsock, ssl_protocol, extra=extra, server=server)
        return ssl_protocol._app_transport

    def _stop_serving(self, sock):
        # Unix server sockets created with cleanup_socket (3.13+) are removed
        # from the file system when the server stops, as asyncio does.
        path = None
        inode = self._unix_server_sockets.pop(sock, None)
        if inode is not None:
            path = sock.getsockname()
        self._remove_reader(sock.fileno())
        sock.close()
        if path:
            try:
                if os.stat(path).st_ino == inode and stat.S_ISSOCK(os.stat(path).st_mode):
                    os.remove(path)
            except FileNotFoundError:
                pass
            except OSError as err:
                from asyncio.log import logger

                logger.error("Unable to clean up listening UNIX socket %r: %r", path, err)
