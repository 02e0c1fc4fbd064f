"""Which op, at which line of the user's code, first wrote a watched tensor or drew from torch's default RNG
(during the eager serial run)."""
from __future__ import annotations

import os
import sys
import threading
import traceback
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence

import torch

from ._dispatch import DispatchMode
from .oracles.static import _UNDECLARED_WRITES  # ops that write arguments their schema does not mark (batch norm)
from .state import is_user_module, tensors_in

_TORCH_DIR = os.path.dirname(torch.__file__)
_OWN_DIR = os.path.dirname(os.path.abspath(__file__))


def _is_user_file(filename: str) -> bool:
    return not filename.startswith((_TORCH_DIR, _OWN_DIR, "<"))


def in_user_code(filename: str) -> bool:
    """Whether a source file is the user's: neither torch's, nor forkcheck's, nor generated (``<...>``)."""
    return _is_user_file(filename)


def user_location(skip: int = 1) -> str:
    """``file:line`` of the innermost frame that is neither torch's nor forkcheck's."""
    frame: Optional[Any] = sys._getframe(skip)
    while frame is not None:
        if _is_user_file(frame.f_code.co_filename):
            return f"{frame.f_code.co_filename}:{frame.f_lineno}"
        frame = frame.f_back
    return ""


def error_location(err: BaseException) -> str:
    """``file:line`` of the innermost frame of ``err``'s traceback in the user's code."""
    frames = [f for f in traceback.extract_tb(err.__traceback__) if _is_user_file(f.filename)]
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else ""


_STDLIB = os.path.dirname(os.__file__) + os.sep
_RUNNERS = tuple(os.sep + name + os.sep for name in ("_pytest", "pluggy", "execnet", "xdist"))


def is_users_frame(filename: str) -> bool:
    """A frame of the user's code: not torch's, forkcheck's, the standard library's or the test runner's."""
    return (_is_user_file(filename) and not (filename.startswith(_STDLIB) and "-packages" not in filename)
            and not any(runner in filename for runner in _RUNNERS))


def frame_line(frame: Optional[Any]) -> str:
    """``file:line`` of the innermost of ``frame`` and its callers that is the user's (``is_users_frame``)."""
    while frame is not None:
        if is_users_frame(frame.f_code.co_filename):
            return f"{frame.f_code.co_filename}:{frame.f_lineno}"
        frame = frame.f_back
    return ""


def users_line(stacks: Iterable[Sequence[tuple[str, int]]]) -> str:
    """Of threads' stacks (each innermost frame first), the innermost line of the user's code, from a thread that is
    running that line if one is, else from one waiting below it; "" where no thread is in the user's code."""
    running, waiting = [], []
    for stack in stacks:
        for depth, (name, line) in enumerate(stack):
            if is_users_frame(name):
                (waiting if depth else running).append(f"{name}:{line}")
                break
    return (running + waiting + [""])[0]


def stuck_line(run_thread: Optional[int]) -> str:
    """``file:line`` where a run that did not finish is (``users_line``), of the threads it may be on: its own
    (``run_thread``), forkcheck's task threads, torch's pool threads (which ``threading`` knows only as dummies, if
    the user's code asked for them); "" where none runs the user's Python (a loop in compiled code)."""
    known = {thread.ident: thread.name for thread in threading.enumerate()
             if not isinstance(thread, threading._DummyThread)}
    stacks = []
    for ident, frame in sys._current_frames().items():
        if ident == threading.get_ident() or (ident in known and ident != run_thread
                                              and not known[ident].startswith("forkcheck-task")):
            continue
        stack = []
        while frame is not None:
            stack.append((frame.f_code.co_filename, frame.f_lineno))
            frame = frame.f_back
        if not any(runner in name for name, _ in stack for runner in _RUNNERS):  # pytest-xdist's (execnet's own)
            stacks.append(stack)
    return users_line(stacks)


def _storage_key(t: torch.Tensor) -> Optional[int]:
    try:
        return t.untyped_storage().data_ptr() or None
    except RuntimeError:  # tensors without storage (meta, sparse, functional wrappers)
        return None


#: The name the global-mutation oracle gives torch's default random number generator.
RNG = "torch default RNG"


class WriteLocator(DispatchMode):
    """Records, per watched name, the first op that wrote a tensor sharing that name's storage, and under ``RNG``
    the first op that drew random numbers from the default generator."""

    def __init__(self, watched: Mapping[str, Any]):
        super().__init__()
        self.owner: dict[int, str] = {}
        for name, value in watched.items():
            for tensor in tensors_in(value):
                key = _storage_key(tensor)
                if key is not None:
                    self.owner.setdefault(key, name)
        self.first_write: dict[str, tuple[str, str]] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.owner:
            written = _written(func, args, kwargs) if func._schema.is_mutable else self._undeclared(func, args, kwargs)
            for value in written:
                for tensor in tensors_in(value):
                    self._record(self.owner.get(_storage_key(tensor)), func)
        if torch.Tag.nondeterministic_seeded in func.tags and kwargs.get("generator") is None:
            self._record(RNG, func)
        return func(*args, **kwargs)

    def _undeclared(self, func: Any, args: tuple, kwargs: dict) -> Iterator[Any]:
        """Arguments the op writes although its schema does not say so (``native_batch_norm``'s running stats)."""
        flag, names = _UNDECLARED_WRITES.get(func._schema.name, ("", ()))
        if not names:
            return
        values = {a.name: (args[i] if i < len(args) else kwargs.get(a.name))
                  for i, a in enumerate(func._schema.arguments)}
        if values.get(flag) is not False:
            yield from (values.get(name) for name in names)

    def _record(self, name: Optional[str], func: Any) -> None:
        if name is not None and name not in self.first_write:
            self.first_write[name] = (func.name(), user_location(3))

    def locate(self, name: str) -> tuple[str, str]:
        return self.first_write.get(name, ("", ""))


def _written(func, args, kwargs) -> Iterator[Any]:
    """The arguments the op's schema says it writes."""
    for index, argument in enumerate(func._schema.arguments):
        if argument.alias_info is not None and argument.alias_info.is_write:
            if argument.kwarg_only or index >= len(args):
                if argument.name in kwargs:
                    yield kwargs[argument.name]
            else:
                yield args[index]


def changing_lines(call: Any, changed: Any, names: set[str], limit: int = 5000) -> tuple[Any, dict[str, str]]:
    """``call()`` under a line tracer of the user's code, asking ``changed()`` (the names changed so far) after each
    line: for each of ``names``, the ``file:line`` of the user's line after which it first changed. A change made in
    a library the line called (``random.random()``, ``dict.update``) counts for that line. Used once per defect, for
    changes no op says who made (Python values: globals, lists, attributes). Stops asking after ``limit`` lines."""
    found: dict[str, str] = {}
    last = [""]  # the user's line that ran last
    asked = [0]

    def ask() -> None:
        if last[0] and asked[0] < limit and len(found) < len(names):
            asked[0] += 1
            for name in names & changed():
                found.setdefault(name, last[0])

    def line(frame: Any, event: str, arg: Any) -> Any:
        if event in ("line", "return"):
            ask()
            last[0] = f"{frame.f_code.co_filename}:{frame.f_lineno}"
        return line

    users: dict[str, bool] = {}  # file -> whether its code is the user's (as the global-state watch tells)

    def calls(frame: Any, event: str, arg: Any) -> Any:
        file = frame.f_code.co_filename
        if file not in users:
            users[file] = _is_user_file(file) and is_user_module(frame.f_globals.get("__name__") or "")
        return line if users[file] else None

    before = sys.gettrace()  # a coverage tool or debugger: traced again afterwards
    sys.settrace(calls)
    try:
        result = call()
    finally:
        sys.settrace(before)
    ask()
    return result, found
