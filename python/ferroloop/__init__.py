"""ferroloop: asyncio's event loop, rewritten in Rust.

Pick it with any of::

    ferroloop.run(main())
    asyncio.Runner(loop_factory=ferroloop.new_event_loop)
    asyncio.set_event_loop_policy(ferroloop.EventLoopPolicy())
"""

from __future__ import annotations

import sys as _sys
import warnings as _warnings

# Checked before the native module is loaded, whose own failure on a wrong
# interpreter would be an obscure symbol or ABI error. Tested on every change:
# CPython 3.10-3.13; supported by review of its sources: 3.14 (see
# docs/python-versions.md).
if _sys.implementation.name != "cpython" or _sys.version_info < (3, 10):
    raise ImportError(
        "ferroloop needs CPython 3.10 or later (it runs asyncio's C Task and Future); "
        f"this is {_sys.implementation.name} {_sys.version.split()[0]}"
    )
if _sys.version_info >= (3, 15):
    _warnings.warn(
        f"ferroloop has not been tested on Python {_sys.version.split()[0]}: it supports "
        "CPython 3.10 to 3.14",
        RuntimeWarning,
        stacklevel=2,
    )

import asyncio as _asyncio
import atexit as _atexit
from collections.abc import Callable as _Callable
from collections.abc import Coroutine as _Coroutine
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any
from typing import TypeVar as _TypeVar

from . import _ferroloop, metrics
from ._loop import Loop
from ._policy import EventLoopPolicy
from ._stats import Histogram, LoopStats, SlowCallback, TaskStats, Utilization

__version__: str = _ferroloop.__version__

if _TYPE_CHECKING:
    import pytest

__all__ = (
    "EventLoopPolicy",
    "Histogram",
    "Loop",
    "LoopStats",
    "SlowCallback",
    "TaskStats",
    "Utilization",
    "__version__",
    "install",
    "metrics",
    "new_event_loop",
    "run",
    "slow_callbacks",
)

# The slow-callback watchdog (a native thread) captures stacks through
# Python: it must stop before the interpreter finalizes.
_atexit.register(_ferroloop._python_exiting)


def new_event_loop() -> Loop:
    """Return a new ferroloop event loop."""
    return Loop()


def slow_callbacks(loop: Loop | None = None) -> list[SlowCallback]:
    """The last 256 callbacks of ``loop`` (default: the running loop) that ran
    past its slow-callback threshold, oldest first."""
    target = _asyncio.get_running_loop() if loop is None else loop
    if not isinstance(target, Loop):
        raise TypeError(f"slow_callbacks() needs a ferroloop loop, got {target!r}")
    from ._stats import records

    return records(target)


def install() -> None:
    """Make ferroloop the default loop by installing its policy.

    Deprecated on Python 3.12+ (as uvloop.install is): prefer
    ``ferroloop.run(main())`` or ``asyncio.Runner(loop_factory=ferroloop.new_event_loop)``.
    """
    if _sys.version_info >= (3, 12):
        _warnings.warn(
            "ferroloop.install() is deprecated in favor of ferroloop.run() "
            "starting with Python 3.12.",
            DeprecationWarning,
            stacklevel=2,
        )
    with _warnings.catch_warnings():
        # set_event_loop_policy itself is deprecated on 3.14+.
        _warnings.simplefilter("ignore", DeprecationWarning)
        _asyncio.set_event_loop_policy(EventLoopPolicy())


_T = _TypeVar("_T")


def run(
    main: _Coroutine[_Any, _Any, _T],
    *,
    loop_factory: _Callable[[], Loop] = new_event_loop,
    debug: bool | None = None,
    # Passed on to asyncio.run / asyncio.Runner as they are (uvloop.run's
    # signature).
    **run_kwargs: _Any,
) -> _T:
    """Run a coroutine on a new ferroloop loop, like ``asyncio.run``."""

    async def wrapper() -> _T:
        # NOTE: asyncio.run would happily run on another loop; check that the
        # factory really produced a ferroloop loop, as uvloop.run does.
        loop = _asyncio.get_running_loop()
        if not isinstance(loop, Loop):
            raise TypeError(f"ferroloop.run() uses a non-ferroloop event loop: {loop!r}")
        return await main

    if not _asyncio.iscoroutine(main):
        raise ValueError(f"a coroutine was expected, got {main!r}")
    if _asyncio._get_running_loop() is not None:
        # Fail fast, before a loop is created (asyncio.run does the same).
        raise RuntimeError("ferroloop.run() cannot be called from a running event loop")
    import sys  # (the type checker follows `sys.version_info` checks by this name)

    if sys.version_info >= (3, 12):
        return _asyncio.run(wrapper(), loop_factory=loop_factory, debug=debug, **run_kwargs)
    if sys.version_info >= (3, 11):
        with _asyncio.Runner(loop_factory=loop_factory, debug=debug, **run_kwargs) as runner:
            return runner.run(wrapper())
    return _run_310(wrapper(), loop_factory, debug)


def _run_310(
    coro: _Coroutine[_Any, _Any, _T], loop_factory: _Callable[[], Loop], debug: bool | None
) -> _T:
    """asyncio.run for Python 3.10, which has no Runner."""
    if _asyncio._get_running_loop() is not None:
        coro.close()
        raise RuntimeError("asyncio.run() cannot be called from a running event loop")
    loop = loop_factory()
    try:
        _asyncio.set_event_loop(loop)
        if debug is not None:
            loop.set_debug(debug)
        return loop.run_until_complete(coro)
    finally:
        try:
            _cancel_all_tasks(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            _asyncio.set_event_loop(None)
            loop.close()


def _cancel_all_tasks(loop: Loop) -> None:
    to_cancel = _asyncio.all_tasks(loop)
    if not to_cancel:
        return
    for task in to_cancel:
        task.cancel()
    loop.run_until_complete(_asyncio.gather(*to_cancel, return_exceptions=True))
    for task in to_cancel:
        if task.cancelled():
            continue
        if task.exception() is not None:
            loop.call_exception_handler(
                {
                    "message": "unhandled exception during ferroloop.run() shutdown",
                    "exception": task.exception(),
                    "task": task,
                }
            )


# `pytest -p ferroloop` loads this package as a pytest plugin: these hooks
# delegate to ferroloop.pytest_plugin, which imports pytest only when used.


def pytest_addoption(parser: pytest.Parser) -> None:
    from .pytest_plugin import pytest_addoption as hook

    hook(parser)


def pytest_configure(config: pytest.Config) -> None:
    from .pytest_plugin import pytest_configure as hook

    hook(config)


def pytest_unconfigure(config: pytest.Config) -> None:
    from .pytest_plugin import pytest_unconfigure as hook

    hook(config)
