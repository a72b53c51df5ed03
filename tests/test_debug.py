"""Debug mode: flag, environment, slow callbacks, thread checks."""

import asyncio
import logging
import os
import re
import sys
import threading
import time

import pytest


def _expected_default_debug():
    return bool(
        sys.flags.dev_mode
        or (not sys.flags.ignore_environment and os.environ.get("PYTHONASYNCIODEBUG"))
    )


def test_debug_default(new_loop):
    assert new_loop().get_debug() == _expected_default_debug()


def test_set_debug(loop):
    loop.set_debug(True)
    assert loop.get_debug() is True
    loop.set_debug(False)
    assert loop.get_debug() is False


def test_set_debug_while_running(loop, run):
    async def main():
        loop.set_debug(True)
        await asyncio.sleep(0)
        first = loop.get_debug()
        loop.set_debug(False)
        await asyncio.sleep(0)
        return first, loop.get_debug()

    assert run(main()) == (True, False)


@pytest.mark.parametrize("env_value,expected", [("1", True), ("", False), (None, False)])
def test_debug_env_variable(run_child, env_value, expected):
    body = "lp = make_loop()\nprint(lp.get_debug())\nlp.close()\n"
    extra = {} if env_value is None else {"PYTHONASYNCIODEBUG": env_value}
    proc = run_child(body, **extra)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(expected)


def test_dev_mode_enables_debug(child_script):
    import subprocess

    path, env = child_script("lp = make_loop()\nprint(lp.get_debug())\nlp.close()\n")
    proc = subprocess.run(
        [sys.executable, "-X", "dev", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True"


def test_slow_callback_duration_default(loop):
    assert loop.slow_callback_duration == 0.1
    loop.slow_callback_duration = 0.5
    assert loop.slow_callback_duration == 0.5


def test_slow_callback_warning(loop, run_forever, caplog):
    loop.set_debug(True)
    loop.slow_callback_duration = 0.02

    def slow_callback():
        time.sleep(0.05)

    loop.call_soon(slow_callback)
    loop.call_soon(loop.stop)
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        run_forever()
    records = [r for r in caplog.records if r.name == "asyncio"]
    assert len(records) == 1
    assert records[0].levelno == logging.WARNING
    msg = records[0].getMessage()
    assert re.fullmatch(r"Executing <Handle .*slow_callback\(\).*> took \d+\.\d{3} seconds", msg), (
        msg
    )
    took = float(re.search(r"took (\d+\.\d{3}) seconds", msg).group(1))
    assert took >= 0.049


def test_slow_task_step_warning(loop, run, caplog):
    loop.set_debug(True)
    loop.slow_callback_duration = 0.02

    async def slow_coroutine():
        time.sleep(0.05)  # noqa: ASYNC251 - a deliberately slow task step

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        run(slow_coroutine())
    msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(msgs) == 1
    assert re.fullmatch(
        r"Executing <Task .*slow_coroutine\(\).*> took \d+\.\d{3} seconds", msgs[0], re.DOTALL
    ), msgs


def test_no_slow_callback_warning_without_debug(loop, run_forever, caplog):
    loop.set_debug(False)
    loop.slow_callback_duration = 0.001
    loop.call_soon(time.sleep, 0.01)
    loop.call_soon(loop.stop)
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        run_forever()
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_fast_callbacks_not_reported(loop, run_forever, caplog):
    loop.set_debug(True)
    for _ in range(100):
        loop.call_soon(lambda: None)
    loop.call_soon(loop.stop)
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        run_forever()
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


NON_THREADSAFE = "Non-thread-safe operation invoked on an event loop other than the current one"


@pytest.mark.parametrize("method", ["call_soon", "call_later", "call_at"])
def test_debug_non_threadsafe_call_from_other_thread(loop, run, method):
    loop.set_debug(True)
    errors = []

    def worker():
        args = {"call_later": (0,), "call_at": (loop.time(),)}.get(method, ())
        try:
            getattr(loop, method)(*args, print)
        except RuntimeError as exc:
            errors.append(str(exc))

    async def main():
        th = threading.Thread(target=worker)
        th.start()
        while th.is_alive():
            await asyncio.sleep(0.001)
        th.join()

    run(main())
    assert errors == [NON_THREADSAFE]


def test_debug_call_soon_threadsafe_from_other_thread_is_fine(loop, run):
    loop.set_debug(True)
    fut = loop.create_future()

    async def main():
        th = threading.Thread(target=loop.call_soon_threadsafe, args=(fut.set_result, "ok"))
        th.start()
        result = await asyncio.wait_for(fut, 5)
        th.join()
        return result

    assert run(main()) == "ok"


def test_debug_call_soon_from_other_thread_when_not_running(loop, run_forever):
    # The thread check only applies while the loop runs.
    loop.set_debug(True)
    seen = []
    th = threading.Thread(target=loop.call_soon, args=(seen.append, "x"))
    th.start()
    th.join()
    loop.call_soon(loop.stop)
    run_forever()
    assert seen == ["x"]


def test_debug_run_in_executor_rejects_coroutine_function(loop):
    async def coro_fn():
        pass

    loop.set_debug(True)
    with pytest.raises(TypeError, match=r"^coroutines cannot be used with run_in_executor\(\)$"):
        loop.run_in_executor(None, coro_fn)


def test_coroutine_origin_tracking_in_debug(loop, run):
    from asyncio import constants

    before = sys.get_coroutine_origin_tracking_depth()
    loop.set_debug(True)

    async def main():
        return sys.get_coroutine_origin_tracking_depth()

    assert run(main()) == constants.DEBUG_STACK_DEPTH
    assert sys.get_coroutine_origin_tracking_depth() == before
