"""FastAPI behind uvicorn's command line: asyncio vs uvloop vs ferroloop.

    python3 benches/fastapi/run.py [--rounds N] [--duration S] [--http httptools|h11]
                                   [--loops asyncio,uvloop,ferroloop] [--markdown] [--json PATH]

Each sample is a fresh server started exactly as a user would start it,

    python -m uvicorn fastapi_app:app --loop {asyncio | uvloop | ferroloop:new_event_loop}
        --http httptools --no-access-log --port P

(the app is tests/apps/fastapi_app.py; the endpoint is GET /json, a small JSON
document through FastAPI's routing and response serialisation), pinned to one
CPU, and loaded by wrk pinned to the other one, after an unmeasured warm-up.
Before the load the server is asked which loop class it runs (GET /loop), so
a fallback loop cannot pass for the one named. Rounds are interleaved: every
loop runs once per round, the order rotating each round. Reports, per loop,
the median, min, max and IQR of requests/s, the median p99 latency, and both
as ratios to uvloop.

Needs wrk (Debian/Ubuntu: `apt-get install wrk`), fastapi, uvicorn,
httptools and uvloop in the interpreter that runs this script.
"""

import argparse
import importlib.util
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.dont_write_bytecode = True  # keep benches/ free of __pycache__
HERE = os.path.dirname(os.path.abspath(__file__))
BENCHES_DIR = os.path.dirname(HERE)
APPS = os.path.join(os.path.dirname(BENCHES_DIR), "tests", "apps")
sys.path.insert(1, BENCHES_DIR)
from _report import csv, render, save_json, stats  # benches/_report.py
from _report import version as package_version


def _load_net_runner():
    """benches/net/run.py, for its process, CPU and wrk helpers."""
    net = os.path.join(BENCHES_DIR, "net")
    sys.path.insert(1, net)  # its own `from server import ...`
    spec = importlib.util.spec_from_file_location("net_run", os.path.join(net, "run.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


net = _load_net_runner()

LOOPS = ("asyncio", "uvloop", "ferroloop")
# uvicorn's --loop value for each loop, and the class the server must report.
LOOP_OPTION = {"asyncio": "asyncio", "uvloop": "uvloop", "ferroloop": "ferroloop:new_event_loop"}
LOOP_CLASS = net.LOOP_CLASS
BENCH = "fastapi_json"
PATH = "/json"
BODY = {"message": "Hello, World!"}  # fastapi_app.get_json()


class SampleError(Exception):
    pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        if r.status != 200:
            raise SampleError(f"GET {url}: {r.status}")
        return json.loads(r.read())


def uvicorn_command(loop, http, port):
    """uvicorn's command line serving the app with `loop` on 127.0.0.1:port."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "fastapi_app:app",
        "--app-dir",
        APPS,
        "--loop",
        LOOP_OPTION[loop],
        "--http",
        http,
        "--no-access-log",
        "--log-level",
        "warning",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


def wait_listening(p, port, timeout, poll=0.05):
    """Until the server process `p` accepts on 127.0.0.1:port; SampleError if
    it exits first or is not listening after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if p.poll() is not None:
            raise SampleError(f"uvicorn exited with {p.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SampleError(f"not listening after {timeout:g} s") from None
            time.sleep(poll)


class Uvicorn:
    """uvicorn's command line in a process group of its own."""

    def __init__(self, loop, args, logdir):
        self.port = free_port()
        cmd = uvicorn_command(loop, args.http, self.port)
        env = dict(os.environ)
        for name in ("PYTHONASYNCIODEBUG", "PYTHONDEVMODE", "FERROLOOP_METRICS"):
            env.pop(name, None)
        self.log = os.path.join(logdir, f"uvicorn-{loop}.log")
        with open(self.log, "wb") as log:
            self.p = subprocess.Popen(
                net.pinned(args.server_cpu, cmd),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        try:
            wait_listening(self.p, self.port, args.ready_timeout)
            got = get_json(f"{self.url}/loop")["loop"]
            if got != LOOP_CLASS[loop]:
                raise SampleError(f"server runs {got}, expected {LOOP_CLASS[loop]}")
            if get_json(self.url + PATH) != BODY:
                raise SampleError(f"unexpected body from {PATH}")
        except (OSError, SampleError, ValueError) as e:
            self.stop()
            raise SampleError(f"{e}: {net.tail(self.log)}") from None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def stop(self, timeout=10):
        """SIGTERM, SIGKILL to the group after *timeout*; the problems seen."""
        problems = []
        if self.p.poll() is not None:
            problems.append(f"server died during the sample (exit {self.p.returncode})")
        else:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                problems.append(f"no exit within {timeout}s of SIGTERM (killed)")
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait()
            # uvicorn re-raises SIGTERM once it has shut down gracefully.
            if self.p.returncode not in (0, -signal.SIGTERM) and not problems:
                problems.append(f"exit {self.p.returncode} after SIGTERM")
        out = net.tail(self.log)
        if out:
            problems.append(f"server output: {out}")
        return problems


def wrk(url, args, duration):
    cmd = ["wrk", "-t1", f"-c{args.conns}", f"-d{duration}s", "--latency", url]
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    try:
        p = subprocess.run(
            net.pinned(args.gen_cpu, cmd),
            capture_output=True,
            text=True,
            timeout=duration + 60,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise SampleError("wrk timed out") from None
    wall = time.monotonic() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    text = p.stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    total = re.search(r"(\d+) requests in", text)
    p99 = net.WRK_LAT.search(text)
    if p.returncode != 0 or not (rps and total and p99):
        raise SampleError(f"wrk exit {p.returncode}: {(text + p.stderr).strip()[-300:]}")
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if bad:
        raise SampleError(f"wrk: {bad.group(1)} non-2xx/3xx responses")
    errs = re.search(r"Socket errors: (.*)", text)
    if errs:
        raise SampleError(f"wrk socket errors: {errs.group(1)}")
    return {
        "rate": float(rps.group(1)),
        "requests": int(total.group(1)),
        "p99_ms": float(p99.group(1)) * net.UNIT[p99.group(2)],
        "gen_cpu": (ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime) / wall,
    }


def sample(loop, args, logdir):
    srv = Uvicorn(loop, args, logdir)
    try:
        if args.warmup > 0:
            wrk(srv.url + PATH, args, max(1, round(args.warmup)))
        cpu0 = net.proc_cpu(srv.p.pid)
        t0 = time.monotonic()
        res = wrk(srv.url + PATH, args, max(1, round(args.duration)))
        wall = time.monotonic() - t0
        cpu1 = net.proc_cpu(srv.p.pid)
        alive = srv.p.poll() is None
    except SampleError:
        srv.stop()
        raise
    problems = srv.stop()
    if not alive:
        raise SampleError("; ".join(problems))
    res["server_cpu"] = (cpu1 - cpu0) / wall if None not in (cpu0, cpu1) else None
    res["value"] = res["rate"]
    return res, problems


def table(results, loops, markdown):
    med = {lp: stats([s["rate"] for s in ss])[0] for lp, ss in results.items() if ss}
    p99 = {lp: net.med_of(ss, "p99_ms") for lp, ss in results.items() if ss}
    base, base99 = med.get("uvloop"), p99.get("uvloop")
    head = ["benchmark", "loop", "requests/s", "min", "max", "IQR", "p99 ms"]
    head += ["server CPU", "wrk CPU", "req/s vs uvloop", "p99 vs uvloop"]
    rows = []
    for lp in loops:
        ss = results[lp]
        if not ss:
            rows.append([BENCH, lp, "FAIL"] + [""] * (len(head) - 3))
            continue
        m, lo, hi, iqr = stats([s["rate"] for s in ss])
        rows.append(
            [BENCH, lp, net.num(m), net.num(lo), net.num(hi), net.num(iqr)]
            + [net.num(p99[lp], "{:.2f}"), net.num(net.med_of(ss, "server_cpu"), "{:.2f}")]
            + [net.gen_cell(net.med_of(ss, "gen_cpu"))]
            + [f"{m / base:.2f}x" if base else "-"]
            + [f"{p99[lp] / base99:.2f}x" if base99 else "-"]
        )
    out = render(head, rows, markdown, left=2)
    out += (
        "\n\nreq/s vs uvloop: above 1 is faster than uvloop; p99 vs uvloop: the loop's "
        "median p99 over uvloop's, below 1 is a lower (better) tail latency."
    )
    if any(r[8].endswith("*") for r in rows):
        out += (
            f"\nwrk CPU marked * (>= {net.SATURATED:.2f}): wrk's one CPU was (nearly) "
            "saturated, so the rate is partly wrk's limit."
        )
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3, help="samples per loop")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per sample")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured wrk seconds first")
    p.add_argument(
        "--loops", type=lambda v: csv(v, LOOPS), default=list(LOOPS), help=",".join(LOOPS)
    )
    p.add_argument(
        "--http",
        choices=("httptools", "h11"),
        default="httptools",
        help="uvicorn's HTTP parser (default httptools: what uvicorn picks when it is "
        "installed, as with uvicorn[standard]; h11 is pure Python and dilutes the "
        "loop's share of the work)",
    )
    p.add_argument("--conns", type=int, default=50, help="wrk connections")
    p.add_argument("--server-cpu", type=int, default=0, help="CPU for the server")
    p.add_argument("--gen-cpu", type=int, default=1, help="CPU for wrk")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    p.add_argument("--quiet", type=float, default=0.15, help="see benches/net/run.py")
    p.add_argument("--wait-quiet", type=float, default=0, metavar="S", help="ditto")
    p.add_argument("--ready-timeout", type=float, default=30, help="seconds to wait for uvicorn")
    p.add_argument("--markdown", action="store_true", help="print a markdown table")
    p.add_argument("--json", metavar="PATH", help="also write raw samples here")
    args = p.parse_args()

    if shutil.which("wrk") is None:
        sys.exit("wrk not found: install it (Debian/Ubuntu package `wrk`: apt-get install wrk)")
    notes = []
    loops = []
    for lp in args.loops:
        mods = ["fastapi", "uvicorn", args.http] + ([] if lp == "asyncio" else [lp])
        err = next(filter(None, map(net.importable, mods)), None)
        if err:
            notes.append(f"note: {lp} skipped: {err}")
        else:
            loops.append(lp)
    if not loops:
        sys.exit("nothing to run: " + "; ".join(notes))
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    if not args.no_pin and shutil.which("taskset") is None:
        notes.append("note: taskset not found (util-linux), not pinning")
        args.no_pin = True
    if args.no_pin or not {args.server_cpu, args.gen_cpu} <= allowed:
        if not args.no_pin:
            notes.append(f"note: CPUs {args.server_cpu},{args.gen_cpu} not both available")
        args.server_cpu = args.gen_cpu = None
    for n in notes:
        print(n, file=sys.stderr)

    results = {lp: [] for lp in loops}
    errors, warnings = {}, {}
    befores = []
    load0, t_start = os.getloadavg(), time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ferroloop-fastapi-") as logdir:
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
            for lp in loops[r % len(loops) :] + loops[: r % len(loops)]:
                if lp in errors:
                    continue
                befores.append(net.wait_quiet(args))
                try:
                    res, problems = sample(lp, args, logdir)
                except SampleError as e:
                    errors[lp] = str(e)
                    results[lp].clear()
                    print(f"  FAIL {lp}: {e}", file=sys.stderr)
                    continue
                results[lp].append(res)
                for prob in problems:
                    warnings.setdefault(lp, []).append(prob)
                    print(f"  WARN {lp}: {prob}", file=sys.stderr)
                print(
                    f"  {lp:9} {res['rate']:>9,.0f} req/s  p99 {res['p99_ms']:.2f} ms  "
                    f"srv cpu {res['server_cpu'] or 0:.2f} wrk cpu {res['gen_cpu']:.2f}",
                    file=sys.stderr,
                )
    load1, elapsed = os.getloadavg(), time.monotonic() - t_start
    pin = (
        f"server on CPU {args.server_cpu}, wrk on CPU {args.gen_cpu}"
        if args.server_cpu is not None
        else "not pinned"
    )
    versions = [package_version(lp) for lp in loops]
    versions += [package_version(m) for m in ("fastapi", "uvicorn", args.http)]
    print(
        f"{', '.join(versions)}; {platform.machine()}, {os.cpu_count()} CPUs; "
        f"{args.rounds} rounds, fresh server per sample, {pin}; uvicorn --http {args.http} "
        f"--no-access-log; wrk -t1 -c{args.conns} -d{max(1, round(args.duration))}s after "
        f"{args.warmup:g} s warm-up; GET {PATH}; load average {load0[0]:.2f} before, "
        f"{load1[0]:.2f} after; {elapsed / 60:.1f} min"
    )
    if befores:
        noisy = sum(x > args.quiet for x in befores)
        print(
            f"other programs' CPU use just before each sample: max {max(befores):.0%}; "
            f"{noisy} of {len(befores)} samples started above {args.quiet:.0%}"
        )
    print()
    print(table(results, loops, args.markdown))
    for lp, err in errors.items():
        print(f"\nFAIL {lp}: {err}")
    for lp, probs in warnings.items():
        print(f"\nWARN {lp} ({len(probs)} of {len(results[lp])} samples):")
        for prob in sorted(set(probs))[:5]:
            print(f"  {prob}")
    if args.json:
        save_json(
            args.json,
            args,
            {BENCH: results},
            {(BENCH, lp): e for lp, e in errors.items()},
            notes=notes,
            warnings={f"{BENCH} {lp}": w for lp, w in warnings.items()},
        )
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
