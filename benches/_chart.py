"""A benchmark run as a chart (PNG): one group of bars per benchmark, one bar
per loop, each the loop's median speed relative to asyncio's (higher is
faster; asyncio is 1.0), with min-max whiskers. Used by the runners'
``--chart PATH`` (needs matplotlib: ``pip install matplotlib``)."""

import platform
import statistics
import textwrap
import time

COLORS = {"asyncio": "#9e9e9e", "uvloop": "#4c72b0", "ferroloop": "#dd8452"}


def speeds(results, higher_is_better, value=lambda s: s):
    """``{bench: {loop: [speed, ...]}}`` from a runner's ``results``, where
    ``higher_is_better(bench)`` says whether a sample's ``value`` is a rate
    (kept) or a duration or size (inverted)."""
    out = {}
    for bench, per_loop in results.items():
        up = higher_is_better(bench)
        out[bench] = {
            lp: [value(s) if up else 1.0 / value(s) for s in samples if value(s) > 0]
            for lp, samples in per_loop.items()
        }
    return out


def write_chart(path, title, speed, command, base="asyncio"):
    """Writes the PNG. ``speed`` as returned by ``speeds``; ``command`` is
    printed under the title with the date and machine."""
    try:
        import matplotlib
    except ImportError as exc:
        raise SystemExit("--chart needs matplotlib (pip install matplotlib)") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    benches = [b for b, per in speed.items() if per.get(base)]
    loops = [lp for lp in COLORS if any(speed[b].get(lp) for b in benches)]
    loops += sorted({lp for b in benches for lp in speed[b]} - set(loops))
    width = 0.8 / max(1, len(loops))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(benches) + 2), 4.8), dpi=120)
    for i, lp in enumerate(loops):
        xs, meds, lows, highs = [], [], [], []
        for j, b in enumerate(benches):
            samples = speed[b].get(lp)
            if not samples:
                continue
            ref = statistics.median(speed[b][base])
            med = statistics.median(samples) / ref
            xs.append(j + (i - (len(loops) - 1) / 2) * width)
            meds.append(med)
            lows.append(med - min(samples) / ref)
            highs.append(max(samples) / ref - med)
        bars = ax.bar(
            xs, meds, width, label=lp, color=COLORS.get(lp), yerr=[lows, highs], capsize=2
        )
        ax.bar_label(bars, labels=[f"{m:.2f}" for m in meds], fontsize=7, padding=2)
    ax.axhline(1.0, color="black", linewidth=0.6)
    ax.set_xticks(range(len(benches)), benches, rotation=30 if len(benches) > 5 else 0)
    ax.set_ylabel(f"speed relative to {base} (higher is faster)")
    machine = (
        f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}"
    )
    # Wrapped to the figure's width: a long command would be cut off.
    subtitle = f"{time.strftime('%Y-%m-%d')}, {machine}: {command}"
    chars = int(fig.get_figwidth() * 13)  # ~13 characters an inch at 9 pt
    ax.set_title("\n".join([title, *textwrap.wrap(subtitle, chars)]), fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
