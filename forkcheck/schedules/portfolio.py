"""How a check draws its schedules for one example, by ``--forkcheck-strategy``: one algorithm, or the
``portfolio`` of them by turns, all from one Hypothesis draw (:func:`draw_schedules`), so they replay; and a
Hypothesis strategy of single schedules (:func:`schedules`) for tests of one's own."""
from __future__ import annotations

import functools
from typing import Any, Callable

from . import ALGORITHMS, PARAMS, Schedule
from ._draws import mix


def schedules(strategy: str = "random", **fixed: int) -> Any:
    """A Hypothesis strategy of :class:`Schedule` values: seed and parameters are drawn (they shrink and replay).

    ``fixed`` pins parameters, e.g. ``schedules("pct", k=calibrated_steps)``.
    """
    from hypothesis import strategies as st

    if strategy not in PARAMS:
        raise ValueError(f"unknown schedule strategy {strategy!r}; expected one of {sorted(PARAMS)}")
    Schedule(strategy, 0, fixed)  # unknown or out-of-range pinned parameters fail here, not at the first draw
    drawn = {name: st.integers(low, high) for name, (low, high) in ALGORITHMS[strategy].DRAWN.items()}
    params = {name: st.just(value) for name, value in fixed.items()}
    params.update({name: s for name, s in drawn.items() if name not in fixed})
    return st.builds(
        lambda seed, values: Schedule(strategy, seed, values),
        st.integers(0, 2**32 - 1),
        st.fixed_dictionaries(params),
    )


#: The policies a ``portfolio`` takes by turns, schedule by schedule: random finds lost updates fast, PCT the orders
#: that need one task far behind another; random twice as often, as lost updates need more tries.
PORTFOLIO = ("random", "pct", "random")


def members(strategy: str) -> tuple[str, ...]:
    """The policies a strategy's schedules use: itself, or the portfolio's (``exhaustive`` too, where schedules are
    drawn: on TorchScript's runtime and in marked tests, which forkcheck's exploration does not drive)."""
    return PORTFOLIO if strategy in ("portfolio", "exhaustive") else (strategy,)


def draw_schedules(draw: Callable[[Any, str], int], strategy: str, count: int) -> list[Schedule]:
    """``count`` schedules as a check draws them for one example; ``draw(hypothesis_strategy, label)`` draws one.

    One Hypothesis draw per example, a 64-bit seed: each schedule's own seed and drawn parameters are keyed by
    (that seed, its position) (``_draws.mix``), uniform in the ranges of ``DRAWN``. A draw per schedule and parameter
    cost a third of a passing check, and shrinking a failure the serial run shows tried every one of those choices
    though no schedule ran. A portfolio takes its members by turns.
    """
    kinds = members(strategy)
    base = draw(_example_seed(), "schedules")
    drawn = []
    for index in range(count):
        kind = kinds[index % len(kinds)]
        ranges = sorted(ALGORITHMS[kind].DRAWN.items())
        params = {name: low + mix(base, index, 1 + j) % (high - low + 1)
                  for j, (name, (low, high)) in enumerate(ranges)}
        drawn.append(Schedule(kind, mix(base, index), params))
    return drawn


@functools.lru_cache(maxsize=None)
def _example_seed() -> Any:
    """The one draw of an example's schedules, built once (Hypothesis validates a new strategy on its first draw)."""
    from hypothesis import strategies as st

    return st.integers(0, 2**64 - 1)


def with_steps(drawn: list[Schedule], steps: int) -> list[Schedule]:
    """PCT schedules with their change points spread over ``steps`` (the counted steps of a run). Applied after the
    draw, so that what Hypothesis draws does not depend on the count (its replays must draw the same)."""
    return [Schedule(s.strategy, s.seed, {**s.params, "k": steps}) if s.strategy == "pct" and steps > 0 else s
            for s in drawn]
