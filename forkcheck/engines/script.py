"""The real runtime: a scripted driver forks the scripted target ``tasks`` times; tasks run on the inter-op pool."""
from __future__ import annotations

import dataclasses
import itertools
import linecache
import sys
import types
from typing import Any, Sequence

import torch

from .._warnings import quiet_jit
from ..instrument import instrument
from ..interleavings import conflict_groups, point_signature
from ..observe import AccessLog, storage_names
from ..oracles.races import race_findings
from ..schedules import run_under

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
        if is_module:  # the driver holds the target as ``self.target``: its attributes go by the target's own names
            self.program.sites = {site: dataclasses.replace(info, name="self" + info.name[len("self.target"):])
                                  if info.name.startswith("self.target.") else info
                                  for site, info in self.program.sites.items()}
        self.param_names = list(param_names)
        # record every task's accesses and report races in ``last_races`` (the runner: first schedule per example)
        self.races = True
        self.last_races: list[Any] = []  # ``race`` findings of the last run (``outputs_affected`` left to fill)
        self.steps = 0  # points a run passes unperturbed: PCT's k (see ``calibrate``)
        self.last_run: dict[str, Any] = {}
        self._conflicting: Any = None  # per task pair, the ops that conflicted in the last logged run

    def calibrate(self, args: Sequence[Any]) -> int:
        """Run once unperturbed to count the scheduling points a run passes."""
        self.program.run(*args)
        self.steps = max(self.program.steps, 1)
        return self.steps

    def run(self, args: Sequence[Any], schedule: Any) -> list[Any]:
        """One run with ``schedule``'s policy deciding at every scheduling point."""
        recorder = _Recorder(schedule.policy())
        self.last_races = []
        if not self.races:
            outputs = list(run_under(recorder, self.program, *args))
        else:  # the access log sees every op of every task, and the scheduling ops that say which task runs it
            log = AccessLog(self.program.sites, storage_names(dict(zip(self.param_names, args)), self.module))
            with log:
                outputs = list(run_under(recorder, self.program, *args))
            self.last_races = race_findings(log)
            self._conflicting = conflict_groups(log)
        self.last_run = recorder.summary()
        if self._conflicting is not None:
            self.last_run["trace"] = point_signature(recorder.points, self.program.sites, self._conflicting)
        return outputs


class _Recorder:
    """Passes points to a policy and records which task went on at each: the run's interleaving."""

    def __init__(self, policy: Any):
        self.policy = policy
        self.trace: list[int] = []
        self.points: list[tuple[int, int]] = []  # (site, task) as reached

    def begin(self, sites: Any) -> None:
        self.policy.begin(sites)

    def on_point(self, site: int, task: int) -> None:
        self.policy.on_point(site, task)
        self.trace.append(task)  # after the policy let the task go on: the order ops really ran in
        self.points.append((site, task))

    def summary(self) -> dict[str, Any]:
        """The interleaving as task runs (``[0, 1, 1, 2, 1]`` -> ``(0, 1, 2, 1)``), and its number of switches."""
        runs = tuple(task for i, task in enumerate(self.trace) if i == 0 or self.trace[i - 1] != task)
        return {"interleaving": hash(runs), "switches": max(len(runs) - 1, 0), "steps": len(self.trace)}
