"""Pipes and subprocesses of ferroloop.Loop: connect_read_pipe,
connect_write_pipe, subprocess_exec, subprocess_shell.

NOTE: as for networking (``_network.py``), the policy is asyncio's own code
for the running Python version: ``connect_*_pipe`` and ``subprocess_*``
(argument checks, debug logs) come from ``BaseEventLoop``, the subprocess
transport is asyncio's ``_UnixSubprocessTransport`` (``subprocess.Popen``,
which uses vfork where it can, every keyword the stdlib takes, the
``SubprocessProtocol`` callback order, ``Process.wait()`` of this version).
What is ferroloop's: the pipe transports (``_pipes.py``, native I/O) and how
a child's exit is noticed.

Child exit: a pidfd (``pidfd_open``, Linux >= 5.3, probed once) watched on
the loop's own poller, then ``waitpid(pid)`` of that child only; without
pidfds, one thread per child blocked in ``waitpid(pid)`` (asyncio's
``ThreadedChildWatcher``). Never ``waitpid(-1)`` and no SIGCHLD handler, so
children started by other code are left alone, and SIGCHLD stays free for
``add_signal_handler``. A child watcher the program installed through the
3.11-3.13 policy API that is not one of those two kinds (``SafeChildWatcher``,
``FastChildWatcher``, ``MultiLoopChildWatcher``, a custom one) is used as
asyncio uses it: such a watcher may reap every child of the process.
"""

import os
import sys
import threading
from asyncio import base_events, events, unix_events
from asyncio.log import logger

from ._pipes import ReadPipeTransport, WritePipeTransport

_BaseLoop = base_events.BaseEventLoop
_UnixLoop = unix_events._UnixSelectorEventLoop
_PY314 = sys.version_info >= (3, 14)

# Watchers that only wait for the pids they are given: the loop's own
# watching is equivalent and needs no thread.
_EQUIVALENT_WATCHERS = tuple(
    cls
    for cls in (
        getattr(unix_events, "ThreadedChildWatcher", None),
        getattr(unix_events, "PidfdChildWatcher", None),
    )
    if cls is not None
)

_pidfd_ok = None


def _pidfd_supported():
    """Whether pidfd_open works here (probed once per process)."""
    global _pidfd_ok
    if _pidfd_ok is None:
        try:
            os.close(os.pidfd_open(os.getpid()))
        except (AttributeError, OSError):
            _pidfd_ok = False
        else:
            _pidfd_ok = True
    return _pidfd_ok


def _installed_child_watcher():
    """The child watcher the program set through the policy, if asyncio
    would use it differently from the loop's own watching (see the module
    docstring); None otherwise. Never creates one."""
    if _PY314:
        return None
    watcher = getattr(events.get_event_loop_policy(), "_watcher", None)
    if watcher is None or type(watcher) in _EQUIVALENT_WATCHERS:
        return None
    return watcher


def _reaped_elsewhere(pid, proc):
    """The returncode of child *pid*, which someone else reaped.

    NOTE: ``Popen.send_signal()`` polls first, so ``kill()`` racing the
    child's exit may have reaped it through its own Popen object: its
    returncode is then the real one. Reaped by anyone else: asyncio's 255.
    """
    if proc is not None and proc.returncode is not None:
        return proc.returncode
    logger.warning(
        "child process pid %d exit status already read:  will report returncode 255",
        pid,
    )
    return 255


def _exit_code(pid, proc, options):
    """``waitpid(pid, options)``: the child's returncode, or None if it has
    not exited (WNOHANG)."""
    try:
        wpid, status = os.waitpid(pid, options)
    except ChildProcessError:
        return _reaped_elsewhere(pid, proc)
    if wpid == 0:
        return None
    return os.waitstatus_to_exitcode(status)


def _wait_in_thread(loop, pid, transp):
    """Fallback without pidfds: block in waitpid(pid) in a thread."""
    returncode = _exit_code(pid, transp._proc, 0)
    try:
        loop._child_watcher_callback(pid, returncode, transp)
    except RuntimeError:
        # The loop was closed meanwhile.
        logger.warning("Loop %r that handles pid %r is closed", loop, pid)


class SubprocessMixin:
    """Pipes and subprocesses of ferroloop.Loop."""

    # -- asyncio's own policy code (see the module docstring) ----------------
    connect_read_pipe = _BaseLoop.connect_read_pipe
    connect_write_pipe = _BaseLoop.connect_write_pipe
    subprocess_exec = _BaseLoop.subprocess_exec
    subprocess_shell = _BaseLoop.subprocess_shell
    # asyncio's private method, which typeshed does not declare.
    _log_subprocess = _BaseLoop._log_subprocess  # type: ignore[attr-defined]

    def _child_watcher_callback(self, pid, returncode, transp):
        """A child exited (from any thread): ``_process_exited`` two ticks
        later, as asyncio schedules it (pipe data read in the same tick is
        delivered first)."""
        self.call_soon_threadsafe(self.call_soon, transp._process_exited, returncode)

    # -- hooks ---------------------------------------------------------------

    def _make_read_pipe_transport(self, pipe, protocol, waiter=None, extra=None):
        return ReadPipeTransport(self, pipe, protocol, waiter, extra)

    def _make_write_pipe_transport(self, pipe, protocol, waiter=None, extra=None):
        return WritePipeTransport(self, pipe, protocol, waiter, extra)

    async def _make_subprocess_transport(
        self, protocol, args, shell, stdin, stdout, stderr, bufsize, extra=None, **kwargs
    ):
        if _installed_child_watcher() is not None:
            return await _UnixLoop._make_subprocess_transport(
                self, protocol, args, shell, stdin, stdout, stderr, bufsize, extra, **kwargs
            )
        waiter = self.create_future()
        transp = unix_events._UnixSubprocessTransport(
            self,
            protocol,
            args,
            shell,
            stdin,
            stdout,
            stderr,
            bufsize,
            waiter=waiter,
            extra=extra,
            **kwargs,
        )
        self._watch_child(transp)
        try:
            await waiter
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException:
            transp.close()
            await transp._wait()
            raise
        return transp

    # -- child exit ----------------------------------------------------------

    def _watch_child(self, transp):
        pid = transp.get_pid()
        if _pidfd_supported():
            try:
                pidfd = os.pidfd_open(pid)
            except ProcessLookupError:
                # Reaped already (nothing here waits for it before this).
                self._child_watcher_callback(pid, _reaped_elsewhere(pid, transp._proc), transp)
                return
            except OSError:
                pass  # EMFILE and such: wait in a thread instead
            else:
                self._child_pidfds.add(pidfd)
                self._add_reader(pidfd, self._child_pidfd_ready, pidfd, transp)
                return
        self._wait_child_in_thread(pid, transp)

    def _wait_child_in_thread(self, pid, transp):
        thread = threading.Thread(
            target=_wait_in_thread,
            args=(self, pid, transp),
            name=f"waitpid-{pid}",
            daemon=True,
        )
        thread.start()

    def _child_pidfd_ready(self, pidfd, transp):
        self._remove_reader(pidfd)
        self._child_pidfds.discard(pidfd)
        os.close(pidfd)
        pid = transp.get_pid()
        returncode = _exit_code(pid, transp._proc, os.WNOHANG)
        if returncode is None:
            # NOTE: a pidfd is readable once the child has exited, so this
            # cannot happen; never spin on it if it does.
            self._wait_child_in_thread(pid, transp)
            return
        self._child_watcher_callback(pid, returncode, transp)

    def _close_child_watching(self):
        """At close(): stop watching (the children are not reaped, as on
        asyncio's loop; their Popen objects reap them when collected)."""
        pidfds = list(self._child_pidfds)
        self._child_pidfds.clear()
        for pidfd in pidfds:
            os.close(pidfd)
