"""API surface: the loop's methods, ferroloop's module API, ``python -m ferroloop``.

Tests taking the ``loop``/``loop_factory`` fixture run on both loops; the
ones below "ferroloop module API" are about ferroloop's own entry points and
are not parametrized (they need ferroloop, by nature).
"""

import asyncio
import gc
import os
import socket
import subprocess
import sys
import textwrap
import warnings
import weakref
from unittest import mock

import pytest
from conftest import since


def import_ferroloop():
    import ferroloop  # a real import: failing it fails the test

    return ferroloop


# Networking, raw-I/O, pipe and subprocess methods come with a later issue:
# ferroloop may raise NotImplementedError for exactly these (they must exist).
DEFERRED_METHODS = frozenset(
    {
        # fd watchers
        "add_reader",
        "remove_reader",
        "add_writer",
        "remove_writer",
        # DNS
        "getaddrinfo",
        "getnameinfo",
        # streams / servers / datagrams / TLS
        "create_connection",
        "create_server",
        "create_unix_connection",
        "create_unix_server",
        "connect_accepted_socket",
        "create_datagram_endpoint",
        "sendfile",
        "start_tls",
        # low-level socket operations
        "sock_accept",
        "sock_connect",
        "sock_recv",
        "sock_recv_into",
        "sock_recvfrom",
        "sock_recvfrom_into",
        "sock_sendall",
        "sock_sendfile",
        "sock_sendto",
        # pipes and subprocesses
        "connect_read_pipe",
        "connect_write_pipe",
        "subprocess_exec",
        "subprocess_shell",
    }
)

PUBLIC_METHODS = sorted(n for n in dir(asyncio.AbstractEventLoop) if not n.startswith("_"))
CORE_METHODS = [n for n in PUBLIC_METHODS if n not in DEFERRED_METHODS]


# AbstractEventLoop has these from 3.11 on (ferroloop has them on 3.10 too).
NEW_IN_311 = frozenset({"sock_recvfrom", "sock_recvfrom_into", "sock_sendto"})


def test_method_lists_are_consistent():
    expected = DEFERRED_METHODS if sys.version_info >= (3, 11) else DEFERRED_METHODS - NEW_IN_311
    assert expected <= set(PUBLIC_METHODS)
    assert {"run_forever", "call_soon", "add_signal_handler", "time"} <= set(CORE_METHODS)


def test_isinstance_abstract_event_loop(loop):
    assert isinstance(loop, asyncio.AbstractEventLoop)
    assert isinstance(loop, asyncio.events.AbstractEventLoop)


def test_loop_is_hashable(loop, run):
    # The pure-Python current-task bookkeeping of every version keys a dict
    # by loop; 3.14's C Task checks the running loop by identity.
    assert {loop: 1}[loop] == 1
    assert hash(loop) == hash(loop)

    async def main():
        return asyncio.current_task(loop) is asyncio.current_task()

    assert run(main())


def test_loop_type(loop, loop_name):
    if loop_name == "ferroloop":
        ferroloop = import_ferroloop()
        assert isinstance(loop, ferroloop.Loop)
        assert type(loop).__module__.startswith("ferroloop")
    else:
        assert isinstance(loop, asyncio.BaseEventLoop)


@pytest.mark.parametrize("name", PUBLIC_METHODS)
def test_public_method_exists(loop, name):
    assert callable(getattr(loop, name))


@pytest.mark.parametrize("name", CORE_METHODS)
def test_core_method_is_implemented(loop, name):
    # not the abstract stub that only raises NotImplementedError
    assert getattr(type(loop), name) is not getattr(asyncio.AbstractEventLoop, name)


def test_deferred_methods_work_or_raise_not_implemented(loop, run):
    """Each deferred method either works (asyncio) or raises NotImplementedError."""
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)

    def attempt(fn):
        try:
            fn()
        except NotImplementedError:
            return "not-implemented"
        return "ok"

    try:
        results = {
            "add_reader": attempt(lambda: loop.add_reader(a.fileno(), print)),
            "remove_reader": attempt(lambda: loop.remove_reader(a.fileno())),
            "add_writer": attempt(lambda: loop.add_writer(a.fileno(), print)),
            "remove_writer": attempt(lambda: loop.remove_writer(a.fileno())),
            "getaddrinfo": attempt(lambda: run(loop.getaddrinfo("127.0.0.1", 80))),
            "sock_sendall": attempt(lambda: run(loop.sock_sendall(b, b"x"))),
        }
    finally:
        a.close()
        b.close()
    assert set(results.values()) <= {"ok", "not-implemented"}


def test_mock_patch_object_call_soon(loop, run):
    with mock.patch.object(loop, "call_soon", wraps=loop.call_soon) as patched:
        fut = loop.create_future()
        fut.add_done_callback(lambda f: None)
        fut.set_result(1)
        assert patched.call_count == 1
        assert run(asyncio.sleep(0, "x")) == "x"
        assert patched.call_count > 1
    assert "call_soon" not in vars(loop)
    assert loop.call_soon(print) is not None


def test_mock_patch_object_other_methods(loop):
    with mock.patch.object(loop, "call_exception_handler") as patched:
        loop.call_exception_handler({"message": "patched"})
    patched.assert_called_once_with({"message": "patched"})
    with mock.patch.object(loop, "time", return_value=123.0):
        assert loop.time() == 123.0


def test_instance_attributes(loop):
    loop.some_user_attribute = 5
    assert loop.some_user_attribute == 5
    assert loop.slow_callback_duration == 0.1


def test_weakref_and_hash(loop):
    ref = weakref.ref(loop)
    assert ref() is loop
    assert {loop: 1}[loop] == 1
    ws = weakref.WeakSet([loop])
    assert loop in ws


def test_repr(loop):
    loop.set_debug(False)
    r = repr(loop)
    assert "running=False" in r
    assert "closed=False" in r
    assert "debug=False" in r
    loop.set_debug(True)
    assert "debug=True" in repr(loop)


def test_set_event_loop_and_get_event_loop(loop):
    asyncio.set_event_loop(loop)
    assert asyncio.get_event_loop() is loop


# --------------------------------------------------------------------------
# ferroloop module API (ferroloop-only by nature)
# --------------------------------------------------------------------------


@pytest.fixture
def ferroloop():
    return import_ferroloop()


@pytest.fixture
def restore_policy():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        saved = asyncio.get_event_loop_policy()
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        asyncio.set_event_loop_policy(saved)


async def _loop_info():
    loop = asyncio.get_running_loop()
    await asyncio.sleep(0)
    return type(loop), loop.get_debug()


def test_version(ferroloop):
    assert isinstance(ferroloop.__version__, str)
    assert ferroloop.__version__[0].isdigit()


def test_new_event_loop(ferroloop):
    lp = ferroloop.new_event_loop()
    try:
        assert isinstance(lp, ferroloop.Loop)
        assert isinstance(lp, asyncio.AbstractEventLoop)
        assert not lp.is_running()
        assert not lp.is_closed()
    finally:
        lp.close()
    assert lp.is_closed()


def test_loop_class_is_a_factory(ferroloop):
    lp = ferroloop.Loop()
    try:
        assert lp.run_until_complete(_loop_info())[0] is type(lp)
    finally:
        lp.close()


def _expected_default_debug():
    # debug=None (the default) means: whatever a new loop picks up from the
    # interpreter (-X dev) and the environment (PYTHONASYNCIODEBUG).
    return bool(
        sys.flags.dev_mode
        or (not sys.flags.ignore_environment and os.environ.get("PYTHONASYNCIODEBUG"))
    )


def test_run(ferroloop):
    loop_type, debug = ferroloop.run(_loop_info())
    assert issubclass(loop_type, ferroloop.Loop)
    assert debug is _expected_default_debug()


def test_run_no_debug(ferroloop):
    assert ferroloop.run(_loop_info(), debug=False)[1] is False


def test_run_debug(ferroloop):
    assert ferroloop.run(_loop_info(), debug=True)[1] is True


def test_run_loop_factory(ferroloop):
    made = []

    def factory():
        lp = ferroloop.new_event_loop()
        made.append(lp)
        return lp

    assert ferroloop.run(_loop_info(), loop_factory=factory)[0] is type(made[0])
    assert len(made) == 1
    assert made[0].is_closed()


def test_run_propagates_exception(ferroloop):
    async def boom():
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        ferroloop.run(boom())


def test_run_inside_running_loop(ferroloop):
    # like asyncio.run(): fail fast, without creating (and leaking) a loop
    async def outer():
        coro = _loop_info()
        try:
            with pytest.raises(RuntimeError, match="cannot be called from a running event loop"):
                ferroloop.run(coro)
        finally:
            coro.close()
        return "ok"

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert ferroloop.run(outer()) == "ok"
        gc.collect()
    assert [str(w.message) for w in caught] == []


def test_run_non_coroutine(ferroloop):
    with pytest.raises(ValueError, match="^a coroutine was expected, got 1$"):
        ferroloop.run(1)


@since((3, 11), "asyncio.Runner")
def test_runner_with_ferroloop_factory(ferroloop):
    with asyncio.Runner(loop_factory=ferroloop.new_event_loop) as runner:
        assert issubclass(runner.run(_loop_info())[0], ferroloop.Loop)
        assert isinstance(runner.get_loop(), ferroloop.Loop)


def test_event_loop_policy(ferroloop, restore_policy):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        policy = ferroloop.EventLoopPolicy()
        assert isinstance(policy, asyncio.AbstractEventLoopPolicy)
        lp = policy.new_event_loop()
        try:
            assert isinstance(lp, ferroloop.Loop)
        finally:
            lp.close()
        asyncio.set_event_loop_policy(policy)
    loop_type, _ = asyncio.run(_loop_info())
    assert issubclass(loop_type, ferroloop.Loop)


def test_install(ferroloop, restore_policy):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ferroloop.install()
    deprecations = [w for w in caught if issubclass(w.category, DeprecationWarning)]
    if sys.version_info >= (3, 12):
        assert deprecations, "install() should emit a DeprecationWarning on 3.12+"
    else:
        assert deprecations == []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert isinstance(asyncio.get_event_loop_policy(), ferroloop.EventLoopPolicy)
        lp = asyncio.new_event_loop()
    try:
        assert isinstance(lp, ferroloop.Loop)
    finally:
        lp.close()
    assert issubclass(asyncio.run(_loop_info())[0], ferroloop.Loop)


def test_pytest_plugin_module_importable(ferroloop):
    import importlib

    assert importlib.import_module("ferroloop.pytest_plugin") is not None


# --------------------------------------------------------------------------
# python -m ferroloop
# --------------------------------------------------------------------------

MAIN_SCRIPT = textwrap.dedent(
    """\
    import asyncio
    import sys

    import ferroloop


    async def main():
        loop = asyncio.get_running_loop()
        print(type(loop).__module__.split(".")[0])
        print(isinstance(loop, ferroloop.Loop))
        print(repr(sys.argv[1:]))
        print(__name__)


    asyncio.run(main())
    if "--exit" in sys.argv:
        sys.exit(int(sys.argv[-1]))
    """
)


def _child_env(tmp_path=None):
    env = dict(os.environ)
    env.pop("PYTHONASYNCIODEBUG", None)
    if tmp_path is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tmp_path), env.get("PYTHONPATH")) if p)
    return env


def test_python_m_ferroloop_script(ferroloop, tmp_path):
    script = tmp_path / "fl_script.py"
    script.write_text(MAIN_SCRIPT)
    proc = subprocess.run(
        [sys.executable, "-m", "ferroloop", str(script), "a", "--flag", "b c"],
        check=False,
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "ferroloop",
        "True",
        repr(["a", "--flag", "b c"]),
        "__main__",
    ]


def test_python_m_ferroloop_module(ferroloop, tmp_path):
    (tmp_path / "fl_sample_module.py").write_text(MAIN_SCRIPT)
    proc = subprocess.run(
        [sys.executable, "-m", "ferroloop", "-m", "fl_sample_module", "x", "y"],
        check=False,
        env=_child_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["ferroloop", "True", repr(["x", "y"]), "__main__"]


def test_python_m_ferroloop_exit_code(ferroloop, tmp_path):
    script = tmp_path / "fl_exit.py"
    script.write_text(MAIN_SCRIPT)
    proc = subprocess.run(
        [sys.executable, "-m", "ferroloop", str(script), "--exit", "3"],
        check=False,
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.splitlines()[:2] == ["ferroloop", "True"]


PRETEND_PYPY = (
    "sys.implementation = types.SimpleNamespace(**{**vars(sys.implementation), 'name': 'pypy'})"
)


@pytest.mark.parametrize(
    "pretend, shown",
    [
        ("sys.version_info = (3, 9, 18, 'final', 0)", "cpython"),
        (PRETEND_PYPY, "pypy"),
    ],
    ids=["python-3.9", "pypy"],
)
def test_import_refused_on_unsupported_python(ferroloop, pretend, shown):
    # Before the native module is loaded: a clear ImportError, not a symbol
    # or ABI error from the extension.
    code = textwrap.dedent(
        f"""
        import sys, types
        {pretend}
        try:
            import ferroloop
        except ImportError as exc:
            print("ImportError:", exc)
        else:
            print("imported")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.startswith("ImportError: ferroloop needs CPython 3.10 or later"), out
    assert f"this is {shown} " in out
    assert "_ferroloop" not in out


def test_closed_loop_holds_no_fd(loop_factory):
    # close() closes every fd of the loop, though the object lives on (a
    # fixture or a test keeping its closed loops): ferroloop's kept its
    # eventfd waker until the object was freed.
    from conftest import open_fds

    before = open_fds()
    loops = []
    for _ in range(20):
        lp = loop_factory()
        lp.run_until_complete(asyncio.sleep(0))
        lp.call_soon_threadsafe(print)  # the waker has been used
        lp.close()
        loops.append(lp)
    gc.collect()
    assert open_fds() == before
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        loops[0].call_soon_threadsafe(print)
