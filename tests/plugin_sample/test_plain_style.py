import asyncio


async def _loop_module():
    await asyncio.sleep(0)
    return type(asyncio.get_running_loop()).__module__


def test_run_inside_plain_test():
    assert asyncio.run(_loop_module()).startswith("ferroloop")


def test_runner_inside_plain_test():
    if not hasattr(asyncio, "Runner"):  # 3.10: asyncio.run() is the runner
        assert asyncio.run(_loop_module()).startswith("ferroloop")
        return
    with asyncio.Runner() as runner:
        assert runner.run(_loop_module()).startswith("ferroloop")


def test_new_event_loop_inside_plain_test(running_on_ferroloop):
    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(_running(running_on_ferroloop))
    finally:
        loop.close()


async def _running(check):
    return check()
