"""Loop observability: ``Loop.stats()``, ``Loop.utilization()``, slow callbacks,
the OpenMetrics exporter (src/metrics, python/ferroloop/_stats.py).

asyncio's loop has none of this API, so these tests run on ferroloop only
(the ``floop`` fixture); each checks the numbers against a workload whose
numbers are known. What must not change for programs that never look
(asyncio's debug-mode slow-callback log) runs on both loops at the end.
"""

import asyncio
import gc
import logging
import os
import socket
import sys
import threading
import time
import urllib.request

import pytest
from conftest import ExceptionRecorder, run_with_timeout


@pytest.fixture
def floop():
    """A ferroloop loop whose exception handler must stay unused."""
    import ferroloop

    lp = ferroloop.new_event_loop()
    recorder = ExceptionRecorder()
    lp.set_exception_handler(recorder)
    yield lp
    if not lp.is_closed():
        lp.close()
    assert not recorder.calls, "unexpected exception handler calls:\n" + recorder.describe()


def run_callbacks(lp, schedule):
    """Runs one ``run_forever`` whose first tick runs what ``schedule``
    queued, then stops; returns the stats delta."""
    before = lp.stats()
    schedule()
    lp.call_soon(lp.stop)
    lp.run_forever()
    return lp.stats().delta(before)


def spin(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


# --------------------------------------------------------------------------
# counters and histograms
# --------------------------------------------------------------------------


def test_ready_callbacks_in_one_tick(floop):
    n = 1000
    ran = []

    def schedule():
        for i in range(n):
            floop.call_soon(ran.append, i)

    d = run_callbacks(floop, schedule)
    assert len(ran) == n
    # The N callbacks plus loop.stop, all in the first tick.
    assert d.ticks == 1
    assert d.callbacks == {"ready": n + 1, "timer": 0, "io": 0, "threadsafe": 0}
    assert d.callbacks_total == n + 1
    assert d.callbacks_per_tick.count == 1
    assert d.callbacks_per_tick.sum == n + 1
    # The bucket of 1001 holds 896..1023.
    assert 1001 <= d.callbacks_per_tick.percentile(50) <= 1023
    assert d.ready_queue_depth == n + 1
    assert d.ready_queue_depth_max >= n + 1
    assert d.tick_duration.count == 1
    assert d.interval > 0


def test_cancelled_handles_do_not_count(floop):
    def schedule():
        for _ in range(10):
            floop.call_soon(lambda: None).cancel()
        floop.call_soon(lambda: None)

    d = run_callbacks(floop, schedule)
    assert d.callbacks["ready"] == 2  # one callback and loop.stop


def test_timers_fired_cancelled_and_their_lateness(floop):
    fired = []
    lateness = 0.05

    def schedule():
        # Due 50 ms ago: each runs exactly that late (plus this tick).
        now = floop.time()
        for i in range(20):
            floop.call_at(now - lateness, fired.append, i)
        for _ in range(7):
            floop.call_later(10, fired.append, None).cancel()

    before = floop.stats()
    schedule()
    floop.call_later(0.01, floop.stop)
    floop.run_forever()
    d = floop.stats().delta(before)
    assert fired == list(range(20))
    assert d.timers_scheduled == 20 + 7 + 1
    assert d.timers_cancelled == 7
    assert d.timers_fired == 21
    assert d.callbacks["timer"] == 21
    late = d.timer_lateness
    assert late.count == 21
    # 20 timers 50 ms late (their bucket: 50..62.5 ms), one on time.
    assert late.percentile(90) >= lateness
    assert late.percentile(90) <= lateness * 1.25 + 0.05
    assert late.percentile(1) < 0.01
    assert lateness <= late.max < lateness + 0.05
    assert late.sum >= 20 * lateness


def test_threadsafe_callbacks_and_wakeups(floop):
    n = 50
    got = []

    async def main():
        done = asyncio.Event()

        def cb(i):
            got.append(i)
            if len(got) == n:
                done.set()

        def feed():
            for i in range(n):
                floop.call_soon_threadsafe(cb, i)
                time.sleep(0.001)

        before = floop.stats()
        t = threading.Thread(target=feed)
        t.start()
        await done.wait()
        t.join()
        return floop.stats().delta(before)

    d = run_with_timeout(floop, main())
    assert got == list(range(n))
    assert d.callbacks["threadsafe"] == n
    # The loop slept between most calls: each of those woke it once.
    assert 1 <= d.threadsafe_wakeups <= n
    assert d.polls_blocking >= d.threadsafe_wakeups


def test_fd_events_io_callbacks_and_bytes(floop):
    payload = b"x" * 100_000

    async def main():
        received = bytearray()
        done = asyncio.Event()

        async def handle(reader, writer):
            while chunk := await reader.read(65536):
                received.extend(chunk)
            done.set()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        before = floop.stats()
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        during = floop.stats()
        writer.write(payload)
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        await done.wait()
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0)
        return during.transports_open - before.transports_open, floop.stats().delta(before)

    opened, d = run_with_timeout(floop, main())
    assert opened >= 1  # the client's transport (the server's too, once accepted)
    # Both ends live in this loop: everything sent was received.
    assert d.bytes_sent >= len(payload)
    assert d.bytes_received >= len(payload)
    assert d.bytes_received == d.bytes_sent
    assert d.fd_read_events >= 2
    assert d.callbacks["io"] >= 2
    assert d.transports_opened >= 2
    assert d.transports_closed == d.transports_opened
    assert d.transports_open == 0


def test_add_reader_callbacks_are_io(floop):
    a, b = socket.socketpair()
    try:

        async def main():
            got = asyncio.Event()

            def on_readable():
                a.recv(100)
                got.set()

            floop.add_reader(a.fileno(), on_readable)
            before = floop.stats()
            b.send(b"ping")
            await got.wait()
            floop.remove_reader(a.fileno())
            return floop.stats().delta(before)

        d = run_with_timeout(floop, main())
        assert d.callbacks["io"] == 1
        assert d.fd_read_events >= 1
    finally:
        a.close()
        b.close()


def test_tasks_created_alive_finished(floop):
    """Tasks finishing are counted natively, in whichever of their steps
    they end: the first, one after ``sleep(0)``, a wake-up, by an error or
    by cancellation."""
    fut = floop.create_future()

    async def at_once():
        return 1

    async def after_yields(n):
        for _ in range(n):
            await asyncio.sleep(0)

    async def awaiting():
        return await fut

    async def failing():
        raise ValueError("expected")

    async def forever():
        await asyncio.sleep(3600)

    async def main():
        before = floop.stats()
        made = [floop.create_task(at_once()) for _ in range(5)]
        made += [floop.create_task(after_yields(i)) for i in range(1, 6)]
        made += [floop.create_task(awaiting()) for _ in range(5)]
        made += [floop.create_task(failing()) for _ in range(5)]
        pending = [floop.create_task(forever()) for _ in range(5)]
        middle = floop.stats()
        await asyncio.sleep(0)
        fut.set_result(2)
        await asyncio.wait(made)
        assert all(isinstance(t.exception(), ValueError) for t in made[15:])
        settled = floop.stats()
        for t in pending:
            t.cancel()
        await asyncio.wait(pending)
        # A done task's other methods run as callbacks are not its steps.
        floop.call_soon(made[0].cancel)
        floop.call_soon(made[0].done)
        await asyncio.sleep(0)
        return before, middle, settled, floop.stats()

    before, middle, settled, after = run_with_timeout(floop, main())
    assert middle.tasks_created - before.tasks_created == 25
    assert middle.tasks_alive == before.tasks_alive + 25
    assert middle.tasks_finished == before.tasks_finished
    assert settled.delta(before).tasks_finished == 20
    assert settled.tasks_alive == before.tasks_alive + 5
    assert after.delta(before).tasks_finished == 25
    assert after.tasks_alive == before.tasks_alive
    assert after.tasks_created - after.tasks_finished == after.tasks_alive


def test_create_task_that_raises_counts_no_task(floop):
    """A create_task() call that fails made no task: it is not created, and
    not alive forever (the soak found tasks_alive growing by one per
    failed call)."""

    def factory(loop, coro, **kwargs):
        coro.close()
        raise RuntimeError("factory refuses")

    async def main():
        before = floop.stats()
        for _ in range(10):
            with pytest.raises(TypeError):
                floop.create_task(floop.create_future())  # not a coroutine
        floop.set_task_factory(factory)
        for _ in range(10):
            with pytest.raises(RuntimeError, match="factory refuses"):
                floop.create_task(asyncio.sleep(0))
        floop.set_task_factory(None)
        return before, floop.stats()

    before, after = run_with_timeout(floop, main())
    assert after.tasks_created == before.tasks_created
    assert after.tasks_alive == before.tasks_alive


def test_tasks_of_a_factory_and_subclass_counted(floop):
    class MyTask(asyncio.Task):
        pass

    floop.set_task_factory(lambda loop, coro, **kw: MyTask(coro, loop=loop, **kw))

    async def child():
        await asyncio.sleep(0)

    async def main():
        before = floop.stats()
        await asyncio.gather(*(child() for _ in range(7)))
        return before, floop.stats()

    before, after = run_with_timeout(floop, main())
    assert after.delta(before).tasks_created == 7
    assert after.delta(before).tasks_finished == 7
    assert after.tasks_alive == before.tasks_alive


@pytest.mark.skipif(sys.version_info < (3, 12), reason="eager task factories are 3.12+")
def test_eager_tasks_finished_in_create_task_counted(floop):
    floop.set_task_factory(asyncio.eager_task_factory)

    async def at_once():
        return 1

    async def later():
        await asyncio.sleep(0)

    async def main():
        before = floop.stats()
        done = [floop.create_task(at_once()) for _ in range(3)]
        assert all(t.done() for t in done)  # finished inside create_task
        waiting = [floop.create_task(later()) for _ in range(4)]
        middle = floop.stats()
        await asyncio.gather(*waiting)
        return before, middle, floop.stats()

    before, middle, after = run_with_timeout(floop, main())
    assert middle.delta(before).tasks_created == 7
    assert middle.delta(before).tasks_finished == 3
    assert middle.tasks_alive == before.tasks_alive + 4
    assert after.delta(before).tasks_finished == 7
    assert after.tasks_alive == before.tasks_alive


def test_tasks_with_metrics_off_counted_at_the_snapshot(monkeypatch):
    """``FERROLOOP_METRICS=0``: nothing is counted per step; ``stats()``
    counts the unfinished tasks from ``asyncio.all_tasks()`` instead."""
    import ferroloop

    monkeypatch.setenv("FERROLOOP_METRICS", "0")
    lp = ferroloop.new_event_loop()
    try:

        async def main():
            hold = asyncio.Event()
            waiting = [lp.create_task(hold.wait()) for _ in range(3)]
            await asyncio.sleep(0)
            middle = lp.stats()
            hold.set()
            await asyncio.gather(*waiting)
            return middle, lp.stats()

        middle, after = run_with_timeout(lp, main())
    finally:
        lp.close()
    assert not middle.enabled
    assert middle.tasks_alive == 4  # main and the three waiting
    assert after.tasks_alive == 1
    assert after.tasks_finished == after.tasks_created - 1


def test_utilization_busy_and_idle(floop):
    async def busy():
        before = floop.utilization()
        end = time.perf_counter() + 0.3
        while time.perf_counter() < end:
            spin(0.002)
            await asyncio.sleep(0)
        return floop.utilization(before)

    async def idle():
        before = floop.utilization()
        await asyncio.sleep(0.3)
        return floop.utilization(before)

    u_busy = run_with_timeout(floop, busy())
    u_idle = run_with_timeout(floop, idle())
    assert u_busy.utilization > 0.9, u_busy
    assert u_busy.active >= 0.25
    assert u_idle.utilization < 0.1, u_idle
    assert 0.25 <= u_idle.idle <= 1.0
    total = floop.utilization()
    assert total.idle + total.active == pytest.approx(floop.stats().run_time, rel=0.01)
    s = floop.stats()
    assert s.idle_time <= s.poll_time <= s.run_time
    assert s.callbacks_time + s.poll_time <= s.run_time * 1.001 + 1e-6
    assert s.overhead_time >= 0
    assert s.poll_wait.count == s.polls_blocking
    assert s.poll_wait.sum == pytest.approx(s.idle_time, rel=1e-6, abs=1e-6)


def test_precise_mode_times_every_callback(floop):
    n = 20
    floop.set_metrics_precise(True)

    def schedule():
        for _ in range(n):
            floop.call_soon(spin, 0.002)

    d = run_callbacks(floop, schedule)
    assert d.precise
    h = d.callback_duration
    assert h.count == n + 1  # and loop.stop
    assert 0.002 <= h.percentile(50) <= 0.002 * 1.25 + 0.01
    assert h.sum >= n * 0.002
    floop.set_metrics_precise(False)
    d = run_callbacks(floop, schedule)
    assert not d.precise
    assert d.callback_duration.count == 0


def test_stats_is_an_immutable_snapshot(floop):
    import dataclasses

    s = floop.stats()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.ticks = 0
    with pytest.raises(TypeError):
        s.callbacks["ready"] = 1
    with pytest.raises(TypeError, match="LoopStats"):
        s.delta(42)
    with pytest.raises(TypeError, match="Utilization"):
        floop.utilization(s)
    with pytest.raises(ValueError, match="percentile"):
        s.tick_duration.percentile(101)


def test_two_loops_in_two_threads_are_kept_apart(floop):
    import ferroloop

    results = {}

    def worker(name, n):
        lp = ferroloop.new_event_loop()
        try:
            before = lp.stats()
            for _ in range(n):
                lp.call_soon(lambda: None)
            lp.call_soon(lp.stop)
            lp.run_forever()

            async def talk():
                a, b = socket.socketpair()
                _, wa = await asyncio.open_connection(sock=a)
                rb, wb = await asyncio.open_connection(sock=b)
                wa.write(b"y" * n)
                await rb.readexactly(n)
                for w in (wa, wb):
                    w.close()
                    await w.wait_closed()

            lp.run_until_complete(talk())
            results[name] = (lp.stats().delta(before), lp.stats().loop_id)
        finally:
            lp.close()

    threads = [
        threading.Thread(target=worker, args=("a", 300)),
        threading.Thread(target=worker, args=("b", 700)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (da, ida), (db, idb) = results["a"], results["b"]
    assert ida != idb
    assert da.bytes_sent == 300 and da.bytes_received == 300
    assert db.bytes_sent == 700 and db.bytes_received == 700
    assert da.callbacks["ready"] >= 301 and db.callbacks["ready"] >= 701
    assert db.callbacks["ready"] - da.callbacks["ready"] == 400


# --------------------------------------------------------------------------
# slow callbacks
# --------------------------------------------------------------------------


def sleepy_callback():
    time.sleep(0.08)  # the line the captured stack shows


async def sleepy_task():
    await asyncio.sleep(0)
    time.sleep(0.08)  # noqa: ASYNC251 - the slow step under test
    await asyncio.sleep(0)  # where the slow step suspended


def test_slow_callback_recorded_with_stack(floop):
    import ferroloop

    def schedule():
        floop.call_soon(sleepy_callback)

    d = run_callbacks(floop, schedule)
    assert d.slow_callbacks == 1
    assert d.slow_callback_threshold == 0.05
    (rec,) = ferroloop.slow_callbacks(floop)
    assert rec.kind == "ready"
    assert "sleepy_callback" in rec.handle
    assert f"{__file__}:" in rec.handle  # the callback's file and line
    assert 0.05 <= rec.duration <= 0.08 + 0.1
    assert rec.start <= floop.time() - rec.duration
    assert rec.task is None
    # Captured while time.sleep blocked: the innermost frame is that line.
    assert rec.stack is not None
    last = rec.stack.strip().splitlines()[-2:]
    assert "sleepy_callback" in last[0]
    assert "time.sleep(0.08)" in last[1]


_OPENED = {"hooked": False, "watching": False, "files": []}


def _record_opens(event, args):
    if _OPENED["watching"] and event == "open":
        _OPENED["files"].append((threading.get_ident(), args[0]))


def test_watchdog_opens_no_file_in_the_program(floop):
    """The watchdog captures a slow callback's stack without reading source
    files: linecache would open them from the watchdog thread in the middle
    of the program's callback (with the GIL released around the reads, the
    program could see the extra fd). The lines are looked up on the loop
    thread after the callback returns. Seen through the "open" audit event,
    which the opening thread raises."""
    import linecache

    import ferroloop

    if not _OPENED["hooked"]:  # audit hooks stay for the process: add once
        sys.addaudithook(_record_opens)
        _OPENED["hooked"] = True

    def slow():
        linecache.clearcache()  # a capture that read sources would open them now
        _OPENED["files"].clear()
        _OPENED["watching"] = True
        try:
            time.sleep(0.12)  # the watchdog flags it at 50 ms and captures
        finally:
            _OPENED["watching"] = False

    floop.call_soon(slow)
    floop.call_soon(floop.stop)
    floop.run_forever()
    (rec,) = ferroloop.slow_callbacks(floop)
    assert rec.stack is not None  # captured while the callback ran
    assert "time.sleep(0.12)" in rec.stack  # source lines looked up afterwards
    assert _OPENED["files"] == []


def test_slow_task_step_names_the_task_and_lines(floop):
    import ferroloop

    async def main():
        task = floop.create_task(sleepy_task(), name="the-sleeper")
        await task

    run_with_timeout(floop, main())
    (rec,) = ferroloop.slow_callbacks(floop)
    assert rec.task == "the-sleeper"
    assert rec.coroutine == "sleepy_task"
    first = sleepy_task.__code__.co_firstlineno
    assert rec.started_at == f"{__file__}:{first}"
    assert rec.location == f"{__file__}:{first + 3}"
    assert "sleepy_task" in rec.stack


def test_fast_callbacks_are_not_recorded(floop):
    import ferroloop

    def schedule():
        for _ in range(100):
            floop.call_soon(spin, 0.001)

    d = run_callbacks(floop, schedule)
    assert d.slow_callbacks == 0
    assert ferroloop.slow_callbacks(floop) == []


def test_slow_callback_handler_runs_later_on_the_loop(floop):
    calls = []
    order = []

    def handler(record):
        calls.append((record, threading.get_ident()))
        order.append("handler")

    def slow():
        spin(0.03)
        order.append("slow")

    floop.set_slow_callback_handler(handler, 0.01)
    floop.call_soon(slow)
    floop.call_soon(order.append, "next")
    floop.call_later(0.05, floop.stop)
    floop.run_forever()
    assert len(calls) == 1
    record, thread = calls[0]
    assert thread == threading.get_ident()
    assert "slow" in record.handle
    assert record.duration >= 0.01
    # Scheduled after the slow callback returned: after what was queued.
    assert order == ["slow", "next", "handler"]
    floop.set_slow_callback_handler(None)
    floop.call_soon(spin, 0.03)
    floop.call_later(0.05, floop.stop)
    floop.run_forever()
    assert len(calls) == 1


def test_slow_callback_threshold_is_checked(floop):
    with pytest.raises(ValueError, match="at least 0.001"):
        floop.set_slow_callback_handler(None, 0.0005)
    with pytest.raises(ValueError, match="at least 0.001"):
        floop.set_slow_callback_handler(None, float("nan"))
    with pytest.raises(TypeError, match="callable"):
        floop.set_slow_callback_handler(42)
    with pytest.raises(TypeError):
        floop.set_slow_callback_handler(None, "fast")
    floop.set_slow_callback_handler(None, 0.001)
    assert floop.stats().slow_callback_threshold == 0.001


def test_ring_keeps_the_last_256(floop):
    import ferroloop

    floop.set_slow_callback_handler(None, 0.001)
    for i in range(260):
        floop._push_slow_record((float(i), 0.1, "ready", f"h{i}", None, None, None, None, None))
    recs = ferroloop.slow_callbacks(floop)
    assert len(recs) == 256
    assert recs[0].handle == "h4" and recs[-1].handle == "h259"


# --------------------------------------------------------------------------
# OpenMetrics
# --------------------------------------------------------------------------


def parse_openmetrics(text):
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(family, loop_id, **labels):
    return [
        s
        for s in family.samples
        if s.labels.get("loop") == str(loop_id)
        and all(s.labels.get(k) == v for k, v in labels.items())
    ]


def test_openmetrics_parses_and_matches_stats(floop):
    import ferroloop

    def schedule():
        for _ in range(123):
            floop.call_soon(lambda: None)
        floop.call_at(floop.time() - 0.01, lambda: None)

    run_callbacks(floop, schedule)
    stats = floop.stats()
    families = parse_openmetrics(ferroloop.metrics.openmetrics())
    lid = stats.loop_id
    (ticks,) = samples(families["ferroloop_ticks"], lid)
    assert ticks.name == "ferroloop_ticks_total" and ticks.value == stats.ticks
    for kind, n in stats.callbacks.items():
        (s,) = samples(families["ferroloop_callbacks"], lid, kind=kind)
        assert s.value == n
    assert families["ferroloop_timer_lateness_seconds"].type == "histogram"
    hist = samples(families["ferroloop_timer_lateness_seconds"], lid)
    buckets = [s for s in hist if s.name.endswith("_bucket")]
    count = next(s for s in hist if s.name.endswith("_count"))
    total = next(s for s in hist if s.name.endswith("_sum"))
    assert count.value == stats.timer_lateness.count == 1
    assert total.value == pytest.approx(stats.timer_lateness.sum)
    values = [s.value for s in buckets]
    assert values == sorted(values)  # cumulative
    assert buckets[-1].labels["le"] == "+Inf" and buckets[-1].value == 1
    # The 10 ms lateness is counted from the first bound above it.
    for s in buckets[:-1]:
        assert s.value == (1 if float(s.labels["le"]) > stats.timer_lateness.max else 0)
    per_tick = samples(families["ferroloop_callbacks_per_tick"], lid)
    assert next(s for s in per_tick if s.name.endswith("_count")).value == stats.ticks
    (busy,) = samples(families["ferroloop_busy_seconds"], lid)
    assert busy.value == pytest.approx(stats.busy_time, rel=1e-6, abs=1e-9)
    for name in ("ferroloop_received_bytes", "ferroloop_slow_callbacks"):
        assert samples(families[name], lid), name
    for name, value in (
        ("ferroloop_tasks_created", stats.tasks_created),
        ("ferroloop_tasks_finished", stats.tasks_finished),
        ("ferroloop_tasks_alive", stats.tasks_alive),
    ):
        (s,) = samples(families[name], lid)
        assert s.value == value, name
    floop.close()
    text = ferroloop.metrics.openmetrics()
    assert f'loop="{lid}"' not in text  # closed loops leave the export
    assert text.endswith("# EOF\n")


def test_scrape_answers_while_the_loop_blocks(floop):
    import ferroloop

    server = ferroloop.metrics.serve(0)
    try:
        assert server.port > 0 and server.is_serving()
        answers = []

        def scrape():
            url = f"http://127.0.0.1:{server.port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as r:
                answers.append((time.monotonic(), r.headers["Content-Type"], r.read().decode()))

        def blocking():
            # The loop thread holds the GIL for most of this (a busy spin)
            # and then sleeps: the scrape is answered during it.
            t = threading.Thread(target=scrape)
            t.start()
            spin(0.2)
            time.sleep(0.3)
            t.join(0.01)
            answers.append(("returned", time.monotonic()))

        floop.call_soon(blocking)
        floop.call_soon(floop.stop)
        floop.run_forever()
        (when, ctype, text), (_, returned) = answers
        assert when < returned
        assert ctype.startswith("application/openmetrics-text")
        families = parse_openmetrics(text)
        (running,) = samples(families["ferroloop_running"], floop.stats().loop_id)
        assert running.value == 1
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/nope", timeout=5)
        assert e.value.code == 404
    finally:
        server.close()
    assert not server.is_serving()
    server.close()  # idempotent
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=2)


def test_serve_reports_a_busy_port():
    import ferroloop

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(OSError) as e:
            ferroloop.metrics.serve(s.getsockname()[1])
        assert e.value.errno is not None


# The open loop's watchdog thread (and pytest-timeout's) make this process
# multi-threaded; 3.12+ warns on fork() then. The children here only make
# and run a loop of their own and exit.
forks_threaded = pytest.mark.filterwarnings(
    "ignore:This process .* is multi-threaded:DeprecationWarning"
)


@forks_threaded
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_exports_its_own_loop(floop):
    import ferroloop

    run_callbacks(floop, lambda: None)
    parent_id = floop.stats().loop_id
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(r)
            lp = ferroloop.new_event_loop()
            lp.call_soon(lp.stop)
            lp.run_forever()
            text = ferroloop.metrics.openmetrics()
            ok = f'loop="{lp.stats().loop_id}"' in text and f'loop="{parent_id}"' not in text
            os.write(w, b"ok" if ok else text.encode()[:4000])
        finally:
            os._exit(0)
    os.close(w)
    out = b""
    while chunk := os.read(r, 65536):
        out += chunk
    os.close(r)
    os.waitpid(pid, 0)
    assert out == b"ok"
    gc.collect()


# --------------------------------------------------------------------------
# nothing changes for programs that never look
# --------------------------------------------------------------------------


def test_debug_mode_slow_callback_log_is_unchanged(loop, caplog):
    loop.set_debug(True)
    loop.slow_callback_duration = 0.01

    def slow():
        time.sleep(0.03)

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.call_soon(slow)
        loop.call_soon(loop.stop)
        loop.run_forever()
    msgs = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("Executing <Handle") and "slow" in m and "took" in m for m in msgs), (
        msgs
    )


def test_python_level_apis_unchanged_by_metrics(loop):
    async def main():
        t = asyncio.current_task()
        return t in asyncio.all_tasks(), type(t).__module__

    in_all, module = run_with_timeout(loop, main())
    assert in_all
    assert module in ("_asyncio", "asyncio.tasks")
    assert sys.modules.get("ferroloop") is None or not hasattr(asyncio.Task, "_ferroloop")


# --------------------------------------------------------------------------
# the stats page and `python -m ferroloop top`
# --------------------------------------------------------------------------


def page_path(lp):
    return f"/dev/shm/ferroloop-{os.getpid()}-{lp.stats().loop_id}.stats"


needs_shm = pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no tmpfs at /dev/shm")


@needs_shm
def test_stats_page_follows_the_loop(floop):
    from ferroloop import _top

    assert not os.path.exists(page_path(floop))  # made when the loop first runs

    async def main():
        for _ in range(50):
            floop.call_soon(lambda: None)
        await asyncio.sleep(0.01)
        floop.call_at(floop.time() - 0.02, lambda: None)
        await asyncio.sleep(0.01)

    run_with_timeout(floop, main())
    path = page_path(floop)
    assert os.stat(path).st_mode & 0o777 == 0o600
    snap = _top.read_page(path)
    stats = floop.stats()
    # Published when the loop stopped: the same numbers.
    assert snap.pid == os.getpid() and snap.loop_id == stats.loop_id
    assert snap.counters["ticks"] == stats.ticks
    assert snap.counters["cb_ready"] == stats.callbacks["ready"]
    assert snap.counters["cb_timer"] == stats.callbacks["timer"]
    assert snap.counters["run_ns"] == round(stats.run_time * 1e9)
    assert sum(snap.lateness) == stats.timer_lateness.count
    assert snap.lateness_max == round(stats.timer_lateness.max * 1e9)
    assert snap.polling_since == 0 and snap.slow_since == 0
    assert 0 <= time.monotonic() - snap.published < 5
    floop.close()
    assert not os.path.exists(path)


@needs_shm
def test_stats_page_can_be_turned_off(tmp_path):
    code = (
        "import asyncio, os, ferroloop\n"
        "async def main():\n"
        "    lp = asyncio.get_running_loop()\n"
        "    print(os.path.exists(f'/dev/shm/ferroloop-{os.getpid()}-{lp.stats().loop_id}.stats'))\n"
        "ferroloop.run(main())\n"
    )
    for env, expected in (({}, "True"), ({"FERROLOOP_STATS_PAGE": "0"}, "False")):
        out = subprocess_output([sys.executable, "-c", code], env)
        assert out.strip() == expected, (env, out)


def subprocess_output(cmd, env=None):
    import subprocess

    p = subprocess.run(
        cmd,
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )
    assert p.returncode == 0, p.stderr
    return p.stdout


TARGET = """
import asyncio, sys, time
import ferroloop


def sleeper():
    time.sleep(0.08)  # the line top shows


async def main():
    loop = asyncio.get_running_loop()
    loop.call_soon(sleeper)
    await asyncio.sleep(0.1)
    print("ready", flush=True)
    while True:
        loop.call_soon(sleeper)
        for _ in range(20):
            await asyncio.sleep(0.01)


ferroloop.run(main())
"""


@needs_shm
def test_top_in_a_terminal_shows_a_running_process(tmp_path):
    import pty
    import re
    import subprocess

    script = tmp_path / "target.py"
    script.write_text(TARGET)
    target = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert target.stdout.readline().strip() == "ready"
        master, slave = pty.openpty()
        top = subprocess.Popen(
            [sys.executable, "-m", "ferroloop", "top", str(target.pid)]
            + ["--interval", "0.4", "--count", "2"],
            stdout=slave,
            stderr=subprocess.PIPE,
            close_fds=True,
        )
        os.close(slave)
        screen = b""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: top exited and closed the terminal
                break
            if not chunk:
                break
            screen += chunk
        os.close(master)
        assert top.wait(10) == 0, top.stderr.read()
    finally:
        target.kill()
        target.wait()
    text = screen.decode()
    assert "\x1b[2J" in text  # a terminal: each frame redraws the screen
    frame = text.rsplit("\x1b[2J", 1)[-1]
    assert f"ferroloop top - pid {target.pid}" in frame
    assert re.search(r"loop \d+  thread \d+", frame), frame
    util = float(re.search(r"util +([\d.]+)%", frame).group(1))
    assert 5 <= util <= 100, frame  # ~80 ms of every ~300 ms sleeps in a callback
    assert re.search(r"ticks/s [\d.]+k?", frame)
    assert re.search(r"lag p50 [\d.]+ms  p99 [\d.]+ms  max [\d.]+ms", frame), frame
    assert "slow callbacks (over 50ms):" in frame
    assert re.search(r"tasks 1 alive, \d+ finished", frame), frame  # main()
    assert "<Handle sleeper() at" in frame
    assert f"{script}:7 in sleeper: time.sleep(0.08)" in frame


def test_top_on_a_process_without_ferroloop():
    out = subprocess_output(
        [sys.executable, "-m", "ferroloop", "top", str(os.getpid()), "--once", "--interval", "0.1"]
    )
    assert "no running ferroloop loop found" in out


def test_top_on_a_missing_process():
    import subprocess

    p = subprocess.run(
        [sys.executable, "-m", "ferroloop", "top", "999999999", "--once"],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert p.returncode == 1
    assert "no process 999999999" in p.stderr


@needs_shm
@forks_threaded
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_publishes_its_own_page(floop):
    import ferroloop
    from ferroloop import _top

    run_callbacks(floop, lambda: None)
    parent_page = page_path(floop)
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(ready_r)
            os.close(done_w)
            lp = ferroloop.new_event_loop()

            async def main():
                await asyncio.sleep(0.01)
                os.write(ready_w, str(lp.stats().loop_id).encode())
                await lp.run_in_executor(None, os.read, done_r, 1)

            lp.run_until_complete(main())
            lp.close()
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(done_r)
    try:
        child_loop = int(os.read(ready_r, 100))
        path = f"/dev/shm/ferroloop-{pid}-{child_loop}.stats"
        snap = _top.read_page(path)
        assert snap is not None and snap.pid == pid and snap.loop_id == child_loop
        assert snap.counters["ticks"] > 0
        assert _top.read_process(pid).keys() == {child_loop}
        assert os.path.exists(parent_page)  # the parent's page is the parent's
    finally:
        os.write(done_w, b"x")
        os.close(done_w)
        os.close(ready_r)
        os.waitpid(pid, 0)
    assert not os.path.exists(path)  # the child's loop.close() removed it
    assert os.path.exists(parent_page)


# --------------------------------------------------------------------------
# per-task stats (opt-in)
# --------------------------------------------------------------------------


def test_task_stats_for_a_group(floop):
    async def worker(steps, busy):
        for _ in range(steps):
            spin(busy)
            await asyncio.sleep(0)

    async def main():
        floop.set_task_stats(True, group="job-")
        jobs = [floop.create_task(worker(5, 0.004), name=f"job-{i}") for i in range(3)]
        other = floop.create_task(worker(2, 0), name="other")
        await asyncio.gather(*jobs, other)
        return jobs, other, floop.task_stats()

    jobs, other, table = run_with_timeout(floop, main())
    assert set(table) == set(jobs)  # the group only
    assert other not in table
    for job in jobs:
        st = table[job]
        assert st.name == job.get_name() and st.coroutine.endswith("worker")
        assert st.done
        # 5 steps that spin 4 ms, then the step that returns.
        assert st.steps == 6
        assert 5 * 0.004 <= st.total_time < 5 * 0.004 + 0.5
        assert 0.004 <= st.max_step < 0.5
        # The first step waited for its turn behind the other jobs' steps.
        assert st.first_step_delay is not None and 0 <= st.first_step_delay < 1
        assert st.scheduling_delay_max >= 0.004  # woken while others spun
        assert st.scheduling_delay_total >= st.scheduling_delay_max
    # Precise timing comes with it.
    assert floop.stats().callback_duration.count > 0


def test_task_stats_for_all_tasks_and_off(floop):
    async def child():
        await asyncio.sleep(0)

    async def main():
        floop.set_task_stats(True)
        t = asyncio.ensure_future(child())
        await t
        table = floop.task_stats()
        floop.set_task_stats(False)
        return t, table, floop.task_stats()

    t, table, after = run_with_timeout(floop, main())
    assert table[t].steps == 2
    assert table[t].first_step_delay is not None
    assert after == {}
    with pytest.raises(TypeError, match="group"):
        floop.set_task_stats(True, group=3)


WATCHDOG_LIFETIME = """
import asyncio, os, sys, warnings
import ferroloop


def ours():
    names = []
    for t in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{t}/comm") as f:
            names.append(f.read().strip())
    return sorted(n for n in names if n.startswith("ferroloop"))


async def main():
    await asyncio.sleep(0.01)
    return ours()


loop = ferroloop.new_event_loop()
print(ours())
print(loop.run_until_complete(main()))
loop.close()
# The watchdog was joined in close(); the kernel may still list the exited
# thread for a moment after the join returns (its task is released after
# the join's wake-up), so look again for up to 2 s.
import time
deadline = time.monotonic() + 2
while ours() and time.monotonic() < deadline:
    time.sleep(0.01)
print(ours())
# No thread of ours is left: on 3.12+ fork() would warn in a threaded process.
with warnings.catch_warnings():
    warnings.simplefilter("error")
    pid = os.fork()
    if pid == 0:
        os._exit(0)
os.waitpid(pid, 0)
print("forked")
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs /proc")
def test_watchdog_thread_lives_while_a_loop_is_open():
    out = subprocess_output([sys.executable, "-c", WATCHDOG_LIFETIME]).splitlines()
    assert out == ["[]", "['ferroloop-watch']", "[]", "forked"], out
