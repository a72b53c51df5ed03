"""Shared fixtures for the ferroloop behaviour suite.

Every behaviour test takes the ``loop`` (or ``loop_factory``) fixture, which
is parametrized with the ids ``asyncio`` (the reference: asyncio's own
selector loop) and ``ferroloop``.  A test therefore proves that ferroloop
behaves like asyncio.  The ferroloop import is real: when the package cannot
be imported the ``ferroloop`` params error out instead of being skipped.

Run only the reference half with ``pytest tests -k "asyncio and not ferroloop"``.
"""

import asyncio
import contextlib
import gc
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
LOOP_IDS = ("asyncio", "ferroloop")

# The sample project is run by test_pytest_plugin.py in a subprocess, with its
# own rootdir; it must never be collected as part of this suite.
collect_ignore = ["plugin_sample"]

# Hard per-test guard (pytest-timeout, thread method so that even a loop that
# blocks without ever checking for signals cannot hang the run).
HARD_TIMEOUT = 60.0
# Soft guard used by the ``run`` fixture: the loop is stopped from a watchdog
# thread and the test fails, the rest of the session goes on.
DEFAULT_RUN_TIMEOUT = 10.0


def _is_ours(item):
    """True for the items of this suite (not tests/conformance/...)."""
    return Path(str(item.path)).resolve().parent == TESTS_DIR


def pytest_collection_modifyitems(config, items):
    if not config.pluginmanager.hasplugin("timeout"):
        return
    for item in items:
        if _is_ours(item) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(HARD_TIMEOUT, method="thread"))


# --------------------------------------------------------------------------
# loop factories
# --------------------------------------------------------------------------


def import_ferroloop():
    """Import ferroloop for real: an ImportError here fails the test."""
    import ferroloop

    return ferroloop


def asyncio_loop_factory():
    # asyncio.new_event_loop() would go through the current policy, which a
    # test (ferroloop.install()) may have changed; on Unix the default
    # policy's loop is exactly SelectorEventLoop.
    return asyncio.SelectorEventLoop()


def get_loop_factory(name):
    if name == "asyncio":
        return asyncio_loop_factory
    if name == "ferroloop":
        return import_ferroloop().new_event_loop
    raise ValueError(name)


@pytest.fixture(params=LOOP_IDS)
def loop_name(request):
    """``"asyncio"`` or ``"ferroloop"``: which loop the test runs on."""
    return request.param


@pytest.fixture
def loop_factory(loop_name):
    """The factory itself (for asyncio.Runner(loop_factory=...) and such)."""
    return get_loop_factory(loop_name)


@pytest.fixture
def new_loop(loop_factory):
    """Call to get extra loops of the same kind; all are closed at teardown."""
    made = []

    def make():
        lp = loop_factory()
        made.append(lp)
        return lp

    yield make
    for lp in made:
        if not lp.is_closed() and not lp.is_running():
            lp.close()


# --------------------------------------------------------------------------
# the loop fixture
# --------------------------------------------------------------------------


class ExceptionRecorder:
    """Exception handler that records every call.

    A test that expects handler calls reads them with :meth:`take` (which
    also clears them); whatever is left at teardown fails the test.
    """

    def __init__(self):
        self.calls = []

    def __call__(self, loop, context):
        self.calls.append((loop, dict(context)))

    def take(self):
        contexts = [ctx for _, ctx in self.calls]
        self.calls.clear()
        return contexts

    def describe(self):
        lines = []
        for _, ctx in self.calls:
            exc = ctx.get("exception")
            lines.append(f"  message={ctx.get('message')!r} exception={exc!r}")
        return "\n".join(lines)


def _stop_soon(lp):
    with contextlib.suppress(Exception):
        lp.call_soon_threadsafe(lp.stop)


@contextlib.contextmanager
def _watchdog(lp, timeout):
    """Stops *lp* from a thread after *timeout* seconds; yields the Event
    that is set when it did."""
    fired = threading.Event()

    def fire():
        fired.set()
        _stop_soon(lp)

    timer = threading.Timer(timeout, fire)
    timer.daemon = True
    timer.start()
    try:
        yield fired
    finally:
        timer.cancel()


def run_with_timeout(lp, aw, timeout=DEFAULT_RUN_TIMEOUT):
    """``lp.run_until_complete(aw)`` that cannot hang.

    After *timeout* seconds a watchdog thread stops the loop and the test
    fails.
    """
    with _watchdog(lp, timeout) as fired:
        try:
            # Passed through unchanged, so that run_until_complete() wraps a
            # coroutine itself, exactly as in user code.  Tasks left pending
            # by a timeout are cancelled by the fixture teardown.
            return lp.run_until_complete(aw)
        except RuntimeError:
            if fired.is_set():
                pytest.fail(f"coroutine did not finish within {timeout} s")
            raise


def _finalize_loop(lp):
    """What asyncio.Runner.close() does: cancel tasks, shut down, close."""
    if lp.is_closed():
        return
    try:
        pending = [t for t in asyncio.all_tasks(lp) if not t.done()]
        for t in pending:
            t.cancel()
        if pending:
            run_with_timeout(lp, asyncio.gather(*pending, return_exceptions=True), 10.0)
        run_with_timeout(lp, lp.shutdown_asyncgens(), 10.0)
        run_with_timeout(lp, lp.shutdown_default_executor(), 10.0)
    finally:
        lp.close()


@pytest.fixture
def exc_handler():
    """The recording exception handler installed on ``loop``."""
    return ExceptionRecorder()


@pytest.fixture
def loop(loop_factory, exc_handler):
    lp = loop_factory()
    asyncio.set_event_loop(lp)
    lp.set_exception_handler(exc_handler)
    try:
        yield lp
        assert not lp.is_running(), "loop still running at teardown"
        _finalize_loop(lp)
    finally:
        if not lp.is_closed() and not lp.is_running():
            lp.close()
        asyncio.set_event_loop(None)
    # Objects dying with the test (e.g. a pending or failed Task) report
    # through the exception handler: collect them before checking.
    gc.collect()
    if exc_handler.calls:
        pytest.fail("loop exception handler called unexpectedly:\n" + exc_handler.describe())


@pytest.fixture
def run(loop):
    """``run(coro_or_future, timeout=10)``: run_until_complete with a guard."""

    def runner(aw, timeout=DEFAULT_RUN_TIMEOUT):
        return run_with_timeout(loop, aw, timeout)

    return runner


@pytest.fixture
def pair():
    """A connected pair of non-blocking Unix stream sockets, closed after."""
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def run_forever(loop):
    """``run_forever(timeout=10)``: loop.run_forever() with a guard."""

    def runner(timeout=DEFAULT_RUN_TIMEOUT):
        with _watchdog(loop, timeout) as fired:
            loop.run_forever()
        if fired.is_set():
            pytest.fail(f"run_forever() did not return within {timeout} s")

    return runner


# --------------------------------------------------------------------------
# plain helpers (imported by test modules: ``from conftest import ...``)
# --------------------------------------------------------------------------


def since(version, what):
    """Skip marker for a test of *what*, which asyncio has only from Python
    *version* (a ``(major, minor)`` tuple) on; the reason names both."""
    return pytest.mark.skipif(
        sys.version_info < version,
        reason=f"{what} is new in Python {version[0]}.{version[1]}",
    )


def skip_if_asyncio_310(loop_name, what):
    """Skip the asyncio half of a test on 3.10, where asyncio *what* (said
    as "accepts X", ...), while ferroloop keeps 3.11's behaviour there: an
    early, clear TypeError instead of a late or obscure one, or a method
    3.11 added."""
    if loop_name == "asyncio" and sys.version_info < (3, 11):
        pytest.skip(f"3.10's asyncio {what}; ferroloop keeps 3.11's behaviour on 3.10")


def open_fd_count():
    """How many fds this process has open (for leak checks): ``open_fds()``'s,
    so that it and ``settled_fd_count()`` agree (neither counts the fd that
    lists the directory)."""
    return len(open_fds())


def open_fds():
    """This process's open fds, each with what it is (``/proc/self/fd``'s
    link: a path, ``pipe:[N]``, ``socket:[N]``, ...), so a leak check that
    fails names the fd."""
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            pass  # closed since the listing (the listing's own fd among them)
    return fds


async def settled_fds(timeout=1.0):
    """``open_fds()`` once it is steady: garbage collected, and the loop run
    until two reads 10 ms apart agree (a transport closed by an earlier
    test's garbage closes its fd a tick after ``__del__``; a thread left by
    an earlier test may hold a file open for a moment), so a count taken
    before the code under test does not include an fd about to close."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    gc.collect()
    fds = open_fds()
    while loop.time() < deadline:
        await asyncio.sleep(0.01)
        now = open_fds()
        if now == fds:
            break
        fds = now
    return fds


async def settled_fd_count(timeout=1.0):
    """How many fds ``settled_fds()`` finds."""
    return len(await settled_fds(timeout))


async def wait_until(predicate, timeout=5.0):
    """Yield to the running loop until ``predicate()`` holds; fail after
    *timeout* seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.001)


# --------------------------------------------------------------------------
# subprocess helpers
# --------------------------------------------------------------------------

# Prepended to every child script: ``make_loop()`` builds the loop named by
# FERROLOOP_TEST_LOOP, the same way the fixtures do.
CHILD_PRELUDE = """\
import asyncio, os, sys

def make_loop():
    name = os.environ["FERROLOOP_TEST_LOOP"]
    if name == "asyncio":
        return asyncio.SelectorEventLoop()
    import ferroloop
    return ferroloop.new_event_loop()
"""


def child_env(loop_name, **extra):
    env = dict(os.environ)
    env.pop("PYTHONASYNCIODEBUG", None)
    env.pop("PYTHONDEVMODE", None)
    env["FERROLOOP_TEST_LOOP"] = loop_name
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@pytest.fixture
def child_script(loop_name, tmp_path):
    """Write a child script (CHILD_PRELUDE + body) and return (path, env)."""

    def make(body, name="child.py", **env_extra):
        path = tmp_path / name
        path.write_text(CHILD_PRELUDE + body)
        return path, child_env(loop_name, **env_extra)

    return make


@pytest.fixture
def run_child(child_script):
    """Run a child script to completion; returns the CompletedProcess."""

    def run_it(body, args=(), timeout=30, **env_extra):
        path, env = child_script(body, **env_extra)
        return subprocess.run(
            [sys.executable, str(path), *args],
            check=False,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run_it


def _wait_for_line(proc, expected, timeout=20.0):
    """Read proc.stdout until a line equal to *expected* shows up."""
    deadline = time.monotonic() + timeout
    result = {}

    def reader():
        for line in proc.stdout:
            if line.strip() == expected:
                result["ok"] = True
                return

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    t.join(max(0.0, deadline - time.monotonic()))
    return result.get("ok", False)


@pytest.fixture
def wait_for_line():
    """``wait_for_line(popen, "ready")``: True once that stdout line is seen."""
    return _wait_for_line
