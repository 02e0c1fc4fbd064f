"""Schedule policies: what a task does at each scheduling point, and replayable ``Schedule`` values.

A policy is called at every point of every task (see :mod:`forkcheck.instrument`), from whichever pool thread runs
the task, and may delay the task there. Delays are bounded: a policy never blocks a thread for long, so a program
that finishes unperturbed finishes perturbed too, a little later.

- :class:`RandomPolicy` goes on, yields or sleeps a short drawn time at each point.
- :class:`PCTPolicy` is probabilistic concurrency testing (Burckhardt et al., ASPLOS 2010) on a real thread pool:
  random task priorities, ``depth - 1`` priority drops at random steps, and a task outranked by a runnable one
  backs off (bounded) so the higher-priority task runs first.

Choices are keyed by ``(seed, task, step)``, not drawn from a shared stream, so a policy makes the same choices for
the same task whatever order the threads reach it in.
"""
from __future__ import annotations

import functools
import random
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

from forkcheck.instrument import Instrumentation, Site, hooked

_MASK = (1 << 64) - 1

#: Ops during which a task waits for another one: it is not runnable until its ``resume`` point.
BLOCKING = frozenset({"aten::wait"})


def _mix(*parts: int) -> int:
    """A 64-bit hash of integers (splitmix64 steps): independent draws keyed by seed, task and step."""
    h = 0x9E3779B97F4A7C15
    for part in parts:
        h = (h ^ (part & _MASK)) + 0x9E3779B97F4A7C15 & _MASK
        h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9 & _MASK
        h = (h ^ (h >> 27)) * 0x94D049BB133111EB & _MASK
        h ^= h >> 31
    return h


def _unit(*parts: int) -> float:
    """A float in [0, 1) keyed by the parts."""
    return (_mix(*parts) >> 11) / float(1 << 53)


class Policy(Protocol):
    """What a task does at a scheduling point."""

    def begin(self, sites: Mapping[int, Site] | None) -> None:
        """A run starts: forget the previous run; ``sites`` tells what each point is (``None``: all plain ops)."""

    def on_point(self, site: int, task: int) -> None:
        """Called by ``task`` at ``site``, on the thread running it; may delay the task (bounded)."""


def run_under(policy: Policy, program: Instrumentation, *args: Any, **kwargs: Any) -> Any:
    """Run an instrumented program once with ``policy`` deciding at every point."""
    policy.begin(program.sites)
    with hooked(policy.on_point):
        return program.run(*args, **kwargs)


class RandomPolicy:
    """At each point, with probability ``p_yield``, give way: a bare yield, or a sleep of up to ``max_sleep`` seconds.

    Sleeps stop when ``budget`` seconds were slept in the run (yields go on), so a run is never much slower.
    """

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
        draw = _mix(self.seed, task, step)
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
            drawn = self.depth + (1.0 if task == self.leader else _unit(self.seed, task))
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


# --------------------------------------------------------------------------------------------- replayable schedules

#: Parameters of each strategy, all integers (so tokens round-trip exactly): name -> (low, high, default).
PARAMS: dict[str, dict[str, tuple[int, int, int]]] = {
    "random": {
        "p": (0, 1000, 900),  # probability of giving way at a point, per mille
        "s": (0, 100_000, 60),  # longest sleep, microseconds
        "b": (0, 10_000_000, 5_000),  # sleep budget per run, microseconds
    },
    "pct": {
        "d": (1, 16, 2),  # bug depth: d - 1 priority change points
        "k": (1, 10_000_000, 64),  # expected steps per run (change points fall in [1, k])
        "w": (0, 1_000_000, 2_000),  # longest back-off at one point, microseconds
        "b": (0, 10_000_000, 50_000),  # back-offs end this long after a run starts, microseconds
    },
}
_SEED_MAX = 2**64 - 1
_EXAMPLE = "random:12345:p=900,s=60,b=5000:1a2b"


def _build(strategy: str, seed: int, params: Mapping[str, int]) -> Policy:
    if strategy == "random":
        return RandomPolicy(seed, params["p"] / 1000, params["s"] / 1e6, params["b"] / 1e6)
    return PCTPolicy(seed, params["d"], params["k"], params["w"] / 1e6, params["b"] / 1e6)


@dataclass(frozen=True)
class Schedule:
    """A strategy, a seed and integer parameters: enough to rebuild the same policy, and to print as a token."""

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
        """A fresh policy making this schedule's choices."""
        return _build(self.strategy, self.seed, self.params)

    def token(self) -> str:
        """A short, shell-safe string: ``strategy:seed:k=v,...:checksum``."""
        body = f"{self.strategy}:{self.seed}:" + ",".join(f"{k}={v}" for k, v in self.params.items())
        return f"{body}:{zlib.crc32(body.encode()) & 0xFFFF:04x}"

    @classmethod
    def from_token(cls, token: str) -> "Schedule":
        """Parse :meth:`token`'s output; anything else raises ``ValueError`` saying what is wrong."""

        def bad(why: str) -> ValueError:
            return ValueError(f"bad forkcheck replay token {token!r}: {why} (a token looks like {_EXAMPLE!r})")

        if not isinstance(token, str):
            raise bad("not a string")
        parts = token.strip().split(":")
        if len(parts) != 4:
            raise bad(f"expected 4 ':'-separated parts, found {len(parts)}")
        strategy, seed, params, checksum = parts
        body = f"{strategy}:{seed}:{params}"
        if checksum != f"{zlib.crc32(body.encode()) & 0xFFFF:04x}":
            raise bad("checksum mismatch (the token was altered or cut)")
        if strategy not in PARAMS:
            raise bad(f"unknown strategy {strategy!r}")
        if not seed.isdigit():
            raise bad(f"seed {seed!r} is not a non-negative integer")
        values: dict[str, int] = {}
        for item in params.split(",") if params else []:
            name, eq, value = item.partition("=")
            if not eq or not value.isdigit() or name in values:
                raise bad(f"parameter {item!r} is not name=integer (or repeats a name)")
            values[name] = int(value)
        if set(values) != set(PARAMS[strategy]):
            raise bad(f"{strategy} takes parameters {sorted(PARAMS[strategy])}, the token has {sorted(values)}")
        try:
            return cls(strategy, int(seed), values)
        except ValueError as exc:
            raise bad(str(exc)) from None

    def __str__(self) -> str:
        return self.token()

    def __hash__(self) -> int:
        return hash((self.strategy, self.seed, tuple(sorted(self.params.items()))))


def schedules(strategy: str = "random", **fixed: int) -> Any:
    """A Hypothesis strategy of :class:`Schedule` values: seed and parameters are drawn (they shrink and replay).

    ``fixed`` pins parameters, e.g. ``schedules("pct", k=calibrated_steps)``.
    """
    from hypothesis import strategies as st

    if strategy not in PARAMS:
        raise ValueError(f"unknown schedule strategy {strategy!r}; expected one of {sorted(PARAMS)}")
    Schedule(strategy, 0, fixed)  # unknown or out-of-range pinned parameters fail here, not at the first draw
    drawn: dict[str, Any] = {
        "random": {"p": st.integers(300, 1000), "s": st.integers(10, 300)},
        "pct": {"d": st.integers(1, 3)},
    }[strategy]
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
