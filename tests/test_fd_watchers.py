"""add_reader / add_writer / remove_reader / remove_writer, on both loops."""

import os
import socket
import tempfile
import time

import pytest


def test_reader_called_when_readable(loop, run_forever, pair):
    a, b = pair
    seen = []

    def on_read(tag):
        seen.append((tag, a.recv(100)))
        loop.stop()

    assert loop.add_reader(a, on_read, "tag") is None
    b.send(b"hello")
    run_forever()
    assert seen == [("tag", b"hello")]
    assert loop.remove_reader(a) is True


def test_reader_is_level_triggered(loop, run_forever, pair):
    # A reader that does not drain the socket is called again, tick after tick.
    a, b = pair
    calls = []

    def on_read():
        calls.append(a.recv(1))
        if len(calls) == 4:
            loop.stop()

    loop.add_reader(a.fileno(), on_read)
    b.send(b"abcd")
    run_forever()
    assert calls == [b"a", b"b", b"c", b"d"]
    loop.remove_reader(a.fileno())


def test_reader_not_called_without_data(loop, run_forever, pair):
    a, _ = pair
    calls = []
    loop.add_reader(a, calls.append, "x")
    loop.call_later(0.02, loop.stop)
    run_forever()
    assert calls == []
    assert loop.remove_reader(a)


def test_writer_called_when_writable(loop, run_forever, pair):
    _, b = pair
    calls = []

    def on_write():
        calls.append(1)
        loop.remove_writer(b)
        loop.stop()

    loop.add_writer(b, on_write)
    run_forever()
    assert calls == [1]
    assert loop.remove_writer(b) is False


def test_add_reader_replaces_callback(loop, run_forever, pair):
    a, b = pair
    seen = []
    loop.add_reader(a, lambda: seen.append("old"))
    loop.add_reader(a, lambda: (seen.append(("new", a.recv(10))), loop.stop()))
    b.send(b"x")
    run_forever()
    assert seen == [("new", b"x")]
    assert loop.remove_reader(a)


def test_reader_and_writer_on_one_fd(loop, run_forever, pair):
    a, b = pair
    seen = []

    def on_write():
        seen.append("w")
        loop.remove_writer(a)
        b.send(b"ping")

    def on_read():
        seen.append(("r", a.recv(10)))
        loop.stop()

    loop.add_reader(a, on_read)
    loop.add_writer(a, on_write)
    run_forever()
    assert seen == ["w", ("r", b"ping")]
    # Removing the writer kept the reader; removing it again reports False.
    assert loop.remove_writer(a) is False
    assert loop.remove_reader(a) is True
    assert loop.remove_reader(a) is False


def test_remove_unknown_fd_returns_false(loop, pair):
    a, _ = pair
    assert loop.remove_reader(a) is False
    assert loop.remove_writer(a.fileno()) is False


def test_remove_reader_from_its_callback(loop, run_forever, pair):
    a, b = pair
    calls = []

    def on_read():
        calls.append(1)
        assert loop.remove_reader(a)
        loop.call_later(0.02, loop.stop)

    loop.add_reader(a, on_read)
    b.send(b"not drained")
    run_forever()
    assert calls == [1]


def test_reader_removed_before_its_turn_does_not_run(loop, run_forever, pair):
    # Both fds become ready in the same tick; the first callback removes the
    # second reader, which then never runs (its handle was cancelled).
    a, b = pair
    c, d = socket.socketpair()
    c.setblocking(False)
    seen = []
    try:

        def first():
            seen.append("first")
            a.recv(10)
            loop.remove_reader(c)
            loop.remove_reader(a)
            loop.call_later(0.02, loop.stop)

        def second():
            seen.append("second")
            c.recv(10)
            loop.remove_reader(a)
            loop.remove_reader(c)
            loop.call_later(0.02, loop.stop)

        loop.add_reader(a, first)
        loop.add_reader(c, second)
        b.send(b"1")
        d.send(b"2")
        run_forever()
    finally:
        c.close()
        d.close()
    assert seen in (["first"], ["second"])


def test_callback_error_goes_to_exception_handler(loop, run_forever, exc_handler, pair):
    a, b = pair

    def boom():
        a.recv(10)
        loop.remove_reader(a)
        loop.call_soon(loop.stop)
        raise ZeroDivisionError("in reader")

    loop.add_reader(a, boom)
    b.send(b"x")
    run_forever()
    [ctx] = exc_handler.take()
    assert isinstance(ctx["exception"], ZeroDivisionError)
    assert "handle" in ctx


def test_peer_close_wakes_reader_with_eof(loop, run_forever, pair):
    a, b = pair
    seen = []

    def on_read():
        seen.append(a.recv(10))
        loop.remove_reader(a)
        loop.stop()

    loop.add_reader(a, on_read)
    b.close()
    run_forever()
    assert seen == [b""]


def test_context_is_copied_at_registration(loop, run_forever, pair):
    import contextvars

    var = contextvars.ContextVar("v", default="default")
    a, b = pair
    seen = []

    def on_read():
        seen.append(var.get())
        a.recv(10)
        loop.remove_reader(a)
        loop.stop()

    token = var.set("registered")
    try:
        loop.add_reader(a, on_read)
    finally:
        var.reset(token)
    b.send(b"x")
    run_forever()
    assert seen == ["registered"]


@pytest.mark.parametrize("bad", ["not an fd", object(), -1, 1.5])
def test_invalid_file_objects(loop, bad):
    with pytest.raises(ValueError):
        loop.add_reader(bad, print)
    with pytest.raises(ValueError):
        loop.add_writer(bad, print)
    with pytest.raises(ValueError):
        loop.remove_reader(bad)


def test_fileno_raising_is_invalid(loop):
    class Bad:
        def fileno(self):
            raise ValueError("closed file")

    with pytest.raises(ValueError, match="Invalid file object"):
        loop.add_reader(Bad(), print)


def test_regular_file_is_refused(loop):
    # epoll cannot watch regular files: asyncio's selector raises
    # PermissionError (EPERM) from register().
    with tempfile.TemporaryFile() as f:
        with pytest.raises(PermissionError):
            loop.add_reader(f, print)
        assert loop.remove_reader(f) is False


def test_bad_fd_raises_oserror(loop):
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(OSError):
        loop.add_reader(r, print)
    assert loop.remove_reader(r) is False


def test_closed_loop(new_loop, pair):
    a, _ = pair
    lp = new_loop()
    lp.add_reader(a, print)
    lp.close()
    with pytest.raises(RuntimeError, match="closed"):
        lp.add_reader(a, print)
    with pytest.raises(RuntimeError, match="closed"):
        lp.add_writer(a, print)
    assert lp.remove_reader(a) is False
    assert lp.remove_writer(a) is False


def test_fd_used_by_transport_is_refused(loop, run, pair):
    a, _ = pair

    async def main():
        # asyncio's selector loop keeps fd -> transport in _transports (a
        # WeakValueDictionary): stand in for a live transport.
        transport = _FakeTransport()
        loop._transports[a.fileno()] = transport
        with pytest.raises(RuntimeError, match="is used by transport"):
            loop.add_reader(a, print)
        with pytest.raises(RuntimeError, match="is used by transport"):
            loop.remove_writer(a.fileno())
        transport.closing = True  # a closing transport no longer owns it
        loop.add_reader(a, print)
        assert loop.remove_reader(a)

    run(main())


class _FakeTransport:
    closing = False

    def is_closing(self):
        return self.closing


def test_closed_fd_then_remove(loop, run_forever):
    # The fd is closed while registered (the kernel drops it from epoll):
    # remove_reader still reports and cancels the callback.
    a, b = socket.socketpair()
    fd = a.fileno()
    loop.add_reader(fd, print)
    a.close()
    b.close()
    assert loop.remove_reader(fd) is True


def test_many_fds(loop, run_forever):
    pairs = [socket.socketpair() for _ in range(200)]
    got = set()
    try:
        for i, (a, _) in enumerate(pairs):
            a.setblocking(False)

            def on_read(i=i, a=a):
                a.recv(10)
                loop.remove_reader(a)
                got.add(i)
                if len(got) == len(pairs):
                    loop.stop()

            loop.add_reader(a, on_read)
        for _, b in pairs:
            b.send(b"x")
        run_forever()
    finally:
        for a, b in pairs:
            a.close()
            b.close()
    assert got == set(range(200))


def test_removed_reader_of_a_file_outliving_its_fd_stays_quiet(loop, run_forever):
    # remove_reader, then the fd closes while a dup keeps its file open and
    # the peer writes and hangs up: the old file is readable forever, and
    # the loop must not keep waking for it (it would spin at 100% CPU).
    a, b = socket.socketpair()
    keep = a.dup()
    try:
        fd = a.fileno()
        loop.add_reader(fd, print)
        assert loop.remove_reader(fd) is True
        a.close()
        b.send(b"data")
        b.close()
        start = time.process_time()
        loop.call_later(0.3, loop.stop)
        run_forever()
        assert time.process_time() - start < 0.15
        # The number, reused by a new socket, reports that socket's events.
        c, d = socket.socketpair()
        try:
            seen = []
            loop.add_reader(c, lambda: seen.append(c.recv(10)))
            loop.call_later(0.05, loop.stop)
            run_forever()
            assert seen == []
            d.send(b"x")
            loop.call_later(0.05, loop.stop)
            run_forever()
            assert seen == [b"x"]
            assert loop.remove_reader(c) is True
        finally:
            c.close()
            d.close()
    finally:
        keep.close()


@pytest.mark.parametrize("fd", [2**31, 2**63, 2**70])
def test_fd_past_a_c_int(loop, fd):
    # No such fd: adding fails as the selector's register does, removing
    # finds nothing.
    with pytest.raises(OverflowError):
        loop.add_reader(fd, print)
    with pytest.raises(OverflowError):
        loop.add_writer(fd, print)
    assert loop.remove_reader(fd) is False
    assert loop.remove_writer(fd) is False


@pytest.mark.parametrize("fd", [-1, -(2**31) - 1, -(2**70)])
def test_negative_fd(loop, fd):
    for method in (loop.add_reader, loop.add_writer):
        with pytest.raises(ValueError, match="Invalid file descriptor"):
            method(fd, print)
    for method in (loop.remove_reader, loop.remove_writer):
        with pytest.raises(ValueError, match="Invalid file descriptor"):
            method(fd)


def test_closed_loop_removes_nothing_without_looking(new_loop):
    # A closed loop answers False to remove_* before looking at the fd
    # (asyncio's); adding raises that it is closed.
    lp = new_loop()
    lp.close()
    for fd in (-1, 2**31, 0):
        assert lp.remove_reader(fd) is False
        assert lp.remove_writer(fd) is False
        with pytest.raises(RuntimeError, match="closed"):
            lp.add_reader(fd, print)


@pytest.mark.parametrize("which", ["reader", "writer"])
def test_remove_by_a_socket_closed_since(loop, which):
    # "sock.close(); loop.remove_reader(sock)": the selector finds the
    # registration by the object once its fileno() is -1 (True); ferroloop
    # raised ValueError and left the registration behind.
    add = getattr(loop, f"add_{which}")
    remove = getattr(loop, f"remove_{which}")
    a, b = socket.socketpair()
    try:
        add(a, print)
        fd = a.fileno()
        a.close()
        assert remove(a) is True
        with pytest.raises(ValueError, match="Invalid file descriptor: -1"):
            remove(a)  # not registered any more: nothing to find it by
        assert remove(fd) is False  # gone under its number too
        with pytest.raises(ValueError, match="Invalid file descriptor: -1"):
            add(a, print)
    finally:
        b.close()
