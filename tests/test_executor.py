"""run_in_executor, default executor, shutdown_default_executor, to_thread."""

import asyncio
import concurrent.futures
import contextvars
import sys
import threading
import time

import pytest

var = contextvars.ContextVar("executor_var", default="default")


def _thread_info(*args):
    t = threading.current_thread()
    return threading.get_ident(), t.name, args


def test_run_in_executor_default(loop, run):
    fut = loop.run_in_executor(None, _thread_info, 1, 2)
    assert isinstance(fut, asyncio.Future)
    ident, name, args = run(fut)
    assert ident != threading.get_ident()
    assert args == (1, 2)
    # asyncio names its default executor threads "asyncio_N"
    assert name.startswith("asyncio_")


def test_run_in_executor_custom_executor(loop, run):
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="custom") as ex:
        ident, name, args = run(loop.run_in_executor(ex, _thread_info, "a"))
    assert ident != threading.get_ident()
    assert name.startswith("custom")
    assert args == ("a",)


def test_run_in_executor_exception_propagates(loop, run):
    def fails():
        raise ValueError("in thread")

    with pytest.raises(ValueError, match="in thread"):
        run(loop.run_in_executor(None, fails))


def test_run_in_executor_many_concurrent(loop, run):
    async def main():
        return await asyncio.gather(*(loop.run_in_executor(None, pow, i, 2) for i in range(50)))

    assert run(main()) == [i * i for i in range(50)]


def test_run_in_executor_does_not_block_loop(loop, run):
    async def main():
        ticks = 0
        fut = loop.run_in_executor(None, time.sleep, 0.1)
        while not fut.done():
            ticks += 1
            await asyncio.sleep(0.005)
        await fut
        return ticks

    assert run(main()) >= 5


def test_run_in_executor_does_not_copy_context(loop, run):
    # Unlike to_thread(), run_in_executor() does not carry the context along.
    async def main():
        var.set("in-task")
        return await loop.run_in_executor(None, var.get)

    assert run(main()) == "default"


def test_set_default_executor(loop, run):
    ex = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mydefault")
    loop.set_default_executor(ex)
    _, name, _ = run(loop.run_in_executor(None, _thread_info))
    assert name.startswith("mydefault")
    run(loop.shutdown_default_executor())
    # shutdown_default_executor() shut the executor down
    with pytest.raises(RuntimeError):
        ex.submit(print)


@pytest.mark.parametrize(
    "bad",
    [object(), None, concurrent.futures.Executor()],
    ids=["object", "None", "plain-Executor"],
)
def test_set_default_executor_type_error(loop, bad):
    if sys.version_info < (3, 11):
        # 3.10 only warns (the TypeError is 3.11's) and takes the executor.
        with pytest.warns(DeprecationWarning, match="not an instance of ThreadPoolExecutor"):
            loop.set_default_executor(bad)
        # Unset it (both loops keep it there), or the teardown would call
        # shutdown() on it.
        loop._default_executor = None
        return
    # The wording differs between Python versions: take it from asyncio.
    reference = asyncio.SelectorEventLoop()
    try:
        with pytest.raises(TypeError) as expected:
            reference.set_default_executor(bad)
    finally:
        reference.close()
    with pytest.raises(TypeError) as info:
        loop.set_default_executor(bad)
    assert str(info.value) == str(expected.value)
    assert str(info.value).startswith("executor must be ThreadPoolExecutor")


def test_shutdown_default_executor(loop, run):
    threads = []

    def record():
        threads.append(threading.current_thread())

    run(loop.run_in_executor(None, record))
    run(loop.shutdown_default_executor())
    assert not threads[0].is_alive()
    with pytest.raises(RuntimeError, match="^Executor shutdown has been called$"):
        loop.run_in_executor(None, print)
    # a custom executor is still fine
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        assert run(loop.run_in_executor(ex, pow, 2, 5)) == 32


def test_shutdown_default_executor_without_executor(loop, run):
    t0 = time.monotonic()
    assert run(loop.shutdown_default_executor()) is None
    assert time.monotonic() - t0 < 1
    with pytest.raises(RuntimeError, match="^Executor shutdown has been called$"):
        loop.run_in_executor(None, print)


def test_shutdown_default_executor_waits_for_running_jobs(loop, run):
    done = []

    def job():
        time.sleep(0.05)
        done.append(True)

    fut = loop.run_in_executor(None, job)
    run(loop.shutdown_default_executor())
    assert done == [True]
    assert run(fut) is None


@pytest.mark.skipif(sys.version_info < (3, 12), reason="timeout= is new in Python 3.12")
def test_shutdown_default_executor_timeout(loop, run):
    assert run(loop.run_in_executor(None, pow, 2, 3)) == 8
    assert run(loop.shutdown_default_executor(timeout=5)) is None


def test_close_shuts_down_default_executor(new_loop):
    lp = new_loop()
    threads = []
    lp.run_until_complete(
        lp.run_in_executor(None, lambda: threads.append(threading.current_thread()))
    )
    lp.close()
    threads[0].join(5)
    assert not threads[0].is_alive()


def test_to_thread(loop, run):
    async def main():
        return await asyncio.to_thread(_thread_info, 1, 2)

    ident, _, args = run(main())
    assert ident != threading.get_ident()
    assert args == (1, 2)


def test_to_thread_propagates_contextvars(loop, run):
    async def main():
        var.set("from-task")
        return await asyncio.to_thread(var.get)

    assert run(main()) == "from-task"
    assert var.get() == "default"


def test_to_thread_exception(loop, run):
    def fails():
        raise KeyError("thread")

    async def main():
        await asyncio.to_thread(fails)

    with pytest.raises(KeyError):
        run(main())


def test_run_in_executor_cancel_wrapper(loop, run):
    release = threading.Event()

    async def main():
        fut = loop.run_in_executor(None, release.wait, 5)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(fut, 0.01)
        assert fut.cancelled()

    try:
        run(main())
    finally:
        release.set()


def test_burst_of_blocking_jobs_runs_in_parallel(loop, run):
    # After one job, one worker waits for work; a burst of 4 blocking jobs
    # must start more workers, not queue behind it (issue #9's soak found
    # ferroloop running such a burst on one thread, one job after another).
    def blocking():
        time.sleep(0.3)
        return threading.current_thread().name

    async def main():
        await loop.run_in_executor(None, int)
        await asyncio.sleep(0.05)  # that worker is idle now
        return await asyncio.gather(*(loop.run_in_executor(None, blocking) for _ in range(4)))

    names = run(main())
    assert len(set(names)) == 4, names


EXIT_WITH_A_JOB_RUNNING = """
import time
loop = make_loop()
loop.run_in_executor(None, time.sleep, 0.1)  # still running at exit
loop.close()  # shuts the executor down without waiting


class SlowFinalizer:
    # Keeps the interpreter finalizing while the job ends.
    def __del__(self):
        time.sleep(0.3)


keep = SlowFinalizer()
print("exiting")
"""


def test_exit_with_an_executor_job_running(run_child):
    # The job is finished and its worker joined before the interpreter
    # finalizes, as concurrent.futures does: ferroloop's worker, never
    # joined, woke during finalization and the process aborted (SIGABRT).
    proc = run_child(EXIT_WITH_A_JOB_RUNNING)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "exiting\n"


def test_replaced_default_executor_lets_its_workers_go(loop, run):
    # set_default_executor() drops the old default executor without
    # shutting it down: once it is collected, its idle workers exit
    # (ferroloop's stayed for the rest of the process, one per replacement).
    import gc

    before = set(threading.enumerate())
    run(loop.run_in_executor(None, time.sleep, 0.01))
    loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(1))
    gc.collect()
    run(loop.run_in_executor(None, int))

    async def settle():
        deadline = loop.time() + 5
        while loop.time() < deadline:
            left = [t for t in set(threading.enumerate()) - before if t.name.startswith("asyncio")]
            if not left:
                return []
            await asyncio.sleep(0.01)
        return [t.name for t in left]

    assert run(settle()) == []
