"""Run one benchmark on one event loop in this (fresh) process.

    python3 benches/_worker.py <bench> <loop> [--scale F] [--cpu K]

Prints one JSON object on stdout, e.g. {"bench": ..., "loop": ..., "seconds": ...}.
Exits non-zero if the loop cannot be created or the benchmark result fails to
verify. Only the benchmark body is timed (time.perf_counter around the loop
run): interpreter start-up, imports, loop creation and the warm-up are not.
"""

import argparse
import asyncio
import gc
import json
import os
import sys
import threading
from time import perf_counter

from _report import METRICS_VARIANTS, apply_variant, package


def check(ok, what):
    # Not `assert`: verification must also happen under `python -O`.
    if not ok:
        raise SystemExit(f"verification failed: {what}")


def bench_call_soon(loop, n, batch=1000):
    """n callbacks scheduled with call_soon, in batches of 1000 from a callback."""
    count = 0

    def cb():
        nonlocal count
        count += 1

    def scheduler(remaining):
        k = min(batch, remaining)
        for _ in range(k):
            loop.call_soon(cb)
        if remaining > k:
            loop.call_soon(scheduler, remaining - k)  # runs after this batch (FIFO)
        else:
            loop.call_soon(loop.stop)

    loop.call_soon(scheduler, n)
    t0 = perf_counter()
    loop.run_forever()
    dt = perf_counter() - t0
    check(count == n, f"{count} callbacks ran, expected {n}")
    return dt


def bench_timer_cancel(loop, n, delay=0.01):
    """n x (h = call_later(delay, cb); h.cancel()) in a running loop, then one tick."""
    fired = cancelled = 0

    def cb():
        nonlocal fired
        fired += 1

    async def main():
        nonlocal cancelled
        for _ in range(n):
            h = loop.call_later(delay, cb)
            h.cancel()
            cancelled += h.cancelled()
        await asyncio.sleep(0)  # let the loop run one iteration with the dead timers

    t0 = perf_counter()
    loop.run_until_complete(main())
    dt = perf_counter() - t0
    loop.run_until_complete(asyncio.sleep(3 * delay))  # untimed: nothing may fire
    check(cancelled == n, f"{cancelled} handles cancelled, expected {n}")
    check(fired == 0, f"{fired} cancelled timers fired")
    return dt


def bench_timers_fire(loop, n, spread=0.01):
    """n timers with distinct delays in [0, 10ms), scheduled in shuffled order."""
    count = 0

    async def main():
        done = loop.create_future()

        def cb():
            nonlocal count
            count += 1
            if count == n:
                done.set_result(None)

        step = spread / n
        mult = 7919 if n % 7919 else 7927  # prime, coprime to n
        for i in range(n):
            # (i * mult) % n permutes range(n): distinct delays, scheduled unsorted.
            loop.call_later((i * mult) % n * step, cb)
        await done

    t0 = perf_counter()
    loop.run_until_complete(main())
    dt = perf_counter() - t0
    check(count == n, f"{count} timers fired, expected {n}")
    return dt


def bench_gather(loop, n):
    """create_task + asyncio.gather of n trivial coroutines."""

    async def f():
        return 1

    async def main():
        return sum(await asyncio.gather(*[loop.create_task(f()) for _ in range(n)]))

    t0 = perf_counter()
    total = loop.run_until_complete(main())
    dt = perf_counter() - t0
    check(total == n, f"sum of results {total}, expected {n}")
    return dt


def bench_sleep0(loop, n):
    """Two tasks alternating via `await asyncio.sleep(0)`: n task switches."""
    last = None
    turns = 0

    async def player(me, k):
        nonlocal last, turns
        for _ in range(k):
            await asyncio.sleep(0)
            turns += last is not me  # counts only strict alternation
            last = me

    async def main():
        await asyncio.gather(player("a", n // 2), player("b", n - n // 2))

    t0 = perf_counter()
    loop.run_until_complete(main())
    dt = perf_counter() - t0
    check(turns == n, f"{turns} alternating switches, expected {n}")
    return dt


def bench_future(loop, n):
    """n x (fut = create_future(); call_soon(fut.set_result, i); await fut)."""

    async def main():
        total = 0
        for i in range(n):
            fut = loop.create_future()
            loop.call_soon(fut.set_result, i)
            total += await fut
        return total

    t0 = perf_counter()
    total = loop.run_until_complete(main())
    dt = perf_counter() - t0
    check(total == n * (n - 1) // 2, f"sum {total}, expected {n * (n - 1) // 2}")
    return dt


def bench_threadsafe(loop, n):
    """A thread calls call_soon_threadsafe(cb) n times; time until the n-th cb ran."""
    count = 0
    t_end = None

    def cb():
        nonlocal count, t_end
        count += 1
        if count == n:
            t_end = perf_counter()
            loop.stop()

    def producer():
        for _ in range(n):
            loop.call_soon_threadsafe(cb)

    thread = threading.Thread(target=producer)
    loop.call_soon(thread.start)  # start producing once the loop is running
    t0 = perf_counter()
    loop.run_forever()
    thread.join()
    check(count == n and t_end is not None, f"{count} callbacks ran, expected {n}")
    return t_end - t0


def bench_executor(loop, n):
    """n sequential `await loop.run_in_executor(None, func)` round trips."""

    def func():
        return 1

    async def main():
        total = 0
        for _ in range(n):
            total += await loop.run_in_executor(None, func)
        return total

    t0 = perf_counter()
    total = loop.run_until_complete(main())
    dt = perf_counter() - t0
    check(total == n, f"sum {total}, expected {n}")
    return dt


# name -> (function, operations per sample)
BENCHES = {
    "call_soon": (bench_call_soon, 10**6),
    "timer_cancel": (bench_timer_cancel, 10**5),
    "timers_fire": (bench_timers_fire, 10**5),
    "gather": (bench_gather, 10**5),
    "sleep0": (bench_sleep0, 10**5),
    "future": (bench_future, 10**5),
    "threadsafe": (bench_threadsafe, 10**5),
    "executor": (bench_executor, 10**4),
}

DEFAULT_LOOPS = ("asyncio", "uvloop", "ferroloop")
LOOPS = (*DEFAULT_LOOPS, *METRICS_VARIANTS)


def new_loop(name):
    apply_variant(name)
    if name == "asyncio":
        return asyncio.new_event_loop()
    if name in LOOPS:
        return __import__(package(name)).new_event_loop()
    raise SystemExit(f"unknown loop {name!r}; choose from {', '.join(LOOPS)}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bench", choices=BENCHES)
    p.add_argument("loop", choices=LOOPS)
    p.add_argument("--scale", type=float, default=1.0, help="multiply op counts")
    p.add_argument("--cpu", type=int, help="pin this process to one CPU")
    args = p.parse_args()

    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})

    fn, n = BENCHES[args.bench]
    n = max(10, int(n * args.scale))
    loop = new_loop(args.loop)
    check(isinstance(loop, asyncio.AbstractEventLoop), f"{type(loop)} is not a loop")
    asyncio.set_event_loop(loop)
    try:
        fn(loop, max(10, n // 10))  # warm-up: caches, executor threads, lazy init
        gc.collect()
        seconds = fn(loop, n)
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    json.dump({"bench": args.bench, "loop": args.loop, "n": n, "seconds": seconds}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
