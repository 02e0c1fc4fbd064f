"""The ``pct`` strategy: probabilistic concurrency testing (Burckhardt et al., ASPLOS 2010). Tasks get random
priorities, the highest-priority runnable task runs, and at ``depth - 1`` random steps the running task drops below
every initial priority: a bug of depth ``d`` among ``n`` tasks and ``k`` steps shows with probability at least
1/(n k^(d-1)) per schedule.

- :class:`PCTPolicy`, on the real runtime: priorities keyed by ``(seed, task)`` (``_draws.unit``), as tasks reach
  their points on pool threads in any order; an outranked task backs off (bounded) so the higher one runs first.
- :class:`PCT`, under forkcheck's own scheduler: priorities and change points drawn up front from a stream (a seeded
  ``random.Random`` or Hypothesis data, which shrinks a change point to 0: none), then pure bookkeeping.

One algorithm, two draws: the stream's draws shrink toward fewer preemptions, the keyed ones cannot depend on the
order threads arrive in. Replay tokens depend on both as they are, so they stay apart.
"""
from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Sequence

from ._draws import Source, as_draw, unit

if TYPE_CHECKING:
    from ..instrument import Site

#: The parameters of a ``pct`` schedule, all integers (name -> (low, high, default)).
PARAMS = {
    "d": (1, 16, 2),  # bug depth: d - 1 priority change points
    "k": (1, 10_000_000, 64),  # expected steps per run (change points fall in [1, k])
    "w": (0, 1_000_000, 2_000),  # longest back-off at one point, microseconds
    "b": (0, 10_000_000, 50_000),  # back-offs end this long after a run starts, microseconds
}
#: The parameters a check draws, in these ranges; ``k`` is the counted steps of a run (``portfolio.with_steps``).
DRAWN = {"d": (1, 3)}

#: Ops during which a task waits for another one: it is not runnable until its ``resume`` point.
BLOCKING = frozenset({"aten::wait"})


@dataclass
class _TaskState:
    priority: float
    status: str = "queued"  # queued (spawned, not started), running, blocked (in a wait), done
    thread: int = 0


class PCTPolicy:
    """PCT on the inter-op pool: run the highest-priority runnable task, lower priorities at ``depth - 1`` steps.

    Priorities: each task draws one in ``[depth, depth + 1)`` (keyed by seed and task id); the i-th change point,
    a random step in ``[1, steps]``, drops the task running it to priority ``i``. A task outranked by a running one
    (or by a queued one while a pool thread is free) backs off until no task has stepped for ``max_wait`` seconds;
    back-offs end for good ``budget`` seconds after the run's first point. So a high-priority task waiting on a
    low-priority one is blocked in ``aten::wait`` and outranks nobody, and any other dependency PCT cannot see
    (a lock, a full pool) costs at most the bounded waits: a run is never more than ``budget`` slower.
    ``leader``: a task that starts above every drawn priority (the root, so that the order its forks start in is
    the drawn one, not the order they were forked in).
    """

    focusable = False  # a task's state (running, blocked, done) and the step count come from every point

    def __init__(
        self,
        seed: int,
        depth: int = 2,
        steps: int = 64,
        max_wait: float = 2e-3,
        budget: float = 50e-3,
        leader: int | None = None,
    ):
        if depth < 1 or steps < 1:
            raise ValueError(f"PCTPolicy: depth and steps must be at least 1, not {depth} and {steps}")
        if max_wait < 0 or budget < 0:
            raise ValueError("PCTPolicy: max_wait and budget must not be negative")
        self.seed, self.depth, self.steps, self.max_wait, self.budget = seed, depth, steps, max_wait, budget
        self.leader = leader
        rng = random.Random(seed)
        points = rng.sample(range(1, steps + 1), min(depth - 1, steps))
        self.change_points = {step: float(i) for i, step in enumerate(sorted(points), start=1)}
        self._cond = threading.Condition(threading.Lock())
        self._pool = 0
        self.begin(None)

    def begin(self, sites: Mapping[int, Site] | None) -> None:
        if not self._pool:
            import torch  # reads the setting; does not start the pool (set_num_interop_threads still works)

            self._pool = torch.get_num_interop_threads()
        with self._cond:
            self._sites: Mapping[int, Site] = sites or {}
            self._tasks: dict[int, _TaskState] = {}
            self._stop = float("inf")  # back-offs end ``budget`` seconds after the run's first point
            self._caller = 0  # the thread the root task starts on: not a pool thread
            self.step = 0  # steps taken in this run (calibrates ``steps`` for the next schedules)
            self.waited = 0.0  # seconds spent backing off in this run, summed over tasks
            self.delays = 0  # points where a task backed off
            self.timeouts = 0  # back-offs that ended on the clock, the higher task still runnable

    @property
    def priorities(self) -> dict[int, float]:
        """Current priority of each task seen in this run."""
        with self._cond:
            return {task: state.priority for task, state in self._tasks.items()}

    def _state(self, task: int) -> _TaskState:
        state = self._tasks.get(task)
        if state is None:
            drawn = self.depth + (1.0 if task == self.leader else unit(self.seed, task))
            state = self._tasks[task] = _TaskState(drawn)
        return state

    def on_point(self, site: int, task: int) -> None:
        info = self._sites.get(site)
        event = info.event if info is not None else "op"
        with self._cond:
            if event == "spawn":
                self._state(task)
                self._cond.notify_all()
                return
            state = self._state(task)
            state.status, state.thread = "running", threading.get_ident()
            if not self.step:
                self._stop = time.monotonic() + self.budget
            if task == 0 and not self._caller:
                self._caller = state.thread
            self.step += 1
            if self.step in self.change_points:
                state.priority = self.change_points[self.step]
            self._cond.notify_all()
            self._wait_turn(task, state)
            if event == "end":
                state.status = "done"
                self._cond.notify_all()
            elif event == "op" and info is not None and info.kind in BLOCKING:
                state.status = "blocked"
                self._cond.notify_all()

    def _wait_turn(self, task: int, state: _TaskState) -> None:
        """Back off while outranked, until no task has stepped for ``max_wait`` or the run's budget is spent."""
        start = now = time.monotonic()
        seen, deadline = self.step, now + self.max_wait
        delayed = False
        while self._outranked(task, state):
            if self.step != seen:  # someone is progressing: keep the turn order
                seen, deadline = self.step, now + self.max_wait
            remaining = min(deadline, self._stop) - now
            if remaining <= 0:
                break
            delayed = True
            self._cond.wait(remaining)
            now = time.monotonic()
        if delayed:
            self.waited += now - start
            self.delays += 1
            if self._outranked(task, state):
                self.timeouts += 1

    def _outranked(self, task: int, state: _TaskState) -> bool:
        busy = {s.thread for s in self._tasks.values() if s.status == "running" and s.thread != self._caller}
        free_thread = len(busy) < self._pool
        for other, s in self._tasks.items():
            if other == task or (s.priority, -other) <= (state.priority, -task):
                continue
            if s.status == "running" or (s.status == "queued" and free_thread):
                return True
        return False


class PCT:
    """PCT under forkcheck's own scheduler: the highest-priority runnable task runs at every switch point.

    Every task gets a random priority (all above ``depth``); at ``depth - 1`` random steps among the first ``steps``
    (switch points where the current task can go on) the current task drops to a priority below every initial one.
    All randomness is drawn in the constructor (so Hypothesis data works from any thread later): priorities for the
    first ``max_tasks`` tasks and the change points; a drawn change point of 0 means "none", so a shrunk schedule
    has fewer preemptions.
    """

    any_thread = True

    def __init__(self, source: Source, depth: int = 3, steps: int = 48, max_tasks: int = 16):
        if depth < 1 or steps < 1 or max_tasks < 1:
            raise ValueError("PCT needs depth >= 1, steps >= 1 and max_tasks >= 1")
        draw = as_draw(source)
        self.depth = depth
        self.steps = steps
        self.max_tasks = max_tasks
        order = list(range(max_tasks))  # Fisher-Yates; all-zero draws keep task-id order (the root first)
        for i in range(max_tasks - 1, 0, -1):
            j = i - draw(i + 1)
            order[i], order[j] = order[j], order[i]
        self.priority = {task: depth + max_tasks - rank for rank, task in enumerate(order)}
        self._late_seed = draw(2**31)  # priorities of tasks past ``max_tasks``
        points = [draw(steps + 1) for _ in range(depth - 1)]
        self.change_points = {step: depth - 1 - i for i, step in enumerate(points) if step and step not in points[:i]}
        self.step = 0

    def _priority(self, task: int) -> float:
        if task not in self.priority:
            late = random.Random(self._late_seed * 1_000_003 + task).random()  # among the initial priorities
            self.priority[task] = self.depth + late * (self.max_tasks + 1)
        return self.priority[task]

    def pick(self, options: Sequence[int], can_continue: bool) -> int:
        if can_continue:
            self.step += 1
            lowered = self.change_points.get(self.step)
            if lowered is not None:
                self.priority[options[0]] = lowered
        if len(options) == 1:
            return 0
        best = 0
        for index in range(1, len(options)):
            if self._priority(options[index]) > self._priority(options[best]):
                best = index
        return best


def policy(seed: int, params: Mapping[str, int]) -> PCTPolicy:
    """The real runtime's side of a ``pct`` schedule."""
    return PCTPolicy(seed, params["d"], params["k"], params["w"] / 1e6, params["b"] / 1e6)


def chooser(seed: int, params: Mapping[str, int]) -> PCT:
    """forkcheck's own scheduler's side of a ``pct`` schedule: the same depth and steps (the back-off bounds of the
    real runtime do not apply: a controlled task never waits on the clock)."""
    return PCT(random.Random(seed), depth=params["d"], steps=params["k"])
