"""asyncpg throughput on a real PostgreSQL server: asyncio vs uvloop vs ferroloop.

    python3 benches/db/run.py [--rounds N] [--duration S] [--only name,...]
                              [--loops ...] [--markdown] [--json PATH]

Starts a throwaway server with scripts/postgres.py (Debian's package; the
script installs it when missing, as root) and stops it at the end. Every
sample is a fresh process: a pool of 10 connections over TCP to 127.0.0.1,
with 10 tasks sending queries back to back for ``--duration`` seconds after a
warm-up; the rate is queries per second. Benchmarks:

- ``select1``: ``SELECT 1`` (``fetchval``): the loop's round trip per query;
- ``rows1000``: ``fetch`` of 1,000 rows of two columns (an int and a text):
  the loop's reads of ~30 kB per query, and asyncpg's decoding.

Within each round every benchmark runs once per loop, the loop order
rotating each round. Reports medians, min, max, IQR and the ratios of
medians to uvloop and asyncio (> 1.00x: faster). With two or more CPUs the
server (and every backend it forks) is pinned to the last CPU and the client
to the first (``--no-pin``: both float), so the server's work does not share
the client loop's CPU.
"""

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(1, os.path.dirname(HERE))
from _report import add_chart_arg, chart, csv, render, save_json, stats, version

BENCHES = ("select1", "rows1000")
LOOPS = ("asyncio", "uvloop", "ferroloop")
QUERIES = {
    "select1": ("fetchval", "SELECT 1"),
    "rows1000": ("fetch", "SELECT g, 'label ' || g::text FROM generate_series(1, 1000) g"),
}
CONNECTIONS = TASKS = 10
POSTGRES = os.path.join(ROOT, "scripts", "postgres.py")


def new_loop(name):
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    if name == "ferroloop":
        import ferroloop

        return ferroloop.new_event_loop()
    return asyncio.SelectorEventLoop()


def pool_kwargs(server):
    """asyncpg.create_pool() arguments for the server scripts/postgres.py
    started (its server.json): TCP to 127.0.0.1, no TLS, CONNECTIONS."""
    return {
        "host": server["host"],
        "port": server["port"],
        "user": server["user"],
        "password": server["password"],
        "database": server["database"],
        "ssl": False,
        "min_size": CONNECTIONS,
        "max_size": CONNECTIONS,
    }


def start_server(cpu=None):
    """Installs (when missing) and starts a throwaway server, pinned to
    *cpu* with every backend it forks; returns its directory, which holds
    server.json. Exits with a message when that fails."""
    if subprocess.run([sys.executable, POSTGRES, "install"], check=False).returncode != 0:
        sys.exit("no PostgreSQL server (scripts/postgres.py install failed)")
    base = tempfile.mkdtemp(prefix="ferroloop-pgbench-")
    start = [sys.executable, POSTGRES, "start", base]
    if cpu is not None:
        start = ["taskset", "-c", str(cpu), *start]  # inherited by the backends
    started = subprocess.run(start, capture_output=True, text=True, check=False)
    if started.returncode != 0:
        sys.exit(f"scripts/postgres.py start failed:\n{started.stderr}")
    return base


def stop_server(base):
    subprocess.run([sys.executable, POSTGRES, "stop", base], check=False)


async def measure(bench, server, duration):
    import asyncpg

    method, query = QUERIES[bench]
    pool = await asyncpg.create_pool(**pool_kwargs(server))
    count = 0
    phase = {"stop": False, "counting": False}

    async def client():
        nonlocal count
        while not phase["stop"]:
            result = await getattr(pool, method)(query)
            if method == "fetch" and len(result) != 1000:
                raise AssertionError(f"{len(result)} rows")
            if phase["counting"]:
                count += 1

    tasks = [asyncio.ensure_future(client()) for _ in range(TASKS)]
    await asyncio.sleep(min(1.0, duration / 3))  # warm-up: statements prepared
    phase["counting"] = True
    t0 = time.perf_counter()
    await asyncio.sleep(duration)
    elapsed = time.perf_counter() - t0
    phase["counting"] = False
    phase["stop"] = True
    await asyncio.gather(*tasks)
    await pool.close()
    return count / elapsed


def worker(bench, loop_name, server, duration):
    loop = new_loop(loop_name)
    try:
        rate = loop.run_until_complete(measure(bench, server, duration))
    finally:
        loop.close()
    print(json.dumps({"bench": bench, "loop": loop_name, "rate": rate}))


def sample(bench, loop, server_file, args):
    cmd = [sys.executable, __file__, "--worker", bench, loop, server_file, str(args.duration)]
    if args.client_cpu is not None:
        cmd = ["taskset", "-c", str(args.client_cpu), *cmd]
    try:
        p = subprocess.run(
            cmd, capture_output=True, text=True, timeout=args.duration + 60, check=False
        )
    except subprocess.TimeoutExpired:
        return None, "timed out"
    if p.returncode != 0:
        lines = (p.stderr.strip() or p.stdout.strip()).splitlines()
        return None, lines[-1] if lines else f"exit code {p.returncode}"
    return json.loads(p.stdout.splitlines()[-1]), None


def table(results, benches, loops, markdown):
    head = ["benchmark", "loop", "queries/s median", "min", "max", "IQR", "vs uvloop", "vs asyncio"]
    rows = []
    for bench in benches:
        med = {lp: statistics.median(v) for lp, v in results[bench].items() if v}
        for lp in loops:
            vals = results[bench].get(lp)
            if not vals:
                rows.append([bench, lp, "failed", "", "", "", "", ""])
                continue
            m, lo, hi, iqr = stats(vals)

            def ratio(base, m=m, med=med):
                return f"{m / med[base]:.2f}x" if base in med else "-"

            rows.append(
                [bench, lp, f"{m:,.0f}", f"{lo:,.0f}", f"{hi:,.0f}", f"{iqr:,.0f}"]
                + [ratio("uvloop"), ratio("asyncio")]
            )
    return render(head, rows, markdown, left=2)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=float, default=3.0, help="seconds measured per sample")
    ap.add_argument("--only", type=lambda s: csv(s, BENCHES), default=list(BENCHES))
    ap.add_argument("--loops", type=lambda s: csv(s, LOOPS), default=list(LOOPS))
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--no-pin", action="store_true", help="do not pin server and client")
    add_chart_arg(ap)
    args = ap.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    pin = not args.no_pin and len(cpus) >= 2
    args.client_cpu, server_cpu = (cpus[0], cpus[-1]) if pin else (None, None)

    base = start_server(server_cpu)
    server_file = os.path.join(base, "server.json")
    results = {b: {lp: [] for lp in args.loops} for b in args.only}
    errors = {}
    try:
        for r in range(args.rounds):
            order = args.loops[r % len(args.loops) :] + args.loops[: r % len(args.loops)]
            for bench in args.only:
                for lp in order:
                    res, err = sample(bench, lp, server_file, args)
                    if err:
                        errors[(bench, lp)] = err
                        print(f"{bench} {lp}: {err}", file=sys.stderr)
                    else:
                        results[bench][lp].append(res["rate"])
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        stop_server(base)
    print(", ".join(version(lp) for lp in args.loops))
    where = f"server on CPU {server_cpu}, client on CPU {args.client_cpu}" if pin else "unpinned"
    print(
        f"{args.rounds} rounds x {args.duration:g} s, {CONNECTIONS} connections, "
        f"{TASKS} tasks, {where}"
    )
    print(table(results, args.only, args.loops, args.markdown))
    if args.json:
        save_json(args.json, args, results, errors)
    chart(args, "asyncpg on PostgreSQL, queries/s (benches/db/run.py)", results, lambda b: True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        bench, loop_name, server_file, duration = sys.argv[2:6]
        with open(server_file) as f:
            worker(bench, loop_name, json.load(f), float(duration))
    else:
        main()
