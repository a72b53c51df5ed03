"""Real libraries on both loops: aiohttp (server and client) and uvicorn.

These are end-to-end checks of the networking layer (create_server,
create_connection, transports, flow control, streams) as third-party code
drives it.  Each test runs a server and a client on the same loop, asserts
inside the running code that the loop really is the one under test, and
shuts everything down cleanly: an unexpected exception-handler call fails the
test (see conftest.py), and so does a ResourceWarning (unclosed socket or
transport).

The libraries are listed in tests/requirements.txt; the importorskip calls
are only a safety net for a bare environment.
"""

import asyncio
import contextlib
import hashlib
import json

import pytest

aiohttp = pytest.importorskip("aiohttp")
web = pytest.importorskip("aiohttp.web")
uvicorn = pytest.importorskip("uvicorn")

pytestmark = [
    pytest.mark.filterwarnings("error::ResourceWarning"),
    pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning"),
]

# 1 MiB of deterministic data (a 32-byte digest repeated).
BIG = hashlib.sha256(b"ferroloop").digest() * (1024 * 1024 // 32)
BIG_SHA = hashlib.sha256(BIG).hexdigest()
CHUNK = 64 * 1024


def running_loop_module():
    return type(asyncio.get_running_loop()).__module__


def check_running_loop(loop_name):
    """Assert that the code runs on the loop under test."""
    module = running_loop_module()
    if loop_name == "ferroloop":
        assert module.startswith("ferroloop"), module
    else:
        assert module.startswith("asyncio"), module
    return module


# --------------------------------------------------------------------------
# aiohttp
# --------------------------------------------------------------------------


def make_aiohttp_app():
    """A small application and the list of client ports its handlers saw."""
    peers = []
    routes = web.RouteTableDef()

    def record_peer(request):
        peers.append(request.transport.get_extra_info("peername")[1])

    @routes.get("/hello")
    async def hello(request):
        record_peer(request)
        name = request.query.get("name", "world")
        return web.Response(text=f"hello, {name}", headers={"X-Loop": running_loop_module()})

    @routes.post("/echo")
    async def echo(request):
        record_peer(request)
        data = await request.json()
        return web.json_response({"echo": data, "loop": running_loop_module()})

    @routes.get("/stream")
    async def stream(request):
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(0, len(BIG), CHUNK):
            await resp.write(BIG[i : i + CHUNK])
        await resp.write_eof()
        return resp

    @routes.post("/upload")
    async def upload(request):
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_chunked(CHUNK):
            digest.update(chunk)
            size += len(chunk)
        return web.json_response({"size": size, "sha256": digest.hexdigest()})

    @routes.get("/boom")
    async def boom(request):
        raise RuntimeError("handler failure (expected by the test)")

    @routes.get("/ws")
    async def ws_echo(request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                if msg.data == "close":
                    await ws.close()
                else:
                    await ws.send_str(f"echo: {msg.data} on {running_loop_module()}")
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data[::-1])
        return ws

    app = web.Application()
    app.add_routes(routes)
    return app, peers


@contextlib.asynccontextmanager
async def aiohttp_server(app):
    """Serve *app* on 127.0.0.1, a free port; yields the base URL."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


def test_aiohttp_sequential_requests_over_keepalive(loop, run, loop_name):
    app, peers = make_aiohttp_app()

    async def main():
        check_running_loop(loop_name)
        async with aiohttp_server(app) as base, aiohttp.ClientSession() as session:
            for i in range(5):
                async with session.get(f"{base}/hello", params={"name": f"n{i}"}) as resp:
                    assert resp.status == 200
                    assert await resp.text() == f"hello, n{i}"
                    assert check_running_loop(loop_name) == resp.headers["X-Loop"]
                payload = {"i": i, "items": list(range(i)), "text": "é" * i}
                async with session.post(f"{base}/echo", json=payload) as resp:
                    assert resp.status == 200
                    body = await resp.json()
                    assert body == {"echo": payload, "loop": running_loop_module()}
        # All ten requests went over one kept-alive connection.
        assert len(peers) == 10
        assert len(set(peers)) == 1

    run(main())


def test_aiohttp_concurrent_requests(loop, run, loop_name):
    app, peers = make_aiohttp_app()

    async def main():
        check_running_loop(loop_name)
        async with aiohttp_server(app) as base, aiohttp.ClientSession() as session:

            async def one(i):
                async with session.post(f"{base}/echo", json={"n": i}) as resp:
                    assert resp.status == 200
                    return (await resp.json())["echo"]["n"]

            async def hello(i):
                async with session.get(f"{base}/hello", params={"name": str(i)}) as resp:
                    return await resp.text()

            results = await asyncio.gather(*(one(i) for i in range(50)))
            assert results == list(range(50))
            texts = await asyncio.gather(*(hello(i) for i in range(50)))
            assert texts == [f"hello, {i}" for i in range(50)]
        # Concurrency really opened several connections.
        assert len(set(peers)) > 1

    run(main())


def test_aiohttp_large_streaming_bodies(loop, run, loop_name):
    app, _ = make_aiohttp_app()

    async def main():
        check_running_loop(loop_name)
        async with aiohttp_server(app) as base, aiohttp.ClientSession() as session:
            # ~1 MiB chunked download, read in pieces.
            async with session.get(f"{base}/stream") as resp:
                assert resp.status == 200
                assert resp.headers["Transfer-Encoding"] == "chunked"
                digest = hashlib.sha256()
                size = 0
                async for chunk in resp.content.iter_chunked(10_000):
                    digest.update(chunk)
                    size += len(chunk)
            assert size == len(BIG)
            assert digest.hexdigest() == BIG_SHA

            # ~1 MiB upload, streamed from an async generator (chunked).
            async def body():
                for i in range(0, len(BIG), CHUNK):
                    yield BIG[i : i + CHUNK]

            async with session.post(f"{base}/upload", data=body()) as resp:
                assert resp.status == 200
                assert await resp.json() == {"size": len(BIG), "sha256": BIG_SHA}

            # And a plain 1 MiB bytes body (Content-Length).
            async with session.post(f"{base}/upload", data=BIG) as resp:
                assert await resp.json() == {"size": len(BIG), "sha256": BIG_SHA}

    run(main())


def test_aiohttp_handler_error_is_500(loop, run, loop_name, caplog):
    app, _ = make_aiohttp_app()

    async def main():
        check_running_loop(loop_name)
        async with aiohttp_server(app) as base, aiohttp.ClientSession() as session:
            async with session.get(f"{base}/boom") as resp:
                assert resp.status == 500
                await resp.read()
            # The connection and the server survive the failure.
            async with session.get(f"{base}/hello") as resp:
                assert resp.status == 200
                assert await resp.text() == "hello, world"
            async with session.get(f"{base}/missing") as resp:
                assert resp.status == 404

    run(main())
    # aiohttp logs the handler's exception (it does not go to the loop's
    # exception handler).
    assert "handler failure (expected by the test)" in caplog.text


def test_aiohttp_websocket_echo(loop, run, loop_name):
    app, _ = make_aiohttp_app()

    async def main():
        module = check_running_loop(loop_name)
        async with aiohttp_server(app) as base, aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{base}/ws") as ws:
                for i in range(3):
                    await ws.send_str(f"msg{i}")
                    assert await ws.receive_str() == f"echo: msg{i} on {module}"
                await ws.send_bytes(b"\x00\x01\x02" * 1000)
                assert await ws.receive_bytes() == (b"\x00\x01\x02" * 1000)[::-1]
                big = "x" * 200_000
                await ws.send_str(big)
                assert await ws.receive_str() == f"echo: {big} on {module}"
                # Server-initiated close.
                await ws.send_str("close")
                msg = await ws.receive()
                assert msg.type == aiohttp.WSMsgType.CLOSE
            assert ws.closed

            # Client-initiated close.
            async with session.ws_connect(f"{base}/ws") as ws:
                await ws.send_str("again")
                assert await ws.receive_str() == f"echo: again on {module}"
                await ws.close()
            assert ws.closed

    run(main())


# --------------------------------------------------------------------------
# uvicorn
# --------------------------------------------------------------------------


async def asgi_app(scope, receive, send):
    """A plain ASGI 3 application: JSON describing the request."""
    assert scope["type"] == "http"
    body = b""
    while True:
        message = await receive()
        assert message["type"] == "http.request"
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    data = json.dumps(
        {
            "method": scope["method"],
            "path": scope["path"],
            "query": scope["query_string"].decode(),
            "body_size": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(),
            "loop": running_loop_module(),
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


@contextlib.asynccontextmanager
async def uvicorn_server(http):
    """Run uvicorn's Server.serve() as a task of the running loop."""
    config = uvicorn.Config(
        asgi_app,
        host="127.0.0.1",
        port=0,
        loop="none",
        http=http,
        ws="none",
        lifespan="off",
        log_level="warning",
        log_config=None,
        access_log=False,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()  # raises what made the startup fail
                pytest.fail("uvicorn exited before starting")
            await asyncio.sleep(0.005)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}", port
    finally:
        server.should_exit = True
        await task


async def read_http_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers["content-length"]))
    return status_line, headers, body


@pytest.mark.parametrize("http", ["h11", "httptools"])
def test_uvicorn_asgi_app(loop, run, loop_name, http):
    if http == "httptools":
        pytest.importorskip("httptools")

    async def main():
        module = check_running_loop(loop_name)
        async with uvicorn_server(http) as (base, port):
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{base}/items/1?x=1") as resp:
                    assert resp.status == 200
                    data = await resp.json()
                assert data["method"] == "GET"
                assert data["path"] == "/items/1"
                assert data["query"] == "x=1"
                assert data["loop"] == module

                async with session.post(f"{base}/upload", data=BIG) as resp:
                    data = await resp.json()
                assert data["body_size"] == len(BIG)
                assert data["body_sha256"] == BIG_SHA

                async def one(i):
                    async with session.get(f"{base}/n/{i}") as resp:
                        return (await resp.json())["path"]

                paths = await asyncio.gather(*(one(i) for i in range(20)))
                assert paths == [f"/n/{i}" for i in range(20)]

            # Raw HTTP/1.1: two requests on one kept-alive connection.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                for i in range(2):
                    body = f"request {i}".encode()
                    writer.write(
                        b"POST /raw/%d HTTP/1.1\r\n"
                        b"Host: 127.0.0.1\r\n"
                        b"Content-Length: %d\r\n"
                        b"\r\n%s" % (i, len(body), body)
                    )
                    await writer.drain()
                    status, headers, raw = await read_http_response(reader)
                    assert status == "HTTP/1.1 200 OK"
                    assert headers.get("connection", "keep-alive") != "close"
                    data = json.loads(raw)
                    assert data["path"] == f"/raw/{i}"
                    assert data["body_size"] == len(body)
                    assert data["loop"] == module
                # Pipelined requests on the same connection.
                writer.write(
                    b"GET /p/0 HTTP/1.1\r\nHost: x\r\n\r\nGET /p/1 HTTP/1.1\r\nHost: x\r\n\r\n"
                )
                for i in range(2):
                    _, _, raw = await read_http_response(reader)
                    assert json.loads(raw)["path"] == f"/p/{i}"
            finally:
                writer.close()
                await writer.wait_closed()

    run(main())
