"""Run CPython's test_asyncio modules on a loop under test and compare with asyncio.

    python3 -m tests.conformance.run --loop ferroloop [--modules test_tasks,...]
        [--compare asyncio|none] [--write-results] [--jobs 2]

Each (loop, module) pair runs in its own subprocess (_child.py). A test that
hangs is killed after --test-timeout seconds and the module resumes in a new
process after it; a whole module gets --module-timeout seconds. See README.md.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHILD = HERE / "_child.py"
OUT_DIR = HERE / ".out"
EXCLUSIONS = HERE / "exclusions.toml"

# The loop-under-test table: name -> (policy class, class its loops must be).
LOOPS = {
    "asyncio": ("asyncio:DefaultEventLoopPolicy", "asyncio:SelectorEventLoop"),
    "ferroloop": ("ferroloop:EventLoopPolicy", "ferroloop:Loop"),
    "uvloop": ("uvloop:EventLoopPolicy", "uvloop:Loop"),
}

# Slowest first, so a pool of 2 finishes early. test_base_events is left out
# on purpose (README.md); --modules test_base_events still runs it.
MODULES = [
    "test_tasks",
    "test_subprocess",
    "test_taskgroups",
    "test_waitfor",
    "test_futures",
    "test_locks",
    "test_timeouts",
    "test_queues",
    "test_runners",
    "test_pep492",
    "test_context",
    "test_futures2",
    "test_threads",
    "test_sock_lowlevel",
    "test_events",
    "test_streams",
    "test_sendfile",
    "test_server",
    "test_buffered_proto",
    "test_unix_events",
    "test_ssl",
    "test_sslproto",
]
# Modules of later versions, run where the interpreter's test_asyncio has
# them (test_eager_task_factory: 3.12+, test_staggered: 3.13+).
LATER_MODULES = ["test_eager_task_factory", "test_staggered"]


def available_modules():
    """MODULES and LATER_MODULES that this interpreter's test_asyncio has
    (3.10's has no test_taskgroups or test_timeouts)."""
    import importlib.util

    spec = importlib.util.find_spec("test.test_asyncio")
    if spec is None or not spec.submodule_search_locations:
        return []
    where = Path(next(iter(spec.submodule_search_locations)))
    return [m for m in MODULES + LATER_MODULES if (where / f"{m}.py").exists()]


CATEGORY = {  # child outcome -> reported category
    "fail": "fail",
    "timeout": "fail",
    "error": "error",
    "crash": "error",
    "skip": "skip",
}
PASSED = ("pass-native", "pass-no-native")


def category(rec):
    if rec["outcome"] == "pass":
        return "pass-native" if rec["native_loops"] else "pass-no-native"
    return CATEGORY[rec["outcome"]]


def read_events(path):
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.endswith("\n")]


def tail(path, chars=1500):
    text = path.read_text(encoding="utf-8", errors="replace")
    return text[-chars:]


def watch(proc, events, test_timeout, deadline):
    """Wait for proc; kill it when no event arrives for test_timeout s or at deadline."""
    size, last = -1, time.monotonic()
    while proc.poll() is None:
        time.sleep(0.2)
        now = time.monotonic()
        new_size = events.stat().st_size if events.exists() else 0
        if new_size != size:
            size, last = new_size, now
        if now - last > test_timeout or now > deadline:
            proc.kill()
            proc.wait()
            return "timeout" if now <= deadline else "module-timeout"
    return None


def run_module(loop, module, only=None, test_timeout=60, module_timeout=300):
    """Run one module on one loop; restart after a test that hangs or crashes."""
    policy, loop_cls = LOOPS[loop]
    OUT_DIR.mkdir(exist_ok=True)
    stem = OUT_DIR / f"{loop}.{module}{'.retry' if only else ''}"
    log_path, select_path = Path(f"{stem}.log"), Path(f"{stem}.select.json")
    for old in OUT_DIR.glob(f"{stem.name}.*.jsonl"):
        old.unlink()
    tests, wanted, status, restarts, error = {}, None, "ok", 0, ""
    start = time.monotonic()
    deadline = start + module_timeout
    with open(log_path, "w", encoding="utf-8") as log:
        while True:
            events_path = Path(f"{stem}.{restarts}.jsonl")
            select = {"skip": sorted(tests)} | ({"only": sorted(only)} if only else {})
            select_path.write_text(json.dumps(select))
            cmd = [
                sys.executable,
                str(CHILD),
                policy,
                loop_cls,
                module,
                str(events_path),
                str(select_path),
            ]
            log.write(f"$ {' '.join(cmd)}\n")
            log.flush()
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
            killed = watch(proc, events_path, test_timeout, deadline)
            events = read_events(events_path)
            before, started = len(tests), set()
            for event in events:
                if event["event"] == "collected" and wanted is None:
                    wanted = [i for i in event["ids"] if only is None or i in only]
                elif event["event"] == "start":
                    started.add(event["id"])
                elif event["event"] == "end":
                    tests[event["id"]] = {
                        k: v for k, v in event.items() if k not in ("event", "id")
                    }
            if wanted is None:  # could not even import / collect
                status, error = "error", tail(log_path)
                break
            if any(e["event"] == "done" for e in events):
                if proc.returncode:  # e.g. a crash at interpreter shutdown
                    status = f"exit code {proc.returncode} after the last test"
                break
            outcome = "timeout" if killed else "crash"
            why = {
                "timeout": f"killed: no progress for {test_timeout} s",
                "module-timeout": f"killed: module timeout {module_timeout} s",
                None: f"process died, exit code {proc.returncode}; see {log_path.name}",
            }[killed]
            for test_id in started - tests.keys():  # the test that hung or crashed
                tests[test_id] = {"outcome": outcome, "detail": why}
            status = "module-timeout" if killed == "module-timeout" else "restarted"
            remaining = [i for i in wanted if i not in tests]
            if killed == "module-timeout" or len(tests) == before:  # no progress: give up
                for test_id in remaining:
                    tests[test_id] = {"outcome": outcome, "detail": why}
                break
            if not remaining:
                break
            restarts += 1
    for rec in tests.values():
        for key in ("native_loops", "other_loops", "foreign_loops"):
            rec.setdefault(key, 0)
        rec["category"] = category(rec)
        if rec["category"] in PASSED and rec.get("detail") == "":
            rec.pop("detail")
    return {
        "status": status,
        "error": error,
        "restarts": restarts,
        "log": str(log_path),
        "seconds": round(time.monotonic() - start, 1),
        "tests": tests,
    }


def run_all(loops, modules, jobs=2, **kwargs):
    """{loop: {module: result}}; the (loop, module) pairs run `jobs` at a time."""
    pairs = [(loop, module) for module in modules for loop in loops]
    with ThreadPoolExecutor(jobs) as pool:
        futures = {pair: pool.submit(run_module, *pair, **kwargs) for pair in pairs}
    results = {loop: {} for loop in loops}
    for (loop, module), future in futures.items():
        results[loop][module] = future.result()
    return results


class Exclusions(dict):
    """{test id: reason}; ``optional``: the ids marked ``only_where_present``
    (tests some Python versions do not have: their absence there is not a
    stale exclusion)."""

    optional = frozenset()


def load_exclusions(loop, path=EXCLUSIONS):
    """The [loop] table of exclusions.toml: a value is the written reason, or
    a table ``{reason = "...", only_where_present = true}``."""
    try:
        import tomllib
    except ImportError:  # 3.10: the same parser, from PyPI
        import tomli as tomllib

    with open(path, "rb") as f:
        table = tomllib.load(f).get(loop, {})
    reasons, optional = {}, set()
    for test_id, value in table.items():
        if isinstance(value, dict):
            if value.get("only_where_present"):
                optional.add(test_id)
            value = value.get("reason")
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{path.name}: [{loop}] {test_id!r} needs a written reason")
        reasons[test_id] = value
    reasons = Exclusions(reasons)
    reasons.optional = frozenset(optional)
    return reasons


def passed(result, test_id):
    rec = result["tests"].get(test_id)
    return rec is not None and rec["category"] in PASSED


def compare(results, loop, baseline, exclusions):
    """Per-module rows plus the gate's verdict: regressions and stale exclusions."""
    rows, regressions, stale, unverified = [], [], [], []
    for module, res in results[loop].items():
        base = results[baseline][module]
        cats = [rec["category"] for rec in res["tests"].values()]
        ids = sorted(base["tests"].keys() | res["tests"].keys())
        excluded = [i for i in ids if i in exclusions]
        for test_id in ids:
            rec, base_rec = res["tests"].get(test_id), base["tests"].get(test_id)
            if test_id in exclusions:
                if passed(res, test_id):
                    stale.append((test_id, "now passes", exclusions[test_id]))
            elif passed(base, test_id) and not passed(res, test_id):
                rec = rec or {"outcome": "missing", "detail": res["error"]}
                regressions.append((test_id, rec["outcome"], rec.get("detail", "")))
            elif (
                rec
                and base_rec
                and rec["category"] == "pass-no-native"
                and base_rec["category"] == "pass-native"
            ):
                unverified.append(test_id)
        for test_id in exclusions:
            absent = test_id.split(".")[0] == module and test_id not in ids
            if absent and test_id not in getattr(exclusions, "optional", ()):
                stale.append((test_id, "no such test", exclusions[test_id]))
        base_cats = [rec["category"] for rec in base["tests"].values()]
        rows.append(
            {
                "module": module,
                "tests": len(ids),
                "baseline_pass": sum(c in PASSED for c in base_cats),
                "baseline_native": base_cats.count("pass-native"),
                "pass": sum(c in PASSED for c in cats),
                "pass_native": cats.count("pass-native"),
                "pass_no_native": cats.count("pass-no-native"),
                "fail": cats.count("fail"),
                "error": cats.count("error"),
                "skip": cats.count("skip"),
                "excluded": len(excluded),
                "regressions": sum(r[0].split(".")[0] == module for r in regressions),
                "notes": ", ".join(
                    sorted(
                        {
                            f"{name}: {r['status']}"
                            for name, r in ((baseline, base), (loop, res))
                            if r["status"] != "ok"
                        }
                    )
                ),
            }
        )
    return {
        "loop": loop,
        "baseline": baseline,
        "rows": rows,
        "exclusions": exclusions,
        "regressions": regressions,
        "stale": stale,
        "unverified": unverified,
    }


def retry_regressions(results, report_fn, loop, baseline, exclusions, **kwargs):
    """Run each regression once more in a fresh process (timing flakes on 2 cores)."""
    report = report_fn(results, loop, baseline, exclusions)
    by_module = {}
    for test_id, *_ in report["regressions"]:
        by_module.setdefault(test_id.split(".")[0], []).append(test_id)
    for module, ids in by_module.items():
        if results[loop][module]["status"] == "error":
            continue  # could not even import: nothing to retry
        retry = run_module(loop, module, only=ids, **kwargs)
        for test_id, rec in retry["tests"].items():
            first = results[loop][module]["tests"].get(test_id)
            if rec["category"] in PASSED and first is not None:
                rec["flaky"] = f"first run: {first['outcome']}"
                results[loop][module]["tests"][test_id] = rec
    return report_fn(results, loop, baseline, exclusions)


def table(report):
    loop, base = report["loop"], report["baseline"]
    head = [
        "module",
        "tests",
        f"{base} pass",
        f"{base} on its loop",
        f"{loop} pass",
        f"on {loop} loop",
        "no native loop",
        "fail",
        "error",
        "skip",
        "excluded",
        "regressions",
        "notes",
    ]
    keys = [
        "module",
        "tests",
        "baseline_pass",
        "baseline_native",
        "pass",
        "pass_native",
        "pass_no_native",
        "fail",
        "error",
        "skip",
        "excluded",
        "regressions",
        "notes",
    ]
    rows = [[str(row[k]) for k in keys] for row in report["rows"]]
    totals = ["**total**"] + [str(sum(row[k] for row in report["rows"])) for k in keys[1:-1]] + [""]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows + [totals]]
    return "\n".join(lines)


def problems_text(report, limit=None):
    out = []
    for test_id, outcome, detail in report["regressions"][:limit]:
        last = detail.strip().splitlines()[-1] if detail.strip() else ""
        out.append(f"- REGRESSION `{test_id}`: {outcome}: {last}")
    for test_id, why, reason in report["stale"]:
        out.append(
            f"- STALE EXCLUSION `{test_id}` ({why}); remove it from "
            f"exclusions.toml [{report['loop']}] (reason was: {reason})"
        )
    for test_id in report["unverified"][:limit]:
        out.append(
            f"- NOTE `{test_id}` passed without creating a {report['loop']} loop, "
            f"but created one on {report['baseline']}"
        )
    return "\n".join(out)


def version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "?"


def write_results(results, report, command, directory=HERE):
    """Write this Python's record, ``{name}-{3.X.Y}.json``, then rebuild
    ``{name}.md`` from every version's record found next to it, side by side."""
    loop, base = report["loop"], report["baseline"]
    name = "results" if loop == "ferroloop" else f"results-{loop}"
    # The patch level too: 3.13.0's and 3.13.5's asyncio differ.
    python = platform.python_version()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    outcomes = {
        test_id: rec["outcome"]
        for res in results[loop].values()
        for test_id, rec in res["tests"].items()
    }
    excluded = (
        "\n".join(
            f"- `{test_id}`: {outcomes.get(test_id, 'not run')}: {reason}"
            for test_id, reason in sorted(report["exclusions"].items())
        )
        or "None."
    )
    section = f"""Generated by `{command}` on {stamp}; Python {python},
{loop} {version(loop)}. Per-test outcomes: `{name}-{python}.json`.

{table(report)}

Regressions, stale exclusions, notes: {problems_text(report) or "none."}

Excluded for {loop} (exclusions.toml): {excluded}
"""
    tests = {}  # test id -> [baseline category, loop category]
    for which in (base, loop):
        for res in results[which].values():
            for test_id, rec in res["tests"].items():
                tests.setdefault(test_id, ["missing", "missing"])[which == loop] = rec["category"]
    failures = {
        which: {
            test_id: rec
            for res in results[which].values()
            for test_id, rec in res["tests"].items()
            if rec["category"] in ("fail", "error")
        }
        for which in (base, loop)
    }
    data = {
        "generated": stamp,
        "command": command,
        "python": python,
        "loop": loop,
        "baseline": base,
        "summary": report["rows"],
        "section": section,
        "regressions": [r[0] for r in report["regressions"]],
        "stale_exclusions": [s[0] for s in report["stale"]],
        "failures": failures,
        "tests": "TESTS",
    }
    text = json.dumps(data, indent=1, sort_keys=True)
    lines = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in sorted(tests.items()))
    text = text.replace('"TESTS"', "{\n" + lines + "\n }")
    (directory / f"{name}-{python}.json").write_text(text + "\n", encoding="utf-8")
    write_markdown(name, loop, base, directory)


def _version_key(path):
    return tuple(int(part) for part in path.stem.rsplit("-", 1)[1].split("."))


def write_markdown(name, loop, base, directory=HERE):
    """``{name}.md``: every Python's record side by side, then each in full."""
    records = [
        json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(directory.glob(f"{name}-3.*.json"), key=_version_key)
    ]
    pythons = [rec["python"] for rec in records]
    seen = {row["module"] for rec in records for row in rec["summary"]}
    modules = [m for m in MODULES + LATER_MODULES if m in seen]
    modules += sorted(seen - set(modules))  # run with --modules
    head = ["module"] + [f"{py}: {base} / {loop} / regr." for py in pythons]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for module in modules + ["**total**"]:
        cells = [module]
        for rec in records:
            if module == "**total**":
                rows = rec["summary"]
            else:
                rows = [r for r in rec["summary"] if r["module"] == module]
            if not rows:
                cells.append("not in this version")
                continue
            cells.append(
                " / ".join(
                    str(sum(r[k] for r in rows)) for k in ("baseline_pass", "pass", "regressions")
                )
            )
        lines.append("| " + " | ".join(cells) + " |")
    sections = "\n".join(f"## Python {rec['python']}\n\n{rec['section']}" for rec in records)
    md = f"""# Conformance results: {loop} vs {base}, per Python version

Each version runs its own copy of CPython's test_asyncio (the modules of
run.py's MODULES and LATER_MODULES it has). A cell is "tests passing on
{base} / passing on {loop} / regressions"; a regression passed on {base},
did not pass on {loop}, and is not in exclusions.toml. The tables below
split each version by module: "on {loop} loop" counts tests that passed and
created a loop through the {loop} policy, "no native loop" those that passed
without one (they run on `test_utils.TestLoop` or a bare `BaseEventLoop`, so
they are not loop tests). A timeout counts as fail, a crashed process as
error.

{chr(10).join(lines)}

{sections}"""
    (directory / f"{name}.md").write_text(md, encoding="utf-8")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--loop", default="ferroloop", choices=sorted(LOOPS))
    parser.add_argument(
        "--modules",
        default=",".join(available_modules()),
        help="comma-separated test_asyncio modules (default: %(default)s)",
    )
    parser.add_argument("--compare", default="asyncio", choices=sorted(LOOPS) + ["none"])
    parser.add_argument(
        "--write-results",
        action="store_true",
        help="write results[-LOOP].md/.json next to this file",
    )
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--test-timeout", type=float, default=60)
    parser.add_argument("--module-timeout", type=float, default=300)
    parser.add_argument(
        "--no-retry", action="store_true", help="do not rerun regressions once in a fresh process"
    )
    args = parser.parse_args(argv)
    modules = [m.strip() for m in args.modules.split(",") if m.strip()]
    baseline = args.compare if args.compare != "none" else args.loop
    loops = list(dict.fromkeys([baseline, args.loop]))
    limits = {"test_timeout": args.test_timeout, "module_timeout": args.module_timeout}

    t0 = time.monotonic()
    results = run_all(loops, modules, jobs=args.jobs, **limits)
    exclusions = load_exclusions(args.loop)
    if args.no_retry or baseline == args.loop:
        report = compare(results, args.loop, baseline, exclusions)
    else:
        report = retry_regressions(results, compare, args.loop, baseline, exclusions, **limits)
    print(table(report))
    print(problems_text(report, limit=50))
    print(
        f"\n{len(report['regressions'])} regressions, {len(report['stale'])} stale "
        f"exclusions ({time.monotonic() - t0:.0f} s; logs in {OUT_DIR})"
    )
    (OUT_DIR / "last-run.json").write_text(json.dumps(results, indent=1) + "\n")
    if args.write_results:
        command = "python3 -m tests.conformance.run " + " ".join(
            argv if argv is not None else sys.argv[1:]
        )
        write_results(results, report, command.strip())
    return 1 if report["regressions"] or report["stale"] else 0


if __name__ == "__main__":
    sys.exit(main())
