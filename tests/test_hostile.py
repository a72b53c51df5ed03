"""Hostile exceptions and scale (issue #9, first part): exceptions whose
``__str__`` and ``__repr__`` raise, MemoryError from callbacks, protocol
methods and executor jobs, and 10^5 timers pending or callbacks ready at
once. Each runs on both loops and must behave as asyncio's does: the loop
keeps running, nothing aborts, nothing is lost."""

import asyncio
import logging
import random
import socket

import pytest

N = 100_000


class Unprintable(Exception):
    """An exception that cannot be turned into text."""

    def __str__(self):
        raise RuntimeError("__str__ raised")

    def __repr__(self):
        raise RuntimeError("__repr__ raised")


def raise_unprintable():
    raise Unprintable()


def run_raising_callback(loop, run_forever, callback):
    """Runs `callback` then one more callback in the same tick; returns
    whether that one ran (the loop went on after the error)."""
    after = []
    loop.call_soon(callback)
    loop.call_soon(after.append, "ran")
    loop.call_soon(loop.stop)
    run_forever()
    return after == ["ran"]


def test_unprintable_exception_from_callback_reaches_the_handler(loop, exc_handler, run_forever):
    went_on = run_raising_callback(loop, run_forever, raise_unprintable)
    [ctx] = exc_handler.take()
    assert type(ctx["exception"]) is Unprintable
    assert ctx["message"].startswith("Exception in callback raise_unprintable()")
    assert went_on


def test_unprintable_exception_logged_by_the_default_handler(loop, run_forever, caplog):
    loop.set_exception_handler(None)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        went_on = run_raising_callback(loop, run_forever, raise_unprintable)
    [record] = [r for r in caplog.records if r.name == "asyncio"]
    assert record.exc_info[0] is Unprintable
    # Formatting the record must survive the exception's __str__ raising
    # (traceback prints "<exception str() failed>").
    text = logging.Formatter().format(record)
    assert "Unprintable" in text
    assert went_on


def test_unprintable_exception_from_task_is_the_tasks(loop, run):
    async def main():
        raise Unprintable()

    with pytest.raises(Unprintable):
        run(main())


def test_exception_handler_raising_unprintable_falls_back(loop, run_forever, caplog):
    def handler(lp, ctx):
        raise Unprintable()

    loop.set_exception_handler(handler)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        went_on = run_raising_callback(loop, run_forever, raise_unprintable)
    # asyncio's default handler reports the handler's error, and formatting
    # that report (the context's values, repr'd) fails in turn: it logs that.
    [record] = [r for r in caplog.records if r.name == "asyncio"]
    assert record.getMessage() == (
        "Exception in default exception handler while handling an unexpected "
        "error in custom exception handler"
    )
    assert record.exc_info[0] is RuntimeError  # from Unprintable.__repr__
    assert went_on


def test_memory_error_from_callback_goes_to_the_handler(loop, exc_handler, run_forever):
    def cb():
        raise MemoryError("provoked")

    went_on = run_raising_callback(loop, run_forever, cb)
    [ctx] = exc_handler.take()
    assert type(ctx["exception"]) is MemoryError
    assert went_on


def test_memory_error_from_executor_job_is_the_futures(loop, run):
    def job():
        raise MemoryError("in a thread")

    async def main():
        with pytest.raises(MemoryError, match="in a thread"):
            await loop.run_in_executor(None, job)
        return await loop.run_in_executor(None, sum, [1, 2])  # the pool still works

    assert run(main()) == 3


@pytest.mark.parametrize("exc_type", [MemoryError, Unprintable])
def test_raising_data_received_is_a_fatal_error(loop, exc_handler, run, exc_type):
    class Proto(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            self.lost = loop.create_future()

        def data_received(self, data):
            raise exc_type()

        def connection_lost(self, exc):
            self.lost.set_result(exc)

    a, b = socket.socketpair()

    async def main():
        transport, proto = await loop.create_connection(Proto, sock=a)
        b.sendall(b"x")
        lost = await asyncio.wait_for(proto.lost, 5)
        return transport, lost

    try:
        transport, lost = run(main())
        assert transport.is_closing()
        assert type(lost) is exc_type  # connection_lost gets the error
        [ctx] = exc_handler.take()
        assert ctx["message"] == "Fatal error: protocol.data_received() call failed."
        assert type(ctx["exception"]) is exc_type
        assert ctx["protocol"] is not None and ctx["transport"] is transport
    finally:
        b.close()


def test_100k_timers_pending_at_once_fire_in_time_order(loop, run):
    rng = random.Random(9)
    fired = []

    async def main():
        now = loop.time()
        whens = [now + rng.uniform(0, 0.2) for _ in range(N)]
        handles = [loop.call_at(w, fired.append, w) for w in whens]
        # Cancel every tenth: they must not fire, the rest must.
        for h in handles[::10]:
            h.cancel()
        await asyncio.sleep(0.3)
        while len(fired) < N - len(handles[::10]) and loop.time() < now + 10:
            await asyncio.sleep(0.05)
        return whens

    whens = run(main(), timeout=60)
    expected = [w for i, w in enumerate(whens) if i % 10]
    assert len(fired) == len(expected)
    assert fired == sorted(expected)  # in order of their time, none lost or doubled


def test_100k_callbacks_ready_in_one_tick_run_in_order(loop, run_forever):
    ran = []
    later = []

    def burst():
        for i in range(N):
            loop.call_soon(ran.append, i)
        loop.call_soon(loop.stop)

    def after_burst():
        # Queued behind the burst and loop.stop(): stop() lets the rest of
        # its tick run, so this runs too, after all N.
        loop.call_soon(lambda: later.append(len(ran)))

    loop.call_soon(burst)
    loop.call_soon(after_burst)
    run_forever(timeout=60)
    assert ran == list(range(N))
    assert later == [N]
