"""The long run of the loop API fuzzer (tests/test_fuzz.py is the short one).

Runs hypothesis-generated programs of loop calls with hostile arguments on
asyncio's loop and on ferroloop until --calls calls were made, comparing the
outcome of every call; prints the calls made, the calls per operation and the
exception classes seen. On a mismatch it shrinks the program and prints the
smallest one that still differs, and exits 1.

    python3 benches/fuzz.py                      # 10^5 calls, seed 0
    python3 benches/fuzz.py --calls 20000 --seed 7
    python3 benches/fuzz.py --keep-going         # report every mismatch
    python3 benches/fuzz.py --check-known        # known defects included
    python3 benches/fuzz.py --check-known nan_timer_order

The program being run is written to --crash-file first (a crash of the
interpreter leaves it there: the program that crashed it).
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import fuzz_engine as fe
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis.errors import HypothesisWarning

warnings.filterwarnings("ignore", category=HypothesisWarning)
# (coroutines the programs make and never await, finalized in other threads)
warnings.filterwarnings("ignore", message="coroutine .* was never awaited")

BATCH = 40  # programs per hypothesis run (a new seed each)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100_000, help="calls to make (default 10^5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-ops", type=int, default=20, help="top-level calls per program, min")
    parser.add_argument("--max-ops", type=int, default=60, help="top-level calls per program, max")
    parser.add_argument("--keep-going", action="store_true", help="go on after a mismatch")
    parser.add_argument("--shrink-budget", type=float, default=180.0, help="seconds per shrink")
    parser.add_argument(
        "--check-known",
        nargs="*",
        metavar="NAME",
        help="do not leave out these known defects (fuzz_engine.KNOWN_DEFECTS; all of them "
        "without a NAME): are they fixed?",
    )
    parser.add_argument(
        "--max-reports",
        type=int,
        default=5,
        help="with --keep-going: shrink and print at most this many mismatches",
    )
    parser.add_argument(
        "--crash-file", default="/tmp/ferroloop-fuzz-current.txt", help="the program being run"
    )
    args = parser.parse_args(argv)
    if args.check_known is not None:
        for name in args.check_known or list(fe.KNOWN_DEFECTS):
            del fe.KNOWN_DEFECTS[name]

    stats = {
        "programs": 0,
        "calls": 0,
        "ops": collections.Counter(),
        "exceptions": set(),
        "nondeterministic": 0,
        "flaky": 0,
    }
    found: list = []
    crash_file = Path(args.crash_file)

    @settings(
        max_examples=BATCH,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(fe.programs(args.min_ops, args.max_ops))
    def one(program):
        if stats["calls"] >= args.calls or (found and not args.keep_going):
            return
        crash_file.write_text(fe.format_program(program) + "\n")
        try:
            fe.compare(program, stats)
        except fe.Mismatch:
            found.append(program)

    t0 = time.monotonic()
    batch = 0
    last_report = t0
    while stats["calls"] < args.calls and not (found and not args.keep_going):
        hypothesis_seed(args.seed * 1_000_003 + batch)(one)()
        batch += 1
        now = time.monotonic()
        if now - last_report > 30:
            last_report = now
            print(
                f"  ... {stats['calls']} calls, {stats['programs']} programs, {now - t0:.0f} s",
                flush=True,
            )
    elapsed = time.monotonic() - t0
    with_teardown = sum(stats["ops"].values())

    print(
        f"calls made: {stats['calls']} (+{stats['ops']['teardown']} teardown steps); "
        f"the programs wrote {stats.get('program calls', 0)} "
        f"({stats.get('top-level calls', 0)} top-level), the rest are callbacks that "
        "ran more than once"
    )
    print(f"programs: {stats['programs']} (each run on both loops)")
    print(f"wall time: {elapsed:.1f} s ({with_teardown / max(elapsed, 1e-9):.0f} calls/s)")
    print("calls per operation:")
    for name, n in sorted(stats["ops"].items(), key=lambda kv: -kv[1]):
        print(f"  {name:28} {n}")
    print("exception classes seen:")
    for name in sorted(map(str, stats["exceptions"])):
        print(f"  {name}")
    print(
        f"reruns: {stats['flaky']} mismatch(es) that did not reproduce, "
        f"{stats['nondeterministic']} program(s) on which asyncio disagreed with itself"
    )
    for text in stats.get("nondeterministic_programs", [])[:3]:
        print(text)
    print(f"known defects left out: {', '.join(sorted(fe.KNOWN_DEFECTS))}")

    if not found:
        crash_file.unlink(missing_ok=True)
        print("OK: no mismatch")
        return 0
    print(f"\n{len(found)} program(s) differ")
    seen = set()
    for program in found[: args.max_reports]:
        print(f"\nmismatch ({len(program)} ops); shrinking ...", flush=True)
        small = fe.shrink(program, fe.mismatches, budget=args.shrink_budget)
        try:
            fe.compare(small, retries=0)
        except fe.Mismatch as e:
            text = str(e)
        else:
            text = "(did not reproduce after shrinking)\n" + fe.format_program(program)
        if text in seen:
            continue
        seen.add(text)
        print(text)
    crash_file.unlink(missing_ok=True)
    return 1


if __name__ == "__main__":
    os.environ.setdefault("RUST_BACKTRACE", "0")
    sys.exit(main())
