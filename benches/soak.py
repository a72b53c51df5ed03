"""Soak: one event loop under a mixed load for a long time (issue #9).

    python3 benches/soak.py --loop ferroloop [--duration 1800] [--interval 10]
                            [--warmup S] [--json PATH] [--chart PNG]

One process, one event loop (the loop under test) running every workload
concurrently as tasks, servers and clients both on that loop over loopback:
TCP echo of 1 B, 1 KiB, 64 KiB and 1 MiB (streams, and the sock_* API), Unix
socket echo, a keep-alive HTTP/1.1 server under a fixed client, TLS
connections opened, used and closed (ssl= and start_tls), timers created and
half cancelled, executor jobs, subprocesses, call_soon_threadsafe from four
threads, tasks cancelled in the middle of I/O. Every byte that comes back is
compared with what was sent. Every --interval seconds the workloads are
paused at a quiescent point (no connection, subprocess or job in flight) and
the process's RSS, open fds, threads, live tasks and, for ferroloop, the
loop's own counters (loop.stats()) are sampled. Exits 0 only if every
acceptance check passes (see benches/README.md, "Soak").
"""

import argparse
import collections
import contextlib
import dataclasses
import faulthandler
import gc
import hashlib
import io
import json
import os
import platform
import random
import shutil
import socket
import ssl
import statistics
import sys
import tempfile
import textwrap
import threading
import time
import traceback
import warnings

sys.dont_write_bytecode = True  # keep benches/ free of __pycache__
import asyncio

from _chart import COLORS  # benches/ is sys.path[0]
from _report import save_json, version
from _worker import LOOPS, new_loop

KIB, MIB = 1 << 10, 1 << 20
HOST = "127.0.0.1"
ECHO_SIZES = (1, KIB, 64 * KIB, MIB)
RSS_TOLERANCE = 0.05  # every post-warm-up sample within +-5 % of the baseline
BASELINE_SAMPLES = 3  # the RSS baseline: median of the first 3 post-warm-up samples
QUIESCE_TIMEOUT = 60.0  # workloads not back at the gate by then: a hang
SETTLE_TIMEOUT = 10.0  # how long closing fds / exiting threads may take to settle
EARLY_TIMER_TOLERANCE = 1e-3  # uvloop rounds delays to whole ms
MAX_LOGGED = 20  # failures, handler calls and warnings kept verbatim
SENDER_THREADS = 4
PAYLOAD = os.urandom(MIB + 4 * KIB)  # payloads are slices at varying offsets
CAT = shutil.which("cat")
CAT_CMD = (
    [CAT]
    if CAT
    else [
        sys.executable,
        "-c",
        "import shutil, sys; shutil.copyfileobj(sys.stdin.buffer, sys.stdout.buffer)",
    ]
)


class CheckFailed(Exception):
    """A workload got a wrong result: bytes, counts, return codes."""


def check(ok, what):
    # Not `assert`: the checks also run under `python -O`.
    if not ok:
        raise CheckFailed(what)


def check_bytes(got, expected, what):
    if got == expected:
        return
    n = min(len(got), len(expected))
    i = next((k for k in range(n) if got[k] != expected[k]), n)
    raise CheckFailed(f"{what}: {len(got)} bytes, {len(expected)} expected, differ from byte {i}")


def payload(size):
    off = random.randrange(4 * KIB)
    return PAYLOAD[off : off + size]


# --------------------------------------------------------------------------
# process probes (Linux /proc)
# --------------------------------------------------------------------------

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def open_fds():
    """fd -> what it is (``/proc/self/fd``'s link), without the listing's own fd."""
    table = {}
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            table[int(name)] = os.readlink(f"/proc/self/fd/{name}")
    return table


def fd_kinds(table):
    kinds = collections.Counter()
    for link in table.values():
        if link.startswith(("socket:", "pipe:")):
            kinds[link.split(":")[0]] += 1
        elif link.startswith("anon_inode:"):
            kinds[link] += 1
        else:
            kinds["file"] += 1
    return dict(sorted(kinds.items()))


def _malloc_trim():
    """glibc's ``malloc_trim(0)`` (None elsewhere)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    return lambda: trim(0)


MALLOC_TRIM = _malloc_trim()
# The RSS that is checked: after malloc_trim(0) where glibc has it (see
# benches/README.md, "Soak"); VmRSS as it is ("rss") is recorded either way.
RSS_KEY = "rss_trimmed" if MALLOC_TRIM else "rss"


def os_threads():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return None


def cpu_seconds():
    t = os.times()
    return t.user + t.system


def loop_stats(loop):
    """ferroloop's ``loop.stats()`` as plain JSON values (None for other loops)."""
    stats = getattr(loop, "stats", None)
    if stats is None:
        return None
    st = stats()
    out = {}
    for field in dataclasses.fields(st):
        v = getattr(st, field.name)
        if isinstance(v, (bool, int, float)) or v is None:
            out[field.name] = v
        elif hasattr(v, "percentile"):  # a Histogram
            out[field.name] = {"count": v.count, "mean": v.mean, "p99": v.percentile(99)}
            out[field.name]["max"] = v.max
        elif hasattr(v, "items"):
            out[field.name] = dict(v.items())
    out["utilization"] = st.utilization
    return out


# --------------------------------------------------------------------------
# servers (protocols on the loop under test)
# --------------------------------------------------------------------------


class Served(asyncio.Protocol):
    """A server-side protocol: counts itself in ``soak.server_conns`` from
    connection_made to connection_lost, so that a sample can wait until the
    server side of every connection is closed too."""

    def __init__(self, soak):
        self.soak = soak
        self.lost = False

    def connection_made(self, transport):
        self.transport = transport
        self.soak.server_conns += 1

    def connection_lost(self, exc):
        if not self.lost:
            self.lost = True
            self.soak.server_conns -= 1


class Echo(Served):
    """Echoes what it reads; stops reading while its own writes are paused."""

    def data_received(self, data):
        self.transport.write(data)

    def eof_received(self):
        return False  # close once the echo is flushed

    def pause_writing(self):
        self.transport.pause_reading()

    def resume_writing(self):
        self.transport.resume_reading()


class Sink(Served):
    """Reads nothing for its first 100 ms (its client's writes back up),
    then discards everything until EOF."""

    def connection_made(self, transport):
        super().connection_made(transport)
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        transport.pause_reading()
        self.timer = asyncio.get_running_loop().call_later(0.1, self.resume)

    def resume(self):
        if not self.transport.is_closing():
            self.transport.resume_reading()

    def data_received(self, data):
        pass

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        super().connection_lost(exc)
        self.timer.cancel()


class StartTlsEcho(Served):
    """Plaintext until the line ``STARTTLS``, answered ``OK``; then
    ``loop.start_tls(server_side=True)`` and echo over TLS."""

    def __init__(self, soak):
        super().__init__(soak)
        self.state = "plain"
        self.buf = b""
        self.pending = []  # TLS data read before start_tls returned

    def data_received(self, data):
        if self.state == "tls":
            self.transport.write(data)
        elif self.state == "upgrading":
            self.pending.append(data)
        else:
            self.buf += data
            if not self.buf.endswith(b"\n"):
                return
            if self.buf != b"STARTTLS\n":
                self.soak.fail("tls", CheckFailed(f"STARTTLS server read {self.buf[:40]!r}"))
                self.transport.abort()
                return
            self.transport.pause_reading()  # the ClientHello is for start_tls
            self.transport.write(b"OK\n")
            self.state = "upgrading"
            self.soak.spawn(self.upgrade())

    async def upgrade(self):
        loop = asyncio.get_running_loop()
        try:
            tls = await loop.start_tls(self.transport, self, self.soak.server_ctx, server_side=True)
        except Exception as exc:  # noqa: BLE001 - reported as the run's failure
            self.soak.fail("tls", exc, "server start_tls")
            self.transport.abort()
            self.connection_lost(exc)  # the TLS protocol had replaced this one
            return
        self.transport, self.state = tls, "tls"
        for data in self.pending:
            tls.write(data)
        self.pending.clear()

    def eof_received(self):
        return False


def http_body(n, seed):
    return PAYLOAD[seed : seed + n]


class Http(Served):
    """A minimal HTTP/1.1 server, keep-alive and pipelining:
    ``GET /bytes/N/SEED`` answers N bytes of PAYLOAD from offset SEED,
    ``POST /echo`` its body; ``Connection: close`` closes after the response."""

    def __init__(self, soak):
        super().__init__(soak)
        self.buf = bytearray()

    def data_received(self, data):
        self.buf += data
        while not self.transport.is_closing():
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = self.buf[:end].decode("latin-1").split("\r\n")
            headers = dict(line.split(": ", 1) for line in lines[1:])
            length = int(headers.get("Content-Length", "0"))
            if len(self.buf) < end + 4 + length:
                return
            body = bytes(self.buf[end + 4 : end + 4 + length])
            del self.buf[: end + 4 + length]
            self.respond(lines[0].split(" "), headers, body)

    def respond(self, request_line, headers, body):
        method, target, _ = request_line
        parts = target.split("/")
        if method == "GET" and len(parts) == 4 and parts[1] == "bytes":
            status, out = "200 OK", http_body(int(parts[2]), int(parts[3]))
        elif method == "POST" and target == "/echo":
            status, out = "200 OK", body
        else:
            self.soak.fail("http", CheckFailed(f"server got {method} {target}"))
            status, out = "404 Not Found", b""
        close = headers.get("Connection") == "close"
        head = (
            f"HTTP/1.1 {status}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {len(out)}\r\nConnection: {'close' if close else 'keep-alive'}"
            "\r\n\r\n"
        )
        # No empty chunk: 3.12.0-3.12.x / 3.13.0's selector transport never
        # drops a b"" left alone in its writelines buffer (and never closes).
        self.transport.writelines([head.encode("latin-1"), out] if out else [head.encode()])
        if close:
            self.transport.close()

    def eof_received(self):
        return False


class Collector(asyncio.Protocol):
    """A client protocol buffering what it reads, for ``read_exactly``;
    survives ``loop.start_tls`` (``transport`` is then set to the TLS one)."""

    def __init__(self, loop):
        self.loop = loop
        self.buf = bytearray()
        self.want = 0
        self.waiter = None
        self.eof = False
        self.closed = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buf += data
        self.wake()

    def eof_received(self):
        self.eof = True
        self.wake()
        return False

    def connection_lost(self, exc):
        self.eof = True
        self.wake()
        if not self.closed.done():
            self.closed.set_result(exc)

    def wake(self):
        waiting = self.waiter is not None and not self.waiter.done()
        if waiting and (len(self.buf) >= self.want or self.eof):
            self.waiter.set_result(None)

    async def read_exactly(self, n):
        while len(self.buf) < n:
            check(not self.eof, f"EOF after {len(self.buf)} of {n} bytes")
            self.want, self.waiter = n, self.loop.create_future()
            await self.waiter
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data


# --------------------------------------------------------------------------
# pausing the load: the gate and the threads calling call_soon_threadsafe
# --------------------------------------------------------------------------


class Gate:
    """Workloads run each iteration inside ``op()``; ``close()`` then
    ``idle`` waits until none is in flight (they wait at the gate)."""

    def __init__(self):
        self.opened = asyncio.Event()
        self.opened.set()
        self.idle = asyncio.Event()
        self.idle.set()
        self.busy = {}  # task -> workload name

    @contextlib.asynccontextmanager
    async def op(self, name):
        await self.opened.wait()
        task = asyncio.current_task()
        self.busy[task] = name
        self.idle.clear()
        try:
            yield
        finally:
            del self.busy[task]
            if not self.busy:
                self.idle.set()


class Senders:
    """Threads each calling ``loop.call_soon_threadsafe(cb, thread, seq)``
    in bursts; the callbacks check that every thread's sequence arrives
    complete and in order."""

    def __init__(self, soak, n=SENDER_THREADS, burst=20, period=0.01):
        self.soak, self.loop = soak, soak.loop
        self.burst, self.period = burst, period
        self.go = threading.Event()
        self.go.set()
        self.stop = False
        self.locks = [threading.Lock() for _ in range(n)]
        self.sent = [0] * n
        self.received = [0] * n
        self.threads = [
            threading.Thread(target=self.run, args=(i,), name=f"soak-sender-{i}", daemon=True)
            for i in range(n)
        ]

    def start(self):
        for t in self.threads:
            t.start()

    def run(self, i):
        lock, call = self.locks[i], self.loop.call_soon_threadsafe
        while True:
            self.go.wait()
            with lock:
                if self.stop:
                    return
                if not self.go.is_set():
                    continue
                for _ in range(self.burst):
                    call(self.callback, i, self.sent[i])
                    self.sent[i] += 1
            time.sleep(self.period)

    def callback(self, i, seq):
        if seq != self.received[i]:
            self.soak.fail(
                "threadsafe",
                CheckFailed(f"thread {i}: callback {seq} came when {self.received[i]} was next"),
            )
        self.received[i] = seq + 1
        self.soak.ops["threadsafe: callbacks"] += 1

    def pause(self):
        """No burst in progress and none starts until ``resume()``."""
        self.go.clear()
        for lock in self.locks:  # a burst holds its lock for ~100 us
            with lock:
                pass

    def resume(self):
        self.go.set()

    async def drained(self, timeout=SETTLE_TIMEOUT):
        """Every callback sent has run (it is called paused)."""
        deadline = time.monotonic() + timeout
        while self.received != self.sent and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        if self.received != self.sent:
            self.soak.fail(
                "threadsafe",
                CheckFailed(f"callbacks sent {self.sent}, run {self.received} after {timeout} s"),
            )

    def close(self):
        self.pause()
        self.stop = True
        self.go.set()
        for t in self.threads:
            t.join(10)


def awaiting(task):
    """Where *task* waits: its chain of coroutines, down to what the
    innermost one awaits (``Task.print_stack`` shows only the outermost)."""
    out, aw = [], task.get_coro()
    while aw is not None:
        frame = getattr(aw, "cr_frame", None) or getattr(aw, "gi_frame", None)
        if frame is None:
            out.append(f"awaiting {aw!r}"[:300])
            break
        out.append(f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}")
        aw = getattr(aw, "cr_await", None) or getattr(aw, "gi_yieldfrom", None)
    return out


def _executor_job(kind, data):
    if kind == 0:
        return hashlib.sha256(data).digest()
    if kind == 1:
        time.sleep(0.002)  # holds a worker: the pool grows to max_workers
        return len(data)
    if kind == 2:
        raise ValueError(data[:8])
    return sum(data[:256])


# --------------------------------------------------------------------------
# the soak
# --------------------------------------------------------------------------


class Soak:
    def __init__(self, loop, args):
        self.loop, self.args = loop, args
        self.ops = collections.Counter()
        self.turn = collections.Counter()  # round-robin state of the workloads
        self.bytes_checked = 0
        self.failures, self.failure_count = [], 0
        self.handler_calls, self.handler_count = [], 0
        self.warnings, self.bad_warning_count = [], 0
        self.samples = []
        # The settled gauges (fds, threads, tasks, ...) of the first
        # post-warm-up sample, which every later one must equal.
        self.baseline = None
        self.last_gauges = None
        self.stopping = False
        self.hung = False
        self.spawned = set()
        self.server_conns = 0  # server-side connections open (Served)
        self.t0 = time.monotonic()
        self.tmpdir = tempfile.mkdtemp(prefix="soak-")
        self.spool = os.path.join(self.tmpdir, "samples.jsonl")

    # ---- bookkeeping ----

    def now(self):
        return time.monotonic() - self.t0

    def fail(self, workload, exc, where=""):
        self.failure_count += 1
        self.ops[f"{workload}: failures"] += 1
        if len(self.failures) < MAX_LOGGED:
            what = f"{type(exc).__name__}: {exc}"
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-4:])
            self.failures.append(
                {"t": round(self.now(), 1), "workload": workload, "where": where, "error": what}
                | ({"traceback": tb} if exc.__traceback__ else {})
            )
            print(f"[{self.now():7.1f}s] FAILURE {workload} {where}: {what}", file=sys.stderr)

    def exception_handler(self, loop, context):
        self.handler_count += 1
        if len(self.handler_calls) < MAX_LOGGED:
            exc = context.get("exception")
            entry = {
                "t": round(self.now(), 1),
                "message": str(context.get("message")),
                "exception": repr(exc) if exc is not None else None,
                "context": {k: repr(v)[:300] for k, v in context.items() if k != "message"},
            }
            if exc is not None and exc.__traceback__ is not None:
                entry["traceback"] = "".join(traceback.format_exception(type(exc), exc, None))
            self.handler_calls.append(entry)
            print(f"[{self.now():7.1f}s] EXCEPTION HANDLER: {entry}", file=sys.stderr)

    def showwarning(self, message, category, filename, lineno, file=None, line=None):
        if (
            sys.version_info < (3, 11)
            and category is ResourceWarning
            and "sslproto._SSLProtocolTransport" in str(message)
        ):
            # 3.10's own sslproto (ferroloop uses it unchanged there) never
            # marks a server-side TLS transport closed when its peer closes:
            # stock asyncio warns once per such connection. Counted apart.
            self.ops["warnings: 3.10 sslproto unclosed transport (asyncio's)"] += 1
            return
        bad = issubclass(category, (ResourceWarning, RuntimeWarning))
        self.bad_warning_count += bad
        if len(self.warnings) < MAX_LOGGED:
            text = f"{category.__name__}: {message} ({filename}:{lineno})"
            self.warnings.append({"t": round(self.now(), 1), "warning": text, "fails": bad})
            print(f"[{self.now():7.1f}s] WARNING {text}", file=sys.stderr)

    def spawn(self, coro):
        task = self.loop.create_task(coro)
        self.spawned.add(task)
        task.add_done_callback(self.spawned.discard)

    # ---- set-up ----

    async def start_servers(self):
        import trustme  # tests/requirements.txt installs it

        ca = trustme.CA()
        cert = ca.issue_cert("localhost", HOST)
        self.server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cert.configure_cert(self.server_ctx)
        self.client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ca.configure_trust(self.client_ctx)

        loop = self.loop
        self.servers = {
            "echo": await loop.create_server(lambda: Echo(self), HOST, 0),
            "sink": await loop.create_server(lambda: Sink(self), HOST, 0),
            "tls": await loop.create_server(lambda: Echo(self), HOST, 0, ssl=self.server_ctx),
            "starttls": await loop.create_server(lambda: StartTlsEcho(self), HOST, 0),
            "http": await loop.create_server(lambda: Http(self), HOST, 0),
        }
        self.addr = {k: s.sockets[0].getsockname()[:2] for k, s in self.servers.items()}
        self.unix_path = os.path.join(self.tmpdir, "echo.sock")
        self.servers["unix"] = await loop.create_unix_server(lambda: Echo(self), self.unix_path)

    async def close_servers(self):
        for s in self.servers.values():
            s.close()
        for s in self.servers.values():
            await s.wait_closed()

    def spool_write(self, rec):
        with open(self.spool, "a") as f:  # a few kB, on the loop thread: fine
            f.write(json.dumps(rec) + "\n")

    def full_samples(self):
        """Every sample with all its fields (from the spool file)."""
        with contextlib.suppress(FileNotFoundError), open(self.spool) as f:
            return [json.loads(line) for line in f]
        return []

    # ---- workloads: each call is one iteration, run inside the gate ----

    async def close_stream(self, writer, ok):
        if ok:
            writer.close()
            await writer.wait_closed()
        else:
            writer.transport.abort()

    async def echo_streams(self, name, size, trips, unix=False):
        if unix:
            reader, writer = await asyncio.open_unix_connection(self.unix_path)
        else:
            reader, writer = await asyncio.open_connection(*self.addr["echo"])
        ok = False
        try:
            for _ in range(trips):
                sent = payload(size if size else random.randint(1, 16 * KIB))
                writer.write(sent)
                check_bytes(await reader.readexactly(len(sent)), sent, f"{name} echo")
                await writer.drain()
                self.bytes_checked += len(sent)
                self.ops[f"{name}: round trips"] += 1
            writer.write_eof()
            check_bytes(await reader.read(), b"", f"{name} after EOF")
            ok = True
        finally:
            await self.close_stream(writer, ok)

    async def echo_sock(self, size=KIB, trips=50):
        loop = self.loop
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setblocking(False)
            await loop.sock_connect(s, self.addr["echo"])
            buf = bytearray(size)
            view = memoryview(buf)
            for _ in range(trips):
                sent = payload(size)
                await loop.sock_sendall(s, sent)
                n = 0
                while n < size:
                    k = await loop.sock_recv_into(s, view[n:])
                    check(k > 0, f"sock echo: EOF after {n} of {size} bytes")
                    n += k
                check_bytes(buf, sent, "sock echo")
                self.bytes_checked += size
                self.ops["echo_sock_1KiB: round trips"] += 1
            view.release()

    async def http(self, requests=20):
        reader, writer = await asyncio.open_connection(*self.addr["http"])
        ok = False
        try:
            done = 0
            while done < requests:
                batch = []  # pipelined: 1 to 3 requests written at once
                for _ in range(min(random.randint(1, 3), requests - done)):
                    done += 1
                    conn = "close" if done == requests else "keep-alive"
                    if random.random() < 0.5:
                        n, seed = (
                            random.choice((0, 13, KIB, 16 * KIB, 64 * KIB)),
                            random.randrange(256),
                        )
                        req = f"GET /bytes/{n}/{seed} HTTP/1.1\r\nHost: soak\r\nConnection: {conn}"
                        batch.append((req.encode() + b"\r\n\r\n", http_body(n, seed)))
                    else:
                        body = payload(random.randint(0, 32 * KIB))
                        req = (
                            f"POST /echo HTTP/1.1\r\nHost: soak\r\nConnection: {conn}\r\n"
                            f"Content-Length: {len(body)}\r\n\r\n"
                        )
                        batch.append((req.encode() + body, body))
                writer.writelines([req for req, _ in batch])
                for _, expected in batch:
                    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                    check(head[0] == "HTTP/1.1 200 OK", f"http status {head[0]!r}")
                    headers = dict(line.split(": ", 1) for line in head[1:] if line)
                    length = int(headers["Content-Length"])
                    check(length == len(expected), f"http Content-Length {length}")
                    check_bytes(await reader.readexactly(length), expected, "http body")
                    self.bytes_checked += length
                    self.ops["http: requests"] += 1
            check_bytes(await reader.read(), b"", "http after Connection: close")
            ok = True
        finally:
            await self.close_stream(writer, ok)

    async def tls(self):
        self.turn["tls"] += 1
        if self.turn["tls"] % 2:
            await self.tls_direct()
        else:
            await self.tls_starttls()

    async def tls_direct(self):
        reader, writer = await asyncio.open_connection(
            *self.addr["tls"], ssl=self.client_ctx, server_hostname="localhost"
        )
        ok = False
        try:
            for _ in range(random.randint(1, 3)):
                sent = payload(random.randint(1, 64 * KIB))
                writer.write(sent)
                check_bytes(await reader.readexactly(len(sent)), sent, "tls echo")
                self.bytes_checked += len(sent)
            ok = True
        finally:
            await self.close_stream(writer, ok)
        self.ops["tls: ssl= connections"] += 1

    async def tls_starttls(self):
        loop = self.loop
        transport, proto = await loop.create_connection(
            lambda: Collector(loop), *self.addr["starttls"]
        )
        try:
            transport.write(b"STARTTLS\n")
            check_bytes(await proto.read_exactly(3), b"OK\n", "STARTTLS answer")
            transport = await loop.start_tls(
                transport, proto, self.client_ctx, server_hostname="localhost"
            )
            proto.transport = transport
            sent = payload(random.randint(1, 64 * KIB))
            transport.write(sent)
            check_bytes(await proto.read_exactly(len(sent)), sent, "start_tls echo")
            self.bytes_checked += len(sent)
            transport.close()
            await proto.closed
        finally:
            if not transport.is_closing():
                transport.abort()
        self.ops["tls: start_tls connections"] += 1

    async def timers(self, n=200):
        loop = self.loop
        pending = {}  # token -> (handle, when)
        all_fired = loop.create_future()

        def fire(token):
            handle, when = pending.pop(token, (None, None))
            if handle is None:
                self.fail("timers", CheckFailed(f"timer {token} fired after cancel() or twice"))
                return
            if loop.time() + EARLY_TIMER_TOLERANCE < when:
                self.fail("timers", CheckFailed(f"fired {when - loop.time():.4f} s early"))
            self.ops["timers: fired"] += 1
            if not pending and not all_fired.done():
                all_fired.set_result(None)

        for token in range(n):
            when = loop.time() + random.uniform(0, 0.05)
            if token % 2:
                handle = loop.call_later(when - loop.time(), fire, token)
            else:
                handle = loop.call_at(when, fire, token)
            # (uvloop's call_later of under 0.5 ms returns a plain Handle)
            pending[token] = (handle, handle.when() if hasattr(handle, "when") else when)
        self.ops["timers: created"] += n
        victims = random.sample(range(n), n // 2)
        for token in victims[: n // 4]:  # at once
            handle, _ = pending.pop(token)
            handle.cancel()
            check(handle.cancelled(), "cancelled timer not cancelled()")
            self.ops["timers: cancelled"] += 1
        await asyncio.sleep(random.uniform(0, 0.03))
        for token in victims[n // 4 :]:  # later, those that have not fired yet
            handle, _ = pending.pop(token, (None, None))
            if handle is not None:
                handle.cancel()
                self.ops["timers: cancelled"] += 1
        if pending:
            await all_fired

    async def executor(self, jobs=8):
        data = [os.urandom(random.randint(1, 4 * KIB)) for _ in range(jobs)]
        results = await asyncio.gather(
            *(self.loop.run_in_executor(None, _executor_job, i % 4, d) for i, d in enumerate(data)),
            return_exceptions=True,
        )
        for i, (d, r) in enumerate(zip(data, results)):
            if i % 4 == 2:
                check(isinstance(r, ValueError) and r.args == (d[:8],), f"executor raised {r!r}")
            elif isinstance(r, BaseException):
                raise r
            else:
                check(r == _executor_job(i % 4, d), f"executor job {i % 4} returned {r!r}")
            self.ops["executor: jobs"] += 1

    async def subprocess(self):
        pipe = asyncio.subprocess.PIPE
        proc = await asyncio.create_subprocess_exec(*CAT_CMD, stdin=pipe, stdout=pipe)
        self.turn["subprocess"] += 1
        if self.turn["subprocess"] % 4 == 0:
            # killed mid-stream: one checked chunk, then SIGKILL
            sent = payload(random.randint(1, 16 * KIB))
            proc.stdin.write(sent)
            check_bytes(await proc.stdout.readexactly(len(sent)), sent, "subprocess echo")
            proc.kill()
            proc.stdin.close()
            await proc.stdout.read()
            check(await proc.wait() == -9, f"killed child's returncode {proc.returncode}")
            self.ops["subprocess: killed"] += 1
        else:
            sent = payload(random.randint(1, 64 * KIB))
            out, _ = await proc.communicate(sent)
            check_bytes(out, sent, "subprocess echo")
            check(proc.returncode == 0, f"subprocess returncode {proc.returncode}")
        self.bytes_checked += len(sent)
        self.ops["subprocess: spawned"] += 1

    async def cancel_mid_io(self):
        """Tasks cancelled mid-I/O, one of thirteen ways in turn; whatever
        the cancellation interrupted, the connection (or child) is then used
        (checked echo) or closed cleanly."""
        variants = (
            self.cancel_stream_read,
            self.cancel_wait_for_read,
            self.cancel_sock_recv,
            self.cancel_drain,
            self.cancel_tls_connect,
            self.cancel_tls_read,
            self.cancel_sock_sendall,
            self.cancel_communicate,
            self.cancel_sock_accept,
            self.cancel_connect,
            self.cancel_tls_close,
            self.cancel_http_response,
            self.cancel_executor,
        )
        self.turn["cancel"] += 1
        await variants[self.turn["cancel"] % len(variants)]()

    async def cancelled_after(self, coro, delay):
        """Runs coro as a task, cancels it after *delay* s if not done;
        (result, True) if it finished, (None, False) if cancelled."""
        task = self.loop.create_task(coro)
        await asyncio.wait([task], timeout=delay)
        task.cancel()  # no-op once done
        try:
            return await task, True
        except asyncio.CancelledError:
            if getattr(asyncio.current_task(), "cancelling", lambda: 0)():
                raise  # this task itself is cancelled (3.11+ can tell)
            return None, False

    async def echo_check(self, reader, writer, size, what):
        sent = payload(size)
        writer.write(sent)
        check_bytes(await reader.readexactly(size), sent, what)
        self.bytes_checked += size

    async def cancel_stream_read(self):
        reader, writer = await asyncio.open_connection(*self.addr["echo"])
        ok = False
        try:
            _, finished = await self.cancelled_after(reader.read(100), random.uniform(0, 0.01))
            check(not finished, "read() returned with nothing sent")
            self.ops["cancel: stream read cancelled"] += 1
            await self.echo_check(reader, writer, 100, "echo after cancelled read")
            ok = True
        finally:
            await self.close_stream(writer, ok)

    async def cancel_wait_for_read(self):
        reader, writer = await asyncio.open_connection(*self.addr["echo"])
        ok = False
        try:
            try:
                await asyncio.wait_for(reader.readexactly(10), random.uniform(0.001, 0.01))
            except asyncio.TimeoutError:
                self.ops["cancel: wait_for read timed out"] += 1
            else:
                raise CheckFailed("readexactly() returned with nothing sent")
            await self.echo_check(reader, writer, KIB, "echo after wait_for timeout")
            ok = True
        finally:
            await self.close_stream(writer, ok)

    async def cancel_sock_recv(self):
        loop = self.loop
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setblocking(False)
            await loop.sock_connect(s, self.addr["echo"])
            _, finished = await self.cancelled_after(
                loop.sock_recv(s, 100), random.uniform(0, 0.01)
            )
            check(not finished, "sock_recv() returned with nothing sent")
            self.ops["cancel: sock_recv cancelled"] += 1
            sent = payload(100)
            await loop.sock_sendall(s, sent)
            got = b""
            while len(got) < len(sent):
                chunk = await loop.sock_recv(s, 100)
                check(chunk, "sock echo: EOF")
                got += chunk
            check_bytes(got, sent, "sock echo after cancelled sock_recv")
            self.bytes_checked += len(sent)

    async def cancel_drain(self):
        # A sink that reads nothing for 100 ms: drain() waits, is cancelled,
        # and the connection is aborted with its unsent data.
        _, writer = await asyncio.open_connection(*self.addr["sink"])
        try:
            # a small send buffer: the kernel cannot take the whole payload
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
            writer.write(PAYLOAD)
            _, finished = await self.cancelled_after(writer.drain(), random.uniform(0, 0.02))
            self.ops[f"cancel: drain {'finished' if finished else 'cancelled'}"] += 1
        finally:
            writer.transport.abort()
        with contextlib.suppress(ConnectionError):  # abort() may pass one on
            await writer.wait_closed()

    async def cancel_tls_connect(self):
        # Cancelled during connect or the TLS handshake (or not at all).
        opened, finished = await self.cancelled_after(
            asyncio.open_connection(
                *self.addr["tls"], ssl=self.client_ctx, server_hostname="localhost"
            ),
            random.uniform(0, 0.005),
        )
        self.ops[f"cancel: tls connect {'finished' if finished else 'cancelled'}"] += 1
        if finished:
            reader, writer = opened
            ok = False
            try:
                await self.echo_check(reader, writer, KIB, "tls echo")
                ok = True
            finally:
                await self.close_stream(writer, ok)

    async def cancel_tls_read(self):
        reader, writer = await asyncio.open_connection(
            *self.addr["tls"], ssl=self.client_ctx, server_hostname="localhost"
        )
        ok = False
        try:
            _, finished = await self.cancelled_after(reader.read(100), random.uniform(0, 0.01))
            check(not finished, "tls read() returned with nothing sent")
            self.ops["cancel: tls read cancelled"] += 1
            await self.echo_check(reader, writer, KIB, "tls echo after cancelled read")
            ok = True
        finally:
            await self.close_stream(writer, ok)

    async def cancel_sock_sendall(self):
        # To the sink (reads nothing for 100 ms) through a small send buffer.
        loop = self.loop
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setblocking(False)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
            await loop.sock_connect(s, self.addr["sink"])
            _, finished = await self.cancelled_after(
                loop.sock_sendall(s, PAYLOAD), random.uniform(0, 0.02)
            )
            self.ops[f"cancel: sock_sendall {'finished' if finished else 'cancelled'}"] += 1

    async def cancel_communicate(self):
        # communicate() of 1 MiB with cat, cancelled; then stdin is closed
        # (what was written of it is flushed), stdout read to EOF and cat
        # must exit 0. (Not kill(): when the child has just exited,
        # Popen.send_signal() reaps it, and asyncio's 3.11 child watcher
        # then logs "Unknown child process" and reports 255.)
        pipe = asyncio.subprocess.PIPE
        proc = await asyncio.create_subprocess_exec(*CAT_CMD, stdin=pipe, stdout=pipe)
        out, finished = await self.cancelled_after(
            proc.communicate(PAYLOAD), random.uniform(0, 0.01)
        )
        if finished:
            check_bytes(out[0], PAYLOAD, "communicate() echo")
            self.bytes_checked += len(PAYLOAD)
        else:
            proc.stdin.close()
            await proc.stdout.read()
        returncode = await proc.wait()
        check(returncode == 0, f"child's returncode {returncode}")
        self.ops[f"cancel: communicate {'finished' if finished else 'cancelled'}"] += 1

    async def cancel_sock_accept(self):
        # sock_accept() with no client, cancelled; then a real accept.
        loop = self.loop
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as ls:
            ls.bind((HOST, 0))
            ls.listen()
            ls.setblocking(False)
            _, finished = await self.cancelled_after(loop.sock_accept(ls), random.uniform(0, 0.005))
            check(not finished, "sock_accept() returned with no client")
            self.ops["cancel: sock_accept cancelled"] += 1
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as c:
                c.setblocking(False)
                accept = loop.create_task(loop.sock_accept(ls))
                await loop.sock_connect(c, ls.getsockname())
                conn, _ = await accept
                with conn:
                    sent = payload(100)
                    await loop.sock_sendall(c, sent)
                    got = b""
                    while len(got) < len(sent):
                        chunk = await loop.sock_recv(conn, 100)
                        check(chunk, "EOF on the accepted socket")
                        got += chunk
                    check_bytes(got, sent, "accepted socket")
                    self.bytes_checked += len(sent)

    async def cancel_connect(self):
        opened, finished = await self.cancelled_after(
            asyncio.open_connection(*self.addr["echo"]), random.uniform(0, 0.001)
        )
        self.ops[f"cancel: connect {'finished' if finished else 'cancelled'}"] += 1
        if finished:
            reader, writer = opened
            ok = False
            try:
                await self.echo_check(reader, writer, 100, "echo")
                ok = True
            finally:
                await self.close_stream(writer, ok)

    async def cancel_tls_close(self):
        # wait_closed() cancelled during the TLS shutdown; aborted then.
        reader, writer = await asyncio.open_connection(
            *self.addr["tls"], ssl=self.client_ctx, server_hostname="localhost"
        )
        try:
            await self.echo_check(reader, writer, KIB, "tls echo")
        finally:
            writer.close()
        _, finished = await self.cancelled_after(writer.wait_closed(), random.uniform(0, 0.003))
        if not finished:
            writer.transport.abort()
        self.ops[f"cancel: tls wait_closed {'finished' if finished else 'cancelled'}"] += 1

    async def cancel_http_response(self):
        # A read cancelled in the middle of a 64 KiB response; aborted then.
        reader, writer = await asyncio.open_connection(*self.addr["http"])
        try:
            writer.write(b"GET /bytes/65536/7 HTTP/1.1\r\nHost: soak\r\n\r\n")
            _, finished = await self.cancelled_after(
                reader.readexactly(MIB), random.uniform(0, 0.003)
            )
            check(not finished, "read more than the server sent")
            self.ops["cancel: http response read cancelled"] += 1
        finally:
            writer.transport.abort()

    async def cancel_executor(self):
        async def job():
            return await self.loop.run_in_executor(None, time.sleep, 0.005)

        _, finished = await self.cancelled_after(job(), random.uniform(0, 0.01))
        self.ops[f"cancel: executor {'finished' if finished else 'cancelled'}"] += 1

    def workloads(self):
        """(name, iteration, pause between iterations in s): the load."""
        w = [
            ("echo_1B", lambda: self.echo_streams("echo_1B", 1, 200), 0.05),
            ("echo_1KiB", lambda: self.echo_streams("echo_1KiB", KIB, 100), 0.05),
            ("echo_64KiB", lambda: self.echo_streams("echo_64KiB", 64 * KIB, 20), 0.05),
            ("echo_1MiB", lambda: self.echo_streams("echo_1MiB", MIB, 4), 0.1),
            ("echo_unix", lambda: self.echo_streams("echo_unix", 0, 50, unix=True), 0.05),
            ("echo_sock_1KiB", self.echo_sock, 0.05),
            *((f"http_{i}", self.http, 0.02) for i in range(4)),
            *((f"tls_{i}", self.tls, 0.05) for i in range(2)),
            ("timers", self.timers, 0.01),
            ("executor", self.executor, 0.01),
            *((f"subprocess_{i}", self.subprocess, 0.1) for i in range(2)),
            *((f"cancel_{i}", self.cancel_mid_io, 0.01) for i in range(3)),
        ]
        return w

    async def worker(self, name, iteration, pause):
        while not self.stopping:
            async with self.gate.op(name):
                if self.stopping:
                    break
                try:
                    await iteration()
                except asyncio.CancelledError:
                    if not self.stopping:
                        self.fail(name, CheckFailed("worker cancelled"))
                    raise
                except Exception as exc:  # noqa: BLE001 - reported as the run's failure
                    self.fail(name, exc)
                else:
                    self.ops[f"{name.rstrip('_0123456789')}: iterations"] += 1
            await asyncio.sleep(pause * random.uniform(0.5, 1.5))

    # ---- sampling ----

    def gauges(self):
        """What must come back to the baseline at each quiescent point."""
        st = loop_stats(self.loop)
        g = {
            "fds": len(open_fds()),
            "threads": threading.active_count(),
            "os_threads": os_threads(),
            "tasks": len(asyncio.all_tasks(self.loop)),
        }
        if st is not None:
            g["loop_tasks_alive"] = st["tasks_alive"]
            g["loop_transports_open"] = st["transports_open"]
        return g, st

    async def settle(self):
        """The gauges once steady: garbage collected, and equal to the
        baseline, or (before there is one) equal over three reads 50 ms
        apart; SETTLE_TIMEOUT at most (a closing fd, an exiting thread).
        A deviation the previous sample already had (so already a failure)
        is taken once steady, so that it does not cost every later sample
        SETTLE_TIMEOUT of paused load."""
        deadline = time.monotonic() + SETTLE_TIMEOUT
        same = 0
        prev = None
        while True:
            gc.collect()
            g, st = self.gauges()
            same = same + 1 if g == prev else 0
            if g == self.baseline:
                return g, st
            if same >= 2 and (self.baseline is None or g == self.last_gauges):
                return g, st
            if time.monotonic() > deadline:
                return g, st
            prev = g
            await asyncio.sleep(0.05)

    async def quiesce(self):
        self.gate.opened.clear()
        self.senders.pause()
        try:
            await asyncio.wait_for(self.gate.idle.wait(), QUIESCE_TIMEOUT)
        except asyncio.TimeoutError:
            stacks = io.StringIO()
            for task, name in self.gate.busy.items():
                print(f"--- {name}:", file=stacks)
                for line in awaiting(task):
                    print(f"  {line}", file=stacks)
            self.fail(
                "soak",
                CheckFailed(
                    f"HANG: {sorted(self.gate.busy.values())} still in flight after "
                    f"{QUIESCE_TIMEOUT:.0f} s\n{stacks.getvalue()}"
                ),
            )
            return False
        # The server side of every connection closed too (a peer's EOF is
        # read a moment after the client's close; the sink waits 100 ms).
        deadline = time.monotonic() + QUIESCE_TIMEOUT
        while self.server_conns and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        if self.server_conns:
            self.fail(
                "soak",
                CheckFailed(
                    f"{self.server_conns} server-side connections still open "
                    f"{QUIESCE_TIMEOUT:.0f} s after their clients were done"
                ),
            )
        await self.senders.drained()
        return True

    async def sample(self, t):
        """The sample due at *t* s (its nominal time: a loop may wake the
        sampler a fraction of a ms early)."""
        start = self.now()
        if not await self.quiesce():
            return False
        quiet = self.now()
        gauges, st = await self.settle()
        self.last_gauges = gauges
        table = open_fds()
        rec = {
            "t": round(t, 2),
            "t_actual": round(start, 3),
            "post_warmup": t >= self.args.warmup,
            "rss": rss_bytes(),
            "rss_trimmed": (MALLOC_TRIM(), rss_bytes())[1] if MALLOC_TRIM else None,
            "cpu_s": round(cpu_seconds(), 2),
            **gauges,
            "fd_kinds": fd_kinds(table),
            "quiesce_s": round(quiet - start, 3),
            "server_conns": self.server_conns,
            "settle_s": round(self.now() - quiet, 3),
            "py_objects": len(gc.get_objects()),
            "allocated_blocks": sys.getallocatedblocks(),
            "bytes_checked": self.bytes_checked,
            "ops": dict(self.ops),
            "handler_calls": self.handler_count,
            "failures": self.failure_count,
            "loop_stats": st,
        }
        if rec["post_warmup"] and self.baseline is None:
            self.baseline = gauges
            self.baseline_fds = table
        elif rec["post_warmup"] and gauges != self.baseline:
            base = set(self.baseline_fds.items())
            rec["fds_new"] = sorted(f"{fd} {link}" for fd, link in table.items() - base)
            rec["fds_gone"] = sorted(f"{fd} {link}" for fd, link in base - table.items())
        # In memory only what the checks need (the full samples of a long
        # run would grow the RSS under test): the rest goes to a file.
        self.samples.append(
            {k: rec[k] for k in ("t", "post_warmup", "rss", "rss_trimmed", "cpu_s")}
        )
        self.samples[-1].update(gauges)
        self.spool_write(rec)
        trimmed = f" ({rec['rss_trimmed'] / MIB:.1f} trimmed)" if MALLOC_TRIM else ""
        print(
            f"[{t:7.1f}s] rss {rec['rss'] / MIB:.1f}{trimmed} MiB  fds {rec['fds']}  threads "
            f"{rec['threads']}/{rec['os_threads']}  tasks {rec['tasks']}  checked "
            f"{self.bytes_checked / MIB:9.1f} MiB  failures {self.failure_count}  handler "
            f"{self.handler_count}  cpu {rec['cpu_s']:.0f} s"
            f"{'' if rec['post_warmup'] else '  (warm-up)'}",
            file=sys.stderr,
        )
        self.gate.opened.set()
        self.senders.resume()
        return True

    async def run(self):
        loop = self.loop
        await self.start_servers()
        self.gate = Gate()
        self.senders = Senders(self)
        workers = [
            loop.create_task(self.worker(name, it, pause), name=f"soak-{name}")
            for name, it, pause in self.workloads()
        ]
        self.senders.start()
        interval, hang_guard = self.args.interval, 3 * self.args.interval + 2 * QUIESCE_TIMEOUT
        faulthandler.dump_traceback_later(hang_guard, exit=True)
        try:
            k = 1
            while k * interval <= self.args.duration + 1e-6:
                await asyncio.sleep(max(0.0, k * interval - self.now()))
                if not await self.sample(k * interval):
                    self.hung = True
                    break
                faulthandler.dump_traceback_later(hang_guard, exit=True)
                k += 1
        finally:
            self.stopping = True
            self.gate.opened.set()
            if not self.hung:
                await asyncio.wait_for(self.gate.idle.wait(), QUIESCE_TIMEOUT)
            self.senders.close()
            if not self.hung:
                await self.senders.drained()
            for w in workers:
                w.cancel()
            await asyncio.wait(workers, timeout=10)
            await asyncio.wait_for(self.close_servers(), 30)
            faulthandler.cancel_dump_traceback_later()

    # ---- verdict ----

    def verdict(self):
        """[(name, ok, detail)]: the acceptance checks."""
        post = [s for s in self.samples if s["post_warmup"]]
        checks = []
        checks.append(
            (
                "samples",
                len(post) >= BASELINE_SAMPLES and not self.hung,
                f"{len(self.samples)} samples, {len(post)} after the warm-up"
                + (" (stopped: hang)" if self.hung else ""),
            )
        )
        if post:
            base, worst = rss_deviation(post, RSS_KEY)
            raw = ""
            if RSS_KEY != "rss":
                raw_base, raw_worst = rss_deviation(post, "rss")
                raw = (
                    f"; VmRSS untrimmed (not checked): baseline {raw_base / MIB:.1f} MiB, "
                    f"max deviation {raw_worst * 100:+.2f} %, end {post[-1]['rss'] / MIB:.1f} MiB"
                )
            checks.append(
                (
                    "rss",
                    abs(worst) <= RSS_TOLERANCE,
                    (
                        f"{RSS_KEY}: baseline {base / MIB:.1f} MiB, max deviation "
                        f"{worst * 100:+.2f} % (limit +-{RSS_TOLERANCE * 100:.0f} %), end "
                        f"{post[-1][RSS_KEY] / MIB:.1f} MiB{raw}"
                    ),
                )
            )
            for key in self.baseline:
                vals = [s[key] for s in post]
                checks.append(
                    (
                        key,
                        all(v == vals[0] for v in vals),
                        (
                            f"{vals[0]} at the first post-warm-up sample, min {min(vals)}, "
                            f"max {max(vals)}, end {vals[-1]} (must stay equal)"
                        ),
                    )
                )
        checks.append(
            (
                "exception handler",
                self.handler_count == 0,
                f"{self.handler_count} calls (the workloads cause none)",
            )
        )
        checks.append(
            (
                "warnings",
                self.bad_warning_count == 0,
                (
                    f"{self.bad_warning_count} ResourceWarning/RuntimeWarning, "
                    f"{len(self.warnings)} warnings logged"
                ),
            )
        )
        checks.append(
            (
                "workload checks",
                self.failure_count == 0,
                f"{self.failure_count} failures; {self.bytes_checked:,} bytes echoed and checked",
            )
        )
        idle = [
            name
            for name in {n.rstrip("_0123456789") for n, _, _ in self.workloads()}
            if not self.ops[f"{name}: iterations"]
        ]
        checks.append(("every workload ran", not idle, f"never completed: {idle}" if idle else ""))
        return checks


def rss_deviation(post, key):
    """The baseline (median of the first BASELINE_SAMPLES post-warm-up
    samples of *key*) and the largest relative deviation from it."""
    base = statistics.median(s[key] for s in post[:BASELINE_SAMPLES])
    return base, max((s[key] / base - 1 for s in post), key=abs)


# --------------------------------------------------------------------------
# chart and report
# --------------------------------------------------------------------------


def write_chart(path, loop_name, doc, command):
    try:
        import matplotlib
    except ImportError:
        print("note: --chart needs matplotlib (pip install matplotlib); no chart", file=sys.stderr)
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples, warmup = doc["samples"], doc["args"]["warmup"]
    minutes = doc["args"]["duration"] >= 600
    scale = 60 if minutes else 1
    ts = [s["t"] / scale for s in samples]
    color = COLORS.get(loop_name, "#dd8452")
    rows = [
        ("RSS (MiB)", [s[RSS_KEY] / MIB for s in samples]),
        ("open fds", [s["fds"] for s in samples]),
        ("threads (Python)", [s["threads"] for s in samples]),
        ("live tasks", [s["tasks"] for s in samples]),
    ]
    fig, axes = plt.subplots(
        len(rows),
        1,
        figsize=(8, 9),
        dpi=120,
        sharex=True,
        gridspec_kw={"height_ratios": [2, 1, 1, 1]},
    )
    for ax, (label, ys) in zip(axes, rows):
        ax.axvspan(0, warmup / scale, color="#eeeeee", label="warm-up")
        ax.plot(ts, ys, marker=".", markersize=3, color=color, linewidth=1, label=loop_name)
        ax.set_ylabel(label, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if label.startswith("RSS") and doc["rss_baseline"]:
            if RSS_KEY != "rss":
                ax.lines[-1].set_label(f"{loop_name}, after malloc_trim (checked)")
                raw = [s["rss"] / MIB for s in samples]
                ax.plot(ts, raw, color=color, alpha=0.35, linewidth=1, label="VmRSS untrimmed")
                ys = ys + raw
            base = doc["rss_baseline"] / MIB
            ax.axhline(base, color="black", linewidth=0.6, label="baseline")
            ax.axhspan(
                base * (1 - RSS_TOLERANCE),
                base * (1 + RSS_TOLERANCE),
                color="green",
                alpha=0.08,
                label=f"+-{RSS_TOLERANCE * 100:.0f} %",
            )
            lo, hi = min(ys + [base * 0.94]), max(ys + [base * 1.06])
            ax.set_ylim(lo - 0.02 * base, hi + 0.02 * base)
            ax.legend(fontsize=6, loc="lower right", ncol=2)
        else:
            lo, hi = min(ys), max(ys)
            ax.set_ylim(lo - 1 - 0.1 * (hi - lo), hi + 1 + 0.1 * (hi - lo))
    axes[-1].set_xlabel("minutes" if minutes else "seconds", fontsize=8)
    machine = (
        f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}"
    )
    verdict = "PASS" if doc["passed"] else "FAIL"
    title = f"soak (benches/soak.py): {doc['version']}, {verdict}"
    subtitle = f"{time.strftime('%Y-%m-%d')}, {machine}: {command}"
    chars = int(fig.get_figwidth() * 13)
    axes[0].set_title("\n".join([title, *textwrap.wrap(subtitle, chars)]), fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    print(f"chart: {path}", file=sys.stderr)


def summary(soak, doc, checks):
    post = [s for s in doc["samples"] if s["post_warmup"]]
    args = doc["args"]
    lines = [
        (
            f"soak: {doc['version']} ({doc['loop_class']}); {platform.machine()}, "
            f"{os.cpu_count()} CPUs, CPython {platform.python_version()}; {args['duration']:g} s, "
            f"warm-up {args['warmup']:g} s, a sample every {args['interval']:g} s"
        ),
        "",
    ]
    if post:
        first, last = post[0], post[-1]
        lines.append(f"{'':22}{'first post-warm-up':>20}{'end':>12}")
        for key, name in (("rss_trimmed", "RSS MiB trimmed"), ("rss", "RSS MiB")):
            if first[key] is not None:
                lines.append(f"{name:22}{first[key] / MIB:>20.1f}{last[key] / MIB:>12.1f}")
        for key in ("fds", "threads", "os_threads", "tasks", *doc["loop_gauges"]):
            lines.append(f"{key:22}{first[key]:>20}{last[key]:>12}")
        lines.append("")
    lines.append(f"bytes echoed and checked: {soak.bytes_checked:,}")
    lines.append(f"exception handler calls: {soak.handler_count}")
    lines.append(f"CPU time: {doc['samples'][-1]['cpu_s'] if doc['samples'] else 0:.0f} s")
    lines.append("operations:")
    lines += [f"  {k:38}{v:>14,}" for k, v in sorted(soak.ops.items())]
    lines.append("checks:")
    lines += [f"  {'PASS' if ok else 'FAIL'} {name}: {detail}" for name, ok, detail in checks]
    for f in soak.failures:
        lines.append(f"failure at {f['t']} s, {f['workload']} {f['where']}: {f['error']}")
        if "traceback" in f:
            lines.append(textwrap.indent(f["traceback"].rstrip(), "    "))
    for h in soak.handler_calls:
        lines.append(f"exception handler at {h['t']} s: {h['message']} {h['exception']}")
    for w in soak.warnings:
        lines.append(f"warning at {w['t']} s: {w['warning']}")
    lines.append(f"result: {'PASS' if doc['passed'] else 'FAIL'}")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--loop", choices=LOOPS, default="ferroloop")
    p.add_argument("--duration", type=float, default=1800, help="seconds (default 1800)")
    p.add_argument("--interval", type=float, default=10, help="seconds between samples")
    p.add_argument(
        "--warmup", type=float, help="seconds before the checks start (default 20 %%, >= 15 s)"
    )
    p.add_argument("--json", metavar="PATH", help="write the samples and counters here")
    p.add_argument("--chart", metavar="PNG", help="draw RSS, fds, threads and tasks (matplotlib)")
    p.add_argument("--seed", type=int, help="random seed (default: random)")
    args = p.parse_args()
    if args.warmup is None:
        args.warmup = max(15.0, 0.2 * args.duration)
    if args.seed is None:
        args.seed = random.randrange(1 << 32)
    random.seed(args.seed)
    if args.interval <= 0 or args.duration < args.warmup + (BASELINE_SAMPLES - 1) * args.interval:
        p.error(f"--duration must leave {BASELINE_SAMPLES} samples after --warmup")
    if not os.path.isdir("/proc/self/fd"):
        sys.exit("soak.py reads /proc/self: Linux only")

    warnings.simplefilter("always", ResourceWarning)
    # What a loop of this kind sets up once per process (uvloop: libuv's
    # signal pipe) is not the run's: made and freed before counting.
    new_loop(args.loop).close()
    gc.collect()
    before_fds, before_threads = len(open_fds()), threading.active_count()
    loop = new_loop(args.loop)
    asyncio.set_event_loop(loop)
    soak = Soak(loop, args)
    loop.set_exception_handler(soak.exception_handler)
    warnings.showwarning = soak.showwarning
    loop_class = f"{type(loop).__module__}.{type(loop).__qualname__}"
    try:
        loop.run_until_complete(soak.run())
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    gc.collect()
    # Everything the run opened is closed with the loop: fds and threads
    # as before the loop was made.
    after_fds, after_threads = len(open_fds()), threading.active_count()

    checks = soak.verdict()
    checks.append(
        (
            "closed",
            after_fds == before_fds and after_threads == before_threads,
            (
                f"after loop.close(): fds {after_fds} (before the loop {before_fds}), "
                f"threads {after_threads} (before {before_threads})"
            ),
        )
    )
    post = [s for s in soak.samples if s["post_warmup"]]
    doc_extra = {
        "version": version(args.loop),
        "loop_class": loop_class,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": "python3 " + " ".join(sys.argv),
        "rss_checked": RSS_KEY,
        "rss_baseline": rss_deviation(post, RSS_KEY)[0] if post else None,
        "loop_gauges": [k for k in (soak.baseline or {}) if k.startswith("loop_")],
        "checks": [{"name": n, "passed": ok, "detail": d} for n, ok, d in checks],
        "passed": all(ok for _, ok, _ in checks),
        "bytes_checked": soak.bytes_checked,
        "ops": dict(sorted(soak.ops.items())),
        "failures": soak.failures,
        "failure_count": soak.failure_count,
        "handler_calls": soak.handler_calls,
        "handler_count": soak.handler_count,
        "warnings": soak.warnings,
    }
    samples = soak.full_samples()
    shutil.rmtree(soak.tmpdir, ignore_errors=True)
    doc = {"args": vars(args), "samples": samples, **doc_extra}
    print(summary(soak, doc, checks))
    if args.json:
        # benches/_report.py's layout: args, results (the samples), errors, extras.
        save_json(args.json, args, samples, {}, **doc_extra)
    if args.chart:
        write_chart(args.chart, args.loop, doc, doc["command"])
    sys.exit(0 if doc["passed"] else 1)


if __name__ == "__main__":
    main()
