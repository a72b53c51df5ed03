"""loop.sock_* and DNS (getaddrinfo / getnameinfo), on both loops."""

import asyncio
import os
import socket
import ssl
import tempfile

import pytest
from conftest import skip_if_asyncio_310

HAS_IPV6 = socket.has_ipv6
try:
    socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()
except OSError:
    HAS_IPV6 = False


@pytest.fixture
def listener():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(100)
    srv.setblocking(False)
    yield srv
    srv.close()


def test_sock_ops_are_coroutines(loop, pair):
    a, _ = pair
    coro = loop.sock_recv(a, 10)
    assert asyncio.iscoroutine(coro)
    coro.close()


def test_recv_immediate_and_waiting(loop, run, pair):
    a, b = pair

    async def main():
        b.send(b"now")
        first = await loop.sock_recv(a, 100)
        loop.call_later(0.01, b.send, b"later")
        second = await loop.sock_recv(a, 100)
        return first, second

    assert run(main()) == (b"now", b"later")


def test_recv_into(loop, run, pair):
    a, b = pair

    async def main():
        buf = bytearray(10)
        loop.call_later(0.01, b.send, b"abc")
        n = await loop.sock_recv_into(a, buf)
        return bytes(buf[:n])

    assert run(main()) == b"abc"


def test_recv_eof(loop, run, pair):
    a, b = pair

    async def main():
        loop.call_later(0.01, b.shutdown, socket.SHUT_WR)
        return await loop.sock_recv(a, 100)

    assert run(main()) == b""


def test_sendall_large_while_peer_reads(loop, run, pair):
    a, b = pair
    data = os.urandom(4 * 1024 * 1024)  # far more than the socket buffers

    async def reader():
        got = bytearray()
        while len(got) < len(data):
            chunk = await loop.sock_recv(b, 65536)
            assert chunk
            got += chunk
        return bytes(got)

    async def main():
        task = loop.create_task(reader())
        assert await loop.sock_sendall(a, data) is None
        return await task

    assert run(main()) == data


def test_sendall_empty(loop, run, pair):
    a, _ = pair
    assert run(loop.sock_sendall(a, b"")) is None


def test_cancelled_recv_unregisters_and_keeps_data(loop, run, pair):
    a, b = pair

    async def main():
        task = loop.create_task(loop.sock_recv(a, 100))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The reader is gone: data sent now is for the next sock_recv.
        b.send(b"kept")
        await asyncio.sleep(0.01)
        return await loop.sock_recv(a, 100)

    assert run(main()) == b"kept"
    assert loop.remove_reader(a) is False


def test_wait_for_timeout_on_recv(loop, run, pair):
    a, _ = pair

    async def main():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(loop.sock_recv(a, 10), 0.02)

    run(main())
    assert loop.remove_reader(a) is False


def test_recv_error_is_raised(loop, run, pair):
    a, _ = pair
    a.close()

    async def main():
        with pytest.raises(OSError):
            await loop.sock_recv(a, 10)

    run(main())


def test_accept_connect_and_echo(loop, run, listener):
    async def main():
        client = socket.socket()
        client.setblocking(False)
        accept = loop.create_task(loop.sock_accept(listener))
        await loop.sock_connect(client, listener.getsockname())
        conn, addr = await accept
        assert conn.gettimeout() == 0  # non-blocking, as asyncio makes it
        assert addr == client.getsockname()
        await loop.sock_sendall(client, b"ping")
        assert await loop.sock_recv(conn, 10) == b"ping"
        conn.close()
        client.close()

    run(main())


def test_connect_resolves_localhost(loop, run, listener):
    async def main():
        client = socket.socket()
        client.setblocking(False)
        port = listener.getsockname()[1]
        await loop.sock_connect(client, ("localhost", port))
        conn, _ = await loop.sock_accept(listener)
        conn.close()
        client.close()

    run(main())


def test_connect_refused(loop, run):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    address = s.getsockname()
    s.close()

    async def main():
        client = socket.socket()
        client.setblocking(False)
        with client, pytest.raises(ConnectionRefusedError):
            await loop.sock_connect(client, address)

    run(main())


def test_connect_unix(loop, run, tmp_path):
    path = str(tmp_path / "sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen()
    srv.setblocking(False)

    async def main():
        client = socket.socket(socket.AF_UNIX)
        client.setblocking(False)
        await loop.sock_connect(client, path)
        conn, _ = await loop.sock_accept(srv)
        await loop.sock_sendall(conn, b"unix")
        assert await loop.sock_recv(client, 10) == b"unix"
        conn.close()
        client.close()

    try:
        run(main())
    finally:
        srv.close()


def test_cancelled_accept_unregisters(loop, run, listener):
    async def main():
        task = loop.create_task(loop.sock_accept(listener))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0)

    run(main())
    assert loop.remove_reader(listener) is False


def test_many_concurrent_accepts(loop, run, listener):
    n = 50

    async def main():
        accepts = [loop.create_task(loop.sock_accept(listener)) for _ in range(1)]
        clients = []
        for _ in range(n):
            c = socket.socket()
            c.setblocking(False)
            await loop.sock_connect(c, listener.getsockname())
            clients.append(c)
        conns = [(await accepts[0])[0]]
        for _ in range(n - 1):
            conns.append((await loop.sock_accept(listener))[0])
        for s in clients + conns:
            s.close()
        return len(conns)

    assert run(main()) == n


def test_udp_sendto_recvfrom(loop, loop_name, run):
    skip_if_asyncio_310(loop_name, "has no sock_recvfrom/sock_sendto (3.11 added them)")

    async def main():
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b,
        ):
            a.setblocking(False)
            b.setblocking(False)
            a.bind(("127.0.0.1", 0))
            b.bind(("127.0.0.1", 0))
            recv = loop.create_task(loop.sock_recvfrom(b, 100))
            await asyncio.sleep(0.01)
            assert await loop.sock_sendto(a, b"dgram", b.getsockname()) == 5
            data, addr = await recv
            assert (data, addr) == (b"dgram", a.getsockname())
            buf = bytearray(3)
            await loop.sock_sendto(a, b"xyz12", b.getsockname())
            nbytes, addr = await loop.sock_recvfrom_into(b, buf)
            assert (bytes(buf), nbytes, addr) == (b"xyz", 3, a.getsockname())
            await loop.sock_sendto(a, b"ab", b.getsockname())
            buf = bytearray(10)
            nbytes, _ = await loop.sock_recvfrom_into(b, buf, 1)
            assert buf[:nbytes] == b"a"

    run(main())


def test_ssl_socket_refused(loop, run):
    ctx = ssl.create_default_context()
    with socket.socket() as raw:
        s = ctx.wrap_socket(raw, server_hostname="example.com", do_handshake_on_connect=False)

        async def main():
            for coro in (loop.sock_recv(s, 1), loop.sock_sendall(s, b"x"), loop.sock_accept(s)):
                with pytest.raises(TypeError, match="SSLSocket"):
                    await coro

        run(main())


def test_blocking_socket_refused_in_debug_mode(loop, run, pair):
    a, _ = pair
    a.setblocking(True)
    loop.set_debug(True)

    async def main():
        with pytest.raises(ValueError, match="non-blocking"):
            await loop.sock_recv(a, 1)
        with pytest.raises(ValueError, match="non-blocking"):
            await loop.sock_sendall(a, b"x")

    run(main())


def test_fd_owned_by_transport_refused(loop, run, pair):
    a, _ = pair

    class Owner:
        def is_closing(self):
            return False

    owner = Owner()
    loop._transports[a.fileno()] = owner

    async def main():
        with pytest.raises(RuntimeError, match="is used by transport"):
            await loop.sock_recv(a, 1)

    run(main())
    del loop._transports[a.fileno()]


# -- sock_sendfile --------------------------------------------------------------


@pytest.fixture
def datafile():
    data = os.urandom(300_000)
    with tempfile.TemporaryFile() as f:
        f.write(data)
        f.flush()
        f.seek(0)
        yield f, data


async def _receive(loop, sock, n):
    got = bytearray()
    while len(got) < n:
        chunk = await loop.sock_recv(sock, 65536)
        if not chunk:
            break
        got += chunk
    return bytes(got)


@pytest.mark.parametrize(("offset", "count"), [(0, None), (1000, None), (5, 100_000)])
def test_sock_sendfile(loop, run, pair, datafile, offset, count):
    a, b = pair
    f, data = datafile
    expected = data[offset : offset + count if count else None]

    async def main():
        recv = loop.create_task(_receive(loop, b, len(expected)))
        sent = await loop.sock_sendfile(a, f, offset, count)
        return sent, await recv

    sent, got = run(main())
    assert sent == len(expected)
    assert got == expected
    assert f.tell() == offset + sent  # the file position follows the data


def test_sock_sendfile_fallback_for_non_regular_file(loop, run, pair):
    import io

    a, b = pair
    src = io.BytesIO(b"x" * 1000)

    async def main():
        recv = loop.create_task(_receive(loop, b, 1000))
        sent = await loop.sock_sendfile(a, src)
        return sent, await recv

    assert run(main()) == (1000, b"x" * 1000)
    with pytest.raises(asyncio.SendfileNotAvailableError):
        run(loop.sock_sendfile(a, io.BytesIO(b"y"), fallback=False))


def test_sock_sendfile_empty_file(loop, run, pair):
    a, _ = pair
    with tempfile.TemporaryFile() as f:
        assert run(loop.sock_sendfile(a, f)) == 0


def test_sock_sendfile_bad_arguments(loop, run, pair, datafile):
    a, _ = pair
    f, _ = datafile
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.setblocking(False)
    with udp, tempfile.TemporaryFile("w") as text:
        cases = [
            (loop.sock_sendfile(a, f, -1), ValueError),
            (loop.sock_sendfile(a, f, "0"), TypeError),
            (loop.sock_sendfile(a, f, 0, 0), ValueError),
            (loop.sock_sendfile(a, f, 0, 1.5), TypeError),
            (loop.sock_sendfile(udp, f), ValueError),
            (loop.sock_sendfile(a, text), ValueError),
        ]

        async def main():
            for coro, exc in cases:
                with pytest.raises(exc):
                    await coro

        run(main())


# -- DNS --------------------------------------------------------------------


def test_getaddrinfo_literal_without_thread(loop_name, loop, run):
    # The result is socket.getaddrinfo's on both loops; ferroloop answers a
    # literal without the default executor (asyncio always uses a thread).
    res = run(loop.getaddrinfo("127.0.0.1", 80, type=socket.SOCK_STREAM))
    assert res == socket.getaddrinfo("127.0.0.1", 80, type=socket.SOCK_STREAM)
    if loop_name == "ferroloop":
        assert loop._default_executor is None
        run(loop.getaddrinfo("localhost", 80))
        assert loop._default_executor is not None


def test_getaddrinfo_matches_socket(loop, run):
    for args in [("localhost", 80), ("127.0.0.1", "http"), (None, 0), ("127.0.0.1", None)]:
        assert run(loop.getaddrinfo(*args)) == socket.getaddrinfo(*args)
    kwargs = {"family": socket.AF_INET, "type": socket.SOCK_DGRAM, "flags": socket.AI_PASSIVE}
    assert run(loop.getaddrinfo(None, 53, **kwargs)) == socket.getaddrinfo(None, 53, **kwargs)


@pytest.mark.skipif(not HAS_IPV6, reason="no IPv6 on this machine")
def test_getaddrinfo_ipv6_literal(loop, run):
    assert run(loop.getaddrinfo("::1", 443)) == socket.getaddrinfo("::1", 443)


def test_getaddrinfo_errors(loop, run):
    async def main():
        with pytest.raises(socket.gaierror):
            await loop.getaddrinfo("name.invalid", 80)
        with pytest.raises(OSError):
            await loop.getaddrinfo("127.0.0.1", "no-such-service-name")

    run(main())


def test_getnameinfo(loop, run):
    res = run(loop.getnameinfo(("127.0.0.1", 80), socket.NI_NUMERICHOST | socket.NI_NUMERICSERV))
    assert res == ("127.0.0.1", "80")


def test_second_recv_replaces_the_first_reader(loop, run, pair):
    """As asyncio: a sock_recv (or add_reader) on an fd that already has a
    waiting sock_recv replaces its reader; the first waits until cancelled."""
    a, b = pair

    async def main():
        first = loop.create_task(loop.sock_recv(a, 100))
        await asyncio.sleep(0.01)
        second = loop.create_task(loop.sock_recv(a, 100))
        await asyncio.sleep(0.01)
        b.send(b"one")
        assert await asyncio.wait_for(second, 5) == b"one"
        await asyncio.sleep(0.02)
        assert not first.done()
        fired = loop.create_future()
        third = loop.create_task(loop.sock_recv(a, 100))
        await asyncio.sleep(0.01)

        def on_readable():
            fired.set_result(loop.remove_reader(a))

        loop.add_reader(a, on_readable)
        b.send(b"two")
        assert await asyncio.wait_for(fired, 5) is True
        assert not third.done()
        for t in (first, third):
            t.cancel()
        await asyncio.gather(first, third, return_exceptions=True)
        assert await loop.sock_recv(a, 100) == b"two"

    run(main())
    assert loop.remove_reader(a) is False


def test_recv_woken_with_nothing_to_read_keeps_waiting(loop, run, pair):
    """A waiting sock_recv whose socket is drained by someone else in the
    same tick (a spurious wake-up) keeps waiting and gets the next data."""
    a, b = pair
    drained = []

    async def main():
        fut = loop.create_task(loop.sock_recv(a, 100))
        await asyncio.sleep(0.01)
        for chunk in (b"first", b"again"):
            b.send(chunk)
            # Runs in the next tick before the waiting reader: it finds the
            # socket readable, then empty.
            loop.call_soon(lambda: drained.append(a.recv(100)))
            await asyncio.sleep(0.02)
            assert not fut.done()
        b.send(b"second")
        assert await asyncio.wait_for(fut, 5) == b"second"

    run(main())
    assert drained == [b"first", b"again"]
    assert loop.remove_reader(a) is False


@pytest.mark.parametrize(
    ("n", "exc_type"), [(2**62, MemoryError), (2**63, OverflowError), (-1, ValueError)]
)
def test_sock_recv_impossible_size(loop, run, pair, n, exc_type):
    # socket.recv(n)'s errors, ready data or not: a size Python cannot
    # allocate is MemoryError, one past ssize_t OverflowError (ferroloop's
    # native recv once aborted the process on the first: a Rust allocation).
    a, b = pair
    with pytest.raises(exc_type):
        run(loop.sock_recv(a, n))
    b.send(b"x")
    with pytest.raises(exc_type):
        run(loop.sock_recv(a, n))
    assert run(loop.sock_recv(a, 2**20)) == b"x"  # a large, possible size


def test_getaddrinfo_literal_checks_like_the_executor_path(loop, run, new_loop):
    # An address literal is answered without the executor on ferroloop, but
    # still refused where the executor path would refuse it.
    run(loop.shutdown_default_executor())
    with pytest.raises(RuntimeError, match="Executor shutdown has been called"):
        run(loop.getaddrinfo("127.0.0.1", 80))
    closed = new_loop()
    closed.close()
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        run(closed.getaddrinfo("127.0.0.1", 80))


def test_sock_recv_zero_bytes_does_not_wait(loop, run, pair):
    # socket.recv(0) is b"" at once, data or not.
    a, _ = pair
    assert run(asyncio.wait_for(loop.sock_recv(a, 0), 5)) == b""
