"""Property-based API fuzzer: random programs of loop calls with random and
hostile arguments (wrong types, huge / negative / inf / nan delays, closed
loops, closed and stale fds, fds owned by transports, reentrant calls from
callbacks, calls from other threads) run on asyncio's loop and on ferroloop;
both must give the same outcome class for every call (the type of the return
value, or the exception type), run the same callbacks in the same order, make
the same exception-handler calls, leave the same fds, and neither may crash
or hang.

The engine (operations, argument pools, the per-loop interpreter and the
comparison) is ``tests/fuzz_engine.py``; this is the short fixed-seed run
(hypothesis ``derandomize=True``). The long run (>= 10^5 calls) is
``python3 benches/fuzz.py``. Known ferroloop defects are left out of the
generated cases by ``fuzz_engine.KNOWN_DEFECTS`` (each with a repro).
"""

import warnings

import pytest
from fuzz_engine import (
    KNOWN_DEFECTS,
    OPS,
    Mismatch,
    compare,
    format_program,
    mismatches,
    programs,
    shrink,
)
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import HypothesisWarning

# The nested strategies' reprs are large; hypothesis warns when it builds one.
warnings.filterwarnings("ignore", category=HypothesisWarning)

# ~0.1 s per example (each runs the program on both loops).
EXAMPLES = 300

FIXED_SEED = settings(
    derandomize=True,
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    # No hypothesis shrinking (each step reruns two loops): a mismatch is
    # shrunk by fuzz_engine.shrink and reported with its smallest program.
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)


def check(program):
    try:
        compare(program)
    except Mismatch as first:
        small = shrink(program, mismatches, budget=20.0)
        try:
            compare(small, retries=0)
        except Mismatch as e:
            pytest.fail(f"{e}\n\n(shrunk from {len(program)} ops)", pytrace=False)
        pytest.fail(f"{first}\n\n(not reproduced when shrunk)", pytrace=False)


@pytest.mark.timeout(120, method="thread")
@FIXED_SEED
@given(programs(min_ops=5, max_ops=30))
def test_same_outcomes_as_asyncio(program):
    check(program)


def test_known_defects_are_wired():
    """Every KNOWN_DEFECTS entry is consulted by the engine (a stale entry
    would exclude nothing and hide nothing: remove it)."""
    import inspect

    import fuzz_engine

    source = inspect.getsource(fuzz_engine)
    for name in KNOWN_DEFECTS:
        assert source.count(f'"{name}"') >= 2, name


def test_programs_print_as_python():
    """A failing program is printed as code that rebuilds it."""
    import fuzz_engine

    program = [
        fuzz_engine.O("time"),
        fuzz_engine.O(
            "call_later", fuzz_engine.V("inf"), fuzz_engine.Cb("rec", 1), (), None, "pos"
        ),
    ]
    text = format_program(program)
    assert eval(text, vars(fuzz_engine)) == program
    assert set(OPS) >= {op.name for op in program}
