"""Compiled TorchScript targets: scripted functions and modules, frozen, loaded, traced and legacy ``ScriptModule``s.

What the rest of forkcheck needs from one: that it is compiled, the schema its inputs come from (``self`` is never
an input), where it is written, and its serial reference: the same program with every fork run inline, one at a
time in program order (as ``torch.jit.fork`` runs in eager Python). The user's object is never changed: programs are
made from copies of its graphs.
"""
from __future__ import annotations

import inspect
import os
import re
import types
from typing import Any, Callable, Iterator

import torch

from .instrument import location_of

_TORCH_DIR = os.path.dirname(torch.__file__)


def is_compiled(obj: Any) -> bool:
    """A ``ScriptFunction``, a ``ScriptModule`` (scripted, frozen, loaded, traced) or a legacy subclass of it."""
    return isinstance(obj, (torch.jit.ScriptFunction, torch.jit.ScriptModule)) or (
        isinstance(obj, type) and issubclass(obj, torch.jit.ScriptModule))


def forward(scripted: Any) -> Any:
    """The function or ``forward`` method whose schema holds the inputs."""
    return scripted.forward if isinstance(scripted, torch.jit.ScriptModule) else scripted


def has_compiled_forward(scripted: Any) -> bool:
    """Whether a compiled module's ``forward`` is compiled (not a ``torch.jit.ignore``d Python method)."""
    return isinstance(getattr(scripted, "forward", None), torch.ScriptMethod)


def arguments(scripted: Any) -> list[Any]:
    """The schema's arguments without ``self``."""
    schema_arguments = forward(scripted).schema.arguments
    return schema_arguments[1:] if isinstance(scripted, torch.jit.ScriptModule) else list(schema_arguments)


def parameter_names(obj: Any) -> list[str]:
    """The inputs' names, ``self`` left out; for a legacy ``ScriptModule`` class (compiled only when constructed),
    from the Python signature of its ``@torch.jit.script_method forward``."""
    if isinstance(obj, type):
        stub = getattr(obj, "_methods", {}).get("forward")
        if stub is None:
            return []
        return list(inspect.signature(stub.original_method).parameters)[1:]
    return [argument.name for argument in arguments(obj)]


def display_name(scripted: Any) -> str:
    """The name the user knows: the function's, or the module class's original one."""
    if isinstance(scripted, torch.jit.ScriptFunction):
        return scripted.name
    return getattr(scripted, "original_name", None) or type(scripted).__qualname__


def defining_module(scripted: Any) -> str:
    """The module the compiled code was written in, from its TorchScript qualified name (``__torch__.models.Head``:
    ``models``; torch's name mangling left out); "" when it names none."""
    try:
        name = scripted.qualified_name if isinstance(scripted, torch.jit.ScriptFunction) else \
            scripted._c._type().qualified_name()
    except (AttributeError, RuntimeError):
        return ""
    return ".".join(part for part in name.split(".")[:-1]
                    if part != "__torch__" and not part.startswith("___torch_mangle"))


def location(scripted: Any) -> str:
    """``file:line`` of the first op of the target's graph whose source range survived compilation (a loaded
    module keeps them in its serialized code) and is the user's (a traced fork's ops point into torch), else the
    graph's qualified name."""
    function = forward(scripted)
    found = next((where for node in graph_nodes(function.graph.block())
                  if (where := location_of(node)) and not where.startswith(_TORCH_DIR)), "")
    if found:
        return found
    if isinstance(scripted, torch.jit.ScriptFunction):
        return scripted.qualified_name
    return f"{scripted._c._type().qualified_name()}.forward"


def graph_nodes(block: Any, subgraphs: bool = True) -> Iterator[Any]:
    """Every node of ``block`` and its nested blocks (and of fork subgraphs, with ``subgraphs``), in program order."""
    for node in block.nodes():
        yield node
        for inner in node.blocks():
            yield from graph_nodes(inner, subgraphs)
        if subgraphs and node.kind() == "prim::fork":
            yield from graph_nodes(node.g("Subgraph").block())


def _check_attribute_writes(scripted: Any, graph: Any) -> None:
    """Every ``prim::SetAttr`` of the module's graph sets an attribute the module has. ``torch.jit.freeze`` folds a
    buffer written in place by ``self.count += 1`` into a constant and drops the attribute, but keeps the write:
    calling the module raises, and running the graph as the serial reference crashed the process."""
    from .target import TargetError

    for node in graph_nodes(graph.block(), subgraphs=False):
        if node.kind() != "prim::SetAttr":
            continue
        path, value = [], node.inputsAt(0)
        while value.node().kind() == "prim::GetAttr":
            path.insert(0, value.node().s("name"))
            value = value.node().inputsAt(0)
        if value.node().kind() != "prim::Param" or value.offset() != 0:
            continue  # not an attribute path from ``self``
        owner = scripted._c
        for name in path:
            owner = owner.getattr(name) if isinstance(owner, torch._C.ScriptObject) and owner.hasattr(name) else None
        if isinstance(owner, torch._C.ScriptObject) and not owner.hasattr(node.s("name")):
            attribute = ".".join(["self", *path, node.s("name")])
            where, before = "", node
            while not where and before.kind() != "prim::Param":  # a SetAttr keeps no line: the op before it does
                where, before = location_of(before), before.prev()
            raise TargetError(
                f"the module's code assigns {attribute} (at {where or 'its forward'}), an attribute the "
                "module no longer has: torch.jit.freeze folded it into a constant, so calling the module raises. "
                f"Keep it, torch.jit.freeze(module, preserved_attrs=[{'.'.join([*path, node.s('name')])!r}]), to "
                "check the module as it runs unfrozen")


def constant_name(value) -> str:
    """How a report names a tensor constant of a compiled graph: ``torch.jit.freeze`` folds a module's buffers and
    parameters into the graph as constants, which keep the attribute's name (``self.total``), and every call of the
    graph shares them."""
    name = re.sub(r"\.\d+$", "", value.debugName())
    if name.isdigit():  # no name kept
        return "a tensor constant of the compiled graph"
    return f"{name} (a tensor constant of the compiled graph: torch.jit.freeze folds buffers and parameters into it)"


def _tensor_constants(graph: Any) -> Iterator[tuple[Any, torch.Tensor, int]]:
    """Each tensor constant of ``graph`` (fork subgraphs included): its value in the graph, the tensor, its storage."""
    from .observe import storage_key

    for node in graph_nodes(graph.block()):
        out = node.outputsAt(0) if node.kind() == "prim::Constant" and node.outputsSize() == 1 else None
        if out is not None and isinstance(out.type(), torch._C.TensorType):
            tensor = out.toIValue()
            key = storage_key(tensor) if isinstance(tensor, torch.Tensor) else None
            if key is not None:
                yield out, tensor, key


def constant_names(graph: Any) -> dict[int, str]:
    """Storage key -> name of each tensor constant of ``graph`` (fork subgraphs included), for the race log."""
    names: dict[int, str] = {}
    for value, _, key in _tensor_constants(graph):
        names.setdefault(key, constant_name(value))
    return names


def written_constants(graph: Any, names: set[str]) -> list[torch.Tensor]:
    """The tensor constants of ``graph`` named by ``names`` (``constant_name``: those the static pre-check found
    written), each once."""
    found: dict[int, torch.Tensor] = {}
    for value, tensor, key in _tensor_constants(graph):
        if constant_name(value) in names:
            found.setdefault(key, tensor)
    return list(found.values())


def python_callees(scripted: Any) -> list[Callable[..., Any]]:
    """The Python functions a compiled program calls back into (``torch.jit.ignore``d ones: ``prim::PythonOp``),
    forked bodies and called functions included, for the global-state watch: their code, not the graph, says which
    globals the program can reach."""
    if isinstance(scripted, torch.nn.Module) and not has_compiled_forward(scripted):
        return []
    found: list[Callable[..., Any]] = []
    _python_ops(forward(scripted).graph, found)
    return found


def _python_ops(graph: Any, found: list[Callable[..., Any]]) -> None:
    graph = graph.copy()  # the user's graph stays as it was
    torch._C._jit_pass_inline(graph)
    for node in graph_nodes(graph.block(), subgraphs=False):
        if node.kind() == "prim::PythonOp":
            function = node.pyobj()
            # an ignored method comes wrapped by torch's lazy binding; the user's method is in its closure
            inner = [cell.cell_contents for cell in getattr(function, "__closure__", None) or ()
                     if isinstance(cell.cell_contents, types.FunctionType)]
            found.extend(inner if getattr(function, "__module__", "").startswith("torch") else [function])
        elif node.kind() in ("prim::fork", "prim::awaitable"):
            _python_ops(node.g("Subgraph"), found)


def _is_identity(fork: Any) -> bool:
    subgraph = fork.g("Subgraph")
    return not list(subgraph.nodes()) and list(subgraph.outputs()) == list(subgraph.inputs())


def _run_in_place(graph: Any, fork: Any) -> None:
    """Put the fork's body where the fork is; the fork is left handing back the body's result (an identity task),
    so its future, lists of futures and their waits keep their types and meaning."""
    with graph.insert_point_guard(fork):
        results = graph.insertGraph(fork.g("Subgraph"), list(fork.inputs()))
    identity = torch._C.Graph()
    value = identity.addInput()
    value.setType(results[0].type())
    identity.registerOutput(value)
    fork.removeAllInputs()
    fork.addInput(results[0])
    fork.g_("Subgraph", identity)


def serial_program(scripted: Any) -> Callable[..., Any]:
    """``program(module, *args)``: the target with every fork's body run where the fork is, nested forks too, one
    at a time in program order (``module`` is ignored for a function). Built once from a copy of the graph; a deep
    copy of the module (the same class type) runs it as ``self``."""
    graph = forward(scripted).graph.copy()
    while True:
        torch._C._jit_pass_inline(graph)  # calls, and the bodies just put in place, may hold forks of their own
        fork = next((node for node in graph_nodes(graph.block(), subgraphs=False)
                     if node.kind() == "prim::fork" and not _is_identity(node)), None)
        if fork is None:
            break
        _run_in_place(graph, fork)
    graph.lint()
    if isinstance(scripted, torch.jit.ScriptModule):
        _check_attribute_writes(scripted, graph)
    function = torch._C._create_function_from_graph(f"__forkcheck__.serial.{display_name(scripted)}", graph)
    if isinstance(scripted, torch.jit.ScriptModule):
        return lambda module, *args: function(module._c, *args)
    return lambda module, *args: function(*args)
