"""Mutation oracles: did a run change its inputs, the module's state, or global state?

Each ``*Watch`` snapshots before a run, turns what changed after it into findings, and can put things back.
"""
from __future__ import annotations

import random
import types
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy
import torch

from ..findings import Finding
from ..locate import RNG
from ..state import ModuleSnapshot, is_user_module, snapshot

Locate = Callable[[str], tuple[str, str]]  # watched name -> (op, file:line), or ("", "")


def _no_location(name: str) -> tuple[str, str]:
    return "", ""


def _finding(kind: str, subject: str, name: str, changes: list[str], tasks: list[int], locate: Locate,
             default_location: str) -> Finding:
    op, location = locate(name)
    by = f" by {op}" if op else ""
    at = f" at {location}" if location else ""
    shown = "; ".join(changes[:3]) + (f"; and {len(changes) - 3} more" if len(changes) > 3 else "")
    return Finding(
        kind=kind,
        message=f"{subject} changed{by}{at}: {shown}",
        location=location or default_location,
        tasks=list(tasks),
        detail={"name": name, "op": op, "changes": changes[:10]},
    )


class InputWatch:
    """Arguments by parameter name: tensors (bits, version, metadata), lists, dicts and objects (contents)."""

    def __init__(self, inputs: Mapping[str, Any]):
        self.inputs = dict(inputs)
        self.snapshots = {name: snapshot(value) for name, value in inputs.items()}

    def findings(self, tasks: list[int], locate: Locate = _no_location, default_location: str = "") -> list[Finding]:
        found = []
        for name, snap in self.snapshots.items():
            changes = snap.changes(self.inputs[name])
            if changes:
                found.append(_finding("input-mutation", f"input {name!r}", name, changes, tasks, locate,
                                      default_location))
        return found


class ModuleWatch:
    """Parameters, buffers, plain attributes and submodules of one module (eager or scripted)."""

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.snapshot = ModuleSnapshot.take(module)

    def changed(self) -> dict[str, list[str]]:
        return self.snapshot.changed()

    def findings(self, tasks: list[int], locate: Locate = _no_location, default_location: str = "") -> list[Finding]:
        return [
            _finding("attribute-mutation", f"module attribute {path!r}", path, changes, tasks, locate,
                     default_location)
            for path, changes in self.changed().items()
        ]

    def restore(self) -> None:
        """Put every changed attribute back, so the next run starts from the same state."""
        self.snapshot.restore()
        self.snapshot = ModuleSnapshot.take(self.module)


# --- globals ----------------------------------------------------------------------------------------------


def _user_function(value: Any) -> bool:
    return isinstance(value, types.FunctionType) and is_user_module(getattr(value, "__module__", None) or "")


def _user_class(value: Any) -> bool:
    return isinstance(value, type) and is_user_module(value.__module__)


def _methods(cls: type) -> Iterator[Callable]:
    for klass in cls.__mro__:
        if is_user_module(klass.__module__):
            for value in vars(klass).values():
                function = getattr(value, "__func__", getattr(value, "fget", value))
                if isinstance(function, types.FunctionType):
                    yield function


def _code_objects(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_objects(const)


def referenced_globals(functions: Iterable[Callable], depth: int = 3) -> dict[str, tuple[Any, str]]:
    """Globals and closure cells the functions' code refers to, following the user's functions, classes and objects'
    methods ``depth`` calls deep.

    Maps a display name (``module.name`` for a global, ``function.name`` for a closure variable) to
    ``(namespace, key)``; a closure cell's namespace is a ``_CellSlot``.
    """
    found: dict[str, tuple[Any, str]] = {}
    seen: set[int] = set()
    todo = [(getattr(f, "__func__", f), depth) for f in functions]

    def follow(value: Any, level: int) -> None:
        if level > 0 and _user_function(value):
            todo.append((value, level - 1))
        elif level > 0 and (_user_class(value) or _user_class(type(value))):
            todo.extend((method, level - 1) for method in _methods(value if isinstance(value, type) else type(value)))

    while todo:
        function, level = todo.pop()
        if not isinstance(function, types.FunctionType) or id(function) in seen:
            continue
        seen.add(id(function))
        namespace = function.__globals__
        module = namespace.get("__name__", "?")
        for code in _code_objects(function.__code__):
            for name in code.co_names:
                if name in namespace:
                    value = namespace[name]
                    follow(value, level)
                    if not isinstance(value, (types.ModuleType, types.FunctionType, type)):
                        found[f"{module}.{name}"] = (namespace, name)
        for name, cell in zip(function.__code__.co_freevars, function.__closure__ or ()):
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            follow(value, level)
            if not isinstance(value, (types.ModuleType, type)):
                found[f"{function.__qualname__}.{name}"] = (_CellSlot(cell), name)
    return found


class _CellSlot:
    """A closure cell seen through the mapping interface the globals use."""

    def __init__(self, cell: types.CellType):
        self.cell = cell

    def __getitem__(self, key: str) -> Any:
        return self.cell.cell_contents

    def __setitem__(self, key: str, value: Any) -> None:
        self.cell.cell_contents = value


#: Process-wide state that a forked task must not change: name -> (read, write).
_PROCESS_STATE: dict[str, tuple[Callable[[], Any], Callable[[Any], Any]]] = {
    RNG: (torch.get_rng_state, torch.set_rng_state),
    "Python default RNG": (random.getstate, random.setstate),
    "numpy default RNG": (numpy.random.get_state, numpy.random.set_state),
    "torch default dtype": (torch.get_default_dtype, torch.set_default_dtype),
    "torch default device": (torch.get_default_device, torch.set_default_device),
    "torch intra-op threads": (torch.get_num_threads, torch.set_num_threads),
    "torch deterministic algorithms": (torch.are_deterministic_algorithms_enabled, torch.use_deterministic_algorithms),
}

#: torch's per-thread state: only the thread that ran the code sees a change (``GlobalWatch.run``).
_THREAD_STATE: dict[str, tuple[Callable[[], Any], Callable[[Any], Any]]] = {
    "torch grad mode": (torch.is_grad_enabled, torch.set_grad_enabled),
}


def process_state() -> dict[str, Any]:
    """The process-wide state (and this thread's torch state) a forked task must not change."""
    return {name: read() for name, (read, _) in {**_PROCESS_STATE, **_THREAD_STATE}.items()}


def _same(then: Any, now: Any) -> bool:
    if isinstance(then, torch.Tensor):
        return torch.equal(then, now)
    if isinstance(then, numpy.ndarray):
        return numpy.array_equal(then, now)
    if isinstance(then, tuple):  # RNG states
        return len(then) == len(now) and all(map(_same, then, now))
    return then == now


def _state_change(name: str, then: Any, now: Any) -> str:
    return "was advanced (random numbers were drawn)" if name.endswith("RNG") else f"changed from {then} to {now}"


class GlobalWatch:
    """Python globals and closure cells the code refers to, and process-wide state: torch's, and the Python and
    numpy default RNGs."""

    def __init__(self, slots: Mapping[str, tuple[Any, str]]):
        self.slots = dict(slots)
        self.snapshots = {name: snapshot(ns[key]) for name, (ns, key) in self.slots.items()}
        self.process = process_state()
        self.thread_changes: dict[str, list[str]] = {}

    def run(self, call: Callable[[], Any]) -> Any:
        """``call()`` on this thread, watching this thread's torch state too (grad mode is per thread), and putting
        it back afterwards."""
        before = {name: read() for name, (read, _) in _THREAD_STATE.items()}
        try:
            return call()
        finally:
            for name, (read, write) in _THREAD_STATE.items():
                now = read()
                if not _same(before[name], now):
                    self.thread_changes[name] = [_state_change(name, before[name], now)]
                    write(before[name])

    def changed(self) -> dict[str, list[str]]:
        changed = {}
        for name, (ns, key) in self.slots.items():
            changes = self.snapshots[name].changes(ns[key])
            if changes:
                changed[name] = changes
        for name, now in process_state().items():
            if not _same(self.process[name], now):
                changed[name] = [_state_change(name, self.process[name], now)]
        changed.update(self.thread_changes)
        return changed

    def findings(self, tasks: list[int], locate: Locate = _no_location, default_location: str = "") -> list[Finding]:
        return [
            _finding("global-mutation", self._subject(name), name, changes, tasks, locate, default_location)
            for name, changes in self.changed().items()
        ]

    def _subject(self, name: str) -> str:
        if name not in self.slots:
            return name
        return f"{'closure variable' if isinstance(self.slots[name][0], _CellSlot) else 'global'} {name!r}"

    def restore(self) -> None:
        """Put globals (their contents too) and process-wide state back as they were."""
        for name, (ns, key) in self.slots.items():
            snap = self.snapshots[name]
            if snap.changes(ns[key]):
                ns[key] = snap.restore()
        for name, (read, write) in {**_PROCESS_STATE, **_THREAD_STATE}.items():
            if not _same(self.process[name], read()):
                write(self.process[name])
