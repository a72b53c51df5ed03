import asyncio

import pytest
import pytest_asyncio


@pytest.mark.asyncio
async def test_marked_coroutine():
    assert type(asyncio.get_running_loop()).__module__.startswith("ferroloop")


@pytest_asyncio.fixture
async def loop_module_name():
    await asyncio.sleep(0)
    return type(asyncio.get_running_loop()).__module__


@pytest.mark.asyncio
async def test_async_fixture(loop_module_name):
    assert loop_module_name.startswith("ferroloop")
    assert type(asyncio.get_running_loop()).__module__.startswith("ferroloop")
