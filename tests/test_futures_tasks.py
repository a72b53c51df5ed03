"""Futures, tasks, task factories and the asyncio high-level API on the loop."""

import asyncio
import contextvars
import inspect
import sys
import threading

import pytest
from conftest import since

var = contextvars.ContextVar("task_var", default="default")


# --------------------------------------------------------------------------
# futures
# --------------------------------------------------------------------------


def test_create_future(loop, run):
    fut = loop.create_future()
    assert isinstance(fut, asyncio.Future)
    assert asyncio.isfuture(fut)
    assert fut.get_loop() is loop
    assert not fut.done()
    loop.call_later(0.001, fut.set_result, 5)
    assert run(fut) == 5
    assert fut.result() == 5


def test_future_done_callbacks_are_scheduled_not_called(loop, run):
    fut = loop.create_future()
    order = []
    fut.add_done_callback(lambda f: order.append(("cb", f.result())))
    fut.set_result(1)
    order.append("after-set_result")
    run(asyncio.sleep(0))
    assert order == ["after-set_result", ("cb", 1)]


def test_future_done_callback_context(loop, run):
    fut = loop.create_future()
    ctx = contextvars.copy_context()
    ctx.run(var.set, "cb-ctx")
    seen = []
    fut.add_done_callback(lambda f: seen.append(var.get()), context=ctx)
    fut.set_result(None)
    run(asyncio.sleep(0))
    assert seen == ["cb-ctx"]


def test_await_future_in_task(loop, run):
    fut = loop.create_future()

    async def waiter():
        return await fut + 1

    task = loop.create_task(waiter())
    loop.call_soon(fut.set_result, 41)
    assert run(task) == 42


# --------------------------------------------------------------------------
# tasks
# --------------------------------------------------------------------------


async def _ident(x):
    await asyncio.sleep(0)
    return x


def test_create_task_basic(loop, run):
    task = loop.create_task(_ident(3))
    assert isinstance(task, asyncio.Task)
    assert task.get_loop() is loop
    assert task in asyncio.all_tasks(loop)
    assert run(task) == 3
    assert task not in asyncio.all_tasks(loop)


def test_create_task_name(loop, run):
    named = loop.create_task(_ident(1), name="my-task")
    assert named.get_name() == "my-task"
    unnamed = loop.create_task(_ident(2))
    assert unnamed.get_name().startswith("Task-")
    run(asyncio.gather(named, unnamed))


@since((3, 11), "create_task(context=)")
def test_create_task_context(loop, run):
    ctx = contextvars.copy_context()
    ctx.run(var.set, "explicit")

    async def read_and_write():
        value = var.get()
        var.set("written")
        return value

    assert run(loop.create_task(read_and_write(), context=ctx)) == "explicit"
    assert ctx[var] == "written"
    # without context=: a copy of the current one
    assert run(loop.create_task(read_and_write())) == "default"
    assert var.get() == "default"


def test_create_task_non_coroutine(loop):
    with pytest.raises(TypeError):
        loop.create_task(42)


def test_current_task_and_all_tasks(loop, run):
    async def main():
        me = asyncio.current_task()
        other = asyncio.create_task(asyncio.sleep(0.01))
        tasks = asyncio.all_tasks()
        await other
        return me, other, tasks

    task = loop.create_task(main())
    me, other, tasks = run(task)
    assert me is task
    assert tasks == {task, other}


def test_task_factory(loop, run):
    calls = []

    def factory(lp, coro, **kwargs):
        calls.append((lp, kwargs))
        return asyncio.Task(coro, loop=lp, **kwargs)

    assert loop.get_task_factory() is None
    loop.set_task_factory(factory)
    assert loop.get_task_factory() is factory

    ctx = contextvars.copy_context()
    # create_task(context=) is new in 3.11.
    context_kw = {"context": ctx} if sys.version_info >= (3, 11) else {}
    t1 = loop.create_task(_ident(1))
    t2 = loop.create_task(_ident(2), name="named", **context_kw)

    async def via_module_api():
        return await asyncio.create_task(_ident(3))

    t3 = loop.create_task(via_module_api())
    assert run(asyncio.gather(t1, t2, t3)) == [1, 2, 3]
    assert t2.get_name() == "named"
    assert len(calls) == 4  # t1, t2, t3 and the task inside t3
    assert all(lp is loop for lp, _ in calls)
    if sys.version_info < (3, 13):
        # The factory is called as factory(loop, coro), with context= only
        # when a context is given; the name is set afterwards.
        assert calls[0][1] == {}
        assert calls[1][1] == context_kw
    else:
        assert calls[1][1].get("context") is ctx

    loop.set_task_factory(None)
    assert loop.get_task_factory() is None


# asyncio's create_task passes unknown keywords on to the task factory or
# Task from 3.13.3 (and on 3.14, where eager_start is one); before, it
# refuses them. Detected from the running asyncio, as ferroloop does.
CREATE_TASK_PASSES_KEYWORDS = any(
    p.kind is p.VAR_KEYWORD
    for p in inspect.signature(asyncio.BaseEventLoop.create_task).parameters.values()
)


def test_create_task_extra_keywords(loop, run):
    seen = []

    def factory(lp, coro, **kwargs):
        seen.append(dict(kwargs))
        kwargs.pop("custom", None)
        return asyncio.Task(coro, loop=lp, **kwargs)

    loop.set_task_factory(factory)
    if not CREATE_TASK_PASSES_KEYWORDS:
        coro = _ident(1)
        try:
            with pytest.raises(TypeError, match="unexpected keyword argument 'custom'"):
                loop.create_task(coro, custom=1)
        finally:
            coro.close()
        assert seen == []
        return
    task = loop.create_task(_ident(1), custom=1, name="named")
    assert run(task) == 1
    assert seen[0]["custom"] == 1
    assert task.get_name() == "named"
    # Without a factory they go to Task: eager_start (Task has it from 3.12).
    loop.set_task_factory(None)

    async def immediate():
        return 2

    async def main():
        eager = loop.create_task(immediate(), eager_start=True)
        return eager.done(), await eager

    assert run(main()) == (True, 2)


def test_task_factory_must_be_callable(loop):
    with pytest.raises(TypeError, match="^task factory must be a callable or None$"):
        loop.set_task_factory(1)
    assert loop.get_task_factory() is None


@pytest.mark.skipif(not hasattr(asyncio, "eager_task_factory"), reason="Python 3.12+")
def test_eager_task_factory(loop, run):
    order = []

    async def child():
        order.append("child-start")
        await asyncio.sleep(0)
        order.append("child-end")

    async def main():
        loop.set_task_factory(asyncio.eager_task_factory)
        try:
            t = asyncio.create_task(child())
            order.append("after-create")
            await t
        finally:
            loop.set_task_factory(None)

    run(main())
    assert order == ["child-start", "after-create", "child-end"]


def test_task_cancel(loop, run):
    started = asyncio.Event()

    async def sleeper():
        started.set()
        await asyncio.sleep(30)

    async def main():
        t = asyncio.create_task(sleeper())
        await started.wait()
        assert t.cancel("stop it")
        with pytest.raises(asyncio.CancelledError) as info:
            await t
        return t, info.value

    t, exc = run(main())
    assert t.cancelled()
    # From 3.11 the message reaches the awaiter (bpo-45390); 3.10 raises a
    # new CancelledError without it there.
    assert exc.args == (("stop it",) if sys.version_info >= (3, 11) else ())


@since((3, 11), "Task.uncancel()")
def test_task_catches_cancel_and_uncancel(loop, run):
    async def stubborn():
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            me = asyncio.current_task()
            assert me.cancelling() == 1
            me.uncancel()
            assert me.cancelling() == 0
            return "survived"

    async def main():
        t = asyncio.create_task(stubborn())
        await asyncio.sleep(0)
        t.cancel()
        return await t

    assert run(main()) == "survived"


def test_task_exception(loop, run):
    async def boom():
        await asyncio.sleep(0)
        raise ValueError("boom")

    t = loop.create_task(boom())
    with pytest.raises(ValueError):
        run(t)
    assert isinstance(t.exception(), ValueError)


def test_run_coroutine_threadsafe(loop, run):
    result = {}

    async def main():
        def worker():
            cf = asyncio.run_coroutine_threadsafe(_ident("from-thread"), loop)
            result["value"] = cf.result(timeout=5)

        th = threading.Thread(target=worker)
        th.start()
        while th.is_alive():
            await asyncio.sleep(0.001)
        th.join()

    run(main())
    assert result == {"value": "from-thread"}


# --------------------------------------------------------------------------
# high-level combinators
# --------------------------------------------------------------------------


def test_gather(loop, run):
    async def main():
        return await asyncio.gather(_ident(1), _ident(2), asyncio.sleep(0.001, "s"))

    assert run(main()) == [1, 2, "s"]


def test_gather_return_exceptions(loop, run):
    async def bad():
        raise KeyError("k")

    async def main():
        return await asyncio.gather(_ident(1), bad(), return_exceptions=True)

    res = run(main())
    assert res[0] == 1
    assert isinstance(res[1], KeyError)


def test_wait_first_completed(loop, run):
    async def main():
        fast = asyncio.create_task(asyncio.sleep(0.001, "fast"))
        slow = asyncio.create_task(asyncio.sleep(30, "slow"))
        done, pending = await asyncio.wait({fast, slow}, return_when=asyncio.FIRST_COMPLETED)
        slow.cancel()
        return done == {fast}, pending == {slow}

    assert run(main()) == (True, True)


def test_wait_timeout(loop, run):
    async def main():
        slow = asyncio.create_task(asyncio.sleep(30))
        done, pending = await asyncio.wait({slow}, timeout=0.01)
        slow.cancel()
        return done, pending == {slow}

    assert run(main()) == (set(), True)


def test_wait_for_timeout(loop, run):
    cancelled = []

    async def slow():
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def main():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(slow(), 0.01)
        assert await asyncio.wait_for(_ident("ok"), 5) == "ok"

    run(main())
    assert cancelled == [True]


@since((3, 11), "asyncio.timeout()")
def test_timeout_context_manager(loop, run):
    async def main():
        t0 = loop.time()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.02) as cm:
                await asyncio.sleep(30)
        assert cm.expired()
        elapsed = loop.time() - t0
        async with asyncio.timeout_at(loop.time() + 5) as cm2:
            await asyncio.sleep(0)
        assert not cm2.expired()
        return elapsed

    elapsed = run(main())
    assert 0.02 - 0.001 <= elapsed < 2


@since((3, 11), "asyncio.timeout()")
def test_timeout_reschedule(loop, run):
    async def main():
        async with asyncio.timeout(None) as cm:
            assert cm.when() is None
            cm.reschedule(loop.time() + 0.01)
            await asyncio.sleep(30)

    with pytest.raises(TimeoutError):
        run(main())


@since((3, 11), "asyncio.TaskGroup")
def test_task_group(loop, run):
    async def main():
        async with asyncio.TaskGroup() as tg:
            a = tg.create_task(_ident("a"))
            b = tg.create_task(asyncio.sleep(0.001, "b"))
        return a.result(), b.result()

    assert run(main()) == ("a", "b")


@since((3, 11), "asyncio.TaskGroup")
def test_task_group_failure_cancels_siblings(loop, run):
    sibling_cancelled = []

    async def sibling():
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            sibling_cancelled.append(True)
            raise

    async def failing():
        await asyncio.sleep(0.001)
        raise ValueError("fail")

    async def main():
        async with asyncio.TaskGroup() as tg:
            tg.create_task(sibling())
            tg.create_task(failing())

    with pytest.raises(BaseExceptionGroup) as info:  # noqa: F821 - builtin since 3.11
        run(main())
    assert [type(e) for e in info.value.exceptions] == [ValueError]
    assert sibling_cancelled == [True]


def test_shield(loop, run):
    async def inner():
        await asyncio.sleep(0.02)
        return "inner-done"

    async def main():
        inner_task = asyncio.create_task(inner())
        outer = asyncio.ensure_future(asyncio.shield(inner_task))
        await asyncio.sleep(0)
        outer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await outer
        return await inner_task

    assert run(main()) == "inner-done"


def test_as_completed(loop, run):
    async def main():
        coros = [asyncio.sleep(d, d) for d in (0.02, 0.001, 0.01)]
        return [await f for f in asyncio.as_completed(coros)]

    assert run(main()) == [0.001, 0.01, 0.02]


# --------------------------------------------------------------------------
# synchronisation primitives
# --------------------------------------------------------------------------


def test_lock(loop, run):
    async def main():
        lock = asyncio.Lock()
        order = []

        async def worker(i):
            async with lock:
                order.append(("in", i))
                await asyncio.sleep(0.001)
                order.append(("out", i))

        await asyncio.gather(*(worker(i) for i in range(3)))
        return order

    order = run(main())
    assert order == [("in", 0), ("out", 0), ("in", 1), ("out", 1), ("in", 2), ("out", 2)]


def test_event(loop, run):
    async def main():
        ev = asyncio.Event()
        loop.call_later(0.005, ev.set)
        await asyncio.wait_for(ev.wait(), 5)
        return ev.is_set()

    assert run(main()) is True


def test_semaphore_limits_concurrency(loop, run):
    async def main():
        sem = asyncio.Semaphore(2)
        active = [0]
        peak = [0]

        async def worker():
            async with sem:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
                await asyncio.sleep(0.002)
                active[0] -= 1

        await asyncio.gather(*(worker() for _ in range(6)))
        return peak[0]

    assert run(main()) == 2


def test_condition(loop, run):
    async def main():
        cond = asyncio.Condition()
        items = []

        async def consumer():
            async with cond:
                await cond.wait_for(lambda: items)
                return items.pop()

        task = asyncio.create_task(consumer())
        await asyncio.sleep(0.001)
        async with cond:
            items.append("item")
            cond.notify()
        return await task

    assert run(main()) == "item"


def test_queue_producer_consumer(loop, run):
    async def main():
        q = asyncio.Queue(maxsize=2)
        got = []

        async def producer():
            for i in range(10):
                await q.put(i)
            await q.put(None)

        async def consumer():
            while (item := await q.get()) is not None:
                got.append(item)
                q.task_done()
            q.task_done()

        await asyncio.gather(producer(), consumer())
        await q.join()
        return got

    assert run(main()) == list(range(10))


@since((3, 11), "asyncio.Barrier")
def test_barrier(loop, run):
    async def main():
        barrier = asyncio.Barrier(3)
        results = await asyncio.gather(*(barrier.wait() for _ in range(3)))
        return sorted(results)

    assert run(main()) == [0, 1, 2]


def test_async_generator_and_comprehension(loop, run):
    async def agen():
        for i in range(3):
            await asyncio.sleep(0)
            yield i

    async def main():
        return [i async for i in agen()]

    assert run(main()) == [0, 1, 2]
