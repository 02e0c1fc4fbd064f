"""Run a function in a forked copy of this process: a crash or a hang in it is reported, not suffered.

The copy has everything this process had at the fork (a pytest item's fixtures, the test module as pytest imported
it) and shares nothing after it. Its answer and progress messages come back as JSON lines through a pipe; what it
prints, through two more, relayed to this process's own streams (where pytest captures it) and kept for the report
of a crash. A progress message's ``timeout`` is how long the child may then stay silent; one silent longer (plus a
grace period) is stopped: first with SIGABRT, so that ``faulthandler`` writes its threads' stacks, then killed.

torch at a fork: the copy has none of this process's threads. The inter-op pool is a process-wide object made on
first use with no fork handler, so a copy of a process whose pool has threads can never run a scripted fork
(``pool_started`` tells; the caller runs in-process then); OpenMP's intra-op team is in the same state, so the copy
computes with one intra-op thread. Nothing here imports torch.
"""
from __future__ import annotations

import collections
import ctypes
import faulthandler
import json
import os
import selectors
import signal
import sys
import time
import traceback
from typing import Any, Callable, Optional

GRACE_S = 5.0  # beyond a message's timeout before a silent child is stopped (a loaded machine is slow)
OUTPUT_LINES = 30  # of the child's output, quoted when it died
KEPT_LINES = 400
_STOP_WAIT_S = 3.0  # after SIGABRT, for the child's stacks and its end, before SIGKILL


class ChildDied(Exception):
    """The child ended without an answer; ``how`` says how (a signal, an exit status)."""

    def __init__(self, how: str, output: str, last: dict[str, Any]):
        super().__init__(how)
        self.how, self.output, self.last = how, output, last


class ChildStopped(Exception):
    """The child stayed silent longer than its last message allowed and was stopped."""

    def __init__(self, waited: float, output: str, last: dict[str, Any]):
        super().__init__(f"silent for {waited:.1f} s")
        self.waited, self.output, self.last = waited, output, last


class ChildFailed(Exception):
    """The function raised in the child (a bug in the caller's code, not a crash); the message is its traceback."""


def pool_started() -> bool:
    """Whether torch's inter-op pool (or another of its thread pools, named ``PTThreadPool``) has threads here."""
    from ._exit import _pool_started

    return "torch" in sys.modules and _pool_started()


def exit_description(status: int) -> str:
    """``killed by SIGSEGV (segmentation fault)`` or ``exited with status 3``, from ``os.waitstatus_to_exitcode``."""
    if status >= 0:
        return f"exited with status {status}"
    try:
        name = signal.Signals(-status).name
    except ValueError:
        name = f"signal {-status}"
    description = signal.strsignal(-status) or ""
    return f"was killed by {name}" + (f" ({description.lower()})" if description else "")


def run_forked(work: Callable[[Callable[[dict[str, Any]], None]], Any], timeout: float,
               keep_python_streams: bool = False) -> Any:
    """``work(send)`` in a forked child; returns what it returned (JSON-able).

    ``send(message)`` reports progress; the child may stay silent ``timeout`` seconds at first and after each
    message its ``timeout`` (plus ``GRACE_S``). Raises ``ChildDied``, ``ChildStopped`` or ``ChildFailed``.
    ``keep_python_streams``: leave ``sys.stdout``/``sys.stderr`` as they are in the child (a capture fixture of the
    test reads them); otherwise they go to the pipes too.
    """
    for stream in (sys.stdout, sys.stderr):  # nothing buffered is written twice, once by each process
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    channel_r, channel_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # never returns: the child must not run the parent's code after this point
        status = 70
        try:
            for fd in (channel_r, out_r, err_r):
                os.close(fd)
            status = _child(work, parent, channel_w, out_w, err_w, keep_python_streams)
        finally:
            os._exit(status)
    for fd in (channel_w, out_w, err_w):
        os.close(fd)
    return _Parent(pid, channel_r, out_r, err_r).wait(timeout)


# --- the child --------------------------------------------------------------------------------------------------


def _child(work: Callable, parent: int, channel_w: int, out_w: int, err_w: int, keep_python_streams: bool) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it stops this process
    _die_with(parent)
    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    os.close(out_w)
    os.close(err_w)
    stderr = open(2, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)
    if not keep_python_streams:
        sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)
        sys.stderr = stderr
    faulthandler.enable(file=stderr)  # a crash or a stop leaves the Python stacks in the output the parent quotes
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)  # OpenMP's team of the parent is gone (see the module docstring)
    channel = open(channel_w, "w", encoding="utf-8")

    def send(message: dict[str, Any]) -> None:
        channel.write(json.dumps(message) + "\n")
        channel.flush()

    try:
        send({"event": "result", "value": work(send)})
    except BaseException:  # noqa: BLE001 - the parent raises it as ChildFailed
        send({"event": "failed", "traceback": traceback.format_exc()})
    for stream in (sys.stdout, sys.stderr, stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    return 0


def _die_with(parent: int) -> None:
    """End this process when its parent is gone (Linux: ``PR_SET_PDEATHSIG``; elsewhere nothing)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        os._exit(0)


# --- the parent -------------------------------------------------------------------------------------------------


class _Parent:
    """Reads the child's messages and output until it answers, dies or stays silent too long."""

    def __init__(self, pid: int, channel: int, out: int, err: int):
        self.pid = pid
        self.status: Optional[int] = None
        self.kept: collections.deque[str] = collections.deque(maxlen=KEPT_LINES)
        self.last: dict[str, Any] = {}
        self.answer: Optional[dict[str, Any]] = None
        self.selector = selectors.DefaultSelector()
        self.pending: dict[int, bytes] = {}  # by pipe: a line not finished yet
        self.fds = (channel, out, err)
        for fd, sink in zip(self.fds, (None, "stdout", "stderr")):
            os.set_blocking(fd, False)
            self.selector.register(fd, selectors.EVENT_READ, sink)
            self.pending[fd] = b""

    def wait(self, timeout: float) -> Any:
        allowed, heard = timeout + GRACE_S, time.monotonic()
        try:
            while self.answer is None and self.status is None:
                if self._read(0.1)[0]:
                    heard = time.monotonic()
                    allowed = float(self.last.get("timeout", timeout)) + GRACE_S
                self._reap()
                if self.answer is None and self.status is None and time.monotonic() - heard > allowed:
                    self._stop()
                    raise ChildStopped(time.monotonic() - heard, self.output(), self.last)
            self._end()
        except BaseException:
            self._kill()
            raise
        finally:
            self._close()
        if self.answer is None:
            raise ChildDied(exit_description(os.waitstatus_to_exitcode(self.status)), self.output(), self.last)
        if self.answer["event"] == "failed":
            raise ChildFailed(self.answer["traceback"])
        return self.answer["value"]

    def _read(self, timeout: float) -> tuple[bool, bool]:
        """Read what is there, waiting up to ``timeout``: whether a progress message came, whether anything did."""
        heard = got = False
        for key, _ in self.selector.select(timeout):
            try:
                data = os.read(key.fd, 65536)
            except BlockingIOError:
                continue
            if not data:
                self.selector.unregister(key.fd)
                continue
            got = True
            lines = (self.pending[key.fd] + data).split(b"\n")
            self.pending[key.fd] = lines.pop()
            for line in lines:
                heard |= self._line(key.data, line + b"\n")
        return heard, got

    def _line(self, sink: Optional[str], line: bytes) -> bool:
        """One line: the child's output is relayed here, where pytest captures it for the item; a message kept."""
        if sink is not None:
            text = line.decode(errors="replace")
            self.kept.append(text)
            getattr(sys, sink).write(text)
            return False
        message = json.loads(line)
        if message.get("event") in ("result", "failed"):
            self.answer = message
        else:
            self.last = message
        return True

    def _reap(self) -> None:
        if self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = status

    def _end(self) -> None:
        """The child answered (it exits right after) or died: reap it, and take the rest of its output, for a
        moment only if a process it left behind holds the pipes open."""
        self._wait_then_kill(0.02)

    def _stop(self) -> None:
        """SIGABRT first (``faulthandler`` writes the stacks), SIGKILL if it is still there."""
        try:
            os.kill(self.pid, signal.SIGABRT)
        except ProcessLookupError:
            return
        self._wait_then_kill(0.05)

    def _wait_then_kill(self, poll_s: float) -> None:
        """Up to ``_STOP_WAIT_S`` for the child to exit (reading what it writes meanwhile), then kill and drain."""
        deadline = time.monotonic() + _STOP_WAIT_S
        while self.status is None and time.monotonic() < deadline:
            self._read(poll_s)
            self._reap()
        self._kill()
        self._drain()

    def _drain(self) -> None:
        deadline = time.monotonic() + 1.0
        while self.selector.get_map() and time.monotonic() < deadline and self._read(0.05)[1]:
            pass
        for fd, sink in zip(self.fds[1:], ("stdout", "stderr")):
            if self.pending[fd]:
                self._line(sink, self.pending[fd])

    def _kill(self) -> None:
        if self.status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
                _, self.status = os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass

    def _close(self) -> None:
        for fd in self.fds:
            if fd in self.selector.get_map():
                self.selector.unregister(fd)
            os.close(fd)
        self.selector.close()

    def output(self) -> str:
        """The child's last lines of output; after a fatal error or a stop, from a little before its report."""
        kept = list(self.kept)
        fatal = next((i for i, line in enumerate(kept) if line.startswith(("Fatal Python error", "Timeout ("))),
                     None)
        if fatal is None:
            return "".join(kept[-OUTPUT_LINES:])
        return "".join(kept[max(0, fatal - OUTPUT_LINES // 3):fatal + OUTPUT_LINES])
