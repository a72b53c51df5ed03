"""A small asyncio service with a hidden blocking call, to watch with
``python -m ferroloop top PID`` (the README's screenshot comes from it).

    python examples/slow_service.py &          # prints its PID
    python -m ferroloop top <PID>

A TCP echo server and 5 clients hammering it; one request in 2,000 makes the
handler call ``time.sleep(0.07)`` (the kind of blocking call that hides in
real services), and a heartbeat task ticks every 10 ms.
"""

import asyncio
import itertools
import os
import time

import ferroloop

counter = itertools.count()


def lookup_user(n):
    if n % 2000 == 0:
        time.sleep(0.07)  # a blocking call hiding in a handler
    return n


async def handle(reader, writer):
    while data := await reader.readline():
        lookup_user(next(counter))
        writer.write(data)
        await writer.drain()
    writer.close()


async def client(port):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    while True:
        writer.write(b"ping\n")
        await reader.readline()


async def heartbeat():
    while True:
        await asyncio.sleep(0.01)


async def main(seconds):
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    print(os.getpid(), flush=True)
    tasks = [asyncio.create_task(client(port), name=f"client-{i}") for i in range(5)]
    tasks.append(asyncio.create_task(heartbeat(), name="heartbeat"))
    await asyncio.sleep(seconds)
    for t in tasks:
        t.cancel()
    server.close()


if __name__ == "__main__":
    import sys

    ferroloop.run(main(float(sys.argv[1]) if len(sys.argv) > 1 else 3600))
