"""Predictive race detection under forkcheck's own scheduler: eager targets (code that does not script) and
``@pytest.mark.fork_safe`` tests report races with both sides, whatever the schedule, and pure programs none."""
from __future__ import annotations

import inspect
import random

import pytest
import torch
from torch import Tensor

import forkcheck
import strategies as fst
from forkcheck.engines.eager import ControlledScheduler, EagerEngine, race_log
from forkcheck.oracles.races import race_findings
from forkcheck.schedules import Replay, Schedule

# -- programs: a dict of mixed values goes into every fork, so none of them scripts -----------------------------------


def options() -> dict:
    return {"factor": 2.0, "step": 1, "name": "acc"}


def scaled(t: Tensor, how: dict) -> Tensor:
    return t * how["factor"]  # at: read


def bumped(t: Tensor, how: dict) -> Tensor:
    t.add_(how["step"])  # at: write
    return t.sum()


def nested_read_write(x: Tensor) -> Tensor:
    acc = x.clone()
    how = options()
    f = torch.jit.fork(bumped, acc, how)
    g = torch.jit.fork(scaled, acc, how)
    return torch.jit.wait(f) + torch.jit.wait(g).sum()


def two_reads(x: Tensor) -> Tensor:
    acc = x.clone()
    how = options()
    f = torch.jit.fork(scaled, acc, how)
    g = torch.jit.fork(scaled, acc, how)
    return torch.jit.wait(f) + torch.jit.wait(g)


def write_after_wait(x: Tensor) -> Tensor:
    acc = x.clone()
    f = torch.jit.fork(scaled, acc, options())
    out = torch.jit.wait(f)
    acc.add_(1)
    return out + acc


def disjoint_tensors(x: Tensor) -> Tensor:
    a, b = x.clone(), x.clone()
    how = options()
    f = torch.jit.fork(bumped, a, how)
    g = torch.jit.fork(bumped, b, how)
    return torch.jit.wait(f) + torch.jit.wait(g)


def disjoint_rows(x: Tensor) -> Tensor:
    buf = torch.zeros(3, 4)
    how = options()
    f = torch.jit.fork(bumped, buf[0], how)
    g = torch.jit.fork(bumped, buf[2], how)
    return torch.jit.wait(f) + torch.jit.wait(g) + x.sum()


def wait_in_another_task(x: Tensor) -> Tensor:
    acc = x.clone()
    how = options()
    f = torch.jit.fork(bumped, acc, how)
    g = torch.jit.fork(lambda: torch.jit.wait(f) + scaled(acc, how).sum())  # ordered after f's write by its wait
    return torch.jit.wait(g) + f.wait()


def line_of(fn, tag: str) -> str:
    """``file:line`` of the line of ``fn`` marked ``# at: tag``."""
    lines, start = inspect.getsourcelines(fn)
    for offset, text in enumerate(lines):
        if text.rstrip().endswith(f"# at: {tag}"):
            return f"{inspect.getsourcefile(fn)}:{start + offset}"
    raise AssertionError(f"no line tagged {tag!r} in {fn.__name__}")


def check(fn) -> forkcheck.CheckResult:
    return forkcheck.check(forkcheck.fork_safe(fn, x=fst.tensors(shape=(2, 4))), seed=1, examples=2, schedules=3)


def races_under(fn, choose) -> list:
    log = race_log()
    with ControlledScheduler(choose, timeout=10, observer=log):
        fn(torch.ones(2, 4))
    return race_findings(log)


# -- eager targets through forkcheck.check -------------------------------------------------------------------------


def test_read_write_race_between_nested_forks_is_reported_with_both_lines() -> None:
    result = check(nested_read_write)
    assert result.engine == "eager", result.engine_reason
    races = [f for f in result.findings if f.kind == "race"]
    assert len(races) == 1, result.findings
    race = races[0]
    assert set(race.detail["locations"]) == {line_of(bumped, "write"), line_of(scaled, "read")}
    assert sorted(race.detail["ops"]) == ["aten::add_", "aten::mul"]
    assert race.location == line_of(bumped, "write")
    assert race.detail["outputs_affected"] in (True, False)
    assert "aten::clone" in race.detail["storage"] and race.replay


@pytest.mark.parametrize("fn", [two_reads, write_after_wait, disjoint_tensors, disjoint_rows, wait_in_another_task])
def test_pure_eager_programs_have_no_race(fn) -> None:
    result = check(fn)
    assert result.engine == "eager", result.engine_reason
    assert (result.verdict, result.findings) == ("pass", [])


# -- the scheduler's access log ------------------------------------------------------------------------------------


@pytest.mark.parametrize("choose", [Replay([]), random.Random(0), random.Random(1), random.Random(2)],
                         ids=["no-preemption", "random-0", "random-1", "random-2"])
def test_the_race_is_reported_whatever_the_schedule(choose) -> None:
    races = races_under(nested_read_write, choose)
    assert [set(r.detail["locations"]) for r in races] == [{line_of(bumped, "write"), line_of(scaled, "read")}]
    assert sorted(r.detail["task_pairs"] for r in races) == [[[1, 2]]]


def test_a_wait_in_another_task_and_future_wait_order_the_accesses() -> None:
    for seed in range(4):
        assert races_under(wait_in_another_task, random.Random(seed)) == []


def test_engine_logs_only_while_races_is_on() -> None:
    engine = EagerEngine(nested_read_write, tasks=2, reason="does not script", param_names=["x"])
    engine.run([torch.ones(2, 4)], Schedule("random", 0))
    assert [f.kind for f in engine.last_races] == ["race"]
    engine.races = False
    engine.run([torch.ones(2, 4)], Schedule("random", 1))
    assert engine.last_races == []


def test_a_race_on_an_input_is_named_after_the_parameter() -> None:
    def bump_input(x: Tensor) -> Tensor:
        return bumped(x, options())

    engine = EagerEngine(bump_input, tasks=2, reason="does not script", param_names=["x"])
    engine.run([torch.ones(2, 4)], Schedule("random", 0))
    assert [f.detail["storage"] for f in engine.last_races] == ["x"]


# -- @pytest.mark.fork_safe tests ----------------------------------------------------------------------------------

MARKED = """
import pytest
import torch


def bump(t, how):
    t.add_(how["step"])
    return t.sum()


def scale(t, how):
    return t * how["factor"]


@pytest.fixture
def shared():
    return torch.ones(4)


@pytest.mark.fork_safe(schedules=3)
def test_racy_but_passing(shared):
    how = {"factor": 2.0, "step": 1}
    f = torch.jit.fork(bump, shared, how)
    g = torch.jit.fork(scale, shared, how)
    torch.jit.wait(f)
    torch.jit.wait(g)
    assert shared.sum().item() == 8.0


@pytest.mark.fork_safe(schedules=3)
def test_racy_and_failing():
    acc = torch.zeros(4)
    f = torch.jit.fork(bump, acc, {"step": 1})
    total = acc.sum()
    torch.jit.wait(f)
    assert total.item() < 0  # fails under every schedule


@pytest.mark.fork_safe(schedules=3)
def test_clean():
    how = {"factor": 2.0, "step": 1}
    a, b = torch.zeros(4), torch.zeros(4)
    copy = a.clone()
    f = torch.jit.fork(bump, a, how)
    g = torch.jit.fork(bump, b, how)
    h = torch.jit.fork(scale, copy, how)
    torch.jit.wait(f)
    torch.jit.wait(g)
    torch.jit.wait(h)
    a.mul_(2)
    assert a.sum().item() == 8.0
"""


def test_marked_test_with_a_race_fails_although_its_assertions_pass(fc, pytester) -> None:
    path = pytester.makepyfile(test_marked=MARKED)
    result = fc.run("--forkcheck-seed", "1")
    result.assert_outcomes(passed=1, failed=2)
    rows = fc.rows()
    assert rows["test_marked.py::test_clean"]["verdict"] == "pass"
    failed = rows["test_marked.py::test_racy_and_failing"]["findings"]
    assert [f["kind"] for f in failed] == ["race", "nondeterminism"]
    assert failed[0]["detail"]["outputs_affected"] is True and failed[0]["replay"] == failed[1]["replay"]
    row = rows["test_marked.py::test_racy_but_passing"]
    assert (row["verdict"], row["engine"], row["schedules"]) == ("fail", "eager", 1)
    [race] = row["findings"]
    source = path.read_text().splitlines()
    write, read = (f"{path}:{source.index(text) + 1}" for text in ('    t.add_(how["step"])',
                                                                  '    return t * how["factor"]'))
    assert race["kind"] == "race" and set(race["detail"]["locations"]) == {write, read}
    assert race["detail"]["storage"] == "shared" and race["detail"]["outputs_affected"] is False
    token = race["replay"]
    assert token in fc.tokens(result)
    result.stdout.fnmatch_lines(["*1 race under schedule 1 of 3*although the test's assertions passed*",
                                 f"*race on shared: task * writes it (aten::add_ at {path.name}:*)*",  # relative
                                 f"*--forkcheck-replay {token}*"])
    replayed = fc.run("test_marked.py::test_racy_but_passing", "--forkcheck-replay", token)
    replayed.assert_outcomes(failed=1)
    assert [f["kind"] for f in fc.rows()["test_marked.py::test_racy_but_passing"]["findings"]] == ["race"]
