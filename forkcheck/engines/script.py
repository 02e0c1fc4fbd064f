"""The real runtime: a scripted driver forks the scripted target ``tasks`` times; tasks run on the inter-op pool.

A run observing ``ACCESSES`` logs every op of every task; the ops that conflicted in it are kept, and each later run
is told apart by the order in which its tasks reached them (``forkcheck.interleavings.point_signature``). Later runs
that log nothing also perturb only there: a ``focusable`` policy (``random``) is called at the points before those
ops and no others, as delaying an op that conflicts with none cannot change what the run computes, only slow it (a
task waiting at each of a program's points cost 5-10x a plain run). Where the logged run saw no conflict, later runs
are unperturbed (see ``ScriptEngine.run``).
"""
from __future__ import annotations

import dataclasses
import itertools
import linecache
import sys
import types
from typing import Any, Optional, Sequence

import torch

from .._warnings import quiet_jit
from ..compiled import constant_names, graph_nodes, has_compiled_forward
from ..instrument import instrument
from ..interleavings import conflict_groups, point_signature
from ..observe import AccessLog, storage_names
from ..schedules import run_under
from . import Observe, Run

_counter = itertools.count()


class NotScriptable(Exception):
    """``torch.jit.script`` rejected the target; the message is the first line of its error."""


def _script(obj: Any) -> Any:
    try:
        with quiet_jit():
            return torch.jit.script(obj)
    except Exception as err:  # TorchScript raises many error types, all meaning "does not script"
        first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise NotScriptable(f"torch.jit.script failed: {first.strip()}") from err


def _driver_source(param_types: Sequence[tuple[str, str]], tasks: int, is_module: bool) -> str:
    params = ", ".join(f"{name}: {annotation}" for name, annotation in param_types)
    args = ", ".join(name for name, _ in param_types)
    callee = "self.target" if is_module else "target"
    forks = "".join(f"        f{i} = torch.jit.fork({callee}, {args})\n" for i in range(tasks))
    waits = ", ".join(f"torch.jit.wait(f{i})" for i in range(tasks))
    header = "class Driver(torch.nn.Module):\n    def __init__(self, target):\n        super().__init__()\n" \
             "        self.target = target\n\n    def forward(self" if is_module else "def driver("
    body = f"{header}{', ' if is_module and params else ''}{params}):\n{forks}        return ({waits},)\n"
    return body if is_module else body.replace("\n        ", "\n    ")


#: Namespaces of ops whose kernels are torch's or forkcheck's own C++ and Python: no user Python code runs in them.
_NO_USER_PYTHON = ("aten::", "prim::", "forkcheck::")


def _runs_python(graph: Any) -> bool:
    """Whether the program may run the user's Python code: a ``torch.jit.ignore``d call (``prim::PythonOp``), or an
    op of a library of the user's, whose kernel may be Python. Otherwise its tasks reach no Python state."""
    return any(node.kind() == "prim::PythonOp" or not node.kind().startswith(_NO_USER_PYTHON)
               for node in graph_nodes(graph.block()))


def _load_driver(source: str, target: Any) -> types.ModuleType:
    """Execute generated source as a module TorchScript can read the source of (through ``linecache``)."""
    name = f"forkcheck_driver_{next(_counter)}"
    filename = f"<{name}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    module = types.ModuleType(name)
    module.__file__ = filename
    module.__dict__.update(torch=torch, Tensor=torch.Tensor, target=target)
    exec("from typing import Any, Dict, List, Optional, Tuple, Union\n", module.__dict__)
    sys.modules[name] = module
    exec(compile(source, filename, "exec"), module.__dict__)
    return module


class ScriptEngine:
    """Scripts the target once (a compiled one as it is), then runs a scripted driver that forks it ``tasks`` times
    per run; the driver's graph is instrumented on a copy, so the target's own graph is never changed."""

    name = "script"

    def __init__(self, instance: Any, param_names: Sequence[str], tasks: int):
        compiled = isinstance(instance, (torch.jit.ScriptFunction, torch.jit.ScriptModule))
        self.reason = (f"the target {'is compiled TorchScript' if compiled else 'compiles with torch.jit.script'}: "
                       "its tasks run on TorchScript's inter-op thread pool")
        self.scripted = instance if compiled else _script(instance)
        is_module = isinstance(instance, torch.nn.Module)
        self.module = self.scripted if is_module else None
        if is_module and not has_compiled_forward(self.scripted):  # its forward is ``jit.ignore``d
            raise NotScriptable("its forward is torch.jit.ignore'd: it runs as Python, not on TorchScript's runtime")
        schema = self.scripted.forward.schema if is_module else self.scripted.schema
        arguments = schema.arguments[1:] if is_module else schema.arguments
        param_types = [(arg.name, str(arg.type)) for arg in arguments]
        if [name for name, _ in param_types] != list(param_names):
            raise NotScriptable(f"scripted parameters {[n for n, _ in param_types]} differ from {list(param_names)}")
        source = _driver_source(param_types, tasks, is_module)
        loaded = _load_driver(source, self.scripted)
        try:
            with quiet_jit():
                self.driver = torch.jit.script(loaded.Driver(self.scripted) if is_module else loaded.driver)
        except Exception as err:
            raise NotScriptable(f"the fork driver for this target does not script: {err}") from err
        self.program = instrument(self.driver)  # scheduling points before every op of every task
        self.runs_python = _runs_python(self.program.graph)
        self.named_constants = constant_names(self.program.graph)  # a frozen module's folded buffers
        if is_module:  # the driver holds the target as ``self.target``: its attributes go by the target's own names
            self.program.sites = {site: dataclasses.replace(info, name="self" + info.name[len("self.target"):])
                                  if info.name.startswith("self.target.") else info
                                  for site, info in self.program.sites.items()}
        self.param_names = list(param_names)
        self._conflicting: Any = None  # per task pair, the ops that conflicted in the last logged run
        self._focus: Optional[frozenset[int]] = None  # the points before those ops (``None``: no run logged yet)

    def calibrate(self, args: Sequence[Any]) -> int:
        """Run once unperturbed to count the scheduling points a run passes."""
        self.program.run(*args)
        return max(self.program.steps, 1)

    def run(self, args: Sequence[Any], schedule: Any, observe: Observe) -> Run:
        """One run under ``schedule``'s policy; what it raised is its ``error``. The policy decides at the points where
        the last logged run saw tasks conflict (at every point before the first logged run). Where that run saw no
        conflict, a run that logs nothing is a plain run of the scripted driver (there is nothing to perturb, and
        the program's points cost a Python call each), and a logged one runs the program with no policy. Where it saw
        conflicts, a logged run is perturbed at every point, as before any was logged: delays packed before the ops
        that conflicted make the tasks really run them together, which can corrupt an unsynchronised list or dict
        (the process crashes, and the race oracle's run is lost)."""
        focus = self._focus if not (observe is Observe.ACCESSES and self._focus) else None
        recorder = _Recorder(schedule.policy(), focus)
        log = None
        outputs: list[Any] = []
        error: Optional[Exception] = None
        try:
            if focus == frozenset() and observe is not Observe.ACCESSES:
                outputs = list(self.driver(*args))
            elif observe is not Observe.ACCESSES:
                outputs = list(run_under(recorder, self.program, *args))
            else:  # the access log sees every op of every task, and the scheduling ops that say which task runs it
                names = {**self.named_constants, **storage_names(dict(zip(self.param_names, args)), self.module)}
                log = AccessLog(self.program.sites, names)
                with log:
                    outputs = list(run_under(recorder, self.program, *args))
                self._conflicting = conflict_groups(log)
                ops = frozenset().union(*self._conflicting.values())
                self._focus = frozenset(site for site, info in self.program.sites.items()
                                        if (info.kind, info.location) in ops)
        except Exception as err:  # the target's failure: the runner judges it
            error = err
        trace = None
        if self._conflicting is not None and observe is not Observe.NOTHING:
            trace = point_signature(recorder.points, self.program.sites, self._conflicting)
        runs = recorder.runs()
        return Run(outputs, runs, max(len(runs) - 1, 0), len(recorder.trace), error=error, log=log, trace=trace)


class _Recorder:
    """Passes points to a policy and records which task went on at each: the run's interleaving. With a ``focus``, a
    ``focusable`` policy is called at its points only, and an empty one (no op conflicted) calls no policy."""

    def __init__(self, policy: Any, focus: Optional[frozenset[int]] = None):
        self.policy = policy
        self.focus = focus if policy.focusable or focus == frozenset() else None
        self.trace: list[int] = []
        self.points: list[tuple[int, int]] = []  # (site, task) as reached

    def begin(self, sites: Any) -> None:
        self.policy.begin(sites)

    def on_point(self, site: int, task: int) -> None:
        if self.focus is None or site in self.focus:
            self.policy.on_point(site, task)
        self.trace.append(task)  # after the policy let the task go on: the order ops really ran in
        self.points.append((site, task))

    def runs(self) -> tuple[int, ...]:
        """The interleaving as task runs: ``[0, 1, 1, 2, 1]`` -> ``(0, 1, 2, 1)``."""
        return tuple(task for i, task in enumerate(self.trace) if i == 0 or self.trace[i - 1] != task)
