"""The engine of the loop API fuzzer (tests/test_fuzz.py, benches/fuzz.py).

A *program* is a list of ``Op``s drawn by hypothesis. Its arguments are
symbolic (``V("inf")``, ``Cb("rec", 3)``, ``Fd("int", 0)``, ``Ref("fut", 1)``,
...): each loop's run resolves them to fresh objects of its own (its own
sockets, futures, callbacks), so the same program runs on asyncio's loop and
on ferroloop in exactly the same way. ``run_program`` executes it on one loop
and returns the loop's *log*: for every call the outcome class (the type of
the return value, or the exception type), and, in order, every callback that
ran (with the outcomes of the calls it made: reentrant calls), every call of
the exception handler and every ERROR logged by asyncio's logger. The two
loops must produce the same log (``compare``).

What is left out of the comparison, on purpose (each is asyncio-internal or
timing, not API):
- the order of I/O callbacks of *different* fds ready in the same iteration
  (the order of epoll's ready list): ``canonical`` sorts runs of them;
- exception-handler calls made by a finalizer ("... was never retrieved",
  "Task was destroyed but it is pending!"): when an object dies depends on
  who holds references to it, so these are compared as a multiset at the end
  (``Env.bag``), with the garbage collector off while the program runs;
- the exact text of messages (they contain reprs): only a prefix is kept.

Timing is kept out of the outcomes: delays either fire at once (<= 0, or
1 ms, and every run first waits until the 1 ms timers are due) or never
(>= 1000 s); nothing in a callback is scheduled with 1 ms; runs that could
wait forever are stopped by a watchdog thread and say so (and what ran in
them is compared as a set: how many iterations fit is timing). What waits for
another thread (executor jobs, getaddrinfo, shutdown_default_executor) first
waits PRELUDE seconds in an executor, so that whatever else the run does is
over before the thread can answer; what ran meanwhile is compared as a set,
and such a run interrupted by a callback is resumed until its thread's work
is done, so that it does not end at a random point of a later call.

Besides the calls: the fds the loop still has open after close(), the fds and
the threads left once everything is gone, and the finalizer reports.

Known ferroloop defects are listed in ``KNOWN_DEFECTS``; ``excluded`` tells
the generator to leave those argument combinations out, each pointing to its
repro, so that removing the entry re-enables the case once it is fixed.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import contextvars
import dataclasses
import functools
import gc
import inspect
import logging
import math
import os
import re
import resource
import select
import signal
import socket
import sys
import tempfile
import threading
import time
import warnings
import weakref
from decimal import Decimal
from fractions import Fraction
from typing import Any

from hypothesis import strategies as st

PY312 = sys.version_info >= (3, 12)

# --------------------------------------------------------------------------
# Known ferroloop defects: each entry names a repro script (under
# /tmp/fuzz_repros when found) and what the generator leaves out while the
# defect is there. Remove an entry once the defect is fixed.
# --------------------------------------------------------------------------

KNOWN_DEFECTS: dict[str, str] = {
    # set_debug(x) with a non-bool x: asyncio's get_debug() returns x,
    # ferroloop's bool(x).
    "set_debug_not_kept": "set_debug_value_not_kept.py",
    # A NaN deadline with another timer pending: asyncio's heap leaves it
    # behind that timer, ferroloop fires it at once (asyncio's order with
    # NaN is its heap's accident; to decide).
    "nan_timer_order": "nan_timer_fires_first.py",
    # call_at(when) with a when that is not an int or float (a str, an
    # object, a complex, ...; or an int too large for a float): asyncio
    # takes it (and fails later, in the loop, when it compares it);
    # ferroloop raises TypeError / OverflowError at once. The reverse for
    # objects with __float__ / __index__: ferroloop takes them as numbers,
    # asyncio stores them and fails later.
    "call_at_when_not_float": "call_at_when_not_float.py",
    # connect_accepted_socket() twice with one socket, the first run
    # stopped right after it made its transport: asyncio's second transport
    # takes the fd over (data, EOF go to it); ferroloop's first keeps it.
    "second_transport_same_socket": "two_transports_one_socket.py",
}

# Found by this fuzzer and fixed since (each has a repro there too and a
# test in the suite): closed_loop_keeps_eventfd, handle_junk_context_
# exception_type, call_exception_handler_nondict (3.10/3.11),
# remove_reader_fd_overflow, getaddrinfo_numeric_skips_executor_checks,
# sock_recv_huge_n_abort (process abort), closed_loop_remove_negative_fd,
# sock_recv_zero_waits, signal_handler_runs_early (and _exit_stale_stop),
# close_in_thread_with_signal_handler, executor_job_at_exit_abort (process
# abort at exit), set_default_executor_leaks_workers,
# remove_writer_closed_socket_object.


def excluded(name: str) -> bool:
    return name in KNOWN_DEFECTS


# --------------------------------------------------------------------------
# symbolic program
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class V:
    """A constant from the hostile value pool (``VALUES``)."""

    name: str

    def __repr__(self):
        return f"V({self.name!r})"


@dataclasses.dataclass(frozen=True)
class Cb:
    """A callback: kind ``rec`` (records that it ran), ``raise`` (records,
    raises ValueError), ``raise_ki`` / ``raise_exit`` (KeyboardInterrupt /
    SystemExit), ``reenter`` (records and makes the calls in ``sub``),
    ``lambda`` (does nothing), ``corofunc`` (an ``async def`` function),
    ``coro`` (a coroutine object), ``partial``, ``val`` (``tag`` is a
    ``VALUES`` key: not callable)."""

    kind: str
    tag: Any = 0
    sub: tuple = ()

    def __repr__(self):
        if self.kind == "reenter":
            return f"Cb('reenter', {self.tag}, {list(self.sub)!r})"
        return f"Cb({self.kind!r}, {self.tag!r})"


@dataclasses.dataclass(frozen=True)
class Aw:
    """Something to await / run / wrap in a Task (``AW_KINDS``)."""

    kind: str
    tag: Any = 0
    sub: tuple = ()

    def __repr__(self):
        if self.sub:
            return f"Aw({self.kind!r}, {self.tag!r}, {list(self.sub)!r})"
        return f"Aw({self.kind!r}, {self.tag!r})"


@dataclasses.dataclass(frozen=True)
class Fd:
    """A file-descriptor argument: ``int`` (slot's fd number, stale once
    closed), ``obj`` (the slot's object), ``never`` (an fd number never
    open), ``fileno_*`` (objects whose fileno() is hostile), ``val``."""

    kind: str
    slot: Any = 0

    def __repr__(self):
        return f"Fd({self.kind!r}, {self.slot!r})"


@dataclasses.dataclass(frozen=True)
class Ref:
    """The ``i``-th (modulo) object of a kind made earlier in the run."""

    kind: str
    i: int = 0

    def __repr__(self):
        return f"Ref({self.kind!r}, {self.i})"


@dataclasses.dataclass(frozen=True)
class Op:
    name: str
    args: tuple = ()

    def __repr__(self):
        return f"O({', '.join(map(repr, (self.name, *self.args)))})"


def O(name, *args):
    """``Op(name, args)``; what programs are printed as."""
    return Op(name, tuple(args))


def format_program(program) -> str:
    return "[\n" + "".join(f"    {op!r},\n" for op in program) + "]"


# --------------------------------------------------------------------------
# hostile values
# --------------------------------------------------------------------------


class RaddStr:
    """``time() + x`` is a str."""

    def __radd__(self, other):
        return "x"

    def __repr__(self):
        return "RaddStr()"


class RaddRaise:
    def __radd__(self, other):
        raise ZeroDivisionError("radd")

    def __repr__(self):
        return "RaddRaise()"


class FloatLike:
    def __float__(self):
        return -1.0

    def __repr__(self):
        return "FloatLike()"


class IndexLike:
    def __index__(self):
        return 1

    def __repr__(self):
        return "IndexLike()"


class IntSub(int):
    pass


class FloatSub(float):
    pass


class BadRepr:
    def __repr__(self):
        raise RuntimeError("repr")

    __str__ = __repr__


class BadAwait:
    def __await__(self):
        return 5


class GoodAwait:
    def __await__(self):
        yield from asyncio.sleep(0).__await__()
        return 3


class FilenoRaises:
    def __init__(self, exc):
        self.exc = exc

    def fileno(self):
        raise self.exc

    def __repr__(self):
        return f"FilenoRaises({type(self.exc).__name__})"


class FilenoReturns:
    def __init__(self, value):
        self.value = value

    def fileno(self):
        return self.value

    def __repr__(self):
        return f"FilenoReturns({self.value!r})"


class NotTPE(concurrent.futures.Executor):
    """An Executor that is not a ThreadPoolExecutor."""

    def submit(self, fn, /, *args, **kwargs):
        f = concurrent.futures.Future()
        try:
            f.set_result(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 - an executor hands back any error
            f.set_exception(e)
        return f


# Each value is made fresh for every resolution (nothing mutable is shared
# between the two loops' runs).
VALUES: dict[str, Any] = {
    "None": lambda: None,
    "True": lambda: True,
    "False": lambda: False,
    "0": lambda: 0,
    "1": lambda: 1,
    "-1": lambda: -1,
    "3": lambda: 3,
    "2**31": lambda: 2**31,
    "2**63": lambda: 2**63,
    "-2**63": lambda: -(2**63),
    "10**30": lambda: 10**30,
    "2**1024": lambda: 2**1024,
    "0.0": lambda: 0.0,
    "-0.0": lambda: -0.0,
    "0.001": lambda: 0.001,
    "1.5": lambda: 1.5,
    "-1.5": lambda: -1.5,
    "1e9": lambda: 1e9,
    "inf": lambda: math.inf,
    "-inf": lambda: -math.inf,
    "nan": lambda: math.nan,
    "1e308": lambda: 1e308,
    "-1e308": lambda: -1e308,
    "'x'": lambda: "x",
    "''": lambda: "",
    "'1'": lambda: "1",
    "b'x'": lambda: b"x",
    "b''": lambda: b"",
    "bytearray": lambda: bytearray(b"xy"),
    "memoryview": lambda: memoryview(b"xyz"),
    "object()": object,
    "[]": list,
    "[b'x']": lambda: [b"x"],
    "()": tuple,
    "{}": dict,
    "1j": lambda: 1j,
    "Fraction(-1,3)": lambda: Fraction(-1, 3),
    "Decimal('-1')": lambda: Decimal(-1),
    "RaddStr()": RaddStr,
    "RaddRaise()": RaddRaise,
    "FloatLike()": FloatLike,
    "IndexLike()": IndexLike,
    "IntSub(-5)": lambda: IntSub(-5),
    "FloatSub(-1.0)": lambda: FloatSub(-1.0),
    "BadRepr()": BadRepr,
    "ValueError()": lambda: ValueError("fuzz"),
    "ValueError": lambda: ValueError,
    "StopIteration()": StopIteration,
    "KeyboardInterrupt()": KeyboardInterrupt,
    "CancelledError()": asyncio.CancelledError,
    "ctx": contextvars.copy_context,
    "SIGUSR1": lambda: signal.SIGUSR1,
    "SIGUSR2": lambda: int(signal.SIGUSR2),
    "SIGWINCH": lambda: int(signal.SIGWINCH),
    "SIGHUP": lambda: int(signal.SIGHUP),
    "SIGKILL": lambda: int(signal.SIGKILL),
    "SIGSTOP": lambda: int(signal.SIGSTOP),
    "65": lambda: 65,
    "1000": lambda: 1000,
    "'peername'": lambda: "peername",
    "'sockname'": lambda: "sockname",
    "'socket'": lambda: "socket",
    "'/nonexistent/fuzz'": lambda: "/nonexistent/fuzz",
    "'127.0.0.1'": lambda: "127.0.0.1",
    "'::1'": lambda: "::1",
    "'0.0.0.0'": lambda: "0.0.0.0",
    "'::ffff:127.0.0.1'": lambda: "::ffff:127.0.0.1",
    "b'127.0.0.1'": lambda: b"127.0.0.1",
    "80": lambda: 80,
    "'80'": lambda: "80",
    "'http'": lambda: "http",
    "b'80'": lambda: b"80",
    "65536": lambda: 65536,
    "2**40": lambda: 2**40,
    "AF_INET": lambda: socket.AF_INET,
    "AF_INET6": lambda: socket.AF_INET6,
    "AF_UNIX": lambda: socket.AF_UNIX,
    "SOCK_STREAM": lambda: socket.SOCK_STREAM,
    "SOCK_DGRAM": lambda: socket.SOCK_DGRAM,
    "AI_NUMERICHOST": lambda: socket.AI_NUMERICHOST,
    "AI_PASSIVE": lambda: socket.AI_PASSIVE,
    "6": lambda: 6,
    "NI_NUMERIC": lambda: socket.NI_NUMERICHOST | socket.NI_NUMERICSERV,
    "NI_NUMERIC_DGRAM": lambda: socket.NI_NUMERICHOST | socket.NI_NUMERICSERV | socket.NI_DGRAM,
}

JUNK = [
    "None",
    "True",
    "0",
    "-1",
    "2**63",
    "1.5",
    "nan",
    "'x'",
    "b'x'",
    "object()",
    "[]",
    "{}",
    "1j",
    "BadRepr()",
]
ARGS = ["0", "'x'", "None", "object()", "BadRepr()", "nan", "b'x'"]
# Delays: due at once, due in 1 ms (top level only), never, junk.
DELAY_NOW = [
    "0",
    "-1",
    "0.0",
    "-0.0",
    "-inf",
    "-1e308",
    "-2**63",
    "False",
    "Fraction(-1,3)",
    "FloatSub(-1.0)",
    "IntSub(-5)",
    "-1.5",
]
DELAY_TINY = ["0.001"]
DELAY_NEVER = ["1e9", "inf", "1e308", "2**63", "10**30", "1000"]
DELAY_JUNK = [
    "None",
    "'x'",
    "b'x'",
    "object()",
    "[]",
    "1j",
    "2**1024",
    "nan",
    "RaddStr()",
    "RaddRaise()",
    "Decimal('-1')",
    "FloatLike()",
    "IndexLike()",
]
# call_at: absolute times; "now" is loop.time() when resolved.
WHEN_EXTRA = ["now", "now+1e9"]
WHEN_TINY = ["now+0.001"]
CONTEXTS = ["None", "ctx", "shared_ctx", "0", "'x'", "object()"]
SIGNALS = [
    "SIGUSR1",
    "SIGUSR2",
    "SIGWINCH",
    "SIGHUP",
    "SIGKILL",
    "SIGSTOP",
    "0",
    "-1",
    "65",
    "1000",
    "2**63",
    "'x'",
    "None",
    "1.5",
    "True",
    "IntSub(-5)",
]
TINY_VALUES = {"0.001", "now+0.001"}

# --------------------------------------------------------------------------
# outcome classes
# --------------------------------------------------------------------------


def exc_name(exc: BaseException) -> Any:
    t = type(exc)
    mod = t.__module__
    name = t.__qualname__ if mod in ("builtins", "__main__") else f"{mod}.{t.__qualname__}"
    if isinstance(exc, OSError):
        return (name, exc.errno)
    return name


def category(x: Any) -> Any:
    """The outcome class of a return value (handles, futures and tasks by
    role: ferroloop's native handles are not asyncio.Handle instances)."""
    if x is None:
        return "None"
    if isinstance(x, bool):
        return ("bool", x)
    if isinstance(x, asyncio.Task):
        return "Task"
    if isinstance(x, asyncio.Future):
        return "Future"
    names = [c.__name__ for c in type(x).__mro__]
    if "TimerHandle" in names:
        return "TimerHandle"
    if "Handle" in names:
        return "Handle"
    if inspect.iscoroutine(x):
        return "coroutine"
    if isinstance(x, asyncio.BaseTransport):
        return "Transport"
    if hasattr(x, "fileno") and hasattr(x, "family"):
        return "socketlike"
    return type(x).__name__


_WORDS = re.compile(r"[A-Za-z ]*")


def msg_key(message: Any) -> Any:
    if not isinstance(message, str):
        return ("nonstr", type(message).__name__)
    return " ".join(_WORDS.match(message).group().split()[:3])


_GC_MESSAGES = ("never retrieved", "was destroyed but it is pending")


def is_gc_context(ctx: Any) -> bool:
    """A report made by a finalizer (its timing is refcount/GC detail)."""
    if not isinstance(ctx, dict):
        return False
    msg = ctx.get("message")
    if isinstance(msg, str) and any(m in msg for m in _GC_MESSAGES):
        return True
    inner = ctx.get("context")
    return inner is not ctx and is_gc_context(inner)


def _asyncio_shutdown_race(ctx: Any) -> bool:
    """asyncio < 3.12: the thread of shutdown_default_executor() calls
    ``future.set_result`` on a future that may have been cancelled meanwhile
    (InvalidStateError; 3.12 uses _set_result_unless_cancelled, as ferroloop
    does on every version). Timing, and an asyncio bug: not compared."""
    if PY312 or not isinstance(ctx, dict):
        return False
    cb = getattr(ctx.get("handle"), "_callback", None)
    return (
        isinstance(ctx.get("exception"), asyncio.InvalidStateError)
        and getattr(cb, "__name__", None) == "set_result"
        and isinstance(getattr(cb, "__self__", None), asyncio.Future)
    )


def ctx_summary(ctx: Any) -> Any:
    if not isinstance(ctx, dict):
        return ("nondict", type(ctx).__name__)
    exc = ctx.get("exception")
    if exc is not None and not isinstance(exc, BaseException):
        exc = ("not an exception", type(exc).__name__)
    elif exc is not None:
        exc = type(exc).__name__
    return (msg_key(ctx.get("message")), exc)


SKIP = object()


class Observed:
    """A call's result, and what a getter says right after it."""

    def __init__(self, result, after):
        self.result = result
        self.after = after


class Hang(Exception):
    """A run the watchdog had to stop."""


# --------------------------------------------------------------------------
# watchdog: one thread for the whole process
# --------------------------------------------------------------------------


class _Arm:
    __slots__ = ("deadline", "fired", "loop")

    def __init__(self, loop, deadline):
        self.loop = loop
        self.deadline = deadline
        self.fired = False


class Watchdog:
    def __init__(self):
        self._cond = threading.Condition()
        self._arms: set[_Arm] = set()
        t = threading.Thread(target=self._run, daemon=True, name="fuzz-watchdog")
        t.start()

    def _run(self):
        with self._cond:
            while True:
                now = time.monotonic()
                waits = [self._check(arm, now) for arm in list(self._arms)]
                waits = [w for w in waits if w is not None]
                self._cond.wait(min(waits) - now if waits else None)

    @staticmethod
    def _check(arm, now):
        # (a function, so that no frame of this thread keeps a loop alive)
        if arm.fired:
            return None
        if arm.deadline > now:
            return arm.deadline
        arm.fired = True
        with contextlib.suppress(BaseException):
            arm.loop.call_soon_threadsafe(arm.loop.stop)
        return None

    @contextlib.contextmanager
    def arm(self, loop, timeout):
        arm = _Arm(loop, time.monotonic() + timeout)
        with self._cond:
            self._arms.add(arm)
            self._cond.notify()
        try:
            yield arm
        finally:
            with self._cond:
                self._arms.discard(arm)


_WATCHDOG: Watchdog | None = None


def watchdog() -> Watchdog:
    global _WATCHDOG
    if _WATCHDOG is None:
        _WATCHDOG = Watchdog()
    return _WATCHDOG


PRELUDE = 0.01  # see Env.thread_prelude
LONG = 5.0  # a run that must end by itself
SHORT = 0.1  # a run that may legitimately wait forever (both loops alike)
# Cancelling what is left at the end: a task whose context= is not a Context
# never steps (each step fails to enter it), so never ends cancelled.
CANCEL = 0.25
IDLE = 0.02  # run_forever with nothing to stop it

# --------------------------------------------------------------------------
# fds
# --------------------------------------------------------------------------

N_SLOTS = 7  # 0-1, 2-3: socketpairs; 4: pipe read end, 5: write end; 6: a file
SOCKET_SLOTS = (0, 1, 2, 3)
NEVER_OFFSET = 40


def _fd_base() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(min(soft, 1024) - 100, 64)


FD_BASE = _fd_base()


class FdObj:
    """A pipe end or file: fileno() and close(), as a socket has them."""

    def __init__(self, fd):
        self.fd = fd

    def fileno(self):
        return self.fd

    def close(self):
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def __repr__(self):
        return f"FdObj({self.fd})"


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def open_fds() -> set[int]:
    fds = set()
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if _is_open(fd):
            fds.add(fd)
    return fds


def _place(fd: int, slot: int) -> int:
    target = FD_BASE + slot
    if _is_open(target):
        raise RuntimeError(f"fuzz: fd {target} (slot {slot}) is already open")
    os.dup2(fd, target, inheritable=False)
    os.close(fd)
    return target


def _socket_at(sock: socket.socket, slot: int) -> socket.socket:
    fd = _place(sock.detach(), slot)
    s = socket.socket(fileno=fd)
    s.setblocking(False)
    return s


# --------------------------------------------------------------------------
# the environment of one run
# --------------------------------------------------------------------------


class _RecHandler(logging.Handler):
    def __init__(self, env):
        super().__init__(logging.ERROR)
        self.env = env

    def emit(self, record):
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001
            msg = "<unformattable>"
        exc = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else None
        gc_ish = any(m in msg for m in _GC_MESSAGES)
        entry = ("log", msg_key(msg), exc)
        if gc_ish:
            self.env.bag.append(entry)
        else:
            self.env.record(entry)


class Env:
    """One loop's run of a program: the loop, the objects the program made,
    and the log."""

    def __init__(self, make_loop):
        self.make_loop = make_loop
        self.loop = make_loop()
        self._other = None
        self.log: list = []
        self.stack: list[list] = [self.log]
        self.bag: list = []
        self.depth = 0
        self.calls: collections.Counter = collections.Counter()
        self.objs: dict[str, list] = collections.defaultdict(list)
        self.coros: list = []
        self.executors: list = []
        self.extras: list = []  # partners of reopened slots
        self.slots: dict[int, Any] = {}
        self.partner: dict[int, Any] = {}
        self.transports: dict[int, Any] = {}
        self.given_to_transport: list = []
        self.tiny_deadline = 0.0
        self._prelude_ex = None
        self.last_run_stopped = False  # by the watchdog
        self.shared_ctx = contextvars.copy_context()
        self.lock = threading.Lock()
        self._make_slots()
        self.loop.set_exception_handler(self.handler("rec"))

    # -- recording -----------------------------------------------------------

    def record(self, entry):
        with self.lock:
            self.stack[-1].append(entry)

    @contextlib.contextmanager
    def nested(self):
        children: list = []
        with self.lock:
            self.stack.append(children)
        self.depth += 1
        try:
            yield children
        finally:
            self.depth -= 1
            with self.lock:
                self.stack.pop()

    # -- slots ---------------------------------------------------------------

    def _make_slots(self):
        for first in (0, 2):
            a, b = socket.socketpair()
            self.slots[first] = _socket_at(a, first)
            self.slots[first + 1] = _socket_at(b, first + 1)
            self.partner[first] = self.slots[first + 1]
            self.partner[first + 1] = self.slots[first]
        r, w = os.pipe()
        self.slots[4] = FdObj(_place(r, 4))
        self.slots[5] = FdObj(_place(w, 5))
        os.set_blocking(self.slots[4].fd, False)
        os.set_blocking(self.slots[5].fd, False)
        self.partner[4] = self.slots[5]
        self.partner[5] = None
        with tempfile.TemporaryFile() as f:
            self.slots[6] = FdObj(_place(os.dup(f.fileno()), 6))
        self.partner[6] = None

    def slot_fd(self, slot):
        return FD_BASE + slot

    # -- objects -------------------------------------------------------------

    def add(self, kind, obj):
        self.objs[kind].append(obj)
        return obj

    def ref(self, ref: Ref):
        if ref.kind == "fut_or_task":
            items = self.objs["fut"] + self.objs["task"]
        else:
            items = self.objs[ref.kind]
        if not items:
            return SKIP
        return items[ref.i % len(items)]

    def other_loop(self):
        if self._other is None:
            self._other = self.make_loop()
        return self._other

    # -- resolution ----------------------------------------------------------

    def value(self, v: V):
        if v.name == "now":
            return self.loop.time()
        if v.name == "now+0.001":
            return self.loop.time() + 0.001
        if v.name == "now+1e9":
            return self.loop.time() + 1e9
        if v.name == "shared_ctx":
            return self.shared_ctx
        return VALUES[v.name]()

    def note_delay(self, v: V):
        if v.name in TINY_VALUES:
            self.tiny_deadline = max(self.tiny_deadline, self.loop.time() + 0.0015)

    def wait_tiny(self):
        """Before a run: every 1 ms timer scheduled so far is due."""
        while True:
            left = self.tiny_deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(left)

    def callback(self, cb: Cb, via: str):
        env = self
        io = via in ("reader", "writer")
        head = "io" if io else "cb"
        kind = cb.kind
        if kind == "val":
            return self.value(V(cb.tag))
        if kind == "lambda":
            return lambda *a: None
        if kind == "corofunc":

            async def corofunc(*a):
                env.record((head, cb.tag, via, "corofunc-body"))

            return corofunc
        if kind == "coro":
            return self.coroutine(Aw("ret"))

        def run(*a):
            with env.nested() as children:
                for sub in cb.sub:
                    run_op(env, sub)
            env.record((head, cb.tag, via, len(a), tuple(children)))
            if kind in ("raise", "partial"):
                raise ValueError("fuzz callback")
            if kind == "raise_ki":
                raise KeyboardInterrupt
            if kind == "raise_exit":
                raise SystemExit(3)

        if kind == "partial":
            return functools.partial(run, "partial-arg")
        return run

    def handler(self, kind):
        env = self
        bag = self.bag
        own_loop = weakref.ref(self.loop)

        def rec(loop, ctx):
            if _asyncio_shutdown_race(ctx):
                return
            entry = ("handler", loop is own_loop(), ctx_summary(ctx))
            if is_gc_context(ctx) or "stack" not in vars(env):
                # (a finalizer's report; or one made after the run)
                bag.append(entry)
            else:
                env.record(entry)
            if kind == "raise":
                raise ValueError("fuzz handler")
            if kind == "raise_ki":
                raise KeyboardInterrupt

        return rec

    def coroutine(self, aw: Aw):
        env = self
        kind = aw.kind

        async def body():
            if kind == "ret":
                return 1
            if kind == "raise":
                raise ValueError("fuzz coro")
            if kind == "ki":
                raise KeyboardInterrupt
            if kind == "exit":
                raise SystemExit(4)
            if kind == "sleep0":
                await asyncio.sleep(0)
                return 2
            if kind == "cancel_self":
                asyncio.current_task().cancel()
                await asyncio.sleep(0)
                return 5
            if kind == "reenter":
                with env.nested() as children:
                    for sub in aw.sub:
                        run_op(env, sub)
                env.record(("coro", aw.tag, tuple(children)))
                await asyncio.sleep(0)
                return 6
            if kind == "await_ref":
                target = env.ref(Ref("fut_or_task", aw.tag))
                if target is SKIP:
                    return 7
                return await target
            raise AssertionError(kind)

        c = body()
        self.coros.append(c)
        return c

    def awaitable(self, aw: Aw):
        """(object, may_hang, uses_threads) for run_until_complete & co."""
        kind = aw.kind
        if kind in ("ret", "raise", "ki", "exit", "sleep0", "cancel_self", "reenter"):
            return self.coroutine(aw), False, False
        if kind == "await_ref":
            return self.coroutine(aw), True, False
        if kind == "fut_done":
            f = self.loop.create_future()
            f.set_result(8)
            return f, False, False
        if kind == "fut_cancelled":
            f = self.loop.create_future()
            f.cancel()
            return f, False, False
        if kind == "ref":
            target = self.ref(Ref("fut_or_task", aw.tag))
            if target is SKIP:
                return SKIP, False, False
            return target, True, False
        if kind == "xref":
            target = self.ref(Ref("xfut", aw.tag))
            if target is SKIP:
                return SKIP, False, False
            return target, True, True
        if kind == "foreign":
            return self.other_loop().create_future(), True, False
        if kind == "bad_await":
            return BadAwait(), False, False
        if kind == "good_await":
            return GoodAwait(), False, False
        if kind == "gen":
            return (i for i in range(2)), False, False
        if kind == "closed_coro":
            c = self.coroutine(Aw("ret"))
            c.close()
            return c, False, False
        if kind == "val":
            return self.value(V(aw.tag)), False, False
        raise AssertionError(kind)

    def fd(self, spec: Fd):
        k = spec.kind
        if k == "int":
            return self.slot_fd(spec.slot)
        if k == "obj":
            return self.slots[spec.slot]
        if k == "never":
            return FD_BASE + NEVER_OFFSET
        if k == "intsub":
            return IntSub(self.slot_fd(spec.slot))
        if k == "fileno_float":
            return FilenoReturns(self.slot_fd(spec.slot) + 0.5)
        if k == "fileno_str":
            return FilenoReturns("x")
        if k == "fileno_neg":
            return FilenoReturns(-5)
        if k == "fileno_huge":
            return FilenoReturns(2**40)
        if k == "fileno_oserror":
            return FilenoRaises(OSError(9, "fuzz"))
        if k == "fileno_attr":
            return FilenoRaises(AttributeError("fuzz"))
        if k == "val":
            return self.value(V(spec.slot))
        raise AssertionError(k)

    # -- runs ----------------------------------------------------------------

    def run(self, fn, timeout, ordered=True):
        """Runs the loop through fn() under the watchdog; Hang if it fired.

        A run that waits for another thread (or whose number of iterations
        is the implementation's business: an I/O wait) is not ``ordered``:
        what ran during it is compared as a set (a callback that runs at
        every iteration, e.g. a writer, runs a number of times that is
        timing)."""
        self.wait_tiny()
        children: list = []
        with self.lock:
            self.stack.append(children)
        arm = None
        try:
            with watchdog().arm(self.loop, timeout) as arm:
                try:
                    result = fn()
                except RuntimeError:
                    if arm.fired:
                        raise Hang() from None
                    raise
        finally:
            self.last_run_stopped = arm is not None and arm.fired
            with self.lock:
                self.stack.pop()
            # A run the watchdog stopped ran for a time, not a number of
            # iterations: what ran in it is compared as a set too.
            if not ordered or (arm is not None and arm.fired):
                if children:
                    self.record(("unordered run", tuple(sorted(set(children), key=repr))))
            else:
                with self.lock:
                    self.stack[-1].extend(children)
        if arm.fired:
            raise Hang()
        return result

    @contextlib.contextmanager
    def unordered(self):
        """What runs in the block is recorded as one set."""
        children: list = []
        with self.lock:
            self.stack.append(children)
        try:
            yield
        finally:
            with self.lock:
                self.stack.pop()
            flat = set()
            for entry in children:
                if entry and entry[0] == "unordered run":
                    flat.update(entry[1])
                else:
                    flat.add(entry)
            if flat:
                self.record(("unordered run", tuple(sorted(flat, key=repr))))

    async def thread_prelude(self, default=False):
        """Awaited before what waits for another thread: 10 ms in an
        executor, so that whatever the run does at once (callbacks, short
        chains of them) is done before the thread's answer can arrive,
        however fast that thread is on either loop."""
        if default:
            await self.loop.run_in_executor(None, time.sleep, PRELUDE)
        else:
            if self._prelude_ex is None:
                self._prelude_ex = concurrent.futures.ThreadPoolExecutor(1)
                self.executors.append(self._prelude_ex)
            await self.loop.run_in_executor(self._prelude_ex, time.sleep, PRELUDE)

    def after_prelude(self, coro, default=False):
        if self.depth or not inspect.iscoroutine(coro):
            return coro
        self.coros.append(coro)

        async def wrapper():
            await self.thread_prelude(default)
            return await coro

        return wrapper()

    def drive(self, coro, timeout=LONG, ordered=False):
        """A coroutine method's coroutine: awaited at top level (its result),
        closed in a callback (where the loop cannot be run)."""
        if self.depth or not inspect.iscoroutine(coro):
            if inspect.iscoroutine(coro):
                coro.close()
            return coro
        self.coros.append(coro)
        if ordered:
            return self.run(lambda: self.loop.run_until_complete(coro), timeout, True)
        # (its own task, so that teardown can wait for it if a callback
        # interrupts this run: when it ends is the other thread's timing)
        task = self.loop.create_task(coro)
        if isinstance(task, asyncio.Future):
            self.add("xtask", task)
        return self.run_to_end(task, timeout)

    def run_to_end(self, fut, timeout):
        """run_until_complete(fut), fut waiting for another thread; a run
        interrupted (a callback raising, a stop) is resumed (unrecorded)
        until fut is done, so that the thread's work does not go on into
        the calls that follow, where when it ends would be timing."""
        with self.unordered():
            try:
                return self.run(lambda: self.loop.run_until_complete(fut), timeout, False)
            except BaseException:
                for _ in range(10):
                    stuck = self.last_run_stopped  # (no point in waiting again)
                    if stuck or fut.done() or self.loop.is_closed() or self.loop.is_running():
                        break
                    with contextlib.suppress(BaseException):
                        self.run(lambda: self.loop.run_until_complete(fut), timeout, False)
                raise


# --------------------------------------------------------------------------
# operations
# --------------------------------------------------------------------------

OPS: dict[str, Any] = {}


def op(name):
    def deco(fn):
        OPS[name] = fn
        return fn

    return deco


def _schedule_call(env, method, fixed, cb, args, ctx, shape):
    meth = getattr(env.loop, method)
    callback = env.callback(cb, "cb")
    a = [env.value(x) for x in args]
    kw = {}
    if ctx is not None:
        kw["context"] = env.value(ctx)
    if shape == "pos":
        return meth(*fixed, callback, *a, **kw)
    if shape == "kw":  # every fixed parameter by keyword
        names = {"call_later": ["delay"], "call_at": ["when"]}.get(method, [])
        kw.update(zip(names, fixed))
        kw["callback"] = callback
        return meth(**kw)
    if shape == "none":
        return meth(**kw)
    if shape == "dup":
        return meth(*fixed, callback, *a, callback=callback, **kw)
    if shape == "badkw":
        return meth(*fixed, callback, *a, fuzz=1, **kw)
    raise AssertionError(shape)


def _keep_handle(env, h):
    if h is not SKIP:
        env.add("handle", h)
    return h


@op("call_soon")
def op_call_soon(env, cb, args, ctx, shape):
    return _keep_handle(env, _schedule_call(env, "call_soon", (), cb, args, ctx, shape))


@op("call_soon_threadsafe")
def op_call_soon_threadsafe(env, cb, args, ctx, shape):
    h = _schedule_call(env, "call_soon_threadsafe", (), cb, args, ctx, shape)
    return _keep_handle(env, h)


def _nan(value):
    return isinstance(value, float) and math.isnan(value) and excluded("nan_timer_order")


@op("call_later")
def op_call_later(env, delay, cb, args, ctx, shape):
    d = env.value(delay)
    if _nan(d):
        return SKIP
    if excluded("call_at_when_not_float"):
        # asyncio computes time() + delay and takes whatever that is.
        try:
            when = 1.0 + d
        except Exception:  # noqa: BLE001 - raises the same on both loops
            when = 0.0
        if not isinstance(when, (int, float)):
            return SKIP
    h = _schedule_call(env, "call_later", (d,), cb, args, ctx, shape)
    env.note_delay(delay)
    return _keep_handle(env, h)


@op("call_at")
def op_call_at(env, when, cb, args, ctx, shape):
    w = env.value(when)
    if _nan(w):
        return SKIP
    not_float = not isinstance(w, (int, float)) or (isinstance(w, int) and abs(w) > 2**1000)
    if excluded("call_at_when_not_float") and w is not None and not_float:
        return SKIP
    h = _schedule_call(env, "call_at", (w,), cb, args, ctx, shape)
    env.note_delay(when)
    return _keep_handle(env, h)


@op("handle")
def op_handle(env, ref, method):
    h = env.ref(ref)
    if h is SKIP:
        return SKIP
    if method == "when" and not hasattr(h, "when"):
        return SKIP
    return getattr(h, method)()


@op("time")
def op_time(env):
    return env.loop.time()


@op("loop0")
def op_loop0(env, method):
    """A method without arguments (stop, close, is_closed, ...)."""
    return getattr(env.loop, method)()


@op("set_debug")
def op_set_debug(env, v):
    value = env.value(v)
    if excluded("set_debug_not_kept") and not isinstance(value, bool):
        return SKIP
    # (and what the loop says it is now)
    return Observed(env.loop.set_debug(value), env.loop.get_debug())


@op("create_future")
def op_create_future(env):
    return env.add("fut", env.loop.create_future())


@op("create_task")
def op_create_task(env, aw, name, context):
    obj, _, _ = env.awaitable(aw)
    if obj is SKIP:
        return SKIP
    kw = {}
    if name is not None:
        kw["name"] = env.value(name)
    if context is not None:
        if sys.version_info < (3, 11):
            # 3.10's asyncio has no context= (TypeError); ferroloop keeps
            # 3.11's create_task there (conftest.skip_if_asyncio_310).
            if inspect.iscoroutine(obj):
                obj.close()
            return SKIP
        kw["context"] = env.value(context)
    t = env.loop.create_task(obj, **kw)
    if isinstance(t, asyncio.Future):
        env.add("task", t)
    return t


@op("run_until_complete")
def op_run_until_complete(env, aw):
    obj, may_hang, threads = env.awaitable(aw)
    if obj is SKIP:
        return SKIP
    timeout = LONG if threads or not may_hang else SHORT
    if isinstance(obj, asyncio.Future) and obj.done():
        timeout = LONG
    if threads and not env.depth:
        target = obj

        async def after():
            await env.thread_prelude()
            return await target

        return env.drive(after(), timeout)
    return env.run(lambda: env.loop.run_until_complete(obj), timeout)


@op("run_once")
def op_run_once(env):
    def once():
        env.loop.call_soon(env.loop.stop)
        env.loop.run_forever()

    return env.run(once, LONG)


@op("run_forever")
def op_run_forever(env):
    """run_forever() stopped by a callback of the program, or by the
    watchdog after IDLE seconds (recorded as its outcome)."""
    try:
        env.run(env.loop.run_forever, IDLE)
    except Hang:
        return "idle"
    return None


@op("other_loop_run")
def op_other_loop_run(env):
    other = env.other_loop()
    return other.run_until_complete(asyncio.sleep(0))


@op("fd_watch")
def op_fd_watch(env, method, fd, cb, args):
    f = env.fd(fd)
    meth = getattr(env.loop, method)
    if method.startswith("add"):
        via = "reader" if "reader" in method else "writer"
        return meth(f, env.callback(cb, via), *[env.value(x) for x in args])
    return meth(f)


@op("slot")
def op_slot(env, action, slot, n):
    """Things done to the program's own fds (not loop calls)."""
    obj = env.slots[slot]
    if action == "close":
        return obj.close()
    if action == "reopen":
        if obj.fileno() != -1:
            return SKIP
        if _is_open(env.slot_fd(slot)):
            return SKIP  # a transport of ferroloop or asyncio still holds it
        a, b = socket.socketpair()
        env.slots[slot] = _socket_at(a, slot)
        b.setblocking(False)
        env.extras.append(b)
        env.partner[slot] = b
        return None
    if action == "feed":
        p = env.partner.get(slot)
        if p is None:
            return SKIP
        data = b"f" * n
        if isinstance(p, FdObj):
            return os.write(p.fileno(), data)
        return p.send(data, socket.MSG_DONTWAIT)
    if action == "drain":
        got = 0
        for _ in range(100):
            try:
                if isinstance(obj, FdObj):
                    chunk = os.read(obj.fileno(), 65536)
                else:  # (the program may have made it blocking)
                    chunk = obj.recv(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            if not chunk:
                break
            got += len(chunk)
        return got
    if action == "setblocking":
        if isinstance(obj, FdObj):
            return SKIP
        return obj.setblocking(bool(n))
    raise AssertionError(action)


class Proto(asyncio.Protocol):
    def __init__(self, env, tag, kind):
        self.env = env
        self.tag = tag
        self.kind = kind

    def connection_made(self, transport):
        self.env.record(("proto", self.tag, "made"))
        if self.kind == "raise_made":
            raise ValueError("fuzz made")

    def data_received(self, data):
        self.env.record(("io", ("proto", self.tag), "data"))
        if self.kind == "raise_data":
            raise ValueError("fuzz data")

    def eof_received(self):
        self.env.record(("io", ("proto", self.tag), "eof"))
        return self.kind == "keep_open"

    def connection_lost(self, exc):
        self.env.record(("proto", self.tag, "lost", None if exc is None else exc_name(exc)))


@op("make_transport")
def op_make_transport(env, sock, tag, kind):
    s = env.slots[sock.slot] if sock.kind == "obj" else env.fd(sock)
    if isinstance(s, socket.socket) and s.fileno() >= 0:
        if s in env.given_to_transport and excluded("second_transport_same_socket"):
            return SKIP
        env.given_to_transport.append(s)
    coro = env.loop.connect_accepted_socket(lambda: Proto(env, tag, kind), sock=s)
    res = env.drive(coro, ordered=True)
    if isinstance(res, tuple):
        env.add("transport", res[0])
        if sock.kind == "obj":
            env.transports[sock.slot] = res[0]
        return res[0]
    return res


@op("transport")
def op_transport(env, ref, call):
    t = env.ref(ref)
    if t is SKIP:
        return SKIP
    method, args = call
    return getattr(t, method)(*[env.value(V(x)) for x in args])


@op("exc_handler")
def op_exc_handler(env, kind):
    if kind in ("rec", "raise", "raise_ki"):
        h = env.handler(kind)
    elif kind == "none":
        h = None
    else:
        h = env.value(V(kind))
    res = env.loop.set_exception_handler(h)
    return Observed(res, env.loop.get_exception_handler())


@op("get_exception_handler")
def op_get_exception_handler(env):
    return env.loop.get_exception_handler()


def _context(env, spec):
    if spec == "msg":
        return {"message": "fuzz"}
    if spec == "msg_exc":
        return {"message": "fuzz", "exception": ValueError("x")}
    if spec == "exc_only":
        return {"exception": KeyError("x")}
    if spec == "empty":
        return {}
    if spec == "bad_types":
        return {"message": 5, "exception": "notexc", "future": 3}
    if spec == "with_handle":
        return {"message": "fuzz", "handle": env.loop.call_later(1e9, print)}
    if spec == "with_task":
        return {"message": "fuzz", "task": 5}
    return env.value(V(spec))


@op("call_exception_handler")
def op_call_exception_handler(env, spec):
    return env.loop.call_exception_handler(_context(env, spec))


@op("default_exception_handler")
def op_default_exception_handler(env, spec):
    return env.loop.default_exception_handler(_context(env, spec))


def _executor(env, spec):
    if spec == "None":
        return None
    if spec == "tpe":
        ex = concurrent.futures.ThreadPoolExecutor(1)
        env.executors.append(ex)
        return ex
    if spec == "tpe_shut":
        ex = concurrent.futures.ThreadPoolExecutor(1)
        ex.shutdown()
        return ex
    if spec == "not_tpe":
        return NotTPE()
    return env.value(V(spec))


@op("set_default_executor")
def op_set_default_executor(env, spec):
    new = _executor(env, spec)
    if sys.version_info < (3, 11) and not isinstance(new, concurrent.futures.ThreadPoolExecutor):
        # 3.10's asyncio takes any object (with a DeprecationWarning) and its
        # close() then fails half-way, before closing its selector; 3.11
        # refuses it at once (TypeError).
        return SKIP
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return env.loop.set_default_executor(new)


def _job(kind):
    if kind == "ret":
        return lambda *a: 1
    if kind == "raise":

        def raiser(*a):
            raise ValueError("fuzz job")

        return raiser
    if kind == "corofunc":

        async def cf(*a):
            return 1

        return cf
    return VALUES[kind]()


@op("run_in_executor")
def op_run_in_executor(env, ex, job, args):
    f = env.loop.run_in_executor(_executor(env, ex), _job(job), *[env.value(x) for x in args])
    if isinstance(f, asyncio.Future):
        env.add("xfut", f)
        # Let the job end in its thread now: its answer then waits for the
        # loop on both loops alike (whether it is there when the loop next
        # runs, or when it closes, would be the threads' timing).
        time.sleep(PRELUDE)
    return f


@op("coro_method")
def op_coro_method(env, method):
    """shutdown_asyncgens() / shutdown_default_executor()."""
    coro = getattr(env.loop, method)()
    if method == "shutdown_asyncgens":
        return env.drive(coro, ordered=True)
    return env.drive(env.after_prelude(coro))


@op("agen")
def op_agen(env, action, tag):
    if action == "drop":
        items = env.objs["agen"]
        if not items:
            return SKIP
        items.pop(tag % len(items))
        # Freed now on both loops, cycles too (the loop machinery may hold
        # one: when it would be freed otherwise is GC timing).
        gc.collect()
        return None

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            # Closed by the loop (shutdown_asyncgens: in the order of a
            # WeakSet; the finalizer hook) or by its deallocation (when is
            # refcount detail): which one is compared, not when.
            where = "gc" if asyncio._get_running_loop() is None else "loop"
            env.bag.append(("agen-final", tag, where))

    g = agen()
    env.add("agen", g)
    if env.depth:
        return g

    async def first():
        # (called in the loop, so the loop's firstiter hook sees it)
        return await g.__anext__()

    return env.run(lambda: env.loop.run_until_complete(first()), LONG)


@op("getaddrinfo")
def op_getaddrinfo(env, host, port, kw):
    kwargs = {k: env.value(v) for k, v in kw}
    coro = env.loop.getaddrinfo(env.value(host), env.value(port), **kwargs)
    # The prelude goes through the default executor: asyncio's getaddrinfo
    # always goes there (making the executor, waiting for a thread);
    # ferroloop answers an address literal at once, by design. After it,
    # both loops have the executor and have waited for a thread: what is
    # compared is the answer.
    res = env.drive(env.after_prelude(coro, default=True))
    if isinstance(res, list):
        return ("list", tuple(res))
    return res


@op("getnameinfo")
def op_getnameinfo(env, addr, flags):
    a = {"v4": ("127.0.0.1", 80), "v6": ("::1", 80, 0, 0), "bad": ("127.0.0.1",)}.get(addr)
    if a is None:
        a = env.value(V(addr))
    res = env.drive(env.after_prelude(env.loop.getnameinfo(a, env.value(flags))))
    if isinstance(res, tuple):
        return ("tuple", res)
    return res


def _readable(obj) -> bool:
    try:
        fd = obj.fileno()
    except Exception:  # noqa: BLE001
        return False
    if fd < 0:
        return True  # fails at once
    r, _, _ = select.select([fd], [], [], 0)
    return bool(r)


@op("sock")
def op_sock(env, method, sock, arg):
    """sock_recv / sock_recv_into / sock_sendall / sock_connect /
    sock_accept, at top level run to completion; when a recv would wait,
    the partner is fed one byte after the operation's first step."""
    s = env.fd(sock) if sock.kind != "obj" else env.slots[sock.slot]
    a = env.value(arg) if isinstance(arg, V) else bytearray(arg)
    if method == "sock_accept":
        coro = getattr(env.loop, method)(s)
    else:
        coro = getattr(env.loop, method)(s, a)
    if env.depth:
        return env.drive(coro)
    env.coros.append(coro)
    feed_later = None
    receiving = method in ("sock_recv", "sock_recv_into") and isinstance(s, socket.socket)
    if receiving and not _readable(s):
        partner = env.partner.get(sock.slot) if sock.kind == "obj" else None
        blocking = s.fileno() >= 0 and s.gettimeout() != 0
        if blocking and not env.loop.get_debug():
            # asyncio's loop would block in recv() (documented).
            if partner is None or partner.fileno() < 0:
                coro.close()
                return SKIP
            partner.send(b"p", socket.MSG_DONTWAIT)
        elif partner is not None and partner.fileno() >= 0:
            feed_later = partner
    accepting = method == "sock_accept" and isinstance(s, socket.socket) and s.fileno() >= 0
    if accepting and s.gettimeout() != 0 and not env.loop.get_debug():
        # asyncio's loop would block in accept()
        coro.close()
        return SKIP
    task = env.loop.create_task(coro)
    env.add("task", task)
    if feed_later is not None:

        def feed():
            # Whether the operation was over before data came: asyncio's
            # first try ends it when it does not have to wait.
            env.record(("fed", task.done()))
            feed_later.send(b"p", socket.MSG_DONTWAIT)

        env.loop.call_soon(feed)
    timeout = SHORT if feed_later is None else LONG
    return env.run(lambda: env.loop.run_until_complete(task), timeout, ordered=False)


@op("signal")
def op_signal(env, method, sig, cb, args):
    s = env.value(sig)
    if method == "add_signal_handler":
        return env.loop.add_signal_handler(
            s, env.callback(cb, "signal"), *[env.value(x) for x in args]
        )
    return env.loop.remove_signal_handler(s)


@op("kill")
def op_kill(env, sig):
    s = VALUES[sig]()
    if signal.getsignal(s) in (signal.SIG_DFL, None) and s != signal.SIGWINCH:
        return SKIP
    # (the handler runs in a later run of the program, in order)
    os.kill(os.getpid(), s)
    return None


@op("fut")
def op_fut(env, ref, method, arg):
    f = env.ref(ref)
    if f is SKIP:
        return SKIP
    if method == "add_done_callback":
        cb, ctx = arg
        kw = {} if ctx is None else {"context": env.value(ctx)}
        return f.add_done_callback(env.callback(cb, "done"), **kw)
    if arg is None:
        return getattr(f, method)()
    return getattr(f, method)(env.value(V(arg)))


@op("task_factory")
def op_task_factory(env, kind):
    if kind == "get":
        return env.loop.get_task_factory()
    if kind == "none":
        f = None
    elif kind == "task":

        def f(loop, coro, **kw):
            return asyncio.Task(coro, loop=loop, **kw)

    elif kind == "junkret":

        def f(loop, coro, **kw):
            coro.close()
            return 5

    elif kind == "raise":

        def f(loop, coro, **kw):
            coro.close()
            raise ValueError("fuzz factory")

    else:
        f = env.value(V(kind))
    res = env.loop.set_task_factory(f)
    return Observed(res, env.loop.get_task_factory())


@op("in_thread")
def op_in_thread(env, sub):
    """Makes the call ``sub`` from another thread (joined before going on)."""
    done = threading.Event()

    def target():
        try:
            run_op(env, sub)
        finally:
            done.set()

    t = threading.Thread(target=target, name="fuzz-call", daemon=True)
    t.start()
    if not done.wait(LONG + 5):
        raise Hang("the call did not return")
    t.join()


def run_op(env: Env, o: Op):
    env.calls[o.name] += 1
    try:
        res = OPS[o.name](env, *o.args)
    except Hang:
        env.record(("call", o.name, "HANG"))
    except BaseException as e:  # noqa: BLE001 - any outcome is recorded
        env.record(("call", o.name, "raise", exc_name(e)))
    else:
        if res is SKIP:
            env.record(("call", o.name, "skip"))
        elif isinstance(res, Observed):
            env.record(("call", o.name, "ok", category(res.result), category(res.after)))
        elif (
            isinstance(res, tuple)
            and res
            and res[0] in ("list", "tuple")
            or isinstance(res, str)
            and o.name == "run_forever"
        ):
            env.record(("call", o.name, "ok", res))
        else:
            env.record(("call", o.name, "ok", category(res)))


# --------------------------------------------------------------------------
# running a program on one loop
# --------------------------------------------------------------------------

_SIGNALS_TOUCHED = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH, signal.SIGHUP)


def _teardown_step(env, name, fn):
    env.calls["teardown"] += 1
    try:
        res = fn()
    except Hang:
        env.record(("teardown", name, "HANG"))
    except BaseException as e:  # noqa: BLE001
        env.record(("teardown", name, "raise", exc_name(e)))
    else:
        env.record(("teardown", name, "ok", res if isinstance(res, tuple) else category(res)))


def _cancel_all(tasks):
    raised = set()
    for t in tasks:
        try:
            t.cancel()
        except BaseException as e:  # noqa: BLE001
            raised.add(repr(exc_name(e)))
    return tuple(sorted(raised))


def _teardown(env: Env):
    lp = env.loop
    if lp.is_running():
        env.record(("teardown", "still running"))
        return
    if not lp.is_closed():
        # Executor jobs: their answers reach the loop when they do; wait for
        # them (without retrieving their exceptions), so that what follows
        # does not depend on that.
        # (A run even when they are all done: whether they are is timing,
        # and the run itself is not.)
        if env.objs["xfut"] or env.objs["xtask"]:
            xfuts = [f for f in env.objs["xfut"] + env.objs["xtask"] if not f.done()]
            waiter = lp.create_future()
            # ... and PRELUDE seconds at least, so that short chains of
            # callbacks end in this run however fast the threads were.
            left = [len(xfuts) + 1]

            def one_done(_=None):
                left[0] -= 1
                if not left[0] and not waiter.done():
                    waiter.set_result(None)

            for f in xfuts:
                f.add_done_callback(one_done)
            lp.call_later(PRELUDE, one_done)

            def settle():
                # A callback or a task may interrupt the run: go on. How
                # often is timing (a stale stop, ...): not recorded.
                with env.unordered():
                    _settle()

            def _settle():
                for _ in range(10):
                    try:
                        env.run(lambda: lp.run_until_complete(waiter), LONG, ordered=False)
                    except BaseException:  # noqa: BLE001
                        if lp.is_closed() or lp.is_running() or env.last_run_stopped:
                            break
                        continue
                    break

            _teardown_step(env, "executor jobs", settle)
        pending = [t for t in asyncio.all_tasks(lp) if not t.done()]
        if pending:
            # (a cancel() can raise: a done callback the program added that
            # call_soon refuses in debug mode, ...)
            _teardown_step(env, "cancel tasks", lambda: _cancel_all(pending))
            gathered = asyncio.gather(*pending, return_exceptions=True)
            _teardown_step(
                env, "cancel", lambda: env.run(lambda: lp.run_until_complete(gathered), CANCEL)
            )
        for name in ("shutdown_asyncgens", "shutdown_default_executor"):
            _teardown_step(
                env,
                name,
                lambda n=name: env.run(
                    lambda: lp.run_until_complete(
                        getattr(lp, n)()
                        if n == "shutdown_asyncgens"
                        else env.after_prelude(getattr(lp, n)())
                    ),
                    LONG,
                    ordered=n == "shutdown_asyncgens",
                ),
            )
        for t in env.objs["transport"]:
            _teardown_step(env, "abort", t.abort)
        if env.objs["transport"]:
            _teardown_step(env, "run_once", lambda: OPS["run_once"](env))
    _teardown_step(env, "close", lp.close)
    if env._other is not None:
        env._other.close()


def _fds_after_close(env, base_fds):
    """fds still open once the loop is closed (the loop object alive), other
    than the program's own."""
    own = {FD_BASE + slot for slot in range(N_SLOTS)}
    own |= {s.fileno() for s in env.extras if s.fileno() >= 0}
    return len(open_fds() - base_fds - own)


def _unraisable(bag, u):
    """An exception nobody could catch (in a finalizer, ...). Those the
    program's own exception handler raises are left out: which handler is
    set when an object dies is refcount timing."""
    exc = u.exc_value
    if isinstance(exc, KeyboardInterrupt) or str(exc) == "fuzz handler":
        return
    bag.append(("unraisable", type(exc).__name__))


def run_program(make_loop, program, base_fds=None):
    """Runs ``program`` on a new loop; returns (log, bag, calls)."""
    log_ = logging.getLogger("asyncio")
    # (wrap_future's callbacks of jobs that end after their loop closed)
    cf_log = logging.getLogger("concurrent.futures")
    saved_cf_level = cf_log.level
    cf_log.setLevel(logging.CRITICAL)
    saved_propagate = log_.propagate
    saved_level = log_.level
    saved_handlers = {s: signal.getsignal(s) for s in _SIGNALS_TOUCHED}
    saved_wakeup = signal.set_wakeup_fd(-1)
    saved_depth = sys.get_coroutine_origin_tracking_depth()
    saved_hooks = sys.get_asyncgen_hooks()
    gc_was_enabled = gc.isenabled()
    # What exists now is not this run's: frozen, the collections below only
    # look at what the run made (a full collection of the whole process per
    # run would cost more than the run).
    gc.freeze()
    if base_fds is None:
        base_fds = open_fds()
    saved_unraisable = sys.unraisablehook
    base_threads = set(threading.enumerate())
    env = Env(make_loop)
    bag = env.bag
    handler = _RecHandler(env)
    try:
        gc.disable()
        sys.unraisablehook = functools.partial(_unraisable, bag)
        log_.addHandler(handler)
        log_.propagate = False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for o in program:
                run_op(env, o)
            try:
                _teardown(env)
            except BaseException as e:  # noqa: BLE001 - compared as any outcome
                env.record(("teardown", "raised", exc_name(e)))
                if not env.loop.is_closed() and not env.loop.is_running():
                    env.loop.close()
            env.record(("fds open after close", _fds_after_close(env, base_fds)))
            # Let the finalizers report (into the bag), then close the rest.
            for kind in list(env.objs):
                env.objs[kind].clear()
            for c in env.coros:
                with contextlib.suppress(BaseException):
                    c.close()
            env.coros.clear()
            gc.collect()
    finally:
        log_.removeHandler(handler)
        log_.propagate = saved_propagate
        log_.setLevel(saved_level)
        cf_log.setLevel(saved_cf_level)
        if not env.loop.is_closed() and not env.loop.is_running():
            env.loop.close()
        for ex in env.executors:
            ex.shutdown(wait=True)
        for obj in list(env.slots.values()) + env.extras:
            with contextlib.suppress(OSError):
                obj.close()
        for s, h in saved_handlers.items():
            if h is not None:
                signal.signal(s, h)
        signal.set_wakeup_fd(saved_wakeup)
        sys.set_coroutine_origin_tracking_depth(saved_depth)
        sys.set_asyncgen_hooks(*saved_hooks)
        asyncio.events._set_running_loop(None)
        if gc_was_enabled:
            gc.enable()
        log, calls = env.log, env.calls
        env.__dict__.clear()
        gc.collect()
        sys.unraisablehook = saved_unraisable
        gc.unfreeze()
    # fds: wait (shortly) for whatever is closing to close.
    deadline = time.monotonic() + 1.0
    while True:
        leaked = open_fds() - base_fds
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.005)
    log.append(("fds leaked", len(leaked)))
    # threads: the same (executor workers exit once their executor is shut
    # down or collected)
    while True:
        threads = [
            t
            for t in threading.enumerate()
            if t not in base_threads and not t.name.startswith("fuzz")
        ]
        if not threads or time.monotonic() > deadline + 1.0:
            break
        time.sleep(0.005)
    log.append(("threads left", len(threads)))
    return log, sorted(bag, key=repr), calls


# --------------------------------------------------------------------------
# comparison
# --------------------------------------------------------------------------


def canonical(log):
    """Sorts each run of consecutive I/O callback entries (see module doc)
    and does the same inside nested entries."""
    out = []
    run: list = []
    for entry in log:
        entry = tuple(canonical(x) if isinstance(x, tuple) and _is_log(x) else x for x in entry)
        if entry and entry[0] == "io":
            run.append(entry)
            continue
        if run:
            out.extend(sorted(run, key=repr))
            run = []
        out.append(entry)
    if run:
        out.extend(sorted(run, key=repr))
    return tuple(out)


def _is_log(x):
    return all(isinstance(e, tuple) and e and isinstance(e[0], str) for e in x) and bool(x)


def first_difference(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def asyncio_loop():
    return asyncio.SelectorEventLoop()


def ferroloop_loop():
    import ferroloop

    return ferroloop.new_event_loop()


class Mismatch(AssertionError):
    pass


def compare(program, stats=None, retries=2):
    """Runs ``program`` on both loops; raises Mismatch when the logs differ
    (and keep differing on reruns, asyncio agreeing with itself)."""
    a_log, a_bag, calls = run_program(asyncio_loop, program)
    f_log, f_bag, _ = run_program(ferroloop_loop, program)
    a = (canonical(a_log), tuple(a_bag))
    f = (canonical(f_log), tuple(f_bag))
    if stats is not None:
        stats["programs"] += 1
        stats["top-level calls"] = stats.get("top-level calls", 0) + len(program)
        stats["program calls"] = stats.get("program calls", 0) + _static_calls(program)
        stats["calls"] += sum(v for k, v in calls.items() if k != "teardown")
        stats["ops"].update(calls)
        _collect_exceptions(a_log, stats["exceptions"])
    if a == f:
        return
    for _ in range(retries):
        a2_log, a2_bag, _ = run_program(asyncio_loop, program)
        f2_log, f2_bag, _ = run_program(ferroloop_loop, program)
        a2 = (canonical(a2_log), tuple(a2_bag))
        f2 = (canonical(f2_log), tuple(f2_bag))
        if a2 != a:
            if stats is not None:
                stats["nondeterministic"] += 1
                stats.setdefault("nondeterministic_programs", []).append(
                    describe(program, a, a2).replace("ferroloop", "asyncio 2nd")
                )
            return
        if f2 == a2:
            if stats is not None:
                stats["flaky"] += 1
            return
    raise Mismatch(describe(program, a, f))


def _static_calls(x) -> int:
    """The calls written in a program (nested ones once each)."""
    if isinstance(x, Op):
        return 1 + sum(_static_calls(a) for a in x.args)
    if isinstance(x, (Cb, Aw)):
        return sum(_static_calls(o) for o in x.sub)
    if isinstance(x, (list, tuple)):
        return sum(_static_calls(a) for a in x)
    return 0


def _collect_exceptions(log, out):
    for entry in log:
        for x in entry:
            if isinstance(x, tuple) and _is_log(x):
                _collect_exceptions(x, out)
        if "raise" in entry:
            out.add(entry[entry.index("raise") + 1])
        handler = entry and entry[0] == "handler" and isinstance(entry[2], tuple)
        if handler and entry[2][0] != "nondict" and isinstance(entry[2][1], str):
            out.add(entry[2][1])


def describe(program, a, f) -> str:
    lines = ["asyncio and ferroloop differ on:", format_program(program)]
    for what, x, y in (("log", a[0], f[0]), ("finalizer reports", a[1], f[1])):
        if x == y:
            continue
        i = first_difference(x, y)
        lines.append(f"{what}: first difference at entry {i}")
        for j in range(max(0, i - 3), i):
            lines.append(f"      both: {x[j]!r}")
        lines.append(f"   asyncio: {x[i : i + 3]!r}")
        lines.append(f" ferroloop: {y[i : i + 3]!r}")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# strategies
# --------------------------------------------------------------------------

MAX_DEPTH = 2  # callbacks that call into the loop, inside callbacks, ...
TAGS = st.integers(0, 99)


def vals(names):
    return st.sampled_from(list(names)).map(V)


def _args():
    return st.lists(vals(ARGS), max_size=2).map(tuple)


_CALLBACK_KINDS = ["rec"] * 6 + ["raise"] * 2 + ["lambda", "partial", "corofunc", "coro"]
_RARE_CALLBACK_KINDS = ["raise_ki", "raise_exit"]
_CALLBACK_JUNK = ["None", "0", "'x'", "object()"]


@functools.cache
def callbacks(depth: int):
    plain = st.builds(Cb, st.sampled_from(_CALLBACK_KINDS), TAGS)
    options = [plain, plain, plain, st.builds(Cb, st.sampled_from(_RARE_CALLBACK_KINDS), TAGS)]
    options.append(st.builds(Cb, st.just("val"), st.sampled_from(_CALLBACK_JUNK)))
    if depth < MAX_DEPTH:
        sub = st.lists(ops(depth + 1, "nested"), min_size=1, max_size=3).map(tuple)
        options += [st.builds(Cb, st.just("reenter"), TAGS, sub)] * 3
    return st.one_of(options)


_AW_SIMPLE = ["ret", "raise", "sleep0", "cancel_self", "fut_done", "fut_cancelled", "foreign"]
_AW_RARE = ["ki", "exit", "bad_await", "good_await", "gen", "closed_coro"]


@functools.cache
def awaitables(depth: int):
    options = [
        st.builds(Aw, st.sampled_from(_AW_SIMPLE)),
        st.builds(Aw, st.sampled_from(_AW_SIMPLE)),
        st.builds(Aw, st.sampled_from(_AW_RARE)),
        st.builds(Aw, st.sampled_from(["ref", "xref", "await_ref"]), st.integers(0, 5)),
        st.builds(Aw, st.just("val"), st.sampled_from(["None", "0", "'x'", "object()"])),
    ]
    if depth < MAX_DEPTH:
        sub = st.lists(ops(depth + 1, "nested"), min_size=1, max_size=3).map(tuple)
        options += [st.builds(Aw, st.just("reenter"), TAGS, sub)] * 2
    return st.one_of(options)


_SLOTS = st.integers(0, N_SLOTS - 1)
_FD_JUNK = ["-1", "2**31", "2**63", "-2**63", "10**30", "1.5", "'x'", "None", "object()"]
_FILENO_KINDS = [
    "fileno_str",
    "fileno_neg",
    "fileno_huge",
    "fileno_oserror",
    "fileno_attr",
]


def fds():
    return st.one_of(
        st.builds(Fd, st.just("int"), _SLOTS),
        st.builds(Fd, st.just("int"), _SLOTS),
        st.builds(Fd, st.just("obj"), _SLOTS),
        st.builds(Fd, st.just("obj"), _SLOTS),
        st.builds(Fd, st.sampled_from(["intsub", "fileno_float"]), _SLOTS),
        st.builds(Fd, st.sampled_from(["never"] + _FILENO_KINDS)),
        st.builds(Fd, st.just("val"), st.sampled_from(_FD_JUNK)),
    )


def _op(name, *parts):
    return st.tuples(*parts).map(lambda a: Op(name, a))


def _opt(strategy):
    return st.none() | strategy


_SHAPES = st.sampled_from(["pos"] * 8 + ["kw", "none", "dup", "badkw"])
_LOOP0 = ["stop", "is_closed", "is_running", "get_debug", "stop", "is_running", "close"]
_DEBUG_VALUES = ["True", "False", "0", "1", "'x'", "''", "None"]
_HANDLER_KINDS = ["rec"] * 4 + ["raise", "raise_ki", "none", "0", "'x'"]
_CONTEXT_SPECS = [
    "msg",
    "msg_exc",
    "exc_only",
    "empty",
    "bad_types",
    "with_handle",
    "with_task",
    "None",
    "0",
    "[]",
    "'x'",
]
_EXECUTORS = ["None", "None", "tpe", "tpe_shut", "not_tpe", "0", "object()"]
_JOBS = ["ret", "ret", "raise", "corofunc", "None", "0"]
_HOSTS = [
    "'127.0.0.1'",
    "'::1'",
    "'0.0.0.0'",
    "'::ffff:127.0.0.1'",
    "None",
    "b'127.0.0.1'",
    "0",
    "object()",
]
_PORTS = [
    "0",
    "80",
    "'80'",
    "'http'",
    "-1",
    "65536",
    "2**63",
    "None",
    "b'80'",
    "1.5",
    "object()",
    "IndexLike()",
]
_GAI_KW = {
    "family": ["0", "AF_INET", "AF_INET6", "AF_UNIX", "-1", "'x'", "2**63"],
    "type": ["0", "SOCK_STREAM", "SOCK_DGRAM", "-1", "'x'"],
    "proto": ["0", "6", "-1"],
    "flags": ["0", "AI_NUMERICHOST", "AI_PASSIVE", "-1", "2**40", "'x'"],
}
_SOCK_ARGS = {
    "sock_recv": [
        "1",
        "100",
        "100",
        "0",
        "-1",
        "2**40",
        "2**63",
        "'x'",
        "None",
        "IndexLike()",
        "1.5",
    ],
    "sock_sendall": ["b'x'", "b''", "bytearray", "memoryview", "'x'", "None", "0", "[b'x']"],
    "sock_connect": ["'/nonexistent/fuzz'", "None", "0", "()", "'x'"],
    "sock_accept": ["None"],
}
_SOCK_FDS = st.one_of(
    st.builds(Fd, st.just("obj"), st.sampled_from(SOCKET_SLOTS)),
    st.builds(Fd, st.just("obj"), st.sampled_from(SOCKET_SLOTS)),
    st.builds(Fd, st.just("obj"), _SLOTS),
    st.builds(Fd, st.just("val"), st.sampled_from(["None", "0", "object()"])),
)
_TRANSPORT_METHODS = {
    "write": [["b'x'"], ["b''"], ["bytearray"], ["memoryview"], ["'x'"], ["None"], ["0"]],
    "writelines": [["[b'x']"], ["[]"], ["'x'"], ["None"]],
    "close": [[]],
    "abort": [[]],
    "is_closing": [[]],
    "pause_reading": [[]],
    "resume_reading": [[]],
    "is_reading": [[]],
    "write_eof": [[]],
    "can_write_eof": [[]],
    "get_write_buffer_size": [[]],
    "get_extra_info": [["'peername'"], ["'sockname'"], ["'socket'"], ["'x'"], ["[]"]],
    "set_write_buffer_limits": [
        [],
        ["None", "None"],
        ["0", "0"],
        ["1", "-1"],
        ["-1", "None"],
        ["'x'", "None"],
        ["2**63", "None"],
        ["1", "3"],
    ],
}
_FUT_METHODS = {
    "set_result": ["1", "None", "object()"],
    "set_exception": [
        "ValueError()",
        "ValueError",
        "StopIteration()",
        "KeyboardInterrupt()",
        "CancelledError()",
        "0",
        "None",
    ],
    "cancel": [None, "'x'", "0"],
    "result": [None],
    "exception": [None],
    "done": [None],
    "cancelled": [None],
    "remove_done_callback": ["0"],
}
_TASK_FACTORIES = ["get", "get", "none", "task", "junkret", "raise", "0", "'x'"]
_THREAD_OPS = {
    "call_soon",
    "call_soon_threadsafe",
    "call_later",
    "call_at",
    "handle",
    "time",
    "loop0",
    "set_debug",
    "create_future",
    "create_task",
    "run_until_complete",
    "run_once",
    "fd_watch",
    "call_exception_handler",
    "run_in_executor",
    "fut",
    "signal",
}


def _transport_calls():
    pairs = [(m, a) for m, options in _TRANSPORT_METHODS.items() for a in options]
    return st.sampled_from(pairs)


def _fut_calls(depth):
    pairs = [(m, a) for m, options in _FUT_METHODS.items() for a in options]
    plain = st.sampled_from(pairs)
    done_cb = st.tuples(
        st.just("add_done_callback"),
        st.tuples(callbacks(depth), _opt(vals(CONTEXTS))),
    )
    return st.one_of(plain, plain, done_cb)


@functools.cache
def ops(depth: int, where: str):
    """One call; ``where`` is ``top`` (the program itself), ``nested``
    (inside a callback, a coroutine or a handler: no 1 ms delays) or
    ``thread`` (made from another thread)."""
    top = where == "top"
    delays = DELAY_NOW + DELAY_NEVER + DELAY_JUNK + (DELAY_TINY if top else [])
    whens = DELAY_NOW + DELAY_NEVER + DELAY_JUNK + WHEN_EXTRA + (WHEN_TINY if top else [])
    cb = callbacks(depth)
    ctxs = _opt(vals(CONTEXTS))
    table = {
        "call_soon": (6, _op("call_soon", cb, _args(), ctxs, _SHAPES)),
        "call_soon_threadsafe": (
            3,
            _op("call_soon_threadsafe", cb, _args(), ctxs, _SHAPES),
        ),
        "call_later": (5, _op("call_later", vals(delays), cb, _args(), ctxs, _SHAPES)),
        "call_at": (3, _op("call_at", vals(whens), cb, _args(), ctxs, _SHAPES)),
        "handle": (
            3,
            _op(
                "handle",
                st.builds(Ref, st.just("handle"), st.integers(0, 5)),
                st.sampled_from(["cancel", "cancel", "cancelled", "when"]),
            ),
        ),
        "time": (1, _op("time")),
        "loop0": (3, _op("loop0", st.sampled_from(_LOOP0))),
        "set_debug": (1, _op("set_debug", vals(_DEBUG_VALUES))),
        "create_future": (2, _op("create_future")),
        "create_task": (
            3,
            _op(
                "create_task",
                awaitables(depth),
                _opt(vals(["'x'", "0", "object()", "None"])),
                _opt(vals(CONTEXTS)),
            ),
        ),
        "run_until_complete": (3, _op("run_until_complete", awaitables(depth))),
        "run_once": (6 if top else 1, _op("run_once")),
        "run_forever": (1, _op("run_forever")),
        "other_loop_run": (1, _op("other_loop_run")),
        "fd_watch": (
            5,
            _op(
                "fd_watch",
                st.sampled_from(["add_reader", "add_writer", "remove_reader", "remove_writer"]),
                fds(),
                cb,
                _args(),
            ),
        ),
        "slot": (
            3,
            _op(
                "slot",
                st.sampled_from(["close", "reopen", "feed", "feed", "drain", "setblocking"]),
                _SLOTS,
                st.sampled_from([0, 1, 100]),
            ),
        ),
        "make_transport": (
            1,
            _op(
                "make_transport",
                st.one_of(
                    st.builds(Fd, st.just("obj"), st.sampled_from(SOCKET_SLOTS)),
                    st.builds(Fd, st.just("obj"), _SLOTS),
                    st.builds(Fd, st.just("val"), st.sampled_from(["None", "0"])),
                ),
                TAGS,
                st.sampled_from(["rec", "rec", "raise_data", "raise_made", "keep_open"]),
            ),
        ),
        "transport": (
            3,
            _op(
                "transport",
                st.builds(Ref, st.just("transport"), st.integers(0, 3)),
                _transport_calls(),
            ),
        ),
        "exc_handler": (2, _op("exc_handler", st.sampled_from(_HANDLER_KINDS))),
        "get_exception_handler": (1, _op("get_exception_handler")),
        "call_exception_handler": (
            2,
            _op("call_exception_handler", st.sampled_from(_CONTEXT_SPECS)),
        ),
        "default_exception_handler": (
            1,
            _op("default_exception_handler", st.sampled_from(_CONTEXT_SPECS)),
        ),
        "set_default_executor": (1, _op("set_default_executor", st.sampled_from(_EXECUTORS))),
        "run_in_executor": (
            2,
            _op(
                "run_in_executor",
                st.sampled_from(_EXECUTORS),
                st.sampled_from(_JOBS),
                st.lists(vals(["0", "'x'"]), max_size=1).map(tuple),
            ),
        ),
        "coro_method": (
            1,
            _op(
                "coro_method",
                st.sampled_from(["shutdown_asyncgens", "shutdown_default_executor"]),
            ),
        ),
        "agen": (1, _op("agen", st.sampled_from(["start", "start", "drop"]), TAGS)),
        "getaddrinfo": (
            1,
            _op(
                "getaddrinfo",
                vals(_HOSTS),
                vals(_PORTS),
                st.lists(
                    st.sampled_from(sorted(_GAI_KW)).flatmap(
                        lambda k: st.tuples(st.just(k), vals(_GAI_KW[k]))
                    ),
                    max_size=2,
                    unique_by=lambda kv: kv[0],
                ).map(tuple),
            ),
        ),
        "getnameinfo": (
            1,
            _op(
                "getnameinfo",
                st.sampled_from(["v4", "v6", "bad", "None", "0", "'x'"]),
                vals(["NI_NUMERIC", "NI_NUMERIC_DGRAM", "'x'", "2**63"]),
            ),
        ),
        "sock": (
            3 if top else 1,
            st.sampled_from(sorted(_SOCK_ARGS) + ["sock_recv", "sock_recv_into"]).flatmap(
                lambda m: _op(
                    "sock",
                    st.just(m),
                    _SOCK_FDS,
                    st.sampled_from([1, 100, 0]) if m == "sock_recv_into" else vals(_SOCK_ARGS[m]),
                )
            ),
        ),
        "signal": (
            2,
            _op(
                "signal",
                st.sampled_from(
                    ["add_signal_handler", "add_signal_handler", "remove_signal_handler"]
                ),
                vals(SIGNALS),
                cb,
                _args(),
            ),
        ),
        "kill": (1, _op("kill", st.sampled_from(["SIGUSR1", "SIGUSR2", "SIGWINCH"]))),
        "fut": (
            4,
            st.tuples(
                st.builds(Ref, st.just("fut_or_task"), st.integers(0, 5)), _fut_calls(depth)
            ).map(lambda a: Op("fut", (a[0], a[1][0], a[1][1]))),
        ),
        "task_factory": (1, _op("task_factory", st.sampled_from(_TASK_FACTORIES))),
    }
    if where == "thread":
        table = {k: v for k, v in table.items() if k in _THREAD_OPS}
    if where != "top":
        for k in ("slot", "make_transport", "kill"):
            table.pop(k, None)
    if where != "thread" and depth < MAX_DEPTH:
        table["in_thread"] = (2, _op("in_thread", ops(depth + 1, "thread")))
    options = []
    for weight, strategy in table.values():
        options += [strategy] * weight
    return st.one_of(options)


def programs(min_ops=1, max_ops=30):
    return st.lists(ops(0, "top"), min_size=min_ops, max_size=max_ops)


# --------------------------------------------------------------------------
# shrinking (hypothesis' shrinker is slow on these programs: each example
# runs two loops)
# --------------------------------------------------------------------------


def _simpler_values(x):
    """Simpler variants of one argument of an Op."""
    if isinstance(x, Op):
        yield from _simpler_ops(x)
    elif isinstance(x, (Cb, Aw)) and x.sub:
        yield dataclasses.replace(x, kind="rec" if isinstance(x, Cb) else "ret", sub=())
        for i in range(len(x.sub)):
            yield dataclasses.replace(x, sub=x.sub[:i] + x.sub[i + 1 :])
        for i, o in enumerate(x.sub):
            for o2 in _simpler_ops(o):
                yield dataclasses.replace(x, sub=x.sub[:i] + (o2,) + x.sub[i + 1 :])
    elif isinstance(x, Cb) and x.kind not in ("rec", "val"):
        yield Cb("rec", x.tag)
    elif isinstance(x, tuple) and x and not isinstance(x[0], str):
        for i in range(len(x)):
            yield x[:i] + x[i + 1 :]
    elif isinstance(x, V) and x.name not in ("None", "0"):
        pass


def _simpler_ops(o: Op):
    for i, a in enumerate(o.args):
        if o.name in ("call_soon", "call_soon_threadsafe", "call_later", "call_at"):
            if a in ("kw", "none", "dup", "badkw"):
                yield Op(o.name, o.args[:i] + ("pos",) + o.args[i + 1 :])
            if isinstance(a, V) and a.name in CONTEXTS and i == len(o.args) - 2:
                yield Op(o.name, o.args[:i] + (None,) + o.args[i + 1 :])
        for b in _simpler_values(a):
            yield Op(o.name, o.args[:i] + (b,) + o.args[i + 1 :])


def shrink(program, fails, budget=180.0):
    """A small program for which ``fails(program)`` still holds (greedy:
    drop ops, then simplify them), within ``budget`` seconds."""
    prog = list(program)
    deadline = time.monotonic() + budget
    changed = True
    while changed and time.monotonic() < deadline:
        changed = False
        # drop chunks, largest first
        size = max(len(prog) // 2, 1)
        while size >= 1 and time.monotonic() < deadline:
            i = 0
            while i < len(prog) and time.monotonic() < deadline:
                cand = prog[:i] + prog[i + size :]
                if cand and fails(cand):
                    prog = cand
                    changed = True
                else:
                    i += size
            size //= 2
        # an in_thread op -> its call, made directly
        for i, o in enumerate(prog):
            if o.name == "in_thread":
                cand = prog[:i] + [o.args[0]] + prog[i + 1 :]
                if fails(cand):
                    prog = cand
                    changed = True
        # simplify each op
        i = 0
        while i < len(prog) and time.monotonic() < deadline:
            for o2 in _simpler_ops(prog[i]):
                cand = prog[:i] + [o2] + prog[i + 1 :]
                if fails(cand):
                    prog = cand
                    changed = True
                    break
            else:
                i += 1
    return prog


def mismatches(program) -> bool:
    try:
        compare(program, retries=1)
    except Mismatch:
        return True
    return False
