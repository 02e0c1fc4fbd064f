"""Engines run ``tasks`` instances of a target forked together on the same inputs, under one schedule.

``script`` runs them through the real TorchScript runtime (the inter-op pool); ``eager`` through forkcheck's own
fork/wait scheduler, for targets that do not script. Both follow :class:`Engine`: a run returns a :class:`Run`
record (outputs or the error, the interleaving, the access log when asked for), and judging it is the runner's job:
an engine calls no oracle.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol, Sequence


class TaskError(Exception):
    """A forked task raised; ``__cause__`` is the task's exception."""


class ScheduleError(Exception):
    """The schedule could not finish: a deadlock or a timeout (a ``hang`` finding). ``location``: the user's line
    the task that did not finish was at, where known."""

    def __init__(self, message: str = "", location: str = ""):
        super().__init__(message)
        self.location = location


class Deadlock(ScheduleError):
    """Every unfinished task waits for another unfinished task (or for itself)."""


class ScheduleTimeout(ScheduleError):
    """The schedule did not finish within its timeout."""


class Observe(enum.Enum):
    """What a run records of its tasks' accesses: the more, the slower."""

    NOTHING = "nothing"  # no access log: the run says its interleaving, no coverage signature
    SIGNATURE = "signature"  # enough for ``Run.trace``, the run's coverage signature (``forkcheck.interleavings``)
    ACCESSES = "accesses"  # every access with its op and line: ``Run.log``, for the race oracle


@dataclass
class Run:
    """What one run did; the runner's oracles and coverage read it."""

    outputs: list[Any]  # each task's output, in fork order (empty when the run failed)
    interleaving: tuple[int, ...]  # the tasks in the order they ran, a task's consecutive steps as one
    switches: int  # changes of the running task
    steps: int  # scheduling points passed
    error: Optional[Exception] = None  # what ended the run: a task's exception, or a ``ScheduleError``
    log: Any = None  # the access log (``forkcheck.observe.AccessLog``), when the run observed ``ACCESSES``
    trace: Optional[int] = None  # the interleaving's signature for coverage (``None``: the run was not told apart)
    decisions: list[int] = field(default_factory=list)  # forkcheck's scheduler's choices: they replay the run

    def result(self) -> list[Any]:
        """The outputs, or the run's error raised (as a future's ``result()`` does)."""
        if self.error is not None:
            raise self.error
        return self.outputs


class Engine(Protocol):
    name: str  # "script" or "eager"
    reason: str  # why this engine was chosen
    module: Any  # the module instance the runs share (None for functions)
    scripted: Any  # the target's TorchScript (the static pre-check reads its graph); None on forkcheck's scheduler
    runs_python: bool  # whether a run's tasks may run Python code (else they reach no Python state: globals, RNGs)

    def run(self, args: Sequence[Any], schedule: Any, observe: Observe) -> Run:
        """Fork ``tasks`` instances on ``args`` (the same objects) under ``schedule``, wait for all; what the
        target raised (or a ``ScheduleError``) is the run's ``error``, not raised."""

    def calibrate(self, args: Sequence[Any]) -> int:
        """Run once unperturbed (observing nothing, counting no schedule); the scheduling points it passed where a
        task could go on: PCT's ``k``."""


#: Why a target that scripts runs under forkcheck's own scheduler with the ``exhaustive`` strategy.
CONTROLLED = ("the exhaustive strategy explores interleavings under forkcheck's own scheduler: the target's Python "
              "code runs there, not on TorchScript's runtime")


def choose_engine(instance: Any, param_names: Sequence[str], tasks: int, timeout: float = 60.0,
                  controlled: bool = False) -> Engine:
    """The real runtime when the target scripts, else forkcheck's scheduler with the scripting error as reason.
    ``controlled``: forkcheck's scheduler for any target with Python code (not one compiled already)."""
    from .eager import EagerEngine
    from .script import NotScriptable, ScriptEngine

    import torch

    compiled = isinstance(instance, (torch.jit.ScriptFunction, torch.jit.ScriptModule))
    if controlled and not compiled:
        return EagerEngine(instance, tasks, reason=CONTROLLED, timeout=timeout, param_names=param_names)
    try:
        return ScriptEngine(instance, param_names, tasks)
    except NotScriptable as err:
        return EagerEngine(instance, tasks, reason=str(err), timeout=timeout, param_names=param_names)
