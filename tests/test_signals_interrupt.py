"""Ctrl-C (SIGINT) handling and add_signal_handler/remove_signal_handler."""

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import since

# --------------------------------------------------------------------------
# Ctrl-C in a child process
# --------------------------------------------------------------------------

CTRL_C_BODY = """
import time
mode = sys.argv[1]

async def main():
    print("ready", flush=True)
    await asyncio.sleep(30)

if mode == "runner":
    # what asyncio.run() does, with the loop under test
    with asyncio.Runner(loop_factory=make_loop) as runner:
        runner.run(main())
elif mode == "run_until_complete":
    lp = make_loop()
    lp.run_until_complete(main())
elif mode == "run_forever":
    lp = make_loop()
    lp.call_soon(print, "ready")
    lp.run_forever()
elif mode == "busy_callbacks":
    lp = make_loop()
    def spin():
        lp.call_soon(spin)
    lp.call_soon(print, "ready")
    lp.call_soon(spin)
    lp.run_forever()
print("returned normally", flush=True)
"""

EXIT_BOUND = 5.0  # seconds between SIGINT and the child's exit


@pytest.mark.parametrize(
    "mode",
    [
        pytest.param("runner", marks=since((3, 11), "asyncio.Runner")),
        "run_until_complete",
        "run_forever",
        "busy_callbacks",
    ],
)
def test_ctrl_c_raises_keyboard_interrupt(child_script, wait_for_line, mode):
    path, env = child_script(CTRL_C_BODY)
    proc = subprocess.Popen(
        [sys.executable, str(path), mode],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_for_line(proc, "ready"), "child never became ready"
        time.sleep(0.1)  # let it settle into its wait
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=EXIT_BOUND)
        except subprocess.TimeoutExpired:
            pytest.fail(f"child did not exit within {EXIT_BOUND} s of SIGINT")
        elapsed = time.monotonic() - sent
        stderr = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert elapsed < EXIT_BOUND
    # an uncaught KeyboardInterrupt: traceback, then exit "by SIGINT"
    assert "KeyboardInterrupt" in stderr, stderr
    assert proc.returncode == -signal.SIGINT, (proc.returncode, stderr)


# --------------------------------------------------------------------------
# add_signal_handler (in process; pytest runs tests in the main thread)
# --------------------------------------------------------------------------


@pytest.fixture
def restore_sigusr():
    saved = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGUSR2)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


def test_add_signal_handler(loop, run, restore_sigusr):
    got = []

    async def main():
        fut = loop.create_future()

        def on_signal(*args):
            got.append(args)
            if not fut.done():
                fut.set_result(None)

        loop.add_signal_handler(signal.SIGUSR1, on_signal, "arg1", 2)
        os.kill(os.getpid(), signal.SIGUSR1)
        await asyncio.wait_for(fut, 5)

    run(main())
    assert got == [("arg1", 2)]
    assert loop.remove_signal_handler(signal.SIGUSR1) is True
    assert loop.remove_signal_handler(signal.SIGUSR1) is False
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_signal_wakes_blocked_loop(loop, run, restore_sigusr):
    async def main():
        fut = loop.create_future()
        loop.add_signal_handler(signal.SIGUSR2, lambda: fut.set_result(time.monotonic()))

        def sender():
            time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGUSR2)

        th = threading.Thread(target=sender)
        th.start()
        handled_at = await asyncio.wait_for(fut, 30)
        th.join()
        loop.remove_signal_handler(signal.SIGUSR2)
        return handled_at

    t0 = time.monotonic()
    handled_at = run(main())
    assert handled_at - t0 < 0.5


def test_signal_handler_replaced(loop, run, restore_sigusr):
    got = []

    async def main():
        loop.add_signal_handler(signal.SIGUSR1, got.append, "first")
        loop.add_signal_handler(signal.SIGUSR1, got.append, "second")
        os.kill(os.getpid(), signal.SIGUSR1)
        for _ in range(100):
            if got:
                break
            await asyncio.sleep(0.005)

    run(main())
    loop.remove_signal_handler(signal.SIGUSR1)
    assert got == ["second"]


def test_remove_sigint_handler_restores_default_int_handler(loop, restore_sigusr):
    saved = signal.getsignal(signal.SIGINT)
    try:
        loop.add_signal_handler(signal.SIGINT, print)
        assert loop.remove_signal_handler(signal.SIGINT) is True
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, saved)


def test_add_signal_handler_coroutine_function(loop):
    async def handler():
        pass

    with pytest.raises(TypeError, match=r"^coroutines cannot be used with add_signal_handler\(\)$"):
        loop.add_signal_handler(signal.SIGUSR1, handler)


def test_add_signal_handler_bad_signal(loop):
    with pytest.raises(TypeError, match="^sig must be an int, not 'x'$"):
        loop.add_signal_handler("x", print)
    with pytest.raises(ValueError, match="^invalid signal number 100000$"):
        loop.add_signal_handler(100000, print)
    with pytest.raises(ValueError, match="^invalid signal number 100000$"):
        loop.remove_signal_handler(100000)


def test_add_signal_handler_uncatchable(loop):
    with pytest.raises(RuntimeError, match=f"^sig {int(signal.SIGKILL)} cannot be caught$"):
        loop.add_signal_handler(signal.SIGKILL, print)


def test_add_signal_handler_closed_loop(new_loop):
    lp = new_loop()
    lp.close()
    with pytest.raises(RuntimeError, match="^Event loop is closed$"):
        lp.add_signal_handler(signal.SIGUSR1, print)


def test_close_removes_signal_handlers(new_loop, restore_sigusr):
    lp = new_loop()
    lp.add_signal_handler(signal.SIGUSR1, print)
    assert signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, signal.SIG_IGN, None)
    lp.close()
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_add_signal_handler_from_other_thread(new_loop):
    lp = new_loop()
    errors = []

    def worker():
        try:
            lp.add_signal_handler(signal.SIGUSR1, print)
        except (RuntimeError, ValueError) as exc:
            errors.append(exc)

    th = threading.Thread(target=worker)
    th.start()
    th.join()
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError)


SIGNAL_WHILE_RUNNING_ELSEWHERE = """
import signal, threading, time
lp = make_loop()
got = threading.Event()
t = threading.Thread(target=lp.run_forever)
t.start()
while not lp.is_running():
    time.sleep(0.001)
time.sleep(0.1)  # the loop is now idle, blocked in its poll
# From the main thread, as signal handlers must be: returns at once on
# asyncio's loop (ferroloop once waited here, holding the GIL, for the
# poll to end: a hang).
lp.add_signal_handler(signal.SIGUSR1, got.set)
os.kill(os.getpid(), signal.SIGUSR1)
assert got.wait(10), "handler not called"
assert lp.remove_signal_handler(signal.SIGUSR1)
lp.call_soon_threadsafe(lp.stop)
t.join(10)
assert not t.is_alive()
lp.close()
print("ok")
"""


def test_add_signal_handler_while_loop_runs_in_another_thread(run_child):
    # In a child process: a hang must not take the test session with it.
    proc = run_child(SIGNAL_WHILE_RUNNING_ELSEWHERE, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_signal_handler_runs_after_what_the_tick_scheduled(loop, run_forever, restore_sigusr):
    # asyncio reads its wakeup fd in an I/O callback and queues the handler
    # behind what the tick's callbacks scheduled: it runs a tick later.
    order = []
    loop.add_signal_handler(signal.SIGUSR1, order.append, "signal handler")

    def first():
        order.append("first")
        loop.call_soon(order.append, "scheduled by first")

    os.kill(os.getpid(), signal.SIGUSR1)
    loop.call_soon(first)
    loop.call_later(0.05, loop.stop)
    run_forever()
    assert order == ["first", "scheduled by first", "signal handler"]


def test_signal_handler_exit_leaves_no_stop_behind(loop, run, restore_sigusr):
    # A handler's SystemExit ends run_until_complete() after its future is
    # done; the next run must not stop at once on that run's stop (ferroloop
    # ran the handler a tick early, ahead of the queued stop).
    def handler():
        raise SystemExit(3)

    async def quick():
        return 1

    async def slower():
        await asyncio.sleep(0.01)
        return "done"

    loop.add_signal_handler(signal.SIGUSR1, handler)
    os.kill(os.getpid(), signal.SIGUSR1)
    with pytest.raises(SystemExit):
        run(quick())
    assert run(slower()) == "done"


def test_close_outside_the_main_thread_with_a_signal_handler(new_loop, restore_sigusr):
    # Removing the handler raises ValueError outside the main thread; the
    # loop is closed by then, as asyncio's close() closes it first.
    lp = new_loop()
    lp.add_signal_handler(signal.SIGUSR2, print)
    result = []

    def close():
        try:
            lp.close()
            result.append("closed")
        except ValueError:
            result.append("ValueError")

    t = threading.Thread(target=close)
    t.start()
    t.join()
    try:
        assert result == ["ValueError"]
        assert lp.is_closed()
    finally:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGUSR2, signal.SIG_DFL)
