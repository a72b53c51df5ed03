"""Handle / TimerHandle objects returned by the scheduling methods."""

import asyncio
import contextvars
import sys

import pytest

needs_get_context = pytest.mark.skipif(
    sys.version_info < (3, 12), reason="Handle.get_context() is new in Python 3.12"
)


def test_handle_types(loop):
    soon = loop.call_soon(print)
    threadsafe = loop.call_soon_threadsafe(print)
    later = loop.call_later(1, print)
    at = loop.call_at(loop.time() + 1, print)
    if isinstance(loop, asyncio.BaseEventLoop):
        handle_cls, timer_cls = asyncio.Handle, asyncio.TimerHandle
    else:
        # Documented difference: asyncio.Handle is a Python class, which a
        # native type cannot subclass (uvloop's handles are not asyncio.Handle
        # instances either). ferroloop's handles have the same methods, and
        # TimerHandle extends Handle as in asyncio.
        from ferroloop._ferroloop import Handle as handle_cls
        from ferroloop._ferroloop import TimerHandle as timer_cls

        for name in ("cancel", "cancelled", "get_context"):
            assert callable(getattr(soon, name))
        assert callable(later.when)
    for h in (soon, threadsafe):
        assert isinstance(h, handle_cls)
        assert not isinstance(h, timer_cls)
    for h in (later, at):
        assert isinstance(h, timer_cls)
        assert isinstance(h, handle_cls)
    for h in (soon, threadsafe, later, at):
        h.cancel()


def test_handle_cancel_and_cancelled(loop):
    h = loop.call_soon(print)
    assert h.cancelled() is False
    h.cancel()
    assert h.cancelled() is True
    h.cancel()  # idempotent
    assert h.cancelled() is True


def test_timer_handle_cancel_and_cancelled(loop):
    h = loop.call_later(10, print)
    assert h.cancelled() is False
    h.cancel()
    assert h.cancelled() is True
    h.cancel()
    assert h.cancelled() is True


def test_timer_handle_when(loop):
    when = loop.time() + 3.5
    h = loop.call_at(when, print)
    assert h.when() == when
    h.cancel()
    assert h.when() == when  # still readable after cancel


def test_plain_handle_has_no_when(loop):
    h = loop.call_soon(print)
    assert not hasattr(h, "when")
    h.cancel()


def test_timer_handle_ordering(loop):
    now = loop.time()
    early = loop.call_at(now + 1, print)
    late = loop.call_at(now + 2, print)
    assert early < late
    assert late > early
    assert early <= late
    assert late >= early
    assert not (late < early)
    assert sorted([late, early]) == [early, late]
    early.cancel()
    late.cancel()


def test_timer_handle_equality(loop):
    h = loop.call_later(1, print)
    assert h == h  # noqa: PLR0124 - TimerHandle defines __eq__
    other = loop.call_later(2, print)
    assert h != other
    h.cancel()
    other.cancel()


def test_timer_handle_is_hashable(loop):
    h = loop.call_later(1, print)
    assert {h: 1}[h] == 1
    h.cancel()


def test_handle_repr(loop):
    def some_callback():
        pass

    h = loop.call_soon(some_callback)
    assert "some_callback" in repr(h)
    assert repr(h).startswith("<Handle")
    t = loop.call_later(1, some_callback)
    assert repr(t).startswith("<TimerHandle")
    assert "when=" in repr(t)
    h.cancel()
    t.cancel()
    assert "cancelled" in repr(h)
    assert "cancelled" in repr(t)


@needs_get_context
def test_get_context_default(loop):
    var = contextvars.ContextVar("handle_var")
    token = var.set("value")
    try:
        h = loop.call_soon(print)
    finally:
        var.reset(token)
    ctx = h.get_context()
    assert isinstance(ctx, contextvars.Context)
    assert ctx[var] == "value"
    h.cancel()


@needs_get_context
@pytest.mark.parametrize("method", ["call_soon", "call_soon_threadsafe", "call_later", "call_at"])
def test_get_context_explicit(loop, method):
    ctx = contextvars.copy_context()
    args = {"call_later": (1,), "call_at": (loop.time() + 1,)}.get(method, ())
    h = getattr(loop, method)(*args, print, context=ctx)
    assert h.get_context() is ctx
    h.cancel()


def test_handle_from_timer_is_passed_to_exception_handler(loop, exc_handler, run_forever):
    def boom():
        raise RuntimeError("x")

    h = loop.call_later(0.001, boom)
    loop.call_later(0.01, loop.stop)
    run_forever()
    [ctx] = exc_handler.take()
    assert ctx["handle"] is h
    assert isinstance(ctx["exception"], RuntimeError)
