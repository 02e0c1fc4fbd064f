"""Engines run ``tasks`` instances of a target forked together on the same inputs, under one schedule.

``script`` runs them through the real TorchScript runtime (the inter-op pool); ``eager`` through forkcheck's own
fork/wait scheduler, for targets that do not script.
"""
from __future__ import annotations

from typing import Any, Protocol, Sequence


class TaskError(Exception):
    """A forked task raised; ``__cause__`` is the task's exception."""


class Engine(Protocol):
    name: str  # "script" or "eager"
    reason: str  # why this engine was chosen
    module: Any  # the module instance the runs share (None for functions)

    def run(self, args: Sequence[Any], schedule: Any) -> list[Any]:
        """Fork ``tasks`` instances on ``args`` (the same objects), wait for all, return their outputs in order."""


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
