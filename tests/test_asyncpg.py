"""asyncpg against a real PostgreSQL server, on asyncio's loop and ferroloop.

The server is Debian's, started for the session by ``scripts/postgres.py``
(installed by ``scripts/test``): initialised into a temporary directory as an
unprivileged user, listening on a Unix socket and on 127.0.0.1 with TLS, and
stopped at the end, also when a test fails. The tests skip, with the reason,
only when the server binaries could not be installed.

Each test also checks that it leaves no fd and no task behind.
"""

import asyncio
import io
import json
import os
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path

import asyncpg
import pytest
from conftest import settled_fd_count

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "postgres.py"
NO_SERVER = 3  # scripts/postgres.py's exit status: no server binaries
CONNECTION_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
)


class Server:
    """A running server: how to reach it, and its restart."""

    def __init__(self, info):
        self.info = info

    def tcp(self, **kw):
        i = self.info
        return dict(
            host=i["host"],
            port=i["port"],
            user=i["user"],
            password=i["password"],
            database=i["database"],
            ssl=False,
            **kw,
        )

    def unix(self, **kw):
        i = self.info
        return dict(
            host=i["unix_socket_dir"], port=i["port"], user=i["user"], database=i["database"], **kw
        )

    def tls(self, **kw):
        ctx = ssl.create_default_context(cafile=self.info["ssl_cert"])
        return {**self.tcp(**kw), "ssl": ctx}

    def restart(self):
        run_script("restart", self.info["dir"])


def run_script(*args):
    r = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if r.returncode != 0:
        raise RuntimeError(f"scripts/postgres.py {' '.join(args)}: {r.returncode}\n{r.stderr}")
    return r.stdout


@pytest.fixture(scope="session")
def pg():
    base = tempfile.mkdtemp(prefix="ferroloop-pg-")
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "start", base],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    if r.returncode == NO_SERVER:
        os.rmdir(base)
        pytest.skip(f"no PostgreSQL server could be installed: {r.stderr.strip()}")
    try:
        assert r.returncode == 0, f"scripts/postgres.py start failed:\n{r.stderr}"
        yield Server(json.loads(r.stdout.splitlines()[-1]))
    finally:
        run_script("stop", base)


@pytest.fixture
def check_leaks(loop, run):
    """Runs ``main`` and checks that it left no fd open and no task alive."""

    def check(main, timeout=60):
        async def wrapper():
            before = await settled_fd_count()
            result = await main()
            after = await settled_fd_count()
            assert after == before, f"fds: {before} before, {after} after"
            others = asyncio.all_tasks() - {asyncio.current_task()}
            assert not others, f"tasks left: {others}"
            return result

        return run(wrapper(), timeout)

    return check


def test_connect_over_tcp_unix_socket_and_tls(check_leaks, pg):
    async def main():
        for how, kw in (("tcp", pg.tcp()), ("unix", pg.unix()), ("tls", pg.tls())):
            conn = await asyncpg.connect(**kw)
            try:
                assert await conn.fetchval("SELECT $1::text || '!'", how) == how + "!"
                encrypted = await conn.fetchval(
                    "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
                )
                assert encrypted is (how == "tls"), how
                addr = await conn.fetchval("SELECT inet_client_addr()")
                assert (addr is None) is (how == "unix"), how
            finally:
                await conn.close()

    check_leaks(main)


def test_pool_of_20_runs_10k_queries_from_100_tasks(check_leaks, pg):
    async def main():
        async with asyncpg.create_pool(**pg.tcp(), min_size=20, max_size=20) as pool:

            async def worker(w):
                total = 0
                for i in range(100):
                    total += await pool.fetchval("SELECT $1::int + $2::int", w, i)
                return total

            totals = await asyncio.gather(*(worker(w) for w in range(100)))
            assert totals == [100 * w + sum(range(100)) for w in range(100)]
            backends = await pool.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND backend_type = "
                "'client backend'",
                pg.info["user"],
            )
            assert 1 <= backends <= 20

    check_leaks(main)


def test_prepared_statements(check_leaks, pg):
    async def main():
        conn = await asyncpg.connect(**pg.unix())
        try:
            stmt = await conn.prepare("SELECT $1::int * 2 AS doubled, $2::text AS name")
            assert [p.name for p in stmt.get_parameters()] == ["int4", "text"]
            assert [a.name for a in stmt.get_attributes()] == ["doubled", "name"]
            for i in range(50):
                row = await stmt.fetchrow(i, f"n{i}")
                assert (row["doubled"], row["name"]) == (2 * i, f"n{i}")
            series = await conn.prepare("SELECT g FROM generate_series(1, $1::int) g")
            async with conn.transaction():
                seen = [r["g"] async for r in series.cursor(1000, prefetch=100)]
            assert seen == list(range(1, 1001))
        finally:
            await conn.close()

    check_leaks(main)


def test_transactions_commit_rollback_and_savepoints(check_leaks, pg):
    async def main():
        conn = await asyncpg.connect(**pg.tcp())
        try:
            await conn.execute("CREATE TEMP TABLE t (v int)")
            async with conn.transaction():
                await conn.execute("INSERT INTO t VALUES (1)")
            with pytest.raises(ZeroDivisionError):
                async with conn.transaction():
                    await conn.execute("INSERT INTO t VALUES (2)")
                    raise ZeroDivisionError
            async with conn.transaction():
                await conn.execute("INSERT INTO t VALUES (3)")
                with pytest.raises(asyncpg.UniqueViolationError):
                    async with conn.transaction():  # a savepoint
                        await conn.execute("INSERT INTO t VALUES (4)")
                        await conn.execute("CREATE UNIQUE INDEX ON t (v)")
                        await conn.execute("INSERT INTO t VALUES (4)")
            assert [r["v"] for r in await conn.fetch("SELECT v FROM t ORDER BY v")] == [1, 3]
            assert not conn.is_in_transaction()
        finally:
            await conn.close()

    check_leaks(main)


def test_copy_in_and_out_of_100k_rows(check_leaks, pg):
    n = 100_000

    async def main():
        conn = await asyncpg.connect(**pg.tcp())
        try:
            await conn.execute("CREATE TEMP TABLE c (id int PRIMARY KEY, label text)")
            rows = [(i, f"row {i}") for i in range(n)]
            assert await conn.copy_records_to_table("c", records=rows) == f"COPY {n}"
            stats = await conn.fetchrow("SELECT count(*), sum(id) FROM c")
            assert tuple(stats) == (n, n * (n - 1) // 2)

            out = io.BytesIO()
            assert await conn.copy_from_table("c", output=out, format="csv") == f"COPY {n}"
            lines = out.getvalue().decode().splitlines()
            assert len(lines) == n and lines[12345] == "12345,row 12345"

            # COPY FROM a file-like source, back into a second table.
            await conn.execute("CREATE TEMP TABLE c2 (id int, label text)")
            out.seek(0)
            assert await conn.copy_to_table("c2", source=out, format="csv") == f"COPY {n}"
            same = await conn.fetchval(
                "SELECT count(*) FROM c JOIN c2 USING (id) WHERE c.label = c2.label"
            )
            assert same == n
        finally:
            await conn.close()

    check_leaks(main)


def test_listen_notify(check_leaks, pg):
    async def main():
        listener = await asyncpg.connect(**pg.unix())
        sender = await asyncpg.connect(**pg.tcp())
        got = []
        all_in = asyncio.Event()

        def on_notify(conn, pid, channel, payload):
            got.append((channel, payload))
            if len(got) == 100:
                all_in.set()

        try:
            await listener.add_listener("ferroloop_chan", on_notify)
            for i in range(100):
                await sender.execute(f"NOTIFY ferroloop_chan, 'message {i}'")
            await asyncio.wait_for(all_in.wait(), 10)
            assert got == [("ferroloop_chan", f"message {i}") for i in range(100)]
            await listener.remove_listener("ferroloop_chan", on_notify)
        finally:
            await listener.close()
            await sender.close()

    check_leaks(main)


def test_query_cancelled_by_timeout(check_leaks, pg):
    """asyncpg cancels a timed-out query through a second connection
    (PostgreSQL's cancel request); the first stays usable."""

    async def main():
        conn = await asyncpg.connect(**pg.tcp())
        try:
            started = asyncio.get_running_loop().time()
            with pytest.raises(asyncio.TimeoutError):
                await conn.fetchval("SELECT pg_sleep(30)", timeout=0.3)
            assert asyncio.get_running_loop().time() - started < 10
            assert await conn.fetchval("SELECT 41 + 1") == 42
            sleeping = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%'"
            )
            assert sleeping == 0
        finally:
            await conn.close()

    check_leaks(main)


def test_server_restart_under_a_live_pool(check_leaks, pg):
    """The server goes away under a pool in use: queries fail with asyncpg's
    connection errors (or OSError), then the pool recovers. (A query sent
    between the server's FATAL message and the connection's loss may get
    asyncpg's own InternalClientError, on either loop: asyncpg's race.)"""

    async def main():
        loop = asyncio.get_running_loop()
        async with asyncpg.create_pool(**pg.tcp(), min_size=5, max_size=5) as pool:
            assert await pool.fetchval("SELECT 1") == 1
            pids_before = {await pool.fetchval("SELECT pg_backend_pid()") for _ in range(5)}
            restarting = loop.run_in_executor(None, pg.restart)
            errors = []
            while not restarting.done():
                try:
                    await pool.fetchval("SELECT 1")
                except CONNECTION_ERRORS as exc:
                    errors.append(type(exc))
                await asyncio.sleep(0.01)
            await restarting
            # Idle connections died with the old server: the next use of
            # each fails once, then the pool reconnects.
            for _ in range(50):
                try:
                    assert await pool.fetchval("SELECT 2") == 2
                    break
                except CONNECTION_ERRORS as exc:
                    errors.append(type(exc))
            else:
                raise AssertionError(f"the pool did not recover: {errors}")
            assert errors, "no query failed while the server restarted"
            results = await asyncio.gather(*(pool.fetchval("SELECT $1::int", i) for i in range(20)))
            assert results == list(range(20))
            pids_after = {await pool.fetchval("SELECT pg_backend_pid()") for _ in range(5)}
            assert not pids_after & pids_before

    check_leaks(main)
