"""FastAPI served for real: uvicorn's and gunicorn's command lines in server
processes, a client in the test process.

The application is tests/apps/fastapi_app.py. Each test starts the server as
its own command line would be typed, with the loop under test:

    python -m uvicorn fastapi_app:app --loop ferroloop:new_event_loop  (or asyncio)
    python -m gunicorn fastapi_app:app -w 3 -k ferroloop.gunicorn.UvicornWorker

and talks to it with aiohttp (HTTP and websocket client) running on the
``loop`` fixture, the same loop under test. The app reports the loop class
and pid it runs in; the test checks both. Server processes are stopped with
SIGTERM (SIGKILL to their whole process group after a timeout) also when the
test fails; a graceful stop must exit 0 (or by the SIGTERM uvicorn re-raises
after its shutdown), print the server's goodbye line and leave no process of
the group behind, and the server's output must hold no traceback or error.
That output is attached to a failure's message. Servers run with
conftest.child_env (without PYTHONASYNCIODEBUG / PYTHONDEVMODE), as every
child process of the suite does.
"""

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import TESTS_DIR, child_env

aiohttp = pytest.importorskip("aiohttp", reason="aiohttp is the client (tests/requirements.txt)")
pytest.importorskip("fastapi", reason="FastAPI is what is served (tests/requirements.txt)")
pytest.importorskip("uvicorn", reason="uvicorn serves it (tests/requirements.txt)")

APPS = TESTS_DIR / "apps"
APP = "fastapi_app:app"
TOKEN = "s3cret"  # fastapi_app.TOKEN
STATE_DIR_ENV = "FASTAPI_APP_STATE_DIR"  # fastapi_app.STATE_DIR_ENV
READY_TIMEOUT = 30.0  # a loaded 2-core machine imports FastAPI in 1-3 s per process
STOP_TIMEOUT = 10.0
WORKERS = 3

# uvicorn's --loop value and the gunicorn worker class for each loop under
# test (expected_loop_class() is the class the server must then report).
UVICORN_LOOP = {"asyncio": "asyncio", "ferroloop": "ferroloop:new_event_loop"}
GUNICORN_WORKER = {
    "asyncio": "asyncio_worker.AsyncioUvicornWorker",  # tests/apps/asyncio_worker.py
    "ferroloop": "ferroloop.gunicorn.UvicornWorker",
}
# What uvicorn and gunicorn print last when they stop gracefully.
UVICORN_BYE = "Finished server process"
GUNICORN_BYE = "Shutting down: Master"
# What must never show up in a server's output.
BAD_OUTPUT = ("Traceback", "ERROR", "Exception in callback", "was never retrieved")


def expected_loop_class(loop_name):
    if loop_name == "ferroloop":
        import ferroloop

        cls = ferroloop.Loop
    else:
        cls = asyncio.SelectorEventLoop  # what uvicorn's "asyncio" factory returns on Unix
    return f"{cls.__module__}.{cls.__qualname__}"


def test_expected_loop_classes():
    """The names the server tests compare against are the real classes."""
    assert expected_loop_class("ferroloop") == "ferroloop._loop.Loop"
    assert expected_loop_class("asyncio") == "asyncio.unix_events._UnixSelectorEventLoop"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------
# server processes
# --------------------------------------------------------------------------


class ServerProcess:
    """A server command line run in a process group of its own, its stdout
    and stderr in one log file."""

    def __init__(self, cmd, port, log_path, env):
        self.cmd, self.port, self.log_path = cmd, port, log_path
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd,
                cwd=APPS,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: workers can be killed with it
            )
        self.pgid = self.proc.pid

    def output(self):
        return self.log_path.read_text(errors="replace")

    def describe(self):
        return f"$ {' '.join(self.cmd)}\n(exit {self.proc.poll()})\n{self.output()}"

    def wait_ready(self, timeout=READY_TIMEOUT):
        """Poll the port until it accepts a connection."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError("server exited before listening")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"server not listening on {self.port} after {timeout:g} s")
            time.sleep(0.05)

    def group_alive(self):
        try:
            os.killpg(self.pgid, 0)
        except ProcessLookupError:
            return False
        return True

    def stop(self):
        """SIGTERM, then SIGKILL to the whole group after STOP_TIMEOUT;
        returns the problems seen (none for a clean, graceful stop)."""
        problems = []
        if self.proc.poll() is not None:
            problems.append(f"server had exited by itself ({self.proc.returncode})")
        else:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                problems.append(f"no exit within {STOP_TIMEOUT:g} s of SIGTERM: killed")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pgid, signal.SIGKILL)
                self.proc.wait()
            # uvicorn re-raises the signal it handled once it has shut down.
            if self.proc.returncode not in (0, -signal.SIGTERM) and not problems:
                problems.append(f"exit status {self.proc.returncode} after SIGTERM")
        # The group's other members (gunicorn's workers) are gone too, or
        # are killed now.
        deadline = time.monotonic() + 5
        while self.group_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if self.group_alive():
            problems.append("processes of the server's group outlived it: killed")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, signal.SIGKILL)
        return problems


@contextlib.contextmanager
def serve(make_cmd, tmp_path, loop_name, name, goodbye, **env):
    """Run ``make_cmd(port)`` on a free port until the block ends; yields the
    ServerProcess once that port accepts connections. After the block the
    server must stop gracefully (*goodbye* is the line that says so in its
    output). A failure in the block, at startup or at the stop gets the
    server's output in its message."""
    env = child_env(loop_name, **env)
    for attempt in range(3):
        port = free_port()
        log = tmp_path / f"{name}-{attempt}.log"
        srv = ServerProcess(make_cmd(port), port, log, env)
        try:
            srv.wait_ready()
            break
        except AssertionError as exc:
            srv.stop()
            # Another program took the free port before the server bound it.
            if attempt < 2 and "address already in use" in srv.output().lower():
                continue
            raise AssertionError(f"{exc}\n--- {name} output ---\n{srv.describe()}") from None
    try:
        yield srv
    except BaseException as exc:
        srv.stop()
        note = f"--- {name} output ---\n{srv.describe()}"
        if hasattr(exc, "add_note"):
            exc.add_note(note)
        elif isinstance(exc, Exception):  # Python 3.10
            raise AssertionError(f"{exc}\n{note}") from exc
        raise
    problems = srv.stop()
    out = srv.output()
    problems += [f"server output has {bad!r}" for bad in BAD_OUTPUT if bad in out]
    if goodbye not in out:
        problems.append(f"no {goodbye!r} in the server output: not a graceful stop")
    assert not problems, "; ".join(problems) + f"\n--- {name} output ---\n{srv.describe()}"


def uvicorn_cmd(loop_name, port, http="httptools"):
    return [
        sys.executable,
        "-m",
        "uvicorn",
        APP,
        "--loop",
        UVICORN_LOOP[loop_name],
        "--http",
        http,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


def gunicorn_cmd(loop_name, port):
    return [
        sys.executable,
        "-m",
        "gunicorn",
        APP,
        "--workers",
        str(WORKERS),
        "--worker-class",
        GUNICORN_WORKER[loop_name],
        "--bind",
        f"127.0.0.1:{port}",
        "--graceful-timeout",
        "5",
        "--timeout",
        "60",
        # gunicorn 25.1+ opens a control socket under ~/.gunicorn by default:
        # not for a test (nor for two tests at once).
        *(["--no-control-socket"] if gunicorn_setting("control_socket_disable") else []),
    ]


def gunicorn_setting(name):
    """True when the installed gunicorn has the setting *name*."""
    from gunicorn.config import KNOWN_SETTINGS

    return any(s.name == name for s in KNOWN_SETTINGS)


def read_states(state_dir):
    """The {pid: loop class} each server process wrote at startup."""
    states = {}
    for path in state_dir.glob("*.json"):
        data = json.loads(path.read_text())
        states[data["pid"]] = data["loop"]
    return states


# --------------------------------------------------------------------------
# uvicorn
# --------------------------------------------------------------------------


async def check_app(base, expected_loop, server_pid):
    """Every endpoint of fastapi_app, from a client on the running loop."""
    async with aiohttp.ClientSession() as session:
        # The loop the app runs on, and the process.
        async with session.get(f"{base}/loop") as resp:
            assert resp.status == 200
            assert await resp.json() == {"loop": expected_loop, "pid": server_pid}

        # Path and query parameters, with their types and defaults.
        async with session.get(f"{base}/items/42", params={"q": "abc", "limit": "3"}) as resp:
            assert resp.status == 200
            assert await resp.json() == {"item_id": 42, "q": "abc", "limit": 3}
        async with session.get(f"{base}/items/7") as resp:
            assert await resp.json() == {"item_id": 7, "q": None, "limit": 10}
        async with session.get(f"{base}/items/notanint") as resp:
            assert resp.status == 422
            detail = (await resp.json())["detail"]
            assert detail[0]["loc"] == ["path", "item_id"]

        # A JSON body validated by a pydantic model, behind a dependency.
        item = {"name": "widget", "price": 2.5, "quantity": 4, "tags": ["a", "é"]}
        headers = {"X-Token": TOKEN}
        async with session.post(f"{base}/items", json=item, headers=headers) as resp:
            assert resp.status == 200
            assert await resp.json() == {
                "item": item,
                "total": 10.0,
                "user": "tester",
                "dependency_loop": expected_loop,
            }
        async with session.post(f"{base}/items", json=item) as resp:
            assert resp.status == 401  # the dependency refused: no token
            assert await resp.json() == {"detail": "bad token"}
        async with session.post(f"{base}/items", json={"price": -1}, headers=headers) as resp:
            assert resp.status == 422
            bad = {tuple(e["loc"]) for e in (await resp.json())["detail"]}
            assert bad == {("body", "name"), ("body", "price")}

        # A background task: answered 202 first, its effect visible after.
        async with session.post(f"{base}/tasks/k1", params={"value": "done"}) as resp:
            assert resp.status == 202
            assert await resp.json() == {"scheduled": "k1"}
        deadline = time.monotonic() + 10
        while True:
            async with session.get(f"{base}/tasks/k1") as resp:
                if resp.status == 200:
                    assert await resp.json() == {
                        "value": "DONE",
                        "loop": expected_loop,
                        "pid": server_pid,
                    }
                    break
                assert resp.status == 404
            assert time.monotonic() < deadline, "background task had no effect in 10 s"
            await asyncio.sleep(0.02)

        # A streaming response: the first chunk arrives while the generator
        # waits for the release, which this client sends only after reading it.
        async with session.get(f"{base}/stream/s1", params={"n": "6"}) as resp:
            assert resp.status == 200
            assert resp.headers["Transfer-Encoding"] == "chunked"
            assert resp.headers["Content-Type"].startswith("text/plain")
            first = await asyncio.wait_for(resp.content.readline(), 10)
            assert first == b"s1 chunk 0 of 6\n"
            async with session.post(f"{base}/stream/s1/release") as rel:
                assert await rel.json() == {"released": "s1"}
            rest = await asyncio.wait_for(resp.content.read(), 10)
        assert rest.decode().splitlines() == [f"s1 chunk {i} of 6" for i in range(1, 6)]

        # The websocket echo.
        async with session.ws_connect(f"{base.replace('http', 'ws', 1)}/ws") as ws:
            for i in range(3):
                await ws.send_str(f"hello {i}")
                assert await ws.receive_str(timeout=10) == f"echo: hello {i} on {expected_loop}"
            payload = bytes(range(256)) * 300
            await ws.send_bytes(payload)
            assert await ws.receive_bytes(timeout=10) == payload[::-1]
            await ws.send_str("close")  # the server closes
            msg = await ws.receive(timeout=10)
            assert msg.type == aiohttp.WSMsgType.CLOSE
            assert msg.data == 1000
        async with session.ws_connect(f"{base.replace('http', 'ws', 1)}/ws") as ws:
            await ws.send_str("again")
            assert await ws.receive_str(timeout=10) == f"echo: again on {expected_loop}"
            await ws.close()  # the client closes
        assert ws.closed


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_uvicorn_command_line(loop, run, loop_name, tmp_path, http):
    pytest.importorskip("websockets", reason="uvicorn's websocket support (requirements.txt)")
    if http == "httptools":
        pytest.importorskip("httptools", reason="uvicorn --http httptools (requirements.txt)")
    expected = expected_loop_class(loop_name)
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    env = {STATE_DIR_ENV: str(state_dir)}

    def cmd(port):
        return uvicorn_cmd(loop_name, port, http)

    with serve(cmd, tmp_path, loop_name, "uvicorn", UVICORN_BYE, **env) as srv:
        # uvicorn serves in the process it was started as.
        assert read_states(state_dir) == {srv.proc.pid: expected}
        run(check_app(f"http://127.0.0.1:{srv.port}", expected, srv.proc.pid), timeout=30)


# --------------------------------------------------------------------------
# gunicorn
# --------------------------------------------------------------------------


async def pids_answering(base, want, deadline, at_least=100):
    """GET /loop on fresh connections, 20 at a time, at least *at_least*
    times and until *want* distinct pids answered (or *deadline*); returns
    {pid: [loop class of each answer]}."""
    seen = {}
    count = 0
    connector = aiohttp.TCPConnector(force_close=True, limit=0)  # a connection per request
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one():
            async with session.get(f"{base}/loop") as resp:
                assert resp.status == 200
                return await resp.json()

        while (count < at_least or len(seen) < want) and time.monotonic() < deadline:
            for data in await asyncio.gather(*(one() for _ in range(20))):
                seen.setdefault(data["pid"], []).append(data["loop"])
            count += 20
    return seen


def test_gunicorn_uvicorn_workers(loop, run, loop_name, tmp_path):
    pytest.importorskip("gunicorn", reason="gunicorn is what is tested (requirements.txt)")
    pytest.importorskip("uvicorn_worker", reason="uvicorn-worker (requirements.txt)")
    expected = expected_loop_class(loop_name)
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    env = {STATE_DIR_ENV: str(state_dir)}

    def cmd(port):
        return gunicorn_cmd(loop_name, port)

    with serve(cmd, tmp_path, loop_name, "gunicorn", GUNICORN_BYE, **env) as srv:
        # gunicorn's master binds the port before its workers boot: wait for
        # all of them to have started serving.
        deadline = time.monotonic() + READY_TIMEOUT
        while len(read_states(state_dir)) < WORKERS:
            assert srv.proc.poll() is None, "gunicorn exited"
            assert time.monotonic() < deadline, f"{WORKERS} workers not up in {READY_TIMEOUT} s"
            time.sleep(0.05)
        workers = read_states(state_dir)
        # Each worker is a child of the master, and runs on the loop under test.
        assert srv.proc.pid not in workers
        for pid in workers:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            assert ppid == srv.proc.pid
        assert set(workers.values()) == {expected}

        base = f"http://127.0.0.1:{srv.port}"
        # Many requests on fresh connections: which worker accepts each is
        # the kernel's choice (in practice all three answer within the first
        # 20 or 40), so ask until every worker answered (or 20 s).
        seen = run(pids_answering(base, WORKERS, time.monotonic() + 20), timeout=40)
        answers = {pid: len(loops) for pid, loops in seen.items()}
        assert sum(answers.values()) >= 100
        assert set(seen) == set(workers), f"answers per worker pid: {answers}"
        assert all(set(loops) == {expected} for loops in seen.values())
        # The whole app on one of the workers (through the shared port).
        run(check_gunicorn_app(base, expected, set(workers)), timeout=30)
    # The graceful stop (checked by serve) ended every worker too.
    for pid in workers:
        assert not os.path.exists(f"/proc/{pid}"), f"worker {pid} outlived gunicorn"


async def check_gunicorn_app(base, expected_loop, worker_pids):
    """Some of check_app's endpoints through gunicorn's shared port: the
    JSON body behind the dependency and the websocket. (The streaming and
    background-task checks use per-process state across two requests, which
    may reach different workers here: test_uvicorn_command_line has them.)"""
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/loop") as resp:
            data = await resp.json()
            assert data["loop"] == expected_loop
            assert data["pid"] in worker_pids
        item = {"name": "w", "price": 1.25, "quantity": 2, "tags": []}
        async with session.post(f"{base}/items", json=item, headers={"X-Token": TOKEN}) as resp:
            assert resp.status == 200
            assert (await resp.json())["total"] == 2.5
        async with session.ws_connect(f"{base.replace('http', 'ws', 1)}/ws") as ws:
            await ws.send_str("via gunicorn")
            assert await ws.receive_str(timeout=10) == f"echo: via gunicorn on {expected_loop}"
            await ws.close()


def test_ferroloop_gunicorn_is_imported_only_on_use():
    """ferroloop does not depend on gunicorn: importing it imports neither
    gunicorn nor uvicorn-worker; ferroloop.gunicorn's classes are
    uvicorn-worker's with only the loop changed."""
    code = (
        "import sys, ferroloop\n"
        "print(sorted(m for m in ('gunicorn', 'uvicorn_worker', 'uvicorn') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr

    pytest.importorskip("uvicorn_worker", reason="uvicorn-worker (requirements.txt)")
    import uvicorn_worker
    from ferroloop import gunicorn as fg

    assert fg.LOOP == UVICORN_LOOP["ferroloop"]
    for ours, theirs in (
        (fg.UvicornWorker, uvicorn_worker.UvicornWorker),
        (fg.UvicornH11Worker, uvicorn_worker.UvicornH11Worker),
    ):
        assert issubclass(ours, theirs)
        assert ours.CONFIG_KWARGS == {**theirs.CONFIG_KWARGS, "loop": fg.LOOP}
    assert fg.UvicornH11Worker.CONFIG_KWARGS["http"] == "h11"
