#!/usr/bin/env python3
"""A throwaway PostgreSQL server for the asyncpg tests and benchmarks.

    scripts/postgres.py install        # Debian's server package, if missing (root)
    scripts/postgres.py start DIR      # initdb into DIR, TLS certificate, start;
                                       # prints the connection as JSON
    scripts/postgres.py restart DIR    # stop (fast) and start again, same port
    scripts/postgres.py stop DIR       # stop and remove DIR

The server runs as an unprivileged user (initdb and postgres refuse root:
the `postgres` user Debian's package makes, or the caller when not root),
listens on a Unix socket in DIR and on 127.0.0.1 at a free port with TLS on
(a self-signed certificate made at start, valid for 127.0.0.1 and
localhost), and takes the password of the superuser `ferroloop` over TCP
(scram-sha-256) and trusts the Unix socket. fsync is off: it is a test
server. Standard library only, so it runs before anything is installed.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
from pathlib import Path

USER = "ferroloop"
PASSWORD = "ferroloop-test"
DATABASE = "postgres"
PACKAGE = "postgresql"


def server_bin() -> str | None:
    """The directory holding pg_ctl, initdb and postgres, newest version first."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    if found:
        return os.path.dirname(found[-1])
    pg_ctl = shutil.which("pg_ctl")
    return os.path.dirname(os.path.realpath(pg_ctl)) if pg_ctl else None


def install() -> int:
    if server_bin():
        print(f"postgres: server binaries in {server_bin()}")
        return 0
    if os.geteuid() != 0:
        print(
            f"postgres: no server binaries and not root: install Debian's {PACKAGE!r} package",
            file=sys.stderr,
        )
        return 3
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", PACKAGE],
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", PACKAGE],
    ):
        r = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, check=False)
        if cmd[1] == "install" and r.returncode == 0 and server_bin():
            print(f"postgres: installed, server binaries in {server_bin()}")
            return 0
    print(f"postgres: apt-get could not install {PACKAGE!r}", file=sys.stderr)
    return 3


def run_as() -> str | None:
    """The user the server runs as (None: the caller)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/bin/false", "postgres"],
            check=True,
        )
    return "postgres"


def as_user(cmd: list[str], user: str | None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, user=user, group=_group(user), check=False, text=True, **kw)


def _group(user: str | None) -> int | None:
    return pwd.getpwnam(user).pw_gid if user else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chown_tree(path: str, user: str | None) -> None:
    if not user:
        return
    pw = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
            os.chown(name, pw.pw_uid, pw.pw_gid)


def info_path(base: str) -> str:
    return os.path.join(base, "server.json")


def start(base: str) -> int:
    bindir = server_bin()
    if not bindir:
        print("postgres: no server binaries (scripts/postgres.py install)", file=sys.stderr)
        return 3
    user = run_as()
    base = os.path.abspath(base)
    data, sock = os.path.join(base, "data"), os.path.join(base, "sock")
    os.makedirs(sock, exist_ok=True)
    os.chmod(base, 0o755)
    pwfile = os.path.join(base, "pw")
    with open(pwfile, "w") as f:
        f.write(PASSWORD + "\n")
    cert, key = os.path.join(base, "server.crt"), os.path.join(base, "server.key")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"]
        + ["-subj", "/CN=localhost", "-keyout", key, "-out", cert]
        + ["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.chmod(key, 0o600)
    chown_tree(base, user)
    r = as_user(
        [os.path.join(bindir, "initdb"), "-D", data, "-U", USER, "--pwfile", pwfile]
        + ["--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync"],
        user,
        capture_output=True,
    )
    if r.returncode != 0:
        print(f"postgres: initdb failed:\n{r.stdout}{r.stderr}", file=sys.stderr)
        return 1
    port = free_port()
    with open(os.path.join(data, "postgresql.conf"), "a") as f:
        f.write(
            f"\nport = {port}\nlisten_addresses = '127.0.0.1'\n"
            f"unix_socket_directories = '{sock}'\n"
            f"ssl = on\nssl_cert_file = '{cert}'\nssl_key_file = '{key}'\n"
            "max_connections = 200\nfsync = off\nsynchronous_commit = off\n"
            "full_page_writes = off\n"
        )
    info = {
        "host": "127.0.0.1",
        "port": port,
        "unix_socket_dir": sock,
        "user": USER,
        "password": PASSWORD,
        "database": DATABASE,
        "ssl_cert": cert,
        "dir": base,
        "bin": bindir,
        "run_as": user,
    }
    with open(info_path(base), "w") as f:
        json.dump(info, f)
    if pg_ctl(base, "start") != 0:
        return 1
    print(json.dumps(info))
    return 0


def pg_ctl(base: str, action: str) -> int:
    with open(info_path(base)) as f:
        info = json.load(f)
    data = os.path.join(base, "data")
    cmd = [os.path.join(info["bin"], "pg_ctl"), "-D", data, "-w", "-t", "60"]
    if action == "start":
        cmd += ["-l", os.path.join(base, "server.log"), "start"]
    else:
        cmd += ["-m", "fast", action]
    r = as_user(cmd, info["run_as"], capture_output=True)
    if r.returncode != 0:
        log = os.path.join(base, "server.log")
        tail = Path(log).read_text()[-3000:] if os.path.exists(log) else ""
        print(f"postgres: pg_ctl {action} failed:\n{r.stdout}{r.stderr}{tail}", file=sys.stderr)
    return r.returncode


def restart(base: str) -> int:
    # Not `pg_ctl restart`: it would start the server without the log file,
    # writing to (and holding open) pg_ctl's own output.
    return pg_ctl(base, "stop") or pg_ctl(base, "start")


def stop(base: str) -> int:
    rc = 0
    if os.path.exists(os.path.join(base, "data", "postmaster.pid")):
        rc = pg_ctl(base, "stop")
    shutil.rmtree(base, ignore_errors=True)
    return rc


def main(argv: list[str]) -> int:
    if argv[:1] == ["install"] and len(argv) == 1:
        return install()
    if len(argv) == 2 and argv[0] in ("start", "restart", "stop"):
        return {"start": start, "restart": restart, "stop": stop}[argv[0]](argv[1])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
