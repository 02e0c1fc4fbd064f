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


def choose_engine(instance: Any, param_names: Sequence[str], tasks: int, timeout: float = 60.0) -> Engine:
    """The real runtime when the target scripts, else forkcheck's scheduler with the scripting error as reason."""
    from .eager import EagerEngine
    from .script import NotScriptable, ScriptEngine

    try:
        return ScriptEngine(instance, param_names, tasks)
    except NotScriptable as err:
        return EagerEngine(instance, tasks, reason=str(err), timeout=timeout, param_names=param_names)
