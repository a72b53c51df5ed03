"""Server-side connections, on both loops: what a server's accept loop hands
to protocols.

ferroloop accepts plain TCP/Unix connections natively (the socket object,
the peername tuple and the per-connection Task of asyncio's accept loop are
not made unless asked for); these tests pin down that nothing of asyncio's
behaviour is lost: extra info (also after close), the socket object, the
context protocols run in, a failing protocol factory, running out of fds,
fd ownership for add_reader, unclosed transports and weak references.
"""

import asyncio
import contextvars
import gc
import os
import resource
import socket
import sys
import weakref

import pytest
from conftest import since
from test_transports import Recorder, close_all, tcp_pair

VAR = contextvars.ContextVar("VAR", default="unset")


def test_extra_info_matches_sockets_and_survives_close(loop, run):
    async def main():
        server, sp, tr, _cp = await tcp_pair(loop)
        st = sp.transport
        peer = st.get_extra_info("peername")
        name = st.get_extra_info("sockname")
        assert peer == tr.get_extra_info("sockname")
        assert name == tr.get_extra_info("peername")
        assert isinstance(peer[0], str) and isinstance(peer[1], int)
        sock = st.get_extra_info("socket")
        assert sock is st.get_extra_info("socket")
        assert sock.getpeername() == peer and sock.getsockname() == name
        assert sock.family == socket.AF_INET and sock.type == socket.SOCK_STREAM
        assert sock.gettimeout() == 0
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert st.get_extra_info("missing", 42) == 42
        seen_in_lost = []

        def lost(exc, orig=sp.connection_lost):
            seen_in_lost.append((st.get_extra_info("peername"), st.get_extra_info("sockname")))
            orig(exc)

        sp.connection_lost = lost
        await close_all(server, tr, st)
        await sp.done
        assert seen_in_lost == [(peer, name)]
        assert st.get_extra_info("peername") == peer
        assert sock.fileno() == -1  # closed with the transport

    run(main())


def test_socket_asked_for_only_after_close(loop, run):
    async def main():
        server, sp, tr, _cp = await tcp_pair(loop)
        st = sp.transport
        await close_all(server, tr, st)
        await sp.done
        sock = st.get_extra_info("socket")
        assert sock.fileno() == -1
        assert sock.family == socket.AF_INET

    run(main())


def test_unix_server_extra_info(loop, run, tmp_path):
    path = str(tmp_path / "s\u00e9.sock")

    async def main():
        accepted = loop.create_future()

        def factory():
            p = Recorder()
            accepted.set_result(p)
            return p

        server = await loop.create_unix_server(factory, path)
        tr, _cp = await loop.create_unix_connection(Recorder, path)
        sp = await accepted
        await sp.made
        st = sp.transport
        assert st.get_extra_info("sockname") == path
        assert st.get_extra_info("peername") == tr.get_extra_info("sockname") == ""
        assert st.get_extra_info("socket").family == socket.AF_UNIX
        tr.write(b"x")
        while not sp.data:
            await asyncio.sleep(0.001)
        await close_all(server, tr, st)

    run(main())


def test_protocols_run_in_a_context_per_connection(loop, run):
    """The factory, connection_made and data_received see the context the
    server was started in; what one connection sets stays its own."""
    seen = []

    class P(Recorder):
        def __init__(self):
            super().__init__()
            seen.append(("factory", VAR.get()))

        def data_received(self, data):
            seen.append(("data", VAR.get()))
            VAR.set(data.decode())
            super().data_received(data)

    async def main():
        VAR.set("server")
        server = await loop.create_server(P, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        VAR.set("later")
        clients = []
        for text in ("a", "b"):
            tr, _cp = await loop.create_connection(Recorder, "127.0.0.1", port)
            clients.append(tr)
            for _ in range(2):
                tr.write(text.encode())
                await asyncio.sleep(0.02)
        await close_all(server, *clients)
        await asyncio.sleep(0.02)

    run(main())
    assert seen == [
        ("factory", "server"),
        ("data", "server"),
        ("data", "a"),
        ("factory", "server"),
        ("data", "server"),
        ("data", "b"),
    ]


def test_failing_protocol_factory_closes_the_connection(loop, run, exc_handler):
    calls = []

    def factory():
        calls.append(1)
        if len(calls) == 1:
            raise ZeroDivisionError("no protocol")
        return Recorder(echo=True)

    async def main():
        server = await loop.create_server(factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        if loop.get_debug():
            # Reported in debug mode only; the report's traceback holds the
            # socket until it is dropped.
            while not exc_handler.calls:
                await asyncio.sleep(0.01)
            [ctx] = exc_handler.take()
            assert ctx["message"] == "Error on transport creation for incoming connection"
            assert isinstance(ctx["exception"], ZeroDivisionError)
            del ctx
            gc.collect()
        # Refused connection: closed by the server (asyncio drops the socket).
        assert await asyncio.wait_for(reader.read(10), 5) == b""
        writer.close()
        # The server keeps serving.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    gc.collect()
    run(main())
    gc.collect()
    assert len(calls) == 2


def test_out_of_fds_reports_and_retries(loop, run, exc_handler):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    async def main():
        server, sp, tr, _cp = await tcp_pair(loop)
        port = server.sockets[0].getsockname()[1]
        await close_all(server, tr, sp.transport)
        accepted = loop.create_future()

        def factory():
            p = Recorder()
            if not accepted.done():
                accepted.set_result(p)
            return p

        server = await loop.create_server(factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = socket.socket()
        client.setblocking(False)
        # No fd left for accept(): the connection waits in the backlog.
        top = max(int(fd) for fd in os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (top + 1, hard))
        fillers = []
        try:
            while True:  # fill the holes below the limit
                try:
                    fillers.append(os.open(os.devnull, os.O_RDONLY))
                except OSError:
                    break
            try:
                client.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            for _ in range(200):
                if exc_handler.calls:
                    break
                await asyncio.sleep(0.01)
        finally:
            for fd in fillers:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        # asyncio retries after ACCEPT_RETRY_DELAY (1 s).
        sp = await asyncio.wait_for(accepted, 10)
        await sp.made
        client.close()
        await sp.done
        server.close()
        await server.wait_closed()

    run(main())
    ctxs = exc_handler.take()
    assert ctxs, "the exception handler was not called"
    assert ctxs[0]["message"] == "socket.accept() out of system resource"
    assert ctxs[0]["exception"].errno == 24  # EMFILE
    assert isinstance(ctxs[0]["socket"], asyncio.trsock.TransportSocket)


def test_fd_of_accepted_transport_is_refused_to_add_reader(loop, run):
    async def main():
        server, sp, tr, _cp = await tcp_pair(loop)
        fd = sp.transport.get_extra_info("socket").fileno()
        with pytest.raises(RuntimeError, match="is used by transport"):
            loop.add_reader(fd, lambda: None)
        with pytest.raises(RuntimeError, match="is used by transport"):
            loop.remove_writer(fd)
        sp.transport.close()
        # A closing transport no longer owns it (asyncio's rule).
        assert loop.remove_reader(fd) is False
        await sp.done
        await close_all(server, tr)

    run(main())


def test_unclosed_accepted_transport_warns_and_closes_fd(loop, run):
    async def main():
        server, sp, tr, cp = await tcp_pair(loop)
        st = sp.transport
        st.pause_reading()  # the loop no longer references it
        ref = weakref.ref(st)
        sp.transport = st = None
        server.close()
        with pytest.warns(ResourceWarning, match="unclosed transport"):
            gc.collect()
        assert ref() is None
        await cp.done  # the server side's socket was closed: EOF
        tr.close()
        # NOTE: on 3.12, wait_closed() waits for every connection to detach
        # and a collected transport never does (asyncio's loop hangs here
        # too); from 3.13 on, an unclosed transport detaches when collected.
        if sys.version_info[:2] != (3, 12):
            await server.wait_closed()

    run(main())


def test_server_wait_closed_waits_for_connections(loop, run):
    # asyncio's Server, on both loops; what wait_closed() waits for is the
    # running version's: from 3.12.1 the close and every accepted connection
    # (detached as it closes), before that only the close.
    async def main():
        server, sp, tr, cp = await tcp_pair(loop)
        server.close()
        waiter = asyncio.ensure_future(server.wait_closed())
        await asyncio.sleep(0.05)
        if sys.version_info >= (3, 12, 1):
            assert not waiter.done()
            sp.transport.close()
            await asyncio.wait_for(waiter, 5)
        else:
            assert waiter.done()
            sp.transport.close()
        await asyncio.wait_for(cp.done, 5)
        tr.close()

    run(main())


@since((3, 13), "Server.close_clients() / abort_clients()")
@pytest.mark.parametrize("how", ["close_clients", "abort_clients"])
def test_server_close_and_abort_clients(loop, run, how):
    async def main():
        server, sp, tr, cp = await tcp_pair(loop)
        server2, sp2, tr2, _cp2 = await tcp_pair(loop)  # another server's: untouched
        sp.transport.write(b"last words")
        server.close()
        getattr(server, how)()
        assert sp.transport.is_closing()
        await asyncio.wait_for(server.wait_closed(), 5)
        await asyncio.wait_for(cp.done, 5)
        if how == "close_clients":
            # close() flushes what was written, then the client sees EOF.
            assert bytes(cp.data) == b"last words"
            assert "eof" in cp.events
        assert not sp2.transport.is_closing()
        tr.close()
        await close_all(server2, sp2.transport, tr2)

    run(main())
