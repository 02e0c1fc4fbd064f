"""Pin, replay and enumerate the interleavings of your own ``torch.jit.fork``/``wait`` code, in a plain test.

In plain Python a fork runs inline, so a test of fork/wait code sees one interleaving only. Inside these blocks
forkcheck's own scheduler runs it: every forked task is a thread, one runs at a time, and it switches tasks at
forks, waits and before every tensor op, in an order you choose:

- :func:`controlled` runs a block under one interleaving: a ``seed``, recorded ``decisions`` (replayed exactly), or
  a ``choose(n)`` callable such as Hypothesis data, so ``@given(st.data())`` searches interleavings and shrinks
  a failing one toward fewer preemptions;
- :func:`interleavings` enumerates every interleaving of a block within a preemption bound (``for run in
  interleavings(preemptions=2): with run: ...``), and :func:`explore` runs a function under each and returns the
  failing ones, whose ``decisions`` pin them in a regression test.

A failure inside a block gets a note with that run's decisions. A deadlock raises :class:`Deadlock`, a schedule
that does not finish within ``timeout`` seconds :class:`ScheduleTimeout` (both :class:`ScheduleError`), recorded
decisions the program no longer follows :class:`ReplayDiverged`. One block runs at a time per process (blocks do not
nest); inside one the ``torch.jit`` deprecation warning is hidden.

>>> import torch
>>> from forkcheck.testing import controlled, explore
>>> def add_one(counter):                       # read, then write: two of these can lose an update
...     counter.copy_(counter.clone() + 1)
>>> def bump_twice():
...     counter = torch.zeros(1)
...     a, b = torch.jit.fork(add_one, counter), torch.jit.fork(add_one, counter)
...     torch.jit.wait(a), torch.jit.wait(b)
...     return counter.item()
>>> with controlled(decisions=[]):               # never preempt: one task after the other
...     bump_twice()
2.0
>>> def counts_both():
...     assert bump_twice() == 2.0
>>> found = explore(counts_both, preemptions=1)
>>> found.complete, len(found.failures)          # every interleaving with <= 1 preemption; two lose an update
(True, 2)
>>> with controlled(decisions=found.failures[0].decisions):
...     bump_twice()
1.0
"""
from __future__ import annotations

import threading
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

import torch

from . import _warnings
from .schedules import PCT, Choices, RandomChoices, Replay, ReplayDiverged
from .dpor import Exploration
from .engines.eager import ControlledScheduler, Deadlock, ScheduleError, ScheduleTimeout, race_log
from .settings import validate

__all__ = ["ControlledRun", "Deadlock", "Explored", "Failure", "Interleavings", "ReplayDiverged", "ScheduleError",
           "ScheduleTimeout", "controlled", "explore", "interleavings"]

_STRATEGIES = ("random", "pct")


class ControlledRun:
    """One interleaving of a block: enter it (``with run:``) to run the block under it, read it afterwards.

    ``decisions`` are the run's choices, one per switch point where more than one task could run: an index among
    the runnable tasks, the current one first when it can go on, the others in fork order (so 0 never preempts);
    ``controlled(decisions=run.decisions)`` replays the run. ``order`` lists the task ids in the order they got to
    run (0 is the block itself, 1, 2, ... the forked tasks in fork order); ``preemptions`` counts the switches away
    from a task that could go on.
    """

    def __init__(self, chooser: Any, timeout: Optional[float], observer: Any = None):
        self._chooser = chooser
        self._scheduler = ControlledScheduler(chooser, timeout=timeout, observer=observer)
        self._log = observer
        self._stack = ExitStack()
        self._entered = False

    @property
    def decisions(self) -> list[int]:
        return list(self._scheduler.decisions)

    @property
    def order(self) -> list[int]:
        return list(self._scheduler.order)

    @property
    def preemptions(self) -> int:
        return self._scheduler.preemptions

    def __enter__(self) -> "ControlledRun":
        if self._entered:
            raise RuntimeError("a ControlledRun runs its block once; make a new one (controlled(...)) for the next")
        self._entered = True
        installed = getattr(torch._C.fork, "__self__", None)
        if isinstance(installed, ControlledScheduler) and installed._controller == threading.get_ident():
            raise RuntimeError("controlled blocks do not nest: this thread is inside one already")
        with ExitStack() as stack:
            stack.enter_context(_warnings.quiet_jit())
            stack.enter_context(self._scheduler)
            self._stack = stack.pop_all()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Optional[bool]:
        try:
            self._stack.__exit__(exc_type, exc, tb)
        except Exception as err:  # raised while the tasks nobody waited for finished
            self._note(err)
            raise
        if exc is not None:
            if isinstance(exc, Exception):
                self._note(exc)
            return None
        replay = self._chooser
        if isinstance(replay, Replay) and replay.position < len(replay.decisions):
            raise ReplayDiverged(f"the block made {replay.position} choices but {len(replay.decisions)} decisions "
                                 "were given: the program took another path than when they were recorded (pass "
                                 "the decisions a run of this block recorded, `run.decisions`)")
        return None

    def _note(self, err: Exception) -> None:
        if isinstance(err, ReplayDiverged):
            err.add_note("forkcheck.testing: each decision is an index among the tasks that can run at one choice "
                         "(0: the current task goes on); replay the decisions a run of this block recorded "
                         "(`run.decisions`)")
            return
        err.add_note(f"forkcheck.testing: under the interleaving with decisions {self.decisions}; replay it with "
                     f"`with forkcheck.testing.controlled(decisions={self.decisions}):`")


def controlled(seed: Optional[int] = None, *, decisions: Optional[Sequence[int]] = None,
               choose: Any = None, strategy: str = "random", timeout: Optional[float] = 60.0) -> ControlledRun:
    """A block under one interleaving, chosen by exactly one of:

    - ``seed``: drawn from that seed (``strategy="random"``, uniform at every choice, or ``"pct"``, probabilistic
      concurrency testing); the same seed, the same interleaving;
    - ``decisions``: recorded ``run.decisions``, replayed exactly (a shorter list: no preemption past its end);
    - ``choose``: a ``choose(n) -> index in [0, n)`` callable asked at each real choice, on the thread that entered
      the block, or a Hypothesis ``st.data()`` object (its draws are the choices, shrinking toward 0: fewer
      preemptions).

    >>> import torch
    >>> from forkcheck.testing import controlled
    >>> with controlled(seed=3) as run:
    ...     future = torch.jit.fork(torch.add, torch.ones(2), 1)
    ...     total = torch.jit.wait(future).sum().item()
    >>> total, run.order[0]
    (4.0, 0)
    """
    given = [name for name, value in (("seed", seed), ("decisions", decisions), ("choose", choose))
             if value is not None]
    if len(given) != 1:
        raise TypeError("controlled() takes exactly one of seed=, decisions= or choose= (decisions=[]: never "
                        f"preempt); got {' and '.join(given) or 'none'}")
    if strategy not in _STRATEGIES:
        raise ValueError(f"controlled(strategy={strategy!r}): use one of {', '.join(map(repr, _STRATEGIES))}")
    if decisions is not None:
        if strategy != "random":
            raise TypeError(f"controlled(decisions=...) replays them; strategy={strategy!r} applies to seed= or "
                            "choose= only")
        return ControlledRun(Replay(_decisions(decisions)), _timeout(timeout))
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"controlled(seed=...) takes an int, got {seed!r}")
        return ControlledRun(PCT(seed) if strategy == "pct" else RandomChoices(seed), _timeout(timeout))
    draw = _draws(choose)
    return ControlledRun(PCT(draw) if strategy == "pct" else Choices(draw), _timeout(timeout))


class Interleavings:
    """Every interleaving of a block with at most ``preemptions`` preemptions, one :class:`ControlledRun` each.

    Interleavings that differ only in the order of independent steps (no two touch one tensor storage, list or
    dict with one writing) run once (dynamic partial-order reduction). Lists and dicts are seen through their
    methods only: an order that matters only through a subscript, ``len`` or other Python state is not tried. Each
    run learns from the last one's accesses, so enter each run before asking for the next, and make the block's state
    afresh in every run.
    After the loop: ``complete`` (all were run; false when ``budget`` runs were not enough), ``runs`` and
    ``interleavings`` (distinct ones seen).
    """

    def __init__(self, preemptions: int = 2, *, budget: int = 500, timeout: Optional[float] = 60.0):
        checked = validate({"preemptions": preemptions, "budget": budget})
        self.timeout = _timeout(timeout)
        self._search = Exploration(checked["preemptions"], checked["budget"])

    def __iter__(self) -> Iterator[ControlledRun]:
        for probe in self._search:
            run = ControlledRun(probe, self.timeout, observer=race_log())
            yield run
            if not run._entered:
                raise RuntimeError("enter each interleaving (`with run:`) before asking for the next: the search "
                                   "learns the next one from its accesses")
        if self._search.diverged:
            raise ReplayDiverged(self._search.diverged)

    @property
    def complete(self) -> bool:
        return self._search.complete

    @property
    def runs(self) -> int:
        return self._search.runs

    @property
    def interleavings(self) -> int:
        return self._search.interleavings


def interleavings(preemptions: int = 2, *, budget: int = 500, timeout: Optional[float] = 60.0) -> Interleavings:
    """Enumerate a block's interleavings: assert a property in each; a failing one's error notes its decisions.

    >>> import torch
    >>> from forkcheck.testing import interleavings
    >>> search = interleavings(preemptions=2)
    >>> for run in search:
    ...     with run:
    ...         total = torch.zeros(1)
    ...         futures = [torch.jit.fork(total.add_, k) for k in (1, 2)]   # each add_ is one op
    ...         _ = [torch.jit.wait(f) for f in futures]
    ...         assert total.item() == 3.0
    >>> search.complete, search.interleavings      # the two orders of the adds
    (True, 2)
    """
    return Interleavings(preemptions, budget=budget, timeout=timeout)


@dataclass
class Failure:
    """One failing interleaving: its ``decisions`` (for ``controlled(decisions=...)``) and what it raised."""

    decisions: list[int]
    error: Exception


@dataclass
class Explored:
    """What :func:`explore` found: ``failures`` (one per distinct failing interleaving, in the order found),
    ``runs``, ``interleavings`` (distinct ones run) and ``complete`` (every one within the bound was run)."""

    failures: list[Failure]
    runs: int
    interleavings: int
    complete: bool


def explore(fn: Callable[[], Any], *, preemptions: int = 2, budget: int = 500,
            timeout: Optional[float] = 60.0) -> Explored:
    """Call ``fn()`` under every interleaving within ``preemptions`` (see :func:`interleavings`); collect those
    where it raised (an assertion, a task's error, a :class:`Deadlock`...). ``fn`` makes its state afresh each call.
    """
    from .interleavings import signature

    search = Interleavings(preemptions, budget=budget, timeout=timeout)
    failures: list[Failure] = []
    failed: set[int] = set()
    for run in search:
        try:
            with run:
                fn()
        except ReplayDiverged:
            raise
        except Exception as err:
            trace = signature(run._log)
            if trace not in failed:
                failed.add(trace)
                failures.append(Failure(run.decisions, err))
    return Explored(failures, search.runs, search.interleavings, search.complete)


def _decisions(decisions: Sequence[int]) -> list[int]:
    if isinstance(decisions, (str, bytes)) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                      for d in decisions):
        raise ValueError(f"controlled(decisions=...) takes whole numbers >= 0 (indices among the tasks that can run "
                         f"at each choice, as `run.decisions` records them), got {decisions!r}")
    return list(decisions)


def _draws(choose: Any) -> Callable[[int], int]:
    if hasattr(choose, "draw"):  # Hypothesis data
        from hypothesis import strategies as st

        return lambda n: choose.draw(st.integers(0, n - 1), label="forkcheck choice")
    if callable(choose):
        return choose
    raise TypeError(f"controlled(choose=...) takes a choose(n) -> index callable or Hypothesis data "
                    f"(st.data()), got {choose!r}")


def _timeout(timeout: Optional[float]) -> Optional[float]:
    return None if timeout is None else validate({"timeout": timeout})["timeout"]
