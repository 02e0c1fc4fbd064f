"""Bounded-exhaustive exploration of one input's interleavings under forkcheck's own scheduler, with dynamic
partial-order reduction (DPOR, Flanagan and Godefroid, POPL 2005) and a preemption bound (as in Loom; Coons et al.,
OOPSLA 2013, for the bound's extra backtrack points).

Each run follows a prefix of choices, then never preempts. A :class:`Probe` (the run's chooser) records every switch
point: the runnable tasks, the one that ran, and a mark in the access log, so the log's accesses fall into steps
(what one task did between two switch points). After the run, :class:`Exploration` replays the log with vector
clocks over program order, forks, waits and the conflicts already seen; a step that conflicts with an earlier one of
another task not ordered before it means the other order is a different interleaving: the later task is added to
the choices to try at the earlier step's switch point (all runnable tasks if it could not run there) and at the
latest switch before it, each within ``bound`` preemptions. Interleavings
that differ only in the order of independent steps are not tried again. The search is depth first, one run per
choice, until nothing is left to try (complete) or ``budget`` runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, NamedTuple, Optional

from .interleavings import signature
from .observe import END, FORK, JOIN, Sync
from .schedules import ReplayDiverged


@dataclass
class Point:
    """One switch point of a run: who could run, who ran before and whether it could go on, who ran next."""

    mark: int  # position in the access log's order
    options: tuple[int, ...]  # runnable task ids, the current task first when it can go on
    can_continue: bool
    chosen: int
    previous: int  # the task that ran up to this point
    preemptions: int  # preemptions before this point
    backtrack: set[int] = field(default_factory=set)  # tasks still to try here
    done: set[int] = field(default_factory=set)  # tasks tried here

    def cost(self, task: int) -> int:
        """Preemptions a run choosing ``task`` here has made by then."""
        return self.preemptions + (self.can_continue and task != self.previous)


class Probe:
    """The schedule of one exploration run, and its own chooser: the prefix's choices (task ids), then no
    preemption."""

    any_thread = True

    def __init__(self, prefix: list[int]):
        self.prefix = prefix
        self.points: list[Point] = []
        self.log: Any = None
        self.decisions: list[int] = []  # indices, as ``ControlledScheduler.decisions`` records them (for replay)
        self.diverged = False  # the prefix did not fit the run: its outcome says nothing about the user's code

    def chooser(self) -> "Probe":
        """Itself: a probe runs once, and keeps what it saw for the search."""
        return self

    def observe(self, log: Any) -> None:
        """The run's access log (the engine calls this before the run)."""
        self.log = log

    def pick(self, options: list[int], can_continue: bool) -> int:
        at = len(self.points)
        index = 0
        if at < len(self.prefix):
            if self.prefix[at] not in options:
                self.diverged = True  # read by the runner: this run is dropped
                raise ReplayDiverged(f"switch point {at + 1}: task {self.prefix[at]} cannot run there (runnable: "
                                     f"{list(options)}); the program does not repeat itself under one schedule")
            index = options.index(self.prefix[at])
        previous = self.points[-1].chosen if self.points else 0
        preemptions = self.points[-1].cost(self.points[-1].chosen) if self.points else 0
        mark = self.log.mark() if self.log is not None else at
        self.points.append(Point(mark, tuple(options), can_continue, options[index], previous, preemptions))
        if len(options) > 1:
            self.decisions.append(index)
        return index


class Exploration:
    """The search over one input's interleavings: iterate for the next run's :class:`Probe`; it learns from each
    run's log when the next one is asked for. ``reduce=False`` tries every choice within the bound (no DPOR)."""

    def __init__(self, bound: int = 2, budget: int = 1000, reduce: bool = True):
        self.bound, self.budget, self.reduce = bound, budget, reduce
        self.stack: list[Point] = []
        self.runs = 0
        self.signatures: set[int] = set()
        self.complete = False
        self.diverged = ""

    def __iter__(self) -> Iterator[Probe]:
        prefix: Optional[list[int]] = []
        while prefix is not None and self.runs < self.budget:
            probe = Probe(prefix)
            self.runs += 1
            yield probe
            if not self._learn(probe, len(prefix)):
                return
            prefix = self._next()
        self.complete = prefix is None

    @property
    def interleavings(self) -> int:
        return len(self.signatures)

    def _learn(self, probe: Probe, kept: int) -> bool:
        if probe.log is None or len(probe.points) < kept:
            self.diverged = self.diverged or ("the program did not repeat a replayed prefix (it depends on more than "
                                              "the schedule), so the search stopped")
            return False
        for old, new in zip(self.stack[:kept], probe.points):  # the prefix's points keep what is left to try
            new.backtrack |= old.backtrack
            new.done |= old.done
        self.stack = probe.points
        for point in self.stack:
            point.done.add(point.chosen)
        self.signatures.add(signature(probe.log))
        if self.reduce:
            self._backtrack(probe.log)
        else:
            for point in self.stack[kept:]:
                point.backtrack.update(t for t in point.options if point.cost(t) <= self.bound)
        return True

    @property
    def pending(self) -> int:
        """Choices known to be left untried (a lower bound on the interleavings not explored)."""
        return sum(len(point.backtrack - point.done) for point in self.stack)

    def _next(self) -> Optional[list[int]]:
        for at in range(len(self.stack) - 1, -1, -1):
            left = sorted(self.stack[at].backtrack - self.stack[at].done)
            if left:
                return [p.chosen for p in self.stack[:at]] + [left[0]]
        return None

    def _add(self, at: int, task: int) -> None:
        """Try ``task`` at switch point ``at`` (every runnable task if it cannot run there), within the bound; and
        at the latest earlier point where the running task changed, where the same order may cost fewer
        preemptions (Coons et al.'s conservative backtrack point)."""
        switch = next((j for j in range(at - 1, -1, -1) if self.stack[j].chosen != self.stack[j].previous), None)
        for where in (at, switch):
            if where is None:
                continue
            point = self.stack[where]
            for candidate in [task] if task in point.options else list(point.options):
                if point.cost(candidate) <= self.bound:
                    point.backtrack.add(candidate)

    def _backtrack(self, log: Any) -> None:
        """Replay the log with vector clocks; add a backtrack point for each conflict fork/wait and earlier
        conflicts leave unordered."""
        marks = [point.mark for point in self.stack]
        clocks: dict[int, dict[int, int]] = {0: {0: 1}}
        ends: dict[int, dict[int, int]] = {}
        last: dict[Any, tuple[int, int, dict[int, int], bool]] = {}  # key -> latest write (step, task, clock, _)
        reads: dict[Any, dict[int, tuple[int, int, dict[int, int], bool]]] = {}  # key -> task -> latest read
        step = -1  # the root's steps before the first switch point: nothing to reorder them with
        for event in sorted([*log.accesses, *log.syncs, *(_Step(m, i) for i, m in enumerate(marks))],
                            key=lambda e: e.seq):
            if isinstance(event, _Step):  # a switch point: the chosen task's step begins
                step = event.index
                task = self.stack[step].chosen
                clock = clocks.setdefault(task, {task: 0})
                clock[task] = clock.get(task, 0) + 1
            elif isinstance(event, Sync):
                clock = clocks.setdefault(event.task, {event.task: 1})
                if event.kind == FORK:
                    clocks[event.child] = {**clock, event.child: 1}
                    clock[event.task] += 1
                elif event.kind == END:
                    ends[event.task] = dict(clock)
                elif event.kind == JOIN and event.child in ends:
                    _join(clock, ends[event.child])
            else:
                clock = clocks.setdefault(event.task, {event.task: 1})
                earlier = [last[event.storage]] if event.storage in last else []
                if event.write:
                    earlier += list(reads.get(event.storage, {}).values())
                for at, task, seen, _ in earlier:
                    if task != event.task and seen.get(task, 0) > clock.get(task, 0):
                        if at >= 0:
                            self._add(at, event.task)
                        _join(clock, seen)
                stamp = (step, event.task, dict(clock), event.write)
                if event.write:
                    last[event.storage], reads[event.storage] = stamp, {}
                else:
                    reads.setdefault(event.storage, {})[event.task] = stamp


class _Step(NamedTuple):
    seq: int  # the switch point's mark
    index: int  # its place among the run's switch points


def _join(clock: dict[int, int], other: dict[int, int]) -> None:
    for task, value in other.items():
        if value > clock.get(task, 0):
            clock[task] = value
