"""Schedule policies on the real runtime: a read-modify-write race shows up in most runs, pure code never differs,
PCT orders tasks by priority without ever hanging; schedule values are validated and a portfolio draws by turns."""
from __future__ import annotations

import re
import threading
import time
from typing import Tuple

import pytest
import torch
from hypothesis import given, strategies as st
from torch import Tensor

from forkcheck._warnings import quiet_jit
from forkcheck.instrument import instrument
from forkcheck.replay import ReplayToken
from forkcheck.schedules import ALGORITHMS, PARAMS, PCTPolicy, RandomPolicy, Schedule, run_under
from forkcheck.schedules.portfolio import draw_schedules, schedules, with_steps

RUNS = 40

# -- programs -------------------------------------------------------------------------------------------------------


def bump(x: Tensor) -> Tensor:
    """Read ``x``, compute a while, write ``x + 1`` back: two of these forked together may lose an update."""
    v = x.clone()
    for _ in range(4):
        v = v + 1
        v = v - 1
    x.copy_(v + 1)
    return v


def racy(x: Tensor) -> Tensor:
    a = torch.jit.fork(bump, x)
    b = torch.jit.fork(bump, x)
    torch.jit.wait(a)
    torch.jit.wait(b)
    return x


def affine(x: Tensor) -> Tensor:
    v = x.clone()
    for _ in range(4):
        v = v * 1.5 + 1
    return v


def pure(x: Tensor) -> Tuple[Tensor, Tensor]:
    a = torch.jit.fork(affine, x)
    b = torch.jit.fork(affine, x * 2)
    return torch.jit.wait(a), torch.jit.wait(b)


def slow_low(x: Tensor) -> Tensor:
    y = x
    for _ in range(20):
        y = y + 1
    return y


def waits_on(f: torch.jit.Future[Tensor]) -> Tensor:
    return torch.jit.wait(f) * 2


def chain(x: Tensor) -> Tensor:
    low = torch.jit.fork(slow_low, x)  # task 1
    high = torch.jit.fork(waits_on, low)  # task 2 waits on task 1
    return torch.jit.wait(high) + torch.jit.wait(low)


def fan_out(x: Tensor) -> Tensor:
    futures = [torch.jit.fork(slow_low, x + i) for i in range(8)]  # more tasks than pool threads
    total = torch.zeros_like(x)
    for f in futures:
        total = total + torch.jit.wait(f)
    return total


_programs: dict = {}


def program(fn):
    """The instrumented, warmed-up program (scripted once per test session)."""
    if fn not in _programs:
        with quiet_jit():
            instrumented = instrument(torch.jit.script(fn))
        for _ in range(2):  # past the profiling run
            instrumented(torch.zeros(4))
        _programs[fn] = instrumented
    return _programs[fn]


def lost_updates(policies) -> int:
    """How many runs of ``racy`` (one per policy) ended with one increment lost."""
    racy_program = program(racy)
    lost = 0
    for policy in policies:
        x = torch.zeros(4)
        run_under(policy, racy_program, x)
        assert x[0].item() in (1.0, 2.0)
        lost += x[0].item() == 1.0
    return lost


# -- perturbation finds the race ------------------------------------------------------------------------------------


def test_random_policy_shows_the_lost_update_in_most_runs():
    # measured: 99-100 % of runs (instrumented without a hook: 0-70 %, plain: under 1 %)
    assert lost_updates(RandomPolicy(seed) for seed in range(RUNS)) >= 0.7 * RUNS


def test_pct_shows_the_lost_update_often():
    # a depth-2 bug: found when a change point falls between a task's read and its write.
    # measured with depth 3 and k = the run's steps: 50-55 % of runs (depth 2: about 30 %, depth 1: 0 %)
    steps = program(racy).steps
    assert lost_updates(PCTPolicy(seed, depth=3, steps=steps) for seed in range(RUNS)) >= 0.25 * RUNS


class Recording:
    """A policy that also notes which task passed each op point, in order."""

    def __init__(self, policy):
        self.policy, self.passes = policy, []

    def begin(self, sites):
        self.sites = sites
        self.policy.begin(sites)

    def on_point(self, site: int, task: int) -> None:
        self.policy.on_point(site, task)
        if self.sites[site].event == "op":
            self.passes.append(task)


def test_pct_depth_one_runs_tasks_whole_in_priority_order():
    # no change point: a task runs only when no runnable task outranks it, so the two bumps never interleave and
    # the update is never lost; when both are forked before either may start (the root outranks task 1), the
    # higher-priority one runs first
    steps = program(racy).steps
    ordered = 0
    for seed in range(RUNS):
        recording = Recording(PCTPolicy(seed, depth=1, steps=steps))
        assert lost_updates([recording]) == 0 or recording.policy.timeouts, seed
        if recording.policy.timeouts:  # a bounded back-off ran out (a descheduled thread): no promise
            continue
        bumps = "".join(str(task) for task in recording.passes if task in (1, 2))
        assert re.fullmatch("1+2+|2+1+", bumps) and bumps.count("1") == bumps.count("2"), (seed, bumps)
        priority = recording.policy.priorities
        if priority[0] > priority[1] < priority[2]:
            assert bumps.startswith("2"), seed
            ordered += 1
    assert ordered >= 5


@pytest.mark.parametrize("make", [lambda s: RandomPolicy(s), lambda s: PCTPolicy(s, depth=3, steps=30)],
                         ids=["random", "pct"])
def test_a_pure_program_never_differs(make):
    pure_program = program(pure)
    x = torch.linspace(-3, 3, 7)
    with quiet_jit():
        expected = torch.jit.script(pure)(x)
    for seed in range(RUNS):
        out = run_under(make(seed), pure_program, x)
        assert all(torch.equal(a, b) for a, b in zip(out, expected)), seed
    assert torch.equal(x, torch.linspace(-3, 3, 7))


# -- PCT on a real pool: bounded, never stuck -----------------------------------------------------------------------


def test_pct_lets_a_low_priority_task_run_while_a_high_one_waits_for_it():
    chained = program(chain)
    x = torch.arange(3.0)
    expected = (x + 20) * 2 + (x + 20)
    inverted = 0
    for seed in range(20):
        policy = PCTPolicy(seed, depth=1, steps=64)
        out = run_under(policy, chained, x)
        assert torch.equal(out, expected)
        if policy.priorities[2] > policy.priorities[1]:
            inverted += 1
            # the waiting task outranks nobody: the low one never backs off until the clock runs out
            assert policy.timeouts <= 2, (seed, policy.timeouts)
    assert inverted >= 3  # the case happened


def test_pct_with_more_tasks_than_pool_threads_finishes():
    fanned = program(fan_out)
    x = torch.zeros(2)
    for seed in range(10):
        policy = PCTPolicy(seed, depth=3, steps=200)
        out = run_under(policy, fanned, x)
        assert torch.equal(out, torch.full((2,), 20.0 * 8 + sum(range(8))))


def _two_tasks(seed: int):
    """Two task ids, the higher-priority one first, under ``seed``."""
    policy = PCTPolicy(seed, depth=1)
    policy.on_point(0, 1)
    policy.on_point(0, 2)
    return (1, 2) if policy.priorities[1] > policy.priorities[2] else (2, 1)


@pytest.mark.parametrize("max_wait, budget", [(0.05, 10.0), (10.0, 0.05)], ids=["max_wait", "budget"])
def test_pct_back_off_behind_a_stalled_task_is_bounded(max_wait, budget):
    # the higher task holds a thread and takes no step (a long op, a lock PCT cannot see): the lower one backs
    # off until no task stepped for ``max_wait``, and never past ``budget`` after the run began
    high, low = _two_tasks(5)
    policy = PCTPolicy(5, depth=1, max_wait=max_wait, budget=budget)
    policy.begin(None)
    started, release = threading.Event(), threading.Event()

    def stalled() -> None:
        policy.on_point(0, high)
        started.set()
        release.wait(5)

    thread = threading.Thread(target=stalled)
    thread.start()
    try:
        assert started.wait(5)
        start = time.monotonic()
        policy.on_point(1, low)
        elapsed = time.monotonic() - start
        assert elapsed >= 0.04 and policy.timeouts == 1 and policy.delays == 1  # it waited, and gave up once
        start = time.monotonic()
        policy.on_point(2, low)  # outranked again: the clock runs out again, or the budget is gone for good
        elapsed = time.monotonic() - start
        if budget < 1:  # past the budget it no longer backs off at all
            assert (policy.timeouts, policy.delays) == (1, 1)
        else:  # within the budget it backs off again, for max_wait
            assert elapsed >= 0.04 and (policy.timeouts, policy.delays) == (2, 2)
    finally:
        release.set()
        thread.join()


def test_random_policy_sleeps_within_its_budget():
    policy = RandomPolicy(1, p_yield=1.0, max_sleep=5e-3, budget=2e-3)
    lost_updates([policy])
    assert policy.slept <= 2e-3 + 5e-3 and policy.delays > 10  # the budget, counted by the policy itself


def test_policies_are_thread_safe():
    calls_per_thread = 300
    for policy in (RandomPolicy(3, p_yield=1.0, max_sleep=20e-6), PCTPolicy(3, depth=3, steps=600, max_wait=1e-4)):
        policy.begin(None)
        errors: list = []

        def hammer(task: int) -> None:
            try:
                for site in range(calls_per_thread):
                    policy.on_point(site, task)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=hammer, args=(task,)) for task in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert not errors and not any(thread.is_alive() for thread in threads)
        if isinstance(policy, PCTPolicy):
            assert policy.step == 4 * calls_per_thread
        else:
            assert policy._steps == {task: calls_per_thread for task in range(4)}


# -- reproducible choices ------------------------------------------------------------------------------------------


def test_random_choices_depend_on_seed_task_and_step_only():
    first, again, other = RandomPolicy(7), RandomPolicy(7), RandomPolicy(8)
    keys = [(task, step) for task in (0, 1, 2, 1001) for step in range(1, 200)]
    choices = [first.choice(*key) for key in keys]
    assert choices == [again.choice(*key) for key in reversed(keys)][::-1]
    assert choices != [other.choice(*key) for key in keys]
    given_way = [c for c in choices if c is not None]
    assert 0.8 < len(given_way) / len(choices) < 0.97  # p_yield 0.9
    assert all(0.0 <= c <= 60e-6 for c in given_way) and 0.0 in given_way and max(given_way) > 30e-6


def test_pct_priorities_and_change_points_come_from_the_seed():
    a, b, other = (PCTPolicy(seed, depth=4, steps=10**6) for seed in (11, 11, 12))
    assert a.change_points == b.change_points != other.change_points
    assert sorted(a.change_points.values()) == [1.0, 2.0, 3.0]
    assert all(4 < step <= 10**6 for step in a.change_points)  # none among the 4 steps below
    for policy in (a, b, other):
        for task in (0, 1, 2, 1001):
            policy.on_point(0, task)
    assert a.priorities == b.priorities != other.priorities
    assert len(set(a.priorities.values())) == 4 and all(4 <= p < 5 for p in a.priorities.values())
    small = PCTPolicy(3, depth=3, steps=2)
    assert sorted(small.change_points) == [1, 2]
    small.on_point(0, 7)  # step 1 is a change point: task 7 drops below every initial priority
    assert small.priorities == {7: 1.0}


# -- schedule values and the portfolio -------------------------------------------------------------------------------


@given(schedules("pct", k=17, w=500))
def test_pinned_parameters_stay_pinned(schedule):
    assert schedule.params["k"] == 17 and schedule.params["w"] == 500 and 1 <= schedule.params["d"] <= 3


def test_schedule_values_are_validated_and_build_their_policy():
    with pytest.raises(ValueError, match="unknown schedule strategy"):
        Schedule("fifo", 1)
    with pytest.raises(ValueError, match="unknown pct schedule parameters"):
        Schedule("pct", 1, {"p": 3})
    with pytest.raises(ValueError, match="seed"):
        Schedule("pct", -1)
    with pytest.raises(ValueError, match="unknown schedule strategy"):
        schedules("fifo")
    with pytest.raises(ValueError, match="unknown random schedule parameters"):
        schedules("random", d=2)
    with pytest.raises(ValueError, match=re.escape("k=0 is not in [1, 10000000]")):
        schedules("pct", k=0)
    assert Schedule("pct", 5).params == {name: spec[2] for name, spec in PARAMS["pct"].items()}
    random_policy = Schedule("random", 5, {"p": 250, "s": 40}).policy()
    assert isinstance(random_policy, RandomPolicy)
    assert (random_policy.seed, random_policy.p_yield, random_policy.max_sleep) == (5, 0.25, 40e-6)
    pct_policy = Schedule("pct", 5, {"d": 3, "k": 20}).policy()
    assert isinstance(pct_policy, PCTPolicy) and (pct_policy.depth, pct_policy.steps) == (3, 20)
    # a check remembers a failing example by its schedules: equal values are one key
    assert Schedule("pct", 5, {"d": 2}) == Schedule("pct", 5) and hash(Schedule("pct", 5, {"d": 2})) == hash(
        Schedule("pct", 5))
    assert len({Schedule("pct", 5), Schedule("pct", 6), Schedule("random", 5), Schedule("pct", 5, {"k": 9})}) == 4


def test_each_algorithm_draws_only_parameters_it_takes_within_their_bounds():
    for name, algorithm in ALGORITHMS.items():
        assert set(algorithm.DRAWN) <= set(algorithm.PARAMS), name
        for param, (low, high) in algorithm.DRAWN.items():
            bounds = algorithm.PARAMS[param]
            assert bounds[0] <= low <= high <= bounds[1], (name, param)


@given(st.data())
def test_a_portfolio_takes_random_and_pct_by_turns_and_counted_steps_reach_pct_only(data):
    drawn = draw_schedules(lambda source, label: data.draw(source, label=label), "portfolio", 5)
    assert [s.strategy for s in drawn] == ["random", "pct", "random", "random", "pct"]
    assert len({s.seed for s in drawn}) == 5  # each position mixed into its seed
    counted = with_steps(drawn, 321)
    assert [s.params.get("k") for s in counted] == [None, 321, None, None, 321]
    assert [s.seed for s in counted] == [s.seed for s in drawn] and with_steps(drawn, 0) == drawn


def test_a_replay_token_round_trips_what_a_replay_needs():
    token = ReplayToken("mod:f", "6.1", "AAAA", 3, strategy="portfolio", schedules=4, pool_size=2, pct_steps=88)
    assert ReplayToken.decode(token.encode()) == token
