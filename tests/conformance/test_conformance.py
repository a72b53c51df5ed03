"""The conformance gate: run CPython's test_asyncio modules on ferroloop and on
stock asyncio (in this same session, never from a stale file) and fail for each
module where a test that passes on asyncio does not pass on ferroloop, unless
exclusions.toml lists it, or where an excluded test passes again.

    pytest tests/conformance                     # the gate
    pytest tests -m "not conformance"            # everything else
    CONFORMANCE_LOOP=uvloop pytest tests/conformance   # the gate for another loop
"""

import importlib
import os

import pytest

from . import run

LOOP = os.environ.get("CONFORMANCE_LOOP", "ferroloop")
BASELINE = "asyncio"
SHOWN = 30  # failing test ids listed per module

pytestmark = [pytest.mark.conformance, pytest.mark.timeout(3600)]


@pytest.fixture(scope="session")
def report(request):
    pytest.importorskip("test.test_asyncio", reason="CPython's test suite is not installed")
    # A real import, as in tests/conftest.py: a broken or missing build fails the gate.
    importlib.import_module(LOOP)
    # The baseline is computed here, in this session.
    results = run.run_all([BASELINE, LOOP], run.available_modules())
    exclusions = run.load_exclusions(LOOP)
    report = run.retry_regressions(results, run.compare, LOOP, BASELINE, exclusions)
    run.write_results(results, report, "pytest tests/conformance", directory=run.OUT_DIR)
    request.config._conformance_summary = (
        f"{LOOP} vs {BASELINE} (full record: {run.OUT_DIR / 'results.md'})\n"
        + run.table(report)
        + "\n"
        + run.problems_text(report, limit=SHOWN)
    )
    return report


@pytest.mark.parametrize("module", run.available_modules())
def test_module_conforms(report, module):
    regressions = [r for r in report["regressions"] if r[0].split(".")[0] == module]
    stale = [s for s in report["stale"] if s[0].split(".")[0] == module]
    lines = [
        f"{test_id}: {outcome}: {(detail.strip().splitlines() or [''])[-1]}"
        for test_id, outcome, detail in regressions[:SHOWN]
    ]
    if len(regressions) > SHOWN:
        lines.append(f"... and {len(regressions) - SHOWN} more")
    lines += [
        f"STALE exclusion {test_id} ({why}): remove it from exclusions.toml [{LOOP}]"
        for test_id, why, _ in stale
    ]
    if lines:
        pytest.fail(
            f"{module}: {len(regressions)} tests pass on {BASELINE} but not on {LOOP}, "
            f"{len(stale)} stale exclusions (fix {LOOP} or add the test with a reason "
            f"to exclusions.toml; logs in {run.OUT_DIR}):\n" + "\n".join(lines),
            pytrace=False,
        )
