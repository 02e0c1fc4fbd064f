"""Scheduling points in the real TorchScript runtime.

A graph pass inlines a scripted program and puts a call to the custom op ``forkcheck::point(site, task)`` before each
op of every task (the root graph and each ``prim::fork`` subgraph, nested ones too) and right after each
``aten::wait``. The op's Python kernel calls the hook installed with :func:`hooked`, so a schedule policy can delay
tasks exactly between their ops while the forks run on the inter-op pool as usual.

Task identity is carried by the graph, not by threads (a continuation after ``wait`` often resumes on another pool
thread): ``forkcheck::spawn(site, parent)`` runs before each fork, returns the new task's id, and the fork passes it
to its subgraph as an extra input. Ids are deterministic per run: the root is 0 and the k-th task forked by task
``p`` is ``p * FANOUT + k`` (1, 2, 3 for the root's forks; 1001 for the first fork of task 1).

The op is defined with conservative alias analysis: the optimizer treats it as a side effect that may touch any
value, so it is neither removed nor moved across the ops around it.

Lists and dicts are shared mutable objects too, read and written by ops the dispatcher never sees (``aten::append``,
``aten::_set_item``, ``aten::__getitem__``, ``aten::len``...). Before each such op, ``forkcheck::touch(site, task,
container)`` passes the container's identity (``prim::id``: its address) to the access log, and after each op that
makes a new one (``prim::ListConstruct``, ``aten::copy``...) and each ``prim::GetAttr`` or root input that holds one,
a touch says so (``Site.event``: ``read``, ``write``, ``create``, ``name``). Only containers of a type that some op
of the program writes are touched: a container nobody writes cannot race.
"""
from __future__ import annotations

import contextlib
import ctypes
import itertools
import re
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from .task_names import FANOUT, OVERFLOW_BASE as _OVERFLOW_BASE  # ids encode the fork path

Hook = Callable[[int, int], None]


#: Nodes that only build or take apart values: no scheduling point before them.
_STRUCTURAL = frozenset(
    {
        "prim::Constant",
        "prim::ListConstruct",
        "prim::TupleConstruct",
        "prim::DictConstruct",
        "prim::ListUnpack",
        "prim::TupleUnpack",
        "prim::TupleIndex",
        "prim::Uninitialized",
        "prim::unchecked_cast",
        "prim::If",
        "prim::Loop",
    }
)

_LOCATION = re.compile(r'File "(?P<file>.+?)", line (?P<line>\d+)')


# ----------------------------------------------------------------------------------------------- the ops and the hook


class _Hook:
    """An installed callback; its errors are kept, and re-raised when :func:`hooked` exits."""

    MAX_ERRORS = 8

    def __init__(self, callback: Hook):
        self.callback = callback
        self.errors: list[tuple[int, int, BaseException]] = []
        self._lock = threading.Lock()

    def call(self, site: int, task: int) -> None:
        if self.errors:  # a broken callback is not called again: the run goes on unperturbed
            return
        try:
            self.callback(site, task)
        except BaseException as exc:  # noqa: BLE001 - re-raised by ``hooked`` on the caller's thread
            with self._lock:
                if len(self.errors) < self.MAX_ERRORS:
                    self.errors.append((site, task, exc))


class _TaskTree:
    """Which task forked which in one run: ``task -> (parent task, spawn site)``."""

    def __init__(self):
        self._lock = threading.Lock()
        self._forks: dict[int, int] = {}  # parent -> forks so far
        self._overflow = itertools.count(_OVERFLOW_BASE)
        self.points = itertools.count()  # ``next`` is atomic under the GIL: counts point calls cheaply
        self.spawned: dict[int, tuple[int, int]] = {}

    def spawn(self, parent: int, site: int) -> int:
        with self._lock:
            k = self._forks.get(parent, 0) + 1
            self._forks[parent] = k
            child = parent * FANOUT + k
            if k >= FANOUT or child >= _OVERFLOW_BASE:
                child = next(self._overflow)
            self.spawned[child] = (parent, site)
        return child


class _Slots:
    """What the kernels read: the installed hook and the current run's task tree."""

    def __init__(self):
        self.lock = threading.Lock()
        self.hook: _Hook | None = None
        self.tree = _TaskTree()  # replaced by ``Instrumentation.run`` for each run


_SLOTS = _Slots()
_ops_lock = threading.Lock()
_library: Any = None
_pinned: set[int] = set()


def _slots() -> _Slots:
    """The slots of the module now imported under this name.

    The ops are registered once per process, with the kernels of the first copy of this module; a later copy (a
    re-import after ``sys.modules`` was restored, as pytester does) installs hooks in its own slots, and the first
    copy's kernels must read those.
    """
    return getattr(sys.modules.get(__name__), "_SLOTS", _SLOTS)


def _keep_thread_state() -> None:
    """Keep this pool thread's Python thread state between kernel calls.

    A pool thread has no Python thread state of its own: without this, each call creates and destroys one (about
    10 us of a point's 11 us, measured), and ``threading.local`` values vanish between calls. One unmatched
    ``PyGILState_Ensure`` (we hold the GIL, so it only raises a counter) keeps it for the thread's lifetime.
    """
    ident = threading.get_ident()
    if ident not in _pinned:
        _pinned.add(ident)
        ctypes.pythonapi.PyGILState_Ensure()


def _point_kernel(site: int, task: int) -> None:
    _keep_thread_state()
    slots = _slots()
    next(slots.tree.points)
    hook = slots.hook
    if hook is not None:
        hook.call(site, task)


def _spawn_kernel(site: int, parent: int) -> int:
    _keep_thread_state()
    slots = _slots()
    child = slots.tree.spawn(parent, site)
    hook = slots.hook
    if hook is not None:
        hook.call(site, child)
    return child


def _touch_kernel(site: int, task: int, container: int) -> None:
    """Nothing to do: the access log sees the call (see ``forkcheck.observe``)."""


def ensure_ops() -> None:
    """Define ``forkcheck::point``, ``forkcheck::spawn`` and ``forkcheck::touch`` (once per process)."""
    global _library
    if _library is not None:
        return
    with _ops_lock:
        if _library is not None:
            return
        if hasattr(torch.ops.forkcheck, "point"):  # registered by an earlier copy of this module (see ``_slots``)
            _library = "defined by an earlier import"
            return
        lib = torch.library.Library("forkcheck", "DEF")
        # CONSERVATIVE: a side effect on anything, so the optimizer keeps the op and its place among the others.
        lib.define("point(int site, int task) -> ()", alias_analysis="CONSERVATIVE")
        lib.define("spawn(int site, int parent) -> int", alias_analysis="CONSERVATIVE")
        lib.define("touch(int site, int task, int container) -> ()", alias_analysis="CONSERVATIVE")
        lib.impl("point", _point_kernel, "CompositeExplicitAutograd")
        lib.impl("spawn", _spawn_kernel, "CompositeExplicitAutograd")
        lib.impl("touch", _touch_kernel, "CompositeExplicitAutograd")
        _library = lib


def _note(exc: BaseException, text: str) -> None:
    if hasattr(exc, "add_note"):  # Python 3.11+
        exc.add_note(text)


@contextlib.contextmanager
def hooked(callback: Hook) -> Iterator[_Hook]:
    """Call ``callback(site, task)`` at every scheduling point inside the block, from whichever thread reaches it.

    The previous hook is restored on exit, exceptions included. An exception raised by the callback (on any pool
    thread) does not reach the runtime: the callback is not called again, and the first such exception is re-raised
    here when the block exits (or noted on the block's own exception).
    """
    ensure_ops()
    handle = _Hook(callback)
    with _SLOTS.lock:
        previous, _SLOTS.hook = _SLOTS.hook, handle
    try:
        yield handle
    except BaseException as exc:
        if handle.errors:
            site, task, error = handle.errors[0]
            _note(exc, f"forkcheck: the schedule hook also raised {error!r} at site {site} in task {task}")
        raise
    finally:
        with _SLOTS.lock:
            _SLOTS.hook = previous
    if handle.errors:
        site, task, error = handle.errors[0]
        _note(error, f"forkcheck: raised by the schedule hook at site {site} in task {task}")
        raise error


# -------------------------------------------------------------------------------------------------- the graph pass


@dataclass(frozen=True)
class Site:
    """One scheduling point: the static task it belongs to, the op it precedes and where that op is written."""

    task: int  # static task: 0 for the root graph, then one id per fork subgraph
    kind: str  # the node kind, e.g. ``aten::add_``
    location: str  # ``file:line`` in the user's code, ``""`` when the graph does not say
    event: str = "op"  # ``op`` (before the node), ``resume`` (after ``aten::wait``), ``spawn`` (a fork), ``end``;
    # touches of a list or dict: ``read``, ``write`` (before the node), ``create`` (after it), ``name``
    waits: tuple[int, ...] = ()  # ``resume``: static tasks whose future the wait may be on (empty: unknown)
    container: str = ""  # touches: ``list`` or ``dict``
    name: str = ""  # ``name`` touches: the argument or ``self.<attribute path>``; ``create``: the local variable


@dataclass(frozen=True)
class Task:
    """One static task: the root graph or one fork subgraph."""

    parent: int | None  # static parent task; ``None`` for the root
    location: str  # ``file:line`` of the ``fork`` call, ``""`` for the root


def location_of(node: Any) -> str:
    """``file:line`` of a graph node's source, or ``""``."""
    match = _LOCATION.search(node.sourceRange())
    return f"{match['file']}:{match['line']}" if match else ""


def _locations(nodes: list[Any]) -> list[str]:
    """Each node's location; a node without one (``self.x = ...`` has none) borrows its nearest neighbour's."""
    found = [location_of(node) for node in nodes]
    known = [i for i, where in enumerate(found) if where]
    if not known:
        return found
    return [where or found[min(known, key=lambda k: (abs(k - i), k > i))] for i, where in enumerate(found)]


_SCHEMAS: dict[str, Any] = {}
#: Nodes whose container inputs are passed on, not read: no touch before them.
_PASSES_CONTAINERS = frozenset({"prim::fork", "prim::If", "prim::Loop", "prim::ListConstruct", "prim::TupleConstruct",
                                "prim::DictConstruct", "prim::unchecked_cast", "prim::GetAttr", "prim::SetAttr",
                                "prim::TupleIndex", "prim::TupleUnpack", "aten::wait", "prim::Uninitialized"})
_CONSTRUCTORS = frozenset({"prim::ListConstruct", "prim::DictConstruct"})


def _container(value: Any) -> str:
    """``list`` or ``dict`` for a value of that type, else ``""``."""
    kind = value.type()
    return "list" if isinstance(kind, torch._C.ListType) else "dict" if isinstance(kind, torch._C.DictType) else ""


def _schema(node: Any) -> Any:
    """The node's parsed schema, or ``None`` (prim nodes have none)."""
    text = node.schema()
    if text not in _SCHEMAS:
        _SCHEMAS[text] = None if text == "(no schema)" else torch._C.parse_schema(text)
    return _SCHEMAS[text]


def _written(node: Any) -> list[bool]:
    """Per input: whether the node's schema says it writes it."""
    schema = _schema(node)
    arguments = schema.arguments if schema is not None else []
    return [i < len(arguments) and arguments[i].alias_info is not None and arguments[i].alias_info.is_write
            for i in range(len(list(node.inputs())))]


def _makes_containers(node: Any) -> bool:
    """Whether the node's container outputs are new objects: a constructor, or a schema whose returns alias no
    input themselves (``chunk``'s ``Tensor(a)[]`` is a new list of views; ``append``'s ``t[](a!)`` is its input).
    A new list must say so: one made where a freed list was is another list (its accesses are not the old one's)."""
    if node.kind() in _CONSTRUCTORS:
        return True
    schema = _schema(node)
    return schema is not None and all(r.alias_info is None or not r.alias_info.before_set for r in schema.returns)


class _Pass:
    """Inlines a graph and its fork subgraphs, then inserts the points; fills the site and task tables."""

    def __init__(self, graph: Any):
        self.graph = graph
        self.sites: dict[int, Site] = {}
        self.tasks: dict[int, Task] = {0: Task(None, "")}
        self._int = torch._C.IntType.get()
        torch._C._jit_pass_inline(graph)
        self._written_attrs: set[str] = set()
        self._written_types: set[str] = set()  # container types some node writes: only those are touched
        self._futures: dict[tuple[int, int], frozenset[int]] = {}  # (static task, value) -> forks it may hold
        self._paths: dict[tuple[int, int], str] = {}  # (static task, value) -> ``self.<path>`` of a module value
        self._inline_forks(graph.block())
        self._as_object = torch._C._jit_get_schemas_for_operator("prim::id")[0].arguments[0].type

    def _inline_forks(self, block: Any) -> None:
        for node in block.nodes():
            if node.kind() == "prim::fork":
                sub = node.g("Subgraph")
                torch._C._jit_pass_inline(sub)
                self._inline_forks(sub.block())
            elif node.kind() == "prim::SetAttr":
                self._written_attrs.add(node.s("name"))
            for value, written in zip(node.inputs(), _written(node)):
                if written and _container(value):
                    self._written_types.add(str(value.type()))
            for inner in node.blocks():
                self._inline_forks(inner)

    def run(self) -> None:
        root = self.graph
        task0 = self._constant(root, 0, before=None)
        inputs = list(root.inputs())
        if inputs and isinstance(inputs[0].type(), torch._C.ClassType):
            self._paths[(0, inputs[0].unique())] = "self"
        self._block(root, root.block(), task0, 0)
        self._point(root, self._site(0, "return", "", "end"), task0, before=root.return_node())
        after = task0.node()
        for value in inputs:  # the caller's containers, by parameter name
            if self._touched(value):
                after = self._touch(root, value, task0, self._site(0, "input", "", "name", container=_container(
                    value), name=value.debugName().split(".")[0]), after=after)

    # -- helpers
    def _constant(self, graph: Any, value: int, before: Any) -> Any:
        node = graph.create("prim::Constant")
        node.i_("value", value)
        node.output().setType(self._int)
        if before is None:
            graph.prependNode(node)
        else:
            node.insertBefore(before)
        return node.output()

    def _site(self, task: int, kind: str, location: str, event: str = "op", waits: tuple[int, ...] = (),
              **container: str) -> int:
        site = len(self.sites)
        self.sites[site] = Site(task, kind, location, event, waits, **container)
        return site

    def _touched(self, value: Any) -> bool:
        return bool(_container(value)) and str(value.type()) in self._written_types

    def _touch(self, graph: Any, value: Any, task_value: Any, site: int, before: Any = None, after: Any = None) -> Any:
        """Insert ``forkcheck::touch(site, task, id(value))`` before ``before`` or after ``after``; returns its node."""
        cast = graph.create("prim::unchecked_cast", [value], 1)
        cast.output().setType(self._as_object)
        ident = graph.create("prim::id", [cast.output()], 1)
        ident.output().setType(self._int)
        const = graph.create("prim::Constant")
        const.i_("value", site)
        const.output().setType(self._int)
        touch = graph.create("forkcheck::touch", [const.output(), task_value, ident.output()], 0)
        for node in (cast, ident, const, touch):
            if before is not None:
                node.insertBefore(before)
            else:
                node.insertAfter(after)
                after = node
        return touch

    def _touch_containers(self, graph: Any, node: Any, task_value: Any, task: int, where: str) -> None:
        """Touches for the lists and dicts the node reads or writes (before it) and makes or names (after it)."""
        kind = node.kind()
        if kind not in _PASSES_CONTAINERS:
            for value, written in zip(node.inputs(), _written(node)):
                if self._touched(value):
                    event = "write" if written else "read"
                    self._touch(graph, value, task_value, self._site(task, kind, where, event,
                                                                     container=_container(value)), before=node)
        path = self._paths.get((task, node.inputsAt(0).unique())) if kind == "prim::GetAttr" else None
        if path is not None:
            self._paths[(task, node.output().unique())] = f"{path}.{node.s('name')}"
        made = kind in _CONSTRUCTORS or (kind not in _PASSES_CONTAINERS and _makes_containers(node))
        after = node
        for value in node.outputs():
            if self._touched(value) and (made or path is not None):
                # a local's variable name, when TorchScript kept it (``parts.1``; temporaries are numbers)
                local = value.debugName().split(".")[0]
                event, name = ("name", f"{path}.{node.s('name')}") if path is not None else \
                    ("create", "" if local.isdigit() else local)
                after = self._touch(graph, value, task_value, self._site(task, kind, where, event,
                                                                         container=_container(value), name=name),
                                    after=after)

    def _point(self, graph: Any, site: int, task_value: Any, before: Any) -> Any:
        node = graph.create("forkcheck::point", [self._constant(graph, site, before), task_value], 0)
        node.insertBefore(before)
        return node

    def _interesting(self, node: Any) -> bool:
        kind = node.kind()
        if kind in _STRUCTURAL:
            return False
        if kind == "prim::GetAttr":  # reading a slot matters only if some task may rebind it
            return node.s("name") in self._written_attrs
        return True

    # -- the walk
    def _block(self, graph: Any, block: Any, task_value: Any, task: int) -> None:
        nodes = list(block.nodes())
        for node, where in zip(nodes, _locations(nodes)):
            kind = node.kind()
            if self._interesting(node):
                self._point(graph, self._site(task, kind, where), task_value, before=node)
            if self._written_types:
                self._touch_containers(graph, node, task_value, task, where)
            if kind == "prim::fork":
                self._fork(graph, node, task_value, task, where)
            for inner in node.blocks():
                self._block(graph, inner, task_value, task)
            self._track_futures(node, task)
            if kind == "aten::wait":
                site = self._site(task, kind, where, "resume", self._waited(node.input(), task))
                self._point_after(graph, site, task_value, node)

    def _track_futures(self, node: Any, task: int) -> None:
        """Which forks a value may hold a future of: a fork's output, and lists or tuples built from such values."""
        held = [self._futures[(task, v.unique())] for v in node.inputs() if (task, v.unique()) in self._futures]
        if node.kind() in ("prim::ListConstruct", "prim::TupleConstruct") and held:
            self._futures[(task, node.output().unique())] = frozenset().union(*held)
        elif node.kind() == "aten::append" and held:
            key = (task, node.inputsAt(0).unique())
            self._futures[key] = self._futures.get(key, frozenset()).union(*held)

    def _waited(self, future: Any, task: int) -> tuple[int, ...]:
        """The static tasks a waited future may come from: its fork, or the forks put in the list it was taken from."""
        producer = future.node()
        if producer.kind() in ("aten::__getitem__", "prim::ListUnpack", "prim::TupleIndex", "prim::TupleUnpack"):
            future = producer.inputsAt(0)
        return tuple(sorted(self._futures.get((task, future.unique()), ())))

    def _point_after(self, graph: Any, site: int, task_value: Any, node: Any) -> None:
        const = graph.create("prim::Constant")
        const.i_("value", site)
        const.output().setType(self._int)
        point = graph.create("forkcheck::point", [const.output(), task_value], 0)
        point.insertAfter(node)
        const.insertAfter(node)

    def _fork(self, graph: Any, node: Any, task_value: Any, task: int, where: str) -> None:
        child = len(self.tasks)
        self.tasks[child] = Task(task, where)
        self._futures[(task, node.output().unique())] = frozenset({child})
        spawn_site = self._site(child, "prim::fork", where, "spawn")
        spawn = graph.create("forkcheck::spawn", [self._constant(graph, spawn_site, node), task_value], 1)
        spawn.output().setType(self._int)
        spawn.insertBefore(node)
        sub = node.g("Subgraph")
        child_value = sub.addInput("forkcheck_task")
        child_value.setType(self._int)
        node.addInput(spawn.output())
        for outer, inner in zip(node.inputs(), sub.inputs()):  # a module passed to the fork keeps its path
            if (task, outer.unique()) in self._paths:
                self._paths[(child, inner.unique())] = self._paths[(task, outer.unique())]
        self._block(sub, sub.block(), child_value, child)
        self._point(sub, self._site(child, "return", where, "end"), child_value, before=sub.return_node())


class Instrumentation:
    """A scripted program with scheduling points; calling it runs the instrumented copy (the original is untouched).

    ``sites``: site id -> :class:`Site`. ``tasks``: static task id -> :class:`Task`. After each run, ``spawned``
    maps each task id of that run to ``(parent task id, spawn site)`` (``sites[spawn_site].task`` is its static task)
    and ``steps`` is the number of points passed (spawn events not counted): PCT's ``k``.
    """

    def __init__(
        self, function: Any, module: Any, schema: Any, graph: Any, sites: dict[int, Site], tasks: dict[int, Task]
    ):
        self._function = function
        self._module = module  # the ``torch._C.ScriptModule`` passed as ``self``, or ``None``
        self._schema = schema  # the original's: names and defaults (a function made from a graph has neither)
        self._arguments = schema.arguments[1:] if module is not None else schema.arguments
        self.graph = graph
        self.sites = sites
        self.tasks = tasks
        self.spawned: dict[int, tuple[int, int]] = {}
        self.steps = 0

    def run(self, *args: Any, **kwargs: Any) -> Any:
        """Call the instrumented program once (arguments as for the original); one run at a time per process."""
        values = self._bind(args, kwargs)
        tree = _TaskTree()
        with _SLOTS.lock:
            previous, _SLOTS.tree = _SLOTS.tree, tree
        try:
            if self._module is None:
                return self._function(*values)
            return self._function(self._module, *values)
        finally:
            with _SLOTS.lock:
                _SLOTS.tree = previous
            self.spawned = dict(tree.spawned)
            self.steps = next(tree.points)

    __call__ = run

    def _bind(self, args: tuple, kwargs: dict) -> tuple:
        """Positional values for every parameter, from ``args``, ``kwargs`` and the original's defaults."""
        if not kwargs and len(args) == len(self._arguments):
            return args
        if len(args) > len(self._arguments):
            raise TypeError(f"{self._schema.name}() takes {len(self._arguments)} arguments, {len(args)} given")
        kwargs = dict(kwargs)
        values = list(args)
        for argument in self._arguments[len(args):]:
            if argument.name in kwargs:
                values.append(kwargs.pop(argument.name))
            elif argument.has_default_value():
                values.append(argument.default_value)
            else:
                raise TypeError(f"{self._schema.name}() is missing argument {argument.name!r}")
        if kwargs:
            raise TypeError(f"{self._schema.name}() got unexpected arguments {sorted(kwargs)}")
        return tuple(values)

    def static_task(self, task: int) -> int:
        """The static task (fork subgraph) a task id of the last run executes."""
        if task == 0:
            return 0
        return self.sites[self.spawned[task][1]].task


_names = itertools.count()


def instrument(scripted: Any) -> Instrumentation:
    """Instrument a ``ScriptFunction``, a scripted module (its ``forward``, called with the module as ``self``) or
    one method of a scripted module (a ``torch.ScriptMethod``, called with its owner as ``self``)."""
    ensure_ops()
    if isinstance(scripted, torch.jit.ScriptFunction):
        module, method = None, scripted
    elif isinstance(scripted, torch.jit.ScriptModule):
        module, method = scripted._c, scripted.forward
    elif isinstance(scripted, torch.ScriptMethod):
        module, method = scripted.owner, scripted
    else:
        raise TypeError(
            f"forkcheck can instrument a torch.jit.ScriptFunction or a scripted module, not {type(scripted).__name__}"
        )
    graph = method.graph.copy()  # deep: fork subgraphs are copied too
    graph_pass = _Pass(graph)
    graph_pass.run()
    graph.lint()
    # A new function (its own executor, profiled on its own): the original's executor may already be optimized.
    function = torch._C._create_function_from_graph(f"__forkcheck__.i{next(_names)}.{method.name}", graph)
    return Instrumentation(function, module, method.schema, graph, graph_pass.sites, graph_pass.tasks)
