"""Argument binding of the scheduling methods, as Python binds asyncio's.

ferroloop parses the arguments of call_soon, call_soon_threadsafe,
call_later, call_at, create_task, create_future, get_debug and time by hand
(see src/event_loop/fastcall.rs); these tests hold it to what Python does
with asyncio's signatures: keywords for the named parameters, *args passed
through, ``context=`` recognised however it is spelled, and TypeError for
everything else.
"""

import asyncio
import contextvars
import sys

import pytest
from conftest import skip_if_asyncio_310

var = contextvars.ContextVar("var", default="default")


def CALL_AT_NONE(lp):
    return lp.call_at(None, print)


def run_soon(loop, run_forever):
    loop.call_soon(loop.stop)
    run_forever()


@pytest.mark.parametrize("method", ["call_soon", "call_soon_threadsafe"])
def test_callback_by_keyword(loop, run_forever, method):
    seen = []
    getattr(loop, method)(callback=lambda: seen.append("kw"))
    run_soon(loop, run_forever)
    assert seen == ["kw"]


@pytest.mark.parametrize("method", ["call_soon", "call_soon_threadsafe"])
def test_context_keyword_from_a_dict_and_a_new_string(loop, run_forever, method):
    ctx = contextvars.copy_context()
    ctx.run(var.set, "in ctx")
    seen = []
    key = "".join(["con", "text"])  # noqa: FLY002 -- a new str, not the interned constant
    getattr(loop, method)(lambda *a: seen.append((var.get(), a)), 1, 2, **{key: ctx})
    getattr(loop, method)(lambda: seen.append(var.get()), context=None)
    run_soon(loop, run_forever)
    assert seen == [("in ctx", (1, 2)), "default"]


@pytest.mark.parametrize(
    ("call", "exc"),
    [
        (lambda lp: lp.call_soon(), TypeError),
        (lambda lp: lp.call_soon(print, foo=1), TypeError),
        (lambda lp: lp.call_soon(print, callback=print), TypeError),
        (lambda lp: lp.call_soon_threadsafe(), TypeError),
        (lambda lp: lp.call_later(1), TypeError),
        (lambda lp: lp.call_later(1, print, delay=2), TypeError),
        (lambda lp: lp.call_later(callback=print), TypeError),
        (lambda lp: lp.call_at(1, print, bogus=None), TypeError),
        (CALL_AT_NONE, TypeError),
        (lambda lp: lp.call_later(None, print), TypeError),
        (lambda lp: lp.call_later("1", print), TypeError),
        (lambda lp: lp.create_future(1), TypeError),
        (lambda lp: lp.get_debug(1), TypeError),
        (lambda lp: lp.time(1), TypeError),
    ],
)
def test_bad_arguments_raise_type_error(loop, loop_name, call, exc):
    if call is CALL_AT_NONE:
        skip_if_asyncio_310(loop_name, "accepts when=None (the timer heap fails later)")
    with pytest.raises(exc):
        call(loop)


def test_timer_arguments_by_keyword(loop, run_forever):
    seen = []
    ctx = contextvars.copy_context()
    ctx.run(var.set, "timer ctx")
    h1 = loop.call_later(delay=0, callback=lambda *a: seen.append(("later", a)))
    h2 = loop.call_at(loop.time(), lambda *a: seen.append(("at", a, var.get())), 7, context=ctx)
    h3 = loop.call_at(when=loop.time() + 10, callback=seen.append)
    h3.cancel()
    loop.call_later(0.001, loop.stop)
    run_forever()
    assert seen == [("later", ()), ("at", (7,), "timer ctx")]
    assert h1.when() <= h2.when() <= loop.time()
    assert h3.cancelled()


def test_create_task_keywords(loop, run):
    async def f(x):
        return x, var.get()

    ctx = contextvars.copy_context()
    ctx.run(var.set, "task ctx")

    async def main():
        a = loop.create_task(f(1))
        b = loop.create_task(f(2), name="named")
        # create_task(context=) is new in 3.11.
        if sys.version_info >= (3, 11):
            c = loop.create_task(coro=f(3), context=ctx)
            d = loop.create_task(f(4), name=None, context=None)
        else:
            c = loop.create_task(coro=f(3))
            d = loop.create_task(f(4), name=None)
        assert b.get_name() == "named"
        assert a.get_name().startswith("Task-")
        return await asyncio.gather(a, b, c, d)

    third = "task ctx" if sys.version_info >= (3, 11) else "default"
    assert run(main()) == [(1, "default"), (2, "default"), (3, third), (4, "default")]


def test_create_task_bad_arguments(loop):
    async def f():
        pass

    coros = [f() for _ in range(3)]
    with pytest.raises(TypeError):
        loop.create_task()
    with pytest.raises(TypeError):
        loop.create_task(coros[0], coros[1])
    with pytest.raises(TypeError):
        loop.create_task(coros[2], bogus=1)  # 3.11-3.13; 3.14 passes it to Task
    for c in coros:
        c.close()


def test_create_future_get_debug_time(loop):
    fut = loop.create_future()
    assert isinstance(fut, asyncio.Future)
    assert fut.get_loop() is loop
    assert loop.get_debug() in (True, False)
    t = loop.time()
    assert isinstance(t, float) and t <= loop.time()
    fut.cancel()


def test_handle_cancel_twice_and_cancel_args(loop):
    h = loop.call_soon(print, "x")
    assert h.cancel() is None
    assert h.cancel() is None
    assert h.cancelled()
    t = loop.call_later(10, print)
    assert t.cancel() is None
    t.cancel()
    assert t.cancelled()
    with pytest.raises(TypeError):
        h.cancel(1)
    with pytest.raises(TypeError):
        t.cancel(msg="no")
