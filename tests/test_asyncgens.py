"""Async generator hooks and shutdown_asyncgens."""

import asyncio
import gc
import sys

import pytest
from conftest import since


def _make_agen(log, fail_on_close=False):
    async def agen():
        try:
            for i in range(10):
                yield i
                await asyncio.sleep(0)
        finally:
            log.append("finalized")
            if fail_on_close:
                raise ValueError("close failed")

    return agen()


def test_hooks_installed_while_running_and_restored(loop, run):
    def firstiter(agen):
        pass

    def finalizer(agen):
        pass

    saved = sys.get_asyncgen_hooks()
    sys.set_asyncgen_hooks(firstiter=firstiter, finalizer=finalizer)
    try:

        async def main():
            return sys.get_asyncgen_hooks()

        inside = run(main())
        assert inside.firstiter is not None and inside.firstiter != firstiter
        assert inside.finalizer is not None and inside.finalizer != finalizer
        after = sys.get_asyncgen_hooks()
        assert after.firstiter is firstiter
        assert after.finalizer is finalizer
    finally:
        sys.set_asyncgen_hooks(*saved)


def test_hooks_restored_after_exception(loop):
    saved = sys.get_asyncgen_hooks()

    async def main():
        raise KeyError

    with pytest.raises(KeyError):
        loop.run_until_complete(main())
    assert sys.get_asyncgen_hooks() == saved


def test_shutdown_asyncgens_finalizes_unfinished(loop, run):
    log = []
    holder = []

    async def main():
        agen = _make_agen(log)
        holder.append(agen)  # keep it alive
        assert await agen.__anext__() == 0
        assert await agen.__anext__() == 1

    run(main())
    assert log == []
    run(loop.shutdown_asyncgens())
    assert log == ["finalized"]
    assert holder[0].ag_frame is None  # closed


def test_shutdown_asyncgens_without_generators(loop, run):
    assert run(loop.shutdown_asyncgens()) is None


def test_shutdown_asyncgens_ignores_finished_and_unstarted(loop, run):
    log = []
    keep = []

    async def main():
        finished = _make_agen(log)
        keep.append(finished)
        async for _ in finished:
            pass
        keep.append(_make_agen(log))  # never started: not tracked

    run(main())
    assert log == ["finalized"]
    run(loop.shutdown_asyncgens())
    assert log == ["finalized"]


def test_garbage_collected_agen_is_closed_by_the_loop(loop, run):
    log = []

    async def main():
        agen = _make_agen(log)
        await agen.__anext__()
        del agen
        gc.collect()
        for _ in range(5):
            await asyncio.sleep(0)
        return list(log)

    assert run(main()) == ["finalized"]


def test_shutdown_asyncgens_reports_close_errors(loop, exc_handler, run):
    log = []
    holder = []

    async def main():
        agen = _make_agen(log, fail_on_close=True)
        holder.append(agen)
        await agen.__anext__()

    run(main())
    run(loop.shutdown_asyncgens())
    assert log == ["finalized"]
    [ctx] = exc_handler.take()
    assert ctx["message"].startswith("an error occurred during closing of asynchronous generator")
    assert isinstance(ctx["exception"], ValueError)
    assert ctx["asyncgen"] is holder[0]


def test_agen_first_iterated_after_shutdown_warns(loop, run):
    log = []
    holder = []
    run(loop.shutdown_asyncgens())

    async def main():
        agen = _make_agen(log)
        holder.append(agen)
        await agen.__anext__()

    with pytest.warns(
        ResourceWarning, match=r"was scheduled after loop\.shutdown_asyncgens\(\) call"
    ):
        run(main())
    run(holder[0].aclose())
    assert log == ["finalized"]


@since((3, 11), "asyncio.Runner")
def test_runner_finalizes_asyncgens(loop_factory):
    log = []
    holder = []

    async def main():
        agen = _make_agen(log)
        holder.append(agen)
        await agen.__anext__()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())
        assert log == []
    assert log == ["finalized"]
