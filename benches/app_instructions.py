"""Instructions per asyncpg query and per FastAPI request on asyncio, uvloop
and ferroloop, counted exactly by valgrind's callgrind: what the loop's own
code costs inside a real application, and the most any loop could gain.

    python3 benches/app_instructions.py [--only asyncpg_select1,...] [--loops ...]
                                        [--n1 N] [--n2 N] [--markdown] [--json PATH]

Why: on this shared 2-CPU machine a wall-clock sample of benches/db/run.py or
benches/fastapi/run.py swings by 25% from one run to the next, more than the
difference between two fast loops. Instructions do not swing.

How: each workload runs twice per loop in a fresh process under
``valgrind --tool=callgrind``, with N1 and N2 queries (requests). The
difference of the two totals of the process's main thread (the loop's),
divided by N2 - N1, is the cost of one query (request): start-up, imports,
connecting (asyncpg's SCRAM authentication) and shutdown cancel out.

- ``asyncpg_select1`` / ``asyncpg_rows1000``: the client of benches/db/run.py
  (a pool of 10 connections, 10 tasks, ``SELECT 1`` / 1,000 rows) against a
  server that scripts/postgres.py starts and stops; the client is measured.
- ``fastapi_json``: the server of benches/fastapi/run.py (uvicorn's command
  line, httptools, GET /json of tests/apps/fastapi_app.py) is measured; 10
  keep-alive connections from a client outside valgrind send the requests.

Reported per loop: the instructions per query (request), the part in the
loop's own shared object (uvloop's ``loop.so``, ferroloop's ``_ferroloop``;
asyncio's loop is Python and is counted in libpython), in libpython and in
libc; the ratio uvloop / this loop (> 1.00x: fewer instructions than
uvloop); and ``bound``: uvloop's total over uvloop's total without its
loop's object and without all of libc (generous: libc also holds the
application's memcpy/memset), the ratio to uvloop a loop whose own code cost
nothing could reach. It is an upper bound on user space alone: the kernel's
work (send, recv, epoll: the same calls for every loop) is not counted here,
and it only lowers the bound further. Takes about 15 minutes.
"""

import argparse
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections import Counter

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(1, HERE)
from _report import csv, render, version


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, os.path.join(HERE, path))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


db = _load("db_run", "db/run.py")  # the asyncpg client and server helpers
web = _load("fastapi_run", "fastapi/run.py")  # uvicorn's command line per loop

WORKLOADS = ("asyncpg_select1", "asyncpg_rows1000", "fastapi_json")
LOOPS = ("asyncio", "uvloop", "ferroloop")
LOOP_OBJECT = {"uvloop": "loop.cpython", "ferroloop": "_ferroloop.cpython"}
HTTP_CONNECTIONS = 10


# -- the measured processes ---------------------------------------------------


async def _queries(bench, server, n):
    """n queries of `bench` from 10 tasks over a 10-connection pool."""
    import asyncio

    import asyncpg

    method, query = db.QUERIES[bench]
    pool = await asyncpg.create_pool(**db.pool_kwargs(server))
    left = n

    async def client():
        nonlocal left
        while left > 0:
            left -= 1
            await getattr(pool, method)(query)

    await asyncio.gather(*(client() for _ in range(db.TASKS)))
    await pool.close()


def query_worker(bench, loop_name, server_file, n):
    with open(server_file) as f:
        server = json.load(f)
    loop = db.new_loop(loop_name)
    try:
        loop.run_until_complete(_queries(bench, server, n))
    finally:
        loop.close()


def http_requests(port, n):
    """n GET /json over HTTP_CONNECTIONS keep-alive connections, each waiting
    for its response before the next request."""
    request = f"GET {web.PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    errors = []

    def connection(count):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
                for _ in range(count):
                    s.sendall(request)
                    buf = b""
                    while b"\r\n\r\n" not in buf:
                        buf += _recv(s)
                    head, body = buf.split(b"\r\n\r\n", 1)
                    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
                    while len(body) < length:
                        body += _recv(s)
                    if not head.startswith(b"HTTP/1.1 200") or json.loads(body) != web.BODY:
                        raise AssertionError(f"bad response {head[:40]!r}")
        except Exception as e:  # noqa: BLE001 (reported by the caller)
            errors.append(e)

    threads = [
        threading.Thread(target=connection, args=(n // HTTP_CONNECTIONS,))
        for _ in range(HTTP_CONNECTIONS)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"HTTP client: {errors[0]!r}")


def _recv(s):
    data = s.recv(65536)
    if not data:
        raise ConnectionError("server closed the connection")
    return data


# -- callgrind ----------------------------------------------------------------


def callgrind(cmd, run, outdir):
    """Runs `cmd` under callgrind while `run(process)` drives it; the main
    thread's instructions per shared object."""
    out = os.path.join(outdir, "cg.out")
    for name in os.listdir(outdir):
        os.unlink(os.path.join(outdir, name))
    vg = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        "--separate-threads=yes",
        *cmd,
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONASYNCIODEBUG", "PYTHONDEVMODE")}
    p = subprocess.Popen(vg, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        run(p)
        _, err = p.communicate(timeout=1800)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    if p.returncode != 0:
        raise RuntimeError(f"exit {p.returncode}: {err.decode(errors='replace')[-800:]}")
    return by_object(out + "-01")  # thread 1: the main thread


def by_object(path):
    """Instructions per shared object (basename) in one callgrind output."""
    text = subprocess.run(
        ["callgrind_annotate", "--threshold=100", path],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    objects = Counter()
    for line in text.splitlines():
        m = re.match(r"\s*([\d,]+) \(.*?\)\s+.*\[(.*)\]\s*$", line)
        if m:
            objects[os.path.basename(m.group(2))] += int(m.group(1).replace(",", ""))
    return objects


def measure_queries(bench, loop, n, server_file, outdir):
    cmd = [sys.executable, __file__, "--worker", bench, loop, server_file, str(n)]
    return callgrind(cmd, lambda p: None, outdir)


def measure_requests(loop, n, outdir):
    port = web.free_port()

    def drive(p):
        web.wait_listening(p, port, 300, poll=0.2)  # imports under valgrind are slow
        http_requests(port, n)
        p.send_signal(2)  # SIGINT: uvicorn shuts down and callgrind writes out

    return callgrind(web.uvicorn_command(loop, "httptools", port), drive, outdir)


def per_unit(loop, first, second, n1, n2):
    """Per query (request): total, loop object, libpython, libc."""

    def part(prefix):
        return sum(
            (second[o] - first[o]) for o in set(first) | set(second) if o.startswith(prefix)
        ) / (n2 - n1)

    total = (sum(second.values()) - sum(first.values())) / (n2 - n1)
    own = part(LOOP_OBJECT[loop]) if loop in LOOP_OBJECT else 0.0
    return {"total": total, "loop": own, "libpython": part("libpython"), "libc": part("libc.so")}


# -- report -------------------------------------------------------------------


def table(results, workloads, loops, markdown):
    head = ["workload", "loop", "instr/unit", "loop's own", "libpython", "libc", "vs uvloop"]
    head.append("bound vs uvloop")
    rows = []
    for w in workloads:
        uv = results[w].get("uvloop")
        bound = f"{uv['total'] / (uv['total'] - uv['loop'] - uv['libc']):.2f}x" if uv else "-"
        for lp in loops:
            r = results[w].get(lp)
            if r is None:
                rows.append([w, lp, "failed", "", "", "", "", ""])
                continue
            ratio = f"{uv['total'] / r['total']:.2f}x" if uv else "-"
            rows.append(
                [w, lp]
                + [f"{r[k]:,.0f}" for k in ("total", "loop", "libpython", "libc")]
                + [ratio, bound if lp == "uvloop" else ""]
            )
    return render(head, rows, markdown, left=2)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", type=lambda s: csv(s, WORKLOADS), default=list(WORKLOADS))
    ap.add_argument("--loops", type=lambda s: csv(s, LOOPS), default=list(LOOPS))
    ap.add_argument("--n1", type=int, default=500, help="queries (requests) of the first run")
    ap.add_argument("--n2", type=int, default=2500, help="... of the second run")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind not found (Debian/Ubuntu: apt-get install valgrind)")
    if args.n2 <= args.n1 or args.n1 % HTTP_CONNECTIONS or args.n2 % HTTP_CONNECTIONS:
        sys.exit(f"need n2 > n1, both multiples of {HTTP_CONNECTIONS}")
    outdir = tempfile.mkdtemp(prefix="ferroloop-appinstr-")
    base = db.start_server() if any(w.startswith("asyncpg") for w in args.only) else None
    results = {w: {} for w in args.only}
    failed = False
    try:
        for w in args.only:
            for lp in args.loops:
                try:
                    if w.startswith("asyncpg_"):
                        bench = w.removeprefix("asyncpg_")
                        server_file = os.path.join(base, "server.json")
                        runs = [
                            measure_queries(bench, lp, n, server_file, outdir)
                            for n in (args.n1, args.n2)
                        ]
                    else:
                        runs = [measure_requests(lp, n, outdir) for n in (args.n1, args.n2)]
                except (RuntimeError, web.SampleError, subprocess.SubprocessError, OSError) as e:
                    print(f"{w} {lp}: {e}", file=sys.stderr)
                    failed = True
                    continue
                results[w][lp] = per_unit(lp, *runs, args.n1, args.n2)
                print(f"{w} {lp}: {results[w][lp]['total']:,.0f} instructions", file=sys.stderr)
    finally:
        if base:
            db.stop_server(base)
        shutil.rmtree(outdir, ignore_errors=True)
    print(", ".join(version(lp) for lp in args.loops))
    print(f"callgrind, main thread, ({args.n2} - {args.n1}) units; unit: a query or a request")
    print(table(results, args.only, args.loops, args.markdown))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"n1": args.n1, "n2": args.n2, "results": results}, f, indent=1)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        query_worker(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    else:
        main()
