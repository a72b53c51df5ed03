"""pytest plugin: run a project's async tests on ferroloop.

    pytest -p ferroloop.pytest_plugin      (or: pytest -p ferroloop)

While the plugin is loaded, every event loop a test creates through asyncio's
policy is a ferroloop loop: pytest-asyncio tests, anyio tests on the asyncio
backend, ``unittest.IsolatedAsyncioTestCase`` and ``asyncio.run`` /
``asyncio.Runner`` inside a test. ``--no-ferroloop`` turns it off for a run.
"""

from __future__ import annotations

import asyncio
import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pytest

_STATE_KEY = "_ferroloop_saved_policy"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ferroloop")
    group.addoption(
        "--no-ferroloop",
        action="store_true",
        default=False,
        help="keep asyncio's default event loop although the ferroloop plugin is loaded",
    )


def _set_policy(policy: asyncio.AbstractEventLoopPolicy | None) -> None:
    with warnings.catch_warnings():
        # The policy API is deprecated on Python 3.14+; it is still the one
        # hook that pytest-asyncio, anyio and unittest all honour.
        warnings.simplefilter("ignore", DeprecationWarning)
        asyncio.set_event_loop_policy(policy)


def _get_policy() -> asyncio.AbstractEventLoopPolicy:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return asyncio.get_event_loop_policy()


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("no_ferroloop", default=False):
        return
    if hasattr(config, _STATE_KEY):
        return  # loaded twice (e.g. -p ferroloop -p ferroloop.pytest_plugin)
    from . import EventLoopPolicy

    setattr(config, _STATE_KEY, _get_policy())
    _set_policy(EventLoopPolicy())
    config.addinivalue_line("markers", "ferroloop: the test runs on ferroloop")


def pytest_unconfigure(config: pytest.Config) -> None:
    saved = getattr(config, _STATE_KEY, None)
    if saved is not None:
        delattr(config, _STATE_KEY)
        _set_policy(saved)


def pytest_report_header(config: pytest.Config) -> str | None:
    if hasattr(config, _STATE_KEY):
        from . import __version__

        return f"event loop: ferroloop {__version__}"
    return None
