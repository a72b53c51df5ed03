"""Echo / HTTP server of the network benchmarks, on one event loop.

    python3 benches/net/server.py <loop> <kind> <address> [--cpu K] [--tls CERTFILE]

loop:    asyncio | uvloop | ferroloop (created with that loop's own factory)
kind:    sock      loop.sock_accept + one task per connection doing
                   loop.sock_recv / loop.sock_sendall
         streams   asyncio.start_server: reader.read / writer.write + drain
         protocol  asyncio.Protocol writing back in data_received
         http      asyncio.Protocol parsing HTTP/1.1 with httptools, keep-alive,
                   answering every request with a fixed 13-byte body
         uvicorn   uvicorn (httptools, trivial ASGI app) on this loop
address: HOST:PORT (port 0: any free port) or unix:PATH
--tls:   serve TLS (streams, protocol) or HTTPS (uvicorn) with the key and
         certificate chain in the PEM file CERTFILE, through the loop's own TLS
         (`ssl=` of start_server / create_server; uvicorn passes its
         ssl_certfile / ssl_keyfile configuration the same way)

Prints one line `READY tcp HOST:PORT loop=<module.Class>` (or `READY unix PATH
...`) once listening, then serves until SIGTERM or SIGINT and exits with
status 0 (uvicorn re-raises the signal after its own graceful shutdown, so
that kind ends with -SIGTERM).
"""

import argparse
import asyncio
import os
import resource
import signal
import socket
import ssl
import sys

sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# ferroloop-off / ferroloop-precise: ferroloop with FERROLOOP_METRICS=0 /
# precise (the metrics-overhead comparison, benches/README.md).
from _report import METRICS_VARIANTS, apply_variant, package

LOOPS = ("asyncio", "uvloop", "ferroloop", *METRICS_VARIANTS)
KINDS = ("sock", "streams", "protocol", "http", "uvicorn")
TLS_KINDS = ("streams", "protocol", "uvicorn")
BACKLOG = 1024
RECV_SIZE = 65536  # sock_recv / reader.read chunk (the native server uses the same)

HTTP_BODY = b"Hello, world!"
HTTP_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (
    len(HTTP_BODY),
    HTTP_BODY,
)


def new_loop(name):
    apply_variant(name)
    name = package(name)
    if name == "asyncio":
        return asyncio.new_event_loop()  # default policy: the selector loop on Linux
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    if name == "ferroloop":
        import ferroloop

        return ferroloop.new_event_loop()
    raise SystemExit(f"unknown loop {name!r}")


# -- servers: each `start_*` returns an object with `async aclose()` ----------


class SockServer:
    """loop.sock_accept, then a task per connection: sock_recv / sock_sendall."""

    def __init__(self, loop, sock):
        self.loop, self.sock, self.tasks = loop, sock, set()
        self.accept_task = loop.create_task(self.accept())

    async def accept(self):
        while True:
            conn, _ = await self.loop.sock_accept(self.sock)
            conn.setblocking(False)
            if conn.family != socket.AF_UNIX:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = self.loop.create_task(self.echo(conn))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def echo(self, conn):
        loop = self.loop
        with conn:
            while True:
                data = await loop.sock_recv(conn, RECV_SIZE)
                if not data:
                    return
                await loop.sock_sendall(conn, data)

    async def aclose(self):
        for t in (self.accept_task, *self.tasks):
            t.cancel()
        await asyncio.gather(self.accept_task, *self.tasks, return_exceptions=True)
        self.sock.close()


# Open connections of the streams server: {task: writer}. At shutdown their
# transports are closed so the tasks end normally (asyncio's
# Server.wait_closed does not wait for them on 3.11, and cancelling them makes
# StreamReaderProtocol log the CancelledError).
STREAMS = {}


class AsyncioServer:
    def __init__(self, server):
        self.server = server

    async def aclose(self):
        self.server.close()
        await self.server.wait_closed()
        for writer in STREAMS.values():
            writer.close()
        if STREAMS:
            await asyncio.wait(list(STREAMS), timeout=5)


async def streams_echo(reader, writer):
    task = asyncio.current_task()
    STREAMS[task] = writer
    try:
        while True:
            data = await reader.read(RECV_SIZE)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass  # closed under us at shutdown
    finally:
        writer.close()
        del STREAMS[task]


class EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)

    def eof_received(self):
        return False  # close the transport


class HttpProtocol(asyncio.Protocol):
    """Minimal HTTP/1.1 keep-alive server: httptools parser, fixed response."""

    def connection_made(self, transport):
        import httptools

        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)
        self.error = httptools.HttpParserError

    def data_received(self, data):
        try:
            self.parser.feed_data(data)
        except self.error:
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            self.transport.close()

    def on_message_complete(self):
        self.transport.write(HTTP_RESPONSE)
        if not self.parser.should_keep_alive():
            self.transport.close()


async def asgi_app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/plain"),
                (b"content-length", str(len(HTTP_BODY)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": HTTP_BODY})


def split(address):
    """(path, None) for unix:PATH, else (host, port)."""
    if address.startswith("unix:"):
        return address[5:], None
    host, _, port = address.rpartition(":")
    return host, int(port)


def describe(sock):
    if sock.family == socket.AF_UNIX:
        return f"unix {sock.getsockname()}"
    host, port = sock.getsockname()[:2]
    return f"tcp {host}:{port}"


def listening_socket(address):
    """For the `sock` kind: a bound, listening, non-blocking socket."""
    where, port = split(address)
    if port is None:
        if os.path.exists(where):
            os.unlink(where)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(where)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((where, port))
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


def tls_context(certfile):
    """The server side of --tls: defaults of PROTOCOL_TLS_SERVER, one chain."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certfile)
    return ctx


async def start(loop, kind, address, ssl_ctx=None):
    """Starts the server; returns (object with `async aclose()`, listening socket).

    The asyncio-API kinds let the loop create the listening socket from
    host/port (or path), as applications do: asyncio and ferroloop set
    TCP_NODELAY only on sockets whose `proto` is IPPROTO_TCP, which a socket
    handed over with `sock=` may not be. `ssl_ctx` (streams and protocol
    only) is passed as `ssl=`: the loop's own TLS."""
    if kind == "sock":
        sock = listening_socket(address)
        return SockServer(loop, sock), sock
    where, port = split(address)
    kw = {"backlog": BACKLOG, "ssl": ssl_ctx}
    if kind == "streams":
        if port is None:
            server = await asyncio.start_unix_server(streams_echo, where, **kw)
        else:
            server = await asyncio.start_server(streams_echo, where, port, **kw)
    else:
        factory = {"protocol": EchoProtocol, "http": HttpProtocol}[kind]
        if port is None:
            server = await loop.create_unix_server(factory, where, **kw)
        else:
            server = await loop.create_server(factory, where, port, **kw)
    return AsyncioServer(server), server.sockets[0]


def ready(sock, loop):
    if asyncio.get_running_loop() is not loop:
        raise SystemExit("server is not running on the loop it created")
    cls = type(loop)
    print(f"READY {describe(sock)} loop={cls.__module__}.{cls.__qualname__}", flush=True)


async def serve(loop, kind, address, ssl_ctx):
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server, sock = await start(loop, kind, address, ssl_ctx)
    ready(sock, loop)
    await stop.wait()
    await server.aclose()


async def serve_uvicorn(loop, address, certfile):
    import uvicorn

    host, port = split(address)
    if port is None:
        raise SystemExit("the uvicorn kind serves TCP only")
    # HTTPS: uvicorn builds an SSLContext(PROTOCOL_TLS_SERVER) from these and
    # passes it as ssl= to loop.create_server.
    tls = {"ssl_certfile": certfile, "ssl_keyfile": certfile} if certfile else {}
    config = uvicorn.Config(
        asgi_app,
        host=host,
        port=port,
        loop="none",  # uvicorn must not create or replace the loop
        http="httptools",
        ws="none",
        lifespan="off",
        log_level="warning",
        access_log=False,
        backlog=BACKLOG,
        **tls,
    )
    server = uvicorn.Server(config)
    # uvicorn catches SIGTERM/SIGINT with signal.signal and, after its graceful
    # shutdown, restores the previous handlers and raises the signal again:
    # make that previous handler a no-op so the process then exits with 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    task = loop.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()  # startup failed: raise its error
            raise SystemExit("uvicorn exited during startup")
        await asyncio.sleep(0.01)
    ready(server.servers[0].sockets[0], loop)
    await task


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("loop", choices=LOOPS)
    p.add_argument("kind", choices=KINDS)
    p.add_argument("address", help="HOST:PORT or unix:PATH")
    p.add_argument("--cpu", type=int, help="pin this process to one CPU")
    p.add_argument(
        "--tls",
        metavar="CERTFILE",
        help="serve TLS / HTTPS with this PEM file (private key and certificate chain)",
    )
    args = p.parse_args()
    if args.tls and args.kind not in TLS_KINDS:
        p.error(f"--tls applies to the kinds {', '.join(TLS_KINDS)}")
    ssl_ctx = tls_context(args.tls) if args.tls and args.kind != "uvicorn" else None
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    loop = new_loop(args.loop)
    asyncio.set_event_loop(loop)
    try:
        if args.kind == "uvicorn":
            loop.run_until_complete(serve_uvicorn(loop, args.address, args.tls))
        else:
            loop.run_until_complete(serve(loop, args.kind, args.address, ssl_ctx))
    finally:
        asyncio.set_event_loop(None)
        loop.close()
        where, port = split(args.address)
        if port is None and os.path.exists(where):
            os.unlink(where)
    sys.exit(0)


if __name__ == "__main__":
    main()
