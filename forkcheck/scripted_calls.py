"""Calls of compiled TorchScript made while a marked test runs, under forkcheck's control and observation.

Forks inside scripted code run on torch's inter-op pool, out of reach of forkcheck's own scheduler (it replaces the
Python-level fork). While :class:`ScriptedCalls` is installed, a call of a ``ScriptFunction`` or of a scripted
module's method (``forward`` or any other: ``torch.ScriptMethod``) whose graph forks runs an instrumented copy of it
instead (``forkcheck.instrument``, made once per compiled object, the user's object untouched), under PCT priorities
(``forkcheck.schedules.PCTPolicy``): the calling task first, until it waits, then the tasks it forked in a drawn order,
not the order they were forked in (which the pool keeps, unperturbed, in most runs). The priorities are drawn from
the test's schedule seed and the call's position in the schedule, so a schedule replays. The call's accesses go to
an access log of its own, absorbed into the test's when it returns: the call is one step of forkcheck's scheduler
(no other task of the test runs meanwhile), so races between its tasks and the test's other tasks are predicted
too (by happens-before, ``forkcheck.oracles.races``). Only entry calls are routed: scripted code calling scripted code is inlined
into the caller's graph. A graph without forks runs as it is, its ops seen by forkcheck's scheduler like any other.
"""
from __future__ import annotations

import itertools
import random
import threading
import weakref
from typing import Any, Callable, Optional

import torch
from torch.utils._python_dispatch import _disable_current_modes

from .instrument import Instrumentation, instrument
from .observe import AccessLog, storage_names
from .schedules import PCTPolicy, run_under

_ROUTED = (torch.jit.ScriptFunction, torch.ScriptMethod)


class Program:
    """One compiled object's instrumented copy, with what names its storages in a report."""

    def __init__(self, compiled: Any):
        self.instrumented: Optional[Instrumentation] = None
        self.note = ""  # why the calls run as they are, if they do although the graph forks
        self.params: list[str] = []
        self.module: Any = None  # a Python wrapper of the method's owner, for ``storage_names``
        self.name = getattr(compiled, "qualified_name", None) or getattr(compiled, "name", "") or "scripted code"
        try:
            program = instrument(compiled)
        except Exception as err:  # noqa: BLE001 - a graph the pass does not handle runs uninstrumented, noted
            self.note = f"{self.name}: not instrumented ({type(err).__name__}: {err}); its forks ran unobserved"
            return
        if len(program.tasks) == 1:  # no fork
            return
        arguments = compiled.schema.arguments
        if isinstance(compiled, torch.ScriptMethod):
            arguments = arguments[1:]
            self.module = torch.jit._recursive.wrap_cpp_module(compiled.owner)
        self.params = [argument.name for argument in arguments]
        self.instrumented = program

    def names(self, args: tuple, kwargs: dict) -> dict[int, str]:
        """Storage key -> a name: the scripted parameter it was passed as, or the module attribute it is."""
        values = dict(zip(self.params, args), **kwargs)
        names = storage_names(values)
        if self.module is not None:
            owner = self.module.original_name
            for key, path in storage_names(module=self.module).items():
                names.setdefault(key, owner + path[len("self"):])
        return names


class ScriptedCalls:
    """Installed for one schedule of a marked test: routes scripted calls (see the module docstring).

    ``log``: the schedule's access log; ``seed``: the schedule's, from which each call's priorities are drawn;
    ``programs``: instrumented copies, shared by a test's schedules. After the schedule, ``notes`` says which
    compiled objects could not be instrumented.
    """

    def __init__(self, log: AccessLog, seed: int, programs: "weakref.WeakKeyDictionary[Any, Program]"):
        self.log = log
        self.seed = seed
        self.programs = programs
        self.calls = itertools.count()
        self.notes: list[str] = []
        self._busy = threading.Lock()  # one routed call at a time; calls made inside it run as they are
        self._saved: dict[type, Callable] = {}

    def __enter__(self) -> "ScriptedCalls":
        for kind in _ROUTED:
            original = self._saved[kind] = kind.__call__
            kind.__call__ = self._router(original)
        return self

    def __exit__(self, *exc: Any) -> None:
        for kind, original in self._saved.items():
            kind.__call__ = original
        self._saved.clear()

    def _router(self, original: Callable) -> Callable:
        def call(compiled: Any, *args: Any, **kwargs: Any) -> Any:
            if not self._busy.acquire(blocking=False):  # inside a routed call: its own program, or a nested call
                return original(compiled, *args, **kwargs)
            try:
                program = self._program(compiled)
                if program.instrumented is None:
                    return original(compiled, *args, **kwargs)
                return self._run(program, args, kwargs)
            finally:
                self._busy.release()

        return call

    def _program(self, compiled: Any) -> Program:
        program = self.programs.get(compiled)
        if program is None:
            program = self.programs[compiled] = Program(compiled)
        if program.note and program.note not in self.notes:
            self.notes.append(program.note)
        return program

    def _run(self, program: Program, args: tuple, kwargs: dict) -> Any:
        """The call as one step of the test's schedule: forkcheck's scheduler and access log set aside on this
        thread meanwhile, the call's own log absorbed into the test's afterwards."""
        policy = PCTPolicy(random.Random(self.seed * 1_000_003 + next(self.calls)).getrandbits(64), depth=1,
                           leader=0)
        with _disable_current_modes():
            nested = AccessLog(program.instrumented.sites, program.names(args, kwargs))
            with nested:
                try:
                    return run_under(policy, program.instrumented, *args, **kwargs)
                finally:
                    self.log.absorb(nested)
