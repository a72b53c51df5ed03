"""ferroloop.pytest_plugin on a sample project (tests/plugin_sample).

The sample holds tests in every common style (pytest-asyncio, anyio on the
asyncio backend, unittest.IsolatedAsyncioTestCase, asyncio.run/Runner and
new_event_loop inside plain tests), each asserting that its running loop is a
ferroloop loop.  It is run in a subprocess with its own rootdir, ini file and
conftest, so this suite's conftest does not interfere.  Not parametrized:
this is about ferroloop's plugin by nature.
"""

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

SAMPLE = Path(__file__).resolve().parent / "plugin_sample"
EXPECTED_TESTS = {
    "test_marked_coroutine",
    "test_async_fixture",
    "test_anyio_on_asyncio_backend",
    "test_isolated_asyncio_test_case",
    "test_run_inside_plain_test",
    "test_runner_inside_plain_test",
    "test_new_event_loop_inside_plain_test",
}


def _run_sample(tmp_path, *plugin_args, autoload=True):
    report = tmp_path / "report.xml"
    env = dict(os.environ)
    for key in ("PYTEST_ADDOPTS", "PYTHONASYNCIODEBUG", "PYTEST_PLUGINS"):
        env.pop(key, None)
    if not autoload:
        env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        *plugin_args,
        "-p",
        "no:cacheprovider",
        "-c",
        str(SAMPLE / "pytest.ini"),
        "--rootdir",
        str(SAMPLE),
        "--confcutdir",
        str(SAMPLE),
        f"--junitxml={report}",
        "-q",
        str(SAMPLE),
    ]
    proc = subprocess.run(
        cmd,
        cwd=str(SAMPLE),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    outcomes = {}
    if report.exists():
        for case in ET.parse(report).getroot().iter("testcase"):
            kinds = {child.tag for child in case} & {"failure", "error", "skipped"}
            outcomes[case.get("name")] = kinds.pop() if kinds else "passed"
    return proc, outcomes


def test_sample_passes_with_plugin(tmp_path):
    pytest.importorskip("pytest_asyncio")
    pytest.importorskip("anyio")
    proc, outcomes = _run_sample(tmp_path, "-p", "ferroloop.pytest_plugin")
    details = proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, details
    assert set(outcomes) == EXPECTED_TESTS, details
    assert set(outcomes.values()) == {"passed"}, outcomes


def test_sample_fails_without_plugin(tmp_path):
    # Control run: without the plugin every sample test sees asyncio's loop
    # and must fail, which shows the sample's assertions are real.
    pytest.importorskip("pytest_asyncio")
    pytest.importorskip("anyio")
    proc, outcomes = _run_sample(
        tmp_path,
        "-p",
        "pytest_asyncio.plugin",
        "-p",
        "anyio.pytest_plugin",
        autoload=False,
    )
    details = proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.returncode == 1, details
    assert set(outcomes) == EXPECTED_TESTS, details
    assert set(outcomes.values()) == {"failure"}, outcomes
