"""Which interleaving a run was, up to the order of independent steps: for coverage counts and exhaustive search.

Two runs are the same interleaving (one Mazurkiewicz trace) when every pair of conflicting accesses (one storage,
list or dict, at least one write, two tasks) ran in the same order. An access is named by its task's place in the
fork tree and its position among that task's accesses, so the name does not depend on the schedule; a run's
:func:`signature` is the set of its ordered conflicting pairs (each access against the latest conflicting write and
the reads since), hashed.

On the real runtime only the first schedule of an example is logged; the others are told apart by
:func:`point_signature`: per pair of tasks that conflicted in the logged run, the order in which the two reached
the ops that conflicted.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping, Sequence

from .observe import FORK, Access, Sync


def task_paths(syncs: Iterable[Sync]) -> dict[int, tuple[int, ...]]:
    """Task id -> its path in the fork tree (the root ``()``, the k-th fork of a task its path plus ``k``)."""
    paths: dict[int, tuple[int, ...]] = {0: ()}
    forks: dict[int, int] = {}
    for sync in sorted(syncs, key=lambda s: s.seq):
        if sync.kind == FORK and sync.child is not None:
            forks[sync.task] = forks.get(sync.task, 0) + 1
            paths[sync.child] = paths.get(sync.task, (sync.task,)) + (forks[sync.task],)
    return paths


def conflicts(accesses: Sequence[Access]) -> Iterator[tuple[Access, Access]]:
    """Each conflicting pair ``(earlier, later)`` of two tasks: a write against the latest write and the reads since,
    a read against the latest write (enough to fix the order of all of them)."""
    writes: dict[Any, Access] = {}
    reads: dict[Any, list[Access]] = {}
    for access in sorted(accesses, key=lambda a: a.seq):
        key = access.storage
        last = writes.get(key)
        earlier = ([last] if last is not None else []) + (reads.get(key, []) if access.write else [])
        for other in earlier:
            if other.task != access.task and other.start < access.end and access.start < other.end:
                yield other, access
        if access.write:
            writes[key], reads[key] = access, []
        else:
            reads.setdefault(key, []).append(access)


def signature(log: Any) -> int:
    """The run's interleaving up to the order of independent steps, as a hash."""
    paths = task_paths(log.syncs)
    position: dict[int, int] = {}
    names: dict[int, tuple] = {}
    for access in sorted(log.accesses, key=lambda a: a.seq):
        position[access.task] = position.get(access.task, 0) + 1
        names[access.seq] = (paths.get(access.task, (access.task,)), position[access.task])
    return hash(frozenset((names[a.seq], names[b.seq]) for a, b in conflicts(log.accesses)))


def conflict_groups(log: Any) -> dict[tuple[int, int], frozenset[tuple[str, str]]]:
    """For each pair of tasks with conflicting accesses: the ``(op, location)`` of those accesses."""
    groups: dict[tuple[int, int], set[tuple[str, str]]] = {}
    for a, b in conflicts(log.accesses):
        groups.setdefault((min(a.task, b.task), max(a.task, b.task)), set()).update(
            {(a.op, a.location), (b.op, b.location)})
    return {pair: frozenset(ops) for pair, ops in groups.items()}


def point_signature(trace: Sequence[tuple[int, int]], sites: Mapping[int, Any],
                    groups: Mapping[tuple[int, int], frozenset[tuple[str, str]]]) -> int:
    """Per pair of tasks that conflicted, the order in which the two reached the points before those ops
    (``trace``: ``(site, task)`` as reached); tasks that never conflict may interleave any way."""
    def reached(pair: tuple[int, int], ops: frozenset[tuple[str, str]]) -> tuple:
        return tuple(task for site, task in trace
                     if task in pair and site in sites and (sites[site].kind, sites[site].location) in ops)

    return hash(tuple(reached(pair, ops) for pair, ops in sorted(groups.items())))
