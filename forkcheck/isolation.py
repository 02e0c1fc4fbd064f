"""Checks in a child process: a hang is killed, a crash is an ``error`` naming its signal, and pytest runs no forks.

The real runtime cannot interrupt a task stuck on the inter-op pool, and a target that aborts or segfaults takes its
process with it, so targets are checked in a child process. Children are forked from a warm template
(``forkcheck._template``, preloaded once per session by multiprocessing's fork server): torch, Hypothesis, the
dispatch machinery and the TorchScript frontend are loaded there once, and no inter-op pool exists yet, so a child
is ready in a fraction of a second and sizes its own pool. One child serves many targets: the parent names a target
by module, file and attribute, the child imports it with the parent's ``sys.path`` and working directory, runs
``runner.check`` and answers with the result's JSON. There is one child per inter-op pool size asked for
(``forkcheck.pools``); each sizes its pool before its first check, and children of different sizes check at once.

While it checks, the child announces every run (the serial reference, each concurrent schedule). Each run may take
the target's ``timeout`` (the child's own watch reports a run over it as a ``hang`` finding); the parent allows each
run that plus a grace period, and kills a child that stays silent longer (also a ``hang``). A child that dies is an
``error`` with the signal and its last lines of output. A child that abandoned a stuck run, whose torch state is
no longer clean, or where the target left processes running is retired after its answer; the next target gets a
fresh one. Each child leads its own process group, and stopping it stops the group: processes the target started
(``subprocess.Popen``, ``os.fork``) go with it, instead of holding the child's pipes open and pytest's exit with them.

Protocol, JSON lines over three pipes per child. Parent to child (requests): ``{"op": "check", ...}``. Child to
parent (messages): ``ready``, ``run`` (``timeout``, ``what``, ``engine``, ``phase``), ``result`` (``result``,
``retire``), and ``unavailable`` (``reason``: the target does not import there; after a fresh child also fails, the
parent checks the target in-process). The child's standard output and error go to a third pipe, so what the user's
code prints cannot break the channel.
"""
from __future__ import annotations

import atexit
import collections
import contextlib
import faulthandler
import importlib
import importlib.util
import itertools
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import traceback
from typing import TYPE_CHECKING, Any, Callable, Optional

from ._words import plural

if TYPE_CHECKING:
    from .runner import RunStart

GRACE_S = 10.0  # beyond a run's timeout before the parent gives up on a silent child (a loaded machine is slow)
PREPARE_S = 120.0  # importing the target's module, scripting it, the static pre-check: before the first run
START_S = 120.0  # the child's own start: Python, torch, Hypothesis
OUTPUT_LINES = 30  # of the child's output, quoted in an error
KEPT_LINES = 400  # of the child's output, kept to find the crashed thread's stack in


class Unavailable(Exception):
    """The check cannot run in a child process (the target does not import there, or no child starts)."""


# --- the parent -------------------------------------------------------------------------------------------------


class _Forked:
    """A child forked from the warm template (``forkcheck._template``) by multiprocessing's fork server, with the
    part of ``subprocess.Popen``'s face that ``ChildProcess`` uses: ``stdin`` (requests), ``stdout`` (messages) and
    ``stderr`` (what it prints) pipes, ``pid``, ``poll``, ``kill``, ``wait``. It is forked on a thread of its own:
    the first fork waits for the template's warm-up, which so overlaps the parent's other work."""

    def __init__(self, pool_size: int):
        from multiprocessing.connection import Connection

        requests, requests_w = os.pipe()
        messages_r, messages = os.pipe()
        output_r, output = os.pipe()
        self.stdin, self.stdout, self.stderr = (os.fdopen(requests_w, "wb"), os.fdopen(messages_r, "rb"),
                                                os.fdopen(output_r, "rb"))
        self._child_ends = [Connection(fd) for fd in (requests, messages, output)]  # the fork server passes them
        self.process: Any = None
        self.error = ""  # why the fork failed
        self._forking = threading.Thread(target=self._fork, args=(pool_size,), name="forkcheck-fork", daemon=True)
        self._forking.start()

    def _fork(self, pool_size: int) -> None:
        try:
            process = _fork_server().Process(target=serve, args=(*self._child_ends, pool_size),
                                             name=f"forkcheck-pool-{pool_size}")
            process.start()
            self.process = process
        except Exception as err:  # the fork server did not start or answer
            self.error = f"{type(err).__name__}: {err}"
        finally:
            for end in self._child_ends:  # the child has its own copies: its pipes end when it does
                end.close()

    @property
    def pid(self) -> Optional[int]:
        self._forking.join()
        return self.process.pid if self.process is not None else None

    def poll(self) -> Optional[int]:
        if self._forking.is_alive():
            return None
        return self.process.exitcode if self.process is not None else 1

    def kill(self) -> None:
        self._forking.join()
        if self.process is not None and self.process.exitcode is None:
            self.process.kill()

    def wait(self, timeout: Optional[float] = None) -> int:
        self._forking.join(timeout)
        if self.process is None:
            if self._forking.is_alive():
                raise subprocess.TimeoutExpired("forkcheck child", timeout)
            return 1
        self.process.join(timeout)
        if self.process.exitcode is None:
            raise subprocess.TimeoutExpired("forkcheck child", timeout)
        return self.process.exitcode


def _fork_server() -> Any:
    """multiprocessing's fork server (one per process, started on first use), preloaded with the warm template."""
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["forkcheck._template"])
    return context


class ChildProcess:
    """One child: its process, a thread reading its messages and one keeping its recent output.

    ``pool_size``: the threads of the child's inter-op pool (0: torch's default), set before its first check.
    """

    def __init__(self, pool_size: int = 0):
        self.pool_size = pool_size
        self.proc = _Forked(pool_size)
        self.messages: queue.Queue = queue.Queue()
        self.output: collections.deque[str] = collections.deque(maxlen=KEPT_LINES)
        self.captured: list[str] = []  # the output of the check under way
        self.ready = False
        self.template: dict[str, Any] = {}  # what the template said of itself (``_template_state``)
        self.served = 0
        self._readers = [threading.Thread(target=self._read_messages, name="forkcheck-child-messages", daemon=True),
                         threading.Thread(target=self._read_output, name="forkcheck-child-output", daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read_messages(self) -> None:
        for line in self.proc.stdout:
            try:
                self.messages.put(json.loads(line))
            except ValueError:
                self.output.append(line.decode(errors="replace"))
        self.messages.put(None)

    def _read_output(self) -> None:
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace")
            self.output.append(line)
            if len(self.captured) < 2000:
                self.captured.append(line)

    def send(self, message: dict[str, Any]) -> None:
        self.proc.stdin.write((json.dumps(message) + "\n").encode())
        self.proc.stdin.flush()

    def receive(self, timeout: float) -> Any:
        """The next message; ``None`` when the child is gone; raises ``queue.Empty`` after ``timeout`` seconds."""
        return self.messages.get(timeout=timeout)

    def wait_ready(self) -> None:
        if self.ready:
            return
        if self.proc.error:
            self.kill()
            raise Unavailable(f"no child process could be forked: {self.proc.error}")
        try:
            message = self.receive(START_S)
        except queue.Empty:
            self.kill()
            raise Unavailable(f"the child process did not start within {START_S:g} s") from None
        if message is None or message.get("event") != "ready":
            self.kill()
            raise Unavailable("the child process did not start: " + (self.proc.error or self.last_output(8).strip()))
        self.template = message.get("template") or {}
        self.ready = True

    def kill(self) -> Optional[int]:
        """Stop the child and every process it or the target left in its group (at once); its exit status.

        A reader still blocked on a pipe that a process outside the group holds (it left with ``setsid``) is not
        waited for, nor its pipe closed (closing waits for the read): it is a daemon thread, and exit goes on.
        """
        pid = self.proc.pid
        if pid:
            try:
                os.killpg(pid, signal.SIGKILL)  # the child leads its group (``serve`` calls setsid)
            except OSError:  # the group is gone
                pass
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            status = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            return None
        for reader in self._readers:
            reader.join(timeout=2)
        streams = [(self.proc.stdin, None), *zip((self.proc.stdout, self.proc.stderr), self._readers)]
        for stream, reader in streams:
            if reader is None or not reader.is_alive():
                try:
                    stream.close()
                except OSError:
                    pass
        return status

    def close(self) -> None:
        """Ask the child to finish (end of its input), then make sure it did."""
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired, ValueError):
            pass
        self.kill()

    def last_output(self, lines: int = OUTPUT_LINES) -> str:
        """The last ``lines`` lines; after a fatal error, the lines before it and the crashed thread's stack."""
        kept = list(self.output)
        fatal = max((i for i, line in enumerate(kept) if line.startswith("Fatal Python error")), default=None)
        if fatal is None:
            return "".join(kept[-lines:])
        current = next((i for i in range(fatal, len(kept)) if kept[i].startswith("Current thread")), None)
        stack = []
        if current is not None:
            stack = kept[current:current + 1] + [line for line in itertools.takewhile(
                lambda line: line.startswith("  "), kept[current + 1:])]
        return "".join(kept[max(0, fatal - lines // 3):fatal + 1] + stack[-lines:])


_children: dict[int, ChildProcess] = {}  # by inter-op pool size (0: torch's default)
_lock = threading.Lock()  # guards _children and _size_locks
_size_locks: dict[int, threading.Lock] = {}  # one check at a time per child; children of other sizes check alongside
_unimportable: dict[tuple[str, str, float], str] = {}  # (module, file, mtime) -> why a fresh child did not import it


def prewarm(pool_size: int = 0) -> None:
    """Fork the child for ``pool_size`` now (the first one waits for the template's warm-up, which then overlaps
    the parent's other work)."""
    with _lock:
        _current(pool_size)


def _current(pool_size: int) -> ChildProcess:
    """The live child for ``pool_size``, forked now if there is none (call with ``_lock`` held)."""
    child = _children.get(pool_size)
    if child is None or child.proc.poll() is not None:
        if child is not None:
            child.kill()
        if not _children:
            import multiprocessing.util  # registers an exit handler that joins live children: ours must run first

            atexit.register(shutdown)
        child = _children[pool_size] = ChildProcess(pool_size)
    return child


def _retire(pool_size: int) -> None:
    with _lock:
        child = _children.pop(pool_size, None)
    if child is not None:
        child.kill()


def stop(pool_size: int) -> None:
    """Kill the child for ``pool_size``: a check under way there ends (as a crash, which its caller drops)."""
    _retire(pool_size)


def _size_lock(pool_size: int) -> threading.Lock:
    with _lock:
        return _size_locks.setdefault(pool_size, threading.Lock())


def shutdown() -> None:
    """Stop the children, if any (at exit)."""
    while _children:
        with _lock:
            child = _children.popitem()[1] if _children else None
        if child is not None:
            child.close()


def check_in_child(module: Any, attribute: str, target: Any, settings: Any, replay: Optional[str],
                   nodeid: str, pool_size: int = 0, on_run: Optional[Callable[[str, str], None]] = None,
                   dropped: Optional[threading.Event] = None) -> Any:
    """``runner.check`` of ``module.attribute`` in the child whose inter-op pool has ``pool_size`` threads (0:
    torch's default); raises ``Unavailable`` when it cannot run there. ``on_run(phase, engine)`` is called as each
    run starts: its ``RunStart.phase`` and the name of the engine that runs it. Once ``dropped`` is set, no check
    starts (``Unavailable``), and ``stop(pool_size)`` ends the one under way.
    """
    request = {"op": "check", "module": module.__name__, "file": getattr(module, "__file__", None) or "",
               "attribute": attribute, "target": target.name, "settings": _settings_json(settings),
               "replay": replay, "nodeid": nodeid, "sys_path": [_absolute(p) for p in sys.path],
               "cwd": os.getcwd()}
    place = (request["module"], request["file"], _mtime(request["file"]))
    if place in _unimportable:
        raise Unavailable(_unimportable[place])
    retried = ""
    with _size_lock(pool_size):
        for _ in range(2):
            with _lock:  # as ``stop`` retires the child: a check dropped before it took a child takes none
                if dropped is not None and dropped.is_set():
                    raise Unavailable("the result is no longer wanted")
                child = _current(pool_size)
            try:
                child.wait_ready()
                result = _exchange(child, request, target, settings, nodeid, on_run)
                if retried:
                    result.stats.isolation = result.stats.isolation.noted(f"a fresh one: in the one before, {retried}")
                return result
            except _Refused as refused:
                if refused.fresh:  # the module imports only in this process
                    _unimportable[place] = f"in a child process, {refused}"
                    raise Unavailable(_unimportable[place]) from None
                _retire(pool_size)  # an earlier target may be in the way (torch settings that work once per process)
                retried = str(refused)
            except BaseException:
                _retire(pool_size)  # interrupted, or forkcheck's own error: the child's state is unknown
                raise
    raise Unavailable(f"no child process took the check ({retried})")


class _Refused(Exception):
    """The child did not take the check: the target did not import there, or the child was gone."""

    def __init__(self, reason: str, fresh: bool):
        super().__init__(reason)
        self.fresh = fresh


def _settings_json(settings: Any) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(settings)


def _exchange(child: ChildProcess, request: dict[str, Any], target: Any, settings: Any, nodeid: str,
              on_run: Optional[Callable[[str, str], None]] = None) -> Any:
    from .findings import CheckResult

    child.captured = []
    fresh = child.served == 0
    try:
        child.send(request)
    except OSError as err:  # it died while idle
        raise _Refused(f"the child process was gone ({err})", fresh=False) from None
    child.served += 1
    started = time.perf_counter()
    allowed = max(PREPARE_S, settings.timeout)
    what = "preparing the check (importing the target, scripting it)"
    engine: dict[str, str] = {}
    while True:
        try:
            message = child.receive(allowed + GRACE_S)
        except queue.Empty:
            _retire(child.pool_size)
            _relay(child)
            return _hang(target, settings, nodeid, what, allowed + GRACE_S, started, engine)
        if message is None:
            status = child.kill()
            _retire(child.pool_size)
            return _crash(target, nodeid, what, status, child, started, engine)
        event = message.get("event")
        if event == "run":
            allowed, what = float(message["timeout"]), message.get("what") or "a run"
            engine = message.get("engine") or engine
            if on_run is not None:
                on_run(message.get("phase") or "", engine.get("name") or "")
        elif event == "unavailable":
            raise _Refused(message.get("reason", ""), fresh)
        elif event == "result":
            _relay(child)
            if message.get("retire"):
                _retire(child.pool_size)
            result = CheckResult.from_json(message["result"])
            if message.get("retire"):
                result.stats.child_retired = message["retire"]
            return result


def _relay(child: ChildProcess) -> None:
    """What the check printed goes to this process's stderr, where pytest captures it for the item's report."""
    if child.captured:
        sys.stderr.write("".join(child.captured))
        child.captured = []


def _hang(target: Any, settings: Any, nodeid: str, what: str, waited: float, started: float,
          engine: dict[str, str]) -> Any:
    from .findings import CheckResult, Finding
    from .stats import CHILD, STOPPED, Isolation, Stats

    finding = Finding("hang", f"{what} did not finish within {waited:g} s (the timeout, or the time allowed to "
                              "prepare a check, and a grace period); the process checking the target was stopped",
                      location=target.source_location(),
                      detail={"timeout_s": settings.timeout, "stopped_after_s": round(waited, 1)})
    return CheckResult(target=target.name, nodeid=nodeid, kind="target", verdict="fail", findings=[finding],
                       duration_s=round(time.perf_counter() - started, 3), engine=engine.get("name", ""),
                       engine_reason=engine.get("reason", ""), stats=Stats(isolation=Isolation(CHILD, STOPPED)))


def _crash(target: Any, nodeid: str, what: str, status: Optional[int], child: ChildProcess, started: float,
           engine: dict[str, str]) -> Any:
    from .findings import CheckResult
    from .forked import exit_description
    from .stats import CHILD, CRASHED, Isolation, Stats

    how = exit_description(status) if status is not None else "exited with an unknown status"
    output = child.last_output().rstrip()
    message = (f"the process checking this target {how} during {what}: the target's code, or torch under it, "
               "crashed the process. Its last output:\n" + (output or "(none)"))
    return CheckResult(target=target.name, nodeid=nodeid, kind="target", verdict="error", error=message,
                       duration_s=round(time.perf_counter() - started, 3), engine=engine.get("name", ""),
                       engine_reason=engine.get("reason", ""), stats=Stats(isolation=Isolation(CHILD, CRASHED)))


# --- the child --------------------------------------------------------------------------------------------------


class _Server:
    """The child's side: imports targets, runs ``runner.check``, and says when it is no longer fit to serve."""

    def __init__(self, channel: Any, pool_size: int = 0):
        import torch

        from . import runner

        self.channel = channel
        self.pool_size = pool_size
        self.runner = runner
        self.torch = torch
        self.fork, self.wait = torch._C.fork, torch._C.wait
        self.abandoned = 0
        self.loaded: dict[str, float] = {}  # module name -> its file's mtime when imported
        self.place: Any = None  # (sys.path, cwd) of the last request
        self.baseline_modules = set(sys.modules)
        runner._RunThread.shared()  # the thread every run goes on is this process's own, not the target's
        self.baseline_threads = {thread.ident for thread in threading.enumerate()}
        self.keep = _library_roots()

    def send(self, message: dict[str, Any]) -> None:
        self.channel.write(json.dumps(message) + "\n")
        self.channel.flush()

    def run_started(self, run: RunStart) -> None:
        """The check starts a run: a heartbeat to the parent, naming the run."""
        engine = {"name": run.engine.name, "reason": run.engine.reason}
        self.send({"event": "run", "timeout": run.timeout, "what": run.what, "engine": engine, "phase": run.phase})

    def run_abandoned(self, run: RunStart) -> None:
        """The check gave up a run as hung: it may still be running, and this process is unfit for another check."""
        self.abandoned += 1

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        from .settings import Settings
        from .stats import CHILD, Isolation
        from .target import Target

        try:
            obj = self.load(request)
        except (Exception, SystemExit) as err:
            return {"event": "unavailable", "reason": f"the target did not import: {type(err).__name__}: {err}"}
        self.size_pool()
        result = self.runner.check(Target.from_object(obj, request["target"]), Settings(**request["settings"]),
                                   replay=request["replay"], nodeid=request["nodeid"], observer=self)
        result.stats.isolation = Isolation(CHILD)
        left = _left_running()
        if left:
            leftover = f"the target left {plural(len(left), 'process', 'processes')} running"
            result.stats.left_running = (f"{leftover}: {', '.join(left[:5])}; they were stopped with the process that "
                                         "checked it")
        return {"event": "result", "result": result.to_json(), "retire": leftover if left else self.unfit()}

    def load(self, request: dict[str, Any]) -> Any:
        """The target object, imported as the parent imported it; modules of an earlier place are dropped."""
        sys.path[:] = request["sys_path"]
        os.chdir(request["cwd"])
        place = (tuple(request["sys_path"]), request["cwd"])
        name, path = request["module"], request["file"]
        if place != self.place or (name in self.loaded and _mtime(path) != self.loaded[name]):
            self.forget_user_modules()
            self.place = place
        module = sys.modules.get(name)
        if module is None:
            from .marker import errors_deferred

            with errors_deferred(path) if path else contextlib.nullcontext():  # as pytest collected it
                try:
                    module = importlib.import_module(name)
                except ImportError:
                    module = _import_file(name, path)
            self.loaded[name] = _mtime(path)
        if path and not _same_file(getattr(module, "__file__", None), path):
            raise ImportError(f"module {name} is {getattr(module, '__file__', None)} here, not {path}")
        return getattr(module, request["attribute"])

    def size_pool(self) -> None:
        """Give the inter-op pool ``pool_size`` threads, before its first task. A target's module that set the size
        itself keeps it: the result's ``pool_size`` says which size the check ran with."""
        if self.pool_size and self.torch.get_num_interop_threads() != self.pool_size:
            try:
                self.torch.set_num_interop_threads(self.pool_size)
            except RuntimeError:  # the pool is fixed once it has run a task or was sized
                pass

    def forget_user_modules(self) -> None:
        for name, module in list(sys.modules.items()):
            if name in self.baseline_modules:
                continue
            file = getattr(module, "__file__", None)
            places = [file] if file else list(getattr(module, "__path__", None) or [])  # a namespace package
            if places and not all(os.path.realpath(place).startswith(self.keep) for place in places):
                del sys.modules[name]
        self.loaded.clear()
        importlib.invalidate_caches()

    def unfit(self) -> str:
        """Why this process should not serve another target ("" when it may)."""
        if self.abandoned:
            return f"{plural(self.abandoned, 'run')} did not finish and may still be running"
        size = self.torch.get_num_interop_threads()
        if self.pool_size and size != self.pool_size:
            return f"its inter-op pool has {size} threads, not {self.pool_size} (the target's module sized it)"
        if self.torch._C.fork is not self.fork or self.torch._C.wait is not self.wait:
            return "torch._C.fork/wait are still patched"
        if self.torch._C._len_torch_dispatch_stack():
            return "a dispatch mode is still active"
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            extra = [t for t in threading.enumerate() if t.ident not in self.baseline_threads]
            if not extra:
                return ""
            time.sleep(0.02)
        return f"threads still running: {', '.join(t.name for t in extra[:5])}"


def _left_running(settle_s: float = 0.5) -> list[str]:
    """Processes of this child's group but itself, still running ``settle_s`` after a check (the target started
    them), as ``name (pid N)``; none where there is no /proc or the child does not lead its group."""
    me = os.getpid()
    deadline = time.monotonic() + settle_s
    while True:
        left = []
        if os.getpgid(0) == me and os.path.isdir("/proc"):
            for entry in os.listdir("/proc"):
                if not entry.isdigit() or int(entry) == me:
                    continue
                try:
                    with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as stat:
                        text = stat.read()
                except OSError:  # it ended meanwhile
                    continue
                name, fields = text[text.find("(") + 1:text.rfind(")")], text[text.rfind(")") + 2:].split()
                if len(fields) > 2 and fields[2] == str(me) and fields[0] != "Z":  # state, ppid, pgrp
                    left.append(f"{name} (pid {entry})")
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def _library_roots() -> tuple[str, ...]:
    """Where modules that never change between requests live: the interpreter's, site-packages, forkcheck's own."""
    import site

    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(__file__)}
    try:
        roots.update(site.getsitepackages())
    except AttributeError:
        pass
    return tuple(os.path.realpath(root) + os.sep for root in roots)


def _import_file(name: str, path: str) -> Any:
    """Import ``path`` as module ``name`` (pytest's ``importlib`` import mode gives names ``sys.path`` cannot find)."""
    spec = importlib.util.spec_from_file_location(name, path) if path else None
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import module {name} (from {path or 'nowhere'})")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _absolute(entry: str) -> str:
    """A ``sys.path`` entry that names a place, made absolute; others (an editable install's finder) as they are."""
    return os.path.abspath(entry) if os.path.exists(entry) or not entry else entry


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


def _same_file(a: Optional[str], b: str) -> bool:
    try:
        return a is not None and os.path.samefile(a, b)
    except OSError:
        return False


def _watch_parent(parent: int) -> None:
    """End this process, and what the target left in its group, when its parent is gone (killed, or crashed
    without closing our input)."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            if os.getpgid(0) == os.getpid():
                os.killpg(0, signal.SIGKILL)
            os._exit(0)


def serve(requests: Any, messages: Any, output: Any, pool_size: int = 0) -> None:
    """The child's main loop: one request per line of ``requests``, until it ends; replies go to ``messages``, and
    the process's standard output and error to ``output`` (so what the user's code prints cannot break the
    channel). Called in a child forked from the template (pipes as ``multiprocessing`` connections)."""
    os.setsid()  # its own process group: what the target starts is stopped with it (``ChildProcess.kill``)
    inbox = os.fdopen(os.dup(requests.fileno()), "r", encoding="utf-8")
    channel = os.fdopen(os.dup(messages.fileno()), "w", encoding="utf-8")
    for fd in (1, 2):  # the user's prints (and C's) go to the pipe the parent reads
        os.dup2(output.fileno(), fd)
    for end in (requests, messages, output):
        end.close()
    sys.stdout.reconfigure(line_buffering=True)  # a line printed just before a crash is not lost
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops this process
    faulthandler.enable()  # a crash leaves the Python stacks in the output the parent quotes
    threading.Thread(target=_watch_parent, args=(os.getppid(),), name="forkcheck-parent-watch", daemon=True).start()
    from ._exit import flush_everything

    try:
        server = _Server(channel, pool_size)
        server.send({"event": "ready", "pid": os.getpid(), "template": _template_state()})
        for line in inbox:
            request = json.loads(line)
            try:
                reply = server.handle(request)
            except BaseException:
                reply = _internal_error(request, traceback.format_exc())
            server.send(reply)
    except BaseException:
        traceback.print_exc()
    flush_everything()
    os._exit(0)  # never through interpreter finalization: see forkcheck._exit


def _template_state() -> dict[str, Any]:
    """What the warm template this child was forked from says of itself ({} when it was not preloaded)."""
    template = sys.modules.get("forkcheck._template")
    if template is None:
        return {}
    return {"threads": list(template.THREADS), "warm_error": template.WARM_ERROR, "dynamo_loaded": "torch._dynamo" in sys.modules}


def _internal_error(request: dict[str, Any], trace: str) -> dict[str, Any]:
    from .findings import CheckResult

    result = CheckResult(target=request.get("target", ""), nodeid=request.get("nodeid", ""), kind="target",
                         verdict="error", error="internal error in forkcheck (in its child process):\n" + trace)
    return {"event": "result", "result": result.to_json(), "retire": "forkcheck failed in it"}
