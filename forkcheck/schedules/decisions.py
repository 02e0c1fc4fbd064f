"""Choices made elsewhere, for forkcheck's own scheduler: a ``choose(n)`` callable asked at each real choice, or the
decisions a scheduler recorded (``ControlledScheduler.decisions``), replayed exactly.

A decision is an index into the runnable tasks, the current task first when it can go on: index 0 means "no
preemption", so a list of small numbers is a schedule with few preemptions, and Hypothesis shrinks toward it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence


class ReplayDiverged(Exception):
    """A replayed decision does not fit the schedule: the program did not behave as when it was recorded."""


class Choices:
    """Any ``choose(n) -> index`` callable (e.g. Hypothesis data: ``Choices(lambda n: data.draw(st.integers(0,
    n - 1)))``), asked only where ``n > 1``, on the scheduler's own thread unless ``any_thread``.

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


@dataclass(frozen=True)
class Recorded:
    """A schedule of recorded decisions (what an ``exhaustive`` replay token carries). Only forkcheck's own
    scheduler makes decisions to record, so only it replays them: a ``Recorded`` has a chooser and no policy."""

    decisions: tuple[int, ...]

    def __post_init__(self):
        object.__setattr__(self, "decisions", tuple(int(d) for d in self.decisions))

    def chooser(self) -> Replay:
        """A fresh replay of the decisions."""
        return Replay(self.decisions)
