"""What the TLS tests share: certificates made at test time (trustme: a
CA, server and client certificates, an expired one), contexts built from
them, protocols that hash what they receive or send a payload under flow
control, and ThreadPeer, a blocking peer in a thread."""

import asyncio
import datetime
import hashlib
import socket
import ssl
import threading

import pytest

trustme = pytest.importorskip("trustme", reason="tests/requirements.txt installs trustme")

MIB = 1 << 20


def make_pki():
    """A CA and the certificates it issued: (ca, server, client, expired).
    Each TLS test module makes it its module-scoped ``pki`` fixture."""
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert("client@example.test")
    past = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
    expired = ca.issue_cert(
        "localhost", not_before=past, not_after=past + datetime.timedelta(days=1)
    )
    return ca, server, client, expired


def server_context(pki, cert=None, client_auth=False):
    ca, server, _, _ = pki
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    (cert or server).configure_cert(ctx)
    if client_auth:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ca.configure_trust(ctx)
    return ctx


def client_context(pki, cert=False):
    ca, _, client, _ = pki
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(ctx)
    if cert:
        client.configure_cert(ctx)
    return ctx


def pattern(n, seed=0):
    """n bytes that are not periodic over short spans (a lost or repeated
    record changes the digest)."""
    out = bytearray()
    block = hashlib.sha256(seed.to_bytes(8, "little")).digest()
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block * 64
    return bytes(out[:n])


class Sink(asyncio.Protocol):
    """Hashes everything received; `done` resolves at connection_lost."""

    def __init__(self, loop):
        self.hash = hashlib.sha256()
        self.size = 0
        self.calls = 0
        self.eof = False
        self.done = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.hash.update(data)
        self.size += len(data)
        self.calls += 1

    def eof_received(self):
        self.eof = True

    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_result(exc)


class BufferedSink(asyncio.BufferedProtocol):
    def __init__(self, loop, size=64 * 1024):
        self.hash = hashlib.sha256()
        self.size = 0
        # NOTE: a memoryview, not the bytearray: asyncio's SSLProtocol
        # reads the rest of a burst into buf[offset:], which for a
        # bytearray is a copy (the bytes would be lost on both loops).
        self.buf = memoryview(bytearray(size))
        self.done = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, sizehint):
        return self.buf

    def buffer_updated(self, nbytes):
        self.hash.update(self.buf[:nbytes])
        self.size += nbytes

    def eof_received(self):
        pass

    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_result(exc)


class Sender(asyncio.Protocol):
    """Writes `payload` in `chunk`-sized writes honouring pause_writing,
    then closes."""

    def __init__(self, loop, payload, chunk=256 * 1024):
        self.payload = payload
        self.chunk = chunk
        self.offset = 0
        self.paused = 0
        self.max_buffer = 0
        self.loop = loop
        self.done = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.loop.call_soon(self.send)

    def send(self):
        t = self.transport
        while self.offset < len(self.payload) and not t.is_closing():
            t.write(self.payload[self.offset : self.offset + self.chunk])
            self.offset += self.chunk
            self.max_buffer = max(self.max_buffer, t.get_write_buffer_size())
            if self.resume is not None:
                return
        if self.offset >= len(self.payload):
            t.close()

    resume = None

    def pause_writing(self):
        self.paused += 1
        self.resume = True

    def resume_writing(self):
        self.resume = None
        self.loop.call_soon(self.send)

    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_result(exc)


async def serve(loop, factory, ctx, **kwargs):
    server = await loop.create_server(factory, "127.0.0.1", 0, ssl=ctx, **kwargs)
    return server, server.sockets[0].getsockname()[1]


class ThreadPeer:
    """A blocking peer in a thread for one connection: `body(conn)` runs
    with the accepted socket; join() returns what it returned (or raises
    what it raised)."""

    def __init__(self, body, timeout=20):
        self.body = body
        self.timeout = timeout
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.result = self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            self.sock.settimeout(self.timeout)
            conn, _ = self.sock.accept()
            with conn:
                conn.settimeout(self.timeout)
                self.result = self.body(conn)
        except BaseException as exc:  # noqa: BLE001 (re-raised by join)
            self.error = exc
        finally:
            self.sock.close()

    def join(self):
        self.thread.join(self.timeout)
        assert not self.thread.is_alive(), "the peer thread did not end"
        if self.error is not None:
            raise self.error
        return self.result
