"""Child process: run one CPython test_asyncio module with a loop policy.

Started by run.py, one process per (loop, module). Before every test it
installs a fresh counting subclass of the loop's policy, then counts the loops
that policy creates. Events go to a JSON-lines file, flushed as they happen,
so the parent still knows which test was running if this process hangs or dies.

    python3 _child.py POLICY LOOP_CLASS MODULE EVENTS_FILE [SELECT_FILE]

POLICY and LOOP_CLASS are "module:attr". SELECT_FILE is JSON {"skip": [ids]}
or {"only": [ids]}, with ids as in ``test_tasks.Class.test_name``.
"""

import asyncio
import faulthandler
import functools
import importlib
import json
import sys
import time
import traceback
import unittest
from asyncio import base_events

PACKAGE = "test.test_asyncio."


def load(spec):
    module, attr = spec.split(":")
    return getattr(importlib.import_module(module), attr)


def short_id(test):
    return test.id().removeprefix(PACKAGE)


def flatten(suite):
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from flatten(item)
        else:
            yield item


class Counter:
    """Loops created during the current test."""

    def __init__(self, loop_cls):
        self.loop_cls = loop_cls
        self.reset()

    def reset(self):
        # Only ids and flags: holding the loops would change GC behaviour.
        self.from_policy = []  # (id, is native) of loops the policy returned
        self.python = []  # ids of every asyncio.BaseEventLoop constructed

    def add_policy_loop(self, loop):
        self.from_policy.append((id(loop), isinstance(loop, self.loop_cls)))

    def counts(self):
        """(native loops, other Python loops, policy loops of a wrong type)"""
        native = sum(flag for _, flag in self.from_policy)
        policy_ids = {i for i, _ in self.from_policy}
        other = sum(i not in policy_ids for i in self.python)
        return native, other, len(self.from_policy) - native


def counting_policy(base, counter):
    class CountingPolicy(base):
        def new_event_loop(self):
            loop = super().new_event_loop()
            counter.add_policy_loop(loop)
            return loop

    CountingPolicy.__name__ = CountingPolicy.__qualname__ = base.__name__
    return CountingPolicy


def count_python_loops(counter):
    original = base_events.BaseEventLoop.__init__

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        counter.python.append(id(self))
        original(self, *args, **kwargs)

    base_events.BaseEventLoop.__init__ = __init__


def install_harness_shims():
    """Let test_asyncio's own harness clean up loops without BaseEventLoop internals.

    utils.TestCase.close_loop() reads ``loop._default_executor`` (a private
    BaseEventLoop attribute) for every loop a test registers with
    set_event_loop(); on a loop without it the *cleanup* errors, not the test.
    Such loops get the public equivalent; all others keep the original. The
    rest of the original, which does not touch the loop (on 3.11: join the
    policy's ThreadedChildWatcher threads, i.e. wait for the test's
    subprocesses), still runs: it gets a stand-in for the closed loop.
    """
    from test.test_asyncio import utils

    original = utils.TestCase.close_loop

    class ClosedLoop:
        _default_executor = None

        def is_closed(self):
            return True

        def close(self):
            pass

    def close_loop(loop):
        if hasattr(loop, "_default_executor"):
            return original(loop)
        if not loop.is_closed():
            loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
        original(ClosedLoop())

    utils.TestCase.close_loop = staticmethod(close_loop)


def adapt_test_runners(module, loop_factory):
    """test_runners: its loops come from the loop under test, not a mocked BaseEventLoop.

    BaseTest.setUp installs TestPolicy(self.new_loop), whose new_event_loop()
    (used by asyncio.run / asyncio.Runner) returns ``self.new_loop()``; stock
    new_loop() is ``asyncio.BaseEventLoop()`` with mocked ``_selector``,
    ``_process_events`` and ``_write_to_self``. Here new_loop() returns a loop
    from the factory and keeps what the tests check: tearDown asserts
    ``loop.shutdown_ag_run``, set by a replacement ``shutdown_asyncgens``
    (which, unlike CPython's, also runs the loop's real one).
    """

    def new_loop(self):
        loop = loop_factory()
        loop.shutdown_ag_run = False
        real_shutdown_asyncgens = loop.shutdown_asyncgens

        async def shutdown_asyncgens():
            await real_shutdown_asyncgens()
            loop.shutdown_ag_run = True

        loop.shutdown_asyncgens = shutdown_asyncgens
        return loop

    module.BaseTest.new_loop = new_loop


def adapt_test_pep492(module, loop_factory):
    """test_pep492: ``self.loop`` comes from the loop under test.

    Stock BaseTest.setUp builds ``asyncio.BaseEventLoop()`` with a mocked
    ``_selector`` and ``_process_events``; here it is a loop from the factory,
    registered with set_event_loop() as before (closed in cleanup).
    """
    base = module.BaseTest

    def setUp(self):
        super(base, self).setUp()  # test_utils.TestCase.setUp
        self.loop = loop_factory()
        self.set_event_loop(self.loop)

    base.setUp = setUp


def adapt_loop_mixin(base_name, hook="create_event_loop", extra_mixins=()):
    """Modules whose tests are a mixin plus one TestCase per selector.

    test_sock_lowlevel (``BaseSockTestsMixin``), test_events
    (``UnixEventLoopTestsMixin``), test_sendfile (``SendfileTestsBase``) and
    the like define ``KqueueEventLoopTests``, ``EPollEventLoopTests``,
    ``PollEventLoopTests`` and ``SelectEventLoopTests``, each overriding the
    loop hook (``create_event_loop()``, or ``new_loop()`` for the functional
    tests of test_server and test_buffered_proto, whose base is the selector
    TestCase itself) with one selector loop. Those classes are replaced by
    one ``LoopTests`` whose hook returns a loop from the factory (asyncio's
    own loop for the baseline), so every test runs once per loop under test,
    under the same id on both sides.

    ``extra_mixins`` names further mixins of the module that CPython's
    per-selector classes also inherit, in their order after the base: test_events'
    ``EPollEventLoopTests`` is ``UnixEventLoopTestsMixin + SubprocessTestsMixin
    + test_utils.TestCase``, so its ``LoopTests`` needs ``SubprocessTestsMixin``
    too (a mixin alone is not a TestCase and is not collected by itself).
    """

    def adapt(module, loop_factory):
        from test.test_asyncio import utils as test_utils

        base = getattr(module, base_name)
        for name, obj in list(vars(module).items()):
            is_variant = isinstance(obj, type) and issubclass(obj, base)
            if is_variant and (obj is not base or issubclass(obj, unittest.TestCase)):
                delattr(module, name)
        bases = (base, *(getattr(module, name) for name in extra_mixins))
        if not issubclass(base, unittest.TestCase):
            bases += (test_utils.TestCase,)
        loop_tests = type("LoopTests", bases, {hook: lambda self: loop_factory()})
        loop_tests.__module__ = module.__name__
        module.LoopTests = loop_tests

    return adapt


# Per-module adapters, applied right after the import on every loop (the
# asyncio baseline included, so both columns run the same adapted tests).
# Each gets the module and a loop factory: a counting policy instance's
# new_event_loop(), so every loop it makes is counted. For asyncio that is
# DefaultEventLoopPolicy().new_event_loop(), i.e. what asyncio.new_event_loop()
# returns; it cannot be asyncio.new_event_loop() itself, since test_runners has
# its own TestPolicy installed then, whose new_event_loop() calls the factory.
ADAPTERS = {
    "test_runners": adapt_test_runners,
    "test_pep492": adapt_test_pep492,
    "test_sock_lowlevel": adapt_loop_mixin("BaseSockTestsMixin"),
    "test_events": adapt_loop_mixin(
        "UnixEventLoopTestsMixin", extra_mixins=("SubprocessTestsMixin",)
    ),
    "test_sendfile": adapt_loop_mixin("SendfileTestsBase"),
    "test_server": adapt_loop_mixin("SelectorStartServerTests", hook="new_loop"),
    "test_buffered_proto": adapt_loop_mixin("BufferedProtocolSelectorTests", hook="new_loop"),
    "test_sslproto": adapt_loop_mixin("BaseStartTLS", hook="new_loop"),
}


def brief(err, limit=1500):
    text = "".join(traceback.format_exception(*err))
    return text if len(text) <= limit else "...\n" + text[-limit:]


class Recorder(unittest.TestResult):
    def __init__(self, emit, policy_cls, counter):
        super().__init__()
        self.emit = emit
        self.policy_cls = policy_cls
        self.counter = counter
        self.started = set()
        self.fixture_problems = []
        # NOTE: 3.12.1's TestCase.run reports a skipped class's tests with
        # addSkip and stopTest but no startTest: a test's state starts here
        # and is reset after each stopTest.
        self._reset_test()

    def _reset_test(self):
        self.outcome, self.detail, self.t0 = None, "", time.monotonic()

    def startTest(self, test):
        super().startTest(test)
        # A fresh policy per test: tearDown / tearDownModule reset it to None.
        asyncio.set_event_loop_policy(self.policy_cls())
        self.counter.reset()
        self._reset_test()
        self.started.add(short_id(test))
        self.emit(event="start", id=short_id(test))

    def _set(self, outcome, detail=""):
        if self.outcome in (None, "pass"):
            self.outcome, self.detail = outcome, detail

    def addSuccess(self, test):
        self._set("pass")

    def addFailure(self, test, err):
        self._set("fail", brief(err))

    def addError(self, test, err):
        if isinstance(test, unittest.TestCase):
            self._set("error", brief(err))
        else:  # setUpClass / setUpModule / tearDown* failure (_ErrorHolder)
            self.fixture_problems.append(("error", f"{test}: {brief(err)}"))

    def addSkip(self, test, reason):
        if isinstance(test, unittest.TestCase):
            self._set("skip", reason)
        else:
            self.fixture_problems.append(("skip", f"{test}: {reason}"))

    def addExpectedFailure(self, test, err):
        self._set("pass", "expected failure")

    def addUnexpectedSuccess(self, test):
        self._set("fail", "unexpected success")

    def addSubTest(self, test, subtest, err):
        if err is not None:
            kind = "fail" if issubclass(err[0], test.failureException) else "error"
            self._set(kind, f"{subtest}: {brief(err)}")

    def stopTest(self, test):
        native, other, foreign = self.counter.counts()
        self.emit(
            event="end",
            id=short_id(test),
            outcome=self.outcome or "error",
            detail=self.detail or ("" if self.outcome else "no outcome reported"),
            native_loops=native,
            other_loops=other,
            foreign_loops=foreign,
            time=round(time.monotonic() - self.t0, 3),
        )
        self.counter.reset()
        self._reset_test()
        super().stopTest(test)


def main(policy_spec, loop_spec, module, events_path, select_path=None):
    faulthandler.enable()
    with open(events_path, "a", encoding="utf-8") as out:

        def emit(**event):
            out.write(json.dumps(event) + "\n")
            out.flush()

        run_module(policy_spec, loop_spec, module, emit, select_path)


def run_module(policy_spec, loop_spec, module, emit, select_path):
    counter = Counter(load(loop_spec))
    policy_cls = counting_policy(load(policy_spec), counter)
    count_python_loops(counter)
    install_harness_shims()
    asyncio.set_event_loop_policy(policy_cls())  # also for module/class setup

    mod = importlib.import_module(PACKAGE + module)  # an ImportError ends this process
    if module in ADAPTERS:
        ADAPTERS[module](mod, policy_cls().new_event_loop)
    tests = list(flatten(unittest.defaultTestLoader.loadTestsFromName(PACKAGE + module)))
    emit(event="collected", ids=[short_id(t) for t in tests])
    if select_path:
        with open(select_path, encoding="utf-8") as f:
            select = json.load(f)
        if "only" in select:
            only = set(select["only"])
            tests = [t for t in tests if short_id(t) in only]
        skip = set(select.get("skip", ()))
        tests = [t for t in tests if short_id(t) not in skip]

    recorder = Recorder(emit, policy_cls, counter)
    unittest.TestSuite(tests).run(recorder)

    # Tests that never started: a class or module fixture failed or skipped.
    problems = recorder.fixture_problems
    for test in tests:
        if short_id(test) not in recorder.started:
            kind, detail = problems[-1] if problems else ("error", "not run")
            emit(
                event="end",
                id=short_id(test),
                outcome=kind,
                detail=detail,
                native_loops=0,
                other_loops=0,
                foreign_loops=0,
                time=0.0,
            )
    emit(event="done")


if __name__ == "__main__":
    main(*sys.argv[1:])
