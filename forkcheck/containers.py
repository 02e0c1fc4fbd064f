"""Reads and writes of lists and dicts by eager tasks, for the access log.

Python's list and dict methods never reach torch's dispatcher, so forkcheck's own scheduler watches them with a
profile function on each task's thread (``sys.setprofile``): a call of a list or dict method from the user's code
(``parts.append(y)``, ``cache.update(...)``, ``d.setdefault(k, v)``) is a read or a write of that object by the task
that makes it. Subscripts, ``len`` and iteration are bytecode, not calls, and are not seen: a race through
``d[k] = v`` alone is missed (on the real runtime the ``forkcheck::touch`` ops see those too).

Watched objects are kept alive until the log closes, so no other object takes the same address during a run.
"""
from __future__ import annotations

import sys
import threading
from typing import Any, Callable, Mapping, Optional

import torch

from .locate import is_users_frame

WRITES = {
    list: frozenset({"append", "extend", "insert", "pop", "remove", "clear", "sort", "reverse", "__setitem__",
                     "__delitem__", "__iadd__", "__imul__"}),
    dict: frozenset({"update", "setdefault", "pop", "popitem", "clear", "__setitem__", "__delitem__", "__ior__"}),
}
READS = {
    list: frozenset({"index", "count", "copy", "__getitem__", "__len__", "__contains__", "__iter__"}),
    dict: frozenset({"get", "keys", "values", "items", "copy", "__getitem__", "__len__", "__contains__", "__iter__"}),
}
_KIND = {list: "list", dict: "dict"}
def container_names(args: Optional[Mapping[str, Any]] = None, module: Any = None) -> dict[int, str]:
    """Address of each list or dict argument or plain module attribute -> its name in reports."""
    names = {id(value): name for name, value in (args or {}).items() if isinstance(value, (list, dict))}
    for owner, prefix in ([(m, f"self.{p}." if p else "self.") for p, m in module.named_modules()]
                          if isinstance(module, torch.nn.Module) else []):
        for attribute, value in vars(owner).items():
            if isinstance(value, (list, dict)) and not attribute.startswith("_"):
                names.setdefault(id(value), prefix + attribute)
    return names


class ContainerWatch:
    """A profile function that tells ``log.container`` about list and dict method calls in the user's code.

    ``task_of()`` says which task runs on the calling thread (``None``: none, nothing is recorded).
    """

    def __init__(self, log: Any, task_of: Callable[[], Optional[int]], names: Mapping[int, str]):
        self.log = log
        self.task_of = task_of
        self.names = dict(names)
        self.kept: dict[int, Any] = {}  # address -> the object: alive until the log closes
        self._saved: dict[int, Any] = {}

    def install(self) -> None:
        """Watch the calling thread (its previous profile function is restored by :meth:`uninstall`)."""
        self._saved[threading.get_ident()] = sys.getprofile()
        sys.setprofile(self._profile)

    def uninstall(self) -> None:
        sys.setprofile(self._saved.pop(threading.get_ident(), None))

    def close(self) -> None:
        self.kept.clear()

    def _profile(self, frame: Any, event: str, arg: Any) -> None:
        if event != "c_call":
            return
        owner = getattr(arg, "__self__", None)
        kind = type(owner)
        if kind is not list and kind is not dict:  # every C call comes here: the common case returns at once
            if not isinstance(owner, (list, dict)):
                return
            kind = list if isinstance(owner, list) else dict
        name = arg.__name__
        write = name in WRITES[kind]
        if not (write or name in READS[kind]) or not is_users_frame(frame.f_code.co_filename):
            return
        task = self.task_of()
        if task is None:
            return
        address = id(owner)
        location = f"{frame.f_code.co_filename}:{frame.f_lineno}"
        if address not in self.kept:
            self.kept[address] = owner
            label = self.names.get(address) or next(
                (f"{var} (first used at {location})" for var, value in frame.f_locals.items() if value is owner),
                f"first used at {location}")
            self.log.container(task, "name", _KIND[kind], address, "", name=label)
        self.log.container(task, "write" if write else "read", _KIND[kind], address, f"{_KIND[kind]}.{name}",
                           location)
