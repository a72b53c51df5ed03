"""What ``Loop.stats()``, ``Loop.utilization()`` and ``ferroloop.slow_callbacks()``
return: immutable snapshots of the loop's native metrics (``src/metrics``)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import threading
import traceback
import types
from asyncio import events, futures, tasks
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from . import _ferroloop

if TYPE_CHECKING:
    from ._ferroloop import _RawHistogram, _StatsRaw
    from ._loop import Loop

_NS = 1e-9
_TASK_TYPES = (tasks.Task, getattr(tasks, "_PyTask", tasks.Task))
_ASYNCIO_DIR = os.path.dirname(tasks.__file__) + os.sep


@dataclasses.dataclass(frozen=True)
class Histogram:
    """A fixed-bucket histogram: each bucket is at most 25 % wide.

    ``buckets`` holds ``(upper, count)`` for the non-empty buckets, where
    ``upper`` is the largest value the bucket holds, in ``unit`` (seconds
    for durations, ``1`` for counts). Percentiles are reported as the upper
    bound of the bucket they fall in (never below the true value) and
    capped at ``max``.
    """

    buckets: tuple[tuple[float, int], ...]
    count: int
    sum: float
    max: float
    unit: str

    @classmethod
    def _from_raw(cls, raw: _RawHistogram, seconds: bool) -> Histogram:
        buckets, count, total, top = raw
        scale = _NS if seconds else 1
        return cls(
            tuple((upper * scale, n) for upper, n in buckets),
            count,
            total * scale,
            top * scale,
            "seconds" if seconds else "1",
        )

    @property
    def mean(self) -> float:
        return self.sum / self.count if self.count else 0.0

    def percentile(self, p: float) -> float:
        """The value below which ``p`` percent of the values fall (0 when empty)."""
        if not 0 <= p <= 100:
            raise ValueError(f"percentile must be in [0, 100], got {p!r}")
        if not self.count:
            return 0.0
        rank = max(1, math.ceil(p * self.count / 100))
        seen = 0
        for upper, n in self.buckets:
            seen += n
            if seen >= rank:
                return min(upper, self.max)
        return self.max

    def delta(self, previous: Histogram) -> Histogram:
        """The values recorded since ``previous`` (``max``: the top bucket's
        bound, capped at the maximum ever seen)."""
        before = dict(previous.buckets)
        buckets = tuple(
            (upper, n - before.get(upper, 0))
            for upper, n in self.buckets
            if n > before.get(upper, 0)
        )
        top = min(buckets[-1][0], self.max) if buckets else 0.0
        return Histogram(
            buckets, self.count - previous.count, self.sum - previous.sum, top, self.unit
        )


class Utilization(NamedTuple):
    """Node.js's ``eventLoopUtilization()``: seconds idle (blocked in the
    poller with nothing to do) and active (the rest of the time the loop
    ran), and ``active / (idle + active)``."""

    idle: float
    active: float
    utilization: float


@dataclasses.dataclass(frozen=True)
class SlowCallback:
    """A callback that ran past the slow-callback threshold.

    ``start`` is on the loop's clock (``loop.time()``), known within a
    quarter of the threshold (the watchdog's sampling period); ``duration``
    ends when the callback returned. For a task step, ``task`` and
    ``coroutine`` name the task, ``started_at`` is where its coroutine is
    defined and ``location`` where it was suspended when the step ended
    (None if it finished). ``stack`` is the loop thread's Python stack,
    captured while the callback still ran (when the watchdog found it past
    the threshold), or None if it returned before the capture.
    """

    start: float
    duration: float
    kind: str
    handle: str
    task: str | None
    coroutine: str | None
    started_at: str | None
    location: str | None
    stack: str | None


_COUNTERS = (
    "ticks",
    "polls",
    "polls_blocking",
    "fd_read_events",
    "fd_write_events",
    "threadsafe_wakeups",
    "timers_scheduled",
    "timers_fired",
    "timers_cancelled",
    "tasks_created",
    "tasks_finished",
    "transports_opened",
    "transports_closed",
    "bytes_received",
    "bytes_sent",
    "tls_handshakes",
    "slow_callbacks",
)
_TIMES = ("run_time", "idle_time", "busy_time", "poll_time", "callbacks_time", "overhead_time")
_HISTOGRAMS = (
    "tick_duration",
    "poll_wait",
    "callbacks_per_tick",
    "timer_lateness",
    "callback_duration",
)


def _tasks_alive(loop: Loop) -> int:
    """Unfinished tasks of ``loop``, counted now (when tasks are not counted
    natively: metrics off, or no C tasks)."""
    if loop.is_closed():
        return 0
    return sum(1 for t in tasks.all_tasks(loop) if not t.done())


@dataclasses.dataclass(frozen=True)
class LoopStats:
    """One loop's metrics at one moment (``Loop.stats()``).

    Counters count from the loop's creation; ``delta(previous)`` gives what
    happened since an earlier snapshot (gauges such as
    ``ready_queue_depth``, ``tasks_alive`` and ``transports_open`` keep
    their current value), and ``interval`` the seconds between the two.
    Times are in seconds: ``run_time`` in loop iterations, split into
    ``idle_time`` (blocked in the poller with nothing to do),
    ``callbacks_time`` (running the ready callbacks), ``poll_time`` (all
    polls, idle included) and ``overhead_time`` (the rest: the loop's own
    work); ``busy_time`` is ``run_time - idle_time``. ``enabled`` is False
    when ``FERROLOOP_METRICS=0`` turned the per-tick and per-callback
    metrics off (times, histograms, callback counts and slow callbacks then
    stay 0).

    ``tasks_created`` counts ``create_task`` calls (``ensure_future``,
    ``gather`` and ``TaskGroup`` go through it; a Task constructed directly
    does not); ``tasks_finished`` counts tasks of the loop that finished,
    natively, as their last step returns; ``tasks_alive`` is created minus
    finished. With the metrics off (or no C tasks), finished and alive are
    counted from ``asyncio.all_tasks()`` when the snapshot is taken.
    """

    loop_id: int
    time: float
    interval: float | None
    ticks: int
    polls: int
    polls_blocking: int
    fd_read_events: int
    fd_write_events: int
    callbacks: Mapping[str, int]
    threadsafe_wakeups: int
    timers_scheduled: int
    timers_fired: int
    timers_cancelled: int
    tasks_created: int
    tasks_finished: int
    tasks_alive: int
    transports_opened: int
    transports_closed: int
    transports_open: int
    bytes_received: int
    bytes_sent: int
    tls_handshakes: int
    ready_queue_depth: int
    ready_queue_depth_max: int
    run_time: float
    idle_time: float
    busy_time: float
    poll_time: float
    callbacks_time: float
    overhead_time: float
    slow_callbacks: int
    slow_callback_threshold: float
    enabled: bool
    precise: bool
    tick_duration: Histogram
    poll_wait: Histogram
    callbacks_per_tick: Histogram
    timer_lateness: Histogram
    callback_duration: Histogram

    @property
    def callbacks_total(self) -> int:
        return sum(self.callbacks.values())

    @property
    def utilization(self) -> float:
        """``busy_time / run_time`` (0 before the first iteration)."""
        return self.busy_time / self.run_time if self.run_time > 0 else 0.0

    def delta(self, previous: LoopStats) -> LoopStats:
        if not isinstance(previous, LoopStats):
            raise TypeError(f"previous must be a LoopStats, got {type(previous).__name__}")
        if previous.loop_id != self.loop_id:
            raise ValueError("previous is a snapshot of another loop")
        changes: dict = {name: getattr(self, name) - getattr(previous, name) for name in _COUNTERS}
        changes.update({name: getattr(self, name) - getattr(previous, name) for name in _TIMES})
        changes.update(
            {name: getattr(self, name).delta(getattr(previous, name)) for name in _HISTOGRAMS}
        )
        changes["callbacks"] = types.MappingProxyType(
            {k: n - previous.callbacks.get(k, 0) for k, n in self.callbacks.items()}
        )
        changes["interval"] = self.time - previous.time
        return dataclasses.replace(self, **changes)

    @classmethod
    def _from_raw(cls, loop: Loop, raw: _StatsRaw) -> LoopStats:
        created = raw["tasks_created"]
        if raw["tasks_counted"]:
            finished, alive = raw["tasks_finished"], raw["tasks_alive"]
        else:
            alive = _tasks_alive(loop)
            finished = max(0, created - alive)
        run, idle = raw["run_ns"] * _NS, raw["idle_ns"] * _NS
        poll, cbs = raw["poll_ns"] * _NS, raw["callbacks_ns"] * _NS
        return cls(
            loop_id=raw["loop_id"],
            time=loop.time(),
            interval=None,
            ticks=raw["ticks"],
            polls=raw["polls"],
            polls_blocking=raw["polls_blocking"],
            fd_read_events=raw["fd_read_events"],
            fd_write_events=raw["fd_write_events"],
            callbacks=types.MappingProxyType(dict(raw["callbacks"])),
            threadsafe_wakeups=raw["threadsafe_wakeups"],
            timers_scheduled=raw["timers_scheduled"],
            timers_fired=raw["timers_fired"],
            timers_cancelled=raw["timers_cancelled"],
            tasks_created=created,
            tasks_finished=finished,
            tasks_alive=alive,
            transports_opened=raw["transports_opened"],
            transports_closed=raw["transports_closed"],
            transports_open=max(0, raw["transports_opened"] - raw["transports_closed"]),
            bytes_received=raw["bytes_received"],
            bytes_sent=raw["bytes_sent"],
            tls_handshakes=raw["tls_handshakes"],
            ready_queue_depth=raw["ready_queue_depth"],
            ready_queue_depth_max=raw["ready_queue_depth_max"],
            run_time=run,
            idle_time=idle,
            busy_time=max(0.0, run - idle),
            poll_time=poll,
            callbacks_time=cbs,
            overhead_time=max(0.0, run - poll - cbs),
            slow_callbacks=raw["slow_callbacks"],
            slow_callback_threshold=raw["slow_threshold_ns"] * _NS,
            enabled=raw["enabled"],
            precise=raw["precise"],
            tick_duration=Histogram._from_raw(raw["tick_duration"], True),
            poll_wait=Histogram._from_raw(raw["poll_wait"], True),
            callbacks_per_tick=Histogram._from_raw(raw["callbacks_per_tick"], False),
            timer_lateness=Histogram._from_raw(raw["timer_lateness"], True),
            callback_duration=Histogram._from_raw(raw["callback_duration"], True),
        )


def utilization(raw: _StatsRaw, previous: Utilization | None) -> Utilization:
    idle = raw["idle_ns"] * _NS
    active = max(0.0, raw["run_ns"] * _NS - idle)
    if previous is not None:
        if not isinstance(previous, Utilization):
            raise TypeError(f"previous must be a Utilization, got {type(previous).__name__}")
        idle -= previous.idle
        active -= previous.active
    total = idle + active
    return Utilization(idle, active, active / total if total > 0 else 0.0)


@dataclasses.dataclass(frozen=True)
class TaskStats:
    """Per-task stats (``Loop.set_task_stats``), in seconds.

    ``steps``: how many times the task ran; ``total_time`` / ``max_step``:
    the time its steps took; ``first_step_delay``: from ``create_task`` to
    its first step (None for a task not made by the loop's ``create_task``
    while stats were on); ``scheduling_delay_total`` / ``_max``: from a
    step being scheduled (woken) to it running.
    """

    name: str
    coroutine: str
    steps: int
    total_time: float
    max_step: float
    first_step_delay: float | None
    scheduling_delay_total: float
    scheduling_delay_max: float
    done: bool


class _TaskAccumulator:
    __slots__ = ("created", "first", "max_delay", "max_step", "steps", "total", "total_delay")

    def __init__(self, created=None):
        self.created = created
        self.first = None
        self.steps = 0
        self.total = self.max_step = 0
        self.total_delay = self.max_delay = 0

    def snapshot(self, task):
        first = None
        if self.created is not None and self.first is not None:
            first = max(0, self.first - self.created) * _NS
        coro = task.get_coro()
        return TaskStats(
            name=task.get_name(),
            coroutine=getattr(coro, "__qualname__", None) or type(coro).__qualname__,
            steps=self.steps,
            total_time=self.total * _NS,
            max_step=self.max_step * _NS,
            first_step_delay=first,
            scheduling_delay_total=self.total_delay * _NS,
            scheduling_delay_max=self.max_delay * _NS,
            done=task.done(),
        )


def _in_group(loop: Any, task: Any) -> bool:
    group = loop._task_stats_group
    return group is None or task.get_name().startswith(group)


def task_created(loop: Any, task: Any, now_ns: int) -> None:
    """``create_task`` made ``task`` while per-task stats are on."""
    if loop._task_stats is not None and _in_group(loop, task):
        loop._task_stats[task] = _TaskAccumulator(now_ns)


def task_step(loop: Any, func: Any, start: int, end: int, scheduled: int) -> None:
    """A callback ran from ``start`` to ``end`` (CLOCK_MONOTONIC ns), made
    at ``scheduled`` (0: unknown): if it was a step of one of the loop's
    tasks, account it."""
    task = getattr(func, "__self__", None)
    table = loop._task_stats
    if table is None or not isinstance(task, _TASK_TYPES) or not _in_group(loop, task):
        return
    acc = table.get(task)
    if acc is None:
        acc = table[task] = _TaskAccumulator()
    if acc.first is None:
        acc.first = start
    step = end - start
    acc.steps += 1
    acc.total += step
    acc.max_step = max(acc.max_step, step)
    if scheduled:
        delay = max(0, start - scheduled)
        acc.total_delay += delay
        acc.max_delay = max(acc.max_delay, delay)


# --- tasks finished, counted natively (src/metrics/task_steps.rs) ---

#: Why the probe below found nothing (None when it worked or was not run).
task_probe_error: BaseException | None = None


def task_step_probe() -> tuple | None:
    """A C Task's own two callbacks, its step and its wake-up, taken from a
    task run to completion on a stand-in loop, for the loop to recognise
    them natively: ``(step, wakeup, task, Task.done)``, or None when
    asyncio's tasks are not the C ones or anything differs from what the
    probe expects (the loop then counts tasks with ``all_tasks()``).

    It runs in a thread of its own: there no loop or task is running (3.14
    refuses to enter a task while another runs in the same thread) and the
    stand-in can be made the running loop for the probe's two steps.
    """
    global task_probe_error
    found: list = []

    def probe() -> None:
        try:
            found.append(_probe_task_callbacks())
        except BaseException as exc:  # noqa: BLE001 - reported, not raised
            found.append(exc)

    try:
        thread = threading.Thread(target=probe, name="ferroloop-task-probe")
        thread.start()
        thread.join()
    except Exception as exc:  # noqa: BLE001 - e.g. no thread can be started
        found.append(exc)
    result = found[0] if found else None
    if isinstance(result, BaseException):
        task_probe_error = result
        return None
    return result


class _StandInLoop:
    """What a C Task and Future call on their loop, recorded."""

    def __init__(self) -> None:
        self.scheduled: list = []

    def get_debug(self) -> bool:
        return False

    def call_soon(self, callback: Any, *args: Any, context: Any = None) -> None:
        self.scheduled.append(callback)


def _probe_task_callbacks() -> tuple | None:
    if tasks.Task.__module__ != "_asyncio" or futures.Future.__module__ != "_asyncio":
        return None  # pure-Python tasks: their steps are plain bound methods
    stand_in = _StandInLoop()
    # Duck-typed: a C Task and Future call only get_debug and call_soon.
    loop = cast(events.AbstractEventLoop, stand_in)
    fut: futures.Future[None] = futures.Future(loop=loop)

    async def wait() -> None:
        await fut

    events._set_running_loop(loop)
    try:
        task = tasks.Task(wait(), loop=loop)
        (step,) = stand_in.scheduled
        step()  # the first step: the task now awaits fut
        fut.set_result(None)
        (wakeup,) = stand_in.scheduled[1:]
        wakeup(fut)  # the last step: the task returns
    finally:
        events._set_running_loop(None)
    if not task.done():
        return None
    return step, wakeup, task, tasks.Task.done


def task_table(loop: Any) -> dict:
    table = loop._task_stats
    if table is None:
        return {}
    return {task: acc.snapshot(task) for task, acc in list(table.items())}


# --- the slow path: called by the loop after a flagged callback returned ---


def _where(frame: Any) -> str:
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


def describe_callback(obj: Any) -> tuple[str, Any, Any, Any, Any]:
    """``(repr, task name, coroutine qualname, started_at, location)`` of a
    handle or a transport's bound ready method."""
    callback = obj._callback if isinstance(obj, _ferroloop.Handle) else obj
    task = getattr(callback, "__self__", None)
    if not isinstance(task, _TASK_TYPES):
        return repr(obj), None, None, None, None
    coro = task.get_coro()
    code = getattr(coro, "cr_code", None) or getattr(coro, "gi_code", None)
    started = f"{code.co_filename}:{code.co_firstlineno}" if code is not None else None
    # Where the step suspended: the innermost frame of the await chain that
    # is not asyncio's own (``await asyncio.sleep(0)`` names the caller).
    frame, inner = None, coro
    while inner is not None:
        f = getattr(inner, "cr_frame", None) or getattr(inner, "gi_frame", None)
        if f is None:
            break
        if frame is None or not f.f_code.co_filename.startswith(_ASYNCIO_DIR):
            frame = f
        inner = getattr(inner, "cr_await", None) or getattr(inner, "gi_yieldfrom", None)
    qualname = getattr(coro, "__qualname__", None) or type(coro).__qualname__
    location = _where(frame) if frame is not None else None
    return repr(obj), task.get_name(), qualname, started, location


def slow_callback(loop: Any, obj: Any, kind: str, start: float, duration: float, stack: Any):
    text, task, coro, started, location = describe_callback(obj)
    stack = _format_stack(stack) if stack else None
    loop._push_slow_record((start, duration, kind, text, task, coro, started, location, stack))
    handler = loop._slow_callback_handler
    if handler is not None:
        record = SlowCallback(start, duration, kind, text, task, coro, started, location, stack)
        loop.call_soon(handler, record)


def capture_stack(ident: int) -> str:
    """The Python stack of thread ``ident`` now (the watchdog's capture), as
    JSON: each frame's file, line and function, outermost first.

    NOTE: no source lines: linecache would open the files, from the
    watchdog thread, in the middle of the program's own work (the GIL is
    released around the reads), and a program counting its open fds then
    sees one more (the flaky fd checks of tests/test_subprocess.py, after a
    ``gc.collect()`` that ran past the 50 ms threshold). ``slow_callback``
    looks the lines up later, on the loop thread."""
    frame = sys._current_frames().get(ident)
    frames = []
    while frame is not None:
        code = frame.f_code
        frames.append((code.co_filename, frame.f_lineno, code.co_name))
        frame = frame.f_back
    frames.reverse()
    return json.dumps(frames) if frames else ""


def _format_stack(captured: str) -> str:
    """``capture_stack``'s frames as ``traceback.format_stack`` prints them,
    source lines included."""
    frames = [(f, n, name, None) for f, n, name in json.loads(captured)]
    return "".join(traceback.StackSummary.from_list(frames).format())


def records(loop: Loop) -> list[SlowCallback]:
    return [SlowCallback(*r) for r in loop._slow_records()]
