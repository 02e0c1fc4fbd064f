"""Mutation oracles: did a run change its inputs, the module's state, or global state?

Each ``*Watch`` snapshots before a run and turns what changed after it into findings (and can put things back).
"""
from __future__ import annotations

import types
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional

import torch

from ..findings import Finding
from ..state import ContainerSnapshot, TensorSnapshot, module_state, set_module_attribute, snapshot

Locate = Callable[[str], tuple[str, str]]  # watched name -> (op, file:line), or ("", "")


def _no_location(name: str) -> tuple[str, str]:
    return "", ""


def _finding(kind: str, what: str, name: str, changes: list[str], tasks: list[int], locate: Locate,
             default_location: str) -> Finding:
    op, location = locate(name)
    by = f" by {op}" if op else ""
    at = f" at {location}" if location else ""
    shown = "; ".join(changes[:3]) + (f"; and {len(changes) - 3} more" if len(changes) > 3 else "")
    return Finding(
        kind=kind,
        message=f"{what} {name!r} changed{by}{at}: {shown}",
        location=location or default_location,
        tasks=list(tasks),
        detail={"name": name, "op": op, "changes": changes[:10]},
    )


class InputWatch:
    """Tensor arguments (bits, version, metadata) and list/dict arguments (contents), by parameter name."""

    def __init__(self, inputs: Mapping[str, Any]):
        self.inputs = dict(inputs)
        self.snapshots = {name: snapshot(value) for name, value in inputs.items()}

    def findings(self, tasks: list[int], locate: Locate = _no_location, default_location: str = "") -> list[Finding]:
        found = []
        for name, snap in self.snapshots.items():
            changes = snap.changes(self.inputs[name])
            if changes:
                found.append(_finding("input-mutation", "input", name, changes, tasks, locate, default_location))
        return found


class ModuleWatch:
    """Parameters, buffers, plain attributes and submodules of one module (eager or scripted)."""

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.snapshots = {path: snapshot(value) for path, value in module_state(module).items()}

    def changed(self) -> dict[str, list[str]]:
        now = module_state(self.module)
        changed = {}
        for path, snap in self.snapshots.items():
            changes = snap.changes(now[path]) if path in now else ["was deleted"]
            if changes:
                changed[path] = changes
        for path in now.keys() - self.snapshots.keys():
            changed[path] = ["was added"]
        return changed

    def findings(self, tasks: list[int], locate: Locate = _no_location, default_location: str = "") -> list[Finding]:
        return [
            _finding("attribute-mutation", "module attribute", path, changes, tasks, locate, default_location)
            for path, changes in self.changed().items()
        ]

    def restore(self) -> None:
        """Put every changed attribute back to its snapshot, so the next run starts from the same state."""
        for path in self.changed():
            snap = self.snapshots.get(path)
            if snap is None:
                continue
            set_module_attribute(self.module, path, _fresh(snap))
        self.snapshots = {path: snapshot(value) for path, value in module_state(self.module).items()}


def _fresh(snap: Any) -> Any:
    if isinstance(snap, TensorSnapshot):
        value = snap.data.clone()
        if isinstance(snap.obj, torch.nn.Parameter):
            value = torch.nn.Parameter(value, requires_grad=snap.obj.requires_grad)
        return value
    if isinstance(snap, ContainerSnapshot):
        return snap.obj  # contents are put back by _restore_contents
    return snap.value if snap.value is not None else snap.obj


# --- globals ----------------------------------------------------------------------------------------------

_SKIP_MODULE_PREFIXES = ("torch", "hypothesis", "forkcheck", "numpy", "builtins", "typing", "_pytest", "pytest")


def _user_function(value: Any) -> bool:
    module = getattr(value, "__module__", None) or ""
    return isinstance(value, types.FunctionType) and not module.startswith(_SKIP_MODULE_PREFIXES)


def _code_objects(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_objects(const)


def referenced_globals(functions: Iterable[Callable], depth: int = 3) -> dict[str, tuple[dict, str]]:
    """Globals and closure cells the functions' code refers to, following user functions ``depth`` calls deep.

    Maps a display name (``module.name`` or ``function.<closure> name``) to ``(namespace, key)``, where a
    closure cell's namespace is the cell wrapped as a one-item dict view (see ``_CellSlot``).
    """
    found: dict[str, tuple[Any, str]] = {}
    seen: set[int] = set()
    todo = [(getattr(f, "__func__", f), depth) for f in functions]
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
                    if _user_function(value) and level > 0:
                        todo.append((value, level - 1))
                    if not isinstance(value, (types.ModuleType, types.FunctionType, type)):
                        found[f"{module}.{name}"] = (namespace, name)
        for name, cell in zip(function.__code__.co_freevars, function.__closure__ or ()):
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            if _user_function(value) and level > 0:
                todo.append((value, level - 1))
            if not isinstance(value, (types.ModuleType, type)):
                found[f"{function.__qualname__}.<closure> {name}"] = (_CellSlot(cell), "value")
    return found


class _CellSlot:
    """A closure cell seen through the mapping interface the globals use."""

    def __init__(self, cell: types.CellType):
        self.cell = cell

    def __getitem__(self, key: str) -> Any:
        return self.cell.cell_contents

    def __setitem__(self, key: str, value: Any) -> None:
        self.cell.cell_contents = value


def torch_state() -> dict[str, Any]:
    """torch's own global state that a forked task must not change."""
    return {
        "torch default RNG": torch.get_rng_state(),
        "torch grad mode": torch.is_grad_enabled(),
        "torch default dtype": torch.get_default_dtype(),
        "torch intra-op threads": torch.get_num_threads(),
        "torch deterministic algorithms": torch.are_deterministic_algorithms_enabled(),
    }


def _restore_torch_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch default RNG"])
    torch.set_grad_enabled(state["torch grad mode"])
    torch.set_default_dtype(state["torch default dtype"])
    torch.set_num_threads(state["torch intra-op threads"])
    torch.use_deterministic_algorithms(state["torch deterministic algorithms"])


class GlobalWatch:
    """Python globals and closure cells the code refers to, and torch's global state."""

    def __init__(self, slots: Mapping[str, tuple[Any, str]]):
        self.slots = dict(slots)
        self.values = {name: ns[key] for name, (ns, key) in self.slots.items()}
        self.snapshots = {name: _global_snapshot(value) for name, value in self.values.items()}
        self.torch = torch_state()

    def changed(self) -> dict[str, list[str]]:
        changed = {}
        for name, (ns, key) in self.slots.items():
            changes = self.snapshots[name].changes(_global_view(ns[key]))
            if changes:
                changed[name] = changes
        for name, now in torch_state().items():
            then = self.torch[name]
            if isinstance(now, torch.Tensor):
                if not torch.equal(now, then):
                    changed[name] = ["was advanced (random numbers were drawn)"]
            elif now != then:
                changed[name] = [f"changed from {then} to {now}"]
        return changed

    def findings(self, tasks: list[int], locate: Locate = _no_location, default_location: str = "") -> list[Finding]:
        return [
            _finding("global-mutation", "global", name, changes, tasks, locate, default_location)
            for name, changes in self.changed().items()
        ]

    def restore(self) -> None:
        """Put globals, their list/dict/tensor contents and torch's state back as they were."""
        for name, (ns, key) in self.slots.items():
            ns[key] = self.values[name]
            _restore_contents(self.snapshots[name])
        _restore_torch_state(self.torch)


def _global_view(value: Any) -> Any:
    return module_state(value) if isinstance(value, torch.nn.Module) else value


def _global_snapshot(value: Any) -> Any:
    if isinstance(value, torch.nn.Module):  # a module's state as one dict, compared path by path
        state = module_state(value)
        snap = snapshot(state, depth=1)
        snap.obj = None  # a fresh dict each time: compare contents only
        return _ContentsOnly(snap)
    return snapshot(value)


class _ContentsOnly:
    def __init__(self, snap: ContainerSnapshot):
        self.snap = snap

    def changes(self, now: Any) -> list[str]:
        self.snap.obj = now
        return self.snap.changes(now)


def _restore_contents(snap: Any) -> None:
    """Put list/dict contents and tensor data back in place, recursively."""
    if isinstance(snap, _ContentsOnly):
        return
    if isinstance(snap, TensorSnapshot):
        if snap.obj.shape == snap.data.shape and snap.obj.dtype == snap.data.dtype:
            with torch.no_grad():
                snap.obj.copy_(snap.data)
        return
    if isinstance(snap, ContainerSnapshot) and snap.items is not None:
        obj = snap.obj
        if isinstance(obj, list):
            obj[:] = [item.obj for item in snap.items]
        elif isinstance(obj, dict):
            obj.clear()
            obj.update({key: item.obj for key, item in snap.items.items()})
        for item in snap.items.values() if isinstance(snap.items, dict) else snap.items:
            _restore_contents(item)
