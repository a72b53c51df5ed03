"""Instructions per ``call_soon`` + run on ferroloop with its metrics off, on
(the default) and precise, counted exactly by valgrind's callgrind.

Each configuration runs a workload twice, with N1 and N2 callbacks, in a
fresh interpreter under ``valgrind --tool=callgrind``; the difference of the
two totals divided by N2 - N1 is the cost of one callback, with interpreter
start-up, imports and loop creation cancelled out. Two workloads:

- ``batch``: callbacks queued 1,000 at a time from a callback (the
  ``call_soon`` micro-benchmark): the per-callback cost;
- ``chain``: each callback schedules the next, so every tick runs exactly
  one callback: the per-callback cost plus the whole per-tick cost (the
  clock reads and histograms live there).

``--python PATH`` (repeatable) adds interpreters, e.g. a venv holding a build
of ferroloop without the metrics code, labelled with their path.

    python3 benches/metrics_instructions.py            # ~3 minutes
    python3 benches/metrics_instructions.py --n1 5000 --n2 25000 --markdown
"""

import argparse
import os
import re
import shutil
import subprocess
import sys

WORKLOAD = r"""
import sys
import ferroloop

n, pattern = int(sys.argv[1]), sys.argv[2]
loop = ferroloop.new_event_loop()
ran = 0


def cb():
    global ran
    ran += 1


def scheduler(remaining):
    for _ in range(min(1000, remaining)):
        loop.call_soon(cb)
    if remaining > 1000:
        loop.call_soon(scheduler, remaining - 1000)
    else:
        loop.call_soon(loop.stop)


def link(remaining):
    global ran
    ran += 1
    if remaining > 1:
        loop.call_soon(link, remaining - 1)
    else:
        loop.stop()


loop.call_soon(scheduler if pattern == "batch" else link, n)
loop.run_forever()
loop.close()
if ran != n:
    raise SystemExit(f"ran {ran} callbacks, expected {n}")
"""

MODES = {"off": "0", "on": "1", "precise": "precise"}


def instructions(python, mode, n, pattern):
    env = dict(os.environ, FERROLOOP_METRICS=MODES[mode], PYTHONHASHSEED="0")
    cmd = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        python,
        "-c",
        WORKLOAD,
        str(n),
        pattern,
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    m = re.search(r"Collected : (\d+)", p.stderr)
    if p.returncode != 0 or not m:
        raise SystemExit(f"{' '.join(cmd[:5])} ... failed:\n{p.stderr[-2000:]}")
    return int(m.group(1))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n1", type=int, default=10_000)
    ap.add_argument("--n2", type=int, default=60_000)
    ap.add_argument("--python", action="append", default=[], help="another interpreter")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    if args.n2 <= args.n1:
        sys.exit("--n2 must be larger than --n1")
    rows = []
    for python in [sys.executable, *args.python]:
        label = "" if python == sys.executable else f" [{python}]"
        for pattern in ("batch", "chain"):
            base = None
            for mode in MODES:
                a = instructions(python, mode, args.n1, pattern)
                b = instructions(python, mode, args.n2, pattern)
                per = (b - a) / (args.n2 - args.n1)
                base = per if mode == "off" else base
                rows.append((pattern + label, mode, per, per / base - 1))
                print(f"{pattern}{label} {mode}: {per:,.0f} instructions", file=sys.stderr)
    sep = " | " if args.markdown else "  "
    head = ["workload", "metrics", "instructions per callback", "vs off"]
    if args.markdown:
        print("| " + sep.join(head) + " |")
        print("|" + "---|" * len(head))
    else:
        print(sep.join(head))
    for pattern, mode, per, extra in rows:
        cells = [pattern, mode, f"{per:,.0f}", f"{extra * 100:+.1f}%"]
        print(("| " + sep.join(cells) + " |") if args.markdown else sep.join(cells))


if __name__ == "__main__":
    main()
