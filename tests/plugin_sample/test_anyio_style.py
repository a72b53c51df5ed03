import asyncio

import pytest


@pytest.mark.anyio
async def test_anyio_on_asyncio_backend(anyio_backend):
    assert anyio_backend == "asyncio"
    assert type(asyncio.get_running_loop()).__module__.startswith("ferroloop")
