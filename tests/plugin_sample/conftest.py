"""Shared helper of the sample project (on purpose defines no loop fixture)."""

import asyncio

import pytest


def on_ferroloop():
    return type(asyncio.get_running_loop()).__module__.startswith("ferroloop")


@pytest.fixture
def running_on_ferroloop():
    return on_ferroloop


@pytest.fixture
def anyio_backend():
    # anyio would also run each test on trio when trio is installed
    return "asyncio"
