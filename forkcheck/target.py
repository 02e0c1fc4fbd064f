"""What is checked: a marked function, closure, ``nn.Module`` or compiled TorchScript object, its callable, its name
and its inputs."""
from __future__ import annotations

import ast
import copy
import inspect
import textwrap
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

from . import compiled
from .marker import Mark, get_mark


class TargetError(TypeError):
    """The target cannot be checked as written (e.g. a Module class that needs constructor arguments)."""


@dataclass
class Target:
    """One thing to check: ``obj`` as the user marked it, and how to call it."""

    obj: Any
    name: str  # ``module:qualname``, the stable name in reports and replay tokens
    mark: Mark = field(default_factory=Mark)

    @classmethod
    def from_object(cls, obj: Any, name: Optional[str] = None) -> "Target":
        mark = get_mark(obj) or Mark()
        if name is None:
            instance = compiled.is_compiled(obj) and not isinstance(obj, type)
            qualname = (compiled.display_name(obj) if instance
                        else getattr(obj, "__qualname__", None) or type(obj).__qualname__)
            # a compiled object's class is torch's: its code's own module names it
            module = mark.module or (compiled.defining_module(obj) if instance else "") or \
                getattr(obj, "__module__", "") or ""
            name = f"{module}:{qualname}"
        return cls(obj=obj, name=name, mark=mark)

    @property
    def is_module(self) -> bool:
        import torch

        return isinstance(self.obj, torch.nn.Module) or (
            isinstance(self.obj, type) and issubclass(self.obj, torch.nn.Module)
        )

    @property
    def is_compiled(self) -> bool:
        """A ScriptFunction or ScriptModule (scripted, frozen, loaded, traced, legacy): run as compiled."""
        return compiled.is_compiled(self.obj)

    def instance(self) -> Any:
        """A fresh object to run: a new Module for a class, a deep copy of a Module instance, else the function."""
        if isinstance(self.obj, type):
            try:
                inspect.signature(self.obj).bind()
            except TypeError:
                raise TargetError(
                    f"{self.name}: fork_safe on a Module class needs a class constructible with no arguments; "
                    f"for one that takes arguments, mark an instance: checked = fork_safe({self.obj.__name__}(...))"
                ) from None
            return self.obj()
        if self.is_compiled and self.is_module and not compiled.has_compiled_forward(self.obj):
            raise TargetError(
                f"{self.name}: the compiled module's forward is torch.jit.ignore'd, so it is Python code that "
                "TorchScript's runtime calls back into, and copies of the module lose it; mark the module before "
                "torch.jit.script (its class or an instance) to check its forward as Python")
        if self.is_module:
            return copy.deepcopy(self.obj)
        return self.obj

    def signature_callable(self) -> Callable:
        """The callable whose parameters are the inputs: ``forward`` for Modules."""
        return self.obj.forward if self.is_module else self.obj

    @property
    def strategies(self) -> Mapping[str, Any]:
        return self.mark.strategies

    def source_location(self, instance: Any = None) -> str:
        """``file:line`` of the definition, for findings that have no better place (a compiled target: of the first
        op its graph locates, from ``instance`` for a legacy ScriptModule class)."""
        if self.is_compiled and not isinstance(self.obj, type):
            return compiled.location(self.obj)
        if self.is_compiled:
            return compiled.location(instance) if instance is not None else _source_line(self.obj)
        function = self.signature_callable()
        return _source_line(getattr(function, "__func__", function))

    def return_location(self) -> str:
        """``file:line`` of the last ``return`` of the target's own body (where a differing output comes from), else
        of its definition."""
        if self.is_compiled:
            return self.source_location()
        function = self.signature_callable()
        function = getattr(function, "__func__", function)
        try:
            lines, first = inspect.getsourcelines(function)
            tree = ast.parse(textwrap.dedent("".join(lines)))
        except (TypeError, OSError, SyntaxError):
            return self.source_location()
        body = tree.body[0] if tree.body and isinstance(tree.body[0], (ast.FunctionDef, ast.AsyncFunctionDef)) else None
        returns = [node.lineno for node in _own_nodes(body) if isinstance(node, ast.Return)] if body else []
        return f"{inspect.getsourcefile(function)}:{first + max(returns) - 1}" if returns else self.source_location()


def _source_line(function: Any) -> str:
    """``file:line`` of a function's or class's ``def``/``class`` line, or ``""``."""
    try:
        lines, first = inspect.getsourcelines(function)
    except (TypeError, OSError):
        return ""
    offset = next((i for i, line in enumerate(lines) if line.lstrip().startswith(("def ", "async def ", "class "))), 0)
    return f"{inspect.getsourcefile(function)}:{first + offset}"


def _own_nodes(function: ast.AST) -> list[ast.AST]:
    """The nodes of a function's body, not those of functions or classes defined inside it."""
    found, todo = [], list(ast.iter_child_nodes(function))
    while todo:
        node = todo.pop()
        found.append(node)
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            todo.extend(ast.iter_child_nodes(node))
    return found
