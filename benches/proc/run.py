"""Subprocess and pipe benchmarks: asyncio vs uvloop vs ferroloop.

    python3 benches/proc/run.py [--rounds N] [--only name,...] [--loops ...]
                                [--scale S] [--timeout S] [--markdown] [--json PATH]

Every sample runs in a fresh process (benches/proc/worker.py). Within each
round every benchmark runs once per loop, the loop order rotating each round.
Reports the median rate (spawns/s or MiB/s), min, max and IQR over the
rounds, and the ratios of medians to uvloop and to asyncio (loop / base:
> 1.00x means faster than the base).
"""

import argparse
import importlib.util
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # keep benches/ free of __pycache__
import worker  # benches/proc/ is sys.path[0]

sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _report import add_chart_arg, chart, csv, render, save_json, stats, version

WORKER = os.path.abspath(worker.__file__)
BENCHES, LOOPS = worker.BENCHES, worker.LOOPS
TOOLS = {"pipe_cat": ["cat"], "communicate_16m": ["head"]}  # besides /bin/true


def sample(bench, loop, args):
    """One fresh worker process; returns (result dict, None) or (None, error)."""
    cmd = [sys.executable, WORKER, bench, loop, "--scale", str(args.scale)]
    # Own session, so that a timeout also ends the children it spawned.
    p = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = p.communicate(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        return None, f"timed out after {args.timeout:g}s"
    if p.returncode != 0:
        lines = (err.strip() or out.strip()).splitlines()
        return None, lines[-1] if lines else f"exit code {p.returncode}"
    try:
        res = json.loads(out)
    except ValueError:
        return None, f"bad worker output: {out.strip()[-200:]!r}"
    if (res.get("bench"), res.get("loop")) != (bench, loop) or not res.get("rate", 0) > 0:
        return None, f"bad worker output: {out.strip()[-200:]!r}"
    return res, None


def num(x):
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def table(results, benches, loops, scale, markdown):
    head = ["benchmark", "loop", "per sample", "unit", "median", "min", "max", "IQR"]
    head += ["vs uvloop", "vs asyncio"]
    rows = []
    for bench in benches:
        med = {
            lp: statistics.median(s["rate"] for s in ss) for lp, ss in results[bench].items() if ss
        }

        def ratio(lp, base, med=med):
            return f"{med[lp] / med[base]:.2f}x" if base in med else "-"

        unit = BENCHES[bench][2] + "/s"
        for lp in loops:
            ss = results[bench][lp]
            per = worker.work(bench, worker.sample_n(bench, lp, scale))
            if not ss:
                rows.append([bench, lp, per, unit, "FAIL"] + [""] * 5)
                continue
            m, lo, hi, iqr = stats([s["rate"] for s in ss])
            rows.append(
                [bench, lp, per, unit, num(m), num(lo), num(hi), num(iqr)]
                + [ratio(lp, "uvloop"), ratio(lp, "asyncio")]
            )
    return render(head, rows, markdown, left=4)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5, help="samples per benchmark per loop")
    p.add_argument(
        "--only",
        type=lambda s: csv(s, list(BENCHES)),
        default=list(BENCHES),
        help="comma-separated benchmarks: " + ",".join(BENCHES),
    )
    p.add_argument(
        "--loops",
        type=lambda s: csv(s, LOOPS),
        default=list(LOOPS),
        help="comma-separated loops (default: all installed)",
    )
    p.add_argument("--scale", type=float, default=1.0, help="multiply the work per sample")
    p.add_argument("--timeout", type=float, default=60, help="seconds per sample")
    p.add_argument("--markdown", action="store_true", help="print a markdown table")
    p.add_argument("--json", metavar="PATH", help="also write raw samples here")
    add_chart_arg(p)
    args = p.parse_args()

    loops, notes = [], []
    for lp in args.loops:
        if lp == "asyncio" or importlib.util.find_spec(lp) is not None:
            loops.append(lp)
        else:
            notes.append(f"note: {lp} not installed, skipped")
    benches = []
    for bench in args.only:
        missing = [t for t in ["/bin/true", *TOOLS.get(bench, [])] if shutil.which(t) is None]
        if missing:
            notes.append(f"note: {bench} skipped: {', '.join(missing)} not found")
        else:
            benches.append(bench)
    for n in notes:
        print(n, file=sys.stderr)
    if not loops or not benches:
        sys.exit("nothing to run")

    results = {b: {lp: [] for lp in loops} for b in benches}
    errors = {}
    load0 = os.getloadavg()
    t_start = time.monotonic()
    for r in range(args.rounds):
        order = loops[r % len(loops) :] + loops[: r % len(loops)]
        print(f"round {r + 1}/{args.rounds}: {' '.join(order)}", file=sys.stderr)
        for bench in benches:
            for lp in order:
                if (bench, lp) in errors:
                    continue  # failed before: don't repeat (it may hang every time)
                res, err = sample(bench, lp, args)
                if err:
                    errors[bench, lp] = err
                    results[bench][lp].clear()
                    print(f"  FAIL {bench} {lp}: {err}", file=sys.stderr)
                    continue
                results[bench][lp].append(res)
                unit = BENCHES[bench][2] + "/s"
                print(
                    f"  {bench:16} {lp:9} {num(res['rate']):>8} {unit:9} "
                    f"({worker.work(bench, res['n'])} in {res['seconds']:.3f} s)",
                    file=sys.stderr,
                )
    elapsed = time.monotonic() - t_start
    load1 = os.getloadavg()

    scale = f", work x{args.scale:g}" if args.scale != 1 else ""
    print(
        f"{', '.join(version(x) for x in loops)}; {platform.machine()}, {os.cpu_count()} CPUs; "
        f"{args.rounds} rounds, fresh process per sample{scale}; load average "
        f"{load0[0]:.2f} before, {load1[0]:.2f} after; {elapsed / 60:.1f} min"
    )
    print("\n".join(notes + [""]))
    print(table(results, benches, loops, args.scale, args.markdown))
    failed = {}  # one line per loop and error, e.g. NotImplementedError everywhere
    for (bench, lp), err in errors.items():
        failed.setdefault((lp, err), []).append(bench)
    for (lp, err), bs in failed.items():
        print(f"\nFAIL {lp} ({', '.join(bs)}): {err}")
    if args.json:
        save_json(args.json, args, results, errors, notes=notes)
    chart(
        args,
        "subprocesses and pipes (benches/proc/run.py)",
        results,
        lambda b: True,
        lambda s: s["rate"],
    )
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
