"""Smoke test of an installed ferroloop (run by scripts/wheels in a fresh venv).

Checks that it runs in a venv with no cargo or rustc on PATH, that
ferroloop is imported from the venv (not from a source tree), that
examples/hello.py runs on ferroloop's loop and prints what it should, and
that TCP echo round trips (an asyncio streams server and a Protocol server,
a short line and one larger than a socket buffer) work on it. Exits non-zero, with the reason, on any failure.

    python scripts/wheel_smoke.py EXAMPLES_DIR
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path


def fail(msg: str) -> None:
    print(f"SMOKE FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def check_environment() -> None:
    if sys.prefix == sys.base_prefix:
        fail(f"{sys.executable} is not a venv's interpreter")
    for tool in ("cargo", "rustc"):
        if shutil.which(tool):
            fail(f"{tool} is on PATH ({shutil.which(tool)}): the point is to run without Rust")


def check_import() -> None:
    import ferroloop
    from ferroloop import _ferroloop

    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    for mod in (ferroloop, _ferroloop):
        where = Path(mod.__file__).resolve()
        if site not in where.parents:
            fail(f"{mod.__name__} imported from {where}, not from this venv's {site}")
    if not re.fullmatch(r"\d+\.\d+\.\d+\S*", ferroloop.__version__):
        fail(f"odd ferroloop.__version__: {ferroloop.__version__!r}")
    print(f"import: ferroloop {ferroloop.__version__} from {Path(ferroloop.__file__).parent}")


def check_hello(examples: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(examples / "hello.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        fail(f"hello.py exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
    lines = proc.stdout.splitlines()
    if not lines or not lines[0].startswith("running on ferroloop._loop.Loop: <Loop running=True"):
        fail(f"hello.py did not report running on ferroloop's loop:\n{proc.stdout}")
    if len(lines) != 2 or not re.match(r"20k tasks\+futures, median of 5: asyncio ", lines[1]):
        fail(f"hello.py's timing line is missing:\n{proc.stdout}")
    if proc.stderr.strip():
        fail(f"hello.py wrote to stderr:\n{proc.stderr}")
    print(f"hello.py: {lines[0]}")


class EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def echo_round_trips() -> str:
    import ferroloop

    loop = asyncio.get_running_loop()
    if not isinstance(loop, ferroloop.Loop):
        fail(f"ferroloop.run ran on {type(loop)!r}")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            writer.write(line.upper())
            await writer.drain()
        writer.close()
        await writer.wait_closed()

    payload = b"x" * 200_000 + b"\n"  # larger than one socket buffer: flow control
    results = []
    for server, expect in (
        (await asyncio.start_server(handle, "127.0.0.1", 0, limit=1 << 20), bytes.upper),
        (await loop.create_server(EchoProtocol, "127.0.0.1", 0), bytes),
    ):
        async with server:
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for msg in (b"hello ferroloop\n", payload):
                writer.write(msg)
                await writer.drain()
                got = await asyncio.wait_for(reader.readexactly(len(msg)), 10)
                results.append(got == expect(msg))
            writer.close()
            await writer.wait_closed()
    if results != [True] * 4:
        fail(f"echo round trips: {results}")
    return f"4 round trips on {type(loop).__name__} (streams and Protocol servers)"


def main() -> None:
    if len(sys.argv) != 2:
        fail("usage: wheel_smoke.py EXAMPLES_DIR")
    check_environment()
    check_import()
    check_hello(Path(sys.argv[1]))
    import ferroloop

    print(f"tcp echo: {ferroloop.run(echo_round_trips())}")
    print("smoke test passed")


if __name__ == "__main__":
    main()
