"""Static pre-check: find writes to shared state in a scripted graph, on every branch, before anything runs.

forkcheck forks many instances of a target on the *same* inputs and the *same* module, so any write that can reach
an input or module state is a defect even when no example happens to take that branch. This is a small points-to
analysis over the inlined TorchScript graph (fork subgraphs included): values point to abstract objects (a parameter,
a module attribute path, or a container built locally), schema alias annotations say which outputs alias which
inputs and which arguments an op writes, and containers remember what was stored in them. Every branch is analysed,
except those decided by a bool module attribute that nothing rebinds (``self.training``): that one is read from the
live module, so an eval-mode BatchNorm is not flagged.
"""
from __future__ import annotations

import functools
import re
from typing import Any, NamedTuple

import torch

from forkcheck._warnings import quiet_jit
from forkcheck.compiled import constant_name
from forkcheck.findings import Finding

# Ops without a schema that hand back their input unchanged, or an element of a container / future.
_PASS_THROUGH = {"prim::unchecked_cast", "prim::TypeCheck", "prim::RequiresGradCheck", "prim::profile"}
_UNPACK = {"prim::ListUnpack", "prim::TupleUnpack", "prim::TupleIndex", "aten::wait", "prim::awaitable_wait"}
_FORKS = ("prim::fork", "prim::awaitable")  # nodes whose subgraph runs later; their output holds its result
_CONSTRUCT = {"prim::ListConstruct", "prim::TupleConstruct", "prim::DictConstruct", "prim::CreateObject"}
# Schema says "aliases its input", but only when no conversion or copy is needed: reported as "may be written".
_MAY_ALIAS = {"aten::to", "aten::contiguous", "aten::reshape", "aten::reshape_as", "aten::flatten", "aten::type_as"}
# Ops whose schema does not declare writes they do make: op -> (flag argument, written arguments).
_UNDECLARED_WRITES = {
    "aten::batch_norm": ("training", ("running_mean", "running_var")),
    "aten::_batch_norm_impl_index": ("training", ("running_mean", "running_var")),
    "aten::native_batch_norm": ("training", ("running_mean", "running_var")),
    "aten::instance_norm": ("use_input_stats", ("running_mean", "running_var")),
}
# Ops whose declared write happens only when a flag argument is true: op -> that argument (dropout in eval mode).
_WRITES_ONLY_IF = {"aten::dropout_": "train", "aten::feature_dropout_": "train", "aten::alpha_dropout_": "train",
                   "aten::feature_alpha_dropout_": "train"}
_CONTAINERS = (torch._C.ListType, torch._C.DictType, torch._C.TupleType, torch._C.FutureType, torch._C.AwaitType)
_SOURCE = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+)')


class _Obj(NamedTuple):
    """An abstract object: ``input`` (a parameter), ``attr`` (a module attribute path), ``const`` (a tensor constant
    of the graph: a frozen module's folded buffer or parameter) or ``local``."""

    kind: str
    name: str
    via: str = ""  # a may-alias op on the way, when the alias is not certain

    @property
    def shared(self) -> bool:
        return self.kind != "local"


def static_findings(scripted: Any, param_names: list[str] | None = None) -> list[Finding]:
    """Findings for every write to an input or module state that the scripted target can make, on any branch."""
    if isinstance(scripted, torch.jit.ScriptModule):
        module = scripted
        names = scripted._c._method_names()  # an overloaded forward is compiled as forward__0, forward__1, ...
        graphs = [scripted._c._get_method(n).graph for n in names if re.fullmatch(r"forward(__\d+)?", n)]
    elif isinstance(scripted, torch.jit.ScriptFunction):
        graphs, module = [scripted.graph], None
    else:
        raise TypeError(f"static_findings expects a scripted function or module, got {type(scripted).__name__}")
    found: dict[tuple, Finding] = {}
    for graph in graphs:
        graph = _inlined(graph)
        analysis = _PointsTo(module)
        analysis.collect(graph)
        analysis.seed(graph, _root_names(graph, module, param_names))
        analysis.solve()
        for finding in analysis.findings():
            found.setdefault((finding.kind, finding.detail["name"], finding.detail["op"], finding.location), finding)
    return sorted(found.values(), key=_order)


def _root_names(graph, module, param_names) -> list[_Obj]:
    """One abstract object per graph input: the module itself is attribute path ``""``, the rest are parameters."""
    inputs = list(graph.inputs())
    skip = 1 if module is not None else 0
    if param_names is None:
        names = [re.sub(r"\.\d+$", "", v.debugName()) for v in inputs[skip:]]
    elif len(param_names) == len(inputs) - skip:
        names = list(param_names)
    elif module is not None and len(param_names) == len(inputs):
        names = list(param_names)[1:]
    else:
        raise ValueError(f"param_names {param_names!r} do not match the graph's {len(inputs) - skip} parameters")
    return [_Obj("attr", "")] * skip + [_Obj("input", n) for n in names]


class _Step(NamedTuple):
    """One live node, with what the fixpoint reads on every pass fetched once."""

    gid: int  # index of the graph (the target's, or a fork subgraph) that holds the node
    node: Any
    kind: str
    ins: list
    outs: list
    extra: Any  # prim::If: the live block indices; a fork: (its subgraph's index, the subgraph)
    schema: Any


class _PointsTo:
    """Flow-insensitive points-to sets over every value of the graph and its fork subgraphs, solved to a fixpoint."""

    def __init__(self, module):
        self.module = module
        self.graphs: list[Any] = []  # keeps subgraph copies alive while their nodes are in use
        self.steps: list[_Step] = []
        self.outer: dict[tuple[int, int], Any] = {}  # fork-subgraph input -> (graph index, value passed to the fork)
        self.rebound: set[str] = set()  # attribute names some prim::SetAttr assigns: never folded to constants
        self.sites: dict[int, str] = {}  # fork subgraph -> the line of the user's code that forks it
        self.pts: dict[tuple[int, int], set[_Obj]] = {}
        self.stored: dict[_Obj, set[_Obj]] = {}
        self.changed = False

    # -- building the list of live nodes -------------------------------------------------------------------------

    def collect(self, graph) -> int:
        gid = len(self.graphs)
        self.graphs.append(graph)
        if gid == 0:
            self.rebound = _rebound(graph)
        self._collect_block(gid, graph.block())
        return gid

    def _collect_block(self, gid, block) -> None:
        for node in block.nodes():
            extra = None
            if node.kind() in _FORKS:  # analyse the forked body too, on its own inlined copy
                sub = _inlined(node.g("Subgraph"))
                sid = len(self.graphs)
                self.sites[sid] = _user_site(_location(node)) or self.sites.get(gid, "")
                for value, passed in zip(sub.inputs(), node.inputs()):
                    self.outer[(sid, value.unique())] = (gid, passed)
                extra = (self.collect(sub), sub)
            elif node.kind() == "prim::If":
                cond = self._const(gid, node.inputsAt(0))
                extra = [0, 1] if not isinstance(cond, bool) else [0 if cond else 1]
            self.steps.append(_Step(gid, node, node.kind(), list(node.inputs()), list(node.outputs()), extra,
                                    _schema(node)))
            blocks = list(node.blocks())
            for i in extra if node.kind() == "prim::If" else range(len(blocks)):
                self._collect_block(gid, blocks[i])

    def _attr_path(self, gid, value) -> str | None:
        """The attribute path of a ``self.a.b`` chain on the checked module, followed out of fork subgraphs."""
        node = value.node()
        if node.kind() == "prim::GetAttr":
            base = self._attr_path(gid, node.inputsAt(0))
            return None if base is None else _join(base, node.s("name"))
        if node.kind() != "prim::Param" or node.owningBlock().owningNode() is not None:
            return None  # not a graph input (a loop-carried value, or computed)
        if (gid, value.unique()) in self.outer:
            return self._attr_path(*self.outer[(gid, value.unique())])
        return "" if gid == 0 and self.module is not None and value.offset() == 0 else None

    def _const(self, gid, value):
        """A value known before running: a constant, a module attribute nothing rebinds (a bool or a str, read off the
        live module), or a comparison of two such."""
        node = value.node()
        if node.kind() == "prim::Constant":
            return value.toIValue()
        if node.kind() == "prim::Param" and (gid, value.unique()) in self.outer:  # a fork's argument
            return self._const(*self.outer[(gid, value.unique())])
        if node.kind() == "aten::__not__":
            inner = self._const(gid, node.inputsAt(0))
            return (not inner) if isinstance(inner, bool) else None
        if node.kind() == "prim::If":
            cond = self._const(gid, node.inputsAt(0))
            if isinstance(cond, bool):
                return self._const(gid, list(list(node.blocks())[0 if cond else 1].outputs())[value.offset()])
        if node.kind() in ("aten::eq", "aten::ne") and len(list(node.inputs())) == 2:  # ``self.mode == "train"``
            left, right = (self._const(gid, v) for v in node.inputs())
            if isinstance(left, (str, int)) and type(left) is type(right):
                return (left == right) == (node.kind() == "aten::eq")
        if node.kind() == "prim::GetAttr" and self.module is not None:
            path = self._attr_path(gid, value)
            if path and path.rpartition(".")[2] not in self.rebound:
                live = self.module
                for part in path.split("."):
                    live = getattr(live, part, None)
                return live if isinstance(live, (bool, str)) else None
        return None

    # -- the fixpoint ------------------------------------------------------------------------------------------

    def seed(self, graph, roots: list[_Obj]) -> None:
        for value, root in zip(graph.inputs(), roots):
            self._add(0, value, {root})

    def solve(self) -> None:
        self.changed = True
        while self.changed:
            self.changed = False
            for step in self.steps:
                self._transfer(*step)

    def _get(self, gid, value) -> set[_Obj]:
        return self.pts.get((gid, value.unique()), set())

    def _add(self, gid, value, objs) -> None:
        have = self.pts.setdefault((gid, value.unique()), set())
        if not objs <= have:
            have |= objs
            self.changed = True

    def _store(self, containers, objs) -> None:
        for c in containers:
            have = self.stored.setdefault(c._replace(via=""), set())
            if not objs <= have:
                have |= objs
                self.changed = True

    def _contents(self, objs, index: int | None = None) -> set[_Obj]:
        """What elements of these containers may be (``index``: the element at that index of a tuple built here, where
        known): an element of shared state is shared state too."""
        out = set()
        for o in objs:
            base = o._replace(via="")
            item = _item(base, index) if index is not None else None
            found = (self.stored[item] if item in self.stored else self.stored.get(base, set())) | (
                {base} if o.shared else set())
            out |= {e._replace(via=o.via) if o.via and e.shared else e for e in found}
        return out

    def _transfer(self, gid, node, kind, ins, outs, extra, schema) -> None:
        get = lambda v: self._get(gid, v)  # noqa: E731
        if kind == "prim::GetAttr":
            base = get(ins[0])
            shared = {o._replace(name=_join(o.name, node.s("name"))) for o in base if o.shared}
            self._add(gid, outs[0], shared | self._contents({o for o in base if not o.shared}))
        elif kind == "prim::SetAttr":
            self._store({o for o in get(ins[0]) if not o.shared}, get(ins[1]))
        elif kind in _CONSTRUCT:
            site = _local(gid, outs[0])
            self._add(gid, outs[0], {site})
            self._store({site}, set().union(*map(get, ins)))
            if kind == "prim::TupleConstruct":  # and each element by its index, for the unpacking
                for index, value in enumerate(ins):
                    self._store({_item(site, index)}, get(value))
        elif kind in _UNPACK:
            index = self._const(gid, ins[1]) if kind == "prim::TupleIndex" else None
            index = index if type(index) is int else None
            for position, out in enumerate(outs):
                at = position if kind == "prim::TupleUnpack" else index
                self._add(gid, out, self._contents(get(ins[0]), at))
        elif kind == "prim::Constant" and isinstance(outs[0].type(), torch._C.TensorType):
            self._add(gid, outs[0], {_Obj("const", constant_name(outs[0]))})  # one tensor every call shares
        elif kind in _PASS_THROUGH:
            for value, out in zip(ins, outs):
                self._add(gid, out, get(value))
        elif kind == "prim::If":
            for i in extra:
                for out, res in zip(outs, list(node.blocks())[i].outputs()):
                    self._add(gid, out, get(res))
        elif kind == "prim::Loop":
            body = next(node.blocks())
            carried, results = list(body.inputs())[1:], list(body.outputs())[1:]
            for value, param, res, out in zip(ins[2:], carried, results, outs):
                self._add(gid, param, get(value) | get(res))
                self._add(gid, out, get(param))
        elif kind in _FORKS:  # the subgraph's inputs are the fork's inputs; the future holds its result
            sid, sub = extra
            for value, param in zip(ins, sub.inputs()):
                self._add(sid, param, get(value))
            site = _local(gid, outs[0])
            self._add(gid, outs[0], {site})
            self._store({site}, set().union(*(self._get(sid, r) for r in sub.outputs())))
        elif schema is not None:
            self._transfer_schema(gid, kind, schema, ins, outs, get)

    def _transfer_schema(self, gid, kind, schema, ins, outs, get) -> None:
        """Alias annotations: ``(a)`` shares, ``(a!)`` writes, ``(b -> *)`` is stored away, ``(*)`` is any element."""
        args = [(a.alias_info, v) for a, v in zip(schema.arguments, ins)]
        # the elements of the containers read (an argument stored away whole, ``append``'s ``el``, is not opened:
        # appending a future or a list stores that object, not what it holds)
        inner = self._contents(set().union(*(get(v) for info, v in args if _is_container(v)
                                              and not (info and "*" in info.after_set))))
        stored = inner.union(*(get(v) for info, v in args if info and "*" in info.after_set and not info.is_write))
        into = set().union(*(get(v) for info, v in args if info and info.is_write and _is_container(v)))
        via = kind if kind in _MAY_ALIAS else ""
        for out, ret in zip(outs, schema.returns):
            info, objs = ret.alias_info, set()
            if _is_container(out) and not (info and info.before_set):  # list(l), d.items(), x.split(n)
                objs.add(_local(gid, out))
                into.add(_local(gid, out))
            elif info:
                for arg_info, v in args:
                    if arg_info and arg_info.before_set & (info.before_set - {"*"}):
                        objs |= {o._replace(via=via) if via and o.shared and not o.via else o for o in get(v)}
                if "*" in info.before_set:
                    objs |= inner
            self._add(gid, out, objs)
        self._store(into, stored)  # append/insert/_set_item/extend, and new containers, hold these elements

    # -- reading off the writes ---------------------------------------------------------------------------------

    def findings(self) -> list[Finding]:
        found: dict[tuple[str, str, str, str], Finding] = {}
        for step in self.steps:
            for value, op, obj, name in self._writes(step):
                kind = "input-mutation" if obj.kind == "input" else "attribute-mutation" if (
                    obj.kind == "attr" or self.module is not None) else "global-mutation"  # a module's constant
                loc = _location(step.node)  # inlined torch code (a Module's forward) reads as its user's fork
                loc = _user_site(loc) or self.sites.get(step.gid) or loc
                key = (kind, name, op, loc)
                if key in found and not found[key].detail.get("via"):
                    continue
                found[key] = _finding(kind, name, op, loc, obj.via, value)
        return sorted(found.values(), key=_order)

    def _writes(self, step):
        gid, node, kind, ins, schema = step.gid, step.node, step.kind, step.ins, step.schema
        if kind == "prim::SetAttr":
            for obj in self._get(gid, ins[0]):
                if obj.shared:
                    yield None, kind, obj, _join(obj.name, node.s("name"))
            return
        if schema is None:
            return
        flag, undeclared = _UNDECLARED_WRITES.get(kind, ("", ()))
        if kind in _WRITES_ONLY_IF and self._flag(gid, schema, ins, _WRITES_ONLY_IF[kind]) is False:
            return
        for arg, value in zip(schema.arguments, ins):
            declared = arg.alias_info is not None and arg.alias_info.is_write
            if declared or (arg.name in undeclared and self._flag(gid, schema, ins, flag) is not False):
                for obj in self._get(gid, value):
                    if obj.shared:
                        yield value, kind, obj, obj.name or "self"

    def _flag(self, gid, schema, ins, flag):
        for arg, value in zip(schema.arguments, ins):
            if arg.name == flag:
                return self._const(gid, value)
        return None


def _inlined(graph):
    graph = graph.copy()  # the user's graph (and its subgraphs) stay as they were
    with quiet_jit():
        torch._C._jit_pass_inline(graph)
    return graph


def _rebound(graph) -> set[str]:
    """Names of the attributes that forward, or anything it forks, assigns with ``prim::SetAttr``."""
    names = {node.s("name") for node in graph.findAllNodes("prim::SetAttr")}
    for kind in _FORKS:
        for node in graph.findAllNodes(kind):
            names |= _rebound(_inlined(node.g("Subgraph")))
    return names


def _schema(node):
    text = node.schema()
    return None if text == "(no schema)" else _parse_schema(text)


@functools.lru_cache(maxsize=None)
def _parse_schema(text: str):
    return torch._C.parse_schema(text)


def _is_container(value) -> bool:
    return isinstance(value.type(), _CONTAINERS)


def _local(gid, value) -> _Obj:
    return _Obj("local", f"{gid}:{value.unique()}")


def _item(tuple_site: _Obj, index: int) -> _Obj:
    """The element at ``index`` of a tuple built at ``tuple_site``."""
    return tuple_site._replace(name=f"{tuple_site.name}[{index}]")


def _join(base: str, name: str) -> str:
    return f"{base}.{name}" if base else name


def _location(node) -> str:
    """``file:line`` of the node, else of the nearest earlier node that has one (``prim::SetAttr`` carries none)."""
    for _ in range(10_000):
        match = _SOURCE.search(node.sourceRange())
        if match:  # the file as Python named it, like the runtime oracles' locations
            return f"{match['file']}:{match['line']}"
        if node.kind() == "prim::Param":
            owner = node.owningBlock().owningNode()
            if owner is None:
                return ""
            node = owner
        else:
            node = node.prev()
    return ""


def _user_site(location: str) -> str:
    """``location`` when it is in the user's code, else ``""``."""
    from ..locate import in_user_code

    return location if location and in_user_code(location.rpartition(":")[0]) else ""


def _finding(kind, name, op, loc, via, value) -> Finding:
    tensor = value is not None and isinstance(value.type(), torch._C.TensorType)
    verb = "rebound by" if op == "prim::SetAttr" else "written in place by" if tensor else "changed by"
    where = f" at {loc}" if loc else ""
    if via:
        message = f"{name} may be {verb} {op}{where} ({via} can return its input itself); every forked task shares it"
    else:
        message = f"{name} is {verb} {op}{where}; every forked task shares it"
    detail = {"source": "static", "op": op, "name": name}
    if via:
        detail["via"] = via
    return Finding(kind=kind, message=message, location=loc, tasks=[], detail=detail)


def _order(finding: Finding):
    file, _, line = finding.location.rpartition(":")
    return (file, int(line) if line.isdigit() else 0, finding.kind, finding.detail["name"], finding.detail["op"])
