"""Mutation oracles: did a run change its inputs, the module's state, or global state?

Each ``*Watch`` snapshots before a run, turns what changed after it into findings, and can put things back.
"""
from __future__ import annotations

import dataclasses
import functools
import random
import types
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

import numpy
import torch

from ..findings import Finding
from ..locate import RNG
from ..state import ModuleSnapshot, NamesSnapshot, is_user_module, snapshot, user_class

Locate = Callable[[str], tuple[str, str]]  # watched name -> (op, file:line), or ("", "")


def _no_location(name: str) -> tuple[str, str]:
    return "", ""


def _finding(kind: str, subject: str, name: str, changes: list[str], tasks: list[int], locate: Locate,
             default_location: str) -> Finding:
    op, location = locate(name)
    shown = "; ".join(changes[:3]) + (f"; and {len(changes) - 3} more" if len(changes) > 3 else "")
    return Finding(
        kind=kind,
        message=_message(subject, shown, op, location),
        location=location or default_location,
        tasks=list(tasks),
        detail={"name": name, "op": op, "changes": changes[:10]},
    )


def _message(subject: str, shown: str, op: str, location: str) -> str:
    """``input 'x' changed by aten::add_ at f.py:3: 2 of 4 elements changed, ...``; a lone change that says
    ``changed from 0 to 1`` is said once: ``module attribute 'calls' changed from 0 to 1 by prim::SetAttr at ...``."""
    by = f" by {op}" if op else ""
    at = f" at {location}" if location else ""
    if shown.startswith("changed from ") and "; " not in shown:
        return f"{subject} {shown}{by}{at}"
    return f"{subject} changed{by}{at}: {shown}"


def relocated(finding: Finding, op: str = "", location: str = "") -> Finding:
    """``finding`` (made with no op to say who changed its subject) said again with the ``op`` and ``location`` (the
    line) that did, where given."""
    subject, _, rest = finding.message.partition(" changed")
    shown = "changed" + rest if rest.startswith(" from ") else rest.partition(": ")[2]
    op = op or finding.detail.get("op", "")
    said = location or (finding.location if f" at {finding.location}" in finding.message else "")
    return dataclasses.replace(finding, message=_message(subject, shown, op, said),
                               location=location or finding.location, detail={**finding.detail, "op": op})


class InputWatch:
    """Arguments by parameter name: tensors (bits, version, metadata), lists, dicts and objects (contents)."""

    def __init__(self, inputs: Mapping[str, Any]):
        self.inputs = dict(inputs)
        self.snapshots = {name: snapshot(value) for name, value in inputs.items()}

    def changed(self) -> dict[str, list[str]]:
        return {name: changes for name, snap in self.snapshots.items() if (changes := snap.changes(self.inputs[name]))}

    def findings(self, tasks: list[int], locate: Locate = _no_location, default_location: str = "") -> list[Finding]:
        return [_finding("input-mutation", f"input {name!r}", name, changes, tasks, locate, default_location)
                for name, changes in self.changed().items()]


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

    def restore(self, unchanged: bool = False) -> None:
        """Put every changed attribute back, so the next run starts from the same state (and snapshot that state:
        a restored tensor may be a new object). ``unchanged``: the caller's ``changed`` found nothing just now, and
        nothing ran since: the snapshot holds (taking one cost more than a small run)."""
        if unchanged:
            return
        self.snapshot.restore()
        self.snapshot = ModuleSnapshot.take(self.module)


# --- globals ----------------------------------------------------------------------------------------------

MAX_FUNCTIONS = 500  # the most functions ``referenced_globals`` reads, so a large user library stays cheap to watch


def _user_function(value: Any) -> bool:
    return isinstance(value, types.FunctionType) and is_user_module(getattr(value, "__module__", None) or "")


def _user_module(value: Any) -> bool:
    return isinstance(value, types.ModuleType) and is_user_module(value.__name__)


def _own_methods(cls: type) -> Iterator[Callable]:
    for value in vars(cls).values():
        function = getattr(value, "__func__", getattr(value, "fget", value))
        if isinstance(function, types.FunctionType):
            yield function


def _owner(function: types.FunctionType) -> Any:
    """The class a method was defined in, found by its qualified name (None for functions, and local classes)."""
    *owners, _ = function.__qualname__.split(".")
    if not owners or "<locals>" in owners:
        return None
    owner: Any = function.__globals__.get(owners[0])
    for name in owners[1:]:
        owner = getattr(owner, name, None)
    return owner if isinstance(owner, type) else None


def _code_objects(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_objects(const)


def referenced_globals(functions: Iterable[Callable], depth: int = 3,
                       limit: int = MAX_FUNCTIONS) -> dict[str, tuple[Any, str]]:
    """The state the functions' code can reach: the globals and closure cells it refers to, following the user's
    functions, classes (their class variables too), objects' methods and modules ``depth`` steps deep (at most
    ``limit`` functions); and, per user module reached, its names (one added through ``globals()`` too).

    Maps a display name (``module.name`` for a global, ``function.name`` for a closure variable, ``module.Class``
    for a class, ``module.*`` for a module's names) to ``(namespace, key)``; a closure cell's namespace is a
    ``_CellSlot``, a class's a ``_ClassSlot``, a module's names' a ``_ModuleNames``.
    """
    found: dict[str, tuple[Any, str]] = {}
    seen: set[int] = set()
    todo = [(getattr(f, "__func__", f), depth) for f in functions]

    def follow(value: Any, level: int) -> None:
        if level <= 0:
            return
        if _user_function(value):
            todo.append((value, level - 1))
        elif user_class(value) or user_class(type(value)):
            for klass in (value if isinstance(value, type) else type(value)).__mro__:
                name = f"{klass.__module__}.{klass.__qualname__}"
                if user_class(klass) and name not in found:
                    found[name] = (_ClassSlot(klass), "")
                    todo.extend((method, level - 1) for method in _own_methods(klass))

    def look_up(namespace: dict[str, Any], names: set[str], level: int) -> None:
        module = namespace.get("__name__", "?")
        if is_user_module(module) and f"{module}.*" not in found:
            found[f"{module}.*"] = (_ModuleNames(namespace), "*")
        for name in names & namespace.keys():
            value = namespace[name]
            follow(value, level)
            if _user_module(value) and level > 0:  # ``helper.bump()``: the names the code uses, in that module
                look_up(vars(value), names, level - 1)
            elif not isinstance(value, (types.ModuleType, types.FunctionType, type)) or _user_function(value):
                found[f"{module}.{name}"] = (namespace, name)  # a user's function too: by its attributes

    while todo and len(seen) < limit:
        function, level = todo.pop()
        if not isinstance(function, types.FunctionType) or id(function) in seen:
            continue
        seen.add(id(function))
        look_up(function.__globals__, {name for code in _code_objects(function.__code__) for name in code.co_names},
                level)
        follow(_owner(function), level + 1)
        for name, cell in zip(function.__code__.co_freevars, function.__closure__ or ()):
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            follow(value, level)
            if not isinstance(value, (types.ModuleType, type)):
                found[f"{function.__qualname__}.{name}"] = (_CellSlot(cell), name)
    for slot, _ in found.values():  # a module's names that are watched one by one are left out of its names' watch
        if isinstance(slot, _ModuleNames):
            slot.deep = frozenset(key for namespace, key in found.values() if namespace is slot.namespace)
    return found


class _CellSlot:
    """A closure cell seen through the mapping interface the globals use."""

    def __init__(self, cell: types.CellType):
        self.cell = cell

    def __getitem__(self, key: str) -> Any:
        return self.cell.cell_contents

    def __setitem__(self, key: str, value: Any) -> None:
        self.cell.cell_contents = value


class _ClassSlot:
    """A user class seen through the mapping interface the globals use (its snapshot restores it in place)."""

    def __init__(self, cls: type):
        self.cls = cls

    def __getitem__(self, key: str) -> type:
        return self.cls

    def __setitem__(self, key: str, value: Any) -> None:
        pass


class _ModuleNames:
    """A user module's names, watched together (``NamesSnapshot``) but those in ``deep``, watched one by one."""

    def __init__(self, namespace: dict[str, Any]):
        self.namespace = namespace
        self.module = namespace.get("__name__", "?")
        self.deep: frozenset[str] = frozenset()

    def __getitem__(self, key: str) -> "_ModuleNames":
        return self  # nothing in it for the write locator


def _rng_state() -> tuple[int, torch.Tensor]:
    return torch.initial_seed(), torch.get_rng_state()


#: Process-wide state that a forked task must not change: name -> (read, write).
_PROCESS_STATE: dict[str, tuple[Callable[[], Any], Callable[[Any], Any]]] = {
    RNG: (_rng_state, lambda state: torch.set_rng_state(state[1])),  # the state holds the seed
    "Python default RNG": (random.getstate, random.setstate),
    "numpy default RNG": (numpy.random.get_state, numpy.random.set_state),
    "torch default dtype": (torch.get_default_dtype, torch.set_default_dtype),
    "torch default device": (torch.get_default_device, torch.set_default_device),
    "torch deterministic algorithms": (torch.are_deterministic_algorithms_enabled, torch.use_deterministic_algorithms),
    "torch float32 matmul precision": (torch.get_float32_matmul_precision, torch.set_float32_matmul_precision),
    "torch anomaly detection": (torch.is_anomaly_enabled, torch.set_anomaly_enabled),
}

#: ``torch.backends`` flags, by their path under ``torch.backends`` (``cuda.matmul.allow_tf32`` is the matmul precision).
_BACKEND_FLAGS = ("cudnn.enabled", "cudnn.benchmark", "cudnn.deterministic", "cudnn.allow_tf32", "mkldnn.enabled",
                  "mkldnn.deterministic", "opt_einsum.enabled", "opt_einsum.strategy",
                  "cuda.matmul.allow_fp16_reduced_precision_reduction",
                  "cuda.matmul.allow_bf16_reduced_precision_reduction")


def _backend_flag(path: str) -> tuple[Callable[[], Any], Callable[[Any], Any]]:
    *owners, name = path.split(".")
    holder = functools.reduce(getattr, owners, torch.backends)
    return (lambda: getattr(holder, name)), (lambda value: setattr(holder, name, value))


_PROCESS_STATE.update((f"torch.backends.{path}", _backend_flag(path)) for path in _BACKEND_FLAGS)
_PROCESS_STATE["torch.backends.mha fast path"] = (torch.backends.mha.get_fastpath_enabled,
                                                   torch.backends.mha.set_fastpath_enabled)

#: torch's per-thread state: only the thread that ran the code sees a change (``GlobalWatch.run``). The intra-op
#: thread count is the calling thread's, and what threads started later get.
_THREAD_STATE: dict[str, tuple[Callable[[], Any], Callable[[Any], Any]]] = {
    "torch grad mode": (torch.is_grad_enabled, torch.set_grad_enabled),
    "torch intra-op threads": (torch.get_num_threads, torch.set_num_threads),
}


#: Process-wide state only Python code can change: compiled code without Python calls reaches neither.
_PYTHON_STATE = frozenset({"Python default RNG", "numpy default RNG"})


def process_state(python: bool = True) -> dict[str, Any]:
    """The process-wide state a forked task must not change (``python=False``: the state compiled code reaches)."""
    return {name: read() for name, (read, _) in _PROCESS_STATE.items() if python or name not in _PYTHON_STATE}


def _same(then: Any, now: Any) -> bool:
    if isinstance(then, torch.Tensor):
        return torch.equal(then, now)
    if isinstance(then, numpy.ndarray):
        return numpy.array_equal(then, now)
    if isinstance(then, tuple) and any(isinstance(item, (torch.Tensor, numpy.ndarray)) for item in then):
        return len(then) == len(now) and all(map(_same, then, now))  # RNG states
    return then == now


def _state_change(name: str, then: Any, now: Any) -> str:
    if name == RNG and (then[0] != now[0] or torch.equal(now[1], torch.Generator().manual_seed(now[0]).get_state())):
        return f"was reseeded (torch.manual_seed({now[0]}))"
    return "was advanced (random numbers were drawn)" if name.endswith("RNG") else f"changed from {then} to {now}"


def _thread_changes(before: Mapping[str, Any]) -> dict[str, list[str]]:
    """This thread's torch state that differs from ``before``, as changes."""
    return {name: [_state_change(name, before[name], now)] for name, (read, _) in _THREAD_STATE.items()
            if not _same(before[name], now := read())}


class ConstantsWatch:
    """Tensor constants of a compiled graph that its code may write (a frozen module's folded buffers): every call
    and copy of the graph shares them, the user's object too, so ``restore`` puts back those a run wrote (told by
    their version counters) and the object ends the check as it began."""

    def __init__(self, tensors: Sequence[torch.Tensor]):
        self.saved = [[tensor, tensor._version, tensor.clone()] for tensor in tensors]

    def restore(self) -> None:
        for entry in self.saved:
            tensor, version, value = entry
            if tensor._version != version:
                with torch.no_grad():
                    tensor.copy_(value)
                entry[1] = tensor._version


class GlobalWatch:
    """The state the code can reach (``referenced_globals``): Python globals, closure cells, user classes and
    modules' names; and process-wide state: torch's (RNG, settings, ``torch.backends`` flags) and the Python and
    numpy default RNGs."""

    def __init__(self, slots: Mapping[str, tuple[Any, str]], python: bool = True,
                 constants: Optional["ConstantsWatch"] = None):
        """``python=False`` for runs that execute no Python code (compiled code without Python calls): they cannot
        reach Python's globals or Python's and numpy's RNGs, so only torch's state is watched (reading numpy's RNG
        alone cost more than a small scripted run). ``constants``: the compiled graph's written constants, which
        ``restore`` puts back too (one watch may serve several global watches)."""
        self.constants = constants
        self.python = python
        self.slots = dict(slots) if python else {}
        self.snapshots = {name: NamesSnapshot.take(ns.namespace, ns.deep) if isinstance(ns, _ModuleNames)
                          else snapshot(ns[key]) for name, (ns, key) in self.slots.items()}
        self.process = process_state(python)
        self.process_now: dict[str, Any] = {}  # the process state ``changed`` read last, for ``restore``
        self.thread_changes: dict[str, list[str]] = {}
        self._thread_before: Optional[dict[str, Any]] = None  # this thread's state when the run going on began

    def run(self, call: Callable[[], Any]) -> Any:
        """``call()`` on this thread, watching this thread's torch state too (grad mode, intra-op threads), and
        putting it back on this thread afterwards (a thread count set here would also reach threads started
        later). A watch may serve run after run, each followed by ``restore``."""
        before = {name: read() for name, (read, _) in _THREAD_STATE.items()}
        self.process_now = {}
        self.thread_changes = {}
        self._thread_before = before
        try:
            return call()
        finally:
            self._thread_before = None
            self.thread_changes = _thread_changes(before)
            for name in self.thread_changes:
                _THREAD_STATE[name][1](before[name])

    def changed(self) -> dict[str, list[str]]:
        changed = {}
        for name, (ns, key) in self.slots.items():
            if isinstance(ns, _ModuleNames):
                changed.update((f"{ns.module}.{global_name}", changes)
                               for global_name, changes in self.snapshots[name].changed().items())
                continue
            changes = self.snapshots[name].changes(ns[key])
            if changes:
                changed[name] = changes
        self.process_now = process_state(self.python)
        for name, now in self.process_now.items():
            if not _same(self.process[name], now):
                changed[name] = [_state_change(name, self.process[name], now)]
        changed.update(self.thread_changes)
        if self._thread_before is not None:  # asked during the run (``locate.changing_lines``): this thread's now
            changed.update(_thread_changes(self._thread_before))
        return changed

    def findings(self, tasks: list[int], locate: Locate = _no_location, default_location: str = "") -> list[Finding]:
        return [
            _finding("global-mutation", self._subject(name), name, changes, tasks,
                     _no_location if changes[0].startswith("was reseeded") else locate, default_location)
            for name, changes in self.changed().items()
        ]

    def _subject(self, name: str) -> str:
        if name in _PROCESS_STATE or name in _THREAD_STATE:
            return name
        namespace = self.slots.get(name, (None,))[0]
        kind = {_CellSlot: "closure variable", _ClassSlot: "class"}.get(type(namespace), "global")
        return f"{kind} {name!r}"

    def restore(self) -> None:
        """Put globals (their contents too), classes, modules' names and process-wide state back as they were
        (the process-wide state as ``changed`` read it, when it was called after the run)."""
        if self.constants is not None:
            self.constants.restore()
        for name, (ns, key) in self.slots.items():
            snap = self.snapshots[name]
            if isinstance(ns, _ModuleNames):
                snap.restore()
            elif snap.changes(ns[key]):
                ns[key] = snap.restore()
        now = self.process_now or process_state(self.python)  # read by ``changed`` after the run: nothing ran since
        for name, (_, write) in _PROCESS_STATE.items():
            if name in self.process and not _same(self.process[name], now[name]):
                write(self.process[name])
        self.process_now = {}
