"""One check: Hypothesis examples x schedules through an engine, the oracles over every run record. No pytest needed.

An engine runs and records (``forkcheck.engines.Run``); the runner judges: watches, the serial reference, the race
oracle over the run's access log. A :class:`RunObserver` passed to :func:`check` is told of every run.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import hashlib
import os
import queue
import re
import threading
import time
import traceback
from typing import Any, Callable, Optional, Protocol

import torch

from . import _exit, _warnings
from .coverage import Coverage
from .engines import Engine, Observe, Run, ScheduleError, TaskError, choose_engine
from .compiled import python_callees, serial_program, written_constants
from .findings import SERIAL, CheckResult, Finding, defect_key, describe_error, exception_finding, hang_finding, sort_findings
from .locate import WriteLocator, changing_lines, error_location, stuck_line
from .marker import MarkError
from .oracles.determinism import differences
from .oracles.mutation import ConstantsWatch, GlobalWatch, InputWatch, ModuleWatch, referenced_globals, relocated
from .oracles.races import outputs_affected, race_findings
from .replay import FRESH, ReplayError, ReplayToken, blob_from_notes
from .schedules import Recorded, Schedule
from .schedules.portfolio import draw_schedules, members, with_steps
from .settings import Settings, default_seed, replayed
from .state import module_state
from .stats import FoundBy, Replays
from .strategies import InferenceError, for_callable
from .strategies.inference import inferred_parameters, suggested_strategies, unannotated_parameters
from .strategies.inputs import Inputs, StrategyError
from .target import Target, TargetError
from ._words import plural


class _Failed(Exception):
    """Raised inside a Hypothesis example that has findings, so Hypothesis shrinks it; ``shown`` is that example's
    inputs as a report shows them: the failure Hypothesis reports carries its replay blob and the input it stands
    for together."""

    def __init__(self, findings: list[Finding], shown: dict[str, str]):
        super().__init__(findings[0].message)
        self.findings = findings
        self.shown = shown


AFTER_A_RACE = 3  # schedules per example once a race is predicted and outcomes stayed right
SEARCH_AFTER_A_RACE = 20  # ``exhaustive``: the same, for the runs of an input's search
WARM_UP_RUNS = 2  # unperturbed runs of the real runtime's program before its first schedule (see ``_calibrated``)


def schedules_here(settings: Settings, engine: str) -> int:
    """Concurrent schedules per example in this process. A check split over inter-op pool sizes (one process per
    size, see ``forkcheck.pools``) runs this size's share here; forkcheck's own scheduler does not use the pool, and
    a process whose pool size is not one of them (the target's module fixed it), run them all."""
    size = torch.get_num_interop_threads()
    if engine != "script" or size not in settings.pool_sizes:
        return settings.schedules
    part, parts = settings.pool_sizes.index(size), len(settings.pool_sizes)
    return max(1, settings.schedules // parts + (part < settings.schedules % parts))


def _fail(findings: list[Finding], inputs: dict[str, Any]) -> None:
    """Raise ``_Failed`` from this one place: Hypothesis tells failures apart by where they were raised."""
    raise _Failed(findings, _shown(inputs))


class _Hang(Exception):
    def __init__(self, where: str = ""):
        super().__init__(where)
        self.where = where  # the user's line a thread of the run was at (``locate.stuck_line``), if any


def _fingerprint(value: Any) -> Any:
    """A hashable value standing for an input example: tensors by dtype, shape, strides and bytes."""
    if isinstance(value, torch.Tensor):
        flat = value.detach().resolve_conj().resolve_neg().contiguous().reshape(-1)
        data = flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""  # no elements: no bytes to view
        digest = hashlib.blake2b(data, digest_size=16).hexdigest()
        return ("tensor", str(value.dtype), tuple(value.shape), value.stride(), value.storage_offset(), digest)
    if isinstance(value, dict):
        return ("dict", tuple((k, _fingerprint(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_fingerprint(v) for v in value))
    return ("value", repr(value))


@dataclasses.dataclass(frozen=True)
class RunStart:
    """A run a check starts, as a hang or crash during it is described."""

    what: str  # "example 2, schedule 3: a concurrent run of 3 forked tasks"
    phase: str  # "serial", "concurrent", or "" (an unperturbed run counting PCT's steps, or warming up)
    engine: Engine
    timeout: float  # the longest the run may take


class RunObserver(Protocol):
    """Told of every run of a check: the child process of ``forkcheck.isolation`` reports each to its parent (a
    heartbeat naming the run) and retires itself after one abandoned as hung."""

    def run_started(self, run: RunStart) -> None: ...

    def run_abandoned(self, run: RunStart) -> None: ...


class _RunThread:
    """The thread runs go on, one per process and reused: torch sets up each new thread on its first ops (its
    intra-op threads), which cost more than a small target's whole run when every run had a thread of its own. A
    run that hangs keeps its thread; the next run gets a new one. Torch's per-thread state (grad mode, intra-op
    threads) is put back after every run by ``GlobalWatch.run``, on this thread."""

    _current: Optional["_RunThread"] = None

    def __init__(self) -> None:
        self.pid = os.getpid()  # a forked process has none of its parent's threads
        self.requests: "queue.SimpleQueue[Optional[Callable[[], None]]]" = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._serve, name="forkcheck-run", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        for body in iter(self.requests.get, None):
            body()

    def run(self, body: Callable[[], None]) -> None:
        """Start ``body`` on this thread; a run started from a run gets a thread of its own (it would wait for
        itself)."""
        if self.thread is threading.current_thread():
            once = _RunThread()
            once.requests.put(body)
            once.requests.put(None)
            return
        self.requests.put(body)

    @classmethod
    def shared(cls) -> "_RunThread":
        if cls._current is None or cls._current.pid != os.getpid():
            cls._current = cls()
        return cls._current

    @classmethod
    def abandon(cls) -> None:
        """The current run hangs: leave its thread to it (it ends if the run ever does)."""
        if cls._current is not None:
            cls._current.requests.put(None)
        cls._current = None

    @classmethod
    def stop(cls) -> None:
        """End this process's run thread (the warm template forks children with no thread but its main one)."""
        current, cls._current = cls._current, None
        if current is not None and current.pid == os.getpid():
            current.requests.put(None)
            current.thread.join()


def _with_timeout(call: Callable[[], Any], run: RunStart, observer: Optional[RunObserver] = None) -> Any:
    """Run ``call`` on the run thread (``_RunThread``); raise ``_Hang`` if it has not returned within
    ``run.timeout`` seconds."""
    _exit.forks_ran()
    if observer is not None:
        observer.run_started(run)
    box: dict[str, Any] = {}
    done = threading.Event()

    def body() -> None:
        try:
            box["value"] = call()
        except Exception as err:  # handed to the caller's thread
            box["error"] = err
        except BaseException as err:  # SystemExit from the user's code: raised on, it would end the check's process
            box["error"] = RuntimeError(f"{type(err).__name__}({err}) raised by the target")
            box["error"].__cause__ = err
        finally:
            done.set()

    _RunThread.shared().run(body)
    if not done.wait(run.timeout):
        where = stuck_line(_RunThread.shared().thread.ident)
        _RunThread.abandon()
        _exit.run_abandoned()
        if observer is not None:
            observer.run_abandoned(run)
        raise _Hang(where)
    if "error" in box:
        raise box["error"]
    return box["value"]


def _short_repr(value: Any, limit: int = 400) -> str:
    if isinstance(value, torch.Tensor):
        with torch._tensor_str.printoptions(threshold=20, edgeitems=2):
            text = f"{value!r} (shape {list(value.shape)}, {value.dtype})"
    else:
        text = repr(value)
    text = " ".join(text.split())  # one line, whatever the repr's layout
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _shown(inputs: dict[str, Any]) -> dict[str, str]:
    """An example's inputs as a report shows them."""
    return {name: _short_repr(value) for name, value in inputs.items()}


def _wrong_outcome(findings: list[Finding]) -> bool:
    """Whether a run's outcome went wrong: any finding but a race, which the race oracle only predicts."""
    return any(f.kind != "race" for f in findings)


@dataclasses.dataclass(frozen=True)
class Mode:
    """What one pass of the Hypothesis search is for, as :meth:`Checker.example` reads it.

    ``explore``: find a failure, letting examples with only predicted races pass (``hold_races``) so the search goes
    on to an input whose outcome the race makes wrong; ``recall``: rerun the search up to the example with a predicted
    race, its runs skipped (``serial_only``: the memo answers), for its replay token; ``shrink``: Hypothesis shrinks
    the failure until ``until`` (``serial_only`` for a defect the serial run shows; ``hold_races`` for one with a
    wrong outcome, which must not shrink to a race alone); ``replay``: rerun a token's example as it is. (The fork
    server's warm-up, ``forkcheck._template``, runs a ``serial_only`` pass of its own.)
    """

    name: str
    hold_races: bool = False
    serial_only: bool = False
    until: Optional[float] = None  # time.monotonic() after which no new example runs (shrinking)
    budget: Optional[int] = None  # ``exhaustive``: the most runs an input's search takes in this pass (shrinking)

    @property
    def phases(self) -> tuple[str, ...]:
        """Hypothesis's phases this pass runs."""
        return ("explicit", "reuse", "generate") + (("shrink",) if self.name == "shrink" else ())


EXPLORE, REPLAY = Mode("explore", hold_races=True), Mode("replay")


class Checker:
    """Everything fixed for one target: its strategies, engine, globals and static findings. ``observer`` is told of
    every run (see :class:`RunObserver`)."""

    def __init__(self, target: Target, settings: Settings, observer: Optional[RunObserver] = None):
        if target.mark.error:  # fork_safe was used wrongly in a file being collected (``marker.errors_deferred``)
            raise MarkError(target.mark.error)
        self.target = target
        self.settings = settings
        self.observer = observer
        self.runs = 0  # runs started (the serial reference, concurrent schedules, unperturbed runs)
        self.base = _instance(target)
        self.strategies = for_callable(self.base if target.is_compiled else target.obj, target.strategies,
                                       what=target.name)
        self.inputs = Inputs(self.strategies, target.strategies, target.name)
        self.param_names = list(self.strategies)
        # compiled code's serial reference: its own graph, forks inlined (see ``forkcheck.compiled``)
        self.serial_program = serial_program(self.base) if target.is_compiled else None
        with _warnings.quiet_jit():
            self.engine = choose_engine(
                copy.deepcopy(self.base) if target.is_module else self.base, self.param_names, settings.tasks,
                settings.timeout, controlled=settings.strategy == "exhaustive")
        # ``exhaustive``: each input's interleavings are searched (``forkcheck.dpor``), not drawn; a compiled target
        # runs on TorchScript's runtime, where its schedules are the portfolio's (``schedules.portfolio.members``)
        self.exhaustive = settings.strategy == "exhaustive" and self.engine.name == "eager"
        self.coverage = Coverage(self.engine.name)
        self.replay_decisions: Optional[list[int]] = None  # ``exhaustive`` replay: the interleaving to rerun
        self.decisions_of: dict[Any, list[int]] = {}  # a failing example's key -> its interleaving's decisions
        self.failing_decisions: list[int] = []
        self.globals = referenced_globals(self._code())
        self.location = target.source_location(self.base)
        self.return_location = target.return_location()  # where a differing output is returned
        self.static = self._static_findings()
        self.constants = self._written_constants()  # put back after every run by the global watches
        self.examples = 0
        self.schedules = 0
        self.failures: list[tuple[dict[str, str], list[Finding]]] = []
        self.memo: dict[Any, list[Finding]] = {}
        self.serial_failure = False  # whether the last example's findings came from its serial run
        self.pct_steps = 0  # steps of one run, for PCT (0: not counted yet; -1: the count failed)
        self.ran_once = self.engine.name != "script"  # the real runtime's program ran once (see ``_calibrated``)
        self._raced: Any = None  # the example whose first schedule ran with race detection
        self._watching: Optional[ModuleWatch] = None  # see ``_module_watch``
        self._watching_globals: dict[bool, GlobalWatch] = {}  # see ``_global_watch``
        self._serial_copy: Optional[tuple[Any, ModuleWatch]] = None  # see ``_serial_module``
        self._lines: dict[str, str] = {}  # see ``_at_lines``
        self.interleavings: set[int] = set()
        self.switches = 0
        self.per_example = schedules_here(settings, self.engine.name)
        self.wrong_after = 0  # concurrent schedules run until the first whose outcome was wrong (0: none yet)
        self.failed_after: Optional[int] = None  # concurrent schedules run until the first finding (0: serial run)
        self.mode = REPLAY  # the search pass running now (see ``Mode``; ``_search`` sets it)
        self.predicted: Optional[tuple] = None  # the first such example: its key, races and inputs (shown)
        self.failing_run = 0  # the schedule of its example that decided the last failure (1: the first)

    def _code(self) -> list[Callable]:
        """The Python code whose globals the target can reach (for a compiled one, what it calls back into)."""
        if self.target.is_compiled:
            return python_callees(self.base)
        if not self.target.is_module:
            return [self.base]
        classes = {type(m) for m in self.base.modules()}
        return [value for cls in classes for klass in cls.__mro__
                if not klass.__module__.startswith("torch")
                for value in vars(klass).values() if callable(value)]

    def _written_constants(self) -> Optional[ConstantsWatch]:
        """The watch of the compiled graph's tensor constants the static pre-check found written (a frozen module's
        folded buffers): shared by every copy of the target, the user's object included."""
        names = {f.detail["name"] for f in self.static if f.detail.get("source") == "static"}
        if not names or self.engine.name != "script":
            return None
        written = written_constants(self.engine.program.graph, names)
        return ConstantsWatch(written) if written else None

    def _static_findings(self) -> list[Finding]:
        if self.engine.name != "script":
            return []
        try:
            from .oracles.static import static_findings
        except ImportError:
            return []
        return static_findings(self.engine.scripted, self.param_names)

    # --- one example ---------------------------------------------------------------------------------------

    def example(self, inputs: dict[str, Any], draw: Callable[[Any, str], Any]) -> None:
        """Check one input example; ``draw(strategy, label)`` draws Hypothesis data (schedules).

        Every schedule is drawn before any run, so an example draws the same data whatever its runs do, and an
        example seen failing fails again without rerunning: the real runtime does not repeat itself exactly, and
        Hypothesis reruns a failing example to report it. The search pass (``self.mode``) says the rest. With
        ``serial_only`` (recalling a predicted race, shrinking a defect the serial run shows) the schedules are drawn
        but not run. A schedule with only ``race`` findings (predicted, not seen) does not end the example: its other
        schedules run, to tell whether the race also makes an outcome wrong. With
        ``hold_races``, an example with races only passes (the first is kept in ``predicted``), so the search goes on
        to inputs that may show the wrong outcome; once a race is predicted, an example runs at most
        ``AFTER_A_RACE`` schedules, and an input's exhaustive search ``SEARCH_AFTER_A_RACE`` runs (the first inputs
        Hypothesis draws, zeros, often hide a race's effect: searching them to the budget took 500 runs in vain).
        """
        if self.exhaustive:
            drawn: Any = self._interleavings()
            key = (_fingerprint(inputs), "exhaustive")
        else:
            drawn = draw_schedules(draw, self.settings.strategy, self.per_example)
            key = (_fingerprint(inputs), tuple(drawn))
        if key in self.memo:
            self.failing_decisions = self.decisions_of.get(key, [])
            _fail(self.memo[key], inputs)
        mode = self.mode
        if mode.until is not None and time.monotonic() > mode.until:
            return  # shrinking ran out of time: no new example fails, the smallest one so far stands
        if not mode.serial_only:
            self.examples += 1
        findings, reference = self._serial(inputs)
        for finding in findings:  # shown as the serial run's: one call, forks inline, no pool, no timeline
            finding.detail["run"] = SERIAL
        self.serial_failure = bool(findings)
        if findings and self.failed_after is None:
            self.failed_after = self.schedules
        if not findings and not mode.serial_only and not self.exhaustive:
            drawn = self._calibrated(drawn, inputs)
        searched = not findings and not mode.serial_only
        decisions: Optional[list[int]] = None  # the interleaving of the first run with findings (or a wrong outcome)
        stopped, raced = False, 0
        for index, schedule in enumerate(drawn if searched else ()):
            if index >= (SEARCH_AFTER_A_RACE if self.exhaustive else AFTER_A_RACE) and mode.hold_races and (
                    findings or self.predicted):
                raced = index
                break  # a race is predicted and the outcome stayed right: another input is likelier to show it
            self.schedules += 1
            found, run = self._concurrent(inputs, schedule, reference)
            if getattr(schedule, "diverged", False):  # the program did not repeat the replayed prefix: not its bug
                self.schedules -= 1
                continue
            findings = _merge(findings, found)
            if found and self.failed_after is None:
                self.failed_after = self.schedules
            if found and (decisions is None or _wrong_outcome(found)):
                decisions = list(run.decisions if run is not None else []) if self.exhaustive else None
                self.failing_run = index + 1
            if _wrong_outcome(found):
                self.wrong_after = self.wrong_after or self.schedules
                stopped = True
                break
        if searched and self.exhaustive and hasattr(drawn, "pending"):
            self.coverage.explored(drawn, stopped, raced)
        if findings and decisions is not None:
            self.decisions_of[key] = decisions
        if findings and mode.hold_races and not _wrong_outcome(findings):
            self.predicted = self.predicted or (key, findings, _shown(inputs))
            return
        if findings:
            self.memo[key] = findings
            self.failures.append((_shown(inputs), findings))
            self.failing_decisions = self.decisions_of.get(key, [])
            _fail(findings, inputs)

    def _interleavings(self) -> Any:
        """``exhaustive``: this input's search, or the one interleaving a replay token names."""
        if self.replay_decisions is not None:
            return [Recorded(self.replay_decisions)]
        from .dpor import Exploration

        budget = self.settings.budget
        return Exploration(self.settings.preemptions, min(budget, self.mode.budget or budget))

    def _calibrated(self, drawn: list[Schedule], inputs: dict[str, Any]) -> list[Schedule]:
        """PCT's change points spread over the steps of a run: counted once, after the first serial run that passed
        (a replay brings the count it was found with). A count that fails leaves PCT's default. The real runtime's
        program also runs so before its first schedule, whatever the strategy: torch profiles a graph's first run
        and optimizes it at the second, and optimizing a graph with traced scalar constants fails under a dispatch
        mode (the race oracle's)."""
        count = "pct" in members(self.settings.strategy) and not self.pct_steps
        if count or not self.ran_once:
            runs = 1 if self.ran_once else WARM_UP_RUNS
            self.ran_once = True
            watch = self._module_watch()
            # the run may change what a check must leave as it was
            global_watch = self._global_watch(self.engine.runs_python)
            args = copy.deepcopy([inputs[name] for name in self.param_names])
            try:
                steps = self._call(lambda: global_watch.run(
                    lambda: [self.engine.calibrate(args) for _ in range(runs)][-1]), "")
                self.pct_steps = min(steps, 100_000) if count else self.pct_steps
            except Exception:  # it raised or hung where the serial run did not: the concurrent runs will tell
                self.pct_steps = -1 if count else self.pct_steps
            finally:
                global_watch.restore()
                if watch is not None:
                    watch.restore()
        return with_steps(drawn, self.pct_steps)

    def _module_watch(self) -> Optional[ModuleWatch]:
        """The watch of the module the engine runs, one for every run: each run ends with its ``restore``, which
        snapshots the state it put back for the next run (a module's snapshot costs more than a small run)."""
        if self.engine.module is None:
            return None
        if self._watching is None:
            self._watching = ModuleWatch(self.engine.module)
        return self._watching

    def _global_watch(self, python: bool = True) -> GlobalWatch:
        """The watch of globals and process state, one for every run (``python=False``: one for the concurrent runs
        of compiled code that calls no Python, see ``GlobalWatch``): each run ends with its ``restore``, which puts
        back what the snapshots hold, so they hold for the next run (reading torch's, Python's and numpy's RNG states
        and 20 flags cost more than a small run)."""
        if python not in self._watching_globals:
            self._watching_globals[python] = GlobalWatch(self.globals, python, self.constants)
        return self._watching_globals[python]

    def _call(self, fn: Callable[[], Any], phase: str) -> Any:
        """``fn()``, bounded by the timeout, as a run of ``phase`` (see :class:`RunStart`)."""
        self.runs += 1
        with _warnings.quiet_jit():
            return _with_timeout(fn, self._run_start(phase), self.observer)

    def _run_start(self, phase: str) -> RunStart:
        """The run about to start: "example 2, schedule 3: a concurrent run of 3 forked tasks"."""
        if phase == "serial":
            what = f"example {self.examples}: {SERIAL_RUN}"
        elif phase == "concurrent":
            what = f"example {self.examples}, schedule {self.schedules}: {self._concurrent_run()}"
        else:
            what = f"example {self.examples}: run {self.runs} of the check"
        return RunStart(what, phase, self.engine, self.settings.timeout)

    def _concurrent_run(self) -> str:
        return f"a concurrent run of {self.settings.tasks} forked tasks"

    def _serial_module(self) -> tuple[Any, Optional[ModuleWatch]]:
        """The copy of a Module target the serial runs use, and its watch: one for every serial run, put back by the
        watch after each (a deep copy per run cost more than the run; the concurrent runs share theirs the same way),
        and dropped after a run that hung, which may still be changing it."""
        if not self.target.is_module:
            return None, None
        if self._serial_copy is None:
            module = copy.deepcopy(self.base)
            self._serial_copy = (module, ModuleWatch(module))
        return self._serial_copy

    def _serial_callee(self, module: Any) -> Callable[..., Any]:
        """What the serial runs call: the target (its serial copy for a Module), or a compiled one's program with its
        forks inlined (see ``forkcheck.compiled``)."""
        if self.serial_program is not None:
            return functools.partial(self.serial_program, module)
        return module if module is not None else self.base

    def _serial(self, inputs: dict[str, Any]) -> tuple[list[Finding], Any]:
        """The reference: the target once, on copies, forks inline (plain eager Python, or the compiled program with
        its forks inlined: there the Python stack does not say which line wrote, the static pre-check's twin does)."""
        args = copy.deepcopy([inputs[name] for name in self.param_names])
        module, module_watch = self._serial_module()
        callee = self._serial_callee(module)
        watches: list[Any] = [InputWatch(dict(zip(self.param_names, args))), self._global_watch()]
        if module_watch is not None:
            watches.append(module_watch)
        module_unchanged = hung = False
        watched = {name: ns[key] for name, (ns, key) in self.globals.items()}
        watched.update(zip(self.param_names, args))
        if module is not None:
            watched.update(module_state(module))
        # compiled code runs under no dispatch mode (see ``_calibrated``), and no Python line would tell who wrote
        locator = WriteLocator(watched) if self.serial_program is None else None
        try:  # grad mode and other torch state are per thread: the watch runs the call on the thread it watches
            output = self._call(lambda: watches[1].run(lambda: _under(locator, callee, args)), "serial")
            locate = locator.locate if locator is not None else (lambda name: ("", ""))
            per_watch = [w.findings([], locate, self.location) for w in watches]  # no task: forks ran inline
            module_unchanged = module_watch is not None and not per_watch[-1]
            found = [f for findings in per_watch for f in findings]
        except _Hang as hang:
            hung = True
            return [self._hang(SERIAL_RUN, hang.where)], _NO_OUTPUT
        except Exception as err:
            failure = exception_finding("the target", err, "serial run, forks inline", location=self.location)
            failure.message += self._inferred_note(inputs)
            return [failure], _NO_OUTPUT
        finally:
            watches[1].restore()
            if hung:
                self._serial_copy = None
            elif module_watch is not None:
                module_watch.restore(module_unchanged)
        return self._at_lines(inputs, found), output

    def _at_lines(self, inputs: dict[str, Any], findings: list[Finding]) -> list[Finding]:
        """The serial run's changes of Python values (no op wrote them: a global dict filled, a list appended to, an
        attribute counted up) located at the user's line that made them, found by running the example once more
        under a line tracer (``locate.changing_lines``), once per defect and check: shrinking sees them again."""
        located = {_line_key(f) for f in self.static if f.detail.get("op")}  # the static pre-check's twin says
        wanted = {_line_key(f) for f in findings if _unlocated(f)} - self._lines.keys() - located
        if wanted:
            self._lines.update(dict.fromkeys(wanted, ""))  # not found: not looked for again
            self._lines.update(self._trace_lines(inputs, wanted))
        return [relocated(f, location=self._lines[_line_key(f)]) if _unlocated(f) and self._lines.get(_line_key(f)) else f
                for f in findings]

    def _trace_lines(self, inputs: dict[str, Any], wanted: set[str]) -> dict[str, str]:
        """The serial run again, on fresh copies, under ``changing_lines``: where each of ``wanted`` changed."""
        args = copy.deepcopy([inputs[name] for name in self.param_names])
        module, module_watch = self._serial_module()  # put back by its watch after the serial run
        callee = self._serial_callee(module)
        global_watch = GlobalWatch(self.globals, constants=self.constants)
        watches: dict[str, Any] = {"input-mutation": InputWatch(dict(zip(self.param_names, args))),
                                   "global-mutation": global_watch}
        if module is not None:
            watches["attribute-mutation"] = ModuleWatch(module)

        def changed() -> set[str]:
            return {f"{kind}:{name}" for kind, watch in watches.items() for name in watch.changed()}

        try:
            return self._call(lambda: global_watch.run(
                lambda: changing_lines(lambda: callee(*args), changed, wanted)[1]), "serial")
        except _Hang:
            self._serial_copy = None
            return {}
        except Exception:  # it raised this time: the lines stay unknown, the findings stand
            return {}
        finally:
            global_watch.process_now = {}  # read during the run, not after it: restore reads the state again
            global_watch.restore()
            if module_watch is not None:
                module_watch.restore()

    def _inferred_note(self, inputs: dict[str, Any]) -> str:
        """For inputs forkcheck inferred, that they were, and the strategies to give if the target needs others."""
        try:
            names = inferred_parameters(self.target.obj, self.target.strategies)
        except Exception:  # a note only: better none than a finding lost
            return ""
        if not names:
            return ""
        one = len(names) == 1
        return (f"; {'input' if one else 'inputs'} {', '.join(names)} {'was' if one else 'were'} inferred from "
                f"{'its annotation' if one else 'their annotations'}: if the target needs particular inputs, give "
                f"their strategies, e.g. {suggested_strategies({name: inputs[name] for name in names})}")

    def _concurrent(self, inputs: dict[str, Any], schedule: Any,
                    reference: Any) -> tuple[list[Finding], Optional[Run]]:
        """One concurrent run's findings, and its record (``None`` when it hung or raised past the engine)."""
        args = copy.deepcopy([inputs[name] for name in self.param_names])
        tasks = list(range(1, self.settings.tasks + 1))
        watches = [InputWatch(dict(zip(self.param_names, args))), self._global_watch(self.engine.runs_python)]
        module_watch = self._module_watch()
        # race detection predicts other schedules: once per example is enough; shrinking counts no coverage, so its
        # runs go faster unlogged
        observe = Observe.ACCESSES if self._raced is not inputs else \
            Observe.SIGNATURE if self.mode.name != "shrink" else Observe.NOTHING
        self._raced = inputs
        module_unchanged = False  # its findings were none: its restore has nothing to do
        try:
            run = self._call(lambda: watches[1].run(lambda: self.engine.run(args, schedule, observe)), "concurrent")
            if run.error is None:
                findings = [f for w in watches for f in w.findings(tasks, default_location=self.location)]
                if module_watch is not None:
                    found = module_watch.findings(tasks, default_location=self.location)
                    findings, module_unchanged = findings + found, not found
        except _Hang as hang:
            return [self._hang(self._concurrent_run(), hang.where)], None
        except Exception as err:  # raised past the engine (the target's SystemExit: see ``_with_timeout``)
            return [self._failed_run(err, tasks)], None
        finally:
            watches[1].restore()
            if module_watch is not None:
                module_watch.restore(module_unchanged)  # the next schedule starts from the same module state
        if run.error is not None:
            return [self._failed_run(run.error, tasks)], run
        self.coverage.saw(run.trace)
        if run.interleaving:  # a plain run of the driver records none (see ``engines.script``)
            self.interleavings.add(hash(run.interleaving))
        self.switches += run.switches
        outputs = run.outputs
        affected = False
        for task, output in zip(tasks, outputs):
            diffs = differences(reference, output, self.settings.atol, self.settings.rtol)
            if diffs:
                affected = True
                findings.append(Finding(
                    "nondeterminism",
                    f"task {task} of {len(tasks)} returned a different output than the serial reference: "
                    + "; ".join(diffs[:3]),
                    location=self.return_location, tasks=[task], detail={"differences": diffs[:10]}))
                break
        if run.log is not None:
            self.coverage.logged(run.log)
            findings += [outputs_affected(race, affected) for race in race_findings(run.log)]
        return findings, run

    def _failed_run(self, err: Exception, tasks: list[int]) -> Finding:
        """A concurrent run that did not finish: a hang forkcheck's scheduler saw (a deadlock, or a task that never
        finished), or a forked task's exception. The fork driver refusing an input is not one: the inputs do not fit
        the types TorchScript gave the target's parameters (a setup error naming the parameter)."""
        refused = _DRIVER_REFUSED.search(str(err)) if self.engine.name == "script" else None
        if refused is not None:
            expected, name, found = refused.group("expected", "name", "found")
            unannotated = name in unannotated_parameters(self.base)
            raise StrategyError(
                f"{self.target.name}: parameter {name!r}: its strategy drew values of type {found} where TorchScript "
                f"takes {expected}" + (" (the parameter has no annotation, so TorchScript types it Tensor)"
                                       if unannotated else "") +
                f"; annotate {name!r} with the type it takes (a set, or another type TorchScript lacks, makes "
                f"forkcheck run the target on its own scheduler), or give it a strategy that draws {expected}", name)
        if isinstance(err, ScheduleError):
            return hang_finding(self._concurrent_run(), self.settings.timeout, because=str(err),
                                location=err.location or error_location(err) or self.location, tasks=tasks,
                                reason=type(err).__name__)
        cause = err.__cause__ if isinstance(err, TaskError) else err
        return exception_finding("a forked task", cause, f"concurrent run, {self.engine.name} engine",
                                 location=self.location, tasks=tasks)

    def _hang(self, what: str, where: str = "") -> Finding:
        finding = hang_finding(what, self.settings.timeout, location=where or self.location)
        if not where and self.engine.name == "script":  # located at the target: say why
            finding.message += ("; no thread of the run was in Python code when the timeout came: it is stuck in "
                                "compiled code (a TorchScript loop, or a wait on a task that never ends)")
        return finding


_NO_OUTPUT = object()
_DRIVER_REFUSED = re.compile(r"driver\(\) Expected a value of type '(?P<expected>[^']+)' for argument '(?P<name>\w+)' "
                             r"but instead found type '(?P<found>[^']+)'")
SERIAL_RUN = "the serial reference run (forks inline)"


def _setup_error(target: Target, err: Exception) -> str:
    """The error of a check the user's setup stopped, without the target's name its message may start with (the
    report shows it beside the error)."""
    text = str(err)
    return "setup error: " + (text[len(target.name) + 2:] if text.startswith(f"{target.name}: ") else text)


def _instance(target: Target) -> Any:
    """The object to run; a Module that cannot be built or copied, or whose parameters are still lazy, is the user's
    setup error, named as such."""
    try:
        instance = target.instance()
    except TargetError:
        raise
    except Exception as err:
        where = error_location(err)
        where = f" at {where}" if where else ""
        if isinstance(target.obj, type):
            name = target.obj.__name__
            raise TargetError(f"{target.name}: fork_safe on a Module class builds it with no arguments, and "
                              f"{name}() raised {describe_error(err)}{where}. Make {name}() work, or mark an "
                              f"instance built as it should be: checked = fork_safe({name}(...))") from None
        raise TargetError(f"{target.name}: forkcheck runs copies of the marked Module, and copy.deepcopy of it "
                          f"raised {describe_error(err)}{where}; make it copyable") from None
    lazy = [name for name, p in instance.named_parameters() if torch.nn.parameter.is_lazy(p)] \
        if isinstance(instance, torch.nn.Module) else []
    if lazy:
        raise TargetError(f"{target.name}: its parameters {', '.join(lazy)} are lazy (made by the first call, which "
                          f"every forked task would race to make): call the module once on an example input, then "
                          f"mark that instance (checked = fork_safe(module, ...))")
    return instance


#: The findings of changes ``_at_lines`` may locate, and the key it knows a defect by.
_LINE_KINDS = frozenset({"input-mutation", "global-mutation", "attribute-mutation"})


def _line_key(finding: Finding) -> str:
    return f"{finding.kind}:{finding.detail.get('name', '')}"


def _unlocated(finding: Finding) -> bool:
    return finding.kind in _LINE_KINDS and not finding.detail.get("op")


def _under(mode: Any, callee: Callable, args: list) -> Any:
    """Call inside ``mode`` (if any): dispatch modes are per thread, so enter it on the thread that runs the call."""
    with mode if mode is not None else contextlib.nullcontext():
        return callee(*args)


def _merge(findings: list[Finding], new: list[Finding]) -> list[Finding]:
    """Add new findings, one per (kind, name): the same defect seen again is not news, but where the first sighting
    lacked the op and line that wrote, its twin's (e.g. the static pre-check's) fill them in."""
    merged = {defect_key(f): f for f in findings}
    for finding in new:
        key = defect_key(finding)
        first = merged.setdefault(key, finding)
        if first is not finding and not first.detail.get("op") and finding.detail.get("op"):
            located = finding.location and "/torch/" not in finding.location  # a traced graph may keep no lines
            merged[key] = relocated(first, finding.detail["op"], finding.location if located else "")
    return list(merged.values())


REPLAYS = 10  # a replay token reruns its example this many times and says how many reproduced the failure


def check(target: Target, settings: Settings = Settings(), *, replay: Optional[str] = None,
          nodeid: str = "", observer: Optional[RunObserver] = None) -> CheckResult:
    """Check one target; never raises for the user's code: problems become findings or an ``error`` verdict.
    ``observer`` is told of every run (see :class:`RunObserver`)."""
    started = time.perf_counter()
    result = CheckResult(target=target.name, nodeid=nodeid, kind="target")
    seed = default_seed(settings.seed)
    result.stats.seed = seed
    try:
        token = ReplayToken.decode(replay) if replay else None
        if token is not None and token.target != target.name:
            raise ReplayError(f"this replay token is for {token.target}, not {target.name}")
        if token is not None:  # replay with what the failure was found with (the seed draws nothing: none shown)
            result.stats.seed = None
            token.check_hypothesis()
            settings = replayed(settings, token)
        checker = Checker(target, settings, observer)
        if token is not None:
            token.check_fits(target.name, checker.param_names, checker.inputs.fingerprint)
            checker.pct_steps = token.pct_steps
            if checker.exhaustive:
                checker.replay_decisions = list(token.decisions)
    except (TargetError, MarkError, ReplayError, InferenceError, StrategyError) as err:
        return _errored(result, started, _setup_error(target, err))
    except Exception:
        return _errored(result, started, "internal error in forkcheck while preparing the check:\n"
                        + traceback.format_exc())
    result.engine, result.engine_reason = checker.engine.name, checker.engine.reason
    try:
        if token is None:
            failed, replay_token = _explore(checker, seed, result)
        else:
            search = _search(checker, seed, REPLAY, reproduce=token)
            failed, replay_token = _replay(search, checker, token, result), replay
    except (ReplayError, StrategyError) as err:
        return _errored(result, started, _setup_error(target, err), checker)
    except Exception:
        return _errored(result, started, "internal error in forkcheck:\n" + traceback.format_exc(), checker)
    findings = _merge(failed.findings if failed is not None else [], checker.static)
    for finding in findings:
        finding.replay = replay_token if finding.detail.get("source") != "static" else ""
    result.findings = sort_findings(findings)
    result.verdict = "fail" if findings else "pass"
    if failed is not None:  # the input of the failure the token replays
        result.failing_input = failed.shown
    _count(result, checker, started)
    return result


def _search(checker: Checker, seed: int, mode: Mode,
            reproduce: Optional[ReplayToken] = None) -> Callable[[], None]:
    """The Hypothesis search over inputs and schedules for one pass (``mode``), isolated from the user's Hypothesis
    profile; the checker is in ``mode`` while the returned search runs. ``reproduce``: only the token's example."""
    import hypothesis
    from hypothesis import Phase
    from hypothesis import strategies as st

    @hypothesis.settings(max_examples=checker.settings.examples, database=None, deadline=None, print_blob=True,
                         derandomize=False, report_multiple_bugs=False,
                         phases=[Phase[name] for name in mode.phases],
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.seed(seed)
    @hypothesis.given(inputs=checker.inputs.strategy, data=st.data())
    def search(inputs: dict[str, Any], data: Any) -> None:
        checker.example(inputs, lambda strategy, label: data.draw(strategy, label=label))

    if reproduce is not None:
        search = hypothesis.reproduce_failure(reproduce.hypothesis_version, reproduce.blob.encode())(search)

    def in_mode() -> None:
        before, checker.mode = checker.mode, mode
        try:
            search()
        finally:
            checker.mode = before

    return in_mode


def _explore(checker: Checker, seed: int, result: CheckResult) -> tuple[Optional[_Failed], str]:
    """Search for a failing example; returns its failure and replay token.

    A race that is only predicted does not stop the search, which goes on for an input whose outcome it makes wrong;
    if none does, the search is replayed up to the first racing example (runs skipped) for its replay token. The
    failure is then shrunk where reruns are deterministic: see ``_shrink``.
    """
    failed = _first_failure(_search(checker, seed, EXPLORE), checker, result)
    if failed is None and checker.predicted is not None:
        key, races, shown = checker.predicted
        checker.memo = {key: races}
        checker.failures.append((shown, races))
        failed = _first_failure(_search(checker, seed, Mode("recall", serial_only=True)), checker, result)
    if failed is not None and not any(f.kind == "hang" for f in failed.findings) and (
            checker.serial_failure or checker.engine.name == "eager"):
        failed = _shrink(checker, seed, result, failed)
    if failed is None:
        return None, ""
    blob = blob_from_notes(failed)
    token = ReplayToken(checker.target.name, blob[0], blob[1], checker.settings.tasks,
                        strategy=checker.settings.strategy, schedules=checker.per_example,
                        pool_size=_pool_size(checker), pct_steps=max(checker.pct_steps, 0),
                        decisions=tuple(checker.failing_decisions), parameters=tuple(checker.param_names),
                        inputs=checker.inputs.fingerprint) if blob else None
    return failed, token.encode() if token else ""


SHRINK_S = 10.0  # the longest a failure under forkcheck's own scheduler is shrunk; the smallest found so far is kept
SHRINK_RUNS = 10  # ``exhaustive``: a smaller input's search takes at most this many runs more than twice the failure's


def _shrink(checker: Checker, seed: int, result: CheckResult, failed: _Failed) -> _Failed:
    """Search again with Hypothesis's shrinking for a smaller failing input and schedule.

    Only where a rerun repeats the failure: a defect the serial run shows (concurrent runs skipped: the search draws
    the same schedules), or any defect under forkcheck's own scheduler, whose schedules replay exactly. The real
    runtime never repeats itself exactly, so its concurrency-only failures are reported as found. A failure with a
    wrong outcome shrinks to one with a wrong outcome, not to a race alone. Counts are those of the first search.
    Under ``exhaustive`` a smaller input's search stops a little after the run where the failure's own showed it
    (the search runs its interleavings in the same order): an input that needs more is not the simpler failure, and
    searching each to the budget took the whole shrinking time on a few inputs.
    """
    kept = (checker.examples, checker.schedules, checker.failed_after, checker.wrong_after, checker.serial_failure,
            checker.coverage)
    checker.coverage = Coverage(checker.engine.name)
    checker.memo = {}
    mode = Mode("shrink", hold_races=_wrong_outcome(failed.findings), serial_only=checker.serial_failure,
                until=time.monotonic() + SHRINK_S,
                budget=2 * checker.failing_run + SHRINK_RUNS if checker.exhaustive else None)
    try:
        shrunk = _first_failure(_search(checker, seed, mode), checker, result)
        return shrunk if shrunk is not None and blob_from_notes(shrunk) else failed  # no blob: no token to show
    finally:
        (checker.examples, checker.schedules, checker.failed_after, checker.wrong_after,
         checker.serial_failure, checker.coverage) = kept


def _first_failure(search: Callable[[], None], checker: Checker, result: CheckResult) -> Optional[_Failed]:
    import hypothesis

    try:
        search()
    except _Failed as failed:
        return failed
    except hypothesis.errors.Unsatisfiable:
        blamed = checker.inputs.unsatisfiable()
        if blamed is None:
            raise
        raise blamed from None
    except hypothesis.errors.HypothesisException as err:
        if not checker.failures:
            raise
        result.stats.flaky = f"{type(err).__name__}: the failure did not show on every rerun"
        shown, findings = checker.failures[-1]
        return _Failed(findings, shown)
    return None


def _replay(search: Callable[[], None], checker: Checker, token: ReplayToken,
            result: CheckResult) -> Optional[_Failed]:
    """Rerun the token's example (``search`` reproduces it) ``REPLAYS`` times; the first failure, and the result says
    how many reproduced it."""
    import hypothesis
    from hypothesis.reporting import with_reporter

    first: Optional[_Failed] = None
    reproduced = wrong = 0
    for _ in range(REPLAYS):
        checker.memo.clear()
        try:
            with with_reporter(lambda _text: None):  # the report says what was replayed, once, not each run
                search()
        except _Failed as failed:
            reproduced += 1
            wrong += _wrong_outcome(failed.findings)
            first = first or failed
        except hypothesis.errors.DidNotReproduce:
            pass
    if not checker.examples:  # the choices did not even draw the inputs: never a pass
        raise ReplayError(f"this replay token no longer fits {checker.target.name}: its choices draw none of the "
                          f"target's inputs (its parameters or their strategies changed since the token was made); "
                          f"{FRESH}")
    checker.examples = 1  # the token's one input, rerun: its schedules count every rerun's
    size = _pool_size(checker)
    if checker.serial_failure:  # each rerun stopped at the serial run: no schedule ran, no pool took part
        result.stats.replays = Replays(runs=REPLAYS, reproduced=reproduced, wrong_outcome=wrong,
                                       what="the failing input's serial run (forks inline, no pool)")
        return first
    result.stats.replays = Replays(runs=REPLAYS, reproduced=reproduced, wrong_outcome=wrong,
                                   schedules=1 if checker.exhaustive else checker.per_example,  # its interleaving
                                   strategy=token.strategy, pool_size=size)
    if token.pool_size and size and size != token.pool_size:
        result.stats.replay_note = (f"found with an inter-op pool of {plural(token.pool_size, 'thread')}, replayed "
                                    f"with {size}: the real runtime may not repeat it")
    return first


def _pool_size(checker: Checker) -> int:
    """The inter-op pool's size, when the tasks run on it (0 under forkcheck's own scheduler)."""
    return torch.get_num_interop_threads() if checker.engine.name == "script" else 0


def _count(result: CheckResult, checker: Optional[Checker], started: float) -> None:
    if checker is not None:
        result.examples, result.schedules = checker.examples, checker.schedules
        stats = result.stats
        if checker.interleavings:
            stats.interleavings, stats.switches = len(checker.interleavings), checker.switches
        if checker.coverage.runs:
            stats.coverage = checker.coverage.stats(checker.settings.preemptions, checker.settings.budget)
        if checker.settings.strategy == "exhaustive" and not checker.exhaustive:
            stats.strategy_note = ("exhaustive search needs forkcheck's own scheduler, and this compiled target runs "
                                   "on TorchScript's runtime: its schedules were the portfolio's")
        serial = bool(checker.failures) and checker.serial_failure
        stats.pool_size = None if serial else _pool_size(checker) or None  # the serial run showed it: no pool did
        if checker.failures:
            stats.found_by = FoundBy.SERIAL_RUN if serial else FoundBy.CONCURRENT_RUNS
        stats.failed_after = checker.failed_after
        stats.wrong_outcome_after = checker.wrong_after or None
    result.duration_s = round(time.perf_counter() - started, 3)


def _errored(result: CheckResult, started: float, message: str, checker: Optional[Checker] = None) -> CheckResult:
    result.verdict = "error"
    result.error = message
    _count(result, checker, started)
    return result
