"""``fork_safe``: mark a function, closure, ``nn.Module`` or compiled TorchScript object as a target. It marks, it
never wraps."""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Optional

from .settings import SESSION_OPTIONS, TARGET_SETTINGS, SettingsError, validate

ATTRIBUTE = "__forkcheck__"


class MarkError(TypeError):
    """``fork_safe`` was used wrongly; the message says how to use it."""


@dataclass(frozen=True)
class Mark:
    """What ``fork_safe`` attaches: explicit strategies, per-target settings, and where it was applied."""

    strategies: Mapping[str, Any] = field(default_factory=dict)
    settings: Mapping[str, Any] = field(default_factory=dict)
    module: str = ""  # the module whose top level applied the mark: collection happens there only
    error: str = ""  # a marking error deferred while the module was imported for collection (``errors_deferred``)


def fork_safe(obj: Any = None, /, **keywords: Any) -> Any:
    """Mark ``obj`` to be checked by forkcheck and return it unchanged.

    Keywords are settings (``tasks``, ``examples``, ``schedules``, ``atol``, ``rtol``, ``timeout``) or Hypothesis
    strategies for the target's parameters. Use bare (``@fork_safe``), with keywords (``@fork_safe(x=...)``), or in
    call form on an instance (``fork_safe(model, x=...)``). Used wrongly, it raises ``MarkError``, except in a file
    being collected (see ``errors_deferred``).
    """
    caller = sys._getframe(1).f_globals
    module, deferred = caller.get("__name__", ""), _deferred(caller)
    try:
        mark = _make_mark(keywords, module)
    except MarkError as err:
        if not deferred:
            raise
        mark = Mark(module=module, error=str(err))
    if obj is None:
        return lambda target: _attach(target, mark, deferred)
    return _attach(obj, mark, deferred)


_DEFERRED_FILES: set[str] = set()


@contextlib.contextmanager
def errors_deferred(path: Any) -> Iterator[None]:
    """While the file ``path`` is imported to collect its targets, a marking error in it does not raise (that would
    end the import, the other targets of the file with it, and pytest's whole collection): the object gets a mark
    carrying the error, which its check reports as a setup error naming the object and the fix. Elsewhere (a
    library imported on the way, a user's own call) ``fork_safe`` raises as always."""
    key = os.path.realpath(path)
    added = key not in _DEFERRED_FILES
    _DEFERRED_FILES.add(key)
    try:
        yield
    finally:
        if added:
            _DEFERRED_FILES.discard(key)


def _deferred(caller_globals: Mapping[str, Any]) -> bool:
    file = caller_globals.get("__file__")
    return bool(_DEFERRED_FILES and file) and os.path.realpath(file) in _DEFERRED_FILES


def get_mark(obj: Any) -> Optional[Mark]:
    """The mark on ``obj`` itself (not one inherited from a marked base class), or None."""
    try:
        mark = obj.__dict__.get(ATTRIBUTE) if hasattr(obj, "__dict__") else None
    except Exception:  # objects with exotic __dict__ / __getattr__
        return None
    return mark if isinstance(mark, Mark) else None


def _make_mark(keywords: Mapping[str, Any], module: str) -> Mark:
    from hypothesis.strategies import SearchStrategy

    settings, strategies = {}, {}
    for name, value in keywords.items():
        if name in TARGET_SETTINGS:
            settings[name] = value
        elif isinstance(value, SearchStrategy):
            strategies[name] = value
        elif name in SESSION_OPTIONS:
            option = SESSION_OPTIONS[name]
            raise MarkError(f"fork_safe: {name} is set per run, not per target: give {option.flag} on the command "
                            f"line (or the ini key {option.ini})")
        else:
            raise MarkError(
                f"fork_safe got an unknown keyword {name}={value!r}: a keyword is either a setting "
                f"({', '.join(TARGET_SETTINGS)}) or a Hypothesis strategy for a parameter, "
                f"e.g. fork_safe({name}=st.integers(0, 10))"
            )
    try:
        settings = validate(settings)
    except SettingsError as err:
        raise MarkError(f"fork_safe: {err}") from None
    return Mark(strategies=strategies, settings=settings, module=module)


def _attach(obj: Any, mark: Mark, deferred: bool = False) -> Any:
    import torch

    try:
        if isinstance(obj, type) and not issubclass(obj, torch.nn.Module):
            raise MarkError(f"fork_safe marks functions and nn.Module classes or instances, not the class "
                            f"{obj.__name__}")
        if not callable(obj):
            raise MarkError(f"fork_safe marks callables (functions, nn.Modules), not {type(obj).__name__} {obj!r}")
        if mark.strategies and not mark.error:
            _check_parameters(obj, mark)
    except MarkError as err:
        if not deferred or not callable(obj):  # a value that is no target cannot carry the error to its item
            raise
        mark = dataclasses.replace(mark, error=str(err))
    try:
        if isinstance(obj, torch.nn.Module):
            object.__setattr__(obj, ATTRIBUTE, mark)  # a plain attribute: never a parameter or submodule
        else:
            setattr(obj, ATTRIBUTE, mark)
    except (AttributeError, TypeError):
        raise MarkError(f"fork_safe cannot mark {obj!r}: it takes no attributes (a builtin or a bound method); "
                        "mark a function that calls it instead") from None
    return obj


def _check_parameters(obj: Any, mark: Mark) -> None:
    """Strategies for parameters the target does not have are a mistake worth reporting at import time."""
    from . import compiled

    name = getattr(obj, "__qualname__", type(obj).__qualname__)
    if compiled.is_compiled(obj):
        names = compiled.parameter_names(obj)
        name = name if isinstance(obj, type) else compiled.display_name(obj)
    else:
        function: Callable = obj.forward if hasattr(obj, "forward") else obj
        try:
            parameters = inspect.signature(function).parameters
        except (TypeError, ValueError):
            return
        names = [name for name in parameters if name != "self"]
    unknown = [name for name in mark.strategies if name not in names]
    if unknown:
        raise MarkError(
            f"fork_safe got strategies for {', '.join(map(repr, unknown))}, which {name} does not take; its "
            f"parameters are {names}: give strategies for those only"
        )
