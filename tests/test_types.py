"""Type information: ``mypy --strict`` on a sample program using ferroloop's
public API (tests/typing/sample.py), and ``mypy.stubtest`` of the package and
its native module's stub (python/ferroloop/_ferroloop.pyi) against the
installed ferroloop.

Both run as subprocesses of this interpreter, on the installed package (as
a user's type checker sees it: the wheel's .py files, the .pyi and
py.typed).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mypy", reason="mypy is in tests/requirements.txt")

TYPING_DIR = Path(__file__).parent / "typing"


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    # Nothing from the checkout may shadow the installed package.
    env.pop("MYPYPATH", None)
    env.pop("PYTHONPATH", None)
    return subprocess.run(
        [sys.executable, "-m", *args],
        check=False,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_sample_program_is_mypy_strict_clean(tmp_path: Path) -> None:
    result = _run(
        [
            "mypy",
            "--strict",
            "--cache-dir",
            str(tmp_path / "mypy-cache"),
            "--python-executable",
            sys.executable,
            str(TYPING_DIR / "sample.py"),
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, f"mypy --strict failed:\n{result.stdout}{result.stderr}"
    assert "Success: no issues found in 1 source file" in result.stdout, result.stdout


def test_stubtest_package_and_native_stub(tmp_path: Path) -> None:
    # `stubtest ferroloop` checks every module of the package, the native
    # ferroloop._ferroloop (its .pyi) included; naming ferroloop._ferroloop
    # as well makes mypy report a duplicate module.
    allowlists = ["stubtest-allowlist.txt"]
    if sys.version_info >= (3, 11):  # the native TLS path's classes
        allowlists.append("stubtest-allowlist-py311.txt")
    args = ["mypy.stubtest", "ferroloop"]
    for name in allowlists:
        args += ["--allowlist", str(TYPING_DIR / name)]
    result = _run(args, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"stubtest failed:\n{output}"
    # The native module was among the modules checked.
    import ferroloop

    n_modules = len(list(Path(ferroloop.__file__).parent.glob("*.py"))) + 1
    assert f"Success: no issues found in {n_modules} modules" in output, output
