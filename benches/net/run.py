"""Network benchmarks: asyncio vs uvloop vs ferroloop, with a native ceiling.

    python3 benches/net/run.py [--rounds N] [--duration S] [--only PATTERNS]
                               [--loops asyncio,uvloop,ferroloop,native]
                               [--markdown] [--json PATH]

Every sample is a fresh server process (benches/net/server.py, or the native
echo server) pinned to one CPU, loaded by a generator pinned to the other one
(benches/net/loadgen for echo and TLS handshake benchmarks, wrk for HTTP and
HTTPS). Within each round every benchmark runs once per loop, the loop order
rotating each round. Reports median, min, max and IQR over the rounds, the
ratio to uvloop (loop / uvloop for rates, uvloop / loop for memory: > 1 is
better than uvloop) and, for plain echo benchmarks, the ratio to the native
ceiling (TLS has none). The TLS benchmarks use a CA and a server certificate
made for the run with the openssl CLI in its temporary directory.
"""

import argparse
import fnmatch
import json
import os
import platform
import re
import resource
import select
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # keep benches/ free of __pycache__
from server import HTTP_BODY  # benches/net/ is sys.path[0]

sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _report import (  # benches/_report.py
    METRICS_VARIANTS,
    add_chart_arg,
    chart,
    csv,
    package,
    render,
    save_json,
    stats,
)
from _report import version as package_version

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER = os.path.join(HERE, "server.py")
LOADGEN = os.path.join(HERE, "loadgen", "target", "release", "loadgen")
NATIVE = os.path.join(HERE, "native", "target", "release", "native-echo")

PY_LOOPS = ("asyncio", "uvloop", "ferroloop", *METRICS_VARIANTS)
DEFAULT_LOOPS = ("asyncio", "uvloop", "ferroloop", "native")
LOOPS = (*PY_LOOPS, "native")
# The class each loop's factory must produce (checked in the server's READY
# line, so a shadowing module or a fallback loop cannot pass for the real one).
LOOP_CLASS = {
    "asyncio": "asyncio.unix_events._UnixSelectorEventLoop",
    "uvloop": "uvloop.Loop",
    "ferroloop": "ferroloop._loop.Loop",
    **{name: "ferroloop._loop.Loop" for name in METRICS_VARIANTS},
}
KIB = 1024
TLS_SERVER_NAME = "localhost"  # the name the server certificate is made for and checked against


def _benches():
    """name -> spec. Echo benchmarks are grouped by (transport, size); each
    group has a `native` ceiling benchmark served by the native echo server."""
    b = {}
    for size in (1, 10, 100):
        b[f"tcp_native_{size}k"] = {
            "type": "echo",
            "net": "tcp",
            "kind": "native",
            "size": size * KIB,
        }
        for kind in ("sock", "streams", "protocol"):
            b[f"tcp_{kind}_{size}k"] = {
                "type": "echo",
                "net": "tcp",
                "kind": kind,
                "size": size * KIB,
            }
    b["unix_native_1k"] = {"type": "echo", "net": "unix", "kind": "native", "size": KIB}
    b["unix_protocol_1k"] = {"type": "echo", "net": "unix", "kind": "protocol", "size": KIB}
    for spec in b.values():
        spec["ceiling"] = f"{spec['net']}_native_{spec['size'] // KIB}k"
    # TLS 1.3 echo over TCP: no native ceiling (`ceiling` None).
    for size in (1, 16, 100):
        for kind in ("protocol", "streams"):
            b[f"tls_{kind}_{size}k"] = {
                "type": "echo",
                "net": "tcp",
                "kind": kind,
                "size": size * KIB,
                "tls": True,
                "ceiling": None,
            }
    b["tls_handshake"] = {"type": "handshake", "net": "tcp", "kind": "protocol", "tls": True}
    b["http_raw"] = {"type": "http", "net": "tcp", "kind": "http"}
    b["http_uvicorn"] = {"type": "http", "net": "tcp", "kind": "uvicorn"}
    b["https_uvicorn"] = {"type": "http", "net": "tcp", "kind": "uvicorn", "tls": True}
    b["idle_protocol"] = {"type": "idle", "net": "tcp", "kind": "protocol"}
    b["idle_streams"] = {"type": "idle", "net": "tcp", "kind": "streams"}
    return b


BENCHES = _benches()
GROUPS = {
    "echo": "tcp_*,unix_*",
    "tcp": "tcp_*",
    "unix": "unix_*",
    "native": "*_native_*",
    "http": "http_*",
    "tls": "tls_*,https_*",
    "idle": "idle_*",
    "all": "*",
}


def select_benches(value):
    patterns = []
    for tok in (s.strip() for s in value.split(",")):
        if tok:
            patterns += GROUPS.get(tok, tok).split(",")
    chosen = [n for n in BENCHES if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    for p in patterns:
        if not any(fnmatch.fnmatchcase(n, p) for n in BENCHES):
            raise argparse.ArgumentTypeError(
                f"{p!r} matches no benchmark; names: {', '.join(BENCHES)}; "
                f"groups: {', '.join(GROUPS)}"
            )
    return chosen


def select_loops(value):
    return csv(value, LOOPS)


def version(name):
    if name == "native":
        return "native (Rust, epoll)"
    return package_version(name)


class SampleError(Exception):
    pass


# -- processes -----------------------------------------------------------------


def pinned(cpu, cmd):
    """cmd run on one CPU (taskset execs it: same pid, affinity inherited by
    every thread it starts)."""
    return cmd if cpu is None else ["taskset", "-c", str(cpu), *cmd]


def tail(path, n=6):
    try:
        with open(path, errors="replace") as f:
            lines = [ln.rstrip() for ln in f if ln.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-n:])


class Server:
    """One server process: started pinned, READY line awaited and checked."""

    def __init__(self, loop, kind, address, args, tls=False):
        if loop == "native":
            cmd = [NATIVE, address]
            self.expect = "loop=native"
        else:
            cmd = [sys.executable, SERVER, loop, kind, address]
            if tls:
                cmd += ["--tls", args.tls_cert]
            self.expect = f"loop={LOOP_CLASS[loop]}"
        self.loop, self.kind = loop, kind
        fd, self.err = tempfile.mkstemp(prefix="ferroloop-net-", suffix=".err")
        with os.fdopen(fd, "w") as errf:
            self.p = subprocess.Popen(
                pinned(args.server_cpu, cmd),
                stdout=subprocess.PIPE,
                stderr=errf,
                stdin=subprocess.DEVNULL,
                text=True,
            )
        self.address = self._wait_ready(args.ready_timeout)

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise SampleError(f"server not ready after {timeout:g}s: {tail(self.err)}")
            r, _, _ = select.select([self.p.stdout], [], [], left)
            if not r:
                continue
            line = self.p.stdout.readline()
            if not line:
                self.p.wait()
                raise SampleError(
                    f"server exited with {self.p.returncode} before READY: {tail(self.err)}"
                )
            if line.startswith("READY "):
                _, family, addr, loopdesc = line.split()[:4]
                if loopdesc != self.expect:
                    self.kill()
                    raise SampleError(f"server runs {loopdesc}, expected {self.expect}")
                return family, addr

    def alive(self):
        return self.p.poll() is None

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()
        self.p.stdout.close()

    def stop(self, timeout=10):
        """SIGTERM; returns a list of problems (non-zero exit, hang, stderr)."""
        problems = []
        if self.p.poll() is not None:
            problems.append(f"server died during the sample (exit {self.p.returncode})")
        else:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                problems.append(f"server did not exit within {timeout}s of SIGTERM (killed)")
                self.p.kill()
                self.p.wait()
            ok = {0, -signal.SIGTERM} if self.loop == "native" else {0}
            if self.p.returncode not in ok and not problems:
                problems.append(f"server exited with {self.p.returncode} after SIGTERM")
        self.p.stdout.close()
        err = tail(self.err)
        if err:
            problems.append(f"server stderr: {err}")
        os.unlink(self.err)
        return problems


def proc_status(pid, field):
    """A kB field of /proc/PID/status (VmRSS, VmHWM), or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def proc_cpu(pid):
    """User + system CPU seconds of a process (all threads), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def cpu_times():
    """{cpu index: (idle ticks, total ticks)} from /proc/stat."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *vals = line.split()
                v = [int(x) for x in vals[:8]]
                out[int(name[3:])] = (v[3] + v[4], sum(v))
    return out


def busy(cpus, interval=0.3):
    """Highest busy fraction of `cpus` over `interval` seconds, measured while
    no benchmark process runs: what other programs take from the machine."""
    a = cpu_times()
    time.sleep(interval)
    b = cpu_times()
    fracs = [
        1 - (b[c][0] - a[c][0]) / max(1, b[c][1] - a[c][1])
        for c in (cpus or a)
        if c in a and c in b
    ]
    return max(fracs, default=0.0)


def wait_quiet(args):
    """Measures how busy the benchmark CPUs are right now; with --wait-quiet,
    waits (up to that many seconds) until that is below --quiet."""
    cpus = {c for c in (args.server_cpu, args.gen_cpu) if c is not None}
    b = busy(cpus)
    deadline = time.monotonic() + args.wait_quiet
    said = False
    while b > args.quiet and time.monotonic() < deadline:
        if not said:
            print(f"  (CPUs {b:.0%} busy with other work: waiting)", file=sys.stderr)
            said = True
        time.sleep(1)
        b = busy(cpus)
    return b


def loadgen_target(family, addr):
    return ["--unix", addr] if family == "unix" else ["--tcp", addr]


def address_for(spec, tmpdir):
    return f"unix:{os.path.join(tmpdir, 'echo.sock')}" if spec["net"] == "unix" else "127.0.0.1:0"


# -- one sample of each benchmark type ---------------------------------------------


def sample_echo(spec, loop, args, tmpdir):
    """An echo sample; for `handshake` benchmarks, loadgen --handshakes."""
    srv = Server(loop, spec["kind"], address_for(spec, tmpdir), args, spec.get("tls", False))
    cmd = [
        LOADGEN,
        *loadgen_target(*srv.address),
        "--conns",
        str(args.conns),
        "--duration",
        str(args.duration),
        "--warmup",
        str(args.warmup),
        "--server-pid",
        str(srv.p.pid),
    ]
    if "size" in spec:
        cmd += ["--size", str(spec["size"])]
    if spec.get("tls"):
        cmd += ["--tls", "--ca", args.tls_ca, "--server-name", TLS_SERVER_NAME]
    if spec["type"] == "handshake":
        cmd.append("--handshakes")
    elif args.gen_threads and not spec.get("tls"):
        cmd.append("--threads")
    try:
        p = subprocess.run(
            pinned(args.gen_cpu, cmd),
            capture_output=True,
            text=True,
            timeout=args.warmup + args.duration + 60,
            check=False,
        )
    except subprocess.TimeoutExpired:
        srv.kill()
        raise SampleError("load generator timed out") from None
    alive = srv.alive()
    problems = srv.stop()
    try:
        out = json.loads(p.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise SampleError(f"loadgen exit {p.returncode}: {p.stdout} {p.stderr}") from None
    if not out.get("ok"):
        raise SampleError(f"loadgen: {out.get('error')}; {'; '.join(problems)}")
    if not alive:
        raise SampleError("; ".join(problems))
    out["value"] = out["rate"]
    return out, problems


WRK_LAT = re.compile(r"^\s*99%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def check_http(host, port, tls_ca=None):
    """Two requests on one keep-alive connection: status 200, expected body.
    With `tls_ca`: over HTTPS, the certificate verified against that CA for
    TLS_SERVER_NAME."""
    import http.client

    if tls_ca:
        ctx = ssl.create_default_context(cafile=tls_ca)

        class Conn(http.client.HTTPSConnection):
            def connect(self):
                sock = socket.create_connection((self.host, self.port), self.timeout)
                self.sock = ctx.wrap_socket(sock, server_hostname=TLS_SERVER_NAME)

        conn = Conn(host, int(port), timeout=10, context=ctx)
    else:
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        for _ in range(2):
            conn.request("GET", "/")
            r = conn.getresponse()
            body = r.read()
            if r.status != 200 or body != HTTP_BODY:
                raise SampleError(f"bad HTTP response: {r.status} {body[:60]!r}")
    finally:
        conn.close()


def sample_http(spec, loop, args, tmpdir):
    tls = spec.get("tls", False)
    srv = Server(loop, spec["kind"], "127.0.0.1:0", args, tls)
    host, port = srv.address[1].rsplit(":", 1)
    try:
        check_http(host, port, args.tls_ca if tls else None)
    except (OSError, SampleError) as e:
        srv.kill()
        raise SampleError(f"HTTP check failed: {e}") from None
    duration = max(1, round(args.duration))
    cmd = [
        "wrk",
        "-t1",
        f"-c{args.http_conns}",
        f"-d{duration}s",
        "--latency",
        f"{'https' if tls else 'http'}://{host}:{port}/",
    ]
    cpu0, ru0 = proc_cpu(srv.p.pid), resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    try:
        p = subprocess.run(
            pinned(args.gen_cpu, cmd),
            capture_output=True,
            text=True,
            timeout=duration + 60,
            check=False,
        )
    except subprocess.TimeoutExpired:
        srv.kill()
        raise SampleError("wrk timed out") from None
    wall = time.monotonic() - t0
    cpu1, ru1 = proc_cpu(srv.p.pid), resource.getrusage(resource.RUSAGE_CHILDREN)
    alive = srv.alive()
    problems = srv.stop()
    text = p.stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    total = re.search(r"(\d+) requests in", text)
    p99 = WRK_LAT.search(text)
    if p.returncode != 0 or not (rps and total and p99):
        raise SampleError(f"wrk exit {p.returncode}: {(text + p.stderr).strip()[-300:]}")
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if bad:
        raise SampleError(f"wrk: {bad.group(1)} non-2xx/3xx responses")
    errs = re.search(r"Socket errors: (.*)", text)
    if errs:
        raise SampleError(f"wrk socket errors: {errs.group(1)}")
    if not alive:
        raise SampleError("; ".join(problems))
    wrk_cpu = (ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime) / wall
    out = {
        "rate": float(rps.group(1)),
        "requests": int(total.group(1)),
        "p99_ms": float(p99.group(1)) * UNIT[p99.group(2)],
        "server_cpu": (cpu1 - cpu0) / wall if cpu0 is not None and cpu1 is not None else None,
        "gen_cpu": wrk_cpu,
    }
    out["value"] = out["rate"]
    return out, problems


def sample_idle(spec, loop, args, tmpdir):
    srv = Server(loop, spec["kind"], "127.0.0.1:0", args)
    time.sleep(0.3)
    before = proc_status(srv.p.pid, "VmRSS")
    cmd = [LOADGEN, *loadgen_target(*srv.address), "--hold", str(args.idle_conns)]
    gen = subprocess.Popen(
        pinned(args.gen_cpu, cmd),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        r, _, _ = select.select([gen.stdout], [], [], 120)
        line = gen.stdout.readline() if r else ""
        try:
            out = json.loads(line)
        except ValueError:
            out = {"ok": False, "error": f"no answer from loadgen: {line!r}"}
        if out.get("ok"):
            time.sleep(0.5)  # let the server settle (deferred frees, GC)
            after = proc_status(srv.p.pid, "VmRSS")
            peak = proc_status(srv.p.pid, "VmHWM")
    finally:
        gen.stdin.close()  # the generator closes its connections and exits
        try:
            gen.wait(30)
        except subprocess.TimeoutExpired:
            gen.kill()
            gen.wait()
        gen.stdout.close()
    alive = srv.alive()
    problems = srv.stop()
    if not out.get("ok"):
        raise SampleError(f"loadgen: {out.get('error')}; {'; '.join(problems)}")
    if not alive:
        raise SampleError("; ".join(problems))
    if before is None or after is None:
        raise SampleError("could not read the server's RSS from /proc")
    n = out["held"]
    res = {
        "conns": n,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "peak_kib": peak,
        "connect_seconds": out["seconds"],
        "bytes_per_conn": (after - before) * 1024 / n,
    }
    res["value"] = res["bytes_per_conn"]
    return res, problems


SAMPLERS = {
    "echo": sample_echo,
    "handshake": sample_echo,
    "http": sample_http,
    "idle": sample_idle,
}


# -- tables --------------------------------------------------------------------


def med_of(samples, key):
    vals = [s[key] for s in samples if s.get(key) is not None]
    return statistics.median(vals) if vals else None


SATURATED = 0.9
SATURATED_NOTE = f"gen CPU marked * (>= {SATURATED:.2f})"


def gen_cell(x):
    return "" if x is None else f"{x:.2f}" + (" *" if x >= SATURATED else "")


def num(x, fmt="{:,.0f}"):
    return "" if x is None else fmt.format(x)


def tables(results, plan, markdown):
    out = []
    med = {
        (b, lp): statistics.median([s["value"] for s in ss])
        for b, loops in results.items()
        for lp, ss in loops.items()
        if ss
    }

    def ratio(x, base, invert=False):
        if x is None or not base:
            return "-"
        return f"{(base / x if invert else x / base):.2f}x"

    def section(kind, head, extra, note=None):
        """One table: the common columns, then extra(bench, loop, samples, median)."""
        rows = []
        for bench, loops in plan:
            if BENCHES[bench]["type"] != kind:
                continue
            for lp in loops:
                ss = results[bench][lp]
                if not ss:
                    rows.append([bench, lp, "FAIL"] + [""] * (len(head) - 3))
                    continue
                m, lo, hi, iqr = stats([s["value"] for s in ss])
                rows.append(
                    [bench, lp, num(m), num(lo), num(hi), num(iqr)] + extra(bench, lp, ss, m)
                )
        if rows:
            out.append(render(head, rows, markdown, left=2))
            if note and any(r[8].endswith("*") for r in rows):
                out[-1] += "\n\n" + note

    def echo_cells(bench, lp, ss, m):
        base = med.get((bench, "uvloop"))
        ceiling = BENCHES[bench]["ceiling"]  # None for TLS: no native ceiling
        ceil = ceiling and med.get((ceiling, "native"))
        return [
            num(med_of(ss, "p99_us")),
            num(med_of(ss, "server_cpu"), "{:.2f}"),
            gen_cell(med_of(ss, "gen_cpu")),
            "-" if lp == "native" else ratio(m, base),
            "-" if lp == "native" else ratio(m, ceil),
        ]

    def handshake_cells(bench, lp, ss, m):
        p99 = med_of(ss, "p99_us")
        return [
            num(p99 and p99 / 1000, "{:.2f}"),
            num(med_of(ss, "server_cpu"), "{:.2f}"),
            gen_cell(med_of(ss, "gen_cpu")),
            ratio(m, med.get((bench, "uvloop"))),
        ]

    def http_cells(bench, lp, ss, m):
        return [
            num(med_of(ss, "p99_ms"), "{:.2f}"),
            num(med_of(ss, "server_cpu"), "{:.2f}"),
            gen_cell(med_of(ss, "gen_cpu")),
            ratio(m, med.get((bench, "uvloop"))),
        ]

    def idle_cells(bench, lp, ss, m):
        peak = med_of(ss, "peak_kib")
        return [
            num(peak and peak / 1024, "{:.1f}"),
            ratio(m, med.get((bench, "uvloop")), invert=True),
        ]

    section(
        "echo",
        ["benchmark", "loop", "round trips/s", "min", "max", "IQR", "p99 µs"]
        + ["server CPU", "gen CPU", "vs uvloop", "vs native"],
        echo_cells,
        f"{SATURATED_NOTE}: the load generator's CPU was (nearly) saturated "
        "too, so the rate is partly the generator's limit (a lower bound for "
        "that server); the kernel's loopback TCP work is shared between both sides.",
    )
    section(
        "handshake",
        ["benchmark", "loop", "handshakes/s", "min", "max", "IQR", "p99 ms"]
        + ["server CPU", "gen CPU", "vs uvloop"],
        handshake_cells,
        f"{SATURATED_NOTE}: the load generator's CPU was (nearly) saturated, "
        "so the rate is partly the generator's limit (a lower bound for that server).",
    )
    section(
        "http",
        ["benchmark", "loop", "requests/s", "min", "max", "IQR", "p99 ms"]
        + ["server CPU", "wrk CPU", "vs uvloop"],
        http_cells,
        f"wrk CPU marked * (>= {SATURATED:.2f}): wrk's one CPU was (nearly) "
        "saturated, so the rate is partly wrk's limit (a lower bound for that server).",
    )
    section(
        "idle",
        ["benchmark", "loop", "bytes/conn", "min", "max", "IQR", "peak RSS MiB", "vs uvloop"],
        idle_cells,
    )
    return "\n\n".join(out)


# -- setup ---------------------------------------------------------------------


def build(notes):
    """cargo build --release of the generator and the native server (the
    generator's first build also fetches its crates: rustls, ring)."""
    ok = {}
    for name, binary in (("loadgen", LOADGEN), ("native", NATIVE)):
        manifest = os.path.join(HERE, name, "Cargo.toml")
        if shutil.which("cargo") is None:
            ok[name] = os.path.exists(binary)
            if not ok[name]:
                notes.append(f"note: cargo not found and {binary} missing")
            continue
        if not os.path.exists(binary):
            print(f"building {name} (cargo build --release)", file=sys.stderr)
        p = subprocess.run(
            ["cargo", "build", "--release", "--quiet", "--manifest-path", manifest],
            capture_output=True,
            text=True,
            check=False,
        )
        ok[name] = p.returncode == 0 and os.path.exists(binary)
        if not ok[name]:
            notes.append(f"note: building {name} failed: {p.stderr.strip()[-500:]}")
    return ok


def openssl(*cmd, cwd):
    p = subprocess.run(["openssl", *cmd], cwd=cwd, capture_output=True, text=True, check=False)
    if p.returncode != 0:
        raise OSError(f"openssl {cmd[0]}: {(p.stderr or p.stdout).strip()[-300:]}")


def make_certs(tmpdir):
    """A fresh CA and a server certificate for TLS_SERVER_NAME, both ECDSA
    P-256, valid for 2 days, made with the openssl CLI in `tmpdir`. Returns
    (server PEM with key and certificate, CA PEM)."""
    d = os.path.join(tmpdir, "tls")
    os.makedirs(d, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    openssl(
        "req", "-x509", "-new", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=ferroloop benches CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )  # fmt: skip
    openssl(
        "req", "-new", *ec, "-keyout", "server.key", "-out", "server.csr",
        "-subj", f"/CN={TLS_SERVER_NAME}",
        cwd=d,
    )  # fmt: skip
    with open(os.path.join(d, "server.ext"), "w") as f:
        f.write(
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature\n"
            "extendedKeyUsage=serverAuth\n"
            f"subjectAltName=DNS:{TLS_SERVER_NAME}\n"
        )
    openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "server.ext", "-out", "server.crt",
        cwd=d,
    )  # fmt: skip
    cert = os.path.join(d, "server.pem")
    with open(cert, "w") as out:
        for name in ("server.key", "server.crt"):
            with open(os.path.join(d, name)) as f:
                out.write(f.read())
    return cert, os.path.join(d, "ca.pem")


def importable(module):
    p = subprocess.run(
        [sys.executable, "-c", f"import {module}"], capture_output=True, text=True, check=False
    )
    if p.returncode == 0:
        return None
    lines = p.stderr.strip().splitlines()
    return lines[-1] if lines else f"exit {p.returncode}"


def make_plan(args, notes, tmpdir):
    """[(bench, [loops])] after dropping what cannot run here. Makes the TLS
    certificates (args.tls_cert, args.tls_ca) when a TLS benchmark is selected."""
    built = build(notes)
    if not built["loadgen"]:
        sys.exit("the load generator could not be built (see above)")
    loops = []
    for lp in args.loops:
        if lp == "native":
            if built["native"]:
                loops.append(lp)
            continue
        err = None if lp == "asyncio" else importable(package(lp))
        if err:
            notes.append(f"note: {lp} skipped: import failed: {err}")
        else:
            loops.append(lp)
    py = [lp for lp in loops if lp in PY_LOOPS]
    args.tls_cert = args.tls_ca = tls_error = None
    if any(BENCHES[b].get("tls") for b in args.only):
        if shutil.which("openssl") is None:
            tls_error = "no certificates: the openssl CLI is not installed"
        else:
            try:
                args.tls_cert, args.tls_ca = make_certs(tmpdir)
            except OSError as e:
                tls_error = f"no certificates: {e}"
    missing = {}
    for bench in args.only:
        spec = BENCHES[bench]
        why = None
        if spec["type"] == "http":
            why = None if shutil.which("wrk") else "wrk not installed (apt-get install wrk)"
            mod = "httptools" if spec["kind"] == "http" else "uvicorn"
            why = why or (importable(mod) and f"{mod} not importable (pip install {mod})")
            if spec["kind"] == "uvicorn" and not why:
                why = importable("httptools") and "httptools not importable"
        if spec["type"] == "idle":
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            if soft < args.idle_conns + 64:
                why = f"RLIMIT_NOFILE {soft} < {args.idle_conns} connections"
        if spec.get("tls") and not why:
            why = tls_error
        if why:
            missing[bench] = why
    for bench, why in missing.items():
        notes.append(f"note: {bench} skipped: {why}")

    plan = []
    selected = [b for b in args.only if b not in missing]
    ceilings = {BENCHES[b].get("ceiling") for b in selected} - {None}
    for bench in BENCHES:  # in the canonical order: ceilings next to their group
        spec = BENCHES[bench]
        if spec["kind"] == "native":
            if "native" in loops and (bench in selected or bench in ceilings):
                plan.append((bench, ["native"]))
        elif bench in selected and py:
            plan.append((bench, py))
    if not plan:
        sys.exit("nothing to run")
    return plan, loops


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3, help="samples per benchmark per loop")
    p.add_argument(
        "--only",
        type=select_benches,
        default=list(BENCHES),
        help="comma-separated names, fnmatch patterns or groups ("
        + ", ".join(GROUPS)
        + "); names: "
        + ", ".join(BENCHES),
    )
    p.add_argument(
        "--loops",
        type=select_loops,
        default=list(DEFAULT_LOOPS),
        help="comma-separated loops: "
        + ",".join(LOOPS)
        + " (native: the ceiling; ferroloop-off/-precise: FERROLOOP_METRICS=0/precise)",
    )
    p.add_argument("--duration", type=float, default=3.0, help="measured seconds per sample")
    p.add_argument("--warmup", type=float, default=0.5, help="echo: unmeasured seconds first")
    p.add_argument("--conns", type=int, default=10, help="echo connections")
    p.add_argument("--http-conns", type=int, default=50, help="wrk connections")
    p.add_argument("--idle-conns", type=int, default=10_000, help="idle benchmark connections")
    p.add_argument("--server-cpu", type=int, default=0, help="CPU for the server")
    p.add_argument("--gen-cpu", type=int, default=1, help="CPU for the load generator")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    p.add_argument(
        "--gen-threads",
        action="store_true",
        help="echo generator: one thread per connection instead of one epoll thread "
        "(plain echo only: TLS always uses the epoll driver)",
    )
    p.add_argument(
        "--quiet",
        type=float,
        default=0.15,
        help="busy fraction of the benchmark CPUs (before a sample, from other "
        "programs) above which the machine counts as busy (default 0.15)",
    )
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0,
        metavar="S",
        help="before each sample, wait up to S seconds for the CPUs to be quiet",
    )
    p.add_argument("--ready-timeout", type=float, default=30, help="seconds to wait for READY")
    p.add_argument("--markdown", action="store_true", help="print markdown tables")
    p.add_argument("--json", metavar="PATH", help="also write raw samples here")
    add_chart_arg(p)
    args = p.parse_args()

    notes = []
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    if not args.no_pin and shutil.which("taskset") is None:
        notes.append("note: taskset not found (util-linux), not pinning")
        args.no_pin = True
    if args.no_pin or not {args.server_cpu, args.gen_cpu} <= allowed:
        if not args.no_pin:
            notes.append(
                f"note: CPUs {args.server_cpu},{args.gen_cpu} not both available, not pinning"
            )
        args.server_cpu = args.gen_cpu = None
    elif args.server_cpu == args.gen_cpu:
        notes.append("note: server and generator share one CPU")
    # Raise the fd limit to the hard limit; every child inherits it.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    tmpdir = tempfile.mkdtemp(prefix="ferroloop-net-")  # sockets, TLS certificates
    try:
        plan, loops = make_plan(args, notes, tmpdir)
        for n in notes:
            print(n, file=sys.stderr)
        results = {b: {lp: [] for lp in lps} for b, lps in plan}
        errors, warnings = {}, {}
        load0 = os.getloadavg()
        t_start = time.monotonic()
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
            for bench, lps in plan:
                spec = BENCHES[bench]
                order = lps[r % len(lps) :] + lps[: r % len(lps)]
                for lp in order:
                    if (bench, lp) in errors:
                        continue  # failed before: don't repeat (it may hang every time)
                    other = wait_quiet(args)
                    try:
                        res, problems = SAMPLERS[spec["type"]](spec, lp, args, tmpdir)
                    except SampleError as e:
                        errors[bench, lp] = str(e)
                        results[bench][lp].clear()
                        print(f"  FAIL {bench} {lp}: {e}", file=sys.stderr)
                        continue
                    res["busy_before"] = other
                    results[bench][lp].append(res)
                    for prob in problems:
                        warnings.setdefault((bench, lp), []).append(prob)
                        print(f"  WARN {bench} {lp}: {prob}", file=sys.stderr)
                    unit = "bytes/conn" if spec["type"] == "idle" else "/s"
                    extra = (
                        f" p99 {res['p99_us']:.0f} µs cpu srv {res['server_cpu']} "
                        f"gen {res['gen_cpu']}"
                        if spec["type"] in ("echo", "handshake")
                        else ""
                    )
                    print(
                        f"  {bench:18} {lp:9} {res['value']:>10,.0f} {unit}{extra}", file=sys.stderr
                    )
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    elapsed = time.monotonic() - t_start
    load1 = os.getloadavg()

    befores = [s["busy_before"] for b in results.values() for ss in b.values() for s in ss]
    noisy = sum(x > args.quiet for x in befores)
    pin = (
        f"server on CPU {args.server_cpu}, generator on CPU {args.gen_cpu}"
        if args.server_cpu is not None
        else "not pinned"
    )
    print(
        f"{', '.join(version(x) for x in loops)}; {platform.machine()}, {os.cpu_count()} CPUs; "
        f"{args.rounds} rounds, fresh server per sample, {pin}; echo: {args.conns} connections, "
        f"{args.warmup:g} s warm-up + {args.duration:g} s; http: wrk -t1 -c{args.http_conns} "
        f"-d{max(1, round(args.duration))}s; idle: {args.idle_conns} connections; "
        + (
            "TLS 1.3 with an ECDSA P-256 certificate, loadgen: TLS13_AES_128_GCM_SHA256, "
            "wrk: OpenSSL's choice; "
            if any(BENCHES[b].get("tls") for b, _ in plan)
            else ""
        )
        + f"load average {load0[0]:.2f} before, {load1[0]:.2f} after; {elapsed / 60:.1f} min"
    )
    if befores:
        print(
            f"other programs' CPU use just before each sample (max of the two CPUs): median "
            f"{statistics.median(befores):.0%}, max {max(befores):.0%}; {noisy} of "
            f"{len(befores)} samples started above {args.quiet:.0%}"
        )
    print("\n".join(notes + [""]))
    print(tables(results, plan, args.markdown))
    for (bench, lp), err in errors.items():
        print(f"\nFAIL {bench} {lp}: {err}")
    for (bench, lp), probs in warnings.items():
        uniq = sorted(set(probs))
        print(f"\nWARN {bench} {lp} ({len(probs)} of {len(results[bench][lp])} samples):")
        for prob in uniq[:5]:
            print(f"  {prob}")
    if args.json:
        warned = {f"{b} {lp}": w for (b, lp), w in warnings.items()}
        save_json(args.json, args, results, errors, notes=notes, warnings=warned)
    chart(
        args,
        "networking (benches/net/run.py)",
        results,
        lambda b: BENCHES[b]["type"] != "idle",  # idle: bytes per connection
        lambda s: s["value"],
    )
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
