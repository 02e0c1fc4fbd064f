"""Schedule strategies for forkcheck's controlled scheduler: who runs next at each switch point.

At every switch point the scheduler calls ``pick(options, can_continue)`` with the ids of the runnable tasks, the
current task first when it can go on, and runs ``options[index]``. Index 0 always means "no preemption", so a
schedule made of small numbers is a schedule with few preemptions, and Hypothesis shrinks toward it.

- :class:`Choices` wraps any ``choose(n) -> index`` callable, e.g. Hypothesis data:
  ``Choices(lambda n: data.draw(st.integers(0, n - 1)))``. Called only where there is a real choice (``n > 1``),
  and only on the thread that entered the scheduler (``any_thread = False``), where Hypothesis draws work.
- :class:`RandomChoices` draws uniformly at every choice from a ``random.Random`` (or a seed).
- :class:`PCT` is probabilistic concurrency testing (Burckhardt et al., ASPLOS 2010): random task priorities,
  ``depth - 1`` priority change points; the highest-priority runnable task runs.
- :class:`Replay` replays the decisions a scheduler recorded (``ControlledScheduler.decisions``), exactly.
"""
from __future__ import annotations

import random
from typing import Any, Callable, Optional, Protocol, Sequence, Union

Source = Union[random.Random, int, Callable[[int], int]]


class Strategy(Protocol):
    any_thread: bool  # False: the scheduler calls ``pick`` only on the thread that entered it

    def pick(self, options: Sequence[int], can_continue: bool) -> int:
        """Index into ``options`` (runnable task ids; the current task first when ``can_continue``)."""


class ReplayDiverged(Exception):
    """A replayed decision does not fit the schedule: the program did not behave as when it was recorded."""


def as_draw(source: Source) -> Callable[[int], int]:
    """``draw(n) -> int in [0, n)`` from a ``random.Random``, a seed, or such a callable."""
    if isinstance(source, random.Random):
        return source.randrange
    if isinstance(source, int) and not isinstance(source, bool):
        return random.Random(source).randrange
    if callable(source):
        return source
    raise TypeError(f"a source of randomness is a random.Random, a seed or a callable n -> [0, n); got {source!r}")


class Choices:
    """Any ``choose(n) -> index`` callable, asked only where ``n > 1``, on the scheduler's own thread.

    After ``max_choices`` calls it is asked no more and nothing is preempted (index 0): a bound on the draws a long
    program makes from Hypothesis data.
    """

    any_thread = False

    def __init__(self, choose: Callable[[int], int], *, any_thread: bool = False, max_choices: Optional[int] = None):
        self.choose = choose
        self.any_thread = any_thread
        self.left = max_choices

    def pick(self, options: Sequence[int], can_continue: bool) -> int:
        if len(options) == 1 or self.left == 0:
            return 0
        if self.left is not None:
            self.left -= 1
        return int(self.choose(len(options)))


class RandomChoices(Choices):
    """Uniform choices from a ``random.Random`` (or a seed): the same seed, the same schedule."""

    def __init__(self, source: Union[random.Random, int]):
        super().__init__(as_draw(source), any_thread=True)


class Replay:
    """The recorded decisions, one per real choice; past their end it never preempts (index 0)."""

    any_thread = True

    def __init__(self, decisions: Sequence[int]):
        self.decisions = [int(d) for d in decisions]
        self.position = 0

    def pick(self, options: Sequence[int], can_continue: bool) -> int:
        if len(options) == 1:
            return 0
        if self.position >= len(self.decisions):
            return 0
        index = self.decisions[self.position]
        self.position += 1
        if not 0 <= index < len(options):
            raise ReplayDiverged(f"decision {self.position} is {index} but only {len(options)} tasks can run there; "
                                 "the program took another path than when the schedule was recorded")
        return index


class PCT:
    """Probabilistic concurrency testing: a bug of depth ``d`` among ``n`` tasks and ``k`` steps shows with
    probability at least 1/(n k^(d-1)) per schedule.

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


def strategy_for(schedule: Any, steps: Optional[int] = None) -> Strategy:
    """The strategy a runner's schedule object asks for.

    Read attributes (all optional but one of ``decisions``, ``choose``, ``seed``): ``decisions`` (replay them),
    ``choose`` (a ``choose(n)`` callable, e.g. Hypothesis data), ``seed``, ``strategy`` (``"random"`` or ``"pct"``),
    ``depth`` and ``steps`` (PCT; or ``params["d"]`` and ``params["k"]`` of a ``forkcheck.schedule.Schedule``),
    ``max_choices`` (a bound on the calls to ``choose`` for ``"random"``). ``steps`` is the fallback for PCT's steps.
    """
    if hasattr(schedule, "pick"):  # a strategy already (an exhaustive search's run: ``forkcheck.dpor.Probe``)
        return schedule
    decisions = getattr(schedule, "decisions", None)
    if decisions is not None:
        return Replay(decisions)
    kind = getattr(schedule, "strategy", None) or "random"
    choose = getattr(schedule, "choose", None)
    if choose is None:
        seed = getattr(schedule, "seed", None)
        if seed is None:
            raise ValueError("a schedule needs decisions, a choose(n) callable or a seed")
        source: Source = random.Random(seed)
    else:
        source = choose
    if kind == "pct":
        params = getattr(schedule, "params", None) or {}
        return PCT(source, depth=getattr(schedule, "depth", None) or params.get("d") or 3,
                   steps=getattr(schedule, "steps", None) or params.get("k") or steps or 48)
    if kind != "random":
        raise ValueError(f"unknown schedule strategy {kind!r}: use 'random' or 'pct'")
    if choose is None:
        return RandomChoices(source)
    return Choices(choose, max_choices=getattr(schedule, "max_choices", None))
