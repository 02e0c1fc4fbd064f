"""The warm template the checking children are forked from: imported once by the fork server of ``isolation``.

Importing this module pays, once per session, what every child would otherwise pay before its first check: torch,
Hypothesis and forkcheck's imports (about 1.5 s), the TorchScript frontend and graph pass, the first runs under
forkcheck's dispatch modes (``forkcheck._dispatch``: they no longer import torch._dynamo, which took 2-4 s), and
Hypothesis's first draws and its scan of the loaded modules for constants. It does so by preparing
a real check of a tiny forking target and running its serial references only (forks inline), so it never launches a
task: torch's inter-op pool is created by the first task and cannot be sized after that, and libgomp's threads do
not survive a fork, so the template must start neither: ``THREADS`` counts its threads once torch is imported and
again when the warm-up is done (the same: the warm-up started none; the one thread beyond the main one, if any, is
numpy's OpenBLAS pool, which shuts down at a fork and restarts in the child). A forked child sizes its own pool.
``WARM_ERROR`` says why the warm-up failed, if it did.
"""
from __future__ import annotations

import os
import time

import torch
from torch import Tensor


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 0


IMPORTED_THREADS = _threads()


def _settled_threads(wait_s: float = 5.0) -> int:
    """The thread count once the warm-up's run threads are gone: a joined thread's OS thread ends a moment later."""
    deadline = time.monotonic() + wait_s
    while _threads() > IMPORTED_THREADS and time.monotonic() < deadline:
        time.sleep(0.01)
    return _threads()


def _tiny(x: Tensor) -> Tensor:
    return torch.jit.wait(torch.jit.fork(torch.neg, x)) + x


def _warm() -> None:
    from . import strategies as fst

    from . import runner
    from .marker import fork_safe
    from .settings import Settings
    from .target import Target

    target = Target.from_object(fork_safe(_tiny, x=fst.tensors(shape=(2,))), name="forkcheck._template:_tiny")
    checker = runner.Checker(target, Settings(examples=2, schedules=1, seed=0))
    try:  # serial runs only: the schedules are drawn, not run, so nothing reaches the inter-op pool
        runner._search(checker, 0, runner.Mode("warm-up", serial_only=True))()
        _scan_constants()
    finally:
        runner._RunThread.stop()  # the serial runs' thread: a fork keeps no thread


def _scan_constants() -> None:
    """Hypothesis scans the loaded modules for constants at some first draw in a process (a private step of its
    own, so best effort): here, once, rather than in every child; a child then scans only the modules it imports."""
    try:
        from hypothesis.internal.conjecture.providers import _get_local_constants
    except ImportError:
        return
    _get_local_constants()


try:
    _warm()
    WARM_ERROR = ""
except Exception as err:  # a colder template still serves: each child then pays what the warm-up did not
    WARM_ERROR = f"{type(err).__name__}: {err}"
THREADS = (IMPORTED_THREADS, _settled_threads())
