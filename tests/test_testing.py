"""``forkcheck.testing``: pinned, replayed, Hypothesis-driven and enumerated interleavings of a user's own fork/wait
code in a plain test, its errors, and the examples in its docstrings and the README."""
from __future__ import annotations

import doctest
import re
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import forkcheck.testing
from forkcheck.settings import SettingsError
from forkcheck.testing import (ControlledRun, Deadlock, ReplayDiverged, ScheduleError, ScheduleTimeout, controlled,
                               explore, interleavings)

fork = torch.jit.fork
wait = torch.jit.wait


@pytest.fixture(autouse=True)
def _unpatched():
    saved = (torch._C.fork, torch._C.wait)
    yield
    assert (torch._C.fork, torch._C.wait) == saved, "a block left torch._C.fork/wait patched"


# -- programs -----------------------------------------------------------------------------------------------------


def add_one(counter: torch.Tensor) -> None:
    value = counter.clone()  # read
    counter.copy_(value + 1)  # write


def bump_twice() -> float:
    """Two forked read-modify-writes of one counter: 2.0 unless both read before either writes."""
    counter = torch.zeros(1)
    a, b = fork(add_one, counter), fork(add_one, counter)
    wait(a)
    wait(b)
    return counter.item()


def bump_in_order() -> float:
    """The same updates, the second forked after the first was waited for: no interleaving loses one."""
    counter = torch.zeros(1)
    wait(fork(add_one, counter))
    wait(fork(add_one, counter))
    return counter.item()


def bump_each_own() -> float:
    """Two tasks, each updating its own counter: nothing shared."""
    counters = [torch.zeros(1), torch.zeros(1)]
    futures = [fork(add_one, c) for c in counters]
    for f in futures:
        wait(f)
    return sum(c.item() for c in counters)


def counts_both() -> None:
    assert bump_twice() == 2.0


def record(parts: list, k: int) -> None:
    parts.append(k)


def appends_in_fork_order() -> None:
    """Two tasks append to one Python list: the order is the schedule's."""
    parts: list = []
    a, b = fork(record, parts, 1), fork(record, parts, 2)
    wait(a)
    wait(b)
    assert parts == [1, 2]


# Switch points of ``bump_twice``: each fork (the block may go on: 0), the wait for a (the block cannot go on: 0 is a,
# 1 is b), and before each of a task's tensor ops (clone, add, copy_; 0 lets it go on). Decisions are recorded only
# where more than one task can run; past the end of a pinned list nothing is preempted.
SERIAL = []  # a runs to its end, then b
B_FIRST = [0, 0, 1]  # at the wait b runs first, then to its end, then a
LOST = [0, 0, 0, 0, 1]  # a reads (its clone), then before its add b runs whole, reading the same 0; a writes 1 again


# -- pinned interleavings -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("decisions, expected", [(SERIAL, 2.0), (B_FIRST, 2.0), (LOST, 1.0)],
                         ids=["serial", "b-first", "lost-update"])
def test_pinned_decisions_give_the_same_interleaving_and_outcome_every_time(decisions, expected) -> None:
    seen = set()
    for _ in range(10):
        with controlled(decisions=decisions) as run:
            value = bump_twice()
        assert value == expected
        seen.add((tuple(run.order), tuple(run.decisions), run.preemptions))
    assert len(seen) == 1
    ((order, recorded, preemptions),) = seen
    assert list(recorded[:len(decisions)]) == decisions and not any(recorded[len(decisions):])
    assert preemptions == (1 if decisions == LOST else 0)
    assert order[:2] == ((0, 1) if decisions != B_FIRST else (0, 2))  # the block forks, then a (or b) runs


@pytest.mark.parametrize("strategy", ["random", "pct"])
def test_a_seed_pins_an_interleaving_and_seeds_between_them_show_both_outcomes(strategy) -> None:
    outcomes = set()
    for seed in range(12):
        runs = set()
        for _ in range(10 if seed < 2 else 2):
            with controlled(seed=seed, strategy=strategy) as run:
                value = bump_twice()
            runs.add((value, tuple(run.order), tuple(run.decisions)))
        assert len(runs) == 1, (seed, runs)
        outcomes.add(value)
    assert outcomes == {1.0, 2.0}


def test_recorded_decisions_replay_the_same_interleaving_and_outcome() -> None:
    for seed in range(6):
        with controlled(seed=seed) as recorded:
            value = bump_twice()
        for _ in range(10):
            with controlled(decisions=recorded.decisions) as replayed:
                assert bump_twice() == value
            assert (replayed.order, replayed.decisions) == (recorded.order, recorded.decisions)


def test_a_failure_in_the_block_notes_the_decisions_that_replay_it() -> None:
    with pytest.raises(AssertionError) as caught:
        with controlled(decisions=LOST) as run:
            assert bump_twice() == 2.0
    (note,) = caught.value.__notes__
    assert f"controlled(decisions={run.decisions})" in note
    with controlled(decisions=run.decisions):
        assert bump_twice() == 1.0


# -- Hypothesis ---------------------------------------------------------------------------------------------------


def test_hypothesis_data_driving_the_choices_finds_and_shrinks_the_lost_update() -> None:
    failing: list[tuple[list[int], int]] = []

    @settings(max_examples=300, database=None, derandomize=True, deadline=None)
    @given(st.data())
    def updates_are_never_lost(data) -> None:
        with controlled(choose=data) as run:
            value = bump_twice()
        if value != 2.0:
            failing.append((run.decisions, run.preemptions))
        assert value == 2.0

    with pytest.raises(AssertionError, match="assert 1.0 == 2.0"):
        updates_are_never_lost()
    shrunk, preemptions = failing[-1]  # Hypothesis runs the shrunk example last
    assert 1 <= preemptions <= min(2, failing[0][1])  # a lost update needs one preemption; shrinking drops the rest
    for _ in range(10):
        with controlled(decisions=shrunk):
            assert bump_twice() == 1.0


def test_a_bare_choose_callable_is_asked_only_where_there_is_a_choice() -> None:
    asked: list[int] = []
    with controlled(choose=lambda n: asked.append(n) or 0) as run:
        assert bump_twice() == 2.0
    assert asked and all(n > 1 for n in asked) and len(asked) == len(run.decisions)


# -- enumeration --------------------------------------------------------------------------------------------------

# a and b each read the counter, then write it: of the 4!/(2!2!) = 6 orders of those four accesses, the two that
# differ only in the order of the two reads are one interleaving, so 4 distinct interleavings; within one preemption
# all are reachable (a read, then the other task's run to its end, needs one), without preemption only "a then b"
# and "b then a" (the block's wait lets either run first). Two of the 4 lose an update: both reads come before
# both writes, and either write comes last.


@pytest.mark.parametrize("preemptions, distinct, failing", [(0, 2, 0), (1, 4, 2), (2, 4, 2)])
def test_explore_finds_exactly_the_failing_interleavings_within_the_bound(preemptions, distinct, failing) -> None:
    found = explore(counts_both, preemptions=preemptions)
    assert found.complete and found.interleavings == distinct and found.runs >= distinct
    assert len(found.failures) == failing
    assert len({tuple(f.decisions) for f in found.failures}) == failing
    for failure in found.failures:
        assert isinstance(failure.error, AssertionError)
        for _ in range(10):
            with controlled(decisions=failure.decisions):
                assert bump_twice() == 1.0


def test_explore_sees_a_python_list_written_by_two_tasks() -> None:
    # a task's only switch points are its start and end: the order of the appends is chosen at the block's wait,
    # free of preemption: a first (passes) or b first (fails), two interleavings
    found = explore(appends_in_fork_order, preemptions=0)
    assert found.complete and found.interleavings == 2
    (failure,) = found.failures
    assert failure.decisions[:3] == B_FIRST and "[2, 1]" in str(failure.error)
    with pytest.raises(AssertionError):
        with controlled(decisions=B_FIRST):
            appends_in_fork_order()


@pytest.mark.parametrize("program", [bump_in_order, bump_each_own])
def test_explore_finds_nothing_in_race_free_programs(program) -> None:
    def holds() -> None:
        assert program() == 2.0

    found = explore(holds, preemptions=2)
    assert found.complete and not found.failures
    assert found.interleavings == 1  # no two tasks touch one storage unordered: one interleaving


def test_interleavings_asserts_a_property_in_each_and_the_failing_one_notes_its_decisions() -> None:
    search = interleavings(preemptions=1)
    results = []
    with pytest.raises(AssertionError) as caught:
        for run in search:
            with run:
                value = bump_twice()
                results.append(value)
                assert value == 2.0
    assert results[-1] == 1.0 and not search.complete
    (note,) = caught.value.__notes__
    decisions = [int(d) for d in re.search(r"decisions=\[([\d, ]*)\]", note).group(1).split(",")]
    with controlled(decisions=decisions):
        assert bump_twice() == 1.0

    holding = interleavings(preemptions=1)
    for run in holding:
        with run:
            assert bump_twice() in (1.0, 2.0)
    assert holding.complete and holding.interleavings == 4


def test_a_small_budget_leaves_the_search_incomplete() -> None:
    found = explore(counts_both, preemptions=2, budget=2)
    assert found.runs == 2 and not found.complete


# -- deadlocks, timeouts ------------------------------------------------------------------------------------------


def test_a_task_waiting_for_itself_is_a_deadlock() -> None:
    futures: list = []
    with pytest.raises(Deadlock, match=r"task 1 .* waits for task 1"):
        with controlled(decisions=[]):  # the block goes on at the fork: the list holds the future before it runs
            futures.append(fork(lambda: wait(futures[0])))
            wait(futures[0])


def test_a_cycle_of_waits_is_a_deadlock_and_a_schedule_error() -> None:
    def wait_for_the_other(futures: list, me: int) -> None:
        wait(futures[1 - me])

    futures: list = []
    with pytest.raises(ScheduleError, match="deadlock") as caught:
        with controlled(decisions=[]):
            futures.append(fork(wait_for_the_other, futures, 0))
            futures.append(fork(wait_for_the_other, futures, 1))
            wait(futures[0])
    assert isinstance(caught.value, Deadlock)


def test_a_block_that_never_ends_times_out() -> None:
    def spin(x: torch.Tensor) -> None:
        while True:
            x.add_(1)

    with pytest.raises(ScheduleTimeout, match="did not finish within 0.5 s"):
        with controlled(decisions=[], timeout=0.5):
            wait(fork(spin, torch.zeros(1)))
    with controlled(decisions=[]):  # the next block runs: the stuck task was unwound
        assert bump_twice() == 2.0


# -- bad arguments ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, error, says", [
    ({"seed": 1, "decisions": [0]}, TypeError, r"exactly one of seed=, decisions= or choose=.*seed and decisions"),
    ({}, TypeError, r"exactly one of seed=, decisions= or choose=.*got none"),
    ({"decisions": [0, -1]}, ValueError, r"decisions=.*whole numbers >= 0"),
    ({"decisions": "01"}, ValueError, r"decisions=.*whole numbers >= 0"),
    ({"seed": 1.5}, TypeError, r"seed=.*an int"),
    ({"seed": 1, "strategy": "fair"}, ValueError, r"strategy='fair'.*'random', 'pct'"),
    ({"decisions": [0], "strategy": "pct"}, TypeError, r"seed= or choose= only"),
    ({"choose": 3}, TypeError, r"choose\(n\) -> index callable or Hypothesis data"),
    ({"seed": 1, "timeout": 0}, ValueError, r"timeout must be more than 0 seconds"),
    ({"seed": 1, "timeout": "soon"}, ValueError, r"timeout must be"),
])
def test_bad_arguments_to_controlled_name_the_fix(kwargs, error, says) -> None:
    with pytest.raises(error, match=says):
        controlled(**kwargs)


@pytest.mark.parametrize("kwargs, says", [({"preemptions": -1}, "preemptions"), ({"budget": 0}, "budget"),
                                          ({"preemptions": 1.5}, "preemptions")])
def test_bad_bounds_name_the_parameter(kwargs, says) -> None:
    with pytest.raises(SettingsError, match=says):
        explore(counts_both, **kwargs)
    with pytest.raises(ValueError, match=says):
        interleavings(**kwargs)


def test_a_decision_out_of_range_is_a_divergence_naming_the_fix() -> None:
    with pytest.raises(ReplayDiverged, match="decision 1 is 5 but only 2 tasks can run there") as caught:
        with controlled(decisions=[5]):
            bump_twice()
    assert "run.decisions" in caught.value.__notes__[0]


def test_more_decisions_than_the_block_makes_is_a_divergence() -> None:
    with controlled(seed=0) as recorded:
        bump_twice()
    with pytest.raises(ReplayDiverged, match=rf"made {len(recorded.decisions)} choices but "
                                             rf"{len(recorded.decisions) + 3} decisions"):
        with controlled(decisions=recorded.decisions + [0, 0, 0]):
            bump_twice()


def test_a_run_is_entered_once_and_each_interleaving_before_the_next() -> None:
    run = controlled(decisions=[])
    with run:
        bump_twice()
    with pytest.raises(RuntimeError, match="runs its block once"):
        with run:
            pass
    with controlled(decisions=[]):
        with pytest.raises(RuntimeError, match="do not nest"):
            with controlled(decisions=[]):
                pass
        assert bump_twice() == 2.0  # the outer block still runs
    with pytest.raises(RuntimeError, match="enter each interleaving"):
        for _ in interleavings():
            pass


# -- the public face ----------------------------------------------------------------------------------------------


def test_every_public_name_is_exported_and_documented() -> None:
    public = {name for name in vars(forkcheck.testing) if not name.startswith("_")
              and getattr(getattr(forkcheck.testing, name), "__module__", "") == "forkcheck.testing"}
    assert public <= set(forkcheck.testing.__all__)
    for name in forkcheck.testing.__all__:
        assert getattr(forkcheck.testing, name).__doc__, name
    assert isinstance(controlled(seed=1), ControlledRun)


def test_the_docstring_examples_run() -> None:
    result = doctest.testmod(forkcheck.testing, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 10 and result.failed == 0


def test_the_readme_example_runs() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("### Pinning interleavings in your own tests (`forkcheck.testing`)", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(code, "README.md", "exec"), namespace)
    tests = [fn for name, fn in namespace.items() if name.startswith("test_")]
    assert len(tests) == 4
    for test in tests:
        test()


@pytest.mark.slow  # a whole pytest session in a subprocess
def test_a_user_s_own_test_file_uses_it_without_the_plugin(pytester: pytest.Pytester) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("### Pinning interleavings in your own tests (`forkcheck.testing`)", 1)[1]
    pytester.makepyfile(test_user=section.split("```python\n", 1)[1].split("```", 1)[0])
    result = pytester.runpytest_subprocess("-p", "no:forkcheck", "-p", "no:cacheprovider",
                                           "-W", "error::DeprecationWarning", timeout=300)
    result.assert_outcomes(passed=4)
