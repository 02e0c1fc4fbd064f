"""Strategies inferred from type annotations, one per parameter of the code under check."""
from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable, Hashable, Mapping

import torch
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torch import nn

from .tensors import tensors

__all__ = ["InferenceError", "for_callable", "from_jit_type", "from_type"]

_MAX_SIZE = 4
_SUPPORTED = "Tensor, int, float, bool, str, List[T], Tuple[...], Dict[str, T], Optional[T]"
_DICT_KEYS = (str, int, float, bool)
_SCALARS = {
    int: lambda: st.integers(-8, 8),
    float: lambda: st.floats(-10.0, 10.0),
    bool: st.booleans,
    str: lambda: st.text(max_size=8),
    type(None): st.none,
    None: st.none,
}


#: The shape of every tensor inferred for one example (drawn once per example, within ``tensors()``'s default
#: bounds): code that combines its tensor inputs, like ``x + y``, gets inputs that fit. Explicit strategies choose
#: their own shapes.
SHARED_SHAPE = st.shared(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5),
                         key="forkcheck.inferred-tensor-shape")


class InferenceError(Exception):
    """No strategy could be found for an input; ``parameter`` names it when one parameter is to blame."""

    def __init__(self, message: str, parameter: str | None = None) -> None:
        super().__init__(message)
        self.parameter = parameter


def from_type(annotation: object) -> st.SearchStrategy:
    """A small strategy for a TorchScript-style annotation; anything unsupported raises ``InferenceError``."""
    if annotation is torch.Tensor:
        return tensors(shape=SHARED_SHAPE)
    if isinstance(annotation, Hashable) and annotation in _SCALARS:
        return _SCALARS[annotation]()
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return from_type(args[0])
    if origin in (typing.Union, types.UnionType):
        return st.one_of([from_type(arg) for arg in args])
    if origin is list and args:
        return st.lists(from_type(args[0]), max_size=_MAX_SIZE)
    if origin is tuple and annotation is not typing.Tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return st.lists(from_type(args[0]), max_size=_MAX_SIZE).map(tuple)
        return st.tuples(*(from_type(arg) for arg in args))
    if origin is dict and args:
        if args[0] not in _DICT_KEYS:
            raise InferenceError(f"dictionary keys of type {_name(args[0])} are not supported; use str or int keys")
        return st.dictionaries(from_type(args[0]), from_type(args[1]), max_size=_MAX_SIZE)
    if origin in (list, tuple, dict) or annotation in (list, tuple, dict):
        raise InferenceError(f"{_name(annotation)} needs its element types, e.g. List[int] or Dict[str, Tensor]")
    raise InferenceError(f"annotation {_name(annotation)} is not supported (supported: {_SUPPORTED})")


def for_callable(
    fn: Callable | nn.Module | type[nn.Module],
    explicit: Mapping[str, st.SearchStrategy] | None = None,
    *,
    what: str | None = None,
) -> dict[str, st.SearchStrategy]:
    """One strategy per parameter of ``fn`` (for a Module, of its ``forward``): explicit ones, else inferred.

    Precedence: the explicit strategy, then the annotation, then the default value (``st.just(default)``).
    A compiled ``ScriptFunction`` or ``ScriptModule`` takes its parameters and types from its TorchScript schema.
    """
    if isinstance(fn, (torch.jit.ScriptFunction, torch.jit.ScriptModule)):
        return _for_schema(fn, dict(explicit or {}), what)
    function, parameters = _parameters(fn)
    what = what or f"{getattr(function, '__qualname__', None) or type(fn).__name__}()"
    explicit = dict(explicit or {})
    _check_explicit(explicit, list(parameters), what)
    hints, fixed = _hints(function), _partial_keywords(fn)
    strategies = {}
    for name, parameter in parameters.items():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            stars = "*" if parameter.kind is parameter.VAR_POSITIONAL else "**"
            raise InferenceError(
                f"parameter '{stars}{name}' of {what} is not supported: forkcheck draws a fixed set of named "
                f"inputs. Replace it with named parameters", name
            )
        if name in explicit:
            strategies[name] = _explicit(explicit, name, what)
        elif name in fixed:
            strategies[name] = st.just(parameter.default)
        else:
            strategies[name] = _infer(name, parameter, hints, function, what)
    return strategies


def _for_schema(scripted, explicit: dict[str, st.SearchStrategy], what: str | None) -> dict[str, st.SearchStrategy]:
    """Strategies from a compiled target's schema (``self`` left out); a traced graph's tensors keep their traced
    dtype and shape."""
    is_module = isinstance(scripted, torch.jit.ScriptModule)
    function = scripted.forward if is_module else scripted
    arguments = list(function.schema.arguments)[1 if is_module else 0:]
    graph_types = [value.type() for value in function.graph.inputs()][1 if is_module else 0:]
    what = what or f"{function.schema.name}()"
    _check_explicit(explicit, [argument.name for argument in arguments], what)
    strategies = {}
    for argument, graph_type in zip(arguments, graph_types):
        name = argument.name
        if name in explicit:
            strategies[name] = _explicit(explicit, name, what)
            continue
        traced = _traced_tensor(graph_type)
        try:
            strategies[name] = traced if traced is not None else from_type(from_jit_type(argument.type))
        except InferenceError as error:
            if argument.has_default_value():
                strategies[name] = st.just(argument.default_value)
                continue
            raise InferenceError(
                f"cannot infer a strategy for parameter '{name}' of {what}: its TorchScript type {argument.type} "
                f"is not supported ({error}). Pass one: fork_safe(target, {name}=...) with a Hypothesis strategy",
                name) from None
    return strategies


def from_jit_type(jit_type) -> object:
    """The Python annotation a TorchScript type stands for; anything unsupported raises ``InferenceError``."""
    kind = jit_type.kind()
    if kind in _JIT_SCALARS:
        return _JIT_SCALARS[kind]
    if kind == "ListType":
        return typing.List[from_jit_type(jit_type.getElementType())]
    if kind == "OptionalType":
        return typing.Optional[from_jit_type(jit_type.getElementType())]
    if kind == "TupleType":
        return typing.Tuple[tuple(from_jit_type(element) for element in jit_type.elements())]
    if kind == "DictType":
        return typing.Dict[from_jit_type(jit_type.getKeyType()), from_jit_type(jit_type.getValueType())]
    if kind == "UnionType":
        return typing.Union[tuple(from_jit_type(element) for element in jit_type.containedTypes())]
    raise InferenceError(f"supported: {_SUPPORTED}")


_JIT_SCALARS = {"TensorType": torch.Tensor, "IntType": int, "FloatType": float, "BoolType": bool, "StringType": str,
                "NoneType": type(None)}


def _traced_tensor(graph_type) -> st.SearchStrategy | None:
    """A traced graph's input type keeps the dtype and shape it was traced with: draw tensors like those."""
    if graph_type.kind() != "TensorType" or graph_type.sizes() is None or graph_type.dtype() is None:
        return None
    try:
        return tensors(dtype=graph_type.dtype(), shape=tuple(graph_type.sizes()))
    except ValueError:  # a dtype the tensor strategy does not draw: the schema's plain Tensor
        return None


def _check_explicit(explicit: Mapping[str, object], names: list[str], what: str) -> None:
    unknown = [name for name in explicit if name not in names]
    if unknown:
        listed = ", ".join(repr(name) for name in unknown)
        real = ", ".join(repr(name) for name in names) or "none"
        raise InferenceError(f"{what} has no parameter {listed}; its parameters are {real}", unknown[0])


def _explicit(explicit: Mapping[str, object], name: str, what: str) -> st.SearchStrategy:
    if not isinstance(explicit[name], st.SearchStrategy):
        value = repr(explicit[name])
        raise InferenceError(
            f"the strategy given for parameter '{name}' of {what} is {value}, not a Hypothesis strategy. "
            f"Wrap a constant: @fork_safe({name}=st.just({value if len(value) <= 40 else '...'}))", name
        )
    return explicit[name]


def inferred_parameters(fn: Callable | nn.Module | type[nn.Module],
                        explicit: Mapping[str, st.SearchStrategy] | None = None) -> list[str]:
    """The parameters whose strategy ``for_callable`` infers from their annotation (not given, not a default)."""
    function, parameters = _parameters(fn)
    hints, fixed = _hints(function), _partial_keywords(fn)
    return [name for name, parameter in parameters.items()
            if name not in (explicit or {}) and name not in fixed and _from_annotation(hints.get(name), function)]


def unannotated_parameters(fn: Callable | nn.Module | type[nn.Module]) -> set[str]:
    """The parameters with no annotation (TorchScript types them Tensor); none for what has no Python signature."""
    try:
        function, parameters = _parameters(fn)
    except InferenceError:  # compiled code: every parameter has its TorchScript type
        return set()
    return set(parameters) - set(_hints(function))


def _from_annotation(annotation, function) -> bool:
    if annotation is None:
        return False
    try:
        from_type(_resolve(annotation, function))
    except InferenceError:
        return False
    return True


def suggested_strategies(inputs: Mapping[str, object]) -> str:
    """``@fork_safe(...)`` with a strategy of the same kind as each input's value, to show what to give."""
    return "@fork_safe(" + ", ".join(f"{name}={_template(value)}" for name, value in inputs.items()) + ")"


def _template(value: object) -> str:
    if isinstance(value, torch.Tensor):
        dtype = "" if value.dtype == torch.float32 else f", dtype={value.dtype}"
        return f"fst.tensors(shape=(4, 3){dtype})"
    if isinstance(value, (list, tuple, dict)) and not value:
        return {list: "st.lists(...)", tuple: "st.tuples()", dict: "st.dictionaries(...)"}[type(value)]
    if isinstance(value, list):
        return f"st.lists({_template(value[0])}, max_size=4)"
    if isinstance(value, tuple):
        return f"st.tuples({', '.join(map(_template, value))})"
    if isinstance(value, dict):
        key, item = next(iter(value.items()))
        return f"st.dictionaries({_template(key)}, {_template(item)}, max_size=4)"
    simple = {bool: "st.booleans()", int: "st.integers(0, 10)", float: "st.floats(0.0, 1.0)",
              str: "st.text(max_size=8)", type(None): "st.none()"}
    return simple.get(type(value), "...")


def _parameters(fn) -> tuple[Callable, dict[str, inspect.Parameter]]:
    """The function whose parameters are the inputs, and those parameters (``self`` left out)."""
    skip_self = False
    if isinstance(fn, type):
        if not issubclass(fn, nn.Module):
            raise InferenceError(f"{fn.__qualname__} is a class but not an nn.Module; pass a function or a Module")
        function, skip_self = fn.forward, True
    elif isinstance(fn, nn.Module):
        function = fn.forward
    elif inspect.isroutine(fn) or isinstance(fn, functools.partial):
        function = fn
    elif callable(fn):
        function = fn.__call__
    else:
        raise InferenceError(f"{fn!r} is not callable")
    if getattr(function, "__func__", function) is nn.Module.forward:
        raise InferenceError(f"{_name(fn if isinstance(fn, type) else type(fn))} does not define forward()")
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError) as error:
        raise InferenceError(f"cannot read the signature of {fn!r}: {error}") from error
    parameters = list(signature.parameters.items())[1 if skip_self else 0:]
    return function, dict(parameters)


def _partial_keywords(fn) -> set[str]:
    """Names a ``functools.partial`` already fixed: they keep their value."""
    names = set()
    while isinstance(fn, functools.partial):
        names.update(fn.keywords)
        fn = fn.func
    return names


def _hints(function) -> dict[str, object]:
    """Resolved annotations; raw ones (possibly strings) when some cannot be resolved."""
    function = _innermost(function)
    try:
        return typing.get_type_hints(function)
    except Exception:
        return dict(getattr(function, "__annotations__", None) or {})


def _infer(name, parameter, hints, function, what) -> st.SearchStrategy:
    annotation = hints.get(name, parameter.empty)
    has_default = parameter.default is not parameter.empty
    if annotation is parameter.empty:
        if has_default:
            return st.just(parameter.default)
        raise InferenceError(
            f"cannot infer a strategy for parameter '{name}' of {what}: it has no type annotation. "
            f"Annotate it ({name}: int) or pass one: @fork_safe({name}=st.integers(0, 10))", name
        )
    try:
        return from_type(_resolve(annotation, function))
    except InferenceError as error:
        if has_default:
            return st.just(parameter.default)
        raise InferenceError(
            f"cannot infer a strategy for parameter '{name}' of {what}: {error}. "
            f"Pass one: @fork_safe({name}=...) with a Hypothesis strategy", name
        ) from None


def _resolve(annotation, function):
    """A string annotation evaluated where the function was defined."""
    namespace = getattr(inspect.unwrap(_innermost(function)), "__globals__", {})
    for _ in range(2):  # a quoted annotation under ``from __future__ import annotations`` is a string twice
        if not isinstance(annotation, str):
            break
        try:
            annotation = eval(annotation, dict(namespace))
        except Exception as error:
            raise InferenceError(f"annotation {annotation!r} cannot be resolved ({type(error).__name__}: {error})")
    return annotation


def _innermost(function):
    """The plain function behind partials and bound methods, which holds the annotations and globals."""
    while isinstance(function, functools.partial):
        function = function.func
    return getattr(function, "__func__", function)


def _name(annotation) -> str:
    if isinstance(annotation, type):
        module = annotation.__module__
        return annotation.__qualname__ if module == "builtins" else f"{module}.{annotation.__qualname__}"
    return repr(annotation)
