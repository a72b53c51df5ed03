"""Low-level socket operations (``loop.sock_*``), ``sock_sendfile`` and DNS.

Behaviour follows asyncio's selector loop on Unix: every operation first
tries the non-blocking syscall and only waits (through the native
``_add_reader`` / ``_add_writer``, level-triggered) when it would block; the
wait ends by setting the returned future, and the watcher is removed when the
future is done (also when it is cancelled).
"""

import errno
import functools
import io
import os
import socket
import ssl
import time
from asyncio import constants, exceptions
from asyncio.log import logger

from ._ferroloop import recv_nowait as _recv_nowait
from ._ferroloop import send_nowait as _send_nowait

# NOTE: plain sockets (exactly this type) take the native non-blocking
# calls, where "would block" is a return value instead of a BlockingIOError;
# subclasses and stand-ins are called through their own methods, as asyncio
# calls them.
_PLAIN_SOCKET = socket.socket

_HAS_IPV6 = hasattr(socket, "AF_INET6")


def _check_sock(loop, sock):
    """asyncio's checks before every sock_* call."""
    if isinstance(sock, ssl.SSLSocket):
        raise TypeError("Socket cannot be of type SSLSocket")
    if loop.get_debug() and sock.gettimeout() != 0:
        raise ValueError("the socket must be non-blocking")


def _try_op(fut, sock, method, *args):
    """One attempt of ``sock.<method>(*args)``, as a watcher callback.

    NOTE: the method is looked up at every attempt, as asyncio does (tests
    and wrappers swap a socket's methods while an operation waits)."""
    if fut.done():
        return  # cancelled meanwhile (done callbacks run a tick later)
    try:
        result = getattr(sock, method)(*args)
    except (BlockingIOError, InterruptedError):
        return  # not ready after all: the watcher calls again
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


def _is_numeric_host(host):
    """True for None and IP address literals: getaddrinfo answers those
    without a DNS query, so there is no need for a thread."""
    if host is None:
        return True
    if isinstance(host, bytes):
        try:
            host = host.decode("idna")
        except UnicodeError:
            return False
    if not isinstance(host, str):
        return False
    addr = host.partition("%")[0]  # IPv6 scope id
    for family in (socket.AF_INET, socket.AF_INET6) if _HAS_IPV6 else (socket.AF_INET,):
        try:
            socket.inet_pton(family, addr)
        except (OSError, ValueError):
            continue
        return True
    return False


def _is_numeric_port(port):
    if port is None or isinstance(port, int):
        return True
    if isinstance(port, (str, bytes)):
        try:
            int(port)
        except ValueError:
            return False
        return True
    return False


class SocketsMixin:
    """sock_* / DNS methods of ferroloop.Loop."""

    # -- readiness waits ------------------------------------------------------

    def _sock_read_done(self, fd, fut, handle=None):
        if handle is None or not handle.cancelled():
            self.remove_reader(fd)

    def _sock_write_done(self, fd, fut, handle=None):
        if handle is None or not handle.cancelled():
            self.remove_writer(fd)

    async def _sock_read(self, sock, method, *args):
        """``sock.<method>(*args)`` now if it does not block, else once the
        socket is readable (asyncio's try-first, then wait)."""
        try:
            return getattr(sock, method)(*args)
        except (BlockingIOError, InterruptedError):
            pass
        fut = self.create_future()
        fd = sock.fileno()
        self._ensure_fd_no_transport(fd)
        handle = self._add_reader(fd, _try_op, fut, sock, method, *args)
        fut.add_done_callback(functools.partial(self._sock_read_done, fd, handle=handle))
        return await fut

    # -- receiving ------------------------------------------------------------

    async def sock_recv(self, sock, n):
        """Receive up to *n* bytes from *sock*."""
        _check_sock(self, sock)
        if type(sock) is _PLAIN_SOCKET and type(n) is int and n >= 0:
            fd = sock.fileno()
            data = _recv_nowait(fd, n)
            if data is not None:
                return data
            # _ensure_fd_no_transport on its common case: no transport at all.
            if self._fd_has_transport(fd) or fd in self._transports.data:
                self._ensure_fd_no_transport(fd)
            # A native reader that receives and resolves the future itself.
            return await self._sock_recv_wait(fd, n)
        return await self._sock_read(sock, "recv", n)

    async def sock_recv_into(self, sock, buf):
        """Receive data from *sock* into *buf*; return the number of bytes."""
        _check_sock(self, sock)
        return await self._sock_read(sock, "recv_into", buf)

    async def sock_recvfrom(self, sock, bufsize):
        """Receive a datagram: ``(data, address)``."""
        _check_sock(self, sock)
        return await self._sock_read(sock, "recvfrom", bufsize)

    async def sock_recvfrom_into(self, sock, buf, nbytes=0):
        """Receive a datagram into *buf*: ``(nbytes, address)``."""
        _check_sock(self, sock)
        if not nbytes:
            nbytes = len(buf)
        return await self._sock_read(sock, "recvfrom_into", buf, nbytes)

    # -- sending --------------------------------------------------------------

    async def sock_sendall(self, sock, data):
        """Send all of *data*; None on success."""
        _check_sock(self, sock)
        if type(sock) is _PLAIN_SOCKET and type(data) is bytes:
            n = _send_nowait(sock.fileno(), data)
        else:
            try:
                n = sock.send(data)
            except (BlockingIOError, InterruptedError):
                n = 0
        if n == len(data):
            return None
        fut = self.create_future()
        fd = sock.fileno()
        self._ensure_fd_no_transport(fd)
        state = [memoryview(data), n]  # the data and how much of it is sent
        handle = self._add_writer(fd, self._sock_sendall_ready, fut, sock, state)
        fut.add_done_callback(functools.partial(self._sock_write_done, fd, handle=handle))
        return await fut

    @staticmethod
    def _sock_sendall_ready(fut, sock, state):
        if fut.done():
            return
        view, pos = state
        try:
            n = sock.send(view[pos:])
        except (BlockingIOError, InterruptedError):
            return
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            fut.set_exception(exc)
            return
        pos += n
        if pos == len(view):
            fut.set_result(None)
        else:
            state[1] = pos

    async def sock_sendto(self, sock, data, address):
        """Send a datagram to *address*; return the number of bytes sent."""
        _check_sock(self, sock)
        try:
            return sock.sendto(data, address)
        except (BlockingIOError, InterruptedError):
            pass
        fut = self.create_future()
        fd = sock.fileno()
        self._ensure_fd_no_transport(fd)
        handle = self._add_writer(fd, _try_op, fut, sock, "sendto", data, 0, address)
        fut.add_done_callback(functools.partial(self._sock_write_done, fd, handle=handle))
        return await fut

    # -- connecting and accepting ---------------------------------------------

    async def sock_connect(self, sock, address):
        """Connect *sock* to *address* (resolved first for IP sockets)."""
        _check_sock(self, sock)
        if sock.family == socket.AF_INET or (_HAS_IPV6 and sock.family == socket.AF_INET6):
            resolved = await self._ensure_resolved(
                address, family=sock.family, type=sock.type, proto=sock.proto, loop=self
            )
            address = resolved[0][4]
        fut = self.create_future()
        fd = sock.fileno()
        try:
            sock.connect(address)
        except (BlockingIOError, InterruptedError):
            # NOTE: connect() in progress (EINTR too, bpo-23618): the socket
            # turns writable when it succeeds or fails; SO_ERROR says which.
            self._ensure_fd_no_transport(fd)
            handle = self._add_writer(fd, self._sock_connect_ready, fut, sock, address)
            fut.add_done_callback(functools.partial(self._sock_write_done, fd, handle=handle))
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            fut.set_exception(exc)
        else:
            fut.set_result(None)
        try:
            return await fut
        finally:
            fut = None  # break the traceback -> frame -> future cycle

    @staticmethod
    def _sock_connect_ready(fut, sock, address):
        if fut.done():
            return
        try:
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err != 0:
                raise OSError(err, f"Connect call failed {address}")
        except (BlockingIOError, InterruptedError):
            pass  # still connecting: called again when writable
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            fut.set_exception(exc)
        else:
            fut.set_result(None)
        finally:
            # The exception's traceback holds this frame: without this, the
            # frame -> future -> exception cycle keeps the future alive (as
            # asyncio 3.13.x's _sock_connect_cb breaks it).
            fut = None

    async def sock_accept(self, sock):
        """Accept a connection: ``(conn, address)``, *conn* non-blocking."""
        _check_sock(self, sock)
        fut = self.create_future()
        self._sock_accept_once(fut, sock, registered=False)
        return await fut

    def _sock_accept_once(self, fut, sock, registered=True):
        if registered and fut.done():
            return
        fd = sock.fileno()
        try:
            conn, address = sock.accept()
            conn.setblocking(False)
        except (BlockingIOError, InterruptedError):
            if not registered:
                self._ensure_fd_no_transport(fd)
                handle = self._add_reader(fd, self._sock_accept_once, fut, sock)
                fut.add_done_callback(functools.partial(self._sock_read_done, fd, handle=handle))
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            fut.set_exception(exc)
        else:
            fut.set_result((conn, address))

    # -- sendfile ---------------------------------------------------------------

    async def sock_sendfile(self, sock, file, offset=0, count=None, *, fallback=True):
        """Send *file* over *sock* with zero-copy ``os.sendfile``, or by
        reading and sending it when that is not possible and *fallback*."""
        if self.get_debug() and sock.gettimeout() != 0:
            raise ValueError("the socket must be non-blocking")
        if isinstance(sock, ssl.SSLSocket):
            raise TypeError("Socket cannot be of type SSLSocket")
        _check_sendfile_params(sock, file, offset, count)
        try:
            return await self._sock_sendfile_native(sock, file, offset, count)
        except exceptions.SendfileNotAvailableError:
            if not fallback:
                raise
        return await self._sock_sendfile_fallback(sock, file, offset, count)

    async def _sock_sendfile_native(self, sock, file, offset, count):
        if not hasattr(os, "sendfile"):
            raise exceptions.SendfileNotAvailableError("os.sendfile() is not available")
        try:
            fileno = file.fileno()
        except (AttributeError, io.UnsupportedOperation):
            raise exceptions.SendfileNotAvailableError("not a regular file") from None
        try:
            fsize = os.fstat(fileno).st_size
        except OSError:
            raise exceptions.SendfileNotAvailableError("not a regular file") from None
        blocksize = count if count else fsize
        if not blocksize:
            return 0  # empty file
        fut = self.create_future()
        state = _SendfileState(sock, fileno, offset, count, blocksize)
        self._sendfile_step(fut, state, None)
        return await fut

    def _sendfile_step(self, fut, st, registered_fd):
        fd = st.sock.fileno()
        if registered_fd is not None:
            # Every step re-registers: readiness is rare to be spurious.
            self.remove_writer(registered_fd)
        if fut.cancelled():
            st.restore_filepos()
            return
        if st.count:
            st.blocksize = st.count - st.total_sent
            if st.blocksize <= 0:
                st.restore_filepos()
                fut.set_result(st.total_sent)
                return
        try:
            sent = os.sendfile(fd, st.fileno, st.offset, st.blocksize)
        except (BlockingIOError, InterruptedError):
            self._sendfile_wait(fut, st, fd, first=registered_fd is None)
        except OSError as exc:
            if (
                registered_fd is not None
                and exc.errno == errno.ENOTCONN
                and type(exc) is not ConnectionError
            ):
                # The peer went away mid-transfer: asyncio reports a
                # ConnectionError on every POSIX system.
                new_exc = ConnectionError("socket is not connected", errno.ENOTCONN)
                new_exc.__cause__ = exc
                exc = new_exc
            st.restore_filepos()
            if st.total_sent == 0:
                # E.g. not an mmap-able file: let the caller fall back.
                fut.set_exception(exceptions.SendfileNotAvailableError("os.sendfile call failed"))
            else:
                fut.set_exception(exc)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            st.restore_filepos()
            fut.set_exception(exc)
        else:
            if sent == 0:  # EOF
                st.restore_filepos()
                fut.set_result(st.total_sent)
            else:
                st.offset += sent
                st.total_sent += sent
                self._sendfile_wait(fut, st, fd, first=registered_fd is None)

    def _sendfile_wait(self, fut, st, fd, first):
        if first:
            sock = st.sock

            def on_cancel(f):
                if f.cancelled():
                    sfd = sock.fileno()
                    if sfd != -1:
                        self.remove_writer(sfd)

            fut.add_done_callback(on_cancel)
        self.add_writer(fd, self._sendfile_step, fut, st, fd)

    async def _sock_sendfile_fallback(self, sock, file, offset, count):
        if offset:
            file.seek(offset)
        limit = constants.SENDFILE_FALLBACK_READBUFFER_SIZE
        blocksize = min(count, limit) if count else limit
        buf = bytearray(blocksize)
        total_sent = 0
        try:
            while True:
                if count:
                    blocksize = min(count - total_sent, blocksize)
                    if blocksize <= 0:
                        break
                view = memoryview(buf)[:blocksize]
                read = await self.run_in_executor(None, file.readinto, view)
                if not read:
                    break  # EOF
                await self.sock_sendall(sock, view[:read])
                total_sent += read
            return total_sent
        finally:
            if total_sent > 0 and hasattr(file, "seek"):
                file.seek(offset + total_sent)

    # -- DNS ------------------------------------------------------------------

    async def getaddrinfo(self, host, port, *, family=0, type=0, proto=0, flags=0):
        """``socket.getaddrinfo`` without blocking the loop.

        NOTE: hosts that are address literals (or None) with a numeric port
        are answered at once: getaddrinfo only parses them, so a thread hop
        would cost more than the call, but only where the executor would
        have taken it: a closed loop, a shut-down default executor raise
        RuntimeError as on the executor path. Names go to the default
        executor.
        """
        func = self._getaddrinfo_debug if self.get_debug() else socket.getaddrinfo
        if _is_numeric_host(host) and _is_numeric_port(port):
            self._check_closed()
            self._check_default_executor()
            if not getattr(self._default_executor, "_shutdown", False):
                return func(host, port, family, type, proto, flags)
        return await self.run_in_executor(None, func, host, port, family, type, proto, flags)

    def _getaddrinfo_debug(self, host, port, family, type, proto, flags):
        msg = [f"{host}:{port!r}"]
        if family:
            msg.append(f"family={family!r}")
        if type:
            msg.append(f"type={type!r}")
        if proto:
            msg.append(f"proto={proto!r}")
        if flags:
            msg.append(f"flags={flags!r}")
        msg = ", ".join(msg)
        logger.debug("Get address info %s", msg)
        t0 = time.monotonic()
        addrinfo = socket.getaddrinfo(host, port, family, type, proto, flags)
        dt = time.monotonic() - t0
        msg = f"Getting address info {msg} took {dt * 1e3:.3f}ms: {addrinfo!r}"
        if dt >= self.slow_callback_duration:
            logger.info(msg)
        else:
            logger.debug(msg)
        return addrinfo

    async def getnameinfo(self, sockaddr, flags=0):
        """``socket.getnameinfo`` in the default executor."""
        return await self.run_in_executor(None, socket.getnameinfo, sockaddr, flags)


class _SendfileState:
    """Progress of one native sock_sendfile."""

    __slots__ = ("blocksize", "count", "fileno", "offset", "sock", "total_sent")

    def __init__(self, sock, fileno, offset, count, blocksize):
        self.sock = sock
        self.fileno = fileno
        self.offset = offset
        self.count = count
        self.blocksize = blocksize
        self.total_sent = 0

    def restore_filepos(self):
        # NOTE: os.sendfile with an offset leaves the file position alone;
        # asyncio leaves it after the sent bytes, as a read would.
        if self.total_sent > 0:
            os.lseek(self.fileno, self.offset, os.SEEK_SET)


def _check_sendfile_params(sock, file, offset, count):
    if "b" not in getattr(file, "mode", "b"):
        raise ValueError("file should be opened in binary mode")
    if not sock.type == socket.SOCK_STREAM:
        raise ValueError("only SOCK_STREAM type sockets are supported")
    if count is not None:
        if not isinstance(count, int):
            raise TypeError(f"count must be a positive integer (got {count!r})")
        if count <= 0:
            raise ValueError(f"count must be a positive integer (got {count!r})")
    if not isinstance(offset, int):
        raise TypeError(f"offset must be a non-negative integer (got {offset!r})")
    if offset < 0:
        raise ValueError(f"offset must be a non-negative integer (got {offset!r})")
