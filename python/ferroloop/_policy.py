"""The event loop policy whose loops are ferroloop loops."""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._loop import Loop

if sys.version_info >= (3, 14):
    # asyncio's public policy classes are deprecated on 3.14; their private
    # bases are the same classes without the warning.
    from asyncio.events import _BaseDefaultEventLoopPolicy as _Base
else:
    _Base = asyncio.DefaultEventLoopPolicy

__all__ = ("EventLoopPolicy",)


class EventLoopPolicy(_Base):
    """An asyncio event loop policy whose new_event_loop() returns a
    ferroloop loop::

        asyncio.set_event_loop_policy(ferroloop.EventLoopPolicy())
        asyncio.run(main())
    """

    def _loop_factory(self) -> Loop:
        from ._loop import Loop

        return Loop()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} ferroloop>"
