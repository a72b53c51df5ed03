"""The soak of issue #9 in its 60-second version: benches/soak.py with the
same workloads and the same acceptance checks as the 30-minute run (RSS
within 5 % of its post-warm-up baseline, fds, threads and live tasks equal
at every quiescent sample, no exception-handler call, every byte echoed
checked), on each loop of the suite. The pass/fail is the script's exit
status; nothing here depends on how fast the machine is."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import child_env

SOAK = Path(__file__).resolve().parent.parent / "benches" / "soak.py"
DURATION, INTERVAL, WARMUP = 60, 5, 20


@pytest.mark.soak
@pytest.mark.timeout(180, method="thread")
def test_soak_60s(loop_name, tmp_path):
    out = tmp_path / "soak.json"
    cmd = [sys.executable, str(SOAK), "--loop", loop_name, "--duration", str(DURATION)]
    cmd += ["--interval", str(INTERVAL), "--warmup", str(WARMUP), "--json", str(out)]
    try:
        p = subprocess.run(
            cmd, check=False, env=child_env(loop_name), capture_output=True, text=True, timeout=170
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"soak.py did not finish within 170 s:\n{exc.stdout}\n{exc.stderr}")
    report = f"{p.stdout}\n--- stderr:\n{p.stderr}"
    assert p.returncode == 0, report

    doc = json.loads(out.read_text())
    samples = doc["results"]
    assert len(samples) == DURATION // INTERVAL, report
    post = [s for s in samples if s["post_warmup"]]
    assert len(post) == (DURATION - WARMUP) // INTERVAL + 1, report
    for s in samples:
        for key in ("rss", "fds", "threads", "os_threads", "tasks", "ops"):
            assert s[key], (key, s)
        assert (s["loop_stats"] is not None) == (loop_name == "ferroloop"), s
    assert doc["passed"] and all(c["passed"] for c in doc["checks"]), report
    assert doc["handler_count"] == 0 and doc["failure_count"] == 0, report
    assert doc["bytes_checked"] > 0, report
    assert (
        doc["loop_class"]
        == {
            "asyncio": "asyncio.unix_events._UnixSelectorEventLoop",
            "ferroloop": "ferroloop._loop.Loop",
        }[loop_name]
    )
