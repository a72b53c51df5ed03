"""Hostile exceptions and scale (issue #9): exceptions whose ``__str__`` and
``__repr__`` raise, MemoryError from callbacks, protocol methods and executor
jobs, KeyboardInterrupt and SystemExit from signal handlers, protocol methods
and executor jobs, finalizers (``__del__``) that raise when the loop drops
an object, and 10^5 timers pending or callbacks ready at once. Each runs on both loops and must behave as asyncio's does: the loop
keeps running, nothing aborts, nothing is lost."""

import asyncio
import gc
import logging
import os
import random
import signal
import socket
import sys

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


# -- BaseExceptions and raising finalizers, from every kind of callback ------

INTERRUPTS = [KeyboardInterrupt, SystemExit]


def raise_in_signal_handler(loop, run_forever, exc_type):
    """Runs a SIGUSR1 handler that raises exc_type; returns what happened:
    "propagated" (run_forever raised it) or "went on"."""
    after = []

    def handler():
        raise exc_type()

    loop.add_signal_handler(signal.SIGUSR1, handler)
    try:
        loop.call_soon(os.kill, os.getpid(), signal.SIGUSR1)
        loop.call_later(0.2, after.append, "ran")
        loop.call_later(0.2, loop.stop)
        try:
            run_forever()
        except exc_type:
            return "propagated"
        assert after == ["ran"]
        return "went on"
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)


def test_signal_handler_raising_goes_to_the_handler(loop, exc_handler, run_forever):
    assert raise_in_signal_handler(loop, run_forever, ValueError) == "went on"
    [ctx] = exc_handler.take()
    assert type(ctx["exception"]) is ValueError
    assert ctx["message"].startswith("Exception in callback ")
    # The handle the loop ran (ferroloop's is its native Handle: a documented
    # difference, see test_handles.py).
    probe = loop.call_soon(print)
    probe.cancel()
    assert type(ctx["handle"]) is type(probe)


@pytest.mark.parametrize("exc_type", INTERRUPTS)
def test_signal_handler_raising_interrupt_propagates(loop, run_forever, exc_type):
    assert raise_in_signal_handler(loop, run_forever, exc_type) == "propagated"
    # The loop is stopped, not broken: it runs again.
    loop.call_soon(loop.stop)
    run_forever()


@pytest.mark.parametrize("exc_type", INTERRUPTS)
def test_data_received_raising_interrupt_propagates(loop, run, exc_type):
    # asyncio re-raises KeyboardInterrupt and SystemExit from a protocol
    # method out of run_until_complete(): no fatal error, the connection
    # stays open, and the next run goes on reading it.
    got = []

    class Proto(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            got.append(data)
            if data == b"interrupt":
                raise exc_type()

    a, b = socket.socketpair()
    try:
        transport, _ = run(loop.create_connection(Proto, sock=a))
        b.sendall(b"interrupt")
        with pytest.raises(exc_type):
            run(asyncio.sleep(5))
        assert not transport.is_closing()
        b.sendall(b"more")

        async def more():
            while got[-1] != b"more":
                await asyncio.sleep(0.001)

        run(more())
        assert got == [b"interrupt", b"more"]
        transport.close()
        run(asyncio.sleep(0))
    finally:
        b.close()


@pytest.mark.parametrize("exc_type", INTERRUPTS)
def test_connection_made_raising_interrupt_propagates(loop, run, exc_type):
    # A server protocol's connection_made raising KeyboardInterrupt or
    # SystemExit: out of run_until_complete(), as from asyncio's accept.
    made = []

    class Proto(asyncio.Protocol):
        def connection_made(self, transport):
            made.append(transport)
            raise exc_type()

    server = run(loop.create_server(Proto, "127.0.0.1", 0))
    client = socket.create_connection(server.sockets[0].getsockname())
    try:
        with pytest.raises(exc_type):
            run(asyncio.sleep(5))
        assert len(made) == 1
    finally:
        client.close()
        for t in made:
            t.close()
        server.close()
        run(server.wait_closed())


@pytest.mark.parametrize("exc_type", INTERRUPTS)
def test_executor_job_raising_interrupt_propagates(loop, run, exc_type):
    # The pool hands the BaseException to the future; awaiting it raises it
    # in the task, and a task re-raises KeyboardInterrupt and SystemExit out
    # of the loop. The pool keeps working.
    def job():
        raise exc_type()

    with pytest.raises(exc_type):
        run(loop.run_in_executor(None, job))
    assert run(loop.run_in_executor(None, sum, [1, 2])) == 3


class RaisingFinalizer:
    """A callable whose __del__ raises: its error goes to
    sys.unraisablehook when the last reference goes, wherever that is."""

    def __init__(self, record):
        self.record = record

    def __call__(self, *args):
        self.record.append("called")

    def __del__(self):
        raise RuntimeError("__del__ raised")


@pytest.fixture
def unraisable():
    """The exceptions sys.unraisablehook receives during the test."""
    seen = []
    old = sys.unraisablehook
    sys.unraisablehook = lambda u: seen.append(u.exc_type)
    try:
        yield seen
    finally:
        sys.unraisablehook = old


def test_raising_finalizers_of_callbacks_are_unraisable(loop, run, unraisable):
    # A callback, a cancelled timer's callback, a done callback and an
    # executor job, each dropped by the loop after use: every __del__ error
    # reaches sys.unraisablehook once, and the loop goes on.
    record = []

    async def main():
        loop.call_soon(RaisingFinalizer(record))
        loop.call_later(10, RaisingFinalizer(record)).cancel()
        fut = loop.create_future()
        fut.add_done_callback(RaisingFinalizer(record))
        fut.set_result(None)
        await loop.run_in_executor(None, RaisingFinalizer(record))
        for _ in range(3):
            await asyncio.sleep(0)
        gc.collect()
        return await loop.run_in_executor(None, sum, [1, 2])

    assert run(main()) == 3
    gc.collect()
    assert record == ["called", "called", "called"]
    assert unraisable == [RuntimeError] * 4


def test_raising_finalizer_of_a_protocol_is_unraisable(loop, run, unraisable):
    class Proto(asyncio.Protocol):
        def __del__(self):
            raise RuntimeError("__del__ raised")

    a, b = socket.socketpair()
    try:

        async def main():
            transport, _ = await loop.create_connection(Proto, sock=a)
            transport.close()
            for _ in range(3):
                await asyncio.sleep(0)

        run(main())
        gc.collect()
        assert unraisable == [RuntimeError]
    finally:
        b.close()
