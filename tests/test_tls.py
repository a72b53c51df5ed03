"""TLS (``ssl=`` / ``start_tls``) on both loops, with certificates made at
test time (trustme: a CA, server and client certificates, an expired one).

ferroloop runs asyncio's SSLProtocol with its WRAPPED-state data path in the
native core (``src/transports/tls.rs``); these tests hold that path to
asyncio's behaviour: every byte delivered in order (Protocol and
BufferedProtocol, large transfers, bursts of records), flow control, close
flushing before close_notify, what the user's SSLContext holds (ALPN, client
certificates, verification, session reuse, SNI callback, key log), TLS over
TLS and over Unix sockets, sendfile, the handshake timeout, many
connections. The edges of a connection's life are in test_tls_lifecycle.py.
"""

import asyncio
import gc
import hashlib
import os
import ssl
import sys

import pytest
from conftest import since
from tls_support import (
    MIB,
    BufferedSink,
    Sender,
    Sink,
    client_context,
    make_pki,
    pattern,
    serve,
    server_context,
)

pki = pytest.fixture(scope="module")(make_pki)


@pytest.mark.parametrize("receiver", ["protocol", "buffered"])
def test_large_transfer_byte_for_byte(loop, run, pki, receiver):
    """100 MiB server -> client, in 256 KiB writes with flow control: the
    client's digest matches, the server's buffer stayed bounded."""
    payload = pattern(100 * MIB)
    expected = hashlib.sha256(payload).hexdigest()

    async def main():
        senders = []

        def make_sender():
            senders.append(Sender(loop, payload))
            return senders[-1]

        server, port = await serve(loop, make_sender, server_context(pki))
        sink = Sink(loop) if receiver == "protocol" else BufferedSink(loop)
        await loop.create_connection(
            lambda: sink, "127.0.0.1", port, ssl=client_context(pki), server_hostname="localhost"
        )
        assert await asyncio.wait_for(sink.done, 60) is None
        assert sink.size == len(payload)
        assert sink.hash.hexdigest() == expected
        (sender,) = senders
        assert await sender.done is None
        assert sender.paused > 0
        # Flow control kept the pending output near the high-water mark.
        assert sender.max_buffer < 4 * MIB
        server.close()
        await server.wait_closed()

    run(main(), timeout=90)


def test_bursts_of_small_records_in_order(loop, run, pki):
    """Many small writes in one tick travel as many records in one read:
    every byte arrives, in order, in fewer data_received calls than writes."""
    pieces = [pattern(n, seed=n) for n in range(1, 2000)]
    blob = b"".join(pieces)

    async def main():
        async def handle(reader, writer):
            for p in pieces:
                writer.write(p)
            await writer.drain()
            writer.close()
            await writer.wait_closed()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_context(pki))
        port = server.sockets[0].getsockname()[1]
        sink = Sink(loop)
        await loop.create_connection(
            lambda: sink, "127.0.0.1", port, ssl=client_context(pki), server_hostname="localhost"
        )
        assert await asyncio.wait_for(sink.done, 30) is None
        assert sink.hash.hexdigest() == hashlib.sha256(blob).hexdigest()
        if sys.version_info >= (3, 11):
            # 3.10's older SSLProtocol ends with connection_lost alone and
            # hands over one record per data_received.
            assert sink.eof
            assert sink.calls < len(pieces)
        server.close()
        await server.wait_closed()

    run(main())


def test_close_flushes_before_close_notify(loop, run, pki):
    """write() then close() at once: the peer gets every byte, then EOF."""
    payload = pattern(3 * MIB, seed=3)

    async def main():
        got = loop.create_future()

        async def handle(reader, writer):
            data = await reader.read()  # until EOF (close_notify)
            got.set_result(data)
            writer.close()
            await writer.wait_closed()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_context(pki))
        port = server.sockets[0].getsockname()[1]
        _, w = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_context(pki), server_hostname="localhost"
        )
        w.write(payload)
        w.close()
        await w.wait_closed()
        assert await asyncio.wait_for(got, 30) == payload
        server.close()
        await server.wait_closed()

    run(main())


def test_peer_that_never_reads_pauses_the_writer(loop, run, pki):
    """A client that stops reading: the server application is paused and
    its TLS buffer stays bounded; resuming the reader lets it all through."""

    async def main():
        state = {}
        flowing = loop.create_future()

        class Writer(asyncio.Protocol):
            def connection_made(self, transport):
                state["t"] = transport
                self.loop_write()

            def loop_write(self):
                t = state["t"]
                while not state.get("paused"):
                    t.write(b"z" * 65536)
                    state["written"] = state.get("written", 0) + 65536
                    state["max"] = max(state.get("max", 0), t.get_write_buffer_size())

            def pause_writing(self):
                state["paused"] = True
                if not flowing.done():
                    flowing.set_result(None)

            def resume_writing(self):
                state["resumed"] = True

        server, port = await serve(loop, Writer, server_context(pki))
        sink = Sink(loop)
        transport, _ = await loop.create_connection(
            lambda: sink, "127.0.0.1", port, ssl=client_context(pki), server_hostname="localhost"
        )
        transport.pause_reading()
        await asyncio.wait_for(flowing, 10)
        await asyncio.sleep(0.2)
        # The writer was stopped near the high-water mark, not after
        # queueing without bound.
        assert state["max"] < 2 * MIB
        transport.resume_reading()
        while sink.size < state["written"]:
            await asyncio.sleep(0.01)
        assert state.get("resumed")
        transport.close()
        state["t"].close()
        await sink.done
        server.close()
        await server.wait_closed()

    run(main(), timeout=20)


def test_alpn_client_certificate_and_extra_info(loop, loop_name, run, pki):
    async def main():
        sctx = server_context(pki, client_auth=True)
        sctx.set_alpn_protocols(["h2", "http/1.1"])
        seen = {}

        async def handle(reader, writer):
            seen["peercert"] = writer.get_extra_info("peercert")
            seen["alpn"] = writer.get_extra_info("ssl_object").selected_alpn_protocol()
            writer.write(await reader.readline())
            await writer.drain()
            writer.close()
            await writer.wait_closed()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=sctx)
        port = server.sockets[0].getsockname()[1]
        cctx = client_context(pki, cert=True)
        cctx.set_alpn_protocols(["h2"])
        r, w = await asyncio.open_connection(
            "127.0.0.1", port, ssl=cctx, server_hostname="localhost"
        )
        sslobj = w.get_extra_info("ssl_object")
        assert isinstance(sslobj, ssl.SSLObject)
        if loop_name == "ferroloop" and sys.version_info >= (3, 11):
            # The native data path is the one under test.
            assert type(w.transport._ssl_protocol).__module__ == "ferroloop._tls"
        assert sslobj.selected_alpn_protocol() == "h2"
        assert w.get_extra_info("sslcontext") is cctx
        assert w.get_extra_info("cipher")[1].startswith("TLSv1.")
        assert w.get_extra_info("peercert")["subjectAltName"]
        assert w.get_extra_info("peername")[1] == port
        assert w.get_extra_info("sockname")[0] == "127.0.0.1"
        assert w.get_extra_info("socket") is not None
        w.write(b"ping\n")
        assert await r.readline() == b"ping\n"
        w.close()
        await w.wait_closed()
        assert seen["alpn"] == "h2"
        assert seen["peercert"]["subjectAltName"] == (("email", "client@example.test"),)
        server.close()
        await server.wait_closed()

    run(main())


def test_client_without_required_certificate_is_refused(loop, run, pki, exc_handler):
    async def main():
        server = await loop.create_server(
            asyncio.Protocol, "127.0.0.1", 0, ssl=server_context(pki, client_auth=True)
        )
        port = server.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_context(pki), server_hostname="localhost"
        )
        # TLS 1.3: the client learns of the refusal after its handshake,
        # from the server's alert: the connection ends without data.
        w.write(b"x")
        try:
            data = await asyncio.wait_for(r.read(), 10)
        except (ssl.SSLError, ConnectionError):
            data = b""
        assert data == b""
        w.close()
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.05)

    run(main())
    # The server side logs the failed handshake (both loops alike).
    for ctx in exc_handler.take():
        assert isinstance(ctx.get("exception"), (ssl.SSLError, ConnectionError)), ctx


@pytest.mark.parametrize("case", ["expired", "wrong_hostname", "untrusted"])
def test_verification_failures(loop, run, pki, exc_handler, case):
    expired = pki[3]

    async def main():
        sctx = server_context(pki, cert=expired if case == "expired" else None)
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, ssl=sctx)
        port = server.sockets[0].getsockname()[1]
        cctx = ssl.create_default_context() if case == "untrusted" else client_context(pki)
        name = "wrong.example" if case == "wrong_hostname" else "localhost"
        with pytest.raises(ssl.SSLCertVerificationError):
            await loop.create_connection(
                asyncio.Protocol, "127.0.0.1", port, ssl=cctx, server_hostname=name
            )
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.05)

    run(main())
    exc_handler.take()  # the server's failed handshake may be reported


def test_tls12_session_from_ssl_object(loop, run, pki):
    """TLS 1.2: each connection's session (what a client would pass on to
    resume) is there through get_extra_info('ssl_object'), with an id."""

    async def main():
        sctx = server_context(pki)
        sctx.maximum_version = ssl.TLSVersion.TLSv1_2

        async def handle(reader, writer):
            writer.write(await reader.readline())
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=sctx)
        port = server.sockets[0].getsockname()[1]
        cctx = client_context(pki)
        sessions = []
        for _ in range(2):
            r, w = await asyncio.open_connection(
                "127.0.0.1", port, ssl=cctx, server_hostname="localhost"
            )
            w.write(b"hi\n")
            assert await r.readline() == b"hi\n"
            sslobj = w.get_extra_info("ssl_object")
            sessions.append((sslobj.session, sslobj.session_reused))
            w.close()
            await w.wait_closed()
        for session, reused in sessions:
            assert isinstance(session, ssl.SSLSession)
            assert session.id
            assert reused is False  # asyncio passes no session to resume
        server.close()
        await server.wait_closed()

    run(main())


@since((3, 11), "StreamWriter.start_tls()")
def test_tls_over_tls(loop, run, pki):
    """start_tls over a TLS transport: the inner session rides the outer."""

    async def main():
        sctx = server_context(pki)
        cctx = client_context(pki)

        async def handle(reader, writer):
            assert await reader.readline() == b"UPGRADE\n"
            writer.write(b"OK\n")
            await writer.drain()
            await writer.start_tls(sctx)
            while line := await reader.readline():
                writer.write(line.upper())
                await writer.drain()
            writer.close()
            await writer.wait_closed()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=sctx)
        port = server.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection(
            "127.0.0.1", port, ssl=cctx, server_hostname="localhost"
        )
        w.write(b"UPGRADE\n")
        assert await r.readline() == b"OK\n"
        await w.start_tls(cctx, server_hostname="localhost")
        # 300 KB in lines under the StreamReader's 64 KiB limit.
        lines = [pattern(25_000, seed=i).hex().encode() + b"\n" for i in range(6)]
        w.write(b"inner\n" + b"".join(lines))
        assert await r.readline() == b"INNER\n"
        for line in lines:
            assert await r.readline() == line.upper()
        w.close()
        await w.wait_closed()
        server.close()
        await server.wait_closed()

    run(main(), timeout=20)


def test_start_tls_with_data_buffered_in_the_reader(loop, run, pki):
    """Data the client sends right after its ClientHello's answer arrives
    with the last handshake records; it reaches the upgraded protocol."""

    async def main():
        sctx = server_context(pki)
        cctx = client_context(pki)
        result = loop.create_future()

        class Upgrader(asyncio.Protocol):
            def connection_made(self, transport):
                self.transport = transport

            def data_received(self, data):
                assert data == b"STARTTLS\n"
                self.transport.write(b"GO\n")
                task = loop.create_task(self.upgrade())
                task.add_done_callback(lambda t: t.exception())

            async def upgrade(self):
                inner = Sink(loop)
                tls = await loop.start_tls(self.transport, inner, sctx, server_side=True)
                inner.connection_made(tls)
                await inner.done
                result.set_result(inner)

        server = await loop.create_server(Upgrader, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"STARTTLS\n")
        assert await r.readline() == b"GO\n"
        tr = w.transport
        proto = tr.get_protocol()
        tls = await loop.start_tls(tr, proto, cctx, server_hostname="localhost")
        payload = pattern(200_000, seed=9)
        tls.write(payload)
        tls.close()
        inner = await asyncio.wait_for(result, 10)
        assert inner.hash.hexdigest() == hashlib.sha256(payload).hexdigest()
        server.close()
        await server.wait_closed()

    run(main())


def test_many_concurrent_connections(loop, run, pki):
    """1,000 TLS connections open at once, each echoing once; none left."""
    n = 1000

    async def main():
        async def handle(reader, writer):
            writer.write(await reader.readexactly(32))
            await writer.drain()
            writer.close()
            await writer.wait_closed()

        server = await asyncio.start_server(
            handle, "127.0.0.1", 0, ssl=server_context(pki), backlog=n
        )
        port = server.sockets[0].getsockname()[1]
        cctx = client_context(pki)
        opened = []

        async def one(i):
            r, w = await asyncio.open_connection(
                "127.0.0.1", port, ssl=cctx, server_hostname="localhost"
            )
            opened.append(w)
            msg = i.to_bytes(32, "little")
            w.write(msg)
            assert await r.readexactly(32) == msg
            w.close()
            await w.wait_closed()

        sem = asyncio.Semaphore(250)

        async def limited(i):
            async with sem:
                await one(i)

        await asyncio.gather(*(limited(i) for i in range(n)))
        assert len(opened) == n
        server.close()
        await server.wait_closed()

    fds = len(os.listdir("/proc/self/fd"))
    run(main(), timeout=60)
    assert len(os.listdir("/proc/self/fd")) <= fds + 2


def test_sslobject_class_of_the_context_is_used(loop, run, pki):
    """An SSLContext whose sslobject_class overrides read/write/do_handshake
    gets its overrides called (ferroloop bypasses only the stdlib's own
    SSLObject)."""
    calls = {"read": 0, "write": 0, "do_handshake": 0}

    class Counting(ssl.SSLObject):
        def read(self, len=1024, buffer=None):
            calls["read"] += 1
            return super().read(len, buffer)

        def write(self, data):
            calls["write"] += 1
            return super().write(data)

        def do_handshake(self):
            calls["do_handshake"] += 1
            return super().do_handshake()

    async def main():
        sctx = server_context(pki)
        sctx.sslobject_class = Counting

        async def handle(reader, writer):
            writer.write(await reader.readline())
            await writer.drain()
            writer.close()
            await writer.wait_closed()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=sctx)
        port = server.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_context(pki), server_hostname="localhost"
        )
        w.write(b"counted\n")
        assert await r.readline() == b"counted\n"
        w.close()
        await w.wait_closed()
        server.close()
        await server.wait_closed()

    run(main())
    assert all(calls.values()), calls


def test_buffered_protocol_with_a_bytearray_buffer(loop, loop_name, run, pki):
    """A BufferedProtocol whose get_buffer() returns a bytearray receives
    every byte of multi-record bursts on ferroloop, which decrypts into the
    buffer itself."""
    if loop_name == "asyncio" or sys.version_info < (3, 11):
        pytest.skip(
            "asyncio's SSLProtocol reads the rest of a burst into buf[offset:], "
            "a copy for a bytearray, and loses those bytes (3.10's older "
            "SSLProtocol is ferroloop's there too)"
        )
    payload = pattern(8 * MIB, seed=5)

    class ByteArraySink(BufferedSink):
        def __init__(self, loop):
            super().__init__(loop)
            self.buf = bytearray(64 * 1024)

    async def main():
        server, port = await serve(loop, lambda: Sender(loop, payload), server_context(pki))
        sink = ByteArraySink(loop)
        await loop.create_connection(
            lambda: sink, "127.0.0.1", port, ssl=client_context(pki), server_hostname="localhost"
        )
        assert await asyncio.wait_for(sink.done, 30) is None
        assert sink.size == len(payload)
        assert sink.hash.hexdigest() == hashlib.sha256(payload).hexdigest()
        server.close()
        await server.wait_closed()

    run(main(), timeout=40)


def test_write_after_close_warns_and_does_not_hang(loop, run, pki, caplog):
    """Writes after close(): asyncio's 'SSL connection is closed' warning
    once past its threshold, no exception, and the connection still ends."""
    import logging

    async def main():
        server, port = await serve(loop, asyncio.Protocol, server_context(pki))
        sink = Sink(loop)
        transport, _ = await loop.create_connection(
            lambda: sink, "127.0.0.1", port, ssl=client_context(pki), server_hostname="localhost"
        )
        transport.close()
        with caplog.at_level(logging.WARNING, logger="asyncio"):
            for _ in range(8):
                transport.write(b"late")
        assert await asyncio.wait_for(sink.done, 10) is None
        server.close()
        await server.wait_closed()

    run(main())
    if sys.version_info >= (3, 11):  # 3.10's older SSLProtocol drops them silently
        assert any("SSL connection is closed" in r.getMessage() for r in caplog.records)


# 3.10's older SSLProtocol pauses the socket transport with the application
# and waits for the peer's close_notify without reading: close() never ends.
@since((3, 11), "shutting down a TLS connection whose reading is paused")
def test_close_while_reading_is_paused_still_shuts_down(loop, run, pki):
    async def main():
        eof = loop.create_future()

        class Peer(asyncio.Protocol):
            def connection_made(self, transport):
                transport.write(b"x" * 100_000)

            def eof_received(self):
                eof.set_result(True)

            def connection_lost(self, exc):
                if not eof.done():
                    eof.set_result(False)

        server, port = await serve(loop, Peer, server_context(pki))
        sink = Sink(loop)
        transport, _ = await loop.create_connection(
            lambda: sink, "127.0.0.1", port, ssl=client_context(pki), server_hostname="localhost"
        )
        transport.pause_reading()
        await asyncio.sleep(0.05)
        transport.close()
        # The client's close_notify reaches the server, and the client's
        # connection ends although its application never resumed reading.
        assert await asyncio.wait_for(eof, 10) is True
        await asyncio.wait_for(sink.done, 10)
        server.close()
        await server.wait_closed()

    run(main())


@pytest.mark.parametrize("how", ["fin", "reset"])
def test_peer_vanishing_mid_handshake(loop, run, pki, how, exc_handler):
    """A client that sends half a ClientHello and goes away: the server's
    connection ends quietly (no application callback, no fd left, nothing
    reaches the exception handler but, in debug mode, asyncio's report of
    the failed transport creation)."""
    import socket
    import struct

    async def main():
        made = []

        class App(asyncio.Protocol):
            def connection_made(self, transport):
                made.append(transport)

        server, port = await serve(loop, App, server_context(pki))
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(20):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
            if how == "reset":
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        for _ in range(200):
            await asyncio.sleep(0.01)
            if len(os.listdir("/proc/self/fd")) <= before:
                break
        assert len(os.listdir("/proc/self/fd")) <= before
        assert made == []
        server.close()
        await server.wait_closed()

    run(main())
    reports = exc_handler.take()
    if loop.get_debug():
        # asyncio's _accept_connection2 reports it in debug mode only.
        assert {r["message"] for r in reports} <= {
            "Error on transport creation for incoming connection"
        }, reports
        assert all(isinstance(r["exception"], ConnectionError) for r in reports), reports
    else:
        assert reports == []


@pytest.mark.soak
@pytest.mark.timeout(300, method="thread")
def test_connect_close_cycles_leave_nothing_behind(loop, run, pki):
    """10^4 TLS connect / echo / close cycles: no fd left, RSS flat (after a
    warm-up) within 5%. (A soak: scripts/test runs it once per CI.)"""

    def rss():
        # The current resident set (ru_maxrss would be the high-water mark).
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    async def main():
        async def handle(reader, writer):
            writer.write(await reader.readexactly(16))
            await writer.drain()
            writer.close()
            await writer.wait_closed()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_context(pki))
        port = server.sockets[0].getsockname()[1]
        cctx = client_context(pki)

        async def cycle(i):
            r, w = await asyncio.open_connection(
                "127.0.0.1", port, ssl=cctx, server_hostname="localhost"
            )
            msg = i.to_bytes(16, "little")
            w.write(msg)
            assert await r.readexactly(16) == msg
            w.close()
            await w.wait_closed()

        async def batch(start, n, width=20):
            for k in range(start, start + n, width):
                await asyncio.gather(*(cycle(i) for i in range(k, k + width)))

        await batch(0, 2_000)  # warm-up: caches, free lists, arenas
        gc.collect()
        fds, mem = len(os.listdir("/proc/self/fd")), rss()
        await batch(2_000, 8_000)
        gc.collect()
        assert len(os.listdir("/proc/self/fd")) <= fds
        assert rss() <= mem * 1.05, (mem, rss())
        server.close()
        await server.wait_closed()

    run(main(), timeout=180)


def test_sni_callback_and_keylog_file(loop, run, pki, tmp_path):
    """What the contexts hold is used: the server's sni_callback sees the
    client's server_hostname and can swap the context; the client's
    keylog_filename gets the session's secrets."""

    async def main():
        seen = []
        sctx = server_context(pki)
        other = server_context(pki)
        other.set_alpn_protocols(["swapped"])

        def sni(sslobj, name, ctx):
            seen.append(name)
            sslobj.context = other

        sctx.sni_callback = sni
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=sctx)
        port = server.sockets[0].getsockname()[1]
        cctx = client_context(pki)
        cctx.set_alpn_protocols(["swapped"])
        cctx.keylog_filename = str(tmp_path / "keys")
        r, w = await asyncio.open_connection(
            "127.0.0.1", port, ssl=cctx, server_hostname="localhost"
        )
        assert w.get_extra_info("ssl_object").selected_alpn_protocol() == "swapped"
        assert await r.read() == b""
        w.close()
        await w.wait_closed()
        assert seen == ["localhost"]
        keys = (tmp_path / "keys").read_text()
        assert "CLIENT_HANDSHAKE_TRAFFIC_SECRET" in keys or "CLIENT_RANDOM" in keys
        server.close()
        await server.wait_closed()

    run(main())


def test_unix_socket_tls_and_sendfile(loop, run, pki, tmp_path):
    """TLS over a Unix socket (create_unix_server / open_unix_connection),
    with loop.sendfile() on the TLS transport (asyncio's read-and-write
    fallback): every byte of the file arrives."""
    data = pattern(3 * MIB + 17, seed=5)
    (tmp_path / "file").write_bytes(data)
    path = str(tmp_path / "sock")

    async def main():
        sent = loop.create_future()

        class Server(asyncio.Protocol):
            def connection_made(self, transport):
                task = loop.create_task(self.send(transport))
                task.add_done_callback(lambda t: sent.set_result(t.result()))

            async def send(self, transport):
                n = await loop.sendfile(transport, f)
                transport.close()
                return n

        server = await loop.create_unix_server(Server, path, ssl=server_context(pki))
        r, w = await asyncio.open_unix_connection(
            path, ssl=client_context(pki), server_hostname="localhost"
        )
        got = await asyncio.wait_for(r.read(), 20)
        assert await sent == len(data)
        assert got == data
        w.close()
        await w.wait_closed()
        server.close()
        await server.wait_closed()

    with open(tmp_path / "file", "rb") as f:
        run(main(), timeout=30)


def test_handshake_timeout(loop, run, pki):
    """A server that accepts but never answers the ClientHello: the client's
    ssl_handshake_timeout aborts with ConnectionAbortedError, no fd left."""
    import socket

    async def main():
        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        before = len(os.listdir("/proc/self/fd"))
        start = loop.time()
        with pytest.raises(ConnectionAbortedError, match="SSL handshake is taking longer"):
            await loop.create_connection(
                asyncio.Protocol,
                "127.0.0.1",
                port,
                ssl=client_context(pki),
                server_hostname="localhost",
                ssl_handshake_timeout=0.3,
            )
        assert 0.25 <= loop.time() - start < 5
        await asyncio.sleep(0.05)
        assert len(os.listdir("/proc/self/fd")) <= before
        listener.close()

    run(main())
