"""``python -m ferroloop top PID``: a live view of a running ferroloop process.

It reads the stats pages the process's loops publish in tmpfs
(``/dev/shm/ferroloop-<pid>-<loop>.stats``, see ``src/metrics/page.rs`` for
the layout mirrored here): no ptrace, no code run in the target, nothing to
enable there. Each page is copied under its seqlock, so every frame shows
one consistent snapshot per loop; rates are the differences between two
frames.
"""

from __future__ import annotations

import argparse
import glob
import mmap
import os
import struct
import sys
import time
from dataclasses import dataclass, field

from . import _ferroloop

PAGE_DIR = "/dev/shm"
SIZE = 8192
MAGIC = b"FLSTATS1"
VERSION = 3
OFF_SEQ, OFF_VERSION, OFF_PID, OFF_LOOP, OFF_TID = 8, 16, 24, 32, 40
OFF_PUBLISHED, OFF_POLLING_SINCE, OFF_SLOW_SINCE = 48, 56, 64
OFF_COUNTERS = 128
N_COUNTERS = 40
OFF_LATENESS = OFF_COUNTERS + N_COUNTERS * 8
BUCKETS = 252
OFF_SLOW, SLOW_SLOTS, SLOT = 2560, 8, 512
SHOWN_SLOW = 5  # the newest slow callbacks shown per loop
KINDS = ("ready", "timer", "io", "threadsafe")
# The counters' names in page order (src/metrics/mod.rs, VALUES).
COUNTERS = tuple(_ferroloop._value_names())


def _u64(buf, off):
    return struct.unpack_from("<Q", buf, off)[0]


@dataclass
class SlowEntry:
    start: float
    duration: float
    kind: str
    handle: str
    task: str
    location: str
    innermost: str


@dataclass
class PageSnapshot:
    pid: int
    loop_id: int
    tid: int
    published: float  # CLOCK_MONOTONIC seconds
    polling_since: float  # 0: not idle in the poller
    slow_since: float  # 0: no slow callback running
    counters: dict
    lateness: list  # bucket counts
    lateness_max: int
    slow: list = field(default_factory=list)
    taken: float = 0.0  # when this copy was read (CLOCK_MONOTONIC)


def read_page(path):
    """One consistent copy of a page, or None if it is gone or not a page."""
    try:
        with open(path, "rb") as f:
            m = mmap.mmap(f.fileno(), SIZE, prot=mmap.PROT_READ)
    except (OSError, ValueError):
        return None
    try:
        for _ in range(1000):
            s1 = _u64(m, OFF_SEQ)
            if s1 & 1:
                time.sleep(0.0001)
                continue
            buf = m[:SIZE]
            if _u64(m, OFF_SEQ) == s1:
                break
        else:
            return None
    finally:
        m.close()
    if buf[:8] != MAGIC or _u64(buf, OFF_VERSION) != VERSION:
        return None
    counters = {name: _u64(buf, OFF_COUNTERS + i * 8) for i, name in enumerate(COUNTERS)}
    lateness = [_u64(buf, OFF_LATENESS + 24 + i * 8) for i in range(BUCKETS)]
    slow = []
    for i in range(min(_u64(buf, OFF_SLOW), SLOW_SLOTS)):
        off = OFF_SLOW + 8 + i * SLOT
        text = buf[off + 24 : off + SLOT].split(b"\0", 1)[0].decode("utf-8", "replace")
        handle, task, location, inner = (text.split("\x1f") + ["", "", "", ""])[:4]
        kind = _u64(buf, off + 16)
        slow.append(
            SlowEntry(
                _u64(buf, off) / 1e9,
                _u64(buf, off + 8) / 1e9,
                KINDS[kind] if kind < len(KINDS) else "?",
                handle,
                task,
                location,
                inner,
            )
        )
    return PageSnapshot(
        pid=_u64(buf, OFF_PID),
        loop_id=_u64(buf, OFF_LOOP),
        tid=_u64(buf, OFF_TID),
        published=_u64(buf, OFF_PUBLISHED) / 1e9,
        polling_since=_u64(buf, OFF_POLLING_SINCE) / 1e9,
        slow_since=_u64(buf, OFF_SLOW_SINCE) / 1e9,
        counters=counters,
        lateness=lateness,
        lateness_max=_u64(buf, OFF_LATENESS + 16),
        slow=slow,
        taken=time.monotonic(),
    )


def read_process(pid):
    """The snapshots of every loop page of ``pid`` (by loop id)."""
    pages = {}
    for path in glob.glob(os.path.join(PAGE_DIR, f"ferroloop-{pid}-*.stats")):
        snap = read_page(path)
        if snap is not None and snap.pid == pid:
            pages[snap.loop_id] = snap
    return pages


_BOUNDS = None


def _quantile(counts, q, cap):
    global _BOUNDS
    if _BOUNDS is None:
        _BOUNDS = _ferroloop._histogram_bounds()
    total = sum(counts)
    if not total:
        return None
    rank = max(1, int(q * total + 0.999999))
    seen = 0
    for bound, n in zip(_BOUNDS, counts):
        seen += n
        if seen >= rank:
            return min(bound, cap)
    return cap


def _ms(ns):
    return "-" if ns is None else f"{ns / 1e6:.1f}ms"


def _rate(n):
    for unit, div in (("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return f"{n:.0f}"


def _bytes(n):
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return f"{n:.0f}B"


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return "?"


def render(pid, now_pages, before_pages, width=100):
    """One frame of text for ``pid`` (rates from ``before_pages``)."""
    now = time.monotonic()
    lines = [
        f"ferroloop top - pid {pid} ({_cmdline(pid)[: width - 30]}) - {time.strftime('%H:%M:%S')}",
    ]
    if not now_pages:
        lines.append("no running ferroloop loop found (its stats pages are in /dev/shm)")
        return "\n".join(lines)
    for loop_id in sorted(now_pages):
        cur = now_pages[loop_id]
        prev = before_pages.get(loop_id)
        c = cur.counters
        callbacks = sum(c[f"cb_{k}"] for k in KINDS)
        head = f"loop {loop_id}  thread {cur.tid}"
        if cur.slow_since:
            head += f"  BLOCKED in a callback for {now - cur.slow_since:.1f}s"
        elif cur.polling_since:
            head += f"  idle for {now - cur.polling_since:.1f}s"
        lines += ["", head]
        if prev is not None and cur.taken > prev.taken:
            p = prev.counters
            dt = cur.taken - prev.taken
            idle = c["idle_ns"] - p["idle_ns"]
            # Time blocked in the poller since the last publish is idle too.
            for snap, sign in ((cur, 1), (prev, -1)):
                if snap.polling_since:
                    idle += sign * max(0.0, snap.taken - snap.polling_since) * 1e9
            busy = (
                max(0.0, dt * 1e9 - idle)
                if (cur.polling_since or prev.polling_since)
                else ((c["run_ns"] - c["idle_ns"]) - (p["run_ns"] - p["idle_ns"]))
            )
            util = min(1.0, max(0.0, busy / (dt * 1e9)))
            prev_cb = sum(p[f"cb_{k}"] for k in KINDS)
            late = [a - b for a, b in zip(cur.lateness, prev.lateness)]
            lines.append(
                f"  util {util * 100:5.1f}%   ticks/s {_rate((c['ticks'] - p['ticks']) / dt)}"
                f"   callbacks/s {_rate((callbacks - prev_cb) / dt)}"
                f"   in {_bytes((c['bytes_received'] - p['bytes_received']) / dt)}/s"
                f"   out {_bytes((c['bytes_sent'] - p['bytes_sent']) / dt)}/s"
            )
            cap = cur.lateness_max
            lines.append(
                f"  lag p50 {_ms(_quantile(late, 0.5, cap))}  p99 {_ms(_quantile(late, 0.99, cap))}"
                f"  max {_ms(cap)}   timers fired/s {_rate((c['timers_fired'] - p['timers_fired']) / dt)}"
            )
        else:
            util_all = (c["run_ns"] - c["idle_ns"]) / c["run_ns"] if c["run_ns"] else 0.0
            lines.append(
                f"  util {util_all * 100:5.1f}% (since start)   ticks {c['ticks']:,}"
                f"   callbacks {callbacks:,}"
            )
            cap = cur.lateness_max
            lines.append(
                f"  lag p50 {_ms(_quantile(cur.lateness, 0.5, cap))}"
                f"  p99 {_ms(_quantile(cur.lateness, 0.99, cap))}  max {_ms(cap)}"
            )
        lines.append(
            f"  queue {c['ready_queue_depth']:,} (max {c['ready_queue_depth_max']:,})"
            f"   transports {max(0, c['transports_opened'] - c['transports_closed']):,}" + _tasks(c)
        )
        lines.append(
            f"  slow callbacks (over {c['slow_threshold_ns'] / 1e6:g}ms): {c['slow_callbacks']:,}"
        )
        for e in list(reversed(cur.slow))[:SHOWN_SLOW]:
            what = f"task {e.task}" if e.task else e.kind
            lines.append(f"    {e.duration * 1e3:8.1f}ms  {what}  {e.handle}"[:width])
            where = e.location or e.innermost
            # Source locations are shown whole, however wide.
            if where:
                lines.append(f"              at {where}")
            if e.innermost and e.innermost != where:
                lines.append(f"              blocked in {e.innermost}")
    return "\n".join(lines)


def _tasks(c: dict) -> str:
    """The tasks part of the queue line: alive and finished when counted."""
    if c.get("tasks_counted"):
        return f"   tasks {c['tasks_alive']:,} alive, {c['tasks_finished']:,} finished"
    return f"   tasks created {c['tasks_created']:,}"


def _width():
    """The terminal's width (100 when it does not say, as a new pty)."""
    try:
        cols = os.get_terminal_size().columns
    except OSError:
        cols = 0
    return cols if cols >= 40 else 100


def main(argv):
    ap = argparse.ArgumentParser(
        prog="python -m ferroloop top",
        description="Live view of a running ferroloop process's event loops.",
    )
    ap.add_argument("pid", type=int)
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between frames")
    ap.add_argument("--count", type=int, default=0, help="frames to show (0: until Ctrl-C)")
    ap.add_argument("--once", action="store_true", help="one frame, plain text, then exit")
    args = ap.parse_args(argv)
    if args.interval <= 0:
        ap.error("--interval must be positive")
    try:
        os.kill(args.pid, 0)
    except ProcessLookupError:
        ap.exit(1, f"no process {args.pid}\n")
    except PermissionError:
        pass
    if args.once:
        before = read_process(args.pid)
        time.sleep(min(args.interval, 0.5))
        print(render(args.pid, read_process(args.pid), before))
        return 0
    tty = sys.stdout.isatty()
    before = read_process(args.pid)
    shown = 0
    try:
        while args.count == 0 or shown < args.count:
            time.sleep(args.interval)
            now = read_process(args.pid)
            width = _width() if tty else 100
            frame = render(args.pid, now, before, width)
            sys.stdout.write(("\x1b[H\x1b[2J" if tty else "") + frame + "\n")
            sys.stdout.flush()
            before = now
            shown += 1
            try:
                os.kill(args.pid, 0)
            except ProcessLookupError:
                print(f"process {args.pid} exited")
                return 0
    except KeyboardInterrupt:
        pass
    return 0
