"""Exception handler API and how errors in callbacks/tasks are reported."""

import asyncio
import gc
import logging
import sys
from asyncio import format_helpers

import pytest

# 3.13's format_helpers name a callback by where it was defined instead of
# listing its arguments: "cb() at file:line" for "cb(1, 'x')".
ARGS_IN_CALLBACK_REPR = sys.version_info < (3, 13)


def failing_callback(*args):
    raise ValueError("from callback")


def test_default_handler_is_none(new_loop):
    lp = new_loop()
    assert lp.get_exception_handler() is None


def test_set_and_get_exception_handler(loop, exc_handler):
    assert loop.get_exception_handler() is exc_handler

    def handler(lp, ctx):
        pass

    loop.set_exception_handler(handler)
    assert loop.get_exception_handler() is handler
    loop.set_exception_handler(None)
    assert loop.get_exception_handler() is None
    loop.set_exception_handler(exc_handler)


@pytest.mark.parametrize("bad", [1, "handler", object()], ids=["int", "str", "object"])
def test_set_exception_handler_non_callable(loop, exc_handler, bad):
    with pytest.raises(TypeError) as info:
        loop.set_exception_handler(bad)
    assert str(info.value) == f"A callable object or None is expected, got {bad!r}"
    assert loop.get_exception_handler() is exc_handler


def test_raising_callback_context(loop, exc_handler, run_forever):
    h = loop.call_soon(failing_callback, 1, "x")
    loop.call_soon(loop.stop)
    run_forever()
    [(handler_loop, ctx)] = exc_handler.calls
    exc_handler.take()
    assert handler_loop is loop
    expected = "Exception in callback " + format_helpers._format_callback_source(
        failing_callback, (1, "x")
    )
    assert ctx["message"] == expected
    if ARGS_IN_CALLBACK_REPR:
        assert ctx["message"].startswith("Exception in callback failing_callback(1, 'x')")
    else:
        assert ctx["message"].startswith("Exception in callback failing_callback() at ")
    assert isinstance(ctx["exception"], ValueError)
    assert ctx["exception"].args == ("from callback",)
    assert ctx["handle"] is h
    if loop.get_debug():
        # Debug mode adds where the handle was created: this call_soon() line.
        assert set(ctx) == {"message", "exception", "handle", "source_traceback"}
        assert ctx["source_traceback"] is h._source_traceback
        last = ctx["source_traceback"][-1]
        assert (last.filename, last.name) == (__file__, "test_raising_callback_context")
        assert last.line == 'h = loop.call_soon(failing_callback, 1, "x")'
    else:
        assert set(ctx) == {"message", "exception", "handle"}


def test_raising_callback_is_logged_by_default_handler(loop, run_forever, caplog):
    loop.set_exception_handler(None)

    loop.call_soon(failing_callback)
    loop.call_soon(loop.stop)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        run_forever()
    [record] = [r for r in caplog.records if r.name == "asyncio"]
    assert record.levelno == logging.ERROR
    assert record.getMessage().startswith("Exception in callback failing_callback()")
    assert "handle: <Handle" in record.getMessage()
    assert record.exc_info[0] is ValueError


def test_default_exception_handler_logs(loop, caplog):
    exc = ValueError("payload")
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.default_exception_handler(
            {"message": "hello", "exception": exc, "zeta": 1, "alpha": "a"}
        )
    [record] = caplog.records
    assert record.name == "asyncio"
    assert record.levelno == logging.ERROR
    # extra keys are sorted and repr()'d
    assert record.getMessage() == "hello\nalpha: 'a'\nzeta: 1"
    assert record.exc_info[1] is exc


def test_default_exception_handler_without_message_or_exception(loop, caplog):
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.default_exception_handler({})
    [record] = caplog.records
    assert record.getMessage() == "Unhandled exception in event loop"
    assert not record.exc_info


def test_call_exception_handler_uses_default_when_unset(loop, caplog):
    loop.set_exception_handler(None)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.call_exception_handler({"message": "via call_exception_handler"})
    assert [r.getMessage() for r in caplog.records] == ["via call_exception_handler"]


def test_call_exception_handler_custom(loop, exc_handler):
    context = {"message": "custom", "exception": KeyError("k"), "extra": 1}
    loop.call_exception_handler(context)
    [(handler_loop, ctx)] = exc_handler.calls
    exc_handler.take()
    assert handler_loop is loop
    assert ctx == context


def test_handler_that_raises_falls_back_to_default(loop, run_forever, caplog):
    calls = []

    def bad_handler(lp, ctx):
        calls.append(ctx["message"])
        raise RuntimeError("handler broke")

    loop.set_exception_handler(bad_handler)

    loop.call_soon(failing_callback)
    loop.call_soon(calls.append, "loop-still-running")
    loop.call_soon(loop.stop)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        run_forever()
    assert len(calls) == 2
    assert calls[0].startswith("Exception in callback failing_callback()")
    assert calls[1] == "loop-still-running"
    [record] = caplog.records
    msg = record.getMessage()
    assert msg.startswith("Unhandled error in exception handler\ncontext: {")
    assert "Exception in callback failing_callback()" in msg
    assert record.exc_info[0] is RuntimeError


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_base_exceptions_from_callback_propagate(loop, run_forever, exc_type):
    seen = []

    def raiser():
        raise exc_type()

    loop.call_soon(raiser)
    loop.call_soon(seen.append, "same-tick")
    with pytest.raises(exc_type):
        loop.run_forever()
    assert not loop.is_running()
    # the remaining callbacks are still queued and run on the next start
    loop.call_soon(loop.stop)
    run_forever()
    assert seen == ["same-tick"]


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_base_exceptions_from_timer_propagate(loop, exc_type):
    def raiser():
        raise exc_type()

    loop.call_later(0.001, raiser)
    with pytest.raises(exc_type):
        loop.run_forever()
    assert not loop.is_running()


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_base_exceptions_from_handler_propagate(loop, exc_type):
    def handler(lp, ctx):
        raise exc_type()

    loop.set_exception_handler(handler)
    with pytest.raises(exc_type):
        loop.call_exception_handler({"message": "x"})

    loop.call_soon(failing_callback)
    with pytest.raises(exc_type):
        loop.run_forever()
    assert not loop.is_running()


def test_base_exception_subclass_in_callback_goes_to_handler(loop, exc_handler, run_forever):
    class Custom(BaseException):
        pass

    def raiser():
        raise Custom()

    loop.call_soon(raiser)
    loop.call_soon(loop.stop)
    run_forever()
    [ctx] = exc_handler.take()
    assert isinstance(ctx["exception"], Custom)


def test_task_exception_never_retrieved(loop, exc_handler, run):
    async def failing():
        raise ValueError("never retrieved")

    task = loop.create_task(failing())
    run(asyncio.sleep(0.001))
    assert task.done()
    del task
    gc.collect()
    [ctx] = exc_handler.take()
    assert ctx["message"] == "Task exception was never retrieved"
    assert isinstance(ctx["exception"], ValueError)
    assert isinstance(ctx["future"], asyncio.Task)


def test_future_exception_never_retrieved(loop, exc_handler):
    fut = loop.create_future()
    fut.set_exception(KeyError("k"))
    del fut
    gc.collect()
    [ctx] = exc_handler.take()
    assert ctx["message"] == "Future exception was never retrieved"
    assert isinstance(ctx["exception"], KeyError)


def test_exception_in_done_callback(loop, exc_handler, run):
    fut = loop.create_future()

    def bad_done_callback(f):
        raise ZeroDivisionError

    fut.add_done_callback(bad_done_callback)
    fut.set_result(None)
    run(asyncio.sleep(0))
    [ctx] = exc_handler.take()
    # The message shows the future's repr (shortened by reprlib), which in
    # debug mode ends with "created at file:line".
    expected = "Exception in callback " + format_helpers._format_callback_source(
        bad_done_callback, (fut,)
    )
    assert ctx["message"] == expected
    if loop.get_debug():
        assert " created at " in repr(fut)
    elif ARGS_IN_CALLBACK_REPR:
        assert "bad_done_callback(<Future finished result=None>)" in ctx["message"]
    else:
        assert "bad_done_callback() at " in ctx["message"]
    assert isinstance(ctx["exception"], ZeroDivisionError)


def test_call_exception_handler_with_a_non_dict(loop, caplog):
    # 3.10/3.11's asyncio hands the handler whatever it was given; 3.12+
    # first looks the context up in it, which fails, and logs that instead.
    seen = []
    loop.set_exception_handler(lambda lp, ctx: seen.append(ctx))
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.call_exception_handler([])
    if sys.version_info < (3, 12):
        assert seen == [[]]
        assert not caplog.records
    else:
        assert seen == []
        [record] = caplog.records
        assert record.getMessage().startswith("Unhandled error in exception handler")
        assert record.exc_info[0] is AttributeError
