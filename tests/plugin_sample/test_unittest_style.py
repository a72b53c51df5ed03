import asyncio
import unittest


class IsolatedCase(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self):
        self.setup_module = type(asyncio.get_running_loop()).__module__

    async def test_isolated_asyncio_test_case(self):
        assert self.setup_module.startswith("ferroloop")
        assert type(asyncio.get_running_loop()).__module__.startswith("ferroloop")
