"""gunicorn worker classes that serve an ASGI application with uvicorn on
ferroloop::

    gunicorn app:app -w 4 -k ferroloop.gunicorn.UvicornWorker

They are the ``uvicorn-worker`` package's classes (what uvicorn's own
deprecated ``uvicorn.workers`` became) with uvicorn's ``loop`` setting set to
ferroloop's factory: each worker process runs its server on a new ferroloop
loop, made after gunicorn forked it.

Only importing this module imports gunicorn and uvicorn-worker: ferroloop
itself depends on neither (``pip install gunicorn uvicorn-worker``).
"""

from __future__ import annotations

from typing import Any, ClassVar

try:
    # uvicorn-worker ships no type information (no py.typed): its classes
    # are Any to a type checker.
    from uvicorn_worker import UvicornH11Worker as _H11Base  # type: ignore[import-untyped]
    from uvicorn_worker import UvicornWorker as _Base  # type: ignore[import-untyped]
except ImportError:  # pragma: no cover - depends on the environment
    # No `as exc` (stubtest would see the deleted name): the original error
    # is chained as this one's context all the same.
    raise ImportError(
        "ferroloop.gunicorn needs gunicorn and the uvicorn-worker package "
        "(pip install gunicorn uvicorn-worker)"
    )

__all__ = ("LOOP", "UvicornH11Worker", "UvicornWorker")

# uvicorn's `loop` setting (the `--loop` option) for ferroloop: an import
# string of a loop factory, which uvicorn imports and calls for each loop.
LOOP = "ferroloop:new_event_loop"


class UvicornWorker(_Base):
    """uvicorn on ferroloop, HTTP parser chosen by uvicorn (httptools when it
    is installed, else h11)."""

    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {**_Base.CONFIG_KWARGS, "loop": LOOP}


class UvicornH11Worker(_H11Base):
    """uvicorn on ferroloop with the pure-Python h11 HTTP parser."""

    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {**_H11Base.CONFIG_KWARGS, "loop": LOOP}
