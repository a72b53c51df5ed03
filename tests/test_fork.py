"""Behaviour after os.fork()."""

import asyncio
import os
import threading
import warnings

import pytest
from conftest import since

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def _fork():
    # 3.12+ warns when forking a process that has threads (pytest-timeout's
    # watchdog thread may be one); the children here only run a loop and
    # leave through os._exit().
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return os.fork()


def _in_child(fn):
    """Fork; the child runs fn() -> exit code and leaves via os._exit.

    Returns the child's exit code as seen by the parent.
    """
    pid = _fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 99
        try:
            code = fn()
        except BaseException:  # noqa: BLE001 - the child must always exit
            code = 98
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _work_on_new_loop(loop_factory):
    lp = loop_factory()
    try:

        async def main():
            fut = lp.create_future()
            lp.call_soon(fut.set_result, "soon")
            first = await fut
            second = await asyncio.sleep(0.01, "slept")
            third = lp.create_future()
            threading.Thread(
                target=lp.call_soon_threadsafe, args=(third.set_result, "thread")
            ).start()
            return [first, second, await asyncio.wait_for(third, 5)]

        return 0 if lp.run_until_complete(main()) == ["soon", "slept", "thread"] else 1
    finally:
        lp.close()


def test_new_loop_in_forked_child_works(loop, loop_factory, run):
    run(asyncio.sleep(0))  # the parent's loop has been used
    assert _in_child(lambda: _work_on_new_loop(loop_factory)) == 0
    # and the parent's loop is unaffected
    assert run(asyncio.sleep(0.001, "parent")) == "parent"


def test_new_loop_in_child_forked_from_running_loop(loop, loop_factory, run):
    # Forking from inside a coroutine: the child is not "inside" the
    # parent's running loop, and a new loop runs there.
    async def main():
        return _in_child(lambda: _work_on_new_loop(loop_factory))

    assert run(main()) == 0


@since((3, 11), "asyncio.Runner")
def test_runner_in_forked_child(loop_factory):
    def child():
        async def main():
            await asyncio.sleep(0.001)
            return type(asyncio.get_running_loop())

        with asyncio.Runner(loop_factory=loop_factory) as runner:
            probe = loop_factory()
            expected = type(probe)
            probe.close()
            return 0 if runner.run(main()) is expected else 1

    assert _in_child(child) == 0


# --------------------------------------------------------------------------
# ferroloop-specific: the parent's loop refuses to run in a forked child
# --------------------------------------------------------------------------

ASYNCIO_FORK_REASON = (
    "ferroloop-specific: asyncio has no defined behaviour when a loop created "
    "in the parent is used in a forked child (it shares the parent's selector); "
    "ferroloop documents a RuntimeError"
)


@pytest.mark.parametrize("used_in_parent", [True, False], ids=["used", "unused"])
@pytest.mark.parametrize("how", ["run_until_complete", "run_forever"])
def test_parent_loop_raises_in_forked_child(loop, loop_name, run, used_in_parent, how):
    if loop_name == "asyncio":
        pytest.skip(ASYNCIO_FORK_REASON)
    if used_in_parent:
        run(asyncio.sleep(0))

    def child():
        coro = asyncio.sleep(0)
        try:
            if how == "run_until_complete":
                loop.run_until_complete(coro)
            else:
                loop.call_soon(loop.stop)
                loop.run_forever()
        except RuntimeError:
            return 0
        finally:
            coro.close()
        return 1  # ran: not what ferroloop documents

    assert _in_child(child) == 0
    # the parent's loop still works in the parent
    assert run(asyncio.sleep(0, "parent")) == "parent"
