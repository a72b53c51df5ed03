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

import os
import stat
import sys
from asyncio import base_events, constants, selector_events, sslproto, unix_events

from ._transports import DatagramTransport, SocketTransport

_BaseLoop = base_events.BaseEventLoop
_SelectorLoop = selector_events.BaseSelectorEventLoop
_UnixLoop = unix_events._UnixSelectorEventLoop

_PY313 = sys.version_info >= (3, 13)


class NetworkMixin:
    """Stream connections and servers of ferroloop.Loop."""

    # -- asyncio's own policy code (see the module docstring) ----------------
    create_connection = _BaseLoop.create_connection
    _connect_sock = _BaseLoop._connect_sock
    _create_connection_transport = _BaseLoop._create_connection_transport
    create_server = _BaseLoop.create_server
    _create_server_getaddrinfo = _BaseLoop._create_server_getaddrinfo
    connect_accepted_socket = _BaseLoop.connect_accepted_socket
    create_datagram_endpoint = _BaseLoop.create_datagram_endpoint
    create_unix_connection = _UnixLoop.create_unix_connection
    create_unix_server = _UnixLoop.create_unix_server
    _ensure_resolved = _BaseLoop._ensure_resolved
    sendfile = _BaseLoop.sendfile
    _sendfile_native = _SelectorLoop._sendfile_native
    _sendfile_fallback = _BaseLoop._sendfile_fallback
    start_tls = _BaseLoop.start_tls
    _start_serving = _SelectorLoop._start_serving
    _accept_connection = _SelectorLoop._accept_connection
    _accept_connection2 = _SelectorLoop._accept_connection2

    # -- hooks ------------------------------------------------------------------

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
        ssl_shutdown_timeout=constants.SSL_SHUTDOWN_TIMEOUT,
        **kwargs,
    ):
        # asyncio's TLS: an SSLProtocol between the socket transport and the
        # application protocol (kwargs: keywords of later Python versions,
        # passed through as asyncio's selector loop would).
        ssl_protocol = sslproto.SSLProtocol(
            self,
            protocol,
            sslcontext,
            waiter,
            server_side,
            server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
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
