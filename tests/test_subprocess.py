"""Subprocesses: asyncio.create_subprocess_* and loop.subprocess_*, on both loops.

Stream round trips, SubprocessProtocol callback order, the stdio choices,
communicate(), return codes and signals, the subprocess transport API, the
Popen keywords passed through, argument errors, spawn failures, many
children, a loop in another thread, children owned by other code, child
watchers, SIGCHLD handlers, and a child reaped behind the loop's back.
"""

import asyncio
import errno
import gc
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import warnings

import pytest
from conftest import open_fd_count, settled_fd_count, settled_fds, wait_until

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="Unix subprocesses")

PY = sys.executable
PIPE = asyncio.subprocess.PIPE
DEVNULL = asyncio.subprocess.DEVNULL
STDOUT = asyncio.subprocess.STDOUT

# Process.communicate() closes a piped stdin even without input since
# gh-83925 (3.12.1); before, it left stdin open.
COMMUNICATE_CLOSES_STDIN = sys.version_info >= (3, 12, 1)


# -- helpers ---------------------------------------------------------------------


def _children():
    pids = set()
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as f:
                pids.update(int(p) for p in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            pass
    return pids


def _state(pid):
    """The /proc state letter of *pid* (None when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return None


def _zombies(pids):
    """The pids among *pids* that are zombie children of this process."""
    return {pid for pid in _children() & set(pids) if _state(pid) == "Z"}


class SubRecorder(asyncio.SubprocessProtocol):
    """Records every callback; `done` resolves at connection_lost."""

    def __init__(self):
        loop = asyncio.get_running_loop()
        self.events = []
        self.out = {1: bytearray(), 2: bytearray()}
        self.transport = None
        self.pipes_at_made = None
        self.returncode_at_exit = "not called"
        self.done = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")
        self.pipes_at_made = {fd: transport.get_pipe_transport(fd) for fd in (0, 1, 2)}

    def pipe_data_received(self, fd, data):
        assert isinstance(data, bytes)
        self.events.append(("data", fd))
        self.out[fd] += data

    def pipe_connection_lost(self, fd, exc):
        self.events.append(("pipe_lost", fd, exc))

    def process_exited(self):
        self.events.append("exited")
        self.returncode_at_exit = self.transport.get_returncode()

    def connection_lost(self, exc):
        self.events.append(("lost", exc))
        if not self.done.done():
            self.done.set_result(exc)


def _check_callback_order(events, fds):
    """The ordering asyncio guarantees to a SubprocessProtocol."""
    assert events[0] == "made"
    assert events.count("made") == 1
    assert events[-1] == ("lost", None)
    assert len([e for e in events if e[0] == "lost"]) == 1
    assert events.count("exited") == 1
    for fd in fds:
        lost = [i for i, e in enumerate(events) if e[:2] == ("pipe_lost", fd)]
        assert len(lost) == 1, (fd, events)
        assert events[lost[0]][2] is None
        data = [i for i, e in enumerate(events) if e == ("data", fd)]
        assert all(i < lost[0] for i in data), (fd, events)
    for fd in {0, 1, 2} - set(fds):
        assert not [e for e in events if e[0] in ("data", "pipe_lost") and e[1] == fd]


# -- streams ---------------------------------------------------------------------


def test_exec_cat_round_trip(loop, run):
    async def main():
        proc = await asyncio.create_subprocess_exec("/bin/cat", stdin=PIPE, stdout=PIPE)
        assert isinstance(proc.pid, int) and proc.pid > 0
        assert proc.returncode is None
        assert proc.stderr is None
        proc.stdin.write(b"hello\n")
        await proc.stdin.drain()
        assert await proc.stdout.readline() == b"hello\n"
        proc.stdin.writelines([b"wor", b"ld\n"])
        await proc.stdin.drain()
        assert await proc.stdout.readline() == b"world\n"
        assert proc.stdin.can_write_eof()
        proc.stdin.write_eof()
        assert await proc.stdout.read() == b""
        assert proc.stdout.at_eof()
        assert await proc.wait() == 0
        assert proc.returncode == 0
        assert await proc.wait() == 0  # again
        return proc.pid

    pid = run(main())
    assert not _zombies([pid])


def test_shell_communicate_and_exit_code(loop, run):
    async def main():
        proc = await asyncio.create_subprocess_shell(
            "echo $((6*7)); echo err >&2; exit 3", stdout=PIPE, stderr=PIPE
        )
        out, err = await proc.communicate()
        assert (out, err) == (b"42\n", b"err\n")
        assert proc.returncode == 3
        # bytes commands are accepted too
        proc = await asyncio.create_subprocess_shell(b"printf bytes", stdout=PIPE)
        assert await proc.communicate() == (b"bytes", None)
        assert proc.returncode == 0

    run(main())


def test_subprocess_exec_protocol_callback_order(loop, run):
    code = (
        "import sys\n"
        "data = sys.stdin.buffer.read()\n"
        "sys.stdout.buffer.write(data.upper()); sys.stdout.flush()\n"
        "sys.stderr.buffer.write(b'to stderr'); sys.stderr.flush()\n"
        "sys.exit(5)\n"
    )

    async def main():
        tr, proto = await loop.subprocess_exec(SubRecorder, PY, "-c", code)
        # connection_made ran, after the pipes were connected
        assert proto.events[0] == "made"
        assert proto.transport is tr
        assert isinstance(tr, asyncio.SubprocessTransport)
        assert isinstance(proto.pipes_at_made[0], asyncio.WriteTransport)
        assert isinstance(proto.pipes_at_made[1], asyncio.ReadTransport)
        assert isinstance(proto.pipes_at_made[2], asyncio.ReadTransport)
        assert tr.get_protocol() is proto
        assert not tr.is_closing()
        stdin = tr.get_pipe_transport(0)
        stdin.write(b"x" * 100_000)
        stdin.write(b"end")
        stdin.write_eof()
        assert await proto.done is None
        assert proto.returncode_at_exit == 5
        assert tr.get_returncode() == 5
        assert bytes(proto.out[1]) == b"X" * 100_000 + b"END"
        assert bytes(proto.out[2]) == b"to stderr"
        await asyncio.sleep(0.02)  # nothing comes after connection_lost
        _check_callback_order(proto.events, (0, 1, 2))
        tr.close()
        assert tr.is_closing()

    run(main())


def test_subprocess_shell_protocol(loop, run):
    async def main():
        tr, proto = await loop.subprocess_shell(
            SubRecorder, "echo out; echo err >&2; exit 2", stdin=DEVNULL
        )
        assert proto.pipes_at_made[0] is None
        assert tr.get_pipe_transport(0) is None
        assert await proto.done is None
        assert tr.get_returncode() == 2
        assert proto.out == {1: b"out\n", 2: b"err\n"}
        _check_callback_order(proto.events, (1, 2))
        tr.close()

    run(main())


def test_subprocess_exec_defaults_to_pipes_and_no_pipes(loop, run):
    async def main():
        # loop.subprocess_exec's stdio defaults are PIPE (unlike
        # create_subprocess_exec's None)
        tr, proto = await loop.subprocess_exec(SubRecorder, "/bin/true")
        assert all(proto.pipes_at_made[fd] is not None for fd in (0, 1, 2))
        assert await proto.done is None
        _check_callback_order(proto.events, (0, 1, 2))
        tr.close()
        # and with no pipes at all
        tr, proto = await loop.subprocess_exec(
            SubRecorder, "/bin/sh", "-c", "exit 9", stdin=None, stdout=DEVNULL, stderr=DEVNULL
        )
        assert proto.pipes_at_made == {0: None, 1: None, 2: None}
        assert await proto.done is None
        assert tr.get_returncode() == 9
        assert proto.events == ["made", "exited", ("lost", None)]
        tr.close()

    run(main())


def test_transport_extra_info_and_pipe_transports(loop, run):
    async def main():
        tr, proto = await loop.subprocess_exec(SubRecorder, "/bin/cat", stderr=DEVNULL)
        try:
            popen = tr.get_extra_info("subprocess")
            assert isinstance(popen, subprocess.Popen)
            assert popen.pid == tr.get_pid()
            assert isinstance(tr.get_pid(), int)
            assert tr.get_returncode() is None
            assert tr.get_extra_info("nonexistent", "dflt") == "dflt"
            assert isinstance(tr.get_pipe_transport(0), asyncio.WriteTransport)
            assert isinstance(tr.get_pipe_transport(1), asyncio.ReadTransport)
            assert tr.get_pipe_transport(2) is None  # DEVNULL
            assert tr.get_pipe_transport(3) is None
            tr.get_pipe_transport(0).write(b"echo")
            await wait_until(lambda: proto.out[1] == b"echo")
            tr.get_pipe_transport(0).close()
            assert await proto.done is None
            assert tr.get_returncode() == 0
            _check_callback_order(proto.events, (0, 1))
        finally:
            tr.close()

    run(main())


def test_transport_close_kills_running_child(loop, run):
    async def main():
        tr, proto = await loop.subprocess_exec(SubRecorder, "/bin/sleep", "30")
        pid = tr.get_pid()
        tr.close()
        assert tr.is_closing()
        tr.close()  # idempotent
        assert await proto.done is None
        assert tr.get_returncode() == -signal.SIGKILL
        assert proto.returncode_at_exit == -signal.SIGKILL
        assert proto.events.count("exited") == 1
        assert proto.events[-1] == ("lost", None)
        for fd in (0, 1, 2):
            assert proto.events.count(("pipe_lost", fd, None)) == 1
        return pid

    pid = run(main())
    assert not _zombies([pid])


# -- stdio choices ---------------------------------------------------------------


def test_stdio_devnull_and_stderr_to_stdout(loop, run):
    code = (
        "import sys\n"
        "print('stdin:', repr(sys.stdin.read()), flush=True)\n"
        "print('to stderr', file=sys.stderr, flush=True)\n"
    )

    async def main():
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", code, stdin=DEVNULL, stdout=PIPE, stderr=STDOUT
        )
        assert proc.stdin is None and proc.stderr is None
        out, err = await proc.communicate()
        assert err is None
        assert out == b"stdin: ''\nto stderr\n"
        assert proc.returncode == 0

        proc = await asyncio.create_subprocess_exec(
            PY, "-c", code, stdin=DEVNULL, stdout=DEVNULL, stderr=PIPE
        )
        assert proc.stdout is None
        assert await proc.communicate() == (None, b"to stderr\n")

    run(main())


def test_stdio_fd_and_file_object(loop, run, tmp_path):
    code = (
        "import sys\n"
        "data = sys.stdin.buffer.read()\n"
        "sys.stdout.buffer.write(data.upper())\n"
        "sys.stderr.buffer.write(data[::-1])\n"
    )
    src = tmp_path / "in"
    src.write_bytes(b"abc")

    async def main(fin, ferr):
        r, w = os.pipe()
        try:
            before = open_fd_count()
            proc = await asyncio.create_subprocess_exec(
                PY, "-c", code, stdin=fin, stdout=w, stderr=ferr
            )
            assert (proc.stdin, proc.stdout, proc.stderr) == (None, None, None)
            assert await proc.wait() == 0
            assert open_fd_count() == before  # ours are not closed, none leaked
            assert not fin.closed and not ferr.closed
            ferr.close()
            os.close(w)
            w = None
            assert os.read(r, 100) == b"ABC"
            assert (tmp_path / "err").read_bytes() == b"cba"

            # an fd for stdin too
            fd = os.open(src, os.O_RDONLY)
            try:
                proc = await asyncio.create_subprocess_exec(
                    PY, "-c", code, stdin=fd, stdout=PIPE, stderr=DEVNULL
                )
                assert await proc.communicate() == (b"ABC", None)
                os.fstat(fd)  # still open
            finally:
                os.close(fd)
        finally:
            os.close(r)
            if w is not None:
                os.close(w)

    with open(src, "rb") as fin, open(tmp_path / "err", "wb") as ferr:
        run(main(fin, ferr))


def test_stdio_none_inherits(loop, run):
    code = (
        "import os, sys\n"
        "for fd in (0, 1):\n"
        "    try:\n"
        "        st = os.fstat(fd)\n"
        "        print(fd, st.st_dev, st.st_ino, file=sys.stderr)\n"
        "    except OSError:\n"
        "        print(fd, 'closed', file=sys.stderr)\n"
    )

    def expected():
        lines = []
        for fd in (0, 1):
            try:
                st = os.fstat(fd)
                lines.append(f"{fd} {st.st_dev} {st.st_ino}")
            except OSError:
                lines.append(f"{fd} closed")
        return lines

    async def main():
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", code, stdin=None, stdout=None, stderr=PIPE
        )
        assert proc.stdin is None and proc.stdout is None
        _, err = await proc.communicate()
        assert err.decode().splitlines() == expected()
        assert proc.returncode == 0

    run(main())


# -- communicate() ---------------------------------------------------------------


def test_communicate_with_input(loop, run):
    async def main():
        data = os.urandom(1024 * 1024 + 3)
        proc = await asyncio.create_subprocess_exec("/bin/cat", stdin=PIPE, stdout=PIPE)
        out, err = await proc.communicate(data)
        assert out == data
        assert err is None
        assert proc.returncode == 0
        # empty input closes stdin too
        proc = await asyncio.create_subprocess_exec("/bin/cat", stdin=PIPE, stdout=PIPE)
        assert await proc.communicate(b"") == (b"", None)

    run(main())


def test_communicate_without_input(loop, run):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", "print('no input')", stdout=PIPE, stderr=PIPE
        )
        assert await proc.communicate() == (b"no input\n", b"")
        assert proc.returncode == 0
        # nothing piped at all
        proc = await asyncio.create_subprocess_exec("/bin/true")
        assert await proc.communicate() == (None, None)
        assert proc.returncode == 0

    run(main())


def test_communicate_without_input_and_piped_stdin(loop, run):
    async def main():
        proc = await asyncio.create_subprocess_exec("/bin/cat", stdin=PIPE, stdout=PIPE)
        task = asyncio.ensure_future(proc.communicate())
        if COMMUNICATE_CLOSES_STDIN:
            # stdin is closed: cat sees EOF and exits
            assert await task == (b"", None)
        else:
            # stdin is left open: cat keeps waiting
            await asyncio.sleep(0.2)
            assert not task.done()
            proc.stdin.close()
            assert await task == (b"", None)
        assert proc.returncode == 0

    run(main())


def test_communicate_16mib_on_stdout_and_stderr(loop, run):
    code = (
        "import sys\n"
        "block = bytes(range(256)) * 256\n"
        "rev = block[::-1]\n"
        "o, e = sys.stdout.buffer, sys.stderr.buffer\n"
        "for _ in range(256):\n"
        "    o.write(block); e.write(rev)\n"
    )
    block = bytes(range(256)) * 256

    async def main():
        proc = await asyncio.create_subprocess_exec(PY, "-c", code, stdout=PIPE, stderr=PIPE)
        out, err = await proc.communicate()
        assert proc.returncode == 0
        assert len(out) == len(err) == 16 * 1024 * 1024
        assert out == block * 256
        assert err == block[::-1] * 256

    run(main(), timeout=30)


def test_communicate_child_closes_stdin_early(loop, run, exc_handler):
    # BrokenPipeError / ConnectionResetError while feeding stdin are ignored
    # by communicate().
    code = "import os, sys; os.close(0); sys.stdout.write('closed')"

    async def main():
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", code, stdin=PIPE, stdout=PIPE, stderr=PIPE
        )
        out, err = await proc.communicate(b"x" * (8 * 1024 * 1024))
        assert (out, err) == (b"closed", b"")
        assert proc.returncode == 0

    run(main())
    if sys.version_info < (3, 11):
        # 3.10's SubprocessStreamProtocol never retrieves its stdin pipe's
        # closed future holding the BrokenPipeError (3.11 does): asyncio's
        # own code reports it, on either loop, when the future is collected.
        gc.collect()
        for ctx in exc_handler.take():
            assert ctx["message"] == "Future exception was never retrieved"
            assert isinstance(ctx["exception"], BrokenPipeError)


# -- return codes, signals -------------------------------------------------------


def test_exit_codes_and_wait(loop, run):
    async def main():
        codes = [0, 1, 7, 255]
        procs = [await asyncio.create_subprocess_exec("/bin/sh", "-c", f"exit {c}") for c in codes]
        assert len({p.pid for p in procs}) == len(procs)
        assert await asyncio.gather(*(p.wait() for p in procs)) == codes
        assert [p.returncode for p in procs] == codes
        # exit via sys.exit in a Python child
        proc = await asyncio.create_subprocess_exec(PY, "-c", "import sys; sys.exit(42)")
        assert await proc.wait() == 42
        # several waiters on a running child all get the code
        proc = await asyncio.create_subprocess_exec("/bin/sh", "-c", "sleep 0.05; exit 3")
        assert proc.returncode is None
        assert await asyncio.gather(proc.wait(), proc.wait(), proc.wait()) == [3, 3, 3]
        return [p.pid for p in procs] + [proc.pid]

    pids = run(main())
    assert not _zombies(pids)


def test_kill_terminate_send_signal(loop, run):
    async def main():
        procs = [await asyncio.create_subprocess_exec("/bin/sleep", "30") for _ in range(3)]
        await asyncio.sleep(0.01)
        assert [p.returncode for p in procs] == [None, None, None]
        procs[0].kill()
        procs[1].terminate()
        procs[2].send_signal(signal.SIGUSR1)
        rcs = await asyncio.gather(*(p.wait() for p in procs))
        assert rcs == [-signal.SIGKILL, -signal.SIGTERM, -signal.SIGUSR1]
        # once the process has been waited for, signalling it is an error
        for p in procs:
            with pytest.raises(ProcessLookupError):
                p.kill()
            with pytest.raises(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        return [p.pid for p in procs]

    pids = run(main())
    assert not _zombies(pids)


def test_wait_racing_kill(loop, run):
    async def main():
        # wait() already pending when kill() comes
        proc = await asyncio.create_subprocess_exec("/bin/sleep", "30")
        waiter = asyncio.ensure_future(proc.wait())
        await asyncio.sleep(0)
        assert not waiter.done()
        proc.kill()
        assert await waiter == -signal.SIGKILL
        # kill() scheduled to run while wait() starts
        proc2 = await asyncio.create_subprocess_exec("/bin/sleep", "30")
        loop.call_soon(proc2.kill)
        assert await proc2.wait() == -signal.SIGKILL
        # kill() right after spawning, before anything waited
        proc3 = await asyncio.create_subprocess_exec("/bin/sleep", "30", stdout=PIPE)
        proc3.kill()
        assert await proc3.communicate() == (b"", None)
        assert proc3.returncode == -signal.SIGKILL
        return [proc.pid, proc2.pid, proc3.pid]

    pids = run(main())
    assert not _zombies(pids)


# -- Popen keywords --------------------------------------------------------------


def test_cwd_and_env(loop, run, tmp_path):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", "import os; print(os.getcwd())", stdout=PIPE, cwd=tmp_path
        )
        out, _ = await proc.communicate()
        assert out.decode().strip() == os.path.realpath(tmp_path)
        proc = await asyncio.create_subprocess_shell("pwd", stdout=PIPE, cwd=str(tmp_path))
        out, _ = await proc.communicate()
        assert os.path.realpath(out.decode().strip()) == os.path.realpath(tmp_path)
        proc = await asyncio.create_subprocess_exec(
            "/usr/bin/env", stdout=PIPE, env={"FOO": "bar", "EMPTY": ""}
        )
        out, _ = await proc.communicate()
        assert sorted(out.decode().splitlines()) == ["EMPTY=", "FOO=bar"]
        proc = await asyncio.create_subprocess_exec("/usr/bin/env", stdout=PIPE, env={})
        assert await proc.communicate() == (b"", None)

    run(main())


WRITE_FD_CHILD = (
    "import os, sys\n"
    "try:\n"
    "    os.write(int(sys.argv[1]), b'hi')\n"
    "    print('ok')\n"
    "except OSError as e:\n"
    "    print(e.errno)\n"
)


def test_pass_fds_and_close_fds(loop, run):
    async def write_fd(fd, **kwargs):
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", WRITE_FD_CHILD, str(fd), stdout=PIPE, **kwargs
        )
        out, _ = await proc.communicate()
        return out.decode().strip()

    async def main():
        r, w = os.pipe()
        os.set_blocking(r, False)
        try:
            assert await write_fd(w, pass_fds=(w,)) == "ok"
            assert os.read(r, 10) == b"hi"
            assert not os.get_inheritable(w)  # unchanged in the parent
            assert await write_fd(w) == str(errno.EBADF)
            os.set_inheritable(w, True)
            assert await write_fd(w, close_fds=False) == "ok"
            assert os.read(r, 10) == b"hi"
            assert await write_fd(w, close_fds=True) == str(errno.EBADF)
        finally:
            os.close(r)
            os.close(w)

    run(main())


def test_start_new_session_and_process_group(loop, run):
    code = "import os; print(os.getpid(), os.getsid(0), os.getpgid(0))"

    async def ids(**kwargs):
        proc = await asyncio.create_subprocess_exec(PY, "-c", code, stdout=PIPE, **kwargs)
        out, _ = await proc.communicate()
        pid, sid, pgid = map(int, out.split())
        assert pid == proc.pid
        return pid, sid, pgid

    async def main():
        my_sid, my_pgid = os.getsid(0), os.getpgid(0)
        pid, sid, pgid = await ids()
        assert (sid, pgid) == (my_sid, my_pgid)
        pid, sid, pgid = await ids(start_new_session=True)
        assert sid == pid == pgid
        assert sid != my_sid
        if sys.version_info >= (3, 11):
            pid, sid, pgid = await ids(process_group=0)
            assert pgid == pid != my_pgid
            assert sid == my_sid
        pid, sid, pgid = await ids(preexec_fn=os.setpgrp)
        assert pgid == pid
        assert sid == my_sid

    run(main())


def test_preexec_fn_raising(loop, run):
    def boom():
        raise ZeroDivisionError("in preexec_fn")

    async def main():
        before_fds, before_children = await settled_fd_count(), _children()
        with pytest.raises(subprocess.SubprocessError):
            await asyncio.create_subprocess_exec(
                "/bin/true", preexec_fn=boom, stdin=PIPE, stdout=PIPE, stderr=PIPE
            )
        with pytest.raises(subprocess.SubprocessError):
            await loop.subprocess_exec(SubRecorder, "/bin/true", preexec_fn=boom)
        gc.collect()
        assert open_fd_count() == before_fds
        assert not _zombies(_children() - before_children)
        # the loop keeps working
        proc = await asyncio.create_subprocess_exec("/bin/true")
        assert await proc.wait() == 0

    run(main())


def test_umask(loop, run):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", "import os; print(oct(os.umask(0)))", stdout=PIPE, umask=0o077
        )
        out, _ = await proc.communicate()
        assert out.strip() == b"0o77"

    run(main())


def _status_field(text, name):
    for line in text.splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1], 16)
    raise AssertionError(f"{name} not in status")


def test_restore_signals_and_signal_mask(loop, run):
    # Python ignores SIGPIPE; restore_signals (the default) gives the child
    # the default action back, restore_signals=False keeps it ignored.
    assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN
    sigpipe_bit = 1 << (signal.SIGPIPE - 1)
    with open("/proc/thread-self/status") as f:
        my_blocked = _status_field(f.read(), "SigBlk")

    async def status(**kwargs):
        proc = await asyncio.create_subprocess_exec(
            "/bin/cat", "/proc/self/status", stdout=PIPE, **kwargs
        )
        out, _ = await proc.communicate()
        return out.decode()

    async def main():
        text = await status()
        assert not _status_field(text, "SigIgn") & sigpipe_bit
        # the child starts with the spawning thread's signal mask
        assert _status_field(text, "SigBlk") == my_blocked
        text = await status(restore_signals=True)
        assert not _status_field(text, "SigIgn") & sigpipe_bit
        text = await status(restore_signals=False)
        assert _status_field(text, "SigIgn") & sigpipe_bit

    run(main())


@pytest.mark.skipif(
    sys.version_info < (3, 10) or not sys.platform.startswith("linux"),
    reason="pipesize and F_GETPIPE_SZ: Linux, Python 3.10+",
)
def test_pipesize(loop, run):
    import fcntl

    size = 256 * 1024  # above the 64 KiB default, within pipe-max-size

    async def main():
        tr, proto = await loop.subprocess_exec(SubRecorder, "/bin/cat", pipesize=size)
        try:
            for fd in (0, 1, 2):
                pipe = tr.get_pipe_transport(fd).get_extra_info("pipe")
                assert fcntl.fcntl(pipe.fileno(), fcntl.F_GETPIPE_SZ) == size
            tr.get_pipe_transport(0).close()
            assert await proto.done is None
        finally:
            tr.close()

    run(main())


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0,
    reason="changing user/group/extra_groups needs root",
)
def test_user_group_extra_groups(loop, run):
    async def ids(*args, **kwargs):
        proc = await asyncio.create_subprocess_exec("/usr/bin/id", *args, stdout=PIPE, **kwargs)
        out, _ = await proc.communicate()
        assert proc.returncode == 0
        return out.decode().split()

    async def main():
        assert await ids("-u", user=65534) == ["65534"]
        assert await ids("-g", group=65533) == ["65533"]
        groups = await ids("-G", user=65534, group=65534, extra_groups=[4242, 4343])
        assert sorted(groups) == ["4242", "4343", "65534"]
        assert await ids("-G", user=65534, group=65534, extra_groups=[]) == ["65534"]

    run(main())


# -- errors ----------------------------------------------------------------------

BAD_KWARGS = [
    {"universal_newlines": True},
    {"text": True},
    {"encoding": "utf-8"},
    {"errors": "strict"},
    {"bufsize": 1},
    {"bufsize": -1},
]


def test_argument_errors(loop, run):
    async def main():
        before_fds, before_children = await settled_fd_count(), _children()
        for kwargs in BAD_KWARGS:
            with pytest.raises(ValueError):
                await asyncio.create_subprocess_exec("/bin/true", **kwargs)
            with pytest.raises(ValueError):
                await asyncio.create_subprocess_shell("true", **kwargs)
            with pytest.raises(ValueError):
                await loop.subprocess_exec(SubRecorder, "/bin/true", **kwargs)
            with pytest.raises(ValueError):
                await loop.subprocess_shell(SubRecorder, "true", **kwargs)
        with pytest.raises(ValueError):
            await loop.subprocess_exec(SubRecorder, "/bin/true", shell=True)
        with pytest.raises(ValueError):
            await loop.subprocess_shell(SubRecorder, "true", shell=False)
        # a shell command that is not str/bytes: ValueError (not TypeError)
        for cmd in (["true"], 123, None):
            with pytest.raises(ValueError):
                await loop.subprocess_shell(SubRecorder, cmd)
            with pytest.raises(ValueError):
                await asyncio.create_subprocess_shell(cmd)
        # a program (or argument) that is not str/bytes/PathLike: TypeError
        for args in ((123,), (None,), ("/bin/echo", 5)):
            with pytest.raises(TypeError):
                await asyncio.create_subprocess_exec(*args)
            with pytest.raises(TypeError):
                await loop.subprocess_exec(SubRecorder, *args)
        gc.collect()
        assert open_fd_count() == before_fds
        assert not _children() - before_children  # nothing was spawned
        # explicit defaults are fine; bytes and PathLike programs work
        import pathlib

        for program in ("/bin/true", b"/bin/true", pathlib.Path("/bin/true")):
            proc = await asyncio.create_subprocess_exec(
                program, bufsize=0, universal_newlines=False, text=False
            )
            assert await proc.wait() == 0

    run(main())


def test_missing_executable(loop, run, tmp_path):
    not_executable = tmp_path / "script"
    not_executable.write_text("#!/bin/sh\nexit 0\n")
    not_executable.chmod(0o644)

    async def main():
        before_fds, before_children = await settled_fd_count(), _children()
        for _ in range(20):
            with pytest.raises(FileNotFoundError):
                await asyncio.create_subprocess_exec(
                    "/nonexistent/program", stdin=PIPE, stdout=PIPE, stderr=PIPE
                )
        with pytest.raises(FileNotFoundError):
            await loop.subprocess_exec(SubRecorder, "no-such-program-in-path-xyz")
        with pytest.raises(PermissionError):
            await asyncio.create_subprocess_exec(str(not_executable), stdout=PIPE)
        with pytest.raises(FileNotFoundError):
            await asyncio.create_subprocess_exec("/bin/true", cwd=tmp_path / "missing")
        gc.collect()
        assert open_fd_count() == before_fds
        assert not _zombies(_children() - before_children)
        # the loop keeps running, and a shell reports a missing program as 127
        await asyncio.sleep(0.001)
        proc = await asyncio.create_subprocess_shell("/nonexistent/program", stderr=DEVNULL)
        assert await proc.wait() == 127
        proc = await asyncio.create_subprocess_exec("/bin/true")
        assert await proc.wait() == 0

    run(main())


# -- many children ---------------------------------------------------------------


def test_200_concurrent_children(loop, run):
    async def main():
        gc.collect()
        before = open_fd_count()
        procs = await asyncio.gather(
            *(asyncio.create_subprocess_exec("/bin/true") for _ in range(200))
        )
        assert len({p.pid for p in procs}) == 200
        assert await asyncio.gather(*(p.wait() for p in procs)) == [0] * 200
        gc.collect()
        assert open_fd_count() == before
        return [p.pid for p in procs]

    pids = run(main(), timeout=30)
    assert not _zombies(pids)


def test_1000_sequential_spawn_wait_cycles(loop, run):
    async def main():
        gc.collect()
        before = open_fd_count()
        pids = []
        for _ in range(1000):
            proc = await asyncio.create_subprocess_exec("/bin/true")
            assert await proc.wait() == 0
            pids.append(proc.pid)
        gc.collect()
        assert open_fd_count() == before
        return pids

    pids = run(main(), timeout=40)
    assert not _zombies(pids)


def test_pipes_closed_over_many_children(loop, run):
    async def main():
        before = await settled_fds()
        for i in range(100):
            proc = await asyncio.create_subprocess_exec(
                "/bin/cat", stdin=PIPE, stdout=PIPE, stderr=PIPE
            )
            out, err = await proc.communicate(b"%d" % i)
            assert (out, err) == (b"%d" % i, b"")
        # NOTE: settled, not read at once: another thread may hold a file
        # open for a moment (ferroloop's watchdog did, reading source lines
        # for a slow callback's stack: see _stats.capture_stack); a leak per
        # child (3 pipes, a pidfd) stays, and the dicts name it.
        assert await settled_fds() == before

    run(main(), timeout=30)


# -- threads, foreign children, watchers, SIGCHLD --------------------------------


def test_loop_in_non_main_thread(loop, run, loop_factory):
    result = {}

    def worker():
        lp = loop_factory()
        try:

            async def main():
                proc = await asyncio.create_subprocess_exec(
                    PY, "-c", "print('from thread')", stdout=PIPE
                )
                out, _ = await proc.communicate()
                proc2 = await asyncio.create_subprocess_exec("/bin/sh", "-c", "exit 3")
                tr, proto = await asyncio.get_running_loop().subprocess_shell(SubRecorder, "exit 4")
                await proto.done
                tr.close()
                return out, proc.returncode, await proc2.wait(), tr.get_returncode()

            result["value"] = lp.run_until_complete(asyncio.wait_for(main(), 10))
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            result["error"] = exc
        finally:
            lp.close()

    t = threading.Thread(target=worker)
    t.start()
    t.join(20)
    assert not t.is_alive()
    assert "error" not in result, repr(result.get("error"))
    assert result["value"] == (b"from thread\n", 0, 3, 4)
    # the main thread's loop is unaffected
    assert run(asyncio.sleep(0.001, "main")) == "main"


def test_children_of_other_code_are_not_reaped(loop, run):
    # One foreign child is already a zombie before the loop runs, another
    # exits while the loop spawns and reaps its own children.
    early = subprocess.Popen(["/bin/sh", "-c", "exit 3"])
    late = subprocess.Popen(["/bin/sh", "-c", "sleep 0.1; exit 4"])
    try:
        deadline = time.monotonic() + 5
        while _state(early.pid) != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.001)

        async def main():
            for _ in range(5):
                proc = await asyncio.create_subprocess_exec("/bin/true")
                assert await proc.wait() == 0
            while True:
                state = _state(late.pid)
                assert state is not None, "the loop reaped a child it did not start"
                if state == "Z":
                    break
                procs = await asyncio.gather(
                    *(asyncio.create_subprocess_exec("/bin/true") for _ in range(3))
                )
                assert await asyncio.gather(*(p.wait() for p in procs)) == [0, 0, 0]
            await asyncio.sleep(0.05)

        run(main())
        assert _state(early.pid) == "Z"
        assert _state(late.pid) == "Z"
        assert early.wait(timeout=5) == 3
        assert late.wait(timeout=5) == 4
    finally:
        for p in (early, late):
            if p.returncode is None:
                p.kill()
                p.wait()


@pytest.mark.skipif(
    not hasattr(asyncio, "set_child_watcher"),
    reason="asyncio's child watchers were removed in Python 3.14",
)
def test_child_watcher_api_does_not_break_spawning(loop, run):
    async def spawn():
        proc = await asyncio.create_subprocess_exec("/bin/sh", "-c", "exit 6", stdout=PIPE)
        out, _ = await proc.communicate()
        return out, proc.returncode

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old = asyncio.get_child_watcher()
    try:
        assert isinstance(old, asyncio.AbstractChildWatcher)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            asyncio.set_child_watcher(asyncio.ThreadedChildWatcher())
        assert run(spawn()) == (b"", 6)
        # the pre-3.8 recipe: a watcher attached to the loop
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            watcher = asyncio.SafeChildWatcher()
            watcher.attach_loop(loop)
            asyncio.set_child_watcher(watcher)
            assert asyncio.get_child_watcher() is watcher
        assert run(spawn()) == (b"", 6)
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            asyncio.set_child_watcher(old)


def test_sigchld_handler_coexists_with_children(loop, run):
    hits = []

    async def main():
        loop.add_signal_handler(signal.SIGCHLD, hits.append, "chld")
        try:
            proc = await asyncio.create_subprocess_exec("/bin/sh", "-c", "exit 4")
            assert await proc.wait() == 4
            await wait_until(lambda: hits)
            await asyncio.sleep(0.01)
            n = len(hits)
            proc = await asyncio.create_subprocess_exec(
                "/bin/sh", "-c", "echo x; exit 5", stdout=PIPE
            )
            assert await proc.communicate() == (b"x\n", None)
            assert proc.returncode == 5
            await wait_until(lambda: len(hits) > n)
        finally:
            assert loop.remove_signal_handler(signal.SIGCHLD)
        return proc.pid

    pid = run(main())
    assert set(hits) == {"chld"}
    assert not _zombies([pid])


def test_child_reaped_by_someone_else(loop, run, caplog):
    # The test races the loop to the child's exit status.  Whoever loses:
    # if the test reaped the child, asyncio reports returncode 255 and logs a
    # warning; either way wait() returns.
    caplog.set_level(logging.WARNING, logger="asyncio")

    async def main():
        results = []
        for _ in range(3):
            proc = await asyncio.create_subprocess_exec("/bin/sh", "-c", "exit 5")
            try:
                _, status = os.waitpid(proc.pid, 0)  # noqa: ASYNC222 - the point
                stolen = os.waitstatus_to_exitcode(status)
            except ChildProcessError:
                stolen = None
            rc = await proc.wait()
            assert proc.returncode == rc
            results.append((proc.pid, stolen, rc))
        return results

    results = run(main())
    for pid, stolen, rc in results:
        if stolen is not None:
            assert stolen == 5
            assert rc == 255
            assert any(
                r.levelno == logging.WARNING and str(pid) in r.getMessage() for r in caplog.records
            ), caplog.text
        else:
            assert rc == 5
    assert not _zombies([pid for pid, _, _ in results])


# -- how the exit is noticed: fallback, many loops, fd exhaustion ----------------


@pytest.fixture
def no_pidfd(loop_name, monkeypatch):
    """ferroloop as on a kernel without pidfds (one waiting thread per
    child); asyncio's loop is unaffected."""
    if loop_name == "ferroloop":
        from ferroloop import _subprocess

        monkeypatch.setattr(_subprocess, "_pidfd_ok", False)


def test_children_without_pidfds(loop, run, no_pidfd):
    async def main():
        gc.collect()
        before = open_fd_count()
        procs = await asyncio.gather(
            *(asyncio.create_subprocess_exec("/bin/sh", "-c", f"exit {i}") for i in range(20))
        )
        assert await asyncio.gather(*(p.wait() for p in procs)) == list(range(20))
        proc = await asyncio.create_subprocess_exec("/bin/cat", stdin=PIPE, stdout=PIPE)
        assert await proc.communicate(b"x" * 100_000) == (b"x" * 100_000, None)
        proc = await asyncio.create_subprocess_exec("/bin/sleep", "10")
        proc.kill()
        assert await proc.wait() == -signal.SIGKILL
        gc.collect()
        assert open_fd_count() == before
        return [p.pid for p in procs]

    pids = run(main(), timeout=20)
    assert not _zombies(pids)


def test_many_loops_spawn_at_once(loop_factory):
    def worker(index, results):
        lp = loop_factory()
        try:

            async def main():
                procs = await asyncio.gather(
                    *(
                        asyncio.create_subprocess_exec(
                            PY, "-c", f"import sys; sys.exit({index * 10 + i})", stdout=DEVNULL
                        )
                        for i in range(10)
                    )
                )
                return await asyncio.gather(*(p.wait() for p in procs))

            results[index] = lp.run_until_complete(asyncio.wait_for(main(), 20))
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            results[index] = exc
        finally:
            lp.close()

    results = {}
    threads = [threading.Thread(target=worker, args=(i, results)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    # Every loop saw exactly its own children's exit codes.
    assert results == {i: [i * 10 + k for k in range(10)] for i in range(4)}


@pytest.mark.skipif(
    sys.version_info < (3, 11),
    reason="3.10's subprocess.Popen leaks the pipes _get_handles made when a later "
    "one fails with EMFILE (3.11 closes them: _on_error_fd_closer); both loops spawn through it",
)
def test_spawn_with_fds_exhausted(loop, run):
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    async def main():
        gc.collect()
        before = open_fd_count()
        highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
        fillers = []
        # Some headroom above the highest open fd: where the open fds have no
        # gaps (a fresh CI process), the limit alone would leave none free.
        resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 9, hard))
        try:
            # Fill every free fd number below the limit, then free two: not
            # enough for a child's pipes.
            while True:
                try:
                    fillers.append(os.open(os.devnull, os.O_RDONLY))
                except OSError as exc:
                    assert exc.errno == errno.EMFILE
                    break
            for _ in range(2):
                os.close(fillers.pop())
            for _ in range(5):
                with pytest.raises(OSError) as info:
                    await asyncio.create_subprocess_exec(
                        "/bin/true", stdin=PIPE, stdout=PIPE, stderr=PIPE
                    )
                assert info.value.errno == errno.EMFILE
            # Room for one pipe and Popen's error pipe, no more.
            for _ in range(2):
                os.close(fillers.pop())
            proc = await asyncio.create_subprocess_exec("/bin/sh", "-c", "exit 7", stdout=PIPE)
            assert await proc.communicate() == (b"", None)
            assert proc.returncode == 7
        finally:
            for fd in fillers:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        gc.collect()
        assert open_fd_count() == before
        # The loop keeps working once fds are free again.
        proc = await asyncio.create_subprocess_exec("/bin/cat", stdin=PIPE, stdout=PIPE)
        assert await proc.communicate(b"ok") == (b"ok", None)

    run(main())
