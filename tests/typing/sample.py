"""A small program on ferroloop's public API, type-checked with
``mypy --strict`` by tests/test_types.py (it is not run by the suite: the
behaviour tests cover what it does)."""

from __future__ import annotations

import asyncio
import sys

import ferroloop
import pytest
from ferroloop import Histogram, LoopStats, SlowCallback, Utilization
from ferroloop.metrics import MetricsServer, openmetrics, serve


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    data = await reader.readline()
    writer.write(data.upper())
    await writer.drain()
    writer.close()
    await writer.wait_closed()


async def ask(port: int, line: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(line + b"\n")
    await writer.drain()
    reply = await reader.readline()
    writer.close()
    await writer.wait_closed()
    return reply


async def main() -> dict[str, float]:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, ferroloop.Loop)
    before: LoopStats = loop.stats()
    util_before: Utilization = loop.utilization()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port: int = server.sockets[0].getsockname()[1]
    replies = await asyncio.gather(*(ask(port, b"hello %d" % i) for i in range(4)))
    server.close()
    await server.wait_closed()
    assert all(r.startswith(b"HELLO") for r in replies)

    handle = loop.call_later(10.0, print, "never")
    when: float = handle.when()
    handle.cancel()
    assert when > loop.time() and handle.cancelled()
    total = await loop.run_in_executor(None, sum, [1, 2, 3])

    after = loop.stats()
    delta: LoopStats = after.delta(before)
    durations: Histogram = delta.callback_duration
    slow: list[SlowCallback] = ferroloop.slow_callbacks(loop)
    worst = max((s.duration for s in slow), default=0.0)
    util = loop.utilization(util_before)
    return {
        "ticks": float(delta.ticks),
        "p99": durations.percentile(99),
        "utilization": util.utilization,
        "worst_slow": worst,
        "total": float(total),
        "interval": delta.interval or 0.0,
    }


def report() -> str:
    text: str = openmetrics()
    exporter: MetricsServer = serve(port=0)
    try:
        assert exporter.is_serving() and exporter.port > 0
    finally:
        exporter.close()
    return text


def run_all_ways() -> None:
    results: dict[str, float] = ferroloop.run(main())
    print(results, len(report()))

    loop: ferroloop.Loop = ferroloop.new_event_loop()
    try:
        print(loop.run_until_complete(main()))
    finally:
        loop.close()

    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=ferroloop.new_event_loop) as runner:
            print(runner.run(main()))
    if sys.version_info >= (3, 12):
        print(asyncio.run(main(), loop_factory=ferroloop.new_event_loop))

    policy: asyncio.AbstractEventLoopPolicy = ferroloop.EventLoopPolicy()
    asyncio.set_event_loop_policy(policy)
    try:
        print(asyncio.run(main()))
    finally:
        asyncio.set_event_loop_policy(None)
    print(ferroloop.__version__)


# With `pytest -p ferroloop.pytest_plugin`, asyncio's tests run on ferroloop;
# the plugin registers the `ferroloop` marker.
@pytest.mark.ferroloop
@pytest.mark.asyncio
async def test_on_ferroloop() -> None:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, ferroloop.Loop)
    stats = loop.stats()
    assert stats.ticks > 0 and stats.loop_id >= 0


if __name__ == "__main__":
    run_all_ways()
