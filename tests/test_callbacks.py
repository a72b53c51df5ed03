"""call_soon / call_soon_threadsafe: arguments, context, order, ticks, errors."""

import contextvars
import functools

import pytest

var = contextvars.ContextVar("var", default="default")


def test_call_soon_passes_args(loop, run_forever):
    seen = []
    loop.call_soon(lambda *a: seen.append(a), 1, "two", None)
    loop.call_soon(loop.stop)
    run_forever()
    assert seen == [(1, "two", None)]


def test_call_soon_partial_and_bound_method(loop, run_forever):
    seen = []
    loop.call_soon(functools.partial(seen.append, "partial"))
    loop.call_soon(seen.append, "method")
    loop.call_soon(loop.stop)
    run_forever()
    assert seen == ["partial", "method"]


def test_call_soon_threadsafe_passes_args(loop, run_forever):
    seen = []
    loop.call_soon_threadsafe(lambda *a: seen.append(a), 1, 2)
    loop.call_soon(loop.stop)
    run_forever()
    assert seen == [(1, 2)]


def test_call_soon_returns_handle(loop):
    # (isinstance checks against asyncio.Handle: see test_handles.py)
    h = loop.call_soon(print)
    assert h.cancelled() is False
    assert not hasattr(h, "when")
    h.cancel()
    assert h.cancelled() is True


def test_call_soon_threadsafe_returns_handle(loop):
    h = loop.call_soon_threadsafe(print)
    assert h.cancelled() is False
    assert not hasattr(h, "when")
    h.cancel()
    assert h.cancelled() is True


def test_fifo_order(loop, run_forever):
    seen = []
    for i in range(200):
        loop.call_soon(seen.append, i)
    loop.call_soon(loop.stop)
    run_forever()
    assert seen == list(range(200))


def test_fifo_order_mixed_with_threadsafe(loop, run_forever):
    seen = []
    for i in range(50):
        if i % 2:
            loop.call_soon_threadsafe(seen.append, i)
        else:
            loop.call_soon(seen.append, i)
    loop.call_soon(loop.stop)
    run_forever()
    assert seen == list(range(50))


def test_callbacks_scheduled_during_tick_run_next_tick(loop, run_forever):
    order = []

    def a():
        order.append("a")
        loop.call_soon(order.append, "a-child")

    def b():
        order.append("b")
        loop.call_soon(order.append, "b-child")

    loop.call_soon(a)
    loop.call_soon(b)
    loop.call_soon(order.append, "c")
    loop.call_soon(loop.call_soon, loop.stop)
    run_forever()
    assert order == ["a", "b", "c", "a-child", "b-child"]


def test_stop_from_callback_finishes_current_tick(loop, run_forever):
    order = []

    def stopper():
        order.append("stopper")
        loop.stop()
        loop.call_soon(order.append, "next-tick")

    loop.call_soon(order.append, "before")
    loop.call_soon(stopper)
    loop.call_soon(order.append, "after-1")
    loop.call_soon(order.append, "after-2")
    run_forever()
    assert order == ["before", "stopper", "after-1", "after-2"]

    loop.stop()
    run_forever()
    assert order[-1] == "next-tick"


def test_due_timer_runs_after_ready_callbacks(loop, run_forever):
    # A due timer is moved to the ready queue behind the callbacks that were
    # already ready (asyncio's _run_once).
    order = []

    def start():
        loop.call_later(0, order.append, "timer")
        loop.call_soon(order.append, "soon")
        loop.call_soon(loop.call_soon, loop.stop)

    loop.call_soon(start)
    run_forever()
    assert order == ["soon", "timer"]


def test_long_chain_of_call_soon(loop, run):
    fut = loop.create_future()
    count = [0]

    def step():
        count[0] += 1
        if count[0] == 10000:
            fut.set_result(count[0])
        else:
            loop.call_soon(step)

    loop.call_soon(step)
    assert run(fut) == 10000


# --------------------------------------------------------------------------
# cancellation
# --------------------------------------------------------------------------


def test_cancelled_handle_never_runs(loop, run_forever):
    seen = []
    h = loop.call_soon(seen.append, "cancelled")
    loop.call_soon(seen.append, "kept")
    h.cancel()
    assert h.cancelled()
    loop.call_soon(loop.stop)
    run_forever()
    assert seen == ["kept"]


def test_cancel_from_earlier_callback_same_tick(loop, run_forever):
    seen = []
    handles = {}

    def canceller():
        seen.append("canceller")
        handles["victim"].cancel()

    loop.call_soon(canceller)
    handles["victim"] = loop.call_soon(seen.append, "victim")
    loop.call_soon(loop.stop)
    run_forever()
    assert seen == ["canceller"]


def test_cancel_threadsafe_handle(loop, run_forever):
    seen = []
    h = loop.call_soon_threadsafe(seen.append, 1)
    h.cancel()
    loop.call_soon(loop.stop)
    run_forever()
    assert seen == []


def test_cancel_after_run_is_harmless(loop, run_forever):
    seen = []
    h = loop.call_soon(seen.append, 1)
    loop.call_soon(loop.stop)
    run_forever()
    h.cancel()
    h.cancel()
    assert h.cancelled()
    assert seen == [1]


# --------------------------------------------------------------------------
# contexts
# --------------------------------------------------------------------------


def test_callback_runs_in_copy_of_current_context(loop, run_forever):
    seen = []
    token = var.set("at-schedule")
    try:
        loop.call_soon(lambda: seen.append(var.get()))
    finally:
        var.reset(token)
    token = var.set("changed-later")
    try:

        def mutate():
            var.set("mutated-in-callback")

        loop.call_soon(mutate)
        loop.call_soon(lambda: seen.append(var.get()))
        loop.call_soon(loop.stop)
        run_forever()
        # each callback has its own copy: mutations do not leak
        assert seen == ["at-schedule", "changed-later"]
        assert var.get() == "changed-later"
    finally:
        var.reset(token)


@pytest.mark.parametrize("method", ["call_soon", "call_soon_threadsafe"])
def test_explicit_context(loop, run_forever, method):
    ctx = contextvars.copy_context()
    ctx.run(var.set, "in-ctx")
    seen = []

    def cb(tag):
        seen.append((tag, var.get()))
        var.set("written-by-callback")

    getattr(loop, method)(cb, "explicit", context=ctx)
    getattr(loop, method)(cb, "implicit")
    loop.call_soon(loop.stop)
    run_forever()
    assert seen == [("explicit", "in-ctx"), ("implicit", "default")]
    # the callback ran inside ctx itself, not in a copy of it
    assert ctx[var] == "written-by-callback"
    assert var.get() == "default"


def test_same_context_shared_by_callbacks(loop, run_forever):
    ctx = contextvars.Context()
    seen = []
    loop.call_soon(var.set, "first", context=ctx)
    loop.call_soon(lambda: seen.append(var.get()), context=ctx)
    loop.call_soon(loop.stop)
    run_forever()
    assert seen == ["first"]


# --------------------------------------------------------------------------
# bad arguments
# --------------------------------------------------------------------------


def test_call_soon_rejects_keyword_arguments(loop):
    with pytest.raises(TypeError):
        loop.call_soon(print, end="")
    with pytest.raises(TypeError):
        loop.call_soon_threadsafe(print, end="")


def test_call_soon_requires_callback(loop):
    with pytest.raises(TypeError):
        loop.call_soon()
    with pytest.raises(TypeError):
        loop.call_soon_threadsafe()


def test_non_callable_accepted_then_reported_without_debug(loop, exc_handler, run_forever):
    # asyncio only validates callbacks in debug mode; without it the error
    # surfaces when the handle runs, through the exception handler.
    loop.set_debug(False)
    h = loop.call_soon(None)
    loop.call_soon(loop.stop)
    run_forever()
    [ctx] = exc_handler.take()
    assert ctx["message"] == "Exception in callback None()"
    assert isinstance(ctx["exception"], TypeError)
    assert ctx["handle"] is h


def test_coroutine_function_accepted_without_debug(loop, run_forever):
    # Without debug mode asyncio does not check: the call creates a coroutine
    # that is never awaited (a RuntimeWarning), and nothing else happens.
    loop.set_debug(False)
    started = []

    async def coro_fn():
        started.append(True)

    loop.call_soon(coro_fn)
    loop.call_soon(loop.stop)
    with pytest.warns(RuntimeWarning, match="was never awaited"):
        run_forever()
    assert started == []


@pytest.mark.parametrize("method", ["call_soon", "call_soon_threadsafe", "call_later", "call_at"])
@pytest.mark.parametrize("bad", [None, 1, "text"], ids=["None", "int", "str"])
def test_non_callable_rejected_in_debug(loop, method, bad):
    loop.set_debug(True)
    args = {"call_later": (0,), "call_at": (loop.time(),)}.get(method, ())
    with pytest.raises(TypeError) as info:
        getattr(loop, method)(*args, bad)
    # call_later() validates through call_at(), so asyncio names call_at()
    shown = "call_at" if method == "call_later" else method
    assert str(info.value) == f"a callable object was expected by {shown}(), got {bad!r}"


@pytest.mark.parametrize("method", ["call_soon", "call_soon_threadsafe", "call_later", "call_at"])
def test_coroutine_function_rejected_in_debug(loop, method):
    async def coro_fn():
        pass

    loop.set_debug(True)
    args = {"call_later": (0,), "call_at": (loop.time(),)}.get(method, ())
    shown = "call_at" if method == "call_later" else method
    with pytest.raises(TypeError, match=rf"^coroutines cannot be used with {shown}\(\)$"):
        getattr(loop, method)(*args, coro_fn)
    coro = coro_fn()
    try:
        with pytest.raises(TypeError, match=rf"^coroutines cannot be used with {shown}\(\)$"):
            getattr(loop, method)(*args, coro)
    finally:
        coro.close()


def test_callback_exception_does_not_stop_the_loop(loop, exc_handler, run_forever):
    seen = []

    def boom():
        raise ValueError("boom")

    loop.call_soon(boom)
    loop.call_soon(seen.append, "after")
    loop.call_soon(loop.stop)
    run_forever()
    assert seen == ["after"]
    [ctx] = exc_handler.take()
    assert isinstance(ctx["exception"], ValueError)


def test_context_that_is_not_a_context(loop, run_forever, exc_handler):
    # asyncio runs a handle as `context.run(callback, *args)`, whatever the
    # context is: an object with a run() method is called, any other fails
    # with its AttributeError when the callback is due.
    calls = []

    class RunsItself:
        def run(self, callback, *args):
            calls.append("run")
            return callback(*args)

    loop.call_soon(calls.append, "cb", context=RunsItself())
    loop.call_soon(calls.append, "never", context=5)
    loop.call_soon(loop.stop)
    run_forever()
    assert calls == ["run", "cb"]
    [ctx] = exc_handler.take()
    assert type(ctx["exception"]) is AttributeError
