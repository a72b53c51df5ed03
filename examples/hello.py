"""A small asyncio program: shows which loop it runs on and times a mix of
tasks, timers, futures and executor calls on ferroloop next to asyncio's own
loop (medians of a few runs; absolute times on a shared machine are noise)."""

import asyncio
import statistics
import sys
import time

import ferroloop


async def workload(n: int = 20_000) -> int:
    loop = asyncio.get_running_loop()

    async def child(i: int) -> int:
        await asyncio.sleep(0)
        fut = loop.create_future()
        loop.call_soon(fut.set_result, i)
        return await fut

    total = sum(await asyncio.gather(*(child(i) for i in range(n))))
    await asyncio.wait_for(asyncio.sleep(0.001), 5)
    total += await loop.run_in_executor(None, sum, range(10))
    return total


def run(factory, coro):
    """asyncio.Runner(loop_factory=...).run(coro); by hand on 3.10, which lacks it."""
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(coro)
    loop = factory()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


def timed(factory) -> float:
    t0 = time.perf_counter()
    result = run(factory, workload())
    assert result == sum(range(20_000)) + 45, result
    return time.perf_counter() - t0


async def main() -> None:
    loop = asyncio.get_running_loop()
    print(f"running on {type(loop).__module__}.{type(loop).__qualname__}: {loop!r}")


if __name__ == "__main__":
    ferroloop.run(main())
    samples = {"asyncio": [], "ferroloop": []}
    for _ in range(5):  # interleaved
        samples["asyncio"].append(timed(asyncio.new_event_loop))
        samples["ferroloop"].append(timed(ferroloop.new_event_loop))
    a, f = (statistics.median(samples[k]) for k in ("asyncio", "ferroloop"))
    print(
        f"20k tasks+futures, median of 5: asyncio {a * 1e3:.1f} ms, "
        f"ferroloop {f * 1e3:.1f} ms ({a / f:.2f}x)"
    )
