"""Instructions per ``call_soon`` + run (or per task) on ferroloop with its metrics off, on
(the default) and precise, counted exactly by valgrind's callgrind.

Each configuration runs a workload twice, with N1 and N2 callbacks, in a
fresh interpreter under ``valgrind --tool=callgrind``; the difference of the
two totals of the main thread (the loop's) divided by N2 - N1 is the cost of
one callback, with interpreter start-up, imports and loop creation
cancelled out. Two workloads:

- ``batch``: callbacks queued 1,000 at a time from a callback (the
  ``call_soon`` micro-benchmark): the per-callback cost;
- ``chain``: each callback schedules the next, so every tick runs exactly
  one callback: the per-callback cost plus the whole per-tick cost (the
  clock reads and histograms live there);
- ``tasks``: tasks created 1,000 at a time, each awaiting a future that is
  then set: per task, ``create_task``, its first step and its wake-up, in
  which it finishes (the cost of counting tasks finished natively).

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
import tempfile

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


async def job(fut):
    global ran
    await fut
    ran += 1
    if ran == n:
        loop.stop()


def spawn(remaining):
    fut = loop.create_future()
    for _ in range(min(1000, remaining)):
        loop.create_task(job(fut))
    loop.call_soon(fut.set_result, None)
    if remaining > 1000:
        loop.call_soon(spawn, remaining - 1000)


first = {"batch": scheduler, "chain": link, "tasks": spawn}[pattern]
loop.call_soon(first, n)
loop.run_forever()
raw = getattr(loop, "_stats_raw", dict)()
loop.close()
if ran != n:
    raise SystemExit(f"ran {ran} callbacks, expected {n}")
print(raw.get("page_writes", 0))
"""

MODES = {"off": "0", "on": "1", "precise": "precise"}
WORKLOADS = ("batch", "chain", "tasks")


def instructions(python, mode, n, pattern, page=False):
    """``(instructions, page writes)`` of the main (loop) thread only: the
    slow-callback watchdog's own thread is left out (under valgrind, which
    runs ~50x slower, its periodic wake-ups would be charged to the callbacks
    in proportion to the run's duration). The stats page is off unless
    ``page``: it is written at most once per millisecond of wall time, and
    under valgrind a millisecond holds ~50x fewer ticks than natively, so its
    cost is measured per write instead (see ``main``)."""
    env = dict(
        os.environ,
        FERROLOOP_METRICS=MODES[mode],
        FERROLOOP_STATS_PAGE="1" if page else "0",
        PYTHONHASHSEED="0",
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        cmd = [
            "valgrind",
            "--tool=callgrind",
            "--separate-threads=yes",
            f"--callgrind-out-file={out}",
            python,
            "-c",
            WORKLOAD,
            str(n),
            pattern,
        ]
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        main_thread = out + "-01"
        if p.returncode != 0 or not os.path.exists(main_thread):
            raise SystemExit(f"{' '.join(cmd[:5])} ... failed:\n{p.stderr[-2000:]}")
        with open(main_thread) as f:
            m = re.search(r"^totals: (\d+)", f.read(), re.MULTILINE)
    if not m:
        raise SystemExit(f"no totals in {main_thread}")
    return int(m.group(1)), int(p.stdout.split()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n1", type=int, default=10_000)
    ap.add_argument("--n2", type=int, default=60_000)
    ap.add_argument("--python", action="append", default=[], help="another interpreter")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--modes", default=",".join(MODES), help="subset of off,on,precise")
    ap.add_argument(
        "--workloads", default=",".join(WORKLOADS), help="subset of " + ",".join(WORKLOADS)
    )
    ap.add_argument("--no-page", action="store_true", help="skip the stats page's cost")
    args = ap.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    if args.n2 <= args.n1:
        sys.exit("--n2 must be larger than --n1")
    modes = [m for m in args.modes.split(",") if m]
    workloads = [w for w in args.workloads.split(",") if w]
    if set(modes) - set(MODES) or set(workloads) - set(WORKLOADS) or "off" not in modes:
        sys.exit("--modes: off,on,precise (off included); --workloads: batch,chain,tasks")
    rows = []
    for python in [sys.executable, *args.python]:
        label = "" if python == sys.executable else f" [{python}]"
        for pattern in workloads:
            base = None
            for mode in modes:
                a, _ = instructions(python, mode, args.n1, pattern)
                b, _ = instructions(python, mode, args.n2, pattern)
                per = (b - a) / (args.n2 - args.n1)
                base = per if mode == "off" else base
                rows.append((pattern + label, mode, per, per / base - 1))
                print(f"{pattern}{label} {mode}: {per:,.0f} instructions", file=sys.stderr)
    page_note = ""
    if not args.no_page:
        # One write of the stats page: the chain workload with and without it.
        off, _ = instructions(sys.executable, "on", args.n2, "chain")
        on, writes = instructions(sys.executable, "on", args.n2, "chain", page=True)
        page_note = (
            f"stats page: {(on - off) / writes:,.0f} instructions per write "
            f"({writes} writes measured), at most 1,000 writes per second"
            if writes
            else "stats page: not written (no tmpfs?)"
        )
        print(page_note, file=sys.stderr)
    sep = " | " if args.markdown else "  "
    head = ["workload", "metrics", "instructions per callback (task)", "vs off"]
    if args.markdown:
        print("| " + sep.join(head) + " |")
        print("|" + "---|" * len(head))
    else:
        print(sep.join(head))
    for pattern, mode, per, extra in rows:
        cells = [pattern, mode, f"{per:,.0f}", f"{extra * 100:+.1f}%"]
        print(("| " + sep.join(cells) + " |") if args.markdown else sep.join(cells))
    if page_note:
        print()
        print(page_note)


if __name__ == "__main__":
    main()
