"""Run one subprocess/pipe benchmark on one event loop in this (fresh) process.

    python3 benches/proc/worker.py <bench> <loop> [--scale S] [--n N]

Prints one JSON object on stdout: {"bench", "loop", "n", "unit", "amount",
"seconds", "rate", ...}; `rate` is `amount / seconds` (spawns/s or MiB/s).
Exits non-zero, with a one-line reason on stderr, if the loop cannot be
created, the benchmark raises (e.g. NotImplementedError) or its result fails
to verify. Only the benchmark body is timed (time.perf_counter around the
loop run); interpreter start-up, imports, loop creation, the 1 GiB
allocation of the `_1g` benchmarks and the warm-up are not.
"""

import argparse
import asyncio
import gc
import json
import os
import random
import sys
import traceback
from asyncio.subprocess import PIPE
from time import perf_counter

MIB = 1 << 20
GIB = 1 << 30
PAGE = os.sysconf("SC_PAGE_SIZE")
TRUE = "/bin/true"
LOOPS = ("asyncio", "uvloop", "ferroloop")
# The class each loop's factory must produce, so that a shadowing module or a
# fallback to another loop cannot pass for the loop under test.
LOOP_CLASS = {
    "asyncio": "asyncio.unix_events._UnixSelectorEventLoop",
    "uvloop": "uvloop.Loop",
    "ferroloop": "ferroloop._loop.Loop",
}


def check(ok, what):
    # Not `assert`: verification must also happen under `python -O`.
    if not ok:
        raise SystemExit(f"verification failed: {what}")


# -- benchmarks: each takes (loop, n) and returns (seconds, extra fields) ------


async def spawn_true():
    p = await asyncio.create_subprocess_exec(TRUE)
    return await p.wait()


def timed_spawns(loop, main, n):
    """Runs *main* (a coroutine returning the exit codes of the n children
    it spawned and waited for), checks that all n exited with 0, and
    returns how long it took."""
    t0 = perf_counter()
    codes = loop.run_until_complete(main)
    dt = perf_counter() - t0
    check(len(codes) == n, f"{len(codes)} children waited, expected {n}")
    bad = [c for c in codes if c != 0]
    check(not bad, f"{len(bad)} of {n} children exited with {sorted(set(bad))}, expected 0")
    return dt


def bench_spawn_seq(loop, n):
    """n sequential create_subprocess_exec('/bin/true') + wait()."""

    async def main():
        return [await spawn_true() for _ in range(n)]

    return timed_spawns(loop, main(), n), {}


CONCURRENCY = 50


def bench_spawn_conc(loop, n):
    """n x (create_subprocess_exec('/bin/true') + wait()), 50 at a time."""
    running = peak = 0

    async def one(sem):
        nonlocal running, peak
        async with sem:
            running += 1
            peak = max(peak, running)
            try:
                return await spawn_true()
            finally:
                running -= 1

    async def main():
        sem = asyncio.Semaphore(CONCURRENCY)
        return await asyncio.gather(*[one(sem) for _ in range(n)])

    dt = timed_spawns(loop, main(), n)
    check(peak == min(n, CONCURRENCY), f"peak concurrency {peak}, expected {CONCURRENCY}")
    return dt, {"peak_concurrency": peak}


def chunk_source(n_chunks):
    """n_chunks distinct 1 MiB chunks: a fixed pseudo-random MiB (seeded, so
    the same in every process) with the chunk's index in its first 8 bytes.
    Loss, duplication, reordering or corruption changes the stream."""
    base = random.Random(12345).randbytes(MIB)
    return [i.to_bytes(8, "little") + base[8:] for i in range(n_chunks)]


def bench_pipe_cat(loop, n):
    """n MiB through `cat` (stdin -> stdout), 1 MiB writes with drain(),
    read(1 MiB) until EOF, concurrently. Timed from after the spawn until
    EOF and the child's exit.

    Every piece read is compared, as it arrives, with the bytes sent at
    that offset (`sent.startswith(piece, offset)`: a memcmp in place, the
    same on every loop). Keeping all pieces for one comparison at the end,
    or slicing `sent` for each comparison, would time the allocator
    instead: fresh pages faulted in for every large bytes, which cost more
    than the transfer itself."""
    chunks = chunk_source(n)
    sent = b"".join(chunks)
    got = {"bytes": 0, "reads": 0, "bad_at": None}

    async def writer(stdin):
        for c in chunks:
            stdin.write(c)
            await stdin.drain()
        stdin.close()
        await stdin.wait_closed()

    async def reader(stdout):
        while True:
            data = await stdout.read(MIB)
            if not data:
                return
            at = got["bytes"]
            if got["bad_at"] is None and not sent.startswith(data, at):
                got["bad_at"] = at
            got["bytes"] = at + len(data)
            got["reads"] += 1

    async def main():
        p = await asyncio.create_subprocess_exec("cat", stdin=PIPE, stdout=PIPE)
        t0 = perf_counter()
        await asyncio.gather(writer(p.stdin), reader(p.stdout))
        rc = await p.wait()
        return perf_counter() - t0, rc

    dt, rc = loop.run_until_complete(main())
    check(rc == 0, f"cat exited with {rc}")
    check(got["bytes"] == n * MIB, f"received {got['bytes']} bytes, expected {n * MIB}")
    check(got["bad_at"] is None, f"received bytes differ from the bytes sent at {got['bad_at']}")
    return dt, {"reads": got["reads"]}


COMM_SIZE = 16 * MIB


def bench_communicate(loop, n):
    """n sequential communicate() of `head -c 16777216 /dev/zero`; each
    timed from spawn to communicate() returning (child exited)."""

    async def main():
        outs = []
        for _ in range(n):
            p = await asyncio.create_subprocess_exec(
                "head", "-c", str(COMM_SIZE), "/dev/zero", stdout=PIPE
            )
            out, err = await p.communicate()
            outs.append((p.returncode, out, err))
        return outs

    t0 = perf_counter()
    outs = loop.run_until_complete(main())
    dt = perf_counter() - t0
    check(len(outs) == n, f"{len(outs)} communicate() calls, expected {n}")
    for rc, out, err in outs:
        check(rc == 0, f"head exited with {rc}")
        check(len(out) == COMM_SIZE, f"communicate() returned {len(out)} bytes, not {COMM_SIZE}")
        check(out.count(0) == COMM_SIZE, "stdout is not all zero bytes")
        check(err is None, "stderr was not None without stderr=PIPE")
    return dt, {}


# -- the parent with 1 GiB of touched memory ------------------------------------


def rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit("VmRSS not found in /proc/self/status")


def hold_1g():
    """1 GiB bytearray with a byte written in every page (so every page is
    resident and mapped), checked against VmRSS."""
    before = rss_kib()
    buf = bytearray(GIB)
    buf[::PAGE] = b"\x01" * (GIB // PAGE)
    grown = rss_kib() - before
    check(grown * 1024 >= GIB * 0.99, f"RSS grew by {grown} KiB, expected 1 GiB")
    return buf


# name -> (function, n per sample, unit of the rate, 1 GiB parent); n counts
# spawns, MiB (pipe_cat) or communicate() calls of 16 MiB each.
BENCHES = {
    "spawn_seq": (bench_spawn_seq, 100, "spawns", False),
    "spawn_conc": (bench_spawn_conc, 200, "spawns", False),
    "spawn_seq_1g": (bench_spawn_seq, 100, "spawns", True),
    "spawn_conc_1g": (bench_spawn_conc, 200, "spawns", True),
    "pipe_cat": (bench_pipe_cat, 64, "MiB", False),
    "communicate_16m": (bench_communicate, 4, "MiB", False),
}
# Fewer spawns where the default would take over ~10 s per sample: uvloop
# (libuv) fork()s, copying the 1 GiB parent's page tables on every spawn
# (~25 spawns/s here). The cost per spawn does not depend on the count, so
# the rates stay comparable.
N_OVERRIDE = {("spawn_seq_1g", "uvloop"): 50, ("spawn_conc_1g", "uvloop"): 100}


def sample_n(bench, loop, scale):
    n = N_OVERRIDE.get((bench, loop), BENCHES[bench][1])
    return max(1, round(n * scale))


def work(bench, n):
    """What one sample does, for tables: '100 spawns', '64 MiB', '4 x 16 MiB'."""
    fn = BENCHES[bench][0]
    if fn is bench_communicate:
        return f"{n} x {COMM_SIZE // MIB} MiB"
    return f"{n} {'MiB' if fn is bench_pipe_cat else 'spawns'}"


def new_loop(name):
    if name == "asyncio":
        return asyncio.new_event_loop()
    return __import__(name).new_event_loop()


def describe(exc):
    """One line: the exception and the innermost frame that raised it."""
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" (at {os.path.basename(tb[-1].filename)}:{tb[-1].lineno} in {tb[-1].name})"
    return f"{type(exc).__name__}: {exc}{where}" if str(exc) else f"{type(exc).__name__}{where}"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bench", choices=BENCHES)
    p.add_argument("loop", choices=LOOPS)
    p.add_argument("--scale", type=float, default=1.0, help="multiply the work per sample")
    p.add_argument("--n", type=int, help="override the work per sample (spawns, MiB or calls)")
    args = p.parse_args()

    fn, _, unit, big = BENCHES[args.bench]
    n = args.n or sample_n(args.bench, args.loop, args.scale)
    per = COMM_SIZE // MIB if fn is bench_communicate else 1
    loop = new_loop(args.loop)
    cls = f"{type(loop).__module__}.{type(loop).__qualname__}"
    check(cls == LOOP_CLASS[args.loop], f"loop is {cls}, expected {LOOP_CLASS[args.loop]}")
    asyncio.set_event_loop(loop)
    try:
        ballast = hold_1g() if big else None
        fn(loop, max(1, n // 10))  # warm-up: lazy init, child watcher, page cache
        gc.collect()
        seconds, extra = fn(loop, n)
        rss = rss_kib()
        del ballast
    except Exception as e:  # noqa: BLE001 - reported as the sample's failure
        raise SystemExit(describe(e)) from None
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    amount = n * per
    out = {
        "bench": args.bench,
        "loop": args.loop,
        "n": n,
        "unit": unit,
        "amount": amount,
        "seconds": seconds,
        "rate": amount / seconds,
        **extra,
    }
    if big:
        out["rss_kib"] = rss  # the parent's size while spawning
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
