"""run_forever / run_until_complete / stop / close and the running-loop state."""

import asyncio

import pytest
from conftest import since


async def _value(v):
    await asyncio.sleep(0)
    return v


# --------------------------------------------------------------------------
# run_until_complete
# --------------------------------------------------------------------------


def test_run_until_complete_coroutine_result(loop):
    assert loop.run_until_complete(_value(42)) == 42


def test_run_until_complete_future(loop):
    fut = loop.create_future()
    loop.call_soon(fut.set_result, "done")
    assert loop.run_until_complete(fut) == "done"


def test_run_until_complete_task(loop):
    task = loop.create_task(_value("t"))
    assert loop.run_until_complete(task) == "t"
    assert task.done()


def test_run_until_complete_already_done_future(loop):
    fut = loop.create_future()
    fut.set_result(7)
    assert loop.run_until_complete(fut) == 7


def test_run_until_complete_awaitable_object(loop):
    class Awaitable:
        def __await__(self):
            return _value("awaited").__await__()

    assert loop.run_until_complete(Awaitable()) == "awaited"


def test_run_until_complete_propagates_exception(loop):
    async def boom():
        await asyncio.sleep(0)
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        loop.run_until_complete(boom())
    assert not loop.is_running()


def test_run_until_complete_future_exception(loop):
    fut = loop.create_future()
    loop.call_soon(fut.set_exception, KeyError("k"))
    with pytest.raises(KeyError):
        loop.run_until_complete(fut)


def test_run_until_complete_cancelled_future(loop):
    fut = loop.create_future()
    loop.call_soon(fut.cancel)
    with pytest.raises(asyncio.CancelledError):
        loop.run_until_complete(fut)


@pytest.mark.parametrize("value", [42, None, "text", lambda: None])
def test_run_until_complete_non_awaitable_type_error(loop, value):
    with pytest.raises(TypeError, match="awaitable is required"):
        loop.run_until_complete(value)
    assert not loop.is_running()


def test_run_until_complete_future_of_other_loop(loop, new_loop):
    other = new_loop()
    fut = other.create_future()
    with pytest.raises(ValueError, match="different loop"):
        loop.run_until_complete(fut)


def test_run_until_complete_stopped_before_future_completed(loop):
    async def stops_then_waits():
        loop.stop()
        await loop.create_future()

    with pytest.raises(RuntimeError, match=r"^Event loop stopped before Future completed\.$"):
        loop.run_until_complete(stops_then_waits())
    assert not loop.is_running()


def test_run_until_complete_twice_sequentially(loop):
    assert loop.run_until_complete(_value(1)) == 1
    assert loop.run_until_complete(_value(2)) == 2


def test_keyboard_interrupt_in_coroutine_propagates(loop):
    async def interrupted():
        await asyncio.sleep(0)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        loop.run_until_complete(interrupted())
    assert not loop.is_running()
    # the loop is still usable afterwards
    assert loop.run_until_complete(_value("again")) == "again"


def test_system_exit_in_coroutine_propagates(loop):
    async def exits():
        raise SystemExit(3)

    with pytest.raises(SystemExit) as info:
        loop.run_until_complete(exits())
    assert info.value.code == 3
    assert not loop.is_running()


# --------------------------------------------------------------------------
# nesting / closed loop
# --------------------------------------------------------------------------


def test_run_until_complete_inside_running_loop(loop):
    async def nested():
        coro = _value(1)
        try:
            with pytest.raises(RuntimeError, match="^This event loop is already running$"):
                loop.run_until_complete(coro)
        finally:
            coro.close()
        with pytest.raises(RuntimeError, match="^This event loop is already running$"):
            loop.run_forever()
        return "ok"

    assert loop.run_until_complete(nested()) == "ok"


def test_other_loop_inside_running_loop(loop, new_loop):
    other = new_loop()

    async def nested():
        coro = _value(1)
        try:
            with pytest.raises(
                RuntimeError,
                match="^Cannot run the event loop while another loop is running$",
            ):
                other.run_until_complete(coro)
        finally:
            coro.close()
        with pytest.raises(
            RuntimeError,
            match="^Cannot run the event loop while another loop is running$",
        ):
            other.run_forever()
        return "ok"

    assert loop.run_until_complete(nested()) == "ok"
    assert not other.is_running()


def test_run_after_close(new_loop):
    lp = new_loop()
    lp.close()
    assert lp.is_closed()
    coro = _value(1)
    try:
        with pytest.raises(RuntimeError, match="^Event loop is closed$"):
            lp.run_until_complete(coro)
    finally:
        coro.close()
    with pytest.raises(RuntimeError, match="^Event loop is closed$"):
        lp.run_forever()


@pytest.mark.parametrize(
    "call",
    [
        lambda lp: lp.call_soon(print),
        lambda lp: lp.call_later(1, print),
        lambda lp: lp.call_at(lp.time() + 1, print),
        lambda lp: lp.call_soon_threadsafe(print),
        lambda lp: lp.run_in_executor(None, print),
    ],
    ids=["call_soon", "call_later", "call_at", "call_soon_threadsafe", "run_in_executor"],
)
def test_scheduling_on_closed_loop(new_loop, call):
    lp = new_loop()
    lp.close()
    with pytest.raises(RuntimeError, match="^Event loop is closed$"):
        call(lp)


def test_create_task_on_closed_loop(new_loop):
    lp = new_loop()
    lp.close()
    coro = _value(1)
    try:
        with pytest.raises(RuntimeError, match="^Event loop is closed$"):
            lp.create_task(coro)
    finally:
        coro.close()


def test_close_is_idempotent(new_loop):
    lp = new_loop()
    assert not lp.is_closed()
    lp.close()
    lp.close()
    assert lp.is_closed()
    assert not lp.is_running()


def test_close_running_loop_raises(loop):
    errors = []

    def try_close():
        try:
            loop.close()
        except RuntimeError as exc:
            errors.append(str(exc))
        loop.stop()

    loop.call_soon(try_close)
    loop.run_forever()
    assert errors == ["Cannot close a running event loop"]
    assert not loop.is_closed()


def test_close_discards_pending_callbacks(new_loop):
    lp = new_loop()
    called = []
    lp.call_soon(called.append, 1)
    lp.call_later(0, called.append, 2)
    lp.close()
    assert called == []


# --------------------------------------------------------------------------
# stop
# --------------------------------------------------------------------------


def test_stop_before_run_forever_runs_one_iteration(loop, run_forever):
    order = []

    def first():
        order.append("first")
        loop.call_soon(order.append, "scheduled-by-first")

    loop.call_soon(first)
    loop.call_soon(order.append, "second")
    loop.stop()
    run_forever()
    assert order == ["first", "second"]

    # the stop flag was reset: the next run needs a new stop()
    loop.call_soon(loop.stop)
    run_forever()
    assert order == ["first", "second", "scheduled-by-first"]


def test_stop_then_run_forever_with_nothing_scheduled(loop, run_forever):
    loop.stop()
    run_forever(timeout=5)
    assert not loop.is_running()


def test_stop_from_callback(loop, run_forever):
    loop.call_soon(loop.stop)
    run_forever()
    assert not loop.is_running()


def test_stop_from_timer(loop, run_forever):
    loop.call_later(0.01, loop.stop)
    t0 = loop.time()
    run_forever()
    assert loop.time() - t0 >= 0.0099


def test_run_forever_can_be_restarted(loop, run_forever):
    seen = []
    for i in range(3):
        loop.call_soon(seen.append, i)
        loop.call_soon(loop.stop)
        run_forever()
    assert seen == [0, 1, 2]


# --------------------------------------------------------------------------
# running-loop state
# --------------------------------------------------------------------------


def test_is_running(loop):
    states = []

    def cb():
        states.append(loop.is_running())
        loop.stop()

    assert not loop.is_running()
    loop.call_soon(cb)
    loop.run_forever()
    assert states == [True]
    assert not loop.is_running()


def test_get_running_loop_and_current_task_in_coroutine(loop):
    async def main():
        return asyncio.get_running_loop(), asyncio.current_task()

    task = loop.create_task(main())
    running, current = loop.run_until_complete(task)
    assert running is loop
    assert current is task
    assert asyncio.current_task(loop) is None


def test_no_running_loop_outside(loop):
    loop.run_until_complete(_value(None))
    with pytest.raises(RuntimeError, match="no running event loop"):
        asyncio.get_running_loop()


def test_running_loop_inside_plain_callback(loop):
    seen = {}

    def cb():
        seen["running"] = asyncio.get_running_loop()
        seen["current_task"] = asyncio.current_task()
        loop.stop()

    loop.call_soon(cb)
    loop.run_forever()
    assert seen["running"] is loop
    assert seen["current_task"] is None


def test_get_event_loop_inside_callback_returns_running_loop(loop):
    # Even with no loop set for the thread, get_event_loop() returns the
    # running loop from inside a callback.
    asyncio.set_event_loop(None)
    seen = []

    def cb():
        seen.append(asyncio.get_event_loop())
        loop.stop()

    loop.call_soon(cb)
    loop.run_forever()
    assert seen == [loop]


def test_get_event_loop_outside_returns_set_loop(loop):
    assert asyncio.get_event_loop() is loop


def test_running_loop_reset_after_exception(loop):
    def boom():
        raise KeyboardInterrupt

    loop.call_soon(boom)
    with pytest.raises(KeyboardInterrupt):
        loop.run_forever()
    assert not loop.is_running()
    assert asyncio._get_running_loop() is None


# --------------------------------------------------------------------------
# asyncio.Runner / asyncio.run with a loop factory
# --------------------------------------------------------------------------


@since((3, 11), "asyncio.Runner")
def test_runner_with_loop_factory(loop_factory):
    probe = loop_factory()
    expected_type = type(probe)
    probe.close()
    made = []

    def factory():
        lp = loop_factory()
        made.append(lp)
        return lp

    async def main(x):
        return type(asyncio.get_running_loop()), x * 2

    with asyncio.Runner(loop_factory=factory) as runner:
        assert runner.run(main(2)) == (expected_type, 4)
        assert runner.run(main(5)) == (expected_type, 10)
        assert runner.get_loop() is made[0]
    assert len(made) == 1
    assert made[0].is_closed()


@since((3, 11), "asyncio.Runner")
def test_runner_cancels_leftover_tasks(loop_factory):
    leftover = []

    async def main():
        leftover.append(asyncio.get_running_loop().create_task(asyncio.sleep(30)))
        await asyncio.sleep(0)

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())
    assert leftover[0].cancelled()


@since((3, 11), "asyncio.Runner")
def test_runner_debug_flag(loop_factory):
    async def main():
        return asyncio.get_running_loop().get_debug()

    with asyncio.Runner(loop_factory=loop_factory, debug=True) as runner:
        assert runner.run(main()) is True
    with asyncio.Runner(loop_factory=loop_factory, debug=False) as runner:
        assert runner.run(main()) is False


@since((3, 11), "asyncio.Runner")
def test_runner_run_inside_running_loop(loop, loop_factory):
    runner = asyncio.Runner(loop_factory=loop_factory)

    async def main():
        coro = _value(1)
        try:
            with pytest.raises(RuntimeError, match="cannot be called from a running"):
                runner.run(coro)
        finally:
            coro.close()
        return "ok"

    assert loop.run_until_complete(main()) == "ok"
    runner.close()
