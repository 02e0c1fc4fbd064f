"""Snapshots of values the user's code might change: tensors (bits, version, metadata), containers, module state.

A snapshot holds the original object too, so rebinding (a new object where the old one was) is a change as well.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch

_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_MAX_ITEMS = 10_000  # containers bigger than this are compared by identity and length only


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (NaN equals the same NaN, -0.0 differs from 0.0)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    a, b = a.detach(), b.detach()
    as_int = _INT_OF_SIZE.get(a.element_size())
    if as_int is not None and not a.is_complex() and a.dtype != as_int:
        try:
            return torch.equal(a.view(as_int), b.view(as_int))
        except RuntimeError:  # exotic layouts cannot be viewed as another dtype
            pass
    return torch.equal(a, b) or bool(((a == b) | ((a != a) & (b != b))).all())


def _version(t: torch.Tensor) -> Optional[int]:
    try:
        return t._version
    except RuntimeError:  # inference tensors have no version counter
        return None


@dataclass
class TensorSnapshot:
    obj: torch.Tensor
    version: Optional[int]
    meta: tuple
    data: torch.Tensor

    @classmethod
    def take(cls, t: torch.Tensor) -> "TensorSnapshot":
        with torch.no_grad():
            data = t.detach().clone()
        return cls(t, _version(t), _meta(t), data)

    def changes(self, now: Any) -> list[str]:
        if now is not self.obj:
            return ["was rebound to another object"] if not isinstance(now, torch.Tensor) or not bits_equal(
                now, self.data) or _meta(now) != self.meta else ["was rebound to an equal new tensor"]
        found = []
        if _meta(now) != self.meta:
            found.append(f"metadata changed from {_describe_meta(self.meta)} to {_describe_meta(_meta(now))}")
        if not bits_equal(now, self.data):
            found.append(describe_tensor_diff(self.data, now))
        version = _version(now)
        if not found and version is not None and self.version is not None and version != self.version:
            found.append(f"was written in place ({version - self.version} write(s)) though its values ended up the same")
        return found


def _meta(t: torch.Tensor) -> tuple:
    return (tuple(t.shape), t.stride(), t.storage_offset(), t.dtype, t.device, t.requires_grad)


def _describe_meta(meta: tuple) -> str:
    shape, stride, offset, dtype, _, requires_grad = meta
    return f"shape {list(shape)} stride {list(stride)} offset {offset} {dtype} requires_grad={requires_grad}"


def describe_tensor_diff(before: torch.Tensor, after: torch.Tensor) -> str:
    """One line: how many elements changed, the largest change, the first changed index."""
    if before.shape != after.shape or before.dtype != after.dtype:
        return f"changed from {before.dtype}{list(before.shape)} to {after.dtype}{list(after.shape)}"
    a, b = before.detach(), after.detach()
    differs = ~((a == b) | ((a != a) & (b != b)))
    count = int(differs.sum())
    if count == 0:
        return "changed bits (e.g. 0.0 and -0.0)"
    first = [int(i) for i in differs.nonzero()[0]] if a.dim() else []
    text = f"{count} of {a.numel()} elements changed, first at index {first}"
    if a.is_floating_point() or a.is_complex() or a.dtype not in (torch.bool,):
        with torch.no_grad():
            largest = (b[differs].double() - a[differs].double()).abs().max()
        text += f", largest absolute change {float(largest):.6g}"
    return text


@dataclass
class ContainerSnapshot:
    obj: Any
    items: Any  # list of snapshots, or dict key -> snapshot, or None past _MAX_ITEMS
    length: int

    def changes(self, now: Any) -> list[str]:
        if now is not self.obj:
            return ["was rebound to another object"]
        if len(now) != self.length:
            return [f"length changed from {self.length} to {len(now)}"]
        if self.items is None:
            return []
        if isinstance(self.items, dict):
            if list(now.keys()) != list(self.items.keys()):
                return ["keys changed"]
            pairs = ((f"[{k!r}]", snap, now[k]) for k, snap in self.items.items())
        else:
            pairs = ((f"[{i}]", snap, value) for i, (snap, value) in enumerate(zip(self.items, now)))
        return [f"{where} {change}" for where, snap, value in pairs for change in snap.changes(value)]


@dataclass
class ValueSnapshot:
    obj: Any
    value: Any  # a copy for plain values, else None (identity only)

    def changes(self, now: Any) -> list[str]:
        if self.value is not None or isinstance(now, (int, float, str, bytes, bool)):
            same = type(now) is type(self.obj) and (now == self.value or now != now and self.value != self.value)
            return [] if same else [f"changed from {self.value!r} to {now!r}"]
        return [] if now is self.obj else ["was rebound to another object"]


def snapshot(value: Any, depth: int = 4) -> Any:
    """A snapshot of ``value``: tensors by bits and version, lists/dicts/tuples item by item, plain values by value."""
    if isinstance(value, torch.Tensor):
        return TensorSnapshot.take(value)
    if isinstance(value, (int, float, str, bytes, bool, type(None))):
        return ValueSnapshot(value, value)
    if isinstance(value, (list, dict, tuple, set)) and depth > 0:
        if isinstance(value, set):
            return ValueSnapshot(value, frozenset(value)) if len(value) <= _MAX_ITEMS else ValueSnapshot(value, None)
        if len(value) > _MAX_ITEMS:
            return ContainerSnapshot(value, None, len(value))
        if isinstance(value, dict):
            return ContainerSnapshot(value, {k: snapshot(v, depth - 1) for k, v in value.items()}, len(value))
        return ContainerSnapshot(value, [snapshot(v, depth - 1) for v in value], len(value))
    return ValueSnapshot(value, None)


def tensors_in(value: Any, depth: int = 4) -> Iterator[torch.Tensor]:
    """Every tensor reachable through lists, tuples and dicts."""
    if isinstance(value, torch.Tensor):
        yield value
    elif depth > 0 and isinstance(value, (list, tuple)):
        for item in value:
            yield from tensors_in(item, depth - 1)
    elif depth > 0 and isinstance(value, dict):
        for item in value.values():
            yield from tensors_in(item, depth - 1)


# --- module state -------------------------------------------------------------------------------------------

_MODULE_INTERNALS = frozenset(torch.nn.Module().__dict__) - {"training"} | {"__forkcheck__"}


def module_state(module: torch.nn.Module) -> dict[str, Any]:
    """Every parameter, buffer, plain attribute and submodule of ``module`` (eager or scripted), by dotted path."""
    if isinstance(module, torch.jit.ScriptModule):
        attributes = torch._C._jit_debug_module_iterators(module._c)["named_attributes_r"]
        return {
            path: value
            for path, value in attributes
            if not isinstance(value, (torch.jit.ScriptModule, torch._C.ScriptModule)) and not path.endswith("_is_full_backward_hook")
        }
    state: dict[str, Any] = {}
    for prefix, sub in module.named_modules(remove_duplicate=False):
        dot = f"{prefix}." if prefix else ""
        for name, value in sub._parameters.items():
            state[dot + name] = value
        for name, value in sub._buffers.items():
            state[dot + name] = value
        for name, value in sub._modules.items():
            state[dot + name] = value
        for name, value in sub.__dict__.items():
            if name not in _MODULE_INTERNALS:
                state[dot + name] = value
    return state


def set_module_attribute(module: torch.nn.Module, path: str, value: Any) -> None:
    """Set a dotted attribute path on an eager or scripted module (restoring state between runs)."""
    *owners, name = path.split(".")
    for owner in owners:
        module = getattr(module, owner)
    if isinstance(module, torch.jit.ScriptModule):
        module._c.setattr(name, value)
    else:
        setattr(module, name, value)
