"""call_soon_threadsafe and loops driven from / running in other threads."""

import asyncio
import threading
import time

import pytest


def test_threadsafe_wakes_loop_blocked_in_long_sleep(loop, run):
    async def main():
        fut = loop.create_future()

        def poke():
            time.sleep(0.05)
            loop.call_soon_threadsafe(fut.set_result, time.monotonic())

        th = threading.Thread(target=poke)
        th.start()
        # The only timer is 30 s away: the loop blocks until woken up.
        sent_at = await asyncio.wait_for(fut, 30)
        woken_at = time.monotonic()
        th.join()
        return woken_at - sent_at

    assert run(main()) < 0.5


def test_threadsafe_wakes_idle_run_forever(loop, run_forever):
    # Nothing scheduled at all: the loop waits without a timeout.
    def poke():
        time.sleep(0.05)
        loop.call_soon_threadsafe(loop.stop)

    th = threading.Thread(target=poke)
    t0 = time.monotonic()
    th.start()
    run_forever()
    th.join()
    assert time.monotonic() - t0 < 0.5


def test_threadsafe_many_threads(loop, run):
    n_threads, per_thread = 8, 200
    received = []

    async def main():
        done = loop.create_future()
        total = n_threads * per_thread
        barrier = threading.Barrier(n_threads)

        def on_item(item):
            received.append(item)
            if len(received) == total and not done.done():
                done.set_result(None)

        def producer(tid):
            barrier.wait()
            for i in range(per_thread):
                loop.call_soon_threadsafe(on_item, (tid, i))

        threads = [threading.Thread(target=producer, args=(t,)) for t in range(n_threads)]
        for th in threads:
            th.start()
        await asyncio.wait_for(done, 20)
        for th in threads:
            th.join()

    run(main(), timeout=30)
    assert len(received) == n_threads * per_thread
    for tid in range(n_threads):
        # FIFO per producing thread
        assert [i for t, i in received if t == tid] == list(range(per_thread))


def test_threadsafe_from_many_threads_wakes_quickly(loop, run):
    # Each thread posts once while the loop sleeps; each post is seen fast.
    latencies = []

    async def main():
        for _ in range(10):
            fut = loop.create_future()

            def poke(fut=fut):
                time.sleep(0.01)
                loop.call_soon_threadsafe(fut.set_result, time.monotonic())

            th = threading.Thread(target=poke)
            th.start()
            sent = await asyncio.wait_for(fut, 30)
            latencies.append(time.monotonic() - sent)
            th.join()

    run(main(), timeout=30)
    assert max(latencies) < 0.5


def test_threadsafe_context_argument(loop, run):
    import contextvars

    var = contextvars.ContextVar("ts_var", default="default")
    ctx = contextvars.copy_context()
    ctx.run(var.set, "ctx")

    async def main():
        fut = loop.create_future()
        th = threading.Thread(
            target=lambda: loop.call_soon_threadsafe(lambda: fut.set_result(var.get()), context=ctx)
        )
        th.start()
        result = await asyncio.wait_for(fut, 5)
        th.join()
        return result

    assert run(main()) == "ctx"


def test_is_running_seen_from_other_thread(loop, run):
    seen = []

    async def main():
        th = threading.Thread(target=lambda: seen.append(loop.is_running()))
        th.start()
        while th.is_alive():
            await asyncio.sleep(0.001)
        th.join()

    run(main())
    assert seen == [True]


def test_loop_running_in_worker_thread(new_loop):
    lp = new_loop()
    started = threading.Event()
    results = []

    def thread_main():
        asyncio.set_event_loop(lp)
        lp.call_soon(started.set)
        lp.run_forever()
        results.append(("stopped", threading.get_ident()))

    th = threading.Thread(target=thread_main)
    th.start()
    assert started.wait(5)
    assert lp.is_running()

    cf = asyncio.run_coroutine_threadsafe(asyncio.sleep(0.01, "from-main"), lp)
    assert cf.result(timeout=5) == "from-main"

    lp.call_soon_threadsafe(lp.stop)
    th.join(5)
    assert not th.is_alive()
    assert results and results[0][1] != threading.get_ident()
    assert not lp.is_running()


def test_two_loops_in_two_threads(new_loop):
    loops = [new_loop(), new_loop()]
    out = {}

    def thread_main(i, lp):
        async def main():
            await asyncio.sleep(0.02)
            return asyncio.get_running_loop()

        out[i] = lp.run_until_complete(main())

    threads = [threading.Thread(target=thread_main, args=(i, lp)) for i, lp in enumerate(loops)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(10)
    assert out == {0: loops[0], 1: loops[1]}


def test_call_soon_threadsafe_on_closed_loop(new_loop):
    lp = new_loop()
    lp.close()
    errors = []

    def worker():
        try:
            lp.call_soon_threadsafe(print)
        except RuntimeError as exc:
            errors.append(str(exc))

    th = threading.Thread(target=worker)
    th.start()
    th.join()
    assert errors == ["Event loop is closed"]


@pytest.mark.parametrize("n", [1, 1000])
def test_threadsafe_burst_before_run(loop, run_forever, n):
    seen = []

    def producer():
        for i in range(n):
            loop.call_soon_threadsafe(seen.append, i)

    th = threading.Thread(target=producer)
    th.start()
    th.join()
    loop.call_soon(loop.stop)
    run_forever()
    assert seen == list(range(n))
