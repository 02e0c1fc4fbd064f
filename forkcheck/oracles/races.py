"""Races: two tasks that fork/wait does not order touch the same bytes of one storage, and at least one writes.

The access log of one run (``forkcheck.observe.AccessLog``) is replayed in the order things happened, with a vector
clock per task: program order within a task, fork edges (the parent's past precedes the child) and wait edges (the
waited task's end precedes what follows the wait). As in FastTrack, each storage remembers, per task and byte range,
the latest write and read with the task's clock at that moment; an access unordered with an earlier conflicting one
is a race, whatever order the two happened to run in: the race is reported on the first schedule that shows both
accesses, even when the outputs matched.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from ..findings import Finding
from ..observe import END, FORK, JOIN, Access, AccessLog, Sync
from ..task_names import task_name

MAX_RANGES = 64  # byte ranges remembered per task and storage; older ones are forgotten (a race may be missed)
MAX_FINDINGS = 8  # race findings per run: one per storage


class HappensBefore:
    """Vector clocks over fork, end and join events, fed in the order they happened."""

    def __init__(self):
        self.clocks: dict[int, dict[int, int]] = {}
        self.ends: dict[int, dict[int, int]] = {}
        self.parent: dict[int, int] = {}
        self.static: dict[int, Optional[int]] = {}
        self.children: dict[int, list[int]] = {}
        self.joined: dict[int, set[int]] = {}

    def clock(self, task: int) -> dict[int, int]:
        """The task's vector clock (a task first seen without a fork, like the root, starts on its own)."""
        clock = self.clocks.get(task)
        if clock is None:
            clock = self.clocks[task] = {task: 1}
        return clock

    def now(self, task: int) -> int:
        """The task's own component: an access by ``task`` now is the epoch ``(task, now(task))``."""
        return self.clock(task)[task]

    def fork(self, parent: int, child: int, static: Optional[int] = None) -> None:
        clock = self.clock(parent)
        self.clocks[child] = {**clock, child: 1}
        clock[parent] += 1
        self.parent[child] = parent
        self.static[child] = static
        self.children.setdefault(parent, []).append(child)

    def end(self, task: int) -> None:
        self.ends[task] = dict(self.clock(task))

    def join(self, task: int, child: Optional[int] = None, waits: tuple[int, ...] = ()) -> list[int]:
        """``task`` is past a wait; returns the tasks it is now ordered after (see :meth:`waited`)."""
        targets = [child] if child is not None else self.waited(task, waits)
        clock = self.clock(task)
        for target in targets:
            for other, value in self.ends.get(target, {}).items():
                if value > clock.get(other, 0):
                    clock[other] = value
            self.joined.setdefault(task, set()).add(target)
        clock[task] += 1
        return targets

    def waited(self, task: int, waits: tuple[int, ...]) -> list[int]:
        """Which finished tasks a wait was on, when the runtime does not say.

        The graph tells which fork subgraphs (``waits``) the future may come from; among ``task``'s children of
        those, finished and not yet waited for, it is one of them, and all are taken: ordering too much may miss a
        race, ordering too little would report one that is not there. Several candidates only arise for a fork in a
        loop whose futures are waited for from a list.
        """
        ended = [c for c in self.children.get(task, ()) if c in self.ends and (not waits or self.static[c] in waits)]
        joined = self.joined.get(task, set())
        picked = [c for c in ended if c not in joined] or ended
        if not picked and waits:  # a future passed to another task and waited for there
            picked = [t for t, static in self.static.items() if static in waits and t in self.ends]
        return picked

    def ordered(self, task: int, clock: int, later: int) -> bool:
        """Whether ``task``'s access at ``clock`` happens before what ``later`` does now."""
        return task == later or self.clock(later).get(task, 0) >= clock

    def ancestors(self, task: int) -> list[int]:
        found = []
        while task in self.parent:
            task = self.parent[task]
            found.append(task)
        return found


@dataclass(frozen=True)
class Race:
    """Two conflicting accesses that fork/wait leaves unordered; ``first`` is the one that ran first this time."""

    first: Access
    second: Access


class _Shadow:
    """Per storage: task -> byte range -> [latest write, latest read], each as ``(access, clock)``."""

    def __init__(self):
        self.cells: dict[int, dict[int, dict[tuple[int, int], list]]] = {}

    def check(self, access: Access, hb: HappensBefore) -> Optional[Access]:
        """An earlier access that races with ``access``, or ``None``."""
        by_task = self.cells.get(access.storage)
        if not by_task:
            return None
        for task, ranges in by_task.items():
            if task == access.task:
                continue
            for (start, end), (write, read) in ranges.items():
                if start >= access.end or access.start >= end:
                    continue
                if write is not None and not hb.ordered(task, write[1], access.task):
                    return write[0]
                if access.write and read is not None and not hb.ordered(task, read[1], access.task):
                    return read[0]
        return None

    def record(self, access: Access, clock: int) -> None:
        ranges = self.cells.setdefault(access.storage, {}).setdefault(access.task, {})
        span = (access.start, access.end)
        cell = ranges.get(span)
        if cell is None:
            if len(ranges) >= MAX_RANGES:
                del ranges[next(iter(ranges))]
            cell = ranges[span] = [None, None]
        cell[0 if access.write else 1] = (access, clock)


def find_races(log: AccessLog) -> tuple[list[Race], HappensBefore, dict[int, list[int]]]:
    """Replay the log; the races (the first one per pair of ops and lines), the clocks, and what each join joined."""
    hb = HappensBefore()
    shadow = _Shadow()
    races: list[Race] = []
    seen: set[tuple] = set()
    joins: dict[int, list[int]] = {}
    for event in log.events():
        if isinstance(event, Sync):
            if event.kind == FORK:
                hb.fork(event.task, event.child, event.static)
            elif event.kind == END:
                hb.end(event.task)
            elif event.kind == JOIN:
                joins[event.seq] = hb.join(event.task, event.child, event.waits)
            continue
        other = shadow.check(event, hb)
        if other is not None:
            pair = (event.storage, other.op, other.location, other.write, event.op, event.location, event.write)
            if pair not in seen:
                seen.add(pair)
                races.append(Race(other, event))
        shadow.record(event, hb.now(event.task))
    return races, hb, joins


def race_findings(log: AccessLog) -> list[Finding]:
    """One ``race`` finding per storage (at most ``MAX_FINDINGS``): its first race, both sides described.

    Storages go by name (an argument, an attribute, or where a local tensor was made), so the same race in every
    forked instance of a target is one finding; the other pairs of ops that race on it are listed in the detail.
    ``detail["outputs_affected"]`` is left ``None``: the caller knows whether this run's outputs differed.
    """
    races, hb, joins = find_races(log)
    grouped: dict[str, list[Race]] = {}
    for race in races:
        grouped.setdefault(log.describe(race.first.storage), []).append(race)
    findings = [_finding(same, log, hb, joins) for same in grouped.values()]
    return findings[:MAX_FINDINGS]


def _pair(race: Race) -> tuple[str, str]:
    """The two sides of a race as ``op (kind) at file:line``, in a stable order."""
    first, second = sorted(f"{a.op} ({'write' if a.write else 'read'}) at {a.location}"
                           for a in (race.first, race.second))
    return first, second


def _verb(access: Access) -> str:
    return "writes" if access.write else "reads"


def _task_name(task: int, hb: HappensBefore, log: AccessLog) -> str:
    parent = hb.parent.get(task)
    if parent is None or parent == 0:
        return task_name(task)
    fork = next((s for s in log.syncs if s.kind == FORK and s.child == task), None)
    return task_name(task) + (f" (forked at {fork.location})" if fork is not None and fork.location else "")


def _side(access: Access) -> dict[str, Any]:
    return {"task": access.task, "op": access.op, "location": access.location,
            "kind": "write" if access.write else "read"}


def _finding(same: list[Race], log: AccessLog, hb: HappensBefore, joins: dict[int, list[int]]) -> Finding:
    race = same[0]
    a, b = race.first, race.second
    storage = log.describe(a.storage)
    writer = a if a.write else b

    def say(access: Access) -> str:
        where = f" at {access.location}" if access.location else ""
        return f"{_task_name(access.task, hb, log)} {_verb(access)} it ({access.op}{where})"

    others = {_pair(r) for r in same} - {_pair(race)}
    also = f" ({len(others)} other pairs of ops race on it too)" if len(others) > 1 else \
        " (another pair of ops races on it too)" if others else ""
    message = (f"race on {storage}: {say(a)} while {say(b)}; no fork/wait orders the two, so another schedule "
               f"can run them the other way round{also}")
    return Finding(
        "race", message, location=writer.location, tasks=sorted({a.task, b.task}),
        detail={
            "name": storage,
            "storage": storage,
            "task_pairs": [list(p) for p in sorted({tuple(sorted({r.first.task, r.second.task})) for r in same})],
            "other_pairs": [list(p) for p in sorted(others)],
            "ops": [a.op, b.op],
            "locations": [a.location, b.location],
            "accesses": [_side(a), _side(b)],
            "outputs_affected": None,
            "events": _timeline(race, log, hb, joins),
        })


def _timeline(race: Race, log: AccessLog, hb: HappensBefore, joins: dict[int, list[int]]) -> list[dict[str, Any]]:
    """The forks and waits among the two tasks and their ancestors, and the two accesses, in the order they ran."""
    involved = {race.first.task, race.second.task}
    for task in list(involved):
        involved.update(hb.ancestors(task))
    events: list[tuple[int, dict[str, Any]]] = []
    for sync in log.syncs:
        if sync.task not in involved:
            continue
        where = "" if sync.location.startswith("<") else sync.location  # forkcheck's generated driver: no line
        if sync.kind == FORK and sync.child in involved:
            events.append((sync.seq, {"task": sync.task, "op": "prim::fork", "location": where,
                                      "kind": "fork", "conflict": False, "child": sync.child}))
        elif sync.kind == JOIN:
            for child in joins.get(sync.seq, ()):
                if child in involved:
                    events.append((sync.seq, {"task": sync.task, "op": "aten::wait", "location": where,
                                              "kind": "wait", "conflict": False, "child": child}))
    for access in (race.first, race.second):
        events.append((access.seq, {**_side(access), "conflict": True}))
    return [event for _, event in sorted(events, key=lambda item: item[0])]


_OUTCOMES = {  # what judged the run that showed a race: (it went wrong, it did not)
    "outputs": ("this schedule's outputs differed from the serial reference",
                "this schedule's outputs matched the serial reference, another one's may not"),
    "test": ("the test failed under this schedule",
             "the test's assertions passed under this schedule, another one's may not"),
}


def outputs_affected(finding: Finding, affected: bool, judged_by: str = "outputs") -> Finding:
    """Fill in whether the run that showed the race went wrong: its outputs differed from the serial reference's,
    or (``judged_by="test"``, a marked test) the test failed."""
    finding.detail["outputs_affected"] = affected
    finding.message += "; " + _OUTCOMES[judged_by][0 if affected else 1]
    return finding
