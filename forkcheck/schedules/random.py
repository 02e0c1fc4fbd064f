"""The ``random`` strategy: at each scheduling point, a drawn choice.

- :class:`RandomPolicy`, on the real runtime: the task goes on, yields or sleeps a short drawn time. Its draws are
  keyed by ``(seed, task, step)`` (``_draws.mix``), as pool threads reach points in any order.
- :class:`RandomChoices`, under forkcheck's own scheduler: the next task uniformly among the runnable ones, drawn
  from a ``random.Random`` stream (one thread decides at a time). The real runtime's parameters (``p``, ``s``,
  ``b``) do not apply: every switch point is a choice.

The two draw differently because they decide different things; what they share is the seed a ``Schedule`` gives
both, and ``_draws``.
"""
from __future__ import annotations

import random as _random  # the standard library's: this module is ``forkcheck.schedules.random``
import threading
import time
from typing import TYPE_CHECKING, Mapping, Union

from ._draws import as_draw, mix
from .decisions import Choices

if TYPE_CHECKING:
    from ..instrument import Site

#: The parameters of a ``random`` schedule, all integers (name -> (low, high, default)).
PARAMS = {
    "p": (0, 1000, 900),  # probability of giving way at a point, per mille
    "s": (0, 100_000, 60),  # longest sleep, microseconds
    "b": (0, 10_000_000, 5_000),  # sleep budget per run, microseconds
}
#: The parameters a check draws, in these ranges (Hypothesis shrinks and replays them); the others keep defaults.
DRAWN = {"p": (300, 1000), "s": (10, 300)}


class RandomPolicy:
    """At each point, with probability ``p_yield``, give way: a bare yield, or a sleep of up to ``max_sleep`` seconds.

    Sleeps stop when ``budget`` seconds were slept in the run (yields go on), so a run is never much slower.
    A choice delays the op after its point only: the real runtime may call the policy at the points of ops that
    conflict and no others (``focusable``; see ``forkcheck.engines.script``).
    """

    focusable = True

    def __init__(self, seed: int, p_yield: float = 0.9, max_sleep: float = 60e-6, budget: float = 5e-3):
        if not 0.0 <= p_yield <= 1.0:
            raise ValueError(f"RandomPolicy: p_yield must be in [0, 1], not {p_yield}")
        if max_sleep < 0 or budget < 0:
            raise ValueError("RandomPolicy: max_sleep and budget must not be negative")
        self.seed, self.p_yield, self.max_sleep, self.budget = seed, p_yield, max_sleep, budget
        self._lock = threading.Lock()
        self.begin(None)

    def begin(self, sites: Mapping[int, Site] | None) -> None:
        with self._lock:
            self._spawns = {s for s, info in (sites or {}).items() if info.event == "spawn"}
            self._steps: dict[int, int] = {}
            self.slept = 0.0  # seconds slept in this run
            self.delays = 0  # points delayed in this run

    def choice(self, task: int, step: int) -> float | None:
        """What ``task`` does at its ``step``-th point: go on (``None``), yield (``0.0``) or sleep (seconds)."""
        draw = mix(self.seed, task, step)
        if (draw >> 11) / float(1 << 53) >= self.p_yield:
            return None
        if draw & 1:
            return (((draw >> 1) & 0x3FF) + 1) / 1024.0 * self.max_sleep
        return 0.0

    def on_point(self, site: int, task: int) -> None:
        if site in self._spawns:  # the parent announcing a child: not a step of either
            return
        with self._lock:
            step = self._steps[task] = self._steps.get(task, 0) + 1
        duration = self.choice(task, step)
        if duration is None:
            return
        with self._lock:
            self.delays += 1
            if self.slept + duration > self.budget:
                duration = 0.0
            self.slept += duration
        time.sleep(duration)  # 0: give up the GIL and the core to whoever waits


class RandomChoices(Choices):
    """Uniform choices from a ``random.Random`` (or a seed): the same seed, the same schedule."""

    def __init__(self, source: Union[_random.Random, int]):
        super().__init__(as_draw(source), any_thread=True)


def policy(seed: int, params: Mapping[str, int]) -> RandomPolicy:
    """The real runtime's side of a ``random`` schedule."""
    return RandomPolicy(seed, params["p"] / 1000, params["s"] / 1e6, params["b"] / 1e6)


def chooser(seed: int, params: Mapping[str, int]) -> RandomChoices:
    """forkcheck's own scheduler's side of a ``random`` schedule."""
    return RandomChoices(_random.Random(seed))
