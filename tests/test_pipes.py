"""Pipe transports: connect_read_pipe / connect_write_pipe, on both loops.

os.pipe() ends, a pty, a FIFO and a socket are accepted; a regular file is
refused.  The transport API (pause/resume reading, write, flow control,
write_eof, abort, close, extra info), EOF and peer-close handling, a 64 MiB
transfer with bounded memory, unclosed transports and protocol errors, and
reading a child's sys.stdin from a pipe.
"""

import asyncio
import errno
import gc
import hashlib
import os
import socket
import stat
import subprocess
import sys
import tty
import warnings
import weakref

import pytest
from conftest import open_fd_count, settled_fd_count, wait_until

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="Unix pipes")


class Recorder(asyncio.Protocol):
    """Records every callback; `done` resolves at connection_lost."""

    def __init__(self):
        loop = asyncio.get_running_loop()
        self.events = []
        self.data = bytearray()
        self.transport = None
        self.done = loop.create_future()
        self.resumed = asyncio.Event()

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")

    def data_received(self, data):
        assert isinstance(data, bytes)
        self.data += data

    def eof_received(self):
        self.events.append("eof")

    def pause_writing(self):
        self.events.append("pause")
        self.resumed.clear()

    def resume_writing(self):
        self.events.append("resume")
        self.resumed.set()

    def connection_lost(self, exc):
        self.events.append(("lost", type(exc).__name__ if exc else None))
        if not self.done.done():
            self.done.set_result(exc)


async def _drain_fd(fd, nbytes):
    """Read *nbytes* from the non-blocking fd, yielding to the loop."""
    got = bytearray()
    while len(got) < nbytes:
        try:
            chunk = os.read(fd, 1 << 20)
        except BlockingIOError:
            await asyncio.sleep(0.001)
            continue
        assert chunk, "unexpected EOF"
        got += chunk
    return bytes(got)


async def _read_to_eof(fd):
    got = bytearray()
    while True:
        try:
            chunk = os.read(fd, 1 << 20)
        except BlockingIOError:
            await asyncio.sleep(0.001)
            continue
        if not chunk:
            return bytes(got)
        got += chunk


async def _fill_until_paused(tr, proto, chunk):
    """Write *chunk* until pause_writing comes; returns the bytes written."""
    sent = 0
    while "pause" not in proto.events:
        # below the high-water mark before each write
        assert tr.get_write_buffer_size() <= tr.get_write_buffer_limits()[1]
        tr.write(chunk)
        sent += len(chunk)
        assert sent < 64 * 1024 * 1024, "pause_writing never came"
    return sent


# -- read pipes ------------------------------------------------------------------


def is_reading(tr):
    """``tr.is_reading()``. asyncio's read pipe transport has it from 3.11;
    on 3.10 this is what 3.11's reads from the same private state."""
    if sys.version_info < (3, 11) and type(tr).__module__.startswith("asyncio"):
        return not tr._paused and not tr._closing
    return tr.is_reading()


def test_read_pipe_data_then_eof(loop, run):
    async def main():
        r, w = os.pipe()
        pipeobj = os.fdopen(r, "rb", 0)
        try:
            tr, proto = await loop.connect_read_pipe(Recorder, pipeobj)
            # connection_made has run when the coroutine returns
            assert proto.events == ["made"]
            assert proto.transport is tr
            assert isinstance(tr, asyncio.ReadTransport)
            assert tr.get_extra_info("pipe") is pipeobj
            assert tr.get_extra_info("nonexistent", "dflt") == "dflt"
            assert tr.get_protocol() is proto
            assert is_reading(tr)
            assert not tr.is_closing()
            os.write(w, b"hello ")
            os.write(w, b"world")
            await wait_until(lambda: len(proto.data) == 11)
            assert proto.data == b"hello world"
            assert proto.events == ["made"]
            os.close(w)
            w = None
            assert await proto.done is None
            assert proto.events == ["made", "eof", ("lost", None)]
            assert tr.is_closing()
            assert not is_reading(tr)
            assert pipeobj.closed
            tr.close()  # no-op once closed
            await asyncio.sleep(0.01)
            assert proto.events == ["made", "eof", ("lost", None)]
        finally:
            if w is not None:
                os.close(w)
            pipeobj.close()

    run(main())


def test_read_pipe_pause_resume_reading(loop, run):
    async def main():
        r, w = os.pipe()
        tr, proto = await loop.connect_read_pipe(Recorder, os.fdopen(r, "rb", 0))
        try:
            tr.pause_reading()
            tr.pause_reading()  # idempotent
            assert not is_reading(tr)
            os.write(w, b"held")
            await asyncio.sleep(0.02)
            assert proto.data == b""
            tr.resume_reading()
            tr.resume_reading()
            assert is_reading(tr)
            await wait_until(lambda: proto.data == b"held")
            # EOF while paused is only seen after resume
            tr.pause_reading()
            os.write(w, b" more")
            os.close(w)
            w = None
            await asyncio.sleep(0.02)
            assert proto.events == ["made"]
            tr.resume_reading()
            assert await proto.done is None
            assert proto.data == b"held more"
            assert proto.events == ["made", "eof", ("lost", None)]
            # pause/resume after the end are no-ops
            tr.pause_reading()
            tr.resume_reading()
            assert not is_reading(tr)
        finally:
            if w is not None:
                os.close(w)

    run(main())


def test_read_pipe_close(loop, run):
    async def main():
        r, w = os.pipe()
        pipeobj = os.fdopen(r, "rb", 0)
        try:
            tr, proto = await loop.connect_read_pipe(Recorder, pipeobj)
            tr.close()
            assert tr.is_closing()
            assert not is_reading(tr)
            tr.close()  # idempotent
            assert await proto.done is None
            await asyncio.sleep(0.01)
            # no eof_received, exactly one connection_lost
            assert proto.events == ["made", ("lost", None)]
            assert pipeobj.closed
            # the read end is really closed: the writer gets EPIPE
            with pytest.raises(BrokenPipeError):
                os.write(w, b"x")
        finally:
            os.close(w)

    run(main())


def test_read_pipe_close_while_paused(loop, run):
    async def main():
        r, w = os.pipe()
        pipeobj = os.fdopen(r, "rb", 0)
        try:
            tr, proto = await loop.connect_read_pipe(Recorder, pipeobj)
            tr.pause_reading()
            os.write(w, b"unread")
            tr.close()
            assert await proto.done is None
            assert proto.events == ["made", ("lost", None)]
            assert proto.data == b""
            assert pipeobj.closed
        finally:
            os.close(w)

    run(main())


def test_read_pipe_data_received_error_goes_to_handler(loop, run, exc_handler):
    # asyncio's read pipe transport calls data_received() unguarded from its
    # reader callback: the error reaches the exception handler as a failed
    # callback, and the transport is NOT closed: it keeps reading.
    class Boom(Recorder):
        def data_received(self, data):
            super().data_received(data)
            raise ZeroDivisionError("in protocol")

    async def main():
        r, w = os.pipe()
        tr, proto = await loop.connect_read_pipe(Boom, os.fdopen(r, "rb", 0))
        try:
            os.write(w, b"one")
            await wait_until(lambda: proto.data == b"one")
            await asyncio.sleep(0.01)
            assert not tr.is_closing()
            assert proto.events == ["made"]
            os.write(w, b"two")
            await wait_until(lambda: proto.data == b"onetwo")
        finally:
            os.close(w)
        assert await proto.done is None
        assert proto.events == ["made", "eof", ("lost", None)]

    run(main())
    calls = exc_handler.take()
    assert len(calls) == 2
    for ctx in calls:
        assert isinstance(ctx["exception"], ZeroDivisionError)
        assert ctx["message"]


# -- write pipes -----------------------------------------------------------------


def test_write_pipe_basics(loop, run):
    async def main():
        r, w = os.pipe()
        os.set_blocking(r, False)
        pipeobj = os.fdopen(w, "wb", 0)
        try:
            tr, proto = await loop.connect_write_pipe(Recorder, pipeobj)
            assert proto.events == ["made"]
            assert proto.transport is tr
            assert isinstance(tr, asyncio.WriteTransport)
            assert tr.get_extra_info("pipe") is pipeobj
            assert tr.get_protocol() is proto
            assert tr.can_write_eof() is True
            assert not tr.is_closing()
            assert tr.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
            assert tr.get_write_buffer_size() == 0
            tr.write(b"hello ")
            tr.write(bytearray(b"wor"))
            tr.write(memoryview(b"ld"))
            tr.write(b"")  # nothing
            tr.writelines([b"!", bytearray(b"?"), memoryview(b".")])
            assert await _drain_fd(r, 14) == b"hello world!?."
            await wait_until(lambda: tr.get_write_buffer_size() == 0)
            with pytest.raises((TypeError, AssertionError)):
                tr.write("str is refused")
            tr.write_eof()
            assert tr.is_closing()
            assert await proto.done is None
            assert proto.events == ["made", ("lost", None)]
            assert pipeobj.closed
            assert await _read_to_eof(r) == b""
            # writes after the end are dropped silently
            tr.write(b"late")
            tr.write_eof()
            tr.close()
            await asyncio.sleep(0.01)
            assert proto.events == ["made", ("lost", None)]
        finally:
            pipeobj.close()
            os.close(r)

    run(main())


def test_write_pipe_buffer_limits(loop, run):
    async def main():
        r, w = os.pipe()
        tr, proto = await loop.connect_write_pipe(Recorder, os.fdopen(w, "wb", 0))
        try:
            tr.set_write_buffer_limits(high=1000)
            assert tr.get_write_buffer_limits() == (250, 1000)
            tr.set_write_buffer_limits(low=100)
            assert tr.get_write_buffer_limits() == (100, 400)
            tr.set_write_buffer_limits(high=4096, low=1024)
            assert tr.get_write_buffer_limits() == (1024, 4096)
            with pytest.raises(ValueError):
                tr.set_write_buffer_limits(high=1, low=2)
            with pytest.raises(ValueError):
                tr.set_write_buffer_limits(high=-1)
            assert tr.get_write_buffer_limits() == (1024, 4096)
        finally:
            tr.close()
            await proto.done
            os.close(r)

    run(main())


def test_write_pipe_flow_control_default_marks(loop, run):
    async def main():
        r, w = os.pipe()
        os.set_blocking(r, False)
        tr, proto = await loop.connect_write_pipe(Recorder, os.fdopen(w, "wb", 0))
        try:
            chunk = b"x" * 16384
            sent = await _fill_until_paused(tr, proto, chunk)
            # paused just past the 64 KiB high-water mark
            size = tr.get_write_buffer_size()
            assert 64 * 1024 < size <= 64 * 1024 + len(chunk)
            assert proto.events == ["made", "pause"]
            # a paused transport still buffers what it is given
            tr.write(b"y")
            assert tr.get_write_buffer_size() == size + 1
            sent += 1
            got = bytearray()
            while not proto.resumed.is_set():
                try:
                    got += os.read(r, 1 << 20)
                except BlockingIOError:
                    pass
                await asyncio.sleep(0.001)
            assert tr.get_write_buffer_size() <= 16 * 1024
            assert proto.events == ["made", "pause", "resume"]
            got += await _drain_fd(r, sent - len(got))
            assert len(got) == sent
            assert bytes(got) == chunk * ((sent - 1) // len(chunk)) + b"y"
        finally:
            tr.close()
            await proto.done
            os.close(r)

    run(main())


def test_write_pipe_flow_control_custom_marks(loop, run):
    async def main():
        r, w = os.pipe()
        os.set_blocking(r, False)
        tr, proto = await loop.connect_write_pipe(Recorder, os.fdopen(w, "wb", 0))
        try:
            tr.set_write_buffer_limits(high=4096, low=1024)
            chunk = b"z" * 1000
            sent = await _fill_until_paused(tr, proto, chunk)
            assert 4096 < tr.get_write_buffer_size() <= 4096 + len(chunk)
            got = bytearray()
            while not proto.resumed.is_set():
                try:
                    got += os.read(r, 4096)
                except BlockingIOError:
                    pass
                await asyncio.sleep(0.001)
            assert tr.get_write_buffer_size() <= 1024
            # high=0: any buffered byte pauses the protocol
            tr.set_write_buffer_limits(high=0)
            tr.write(b"z" * 200_000)  # more than the pipe holds
            assert proto.events[-1] == "pause"
            got += await _drain_fd(r, sent + 200_000 - len(got))
            assert bytes(got) == b"z" * (sent + 200_000)
            await proto.resumed.wait()
            assert proto.events == ["made", "pause", "resume", "pause", "resume"]
        finally:
            tr.close()
            await proto.done
            os.close(r)

    run(main())


def test_write_eof_flushes_buffer_then_reader_sees_eof(loop, run):
    async def main():
        r, w = os.pipe()
        os.set_blocking(r, False)
        pipeobj = os.fdopen(w, "wb", 0)
        tr, proto = await loop.connect_write_pipe(Recorder, pipeobj)
        try:
            payload = os.urandom(300_000)  # more than the pipe holds
            tr.write(payload)
            assert tr.get_write_buffer_size() > 0
            tr.write_eof()
            assert tr.is_closing()
            tr.write(b"dropped")
            await asyncio.sleep(0.01)
            assert not proto.done.done()  # still flushing
            assert await _read_to_eof(r) == payload
            assert await proto.done is None
            assert ("lost", None) == proto.events[-1]
            assert pipeobj.closed
        finally:
            os.close(r)

    run(main())


def test_write_pipe_close_flushes(loop, run):
    async def main():
        r, w = os.pipe()
        os.set_blocking(r, False)
        pipeobj = os.fdopen(w, "wb", 0)
        tr, proto = await loop.connect_write_pipe(Recorder, pipeobj)
        try:
            tr.write(b"a" * 100_000)
            tr.close()
            tr.close()
            assert tr.is_closing()
            assert await _read_to_eof(r) == b"a" * 100_000
            assert await proto.done is None
            assert proto.events.count(("lost", None)) == 1
            assert pipeobj.closed
        finally:
            os.close(r)

    run(main())


def test_write_pipe_abort_drops_buffer(loop, run):
    async def main():
        r, w = os.pipe()
        os.set_blocking(r, False)
        pipeobj = os.fdopen(w, "wb", 0)
        tr, proto = await loop.connect_write_pipe(Recorder, pipeobj)
        try:
            tr.write(b"b" * 1_000_000)
            await asyncio.sleep(0.01)  # the pipe fills
            assert tr.get_write_buffer_size() > 0
            tr.abort()
            assert tr.is_closing()
            assert tr.get_write_buffer_size() == 0
            assert await proto.done is None
            assert proto.events[-1] == ("lost", None)
            assert pipeobj.closed
            got = await _read_to_eof(r)
            assert 0 < len(got) < 1_000_000
            assert got == b"b" * len(got)
        finally:
            os.close(r)

    run(main())


def test_write_pipe_reader_closes_with_nothing_buffered(loop, run):
    async def main():
        r, w = os.pipe()
        os.set_blocking(r, False)
        pipeobj = os.fdopen(w, "wb", 0)
        tr, proto = await loop.connect_write_pipe(Recorder, pipeobj)
        tr.write(b"fits")
        assert await _drain_fd(r, 4) == b"fits"
        await wait_until(lambda: tr.get_write_buffer_size() == 0)
        os.close(r)
        assert await proto.done is None
        assert proto.events == ["made", ("lost", None)]
        assert tr.is_closing()
        assert pipeobj.closed

    run(main())


def test_write_pipe_reader_closes_with_data_buffered(loop, run):
    async def main():
        r, w = os.pipe()
        pipeobj = os.fdopen(w, "wb", 0)
        tr, proto = await loop.connect_write_pipe(Recorder, pipeobj)
        tr.write(b"c" * 500_000)
        assert tr.get_write_buffer_size() > 0
        await asyncio.sleep(0.01)
        os.close(r)
        exc = await proto.done
        assert isinstance(exc, BrokenPipeError)
        assert proto.events[-1] == ("lost", "BrokenPipeError")
        assert tr.get_write_buffer_size() == 0
        assert pipeobj.closed
        tr.write(b"dropped")  # no error after the end

    run(main())


def test_64mib_through_a_pipe_pair_with_flow_control(loop, run):
    total = 64 * 1024 * 1024
    block = os.urandom(256 * 1024 + 7)  # not aligned with pipe/read sizes

    class Sink(Recorder):
        def __init__(self):
            super().__init__()
            self.count = 0
            self.digest = hashlib.sha256()

        def data_received(self, data):
            self.count += len(data)
            self.digest.update(data)

    async def main():
        r, w = os.pipe()
        rtr, sink = await loop.connect_read_pipe(Sink, os.fdopen(r, "rb", 0))
        wtr, src = await loop.connect_write_pipe(Recorder, os.fdopen(w, "wb", 0))
        src.resumed.set()
        sent_digest = hashlib.sha256()
        sent = 0
        max_buffer = 0
        while sent < total:
            await src.resumed.wait()
            data = block[: total - sent]
            wtr.write(data)
            sent_digest.update(data)
            sent += len(data)
            max_buffer = max(max_buffer, wtr.get_write_buffer_size())
        wtr.write_eof()
        assert await src.done is None
        assert await sink.done is None
        assert sink.events == ["made", "eof", ("lost", None)]
        assert sink.count == total
        assert sink.digest.digest() == sent_digest.digest()
        assert "pause" in src.events and "resume" in src.events
        # memory stays bounded when the producer honours pause_writing()
        assert max_buffer <= 64 * 1024 + len(block)
        assert max_buffer < 4 * 1024 * 1024
        rtr.close()

    run(main(), timeout=30)


# -- pty, FIFO, socket, regular file --------------------------------------------


def test_pty_master_read_until_slave_closes(loop, run, exc_handler):
    async def main():
        master, slave = os.openpty()
        tty.setraw(slave)
        mobj = os.fdopen(master, "rb", 0)
        tr, proto = await loop.connect_read_pipe(Recorder, mobj)
        os.write(slave, b"hello\n")
        await wait_until(lambda: proto.data == b"hello\n")
        os.write(slave, b"bye")
        await wait_until(lambda: proto.data == b"hello\nbye")
        os.close(slave)
        # Reading a pty master whose slave side is closed fails with EIO:
        # asyncio treats it as a fatal read error (no eof_received) but does
        # not report EIO to the exception handler.
        exc = await proto.done
        assert isinstance(exc, OSError)
        assert exc.errno == errno.EIO
        assert proto.events == ["made", ("lost", "OSError")]
        assert mobj.closed
        assert tr.is_closing()

    run(main())
    assert exc_handler.take() == []


def test_pty_write_to_slave_and_master(loop, run):
    async def main():
        master, slave = os.openpty()
        slave_name = os.ttyname(slave)
        tty.setraw(slave)
        os.set_blocking(master, False)
        sobj = os.fdopen(slave, "wb", 0)
        # a character device: accepted by connect_write_pipe
        assert stat.S_ISCHR(os.fstat(slave).st_mode)
        wtr, wproto = await loop.connect_write_pipe(Recorder, sobj)
        assert isinstance(wtr, asyncio.WriteTransport)
        wtr.write(b"to master")
        assert await _drain_fd(master, 9) == b"to master"
        wtr.close()
        assert await wproto.done is None
        assert sobj.closed

        # the other way: a write transport on the master, read on a slave
        slave2 = os.open(slave_name, os.O_RDWR | os.O_NOCTTY)
        try:
            tty.setraw(slave2)
            os.set_blocking(slave2, False)
            mobj = os.fdopen(master, "wb", 0)
            mtr, mproto = await loop.connect_write_pipe(Recorder, mobj)
            mtr.write(b"to slave")
            assert await _drain_fd(slave2, 8) == b"to slave"
            mtr.close()
            assert await mproto.done is None
            assert mobj.closed
        finally:
            os.close(slave2)

    run(main())


def test_fifo_read_and_write(loop, run, tmp_path):
    path = tmp_path / "fifo"
    os.mkfifo(path)

    async def main():
        # read side
        rfd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        wfd = os.open(path, os.O_WRONLY)
        _, rproto = await loop.connect_read_pipe(Recorder, os.fdopen(rfd, "rb", 0))
        os.write(wfd, b"into the fifo")
        await wait_until(lambda: rproto.data == b"into the fifo")
        os.close(wfd)
        assert await rproto.done is None
        assert rproto.events == ["made", "eof", ("lost", None)]

        # write side
        rfd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        wobj = os.fdopen(os.open(path, os.O_WRONLY | os.O_NONBLOCK), "wb", 0)
        try:
            wtr, wproto = await loop.connect_write_pipe(Recorder, wobj)
            wtr.write(b"out of the fifo" * 10_000)
            wtr.write_eof()
            assert await _read_to_eof(rfd) == b"out of the fifo" * 10_000
            assert await wproto.done is None
            assert wobj.closed
        finally:
            os.close(rfd)

    run(main())


def test_fifo_reader_closing_ends_write_transport(loop, run, tmp_path):
    path = tmp_path / "fifo"
    os.mkfifo(path)

    async def main():
        rfd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        wobj = os.fdopen(os.open(path, os.O_WRONLY | os.O_NONBLOCK), "wb", 0)
        _, wproto = await loop.connect_write_pipe(Recorder, wobj)
        os.close(rfd)
        assert await wproto.done is None
        assert wproto.events == ["made", ("lost", None)]
        assert wobj.closed

    run(main())


def test_socket_accepted_as_pipe(loop, run):
    async def main():
        a, b = socket.socketpair()
        c, d = socket.socketpair()
        e, f = socket.socketpair()
        try:
            rtr, rproto = await loop.connect_read_pipe(Recorder, a)
            assert rtr.get_extra_info("pipe") is a
            b.sendall(b"over a socket")
            await wait_until(lambda: rproto.data == b"over a socket")
            b.close()
            assert await rproto.done is None
            assert rproto.events == ["made", "eof", ("lost", None)]
            assert a.fileno() == -1  # closed by the transport

            wtr, wproto = await loop.connect_write_pipe(Recorder, c)
            assert wtr.get_extra_info("pipe") is c
            wtr.write(b"the other way")
            d.setblocking(False)
            assert await loop.sock_recv(d, 100) == b"the other way"
            wtr.write_eof()
            assert await wproto.done is None
            assert await loop.sock_recv(d, 100) == b""
            assert c.fileno() == -1
            # and a peer closing a socket ends a write transport too
            _, wproto2 = await loop.connect_write_pipe(Recorder, e)
            f.close()
            assert await wproto2.done is None
            assert e.fileno() == -1
        finally:
            for s in (a, b, c, d, e, f):
                s.close()

    run(main())


def test_regular_file_refused(loop, run, tmp_path):
    path = tmp_path / "regular"
    path.write_bytes(b"data")

    async def main(rf, wf):
        before = await settled_fd_count()
        with pytest.raises(ValueError):
            await loop.connect_read_pipe(Recorder, rf)
        with pytest.raises(ValueError):
            await loop.connect_write_pipe(Recorder, wf)
        assert await settled_fd_count() == before
        # the refused files are still open and usable
        assert not rf.closed and not wf.closed
        os.fstat(rf.fileno())
        os.fstat(wf.fileno())
        assert rf.read() == b"data"
        wf.write(b"more")
        # and the loop keeps working: a character device is accepted
        devnull = os.fdopen(os.open(os.devnull, os.O_WRONLY), "wb", 0)
        tr, proto = await loop.connect_write_pipe(Recorder, devnull)
        tr.write(b"into the void")
        tr.close()
        assert await proto.done is None
        assert devnull.closed

    with open(path, "rb", buffering=0) as rf, open(path, "ab", buffering=0) as wf:
        run(main(rf, wf))
    assert path.read_bytes() == b"datamore"


def test_no_fd_leak_over_pipe_transports(loop, run):
    async def main():
        gc.collect()
        before = open_fd_count()
        for _ in range(200):
            r, w = os.pipe()
            _, rp = await loop.connect_read_pipe(Recorder, os.fdopen(r, "rb", 0))
            wtr, wp = await loop.connect_write_pipe(Recorder, os.fdopen(w, "wb", 0))
            wtr.write(b"x")
            wtr.close()
            await wp.done
            await rp.done
            assert rp.data == b"x"
        gc.collect()
        assert open_fd_count() == before

    run(main())


# -- unclosed transports ---------------------------------------------------------


def test_unclosed_read_pipe_transport_warns_and_closes_fd(loop, run):
    async def main():
        r, w = os.pipe()
        try:
            pipeobj = os.fdopen(r, "rb", 0)
            tr, proto = await loop.connect_read_pipe(Recorder, pipeobj)
            tr.pause_reading()  # the loop no longer references it
            ref = weakref.ref(tr)
            del tr, proto  # a reference cycle: only gc frees it
            with pytest.warns(ResourceWarning, match="unclosed transport"):
                gc.collect()
            assert ref() is None
            assert pipeobj.closed
            with pytest.raises(BrokenPipeError):
                os.write(w, b"x")
        finally:
            os.close(w)

    run(main())


def test_unclosed_pipe_transports_after_loop_close(loop, run):
    # A program that ends its loop with pipe transports still open: once the
    # closed loop lets go of them, collecting them warns and closes the fds.
    r, w = os.pipe()
    r2, w2 = os.pipe()

    async def main():
        rtr, _ = await loop.connect_read_pipe(Recorder, os.fdopen(r, "rb", 0))
        wtr, _ = await loop.connect_write_pipe(Recorder, os.fdopen(w2, "wb", 0))
        return weakref.ref(rtr), weakref.ref(wtr)

    try:
        refs = run(main())
        loop.close()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            gc.collect()
        assert [ref() for ref in refs] == [None, None]
        unclosed = [
            c
            for c in caught
            if issubclass(c.category, ResourceWarning) and "unclosed transport" in str(c.message)
        ]
        assert len(unclosed) == 2
        with pytest.raises(BrokenPipeError):
            os.write(w, b"x")  # the read end r was closed
        assert os.read(r2, 10) == b""  # the write end w2 was closed: EOF
    finally:
        os.close(w)
        os.close(r2)


# -- a child reading its sys.stdin ------------------------------------------------

STDIN_PROTOCOL_CHILD = """
import hashlib

class P(asyncio.Protocol):
    def __init__(self, done):
        self.done = done
        self.digest = hashlib.sha256()
        self.count = 0
        self.events = []

    def connection_made(self, transport):
        self.events.append("made")

    def data_received(self, data):
        self.count += len(data)
        self.digest.update(data)

    def eof_received(self):
        self.events.append("eof")

    def connection_lost(self, exc):
        self.events.append("lost")
        self.done.set_result(exc)

async def main():
    loop = asyncio.get_running_loop()
    protocol = P(loop.create_future())
    transport, _ = await loop.connect_read_pipe(lambda: protocol, sys.stdin)
    exc = await protocol.done
    print(protocol.count, protocol.digest.hexdigest(), exc, ",".join(protocol.events))
    print("stdin closed:", sys.stdin.closed)

loop = make_loop()
loop.run_until_complete(main())
loop.close()
"""

STDIN_STREAM_CHILD = """
async def main():
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    lines = []
    while True:
        line = await reader.readline()
        if not line:
            break
        lines.append(line.decode().strip().upper())
    print("|".join(lines))
    print("at_eof:", reader.at_eof())

loop = make_loop()
loop.run_until_complete(main())
loop.close()
"""


def _run_with_stdin(child_script, body, data):
    path, env = child_script(body)
    return subprocess.run(
        [sys.executable, str(path)],
        input=data,
        capture_output=True,
        env=env,
        timeout=30,
        check=False,
    )


def test_child_reads_piped_stdin_with_protocol(loop, child_script):
    # The child builds its own loop of the same kind (make_loop()).
    data = os.urandom(3 * 1024 * 1024 + 5)
    res = _run_with_stdin(child_script, STDIN_PROTOCOL_CHILD, data)
    assert res.returncode == 0, res.stderr.decode()
    lines = res.stdout.decode().splitlines()
    assert lines == [
        f"{len(data)} {hashlib.sha256(data).hexdigest()} None made,eof,lost",
        "stdin closed: True",
    ]


def test_child_reads_piped_stdin_with_stream_reader(loop, child_script):
    res = _run_with_stdin(child_script, STDIN_STREAM_CHILD, b"alpha\nbeta\ngamma")
    assert res.returncode == 0, res.stderr.decode()
    assert res.stdout.decode().splitlines() == ["ALPHA|BETA|GAMMA", "at_eof: True"]
