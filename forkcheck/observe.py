"""The per-task access log: for every tensor op of a run, which task ran it, where, and which storages it read or wrote.

:class:`AccessLog` is a ``TorchDispatchMode``: entered on the thread that starts a run, it travels into every forked
task (its state is part of ``at::ThreadLocalState``), so it sees every op of every task on whichever pool thread runs
it. Which task that is, the engine says: the real runtime through the ``forkcheck::point`` and ``forkcheck::spawn``
ops the graph pass inserted (seen here like any other op, on the thread that is about to run the task's next op),
forkcheck's own scheduler by calling :meth:`AccessLog.enter`, :meth:`fork`, :meth:`end` and :meth:`join` itself.

The log only records, in the order things happened (a linearization of the run): accesses and the fork, end and join
events. ``forkcheck.oracles.races`` turns it into happens-before and race findings after the run.

Lists and dicts are logged as whole objects (one byte range), keyed ``(kind, address, generation)``: the real runtime
reports them through ``forkcheck::touch`` ops (see ``forkcheck.instrument``), forkcheck's own scheduler through
``forkcheck.containers``. A container made at an address another one had earlier starts a new generation, so a freed
list's successor is another object.

Storages are keyed by their ``StorageImpl`` address, and every keyed storage is weakly referenced until
:meth:`AccessLog.close`: a weak reference keeps the ``StorageImpl`` shell (not the data) allocated, so no other storage
can take the same key during the run, however often the allocator reuses memory.
"""
from __future__ import annotations

import itertools
import threading
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Optional

import torch

from ._dispatch import DispatchMode
from .instrument import _point_kernel, _spawn_kernel
from .state import module_state, tensors_in

FORK, END, JOIN = "fork", "end", "join"  # kinds of sync events

# Ops that look at a tensor's metadata only (shape, dtype, device): not a read of its data.
_METADATA_ONLY = frozenset({
    "aten::empty_like", "aten::zeros_like", "aten::ones_like", "aten::full_like", "aten::rand_like",
    "aten::randn_like", "aten::randint_like", "aten::new_empty", "aten::new_empty_strided", "aten::new_zeros",
    "aten::new_ones", "aten::new_full", "aten::size", "aten::stride", "aten::numel", "aten::dim",
    "aten::is_contiguous", "aten::is_same_size", "aten::_has_same_storage_numel", "aten::sym_size",
    "aten::sym_stride", "aten::sym_numel", "aten::sym_storage_offset",
})
# Ops whose schema does not declare a write they make: op -> (flag argument that turns it on, written arguments).
_UNDECLARED_WRITES = {
    "aten::native_batch_norm": (5, (3, 4)),  # training -> running_mean, running_var
}


class Access(NamedTuple):
    """One op's read or write of one storage, by one task."""

    seq: int  # position in the run's log
    task: int
    op: str  # ``aten::add_``
    location: str  # ``file:line`` of the op in the user's code, ``""`` when unknown
    storage: Any  # key of the storage (its ``StorageImpl`` address, unique within a run) or of a list or dict
    start: int  # byte range [start, end) inside the storage (a strided tensor's hull)
    end: int
    write: bool


class Sync(NamedTuple):
    """A fork (``task`` starts ``child``), a task's end, or a join (``task`` waited; ``child`` if known)."""

    seq: int
    kind: str  # FORK, END or JOIN
    task: int
    child: Optional[int] = None  # FORK: the new task; JOIN: the task waited for, ``None`` when only ``waits`` says
    location: str = ""
    static: Optional[int] = None  # FORK: the child's static task (fork subgraph), when the engine knows it
    waits: tuple[int, ...] = ()  # JOIN without ``child``: static tasks the waited future may come from


class _Spec:
    """What an op's schema says about its tensor arguments, computed once per op."""

    __slots__ = ("name", "args", "reads", "fresh", "point", "spawn", "touch", "undeclared")

    def __init__(self, func: Any):
        schema = func._schema
        self.name = schema.name
        self.point = self.name == "forkcheck::point"
        self.spawn = self.name == "forkcheck::spawn"
        self.touch = self.name == "forkcheck::touch"
        writes = [a.alias_info is not None and a.alias_info.is_write for a in schema.arguments]
        # (position, positional index or None for keyword-only, name, written) of every argument that may hold tensors
        self.args = tuple((i, None if a.kwarg_only else i, a.name, writes[i])
                          for i, a in enumerate(schema.arguments) if "Tensor" in str(a.type))
        views = bool(schema.returns) and all(r.alias_info is not None for r in schema.returns)
        # a view op only makes a new tensor header: no data is read
        self.reads = self.name not in _METADATA_ONLY and not (views and not any(writes))
        # returns new storages: the op that made a local tensor names it in reports
        self.fresh = bool(schema.returns) and all(r.alias_info is None for r in schema.returns)
        self.undeclared = _UNDECLARED_WRITES.get(self.name)


_SPECS: dict[Any, _Spec] = {}  # op overload -> its spec, for the process


def storage_key(t: torch.Tensor) -> Optional[int]:
    """The key of a tensor's storage, or ``None`` for tensors without one (sparse, meta, wrappers)."""
    try:
        storage = t.untyped_storage()
    except (RuntimeError, NotImplementedError):
        return None
    return storage._cdata if storage.nbytes() else None


def storage_names(args: Mapping[str, Any] | None = None, module: Any = None) -> dict[int, str]:
    """Storage key -> the name a report gives it: the argument's name, or ``self.<attribute path>``."""
    names: dict[int, str] = {}
    for name, value in (args or {}).items():
        for t in tensors_in(value):
            key = storage_key(t)
            if key is not None:
                names.setdefault(key, name)
    if module is not None:
        for path, value in module_state(module).items():
            for t in tensors_in(value):
                key = storage_key(t)
                if key is not None:
                    names.setdefault(key, f"self.{path}")
    return names


class AccessLog(DispatchMode):
    """Records accesses, forks, ends and joins of one run, each attributed to its task.

    ``sites`` (``Instrumentation.sites``) lets the log read task identity from the real runtime's scheduling ops;
    without it, the engine calls :meth:`enter`, :meth:`fork`, :meth:`end` and :meth:`join` itself. ``names`` maps
    storage keys to names for the report (see :func:`storage_names`). ``locate``, when given, is called for each
    recorded op on its thread and says where the op is written (eager code: e.g. ``forkcheck.locate.user_location``);
    otherwise the location given to :meth:`enter` (or the scheduling op's site) is used.

    The same log may be entered on several threads at once (one per task, as an eager scheduler runs them); the
    weak references are dropped when the last one exits.
    """

    def __init__(self, sites: Mapping[int, Any] | None = None, names: Mapping[int, str] | None = None,
                 locate: Optional[Callable[[], str]] = None, containers: Optional[Mapping[int, str]] = None):
        super().__init__()
        self.sites = sites or {}
        self.names = dict(names or {})
        self.locate = locate
        self.accesses: list[Access] = []
        self.syncs: list[Sync] = []
        self.created: dict[int, tuple[str, str, int]] = {}  # storage key -> (op, location, task) that made it
        self.unattributed = 0  # ops run on a thread no task was known to run on (not recorded)
        self._generations: dict[int, int] = {}  # container address -> containers made there so far
        self._watch = None  # eager code: list and dict method calls, named by ``containers`` (see forkcheck.containers)
        if containers is not None:
            from .containers import ContainerWatch

            self._watch = ContainerWatch(self, self._running_task, containers)
        self._current: dict[int, tuple[int, str]] = {}  # thread id -> (task, location of its next op)
        self._pinned: dict[int, int] = {}  # storage key -> weak reference handle
        self._seq = itertools.count(1)  # ``next`` and ``list.append`` are atomic: no lock on the hot path
        self._entered = 0
        self._lock = threading.Lock()
        self._nested = itertools.count(1)  # tasks and fork subgraphs absorbed from nested runs: -1, -2, ...

    # -- task identity (engines without scheduling ops call these) ----------------------------------------------

    def mark(self) -> int:
        """A position in the log's order, e.g. a scheduler's switch point (accesses after it have higher ``seq``)."""
        return next(self._seq)

    def _running_task(self) -> Optional[int]:
        current = self._current.get(threading.get_ident())
        return None if current is None else current[0]

    def enter(self, task: int, location: str = "") -> None:
        """The calling thread runs ``task`` now; its next ops are written at ``location``."""
        self._current[threading.get_ident()] = (task, location)

    def fork(self, parent: int, child: int, location: str = "", static: Optional[int] = None) -> None:
        """``parent`` starts ``child``: everything ``parent`` did so far happens before ``child``."""
        self._sync(FORK, parent, child, location, static=static)

    def end(self, task: int) -> None:
        """``task`` finished: its last op is done."""
        self._sync(END, task)

    def join(self, task: int, child: Optional[int] = None, location: str = "", waits: tuple[int, ...] = ()) -> None:
        """``task`` got past a wait for ``child`` (or, when the engine cannot tell which, for a fork in ``waits``)."""
        self._sync(JOIN, task, child, location, waits=waits)

    def _sync(self, kind: str, task: int, child: Optional[int] = None, location: str = "", **extra: Any) -> None:
        self.syncs.append(Sync(next(self._seq), kind, task, child, location, **extra))

    def _on_point(self, site: int, task: int) -> None:
        info = self.sites.get(site)
        if info is None:
            self.enter(task)
            return
        self.enter(task, info.location)
        if info.event == "resume":
            self.join(task, None, info.location, info.waits)
        elif info.event == "end":
            self.end(task)

    def container(self, task: int, event: str, kind: str, address: int, op: str, location: str = "",
                  name: str = "") -> None:
        """``task`` reads, writes, makes (``create``, ``name``: the variable) or names a list or dict (``kind``)
        living at ``address``."""
        if event == "create":
            generation = self._generations[address] = self._generations.get(address, 0) + 1
            self.created[(kind, address, generation)] = (op, location, task)
            if name:
                self.names[(kind, address, generation)] = f"{name} made by {op}" + (f" at {location}" if location else "")
            return
        key = (kind, address, self._generations.get(address, 0))
        if event == "name":
            self.names.setdefault(key, name)
        else:
            self.accesses.append(Access(next(self._seq), task, op, location, key, 0, 1, event == "write"))

    def _on_touch(self, site: int, task: int, address: int) -> None:
        info = self.sites.get(site)
        if info is not None:
            self.container(task, info.event, info.container, address, info.kind, info.location, info.name)

    # -- the dispatch mode --------------------------------------------------------------------------------------

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: Optional[dict] = None) -> Any:
        kwargs = kwargs or {}
        spec = _SPECS.get(func)
        if spec is None:
            spec = _SPECS[func] = _Spec(func)
        if spec.point:  # the kernel is called directly: the op does nothing else, and dispatching costs ~10 us
            self._on_point(args[0], args[1])
            return _point_kernel(*args)
        if spec.touch:
            self._on_touch(*args)
            return None
        if spec.spawn:
            child = _spawn_kernel(*args)
            info = self.sites.get(args[0])
            self.fork(args[1], child, info.location if info else "", info.task if info else None)
            return child
        current = self._current.get(threading.get_ident())
        if current is None:
            self.unattributed += 1
            return func(*args, **kwargs)
        if spec.args:
            self._record(spec, current, args, kwargs)
        out = func(*args, **kwargs)
        if spec.fresh:
            for t in (out,) if isinstance(out, torch.Tensor) else out if isinstance(out, (list, tuple)) else ():
                if isinstance(t, torch.Tensor) and t.layout == torch.strided:
                    self.created[t.untyped_storage()._cdata] = (spec.name, current[1], current[0])
        return out

    def _record(self, spec: _Spec, current: tuple[int, str], args: tuple, kwargs: dict) -> None:
        task, location = current
        if self.locate is not None:
            location = self.locate() or location
        undeclared = spec.undeclared
        written = ()
        if undeclared is not None and len(args) > undeclared[0] and args[undeclared[0]]:
            written = undeclared[1]
        reads = spec.reads
        for position, positional, name, write in spec.args:
            value = args[positional] if positional is not None and positional < len(args) else kwargs.get(name)
            if value is None:
                continue
            write = write or position in written
            if not (write or reads):
                continue
            if isinstance(value, torch.Tensor):
                self._access(task, spec.name, location, value, write)
            elif isinstance(value, (list, tuple)):
                for t in value:
                    if isinstance(t, torch.Tensor):
                        self._access(task, spec.name, location, t, write)

    def _access(self, task: int, op: str, location: str, t: torch.Tensor, write: bool) -> None:
        if t.layout != torch.strided:  # sparse and other layouts: no single storage to key by
            return
        numel = t.numel()
        if not numel:
            return
        size = t.element_size()
        start = t.storage_offset() * size
        if t.is_contiguous():
            end = start + numel * size
        else:  # the hull of a strided view
            end = start + (1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride()))) * size
        storage = t.untyped_storage()
        key = storage._cdata
        if key not in self._pinned:  # setdefault is atomic: a handle that lost the race is freed
            handle = storage._weak_ref()
            if self._pinned.setdefault(key, handle) != handle:
                torch.UntypedStorage._free_weak_ref(handle)
        self.accesses.append(Access(next(self._seq), task, op, location, key, start, end, write))

    # -- after the run -----------------------------------------------------------------------------------------

    def describe(self, key: int) -> str:
        """What a storage is, for a report: an argument, a module attribute, or the op that made a local tensor;
        for a list or dict the same, or the line that first used it."""
        if isinstance(key, tuple):
            kind = key[0]
            if key in self.names:
                return f"the {kind} {self.names[key]}"
            if key in self.created:
                op, location, _ = self.created[key]
                return f"a {kind} made by {op}" + (f" at {location}" if location else "")
            return f"a {kind} of unknown origin"
        if key in self.names:
            return self.names[key]
        if key in self.created:
            op, location, _ = self.created[key]
            where = f" at {location}" if location else ""
            return f"a tensor made by {op}{where}"
        return "a tensor of unknown origin"

    def close(self) -> None:
        """Drop the weak references that kept storage keys unique; the log stays readable."""
        pinned, self._pinned = self._pinned, {}
        for handle in pinned.values():
            torch.UntypedStorage._free_weak_ref(handle)
        if self._watch is not None:
            self._watch.close()

    def absorb(self, nested: "AccessLog") -> None:
        """Append the log of a nested run (a scripted call) that ran, on the calling thread, entirely between this
        log's last event and its next: its root becomes the task running on this thread, its forked tasks (and fork
        subgraphs) get new ids, negative until :meth:`number_nested`; its storages stay pinned here."""
        caller = self._current.get(threading.get_ident(), (0, ""))[0]
        tasks: dict[Optional[int], Optional[int]] = {None: None, 0: caller}
        statics: dict[Optional[int], Optional[int]] = {None: None}

        def task(t: Optional[int]) -> Optional[int]:
            if t not in tasks:
                tasks[t] = -next(self._nested)
            return tasks[t]

        def static(s: Optional[int]) -> Optional[int]:
            if s not in statics:
                statics[s] = -next(self._nested)
            return statics[s]

        for event in nested.events():
            if isinstance(event, Access):
                self.accesses.append(event._replace(seq=next(self._seq), task=task(event.task)))
            else:
                self.syncs.append(event._replace(seq=next(self._seq), task=task(event.task), child=task(event.child),
                                                 static=static(event.static),
                                                 waits=tuple(static(w) for w in event.waits)))
        for key, (op, location, made_by) in nested.created.items():
            self.created.setdefault(key, (op, location, task(made_by)))
        for key, name in nested.names.items():
            self.names.setdefault(key, name)
        self.unattributed += nested.unattributed
        pinned, nested._pinned = nested._pinned, {}
        for key, handle in pinned.items():
            if self._pinned.setdefault(key, handle) != handle:
                torch.UntypedStorage._free_weak_ref(handle)

    def number_nested(self) -> None:
        """Give the tasks absorbed from nested runs their places in the task tree (``forkcheck.task_names``): the
        k-th such task forked by task ``p`` is ``p * FANOUT + n + k``, after the ``n`` tasks ``p`` forked itself.
        Called once the run is over."""
        from .task_names import FANOUT, OVERFLOW_BASE

        forks = sorted((s for s in self.syncs if s.kind == FORK and s.child is not None), key=lambda s: s.seq)
        children: dict[int, int] = {}
        for sync in forks:
            if sync.child >= 0:
                children[sync.task] = children.get(sync.task, 0) + 1
        ids: dict[int, int] = {}
        for sync in forks:  # in the order they happened: a task's parent has its place before it
            if sync.child < 0:
                parent = ids.get(sync.task, sync.task)
                k = children[parent] = children.get(parent, 0) + 1
                ids[sync.child] = parent * FANOUT + k if k < FANOUT and parent * FANOUT + k < OVERFLOW_BASE \
                    else OVERFLOW_BASE - sync.child
        if not ids:
            return

        def renamed(t: Optional[int]) -> Optional[int]:
            return ids.get(t, t)

        self.accesses = [a._replace(task=renamed(a.task)) for a in self.accesses]
        self.syncs = [s._replace(task=renamed(s.task), child=renamed(s.child)) for s in self.syncs]
        self.created = {key: (op, where, renamed(t)) for key, (op, where, t) in self.created.items()}

    def __enter__(self) -> "AccessLog":
        with self._lock:
            self._entered += 1
        entered = super().__enter__()
        if self._watch is not None:
            self._watch.install()
        return entered

    def __exit__(self, *exc: Any) -> Any:
        if self._watch is not None:
            self._watch.uninstall()
        try:
            return super().__exit__(*exc)
        finally:
            with self._lock:
                self._entered -= 1
                last = not self._entered
            if last:
                self.close()

    def events(self) -> Iterable[Access | Sync]:
        """Accesses and sync events merged in the order they happened."""
        return sorted([*self.accesses, *self.syncs], key=lambda e: e.seq)
