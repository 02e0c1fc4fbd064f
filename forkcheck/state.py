"""Snapshots of values the user's code might change: tensors, containers, user objects and modules.

A snapshot keeps the original object, so rebinding (another object where it was) is a change too, except for values
that are fresh copies on every read (a scripted module's lists, dicts and objects): those compare by contents only.
``restore()`` puts back what a snapshot saw, in place where it can, and returns the object that belongs in its slot.
"""
from __future__ import annotations

import os
import site
import sys
import sysconfig
import types
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import torch
from ._words import plural

_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_MAX_ITEMS = 10_000  # containers bigger than this are compared by identity and length only
_PLAIN = (int, float, complex, str, bytes, bool, type(None))
_LIBRARIES = frozenset({"torch", "numpy", "hypothesis", "forkcheck", "strategies", "pytest", "_pytest", "pluggy"})


def is_user_module(name: str) -> bool:
    """Whether ``name`` is the user's code: neither the standard library, torch, numpy or the test machinery, nor
    a package installed in site-packages."""
    top = name.partition(".")[0]
    return bool(top) and top not in sys.stdlib_module_names and top not in _LIBRARIES and not _installed(top)


def _site_dirs() -> tuple[str, ...]:
    dirs = {sysconfig.get_paths()[key] for key in ("purelib", "platlib")}
    try:
        dirs.update(site.getsitepackages() + [site.getusersitepackages()])
    except AttributeError:  # a virtualenv's old site module
        pass
    return tuple(os.path.realpath(path) + os.sep for path in dirs)


_SITE_DIRS = _site_dirs()
_INSTALLED: dict[str, bool] = {}  # top-level module name -> whether its files are in site-packages


def _installed(top: str) -> bool:
    known = _INSTALLED.get(top)
    if known is None:
        module = sys.modules.get(top)
        if module is None:  # not imported (yet): nothing of it can be reached
            return False
        places = [getattr(module, "__file__", None)] + list(getattr(module, "__path__", None) or [])
        known = _INSTALLED[top] = any(place and os.path.realpath(place).startswith(_SITE_DIRS) for place in places)
    return known


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (NaN equals the same NaN, -0.0 differs from 0.0)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    a, b = a.detach(), b.detach()
    if a.is_complex():
        a, b = (torch.view_as_real(t.resolve_conj().resolve_neg()) for t in (a, b))
    as_int = _INT_OF_SIZE.get(a.element_size())
    if as_int is not None and a.dtype != as_int:
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


def _storage(t: torch.Tensor) -> Optional[int]:
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # tensors without storage (sparse, meta, wrappers)
        return None


def _meta(t: torch.Tensor) -> tuple:
    return (tuple(t.shape), t.stride(), t.storage_offset(), t.dtype, t.device, t.requires_grad)


def _describe_meta(meta: tuple) -> str:
    shape, stride, offset, dtype, _, requires_grad = meta
    return f"shape {list(shape)} stride {list(stride)} offset {offset} {dtype} requires_grad={requires_grad}"


@dataclass
class TensorSnapshot:
    """A tensor's identity, version counter, metadata, storage and bits."""

    obj: torch.Tensor
    version: Optional[int]
    meta: tuple
    storage: Optional[int]
    data: torch.Tensor

    @classmethod
    def take(cls, t: torch.Tensor) -> "TensorSnapshot":
        with torch.no_grad():
            data = t.detach().clone()
        return cls(t, _version(t), _meta(t), _storage(t), data)

    def changes(self, now: Any) -> list[str]:
        if now is not self.obj:
            same = isinstance(now, torch.Tensor) and _meta(now) == self.meta and bits_equal(now, self.data)
            return ["was rebound to an equal new tensor" if same else "was rebound to another object"]
        found = []
        if _meta(now) != self.meta:
            found.append(f"metadata changed from {_describe_meta(self.meta)} to {_describe_meta(_meta(now))}")
        elif _storage(now) != self.storage:
            found.append("was given other storage (through .data or set_)")
        if (now.shape, now.dtype) == (self.data.shape, self.data.dtype) and not bits_equal(now, self.data):
            found.append(describe_tensor_diff(self.data, now))
        version = _version(now)
        if not found and None not in (version, self.version) and version != self.version:
            writes = version - self.version
            found.append(f"was written in place ({plural(writes, 'write')}); on this input the values happen to end up "
                         "the same")
        return found

    def restore(self) -> torch.Tensor:
        """Put the values (and shape) back through ``.data``, so restoring adds no write to the version counter."""
        t = self.obj
        with torch.inference_mode(t.is_inference()):  # inference tensors change only in inference mode
            if _meta(t)[:5] != self.meta[:5] or _storage(t) != self.storage:
                t.data = self.data.clone()
            elif not bits_equal(t, self.data):
                t.data.copy_(self.data)
        if t.requires_grad != self.meta[5] and t.is_leaf:
            t.requires_grad_(self.meta[5])
        return t


def describe_tensor_diff(before: torch.Tensor, after: torch.Tensor) -> str:
    """One line: how many elements changed, the largest change, the first changed index."""
    if before.shape != after.shape or before.dtype != after.dtype:
        return f"changed from {before.dtype}{list(before.shape)} to {after.dtype}{list(after.shape)}"
    a, b = before.detach(), after.detach()
    differs = ~((a == b) | ((a != a) & (b != b)))
    count = int(differs.sum())
    if count == 0:
        return "changed bits only (e.g. 0.0 and -0.0, or another NaN)"
    if not a.dim():  # a scalar: its two values say it all
        return f"changed from {_scalar(a)} to {_scalar(b)}"
    first = [int(i) for i in differs.nonzero()[0]]
    text = f"{count} of {a.numel()} elements changed, first at index {first}"
    if a.dtype != torch.bool:
        wide = torch.complex128 if a.is_complex() else torch.float64
        with torch.no_grad():
            largest = (b[differs].to(wide) - a[differs].to(wide)).abs().max()
        text += f", largest absolute change {float(largest):.6g}"
    return text


def _scalar(t: torch.Tensor) -> str:
    value = t.item()
    return f"{value:.6g}" if isinstance(value, float) else str(value)


@dataclass
class ArraySnapshot:
    """A numpy array by identity, shape, dtype and bytes (numpy writes bump no version counter)."""

    obj: Any
    copy: Any

    def changes(self, now: Any) -> list[str]:
        if now is not self.obj:
            return ["was rebound to another object"]
        if (now.shape, now.dtype) != (self.copy.shape, self.copy.dtype):
            return [f"changed from {self.copy.dtype}{list(self.copy.shape)} to {now.dtype}{list(now.shape)}"]
        if now.tobytes() == self.copy.tobytes():
            return []
        try:
            return [describe_tensor_diff(torch.from_numpy(self.copy), torch.from_numpy(now.copy()))]
        except TypeError:  # dtypes torch has no equivalent for (strings, objects)
            return ["its values changed"]

    def restore(self) -> Any:
        same_layout = (self.obj.shape, self.obj.dtype) == (self.copy.shape, self.copy.dtype)
        if same_layout and self.obj.flags.writeable and self.obj.tobytes() != self.copy.tobytes():
            self.obj[...] = self.copy
        return self.obj


@dataclass
class GeneratorSnapshot:
    """A ``torch.Generator`` by identity and state."""

    obj: torch.Generator
    state: torch.Tensor

    def changes(self, now: Any) -> list[str]:
        if now is not self.obj:
            return ["was rebound to another object"]
        return [] if torch.equal(now.get_state(), self.state) else ["was advanced (random numbers were drawn)"]

    def restore(self) -> torch.Generator:
        self.obj.set_state(self.state)
        return self.obj


@dataclass
class ValueSnapshot:
    """A plain value (compared by value) or an opaque object (compared by identity)."""

    obj: Any
    plain: bool

    def changes(self, now: Any) -> list[str]:
        if self.plain or isinstance(now, _PLAIN):
            same = type(now) is type(self.obj) and (now == self.obj or (now != now and self.obj != self.obj))
            return [] if same else [f"changed from {_short(self.obj)} to {_short(now)}"]
        return [] if now is self.obj else ["was rebound to another object"]

    def restore(self) -> Any:
        return self.obj


@dataclass
class SetSnapshot:
    """A set by identity and members."""

    obj: set
    items: frozenset

    def changes(self, now: Any) -> list[str]:
        if now is not self.obj:
            return ["was rebound to another object"]
        return [] if now == self.items else [f"changed from {_short(set(self.items))} to {_short(now)}"]

    def restore(self) -> set:
        if self.obj != self.items:
            self.obj.clear()
            self.obj.update(self.items)
        return self.obj


@dataclass
class ContainerSnapshot:
    """A list, tuple or dict item by item (``items`` is None past ``_MAX_ITEMS``: identity and length only)."""

    obj: Any
    items: Any  # list of snapshots, dict key -> snapshot, or None
    length: int
    copied: bool = False  # the value is a fresh copy on every read: compare contents, not identity

    def changes(self, now: Any) -> list[str]:
        if now is not self.obj and not (self.copied and type(now) is type(self.obj)):
            return ["was rebound to another object"]
        if self.items is None:
            return [] if len(now) == self.length else [f"length changed from {self.length} to {len(now)}"]
        if isinstance(self.items, dict):
            return _dict_changes(self.items, now, lambda key: f"key {key!r}")  # "[(1,)] was added" read as a list
        if len(now) != self.length:
            return [f"length changed from {self.length} to {len(now)}"]
        pairs = enumerate(zip(self.items, now))
        return [f"[{i}] {change}" for i, (snap, value) in pairs for change in snap.changes(value)]

    def restore(self) -> Any:
        if self.items is None:
            return self.obj
        if isinstance(self.items, dict):
            values = {key: snap.restore() for key, snap in self.items.items()}
            if list(self.obj) != list(values) or any(self.obj[k] is not v for k, v in values.items()):
                self.obj.clear()
                self.obj.update(values)
        else:
            values = [snap.restore() for snap in self.items]
            if isinstance(self.obj, list) and (len(self.obj) != len(values) or any(
                    a is not b for a, b in zip(self.obj, values))):
                self.obj[:] = values
        return self.obj


@dataclass
class ObjectSnapshot:
    """An instance of a user class: its identity and its attributes (``vars``)."""

    obj: Any
    attributes: ContainerSnapshot
    copied: bool = False

    def changes(self, now: Any) -> list[str]:
        if now is not self.obj and not (self.copied and type(now) is type(self.obj)):
            return ["was rebound to another object"]
        if self.attributes.items is None:
            return self.attributes.changes(vars(now))
        return _dict_changes(self.attributes.items, vars(now), lambda name: f".{name}")

    def restore(self) -> Any:
        self.attributes.restore()
        return self.obj


@dataclass
class FunctionSnapshot:
    """A user's function: its attributes (``helper.calls += 1``) and its mutable default values (``def f(x,
    seen=[])``: one list that every call shares)."""

    obj: Any
    attributes: ObjectSnapshot
    defaults: dict[str, Any]  # parameter -> snapshot of its default value

    @classmethod
    def take(cls, function: types.FunctionType, depth: int, copied: bool = False) -> "FunctionSnapshot":
        return cls(function, ObjectSnapshot(function, snapshot(vars(function), depth, copied), copied),
                   {name: snapshot(value, depth - 1) for name, value in _mutable_defaults(function).items()})

    def changes(self, now: Any) -> list[str]:
        found = self.attributes.changes(now)
        if now is self.obj:
            defaults = _mutable_defaults(now)
            found += [f"the default value of {name} (one object every call shares): {change}"
                      for name, snap in self.defaults.items()
                      for change in snap.changes(defaults.get(name))]
        return found

    def restore(self) -> Any:
        for snap in self.defaults.values():
            snap.restore()
        return self.attributes.restore()


def _mutable_defaults(function: types.FunctionType) -> dict[str, Any]:
    """The default values of ``function``'s parameters that are not plain values, by parameter name."""
    code = function.__code__
    positional = code.co_varnames[:code.co_argcount]  # positional-only ones included
    values = dict(zip(positional[len(positional) - len(function.__defaults__ or ()):], function.__defaults__ or ()))
    values.update(function.__kwdefaults__ or {})
    return {name: value for name, value in values.items() if not isinstance(value, _PLAIN)}


def _class_state(cls: type) -> dict[str, Any]:
    return {name: value for name, value in vars(cls).items() if not _dunder(name)}


@dataclass
class ClassSnapshot:
    """A user class by identity and its own attributes but dunders: class variables, methods (by identity)."""

    obj: type
    attributes: dict[str, Any]  # name -> snapshot

    @classmethod
    def take(cls, klass: type, depth: int) -> "ClassSnapshot":
        return cls(klass, {name: snapshot(value, depth) for name, value in _class_state(klass).items()})

    def changes(self, now: Any) -> list[str]:
        if now is not self.obj:
            return ["was rebound to another object"]
        return _dict_changes(self.attributes, _class_state(now), lambda name: f".{name}")

    def restore(self) -> type:
        now = _class_state(self.obj)
        for name in now.keys() - self.attributes.keys():
            delattr(self.obj, name)
        for name, snap in self.attributes.items():
            value = snap.restore()
            if now.get(name, _MISSING) is not value:
                setattr(self.obj, name, value)
        return self.obj


@dataclass
class NamesSnapshot:
    """A module's globals by name and identity, but dunders and ``deep`` (the names snapshotted one by one): the
    names added, removed or rebound, also by code that names none of them (``globals()[...] = ...``)."""

    namespace: dict[str, Any]
    values: dict[str, Any]
    deep: frozenset[str]

    @classmethod
    def take(cls, namespace: dict[str, Any], deep: frozenset[str] = frozenset()) -> "NamesSnapshot":
        return cls(namespace, {k: v for k, v in namespace.items() if k not in deep and not _dunder(k)}, deep)

    def changed(self) -> dict[str, list[str]]:
        """Changes by global name."""
        now, found = self.namespace, {}
        for name, value in self.values.items():
            if name not in now:
                found[name] = ["was removed"]
            elif now[name] is not value:
                changes = ValueSnapshot(value, plain=isinstance(value, _PLAIN)).changes(now[name])
                if changes:
                    found[name] = changes
        found.update((name, ["was added"]) for name in now.keys() - self.values.keys()
                     if name not in self.deep and not _dunder(name))
        return found

    def restore(self) -> None:
        for name in self.changed():
            if name in self.values:
                self.namespace[name] = self.values[name]
            else:
                del self.namespace[name]


def _dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


def _dict_changes(items: dict, now: dict, where: Callable[[Any], str]) -> list[str]:
    """Changes of a dict (or an object's attributes) against item snapshots: added, removed and changed items."""
    found = [f"{where(key)} was removed" for key in items if key not in now]
    found += [f"{where(key)} was added" for key in now if key not in items]
    found += [f"{where(key)} {change}"
              for key, snap in items.items() if key in now for change in snap.changes(now[key])]
    if not found and list(now) != list(items):
        found.append(f"keys were reordered from {_short(list(items))} to {_short(list(now))}")
    return found


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _user_object(value: Any) -> bool:
    """An object whose attributes are its state: an instance of a user class, or a plain namespace."""
    if isinstance(value, types.SimpleNamespace) or _is_type(value, "argparse", "Namespace"):
        return True
    return (isinstance(getattr(value, "__dict__", None), dict) and is_user_module(type(value).__module__)
            and not isinstance(value, (type, types.ModuleType, types.FunctionType, types.MethodType)))


def user_class(value: Any) -> bool:
    return isinstance(value, type) and is_user_module(value.__module__)


def snapshot(value: Any, depth: int = 4, copied: bool = False) -> Any:
    """A snapshot of ``value``: tensors (and numpy arrays) by bits and version, containers and user objects item by
    item (``depth`` levels deep), modules attribute by attribute, the user's functions by their attributes,
    generators by state, plain values by value, anything else by identity.

    ``copied``: the value is a fresh copy on every read (see the module docstring).
    """
    if isinstance(value, torch.Tensor):
        return TensorSnapshot.take(value)
    if isinstance(value, _PLAIN):
        return ValueSnapshot(value, plain=True)
    if depth <= 0:
        return ValueSnapshot(value, plain=False)
    if isinstance(value, torch.nn.Module):
        return ModuleSnapshot.take(value, depth - 1)
    if isinstance(value, set) and len(value) <= _MAX_ITEMS:
        return SetSnapshot(value, frozenset(value))
    if isinstance(value, (list, tuple, dict)):
        if len(value) > _MAX_ITEMS:
            return ContainerSnapshot(value, None, len(value), copied)
        if isinstance(value, dict):
            items: Any = {k: snapshot(v, depth - 1, copied) for k, v in value.items()}
        else:
            items = [snapshot(v, depth - 1, copied) for v in value]
        return ContainerSnapshot(value, items, len(value), copied)
    if _is_array(value):
        return ArraySnapshot(value, value.copy())
    if isinstance(value, torch.Generator):
        return GeneratorSnapshot(value, value.get_state())
    if user_class(value):
        return ClassSnapshot.take(value, depth - 1)
    if isinstance(value, types.FunctionType) and is_user_module(value.__module__ or ""):
        return FunctionSnapshot.take(value, depth, copied)
    if _user_object(value):
        return ObjectSnapshot(value, snapshot(vars(value), depth, copied), copied)
    return ValueSnapshot(value, plain=False)


def _is_array(value: Any) -> bool:
    return _is_type(value, "numpy", "ndarray")


def _is_type(value: Any, module: str, name: str) -> bool:
    """Whether ``value``'s type is ``module.name``, without importing ``module``."""
    return type(value).__module__ == module and type(value).__name__ == name


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


# --- modules ------------------------------------------------------------------------------------------------

_MODULE_INTERNALS = frozenset(torch.nn.Module().__dict__) - {"training"} | {"__forkcheck__"}


def module_state(module: torch.nn.Module) -> dict[str, Any]:
    """Every parameter, buffer, plain attribute and submodule of ``module`` (eager or scripted), by dotted path.

    A scripted module gives its attributes as converted copies (new lists, dicts and objects on every call). A
    scripted submodule of an eager module counts its compiled attributes only: the methods torch caches in its
    Python ``__dict__`` (a deep copy drops them, the first call puts them back) are not the module's state.
    """
    if isinstance(module, torch.jit.ScriptModule):
        return _scripted_attributes(module, "named_attributes_r")
    state: dict[str, Any] = {}
    for prefix, sub in module.named_modules(remove_duplicate=False):
        dot = f"{prefix}." if prefix else ""
        if isinstance(sub, torch.jit.ScriptModule):  # its own attributes; its submodules come as named_modules
            state.update((dot + name, value) for name, value in _scripted_attributes(sub, "named_attributes").items())
            state.update((dot + name, value) for name, value in sub._modules.items())
            continue
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


def _scripted_attributes(module: torch.jit.ScriptModule, iterator: str) -> dict[str, Any]:
    """A scripted module's compiled attributes (``named_attributes_r``: its submodules' too, by dotted path)."""
    attributes = torch._C._jit_debug_module_iterators(module._c)[iterator]
    return {
        path: value
        for path, value in attributes
        if not isinstance(value, (torch.jit.ScriptModule, torch._C.ScriptModule))
        and not path.endswith("_is_full_backward_hook")
    }


def _copied(module: torch.nn.Module, path: str) -> bool:
    """Whether reading ``path`` gives a fresh copy each time: an attribute of a scripted module."""
    owner, _ = _owner(module, path)
    return isinstance(owner, torch.jit.ScriptModule)


@dataclass
class ModuleSnapshot:
    """A module's state path by path (submodules by identity, their contents under their own paths)."""

    obj: torch.nn.Module
    paths: dict[str, Any]

    @classmethod
    def take(cls, module: torch.nn.Module, depth: int = 3) -> "ModuleSnapshot":
        return cls(module, {
            path: ValueSnapshot(value, plain=False) if isinstance(value, torch.nn.Module)
            else snapshot(value, depth, _copied(module, path))
            for path, value in module_state(module).items()
        })

    def changed(self) -> dict[str, list[str]]:
        """Changes by path, leaving out paths inside a submodule that was itself replaced."""
        changed = self._all_changes()
        replaced = [path + "." for path, snap in self.paths.items()
                    if path in changed and isinstance(snap, ValueSnapshot) and isinstance(snap.obj, torch.nn.Module)]
        return {path: changes for path, changes in changed.items() if not path.startswith(tuple(replaced))}

    def _all_changes(self) -> dict[str, list[str]]:
        now = module_state(self.obj)
        changed = {}
        for path, snap in self.paths.items():
            changes = snap.changes(now[path]) if path in now else ["was deleted"]
            if changes:
                changed[path] = changes
        for path in now.keys() - self.paths.keys():
            changed[path] = ["was added"]
        return changed

    def changes(self, now: Any) -> list[str]:
        if now is not self.obj:
            return ["was rebound to another object"]
        return [f".{path} {change}" for path, changes in self.changed().items() for change in changes]

    def restore(self) -> torch.nn.Module:
        for path in self._all_changes():
            snap = self.paths.get(path)
            if snap is None:
                delete_module_attribute(self.obj, path)
            else:
                set_module_attribute(self.obj, path, snap.restore())
        return self.obj


def _owner(module: torch.nn.Module, path: str) -> tuple[Any, str]:
    *owners, name = path.split(".")
    for owner in owners:
        module = getattr(module, owner)
    return module, name


def set_module_attribute(module: torch.nn.Module, path: str, value: Any) -> None:
    """Set a dotted attribute path on an eager or scripted module (restoring state between runs)."""
    owner, name = _owner(module, path)
    if isinstance(owner, torch.jit.ScriptModule):
        owner._c.setattr(name, value)
    elif getattr(owner, name, _MISSING) is not value:
        setattr(owner, name, value)


def delete_module_attribute(module: torch.nn.Module, path: str) -> None:
    """Remove an attribute the code added to an eager module."""
    owner, name = _owner(module, path)
    if not isinstance(owner, torch.jit.ScriptModule) and hasattr(owner, name):
        delattr(owner, name)


_MISSING = object()
