"""How a check draws its schedules for one example, by ``--forkcheck-strategy``: one algorithm, or the
``portfolio`` of them by turns; as Hypothesis data (:func:`schedules`), so they shrink and replay."""
from __future__ import annotations

import functools
import zlib
from typing import Any, Callable

from . import ALGORITHMS, PARAMS, Schedule


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


def draw_schedules(draw: Callable[[Any, str], Schedule], strategy: str, count: int) -> list[Schedule]:
    """``count`` schedules as a check draws them for one example; ``draw(hypothesis_strategy, label)`` draws one.

    A portfolio takes its members by turns. Each schedule's position is mixed into its seed: Hypothesis
    starts from the simplest draw (seed 0), and ten copies of one schedule would test one interleaving ten times.
    """
    kinds = members(strategy)
    sources = {kind: _drawn_schedules(kind) for kind in kinds}
    drawn = []
    for index in range(count):
        schedule = draw(sources[kinds[index % len(kinds)]], f"schedule {index}")
        mixed = zlib.crc32(f"{schedule.seed}:{index}".encode()) | (schedule.seed << 32)
        drawn.append(Schedule(schedule.strategy, mixed % 2**64, schedule.params))
    return drawn


@functools.lru_cache(maxsize=None)
def _drawn_schedules(kind: str) -> Any:
    """``schedules(kind)``, built once: Hypothesis validates a new strategy (and describes its lambda from the
    source) on its first draw, which cost more than the runs of an example whose serial run is all it runs."""
    return schedules(kind)


def with_steps(drawn: list[Schedule], steps: int) -> list[Schedule]:
    """PCT schedules with their change points spread over ``steps`` (the counted steps of a run). Applied after the
    draw, so that what Hypothesis draws does not depend on the count (its replays must draw the same)."""
    return [Schedule(s.strategy, s.seed, {**s.params, "k": steps}) if s.strategy == "pct" and steps > 0 else s
            for s in drawn]
