"""The edges of a TLS connection's life, on both loops: what arrives with
the last handshake record, renegotiation, the shutdown timeout (only while
shutting down, cancelled afterwards, firing on a silent peer), records after
our close_notify, and failed handshakes that must leave nothing alive.

Peers that asyncio cannot play (a TLS 1.2 server putting application data
in the segment of its Finished, a server asking to renegotiate) are blocking
sockets in a thread (``ThreadPeer``).
"""

import asyncio
import gc
import socket
import ssl
import struct
import sys
import time
import weakref
from asyncio import sslproto

import pytest
from conftest import since
from tls_support import (
    Sink,
    ThreadPeer,
    client_context,
    make_pki,
    serve,
    server_context,
)

pki = pytest.fixture(scope="module")(make_pki)


async def echo_lines(reader, writer):
    while line := await reader.readline():
        writer.write(line)
        await writer.drain()
    writer.close()


def bio_handshake(conn, sctx):
    """The server side of a handshake over MemoryBIOs on a blocking socket
    (which stays a plain socket): the SSLObject and its BIOs."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = sctx.wrap_bio(incoming, outgoing, server_side=True)
    while True:
        try:
            obj.do_handshake()
            return obj, incoming, outgoing
        except ssl.SSLWantReadError:
            if outgoing.pending:
                conn.sendall(outgoing.read())
            chunk = conn.recv(65536)
            if not chunk:
                raise ConnectionError("client went away during the handshake") from None
            incoming.write(chunk)


def drain_until_closed(conn):
    """Reads (and ignores) until the client closes the socket."""
    try:
        while conn.recv(65536):
            pass
    except ConnectionError:
        pass


def tls12_handshake_then_send(conn, sctx, data):
    """TLS 1.2 server: `data` encrypted into the segment of its Finished,
    then reads until the client's close_notify and answers it."""
    obj, incoming, outgoing = bio_handshake(conn, sctx)
    obj.write(data)
    conn.sendall(outgoing.read())
    while chunk := conn.recv(65536):
        incoming.write(chunk)
        try:
            while obj.read(65536):
                pass
        except ssl.SSLWantReadError:
            continue
        # read() answers b'' at close_notify.
        obj.unwrap()
        conn.sendall(outgoing.read())
        return


@pytest.mark.parametrize("api", ["protocol", "streams"])
def test_data_with_the_last_handshake_record(loop, run, pki, api):
    """start_tls where the server's first data rides in the segment of its
    Finished: it reaches the application once and whole, and the returned
    transport has the handshake's results (ALPN). As in asyncio, that data
    reaches data_received before the start_tls() caller resumes."""
    if api == "streams" and not hasattr(asyncio.StreamWriter, "start_tls"):
        pytest.skip("StreamWriter.start_tls() is new in Python 3.11")
    sctx = server_context(pki)
    sctx.maximum_version = ssl.TLSVersion.TLSv1_2
    sctx.set_alpn_protocols(["h2"])
    early = b"early data\n"
    peer = ThreadPeer(lambda conn: tls12_handshake_then_send(conn, sctx, early))

    async def main():
        cctx = client_context(pki)
        cctx.set_alpn_protocols(["h2", "http/1.1"])
        if api == "streams":
            r, w = await asyncio.open_connection("127.0.0.1", peer.port)
            await w.start_tls(cctx, server_hostname="localhost")
            assert w.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
            assert await asyncio.wait_for(r.readline(), 10) == early
            w.close()
            await asyncio.wait_for(w.wait_closed(), 10)
            return

        got = []
        lost = loop.create_future()

        class App(asyncio.Protocol):
            # start_tls() calls no connection_made: the caller has the
            # transport when start_tls() returns.
            def data_received(self, data):
                got.append(data)

            def connection_lost(self, exc):
                lost.set_result(exc)

        transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", peer.port)
        tls = await loop.start_tls(transport, App(), cctx, server_hostname="localhost")
        assert tls.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
        while not got:
            await asyncio.sleep(0.01)
        assert got == [early]
        tls.close()
        assert await asyncio.wait_for(lost, 10) is None

    run(main())
    peer.join()


def renegotiating_server(pki):
    """A pyOpenSSL TLS 1.2 server that reads a line, sends a HelloRequest
    and the line back, then echoes lines until the client's close_notify.
    Returns the first line and (line, renegotiation still pending) for
    the others, or the error that ended the connection."""
    from OpenSSL import SSL

    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
    pki[1].configure_cert(ctx)

    def body(conn):
        # OpenSSL does its own I/O: a blocking socket, with a kernel
        # receive timeout instead of Python's (which makes it non-blocking).
        conn.setblocking(True)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 20, 0))
        tls = SSL.Connection(ctx, conn)
        tls.set_accept_state()
        tls.do_handshake()
        lines = [tls.recv(100)]
        assert tls.renegotiate()
        tls.do_handshake()  # HelloRequest, ahead of the echo
        tls.sendall(lines[0])
        try:
            # The second handshake runs inside these reads.
            while line := tls.recv(100):
                lines.append((line, tls.renegotiate_pending()))
                tls.sendall(line)
        except SSL.ZeroReturnError:
            tls.shutdown()
        except SSL.Error as exc:
            return exc
        return lines

    return body


@pytest.mark.parametrize("refuse", [False, True], ids=["accepted", "refused"])
def test_renegotiation_requested_by_the_server(loop, run, pki, refuse):
    """A TLS 1.2 server's HelloRequest mid-stream. OpenSSL's default client
    renegotiates: the ClientHello it writes while reading goes out without
    a write by the application, and the data flows on, the second handshake
    complete. A client with OP_NO_RENEGOTIATION declines; this server takes
    that as fatal, and the client's read ends in the server's alert."""
    pytest.importorskip("OpenSSL", reason="tests/requirements.txt installs pyOpenSSL")
    from OpenSSL import SSL

    if not refuse and sys.version_info < (3, 11):
        pytest.skip(
            "3.10's older SSLProtocol stalls in a renegotiation on both loops "
            "(the client's write during the second handshake is never retried)"
        )

    peer = ThreadPeer(renegotiating_server(pki))

    async def main():
        cctx = client_context(pki)
        if refuse:
            cctx.options |= ssl.OP_NO_RENEGOTIATION
        r, w = await asyncio.open_connection(
            "127.0.0.1", peer.port, ssl=cctx, server_hostname="localhost"
        )
        w.write(b"one\n")
        if refuse:
            # The server answers the refusal with a fatal alert, which may
            # come in the read that brings b"one\n" back (SSLProtocol then
            # drops what it decrypted before the error, on both loops).
            with pytest.raises(ssl.SSLError, match="HANDSHAKE_FAILURE"):
                while await asyncio.wait_for(r.readline(), 10):
                    pass
            w.close()
            with pytest.raises(ssl.SSLError, match="HANDSHAKE_FAILURE"):
                await w.wait_closed()
            return
        assert await asyncio.wait_for(r.readline(), 10) == b"one\n"
        w.write(b"two\n")
        assert await asyncio.wait_for(r.readline(), 10) == b"two\n"
        w.close()
        await w.wait_closed()

    run(main())
    result = peer.join()
    if refuse:
        assert isinstance(result, SSL.Error)
        assert "no renegotiation" in str(result)
    else:
        assert result == [b"one\n", (b"two\n", False)]


@since((3, 11), "ssl_shutdown_timeout")
def test_shutdown_timeout_applies_only_while_shutting_down(loop, run, pki):
    """A connection that lives longer than its ssl_shutdown_timeout is not
    touched by it; close() arms the timer and a completed shutdown cancels
    it (no timer left behind to fire on a dead connection)."""

    async def main():
        server = await asyncio.start_server(echo_lines, "127.0.0.1", 0, ssl=server_context(pki))
        port = server.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection(
            "127.0.0.1",
            port,
            ssl=client_context(pki),
            server_hostname="localhost",
            ssl_shutdown_timeout=0.2,
        )
        for _ in range(4):
            await asyncio.sleep(0.1)
            w.write(b"x\n")
            assert await r.readline() == b"x\n"
        proto = w.transport._ssl_protocol
        assert proto._shutdown_timeout_handle is None
        w.close()
        timer = proto._shutdown_timeout_handle
        assert timer is not None
        await asyncio.wait_for(w.wait_closed(), 10)
        assert timer.cancelled()
        assert proto._shutdown_timeout_handle is None
        server.close()
        await server.wait_closed()

    run(main())


@since((3, 11), "ssl_shutdown_timeout")
def test_shutdown_timeout_with_a_silent_peer(loop, run, pki):
    """A peer that never answers our close_notify: the connection is
    aborted after ssl_shutdown_timeout, connection_lost gets TimeoutError."""
    sctx = server_context(pki)

    def body(conn):
        bio_handshake(conn, sctx)
        # The client's close_notify arrives, and is never answered.
        drain_until_closed(conn)

    peer = ThreadPeer(body)

    async def main():
        sink = Sink(loop)
        transport, _ = await loop.create_connection(
            lambda: sink,
            "127.0.0.1",
            peer.port,
            ssl=client_context(pki),
            server_hostname="localhost",
            ssl_shutdown_timeout=0.3,
        )
        start = time.monotonic()
        transport.close()
        exc = await asyncio.wait_for(sink.done, 10)
        elapsed = time.monotonic() - start
        assert isinstance(exc, TimeoutError), exc
        assert 0.25 <= elapsed < 5, elapsed

    run(main())
    peer.join()


def test_application_data_after_our_close_notify(loop, run, pki):
    """We close while the peer still sends: its records after our
    close_notify (OpenSSL's APPLICATION_DATA_AFTER_CLOSE_NOTIFY) end the
    connection in connection_lost; nothing escapes to the loop."""

    async def main():
        class Flood(asyncio.Protocol):
            def connection_made(self, transport):
                self.transport = transport
                self.more()

            def more(self):
                if not self.transport.is_closing():
                    self.transport.write(b"f" * 4096)
                    loop.call_soon(self.more)

        server, port = await serve(loop, Flood, server_context(pki))
        sink = Sink(loop)
        transport, _ = await loop.create_connection(
            lambda: sink, "127.0.0.1", port, ssl=client_context(pki), server_hostname="localhost"
        )
        while sink.size < 256 * 1024:
            await asyncio.sleep(0.001)
        transport.close()
        exc = await asyncio.wait_for(sink.done, 10)
        if exc is not None:
            assert isinstance(exc, ssl.SSLError), exc
            assert exc.reason == "APPLICATION_DATA_AFTER_CLOSE_NOTIFY", exc
        server.close()
        await server.wait_closed()

    run(main())


def test_failed_handshake_keeps_nothing_alive(loop, run, pki, exc_handler):
    """Client handshakes that fail verification: once the errors are
    handled, the client's SSLContext and every SSLProtocol are freed.

    NOTE: freed by the garbage collector, as CPython's own
    test_create_connection_memory_leak checks: asyncio's create_connection
    keeps the failed waiter in a frame of the exception's traceback (a
    cycle of asyncio's code on every version, whatever the loop). What this
    proves is that nothing else (the loop, a transport registry, the native
    TLS core) keeps a failed connection."""

    async def main():
        server, port = await serve(loop, asyncio.Protocol, server_context(pki))
        cctx = client_context(pki)
        ref = weakref.ref(cctx)
        for _ in range(20):
            with pytest.raises(ssl.SSLCertVerificationError):
                await loop.create_connection(
                    asyncio.Protocol, "127.0.0.1", port, ssl=cctx, server_hostname="wrong.example"
                )
        del cctx
        for _ in range(5):
            await asyncio.sleep(0.01)
        server.close()
        await server.wait_closed()
        return ref

    ref = run(main())
    # In debug mode asyncio's accept loop reports the server side's failed
    # connections ('Error on transport creation ...'), on both loops (the
    # reports hold those protocols: checked, then dropped).
    reports = exc_handler.take()
    assert not reports or loop.get_debug(), reports
    assert all(isinstance(r["exception"], ConnectionError) for r in reports), reports
    del reports
    gc.collect()
    assert ref() is None, gc.get_referrers(ref())
    protocols = [o for o in gc.get_objects() if isinstance(o, sslproto.SSLProtocol)]
    assert protocols == []
