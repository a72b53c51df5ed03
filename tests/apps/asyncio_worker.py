"""The reference half of tests/test_fastapi.py's gunicorn test: uvicorn-worker's
worker on asyncio's own loop. (Its stock UvicornWorker says loop="auto",
which is uvloop wherever uvloop is installed.)"""

from typing import Any, ClassVar

from uvicorn_worker import UvicornWorker


class AsyncioUvicornWorker(UvicornWorker):
    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {**UvicornWorker.CONFIG_KWARGS, "loop": "asyncio"}
