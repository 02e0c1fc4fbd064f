"""Schedules: what decides, at each scheduling point, which task goes on; one module per algorithm, each serving
both engines.

A check draws :class:`Schedule` values (an algorithm, a seed, integer parameters; ``portfolio`` draws them for each
example) and hands each to an engine, which asks it for its side: ``schedule.policy()``, a :class:`Policy` the real
runtime calls at every point of every task (``script`` engine), or ``schedule.chooser()``, a :class:`Chooser` that
forkcheck's own scheduler asks who runs next (``eager`` engine). A :class:`Recorded` schedule replays the decisions
a controlled run recorded; ``forkcheck.dpor.Probe`` is a schedule of the exhaustive search.

- ``random``: :class:`RandomPolicy`, :class:`RandomChoices`; ``pct``: :class:`PCTPolicy`, :class:`PCT` (each module
  is an :class:`Algorithm`).
- ``portfolio``: the ``--forkcheck-strategy`` a check's schedules are drawn by (``draw_schedules``, Hypothesis's
  ``schedules()``).
- ``decisions``: choices made elsewhere (:class:`Choices` over a ``choose(n)`` callable, :class:`Replay`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence

from ..instrument import Instrumentation, Site, hooked
from . import pct, random
from .decisions import Choices, Recorded, Replay, ReplayDiverged
from .pct import PCT, PCTPolicy
from .random import RandomChoices, RandomPolicy


class Policy(Protocol):
    """The real runtime's side of a schedule: what a task does at a scheduling point."""

    #: Whether its choice at a point matters only for the op after it (``random``), so that an engine that knows
    #: which ops conflict may call it at their points only; ``pct`` tracks every task at every point (and is called
    #: at none where no op conflicted).
    focusable: bool

    def begin(self, sites: Mapping[int, Site] | None) -> None:
        """A run starts: forget the previous run; ``sites`` tells what each point is (``None``: all plain ops)."""

    def on_point(self, site: int, task: int) -> None:
        """Called by ``task`` at ``site``, on the thread running it; may delay the task (bounded)."""


class Chooser(Protocol):
    """forkcheck's own scheduler's side of a schedule: who runs next at a switch point."""

    any_thread: bool  # False: the scheduler calls ``pick`` only on the thread that entered it

    def pick(self, options: Sequence[int], can_continue: bool) -> int:
        """Index into ``options`` (runnable task ids; the current task first when ``can_continue``)."""


class Algorithm(Protocol):
    """A module of this package that serves both engines: its integer parameters and the two sides it builds."""

    PARAMS: Mapping[str, tuple[int, int, int]]  # name -> (low, high, default)
    DRAWN: Mapping[str, tuple[int, int]]  # the parameters a check draws, and their ranges

    def policy(self, seed: int, params: Mapping[str, int]) -> Policy: ...

    def chooser(self, seed: int, params: Mapping[str, int]) -> Chooser: ...


ALGORITHMS: dict[str, Algorithm] = {"random": random, "pct": pct}
#: Parameters of each algorithm, all integers (so a schedule is exact to print and to compare).
PARAMS = {name: algorithm.PARAMS for name, algorithm in ALGORITHMS.items()}
_SEED_MAX = 2**64 - 1


@dataclass(frozen=True)
class Schedule:
    """An algorithm (``strategy``: ``random`` or ``pct``), a seed and integer parameters: what a check draws, and
    enough to rebuild the same policy or chooser."""

    strategy: str
    seed: int
    params: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self):
        if self.strategy not in PARAMS:
            raise ValueError(f"unknown schedule strategy {self.strategy!r}; expected one of {sorted(PARAMS)}")
        if not (isinstance(self.seed, int) and 0 <= self.seed <= _SEED_MAX):
            raise ValueError(f"schedule seed must be an integer in [0, 2**64), not {self.seed!r}")
        spec = PARAMS[self.strategy]
        unknown = sorted(set(self.params) - set(spec))
        if unknown:
            raise ValueError(f"unknown {self.strategy} schedule parameters {unknown}; expected {sorted(spec)}")
        full = {name: self.params.get(name, default) for name, (_, _, default) in spec.items()}
        for name, value in full.items():
            low, high, _ = spec[name]
            if not (isinstance(value, int) and low <= value <= high):
                raise ValueError(f"{self.strategy} schedule parameter {name}={value!r} is not in [{low}, {high}]")
        object.__setattr__(self, "params", full)

    def policy(self) -> Policy:
        """A fresh policy making this schedule's choices on the real runtime."""
        return ALGORITHMS[self.strategy].policy(self.seed, self.params)

    def chooser(self) -> Chooser:
        """A fresh chooser making this schedule's choices under forkcheck's own scheduler."""
        return ALGORITHMS[self.strategy].chooser(self.seed, self.params)

    def __hash__(self) -> int:
        return hash((self.strategy, self.seed, tuple(sorted(self.params.items()))))


def run_under(policy: Policy, program: Instrumentation, *args: Any, **kwargs: Any) -> Any:
    """Run an instrumented program once with ``policy`` deciding at every point."""
    policy.begin(program.sites)
    with hooked(policy.on_point):
        return program.run(*args, **kwargs)


__all__ = ["ALGORITHMS", "Algorithm", "Chooser", "Choices", "PARAMS", "PCT", "PCTPolicy", "Policy", "RandomChoices",
           "RandomPolicy", "Recorded", "Replay", "ReplayDiverged", "Schedule", "run_under"]
