"""Stream transports and servers (TCP and Unix), on both loops.

create_connection / create_server / create_unix_* / connect_accepted_socket,
the transport API (write, writelines, write_eof, flow control, pause/resume
reading, close, abort, extra info), Protocol and BufferedProtocol, half-close,
errors reaching the exception handler, and no fd leaks.
"""

import asyncio
import gc
import os
import socket
import sys

import pytest
from conftest import open_fd_count, since

HAS_IPV6 = socket.has_ipv6
try:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as _s:
        _s.bind(("::1", 0))
except OSError:
    HAS_IPV6 = False


class Recorder(asyncio.Protocol):
    """Records every callback; `done` resolves at connection_lost."""

    def __init__(self, *, keep_open_on_eof=False, echo=False):
        self.events = []
        self.data = bytearray()
        self.transport = None
        self.keep_open_on_eof = keep_open_on_eof
        self.echo = echo
        self.done = asyncio.get_running_loop().create_future()
        self.made = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")
        self.made.set_result(None)

    def data_received(self, data):
        assert isinstance(data, bytes)
        self.data += data
        if self.echo:
            self.transport.write(data)

    def eof_received(self):
        self.events.append("eof")
        return self.keep_open_on_eof

    def pause_writing(self):
        self.events.append("pause")

    def resume_writing(self):
        self.events.append("resume")

    def connection_lost(self, exc):
        self.events.append(("lost", type(exc).__name__ if exc else None))
        if not self.done.done():
            self.done.set_result(exc)


async def tcp_pair(loop, server_proto=None, client_proto=None, **server_kwargs):
    """(server, server protocol, client transport, client protocol)."""
    accepted = loop.create_future()

    def factory():
        p = server_proto() if server_proto else Recorder()
        if not accepted.done():
            accepted.set_result(p)
        return p

    server = await loop.create_server(factory, "127.0.0.1", 0, **server_kwargs)
    port = server.sockets[0].getsockname()[1]
    tr, cp = await loop.create_connection(client_proto or Recorder, "127.0.0.1", port)
    sp = await accepted
    await sp.made
    return server, sp, tr, cp


async def close_all(server, *transports):
    for t in transports:
        t.close()
    server.close()
    await server.wait_closed()
    await asyncio.sleep(0)


def test_echo_roundtrip_and_types(loop, run):
    async def main():
        server, sp, tr, cp = await tcp_pair(loop, server_proto=lambda: Recorder(echo=True))
        assert isinstance(server, asyncio.AbstractServer)
        assert isinstance(tr, asyncio.Transport)
        assert isinstance(sp.transport, asyncio.Transport)
        assert server.get_loop() is loop
        assert server.is_serving()
        tr.write(b"hello ")
        tr.writelines([b"wor", bytearray(b"l"), memoryview(b"d")])
        while len(cp.data) < 11:
            await asyncio.sleep(0.001)
        assert bytes(cp.data) == b"hello world"
        await close_all(server, tr)
        await cp.done
        await sp.done
        assert cp.events == ["made", ("lost", None)]
        assert sp.events == ["made", "eof", ("lost", None)]

    run(main())


def test_extra_info_and_nodelay(loop, run):
    async def main():
        server, sp, tr, _cp = await tcp_pair(loop)
        sock = tr.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert tr.get_extra_info("sockname") == sock.getsockname()
        assert tr.get_extra_info("peername") == sp.transport.get_extra_info("sockname")
        assert tr.get_extra_info("nonexistent", "dflt") == "dflt"
        assert sock.fileno() >= 0
        sock.shutdown(socket.SHUT_WR)  # allowed on asyncio's TransportSocket
        await asyncio.sleep(0.01)
        assert "eof" in sp.events
        await close_all(server, tr, sp.transport)

    run(main())


def test_write_buffer_limits_defaults_and_validation(loop, run):
    async def main():
        server, _sp, tr, _cp = await tcp_pair(loop)
        assert tr.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
        tr.set_write_buffer_limits(high=1000)
        assert tr.get_write_buffer_limits() == (250, 1000)
        tr.set_write_buffer_limits(low=100)
        assert tr.get_write_buffer_limits() == (100, 400)
        with pytest.raises(ValueError):
            tr.set_write_buffer_limits(high=1, low=2)
        with pytest.raises(ValueError):
            tr.set_write_buffer_limits(high=-1)
        assert tr.get_write_buffer_size() == 0
        await close_all(server, tr)

    run(main())


def test_flow_control_peer_not_reading(loop, run):
    # The peer pauses reading: our writes fill the socket buffers, then the
    # transport buffer; pause_writing fires past the high-water mark, the
    # buffer stays bounded (the producer stops), and resume_writing fires
    # once the peer reads again.
    async def main():
        server, sp, tr, cp = await tcp_pair(loop)
        sp.transport.pause_reading()
        assert not sp.transport.is_reading()
        chunk = b"x" * 65536
        sent = 0
        while "pause" not in cp.events:
            tr.write(chunk)
            sent += len(chunk)
            assert sent < 64 * 1024 * 1024, "pause_writing never came"
            await asyncio.sleep(0)
        assert tr.get_write_buffer_size() > 64 * 1024
        bounded = tr.get_write_buffer_size()
        assert bounded < 64 * 1024 + len(chunk) + 1
        sp.transport.resume_reading()
        while "resume" not in cp.events:
            await asyncio.sleep(0.001)
        assert tr.get_write_buffer_size() <= 16 * 1024
        while len(sp.data) < sent:
            await asyncio.sleep(0.001)
        assert len(sp.data) == sent
        await close_all(server, tr)

    run(main())


def test_pause_resume_reading(loop, run):
    async def main():
        server, sp, tr, _cp = await tcp_pair(loop)
        assert sp.transport.is_reading()
        sp.transport.pause_reading()
        sp.transport.pause_reading()  # idempotent
        tr.write(b"held")
        await asyncio.sleep(0.02)
        assert sp.data == b""
        sp.transport.resume_reading()
        sp.transport.resume_reading()
        while not sp.data:
            await asyncio.sleep(0.001)
        assert sp.data == b"held"
        await close_all(server, tr)

    run(main())


def test_half_close_keeps_connection_when_eof_received_true(loop, run):
    async def main():
        server, sp, tr, cp = await tcp_pair(
            loop, server_proto=lambda: Recorder(keep_open_on_eof=True)
        )
        assert tr.can_write_eof()
        tr.write(b"request")
        tr.write_eof()
        tr.write_eof()  # idempotent
        with pytest.raises(RuntimeError, match="write_eof"):
            tr.write(b"more")
        while "eof" not in sp.events:
            await asyncio.sleep(0.001)
        # The server keeps its side open and answers after the EOF.
        sp.transport.write(b"response")
        sp.transport.close()
        await cp.done
        assert bytes(cp.data) == b"response"
        assert bytes(sp.data) == b"request"
        assert cp.events == ["made", "eof", ("lost", None)]
        await close_all(server)

    run(main())


def test_close_flushes_buffer_then_connection_lost(loop, run):
    async def main():
        server, sp, tr, cp = await tcp_pair(loop)
        sp.transport.pause_reading()
        payload = os.urandom(4 * 1024 * 1024)
        tr.write(payload)
        assert tr.get_write_buffer_size() > 0
        tr.close()
        assert tr.is_closing()
        tr.close()  # idempotent
        # asyncio still queues data written while the buffer drains.
        tr.write(b"|tail")
        sp.transport.resume_reading()
        await cp.done
        await sp.done
        assert bytes(sp.data) == payload + b"|tail"
        assert cp.events.count(("lost", None)) == 1
        await close_all(server)

    run(main())


def test_abort_drops_buffer(loop, run):
    async def main():
        server, sp, tr, cp = await tcp_pair(loop)
        sp.transport.pause_reading()
        tr.write(b"y" * (4 * 1024 * 1024))
        tr.abort()
        assert tr.is_closing()
        assert await cp.done is None
        sp.transport.resume_reading()
        await sp.done
        assert len(sp.data) < 4 * 1024 * 1024
        assert cp.events.count(("lost", None)) == 1
        await close_all(server)

    run(main())


def test_write_type_errors(loop, run):
    async def main():
        server, _sp, tr, _cp = await tcp_pair(loop)
        for bad in ("text", 1, None, [b"x"]):
            with pytest.raises(TypeError):
                tr.write(bad)
        tr.write(b"")  # nothing
        await close_all(server, tr)

    run(main())


def test_writes_after_connection_lost_are_dropped(loop, run, caplog):
    async def main():
        server, _sp, tr, cp = await tcp_pair(loop)
        tr.abort()
        await cp.done
        for _ in range(7):
            tr.write(b"lost")
        await close_all(server)

    run(main())
    assert "socket.send() raised exception." in caplog.text


def test_data_received_error_goes_to_handler(loop, run, exc_handler):
    class Boom(Recorder):
        def data_received(self, data):
            raise ZeroDivisionError("in protocol")

    async def main():
        server, sp, tr, cp = await tcp_pair(loop, server_proto=Boom)
        tr.write(b"trigger")
        exc = await sp.done
        assert isinstance(exc, ZeroDivisionError)
        await cp.done
        await close_all(server, tr)

    run(main())
    [ctx] = exc_handler.take()
    assert ctx["message"] == "Fatal error: protocol.data_received() call failed."
    assert isinstance(ctx["exception"], ZeroDivisionError)
    assert isinstance(ctx["transport"], asyncio.Transport)
    assert isinstance(ctx["protocol"], asyncio.Protocol)


def test_peer_reset(loop, run):
    async def main():
        server, sp, tr, cp = await tcp_pair(loop)
        sock = sp.transport.get_extra_info("socket")
        # SO_LINGER 0: closing sends RST instead of FIN.
        import struct

        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sp.transport.abort()
        exc = await cp.done
        # A reset shows up on read as ConnectionResetError (or, racing with
        # the FIN path, as a clean EOF); either way exactly one
        # connection_lost and no exception-handler call (OSErrors are not
        # reported, as asyncio does).
        assert exc is None or isinstance(exc, ConnectionResetError)
        assert len([e for e in cp.events if e[0] == "lost"]) == 1
        await close_all(server, tr)

    run(main())


def test_buffered_protocol(loop, run):
    class Buffered(asyncio.BufferedProtocol):
        def __init__(self):
            self.buf = bytearray(1000)
            self.got = bytearray()
            self.done = asyncio.get_running_loop().create_future()
            self.made = asyncio.get_running_loop().create_future()
            self.sizes = []

        def connection_made(self, transport):
            self.transport = transport
            self.made.set_result(None)

        def get_buffer(self, sizehint):
            self.sizes.append(sizehint)
            return memoryview(self.buf)[:100]

        def buffer_updated(self, nbytes):
            self.got += self.buf[:nbytes]

        def eof_received(self):
            return False

        def connection_lost(self, exc):
            self.done.set_result(exc)

    async def main():
        server, sp, tr, _cp = await tcp_pair(loop, server_proto=Buffered)
        payload = os.urandom(5000)
        tr.write(payload)
        tr.write_eof()
        await sp.done
        assert bytes(sp.got) == payload
        assert set(sp.sizes) == {-1}
        await close_all(server, tr)

    run(main())


def test_set_protocol_switches_between_kinds(loop, run):
    async def main():
        server, sp, tr, _cp = await tcp_pair(loop)
        other = Recorder()
        sp.transport.set_protocol(other)
        assert sp.transport.get_protocol() is other
        tr.write(b"to other")
        while not other.data:
            await asyncio.sleep(0.001)
        assert other.data == b"to other" and sp.data == b""
        await close_all(server, tr)

    run(main())


def test_server_lifecycle(loop, run):
    async def main():
        server = await loop.create_server(Recorder, "127.0.0.1", 0, start_serving=False)
        assert not server.is_serving()
        port = server.sockets[0].getsockname()[1]
        await server.start_serving()
        assert server.is_serving()
        tr, cp = await loop.create_connection(Recorder, "127.0.0.1", port)
        tr.close()
        await cp.done
        async with server:
            assert server.is_serving()
        assert not server.is_serving()
        await server.wait_closed()
        with pytest.raises(OSError):
            await loop.create_connection(Recorder, "127.0.0.1", port)

    run(main())


def test_serve_forever_cancel(loop, run):
    async def main():
        server = await loop.create_server(Recorder, "127.0.0.1", 0)
        task = loop.create_task(server.serve_forever())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not server.is_serving()
        await server.wait_closed()

    run(main())


def test_create_server_multiple_hosts_and_reuse(loop, run):
    async def main():
        server = await loop.create_server(
            Recorder, ["127.0.0.1", "localhost"], 0, reuse_address=True, backlog=10
        )
        assert len(server.sockets) >= 1
        server.close()
        await server.wait_closed()
        if hasattr(socket, "SO_REUSEPORT"):
            s1 = await loop.create_server(Recorder, "127.0.0.1", 0, reuse_port=True)
            port = s1.sockets[0].getsockname()[1]
            s2 = await loop.create_server(Recorder, "127.0.0.1", port, reuse_port=True)
            for s in (s1, s2):
                s.close()
                await s.wait_closed()

    run(main())


def test_create_server_sock_and_connect_sock(loop, run):
    async def main():
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        server = await loop.create_server(Recorder, sock=lsock)
        csock = socket.socket()
        csock.setblocking(False)
        await loop.sock_connect(csock, lsock.getsockname())
        tr, cp = await loop.create_connection(Recorder, sock=csock)
        assert tr.get_extra_info("socket").fileno() == csock.fileno()
        await close_all(server, tr)
        await cp.done

    run(main())


def test_create_connection_errors(loop, run):
    async def main():
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        with pytest.raises(ConnectionRefusedError):
            await loop.create_connection(Recorder, "127.0.0.1", port)
        with pytest.raises(ValueError):
            await loop.create_connection(Recorder, "127.0.0.1", port, server_hostname="x")
        with pytest.raises(ValueError):
            await loop.create_connection(Recorder)
        with pytest.raises(ValueError):
            await loop.create_connection(Recorder, "127.0.0.1", port, ssl_handshake_timeout=1)
        with pytest.raises(OSError):
            await loop.create_connection(Recorder, "name.invalid", 80)

    run(main())


def test_create_connection_local_addr_and_happy_eyeballs(loop, run):
    async def main():
        server = await loop.create_server(Recorder, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        tr, cp = await loop.create_connection(
            Recorder,
            "localhost",
            port,
            local_addr=("127.0.0.1", 0),
            happy_eyeballs_delay=0.05,
            interleave=1,
            family=socket.AF_INET,
        )
        assert tr.get_extra_info("sockname")[0] == "127.0.0.1"
        await close_all(server, tr)
        await cp.done

    run(main())


@pytest.mark.skipif(not HAS_IPV6, reason="no IPv6 loopback on this machine")
def test_ipv6(loop, run):
    async def main():
        server = await loop.create_server(lambda: Recorder(echo=True), "::1", 0)
        port = server.sockets[0].getsockname()[1]
        tr, cp = await loop.create_connection(Recorder, "::1", port)
        assert tr.get_extra_info("socket").family == socket.AF_INET6
        tr.write(b"v6")
        while not cp.data:
            await asyncio.sleep(0.001)
        assert cp.data == b"v6"
        await close_all(server, tr)

    run(main())


def test_connect_accepted_socket(loop, run):
    async def main():
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen()
        lsock.setblocking(False)
        client = socket.socket()
        client.setblocking(False)
        connect = loop.create_task(loop.sock_connect(client, lsock.getsockname()))
        conn, _ = await loop.sock_accept(lsock)
        await connect
        tr, proto = await loop.connect_accepted_socket(lambda: Recorder(echo=True), conn)
        await loop.sock_sendall(client, b"accepted")
        assert await loop.sock_recv(client, 100) == b"accepted"
        tr.close()
        await proto.done
        client.close()
        lsock.close()

    run(main())


def test_unix_server_and_connection(loop, run, tmp_path):
    path = str(tmp_path / "srv.sock")

    async def main():
        server = await loop.create_unix_server(lambda: Recorder(echo=True), path)
        assert server.sockets[0].family == socket.AF_UNIX
        tr, cp = await loop.create_unix_connection(Recorder, path)
        assert isinstance(tr, asyncio.Transport)
        tr.write(b"over unix")
        while len(cp.data) < 9:
            await asyncio.sleep(0.001)
        assert cp.data == b"over unix"
        await close_all(server, tr)
        await cp.done

    run(main())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract namespace is Linux-only")
def test_unix_abstract_namespace(loop, run):
    name = f"\0ferroloop-test-{os.getpid()}-{id(loop)}"

    async def main():
        server = await loop.create_unix_server(lambda: Recorder(echo=True), name)
        tr, cp = await loop.create_unix_connection(Recorder, name)
        tr.write(b"abstract")
        while len(cp.data) < 8:
            await asyncio.sleep(0.001)
        await close_all(server, tr)
        await cp.done

    run(main())


def test_streams_tcp_and_unix(loop, run, tmp_path):
    async def handle(reader, writer):
        line = await reader.readline()
        writer.write(line.upper())
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"tcp line\n")
        assert await r.readline() == b"TCP LINE\n"
        assert await r.read() == b""
        w.close()
        await w.wait_closed()
        server.close()
        await server.wait_closed()

        path = str(tmp_path / "streams.sock")
        userver = await asyncio.start_unix_server(handle, path)
        r, w = await asyncio.open_unix_connection(path)
        w.write(b"unix line\n")
        assert await r.readline() == b"UNIX LINE\n"
        w.close()
        await w.wait_closed()
        userver.close()
        await userver.wait_closed()

    run(main())


def test_loop_sendfile_over_transport(loop, run, tmp_path):
    data = os.urandom(1_000_000)
    f = tmp_path / "payload"
    f.write_bytes(data)

    async def main():
        server, sp, tr, _cp = await tcp_pair(loop)
        with open(f, "rb") as fobj:  # noqa: ASYNC230 -- a local file, opened once
            sent = await loop.sendfile(tr, fobj)
            assert fobj.tell() == len(data)
        assert sent == len(data)
        tr.write(b"after")  # writable again after sendfile
        while len(sp.data) < len(data) + 5:
            await asyncio.sleep(0.001)
        assert bytes(sp.data) == data + b"after"
        await close_all(server, tr)

    run(main())


def test_thousand_concurrent_connections(loop, run):
    n = 1000
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2 * n + 100:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4 * n), hard))
        except (ValueError, OSError):
            pytest.skip(f"RLIMIT_NOFILE {soft} too low for {n} connections")

    async def main():
        server = await loop.create_server(lambda: Recorder(echo=True), "127.0.0.1", 0, backlog=n)
        port = server.sockets[0].getsockname()[1]

        async def one(i):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            msg = f"conn {i}\n".encode()
            w.write(msg)
            assert await r.readexactly(len(msg)) == msg
            return r, w

        pairs = await asyncio.gather(*(one(i) for i in range(n)))
        for _, w in pairs:
            w.close()
        await asyncio.gather(*(w.wait_closed() for _, w in pairs))
        server.close()
        await server.wait_closed()

    run(main(), timeout=60)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_no_fd_leak_over_many_connections(loop, run):
    cycles = 10_000

    async def main():
        server = await loop.create_server(Recorder, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        before = open_fd_count()
        for _ in range(cycles):
            tr, cp = await loop.create_connection(Recorder, "127.0.0.1", port)
            tr.close()
            await cp.done
        # The server sides see EOF and close a few ticks later; on a loaded
        # machine that can take longer than one short sleep. A leak never
        # comes back down, so waiting (up to 2 s) for the count still
        # catches one.
        for _ in range(100):
            await asyncio.sleep(0.02)
            gc.collect()
            after = open_fd_count()
            if after <= before:
                break
        server.close()
        await server.wait_closed()
        return before, after

    before, after = run(main(), timeout=120)
    assert after == before


# -- datagrams ------------------------------------------------------------------


class DgramRecorder(asyncio.DatagramProtocol):
    def __init__(self):
        self.got = []
        self.errors = []
        self.transport = None
        self.done = asyncio.get_running_loop().create_future()
        self.arrived = asyncio.Event()

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.got.append((data, addr))
        self.arrived.set()

    def error_received(self, exc):
        self.errors.append(exc)
        self.arrived.set()

    def connection_lost(self, exc):
        self.done.set_result(exc)


def test_udp_endpoints(loop_name, loop, run):
    async def main():
        srv_tr, srv = await loop.create_datagram_endpoint(
            DgramRecorder, local_addr=("127.0.0.1", 0)
        )
        addr = srv_tr.get_extra_info("sockname")
        cli_tr, cli = await loop.create_datagram_endpoint(DgramRecorder, remote_addr=addr)
        if loop_name == "ferroloop":
            # (asyncio 3.11's selector datagram transport is not one)
            assert isinstance(cli_tr, asyncio.DatagramTransport)
        cli_tr.sendto(b"one")
        await srv.arrived.wait()
        data, peer = srv.got[0]
        assert data == b"one"
        srv_tr.sendto(b"two", peer)
        await cli.arrived.wait()
        assert cli.got[0][0] == b"two"
        assert cli_tr.get_write_buffer_size() == 0
        with pytest.raises(ValueError):
            cli_tr.sendto(b"x", ("127.0.0.1", 1))  # connected: only its peer
        cli_tr.close()
        srv_tr.abort()
        assert await cli.done is None
        assert await srv.done is None

    run(main())


def test_udp_error_received_on_refused_port(loop, run):
    async def main():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()
        s.close()
        tr, proto = await loop.create_datagram_endpoint(DgramRecorder, remote_addr=dead)
        for _ in range(20):
            tr.sendto(b"anyone?")
            try:
                await asyncio.wait_for(proto.arrived.wait(), 0.05)
                break
            except asyncio.TimeoutError:
                pass
        assert proto.errors and isinstance(proto.errors[0], ConnectionRefusedError)
        tr.close()
        await proto.done

    run(main())


def test_unix_datagram(loop, run, tmp_path):
    path = str(tmp_path / "dgram.sock")

    async def main():
        srv_tr, srv = await loop.create_datagram_endpoint(
            DgramRecorder, local_addr=path, family=socket.AF_UNIX
        )
        cli_tr, cli = await loop.create_datagram_endpoint(
            DgramRecorder, remote_addr=path, family=socket.AF_UNIX
        )
        cli_tr.sendto(b"unix dgram")
        await srv.arrived.wait()
        assert srv.got[0][0] == b"unix dgram"
        cli_tr.close()
        srv_tr.close()
        await cli.done
        await srv.done

    run(main())


# -- TLS (asyncio's sslproto over the transport) ---------------------------------


def _tls_contexts():
    import ssl

    from test.test_asyncio import utils as test_utils

    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(test_utils.SIGNED_CERTFILE)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_verify_locations(test_utils.SIGNING_CA)
    return server_ctx, client_ctx


@since((3, 11), "StreamWriter.start_tls()")
def test_tls_echo_and_start_tls(loop, run):
    server_ctx, client_ctx = _tls_contexts()

    async def handle(reader, writer):
        while line := await reader.readline():
            writer.write(line.upper())
            await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost"
        )
        assert w.get_extra_info("sslcontext") is client_ctx
        assert w.get_extra_info("peercert")
        w.write(b"secret\n")
        assert await r.readline() == b"SECRET\n"
        w.close()
        await w.wait_closed()

        # start_tls on a plain connection
        plain_server = await asyncio.start_server(
            lambda r, w: _upgrade_and_echo(r, w, server_ctx), "127.0.0.1", 0
        )
        port = plain_server.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"STARTTLS\n")
        assert await r.readline() == b"OK\n"
        await w.start_tls(client_ctx, server_hostname="localhost")
        w.write(b"upgraded\n")
        assert await r.readline() == b"UPGRADED\n"
        w.close()
        await w.wait_closed()
        for s in (server, plain_server):
            s.close()
            await s.wait_closed()

    run(main())


async def _upgrade_and_echo(reader, writer, server_ctx):
    assert await reader.readline() == b"STARTTLS\n"
    writer.write(b"OK\n")
    await writer.drain()
    await writer.start_tls(server_ctx)
    line = await reader.readline()
    writer.write(line.upper())
    await writer.drain()
    writer.close()
    await writer.wait_closed()


def test_tls_bad_certificate_fails_handshake(loop, run, exc_handler):
    import ssl

    server_ctx, _ = _tls_contexts()
    strict = ssl.create_default_context()  # does not trust the test CA

    async def main():
        server = await loop.create_server(Recorder, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(ssl.SSLCertVerificationError):
            await loop.create_connection(
                Recorder, "127.0.0.1", port, ssl=strict, server_hostname="localhost"
            )
        # Let the server side see the client go away and end its handshake.
        for _ in range(100):
            if not [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]:
                break
            await asyncio.sleep(0.01)
        server.close()
        await server.wait_closed()

    run(main())
    # In debug mode asyncio reports the server side's failed handshake.
    for ctx in exc_handler.take():
        assert loop.get_debug()
        assert ctx["message"] == "Error on transport creation for incoming connection"
