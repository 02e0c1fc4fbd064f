"""A steady exit status after ``torch.jit.fork``: the abort at exit of pytorch issue 60998, and how it is avoided.

An inter-op pool thread that finished a task drops its last references to Python objects (the task's future and
interpreter state) after the future completed, and takes the GIL to do so. When that happens while the interpreter
finalizes, Python ends the thread with ``pthread_exit``, whose unwinding crosses a ``noexcept`` destructor: the process
aborts ("terminate called without an active exception", SIGABRT) although every task finished: 35 of 200 runs of a
script that forks up to its last line, on a loaded machine (0 of 200 with the guard). A task stuck forever (a hang
forkcheck gave up on in this process) makes it certain. The guard runs at exit once forkcheck ran forks in this
process. It first releases the GIL for a moment, so pool threads finish dropping their references. Then:

- When pytest is the main program and its ``pytest_cmdline_main`` returned (its exit status is known), the guard is
  the last ``atexit`` function registered, so it runs first: it runs every other ``atexit`` function (in their usual
  order), flushes the standard streams, every open Python file and C's stdio, then ends the process with
  ``os._exit(status)``. Skipped: only the interpreter's final garbage collection and module teardown (``__del__`` of
  objects still alive at exit), C-level exit handlers and static destructors -- the step that aborts.
- If a run forkcheck gave up on as a hang may still be running on the pool, the other ``atexit`` functions are
  skipped too (torch's own one frees what the running task uses: the process would crash in it).
- Elsewhere (a script calling ``pytest.main()`` or ``forkcheck.check()``, a pytest-xdist worker, whose exit status
  nobody reads, a nested pytest run, or another ``atexit`` function registered after the guard), the interpreter
  finishes as usual after the moment of grace.

Nothing here imports torch.
"""
from __future__ import annotations

import atexit
import gc
import io
import os
import sys
import time
import weakref
from typing import Any, Optional

SETTLE_S = 0.05  # with the GIL released this long, finished tasks dropped their references (0 aborts in 200)

_forks = False  # forkcheck ran forks in this process
_abandoned = False  # and gave up waiting for one run, which may still be running
_registered: Optional[int] = None  # the guard's index among the atexit functions, once registered
_owner: Any = None  # a weak reference to the config of the pytest run that is this process's main program
_status: Optional[int] = None  # what that run's pytest_cmdline_main returned
_exiting = False


def forks_ran() -> None:
    """Called where forkcheck runs forks in this process: from now on the guard runs at exit."""
    global _forks
    if not _forks:
        _forks = True
        _register()


def run_abandoned() -> None:
    """Called when forkcheck gives up on a run (a hang) in this process: a task may run on until the process ends."""
    global _abandoned
    _abandoned = True
    forks_ran()


def abandoned() -> bool:
    """Whether a run forkcheck gave up on as a hang may still be running in this process."""
    return _abandoned


def own(config: Any) -> None:
    """``pytest_configure``: the first pytest run of a process whose main program is pytest owns its exit status."""
    global _owner
    if _owner is None and _pytest_is_main():
        _owner = weakref.ref(config)


def pytest_returned(config: Any, status: Any) -> None:
    """``pytest_cmdline_main`` returned ``status``; for the owning run that is the process's exit status."""
    global _status
    if _owner is not None and _owner() is config:
        try:
            _status = int(status)
        except (TypeError, ValueError):
            return
        if _forks:
            _register()  # again, so it is the last one registered and runs first


def _pytest_is_main() -> bool:
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None:
        return spec.name in ("pytest.__main__", "py.test.__main__")
    return os.path.basename(sys.argv[0] if sys.argv else "") in ("pytest", "py.test")


def _register() -> None:
    global _registered
    atexit.unregister(_at_exit)
    counter = getattr(atexit, "_ncallbacks", None)
    _registered = counter() if counter is not None else None
    atexit.register(_at_exit)


def _is_last() -> bool:
    counter = getattr(atexit, "_ncallbacks", None)
    return counter is not None and _registered is not None and counter() == _registered + 1


def _at_exit() -> None:
    global _exiting
    if _exiting:  # called again by ``atexit._run_exitfuncs`` below
        return
    _exiting = True
    if not _pool_started():
        return
    time.sleep(SETTLE_S)
    if _status is None:
        return
    run_others = getattr(atexit, "_run_exitfuncs", None)
    if _abandoned or (run_others is not None and _is_last()):
        if not _abandoned:
            run_others()
        flush_everything()
        os._exit(_status)


def _pool_started() -> bool:
    """Whether torch's thread pools have threads (they are named ``PTThreadPool``); without /proc, whether torch was
    imported."""
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return "torch" in sys.modules
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/comm", encoding="utf-8", errors="replace") as comm:
                if comm.read().startswith("PTThreadPool"):
                    return True
        except OSError:
            continue
    return False


def flush_everything() -> None:
    """Flush what interpreter shutdown would have: the standard streams, open Python files, and C's stdio buffers."""
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        _flush(stream)
    for obj in gc.get_objects():
        if issubclass(type(obj), _FILES):  # not isinstance: that reads ``__class__``, which some objects compute
            _flush(obj)
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError, TypeError):
        pass


_FILES = (io.BufferedWriter, io.BufferedRandom, io.TextIOWrapper)


def _flush(stream: Any) -> None:
    try:
        if stream is not None and not stream.closed and stream.writable():
            stream.flush()
    except (OSError, ValueError, AttributeError):
        pass
