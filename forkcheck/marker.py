"""``fork_safe``: mark a function, closure or ``nn.Module`` as a target. It marks, it never wraps."""
from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

from .settings import TARGET_SETTINGS, SettingsError, validate

ATTRIBUTE = "__forkcheck__"


class MarkError(TypeError):
    """``fork_safe`` was used wrongly; the message says how to use it."""


@dataclass(frozen=True)
class Mark:
    """What ``fork_safe`` attaches: explicit strategies, per-target settings, and where it was applied."""

    strategies: Mapping[str, Any] = field(default_factory=dict)
    settings: Mapping[str, Any] = field(default_factory=dict)
    module: str = ""  # the module whose top level applied the mark: collection happens there only


def fork_safe(obj: Any = None, /, **keywords: Any) -> Any:
    """Mark ``obj`` to be checked by forkcheck and return it unchanged.

    Keywords are settings (``tasks``, ``examples``, ``schedules``, ``atol``, ``rtol``, ``timeout``) or Hypothesis
    strategies for the target's parameters. Use bare (``@fork_safe``), with keywords (``@fork_safe(x=...)``), or in
    call form on an instance (``fork_safe(model, x=...)``).
    """
    module = _caller_module()
    mark = _make_mark(keywords, module)
    if obj is None:
        return lambda target: _attach(target, mark)
    return _attach(obj, mark)


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


def _attach(obj: Any, mark: Mark) -> Any:
    import torch

    if isinstance(obj, type) and not issubclass(obj, torch.nn.Module):
        raise MarkError(f"fork_safe marks functions and nn.Module classes or instances, not the class {obj.__name__}")
    if not callable(obj):
        raise MarkError(f"fork_safe marks callables (functions, nn.Modules), not {type(obj).__name__} {obj!r}")
    if mark.strategies:
        _check_parameters(obj, mark)
    if isinstance(obj, torch.nn.Module):
        object.__setattr__(obj, ATTRIBUTE, mark)  # a plain attribute: never a parameter or submodule
    else:
        setattr(obj, ATTRIBUTE, mark)
    return obj


def _check_parameters(obj: Any, mark: Mark) -> None:
    """Strategies for parameters the target does not have are a mistake worth reporting at import time."""
    from . import compiled

    if compiled.is_compiled(obj):
        names = compiled.parameter_names(obj)
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
            f"fork_safe got strategies for {', '.join(map(repr, unknown))}, which "
            f"{getattr(obj, '__qualname__', type(obj).__qualname__)} does not take; its parameters are {names}"
        )


def _caller_module() -> str:
    frame = sys._getframe(2)
    return frame.f_globals.get("__name__", "")
