"""Side-by-side event loop micro-benchmarks: asyncio vs uvloop vs ferroloop.

    python3 benches/run.py [--rounds N] [--only name,...] [--markdown]

Every sample runs in a fresh process (benches/_worker.py). Within each round,
every benchmark is run once per loop, with the loop order rotated each round.
Reports median, min, max and IQR over the rounds, plus the ratio to uvloop
(uvloop median / loop median: > 1 means faster than uvloop).
"""

import argparse
import importlib
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys

sys.dont_write_bytecode = True  # keep benches/ free of __pycache__
_worker = importlib.import_module("_worker")
from _report import add_chart_arg, chart, csv, package, save_json, version

BENCHES, LOOPS = _worker.BENCHES, _worker.LOOPS
DEFAULT_LOOPS = _worker.DEFAULT_LOOPS

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_worker.py")


def sample(bench, loop, args):
    cmd = [sys.executable, WORKER, bench, loop, "--scale", str(args.scale)]
    if args.pin is not None:
        cmd += ["--cpu", str(args.pin)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {args.timeout}s"
    if p.returncode != 0:
        lines = (p.stderr.strip() or p.stdout.strip()).splitlines()
        return None, lines[-1] if lines else f"exit code {p.returncode}"
    return json.loads(p.stdout)["seconds"], None


def fmt(seconds):
    return f"{seconds * 1e3:.1f}"


def table(results, benches, loops, markdown):
    head = ["benchmark", "loop", "median ms", "min ms", "max ms", "IQR ms", "vs uvloop"]
    rows = []
    for bench in benches:
        base = results[bench].get("uvloop")
        base = statistics.median(base) if base else None
        for loop in loops:
            ts = results[bench][loop]
            if not ts:
                rows.append([bench, loop, "FAIL", "", "", "", ""])
                continue
            med = statistics.median(ts)
            q = statistics.quantiles(ts, n=4, method="inclusive") if len(ts) > 1 else [ts[0]] * 3
            ratio = f"{base / med:.2f}x" if base else "-"
            rows.append(
                [bench, loop, fmt(med), fmt(min(ts)), fmt(max(ts)), fmt(q[2] - q[0]), ratio]
            )
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * 5) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
    else:
        w = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]

        def just(r):
            return "  ".join(c.ljust(w[i]) if i < 2 else c.rjust(w[i]) for i, c in enumerate(r))

        lines = [just(head), "  ".join("-" * x for x in w)] + [just(r) for r in rows]
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=12, help="samples per benchmark per loop")
    p.add_argument(
        "--only",
        type=lambda s: csv(s, list(BENCHES)),
        default=list(BENCHES),
        help="comma-separated benchmarks: " + ",".join(BENCHES),
    )
    p.add_argument(
        "--loops",
        type=lambda s: csv(s, LOOPS),
        default=list(DEFAULT_LOOPS),
        help="comma-separated loops (default: all installed)",
    )
    p.add_argument("--markdown", action="store_true", help="print a markdown table")
    p.add_argument("--pin", type=int, metavar="CPU", help="pin workers to this CPU")
    p.add_argument("--scale", type=float, default=1.0, help="multiply op counts (smoke tests)")
    p.add_argument("--timeout", type=float, default=120, help="seconds per sample")
    p.add_argument("--json", metavar="PATH", help="also write raw samples here")
    add_chart_arg(p)
    args = p.parse_args()
    if args.pin is not None and not hasattr(os, "sched_setaffinity"):
        print("note: os.sched_setaffinity unavailable, not pinning", file=sys.stderr)
        args.pin = None

    loops, notes = [], []
    for loop in args.loops:
        if loop == "asyncio" or importlib.util.find_spec(package(loop)) is not None:
            loops.append(loop)
        else:
            notes.append(f"note: {loop} not installed, skipped")
            print(notes[-1], file=sys.stderr)
    if not loops:
        sys.exit("no event loop to benchmark")

    results = {b: {loop: [] for loop in loops} for b in args.only}
    errors = {}
    for r in range(args.rounds):
        order = loops[r % len(loops) :] + loops[: r % len(loops)]
        print(f"round {r + 1}/{args.rounds}: {' '.join(order)}", file=sys.stderr)
        for bench in args.only:
            for loop in order:
                if (bench, loop) in errors:
                    continue  # failed before: don't repeat (it may hang every time)
                t, err = sample(bench, loop, args)
                if err:
                    errors[bench, loop] = err
                    results[bench][loop].clear()
                    print(f"  FAIL {bench} {loop}: {err}", file=sys.stderr)
                else:
                    results[bench][loop].append(t)

    pin = f", pinned to CPU {args.pin}" if args.pin is not None else ""
    scale = f", op counts x{args.scale:g}" if args.scale != 1 else ""
    print(
        f"{', '.join(version(x) for x in loops)}; {platform.machine()}, "
        f"{os.cpu_count()} CPUs; {args.rounds} rounds, fresh process per sample"
        f"{pin}{scale}"
    )
    print("\n".join(notes + [""]))
    print(table(results, args.only, loops, args.markdown))
    for (bench, loop), err in errors.items():
        print(f"\nFAIL {bench} {loop}: {err}")
    if args.json:
        save_json(args.json, args, results, errors)
    chart(args, "loop micro-benchmarks (benches/run.py)", results, lambda bench: False)
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
