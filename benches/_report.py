"""What the benchmark runners (benches/run.py, benches/net/run.py,
benches/proc/run.py) share."""

import argparse
import importlib.metadata
import json
import platform
import statistics
import sys


def csv(value, valid):
    """argparse type: a comma-separated list of names from `valid`."""
    names = [s.strip() for s in value.split(",") if s.strip()]
    bad = [s for s in names if s not in valid]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {', '.join(valid)}")
    return names


# ferroloop with its metrics switched by FERROLOOP_METRICS (see
# src/metrics/mod.rs): the loops the metrics-overhead comparison adds.
METRICS_VARIANTS = {"ferroloop-off": "0", "ferroloop-precise": "precise"}


def package(name):
    """The package a loop name imports (a metrics variant is ferroloop)."""
    return "ferroloop" if name in METRICS_VARIANTS else name


def apply_variant(name):
    """Sets FERROLOOP_METRICS for a metrics variant, before its loop is made."""
    import os

    if name in METRICS_VARIANTS:
        os.environ["FERROLOOP_METRICS"] = METRICS_VARIANTS[name]
    else:
        os.environ.pop("FERROLOOP_METRICS", None)


def version(name):
    """What ran: the interpreter for asyncio, else the package's version."""
    if name == "asyncio":
        return "CPython " + platform.python_version()
    pkg = package(name)
    try:
        v = f"{pkg} {importlib.metadata.version(pkg)}"
    except importlib.metadata.PackageNotFoundError:
        v = pkg
    if name in METRICS_VARIANTS:
        v += f" (FERROLOOP_METRICS={METRICS_VARIANTS[name]})"
    return v


def stats(vals):
    """Median, min, max and interquartile range of the samples."""
    med = statistics.median(vals)
    q = statistics.quantiles(vals, n=4, method="inclusive") if len(vals) > 1 else [vals[0]] * 3
    return med, min(vals), max(vals), q[2] - q[0]


def render(head, rows, markdown, left):
    """A table: markdown, or aligned text; the first `left` columns are
    left-aligned, the rest right-aligned."""
    if markdown:
        lines = [
            "| " + " | ".join(head) + " |",
            "|" + "|".join(["---"] * left + ["---:"] * (len(head) - left)) + "|",
        ]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
    else:
        w = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]

        def just(r):
            return "  ".join(c.ljust(w[i]) if i < left else c.rjust(w[i]) for i, c in enumerate(r))

        lines = [just(head), "  ".join("-" * x for x in w)] + [just(r) for r in rows]
    return "\n".join(lines)


def save_json(path, args, results, errors, **extra):
    """The raw samples of a run (``--json PATH``): the arguments, the
    results, the errors keyed "bench loop", and any *extra* sections."""
    doc = {
        "args": vars(args),
        "results": results,
        "errors": {f"{b} {lp}": e for (b, lp), e in errors.items()},
        **extra,
    }
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)


def add_chart_arg(parser):
    parser.add_argument(
        "--chart", metavar="PNG", help="also draw the run as a chart (needs matplotlib)"
    )


def chart(args, title, results, higher_is_better, value=lambda s: s):
    """``--chart PATH``: the run as a PNG (benches/_chart.py)."""
    if getattr(args, "chart", None):
        from _chart import speeds, write_chart

        command = "python3 " + " ".join(sys.argv)
        write_chart(args.chart, title, speeds(results, higher_is_better, value), command)
        print(f"chart: {args.chart}", file=sys.stderr)
