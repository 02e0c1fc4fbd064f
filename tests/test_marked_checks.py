"""``@pytest.mark.fork_safe`` tests: one library entry, run isolated in a forked copy of pytest's process, and every
fork they make under forkcheck's control and observation, also inside scripted code."""
from __future__ import annotations

import os

import pytest
import torch
from torch import Tensor

from conftest import QUICK
from forkcheck.forked import ChildDied, ChildStopped, run_forked
from forkcheck.marked import check_test
from forkcheck.settings import Settings
from sources import source

SCRIPTED = """
from typing import List


def _acc(total: Tensor, x: Tensor) -> Tensor:
    total.add_(x)
    return total


@torch.jit.script
def two_accumulations(x: Tensor) -> Tensor:
    total = torch.zeros_like(x)
    a = torch.jit.fork(_acc, total, x)
    b = torch.jit.fork(_acc, total, x * 2)
    torch.jit.wait(a)
    torch.jit.wait(b)
    return total


@pytest.mark.fork_safe
def test_total():
    x = torch.ones(1000)
    assert torch.equal(two_accumulations(x), x * 3)


def _double(x: Tensor) -> Tensor:
    return x * 2


@torch.jit.script
def doubled_pair(x: Tensor) -> Tensor:
    a = torch.jit.fork(_double, x)
    b = torch.jit.fork(_double, x + 1)
    return torch.jit.wait(a) + torch.jit.wait(b)


@pytest.mark.fork_safe
def test_pure():
    x = torch.ones(10)
    assert torch.equal(doubled_pair(x), x * 4 + 2)


def _append(out: List[int], i: int) -> int:
    out.append(i)
    return i


@pytest.mark.fork_safe
def test_order():
    def appends() -> List[int]:
        out: List[int] = []
        a = torch.jit.fork(_append, out, 1)
        b = torch.jit.fork(_append, out, 2)
        torch.jit.wait(a)
        torch.jit.wait(b)
        return out

    assert torch.jit.script(appends)() == [1, 2]
"""

ENDS_ITS_PROCESS = """
@pytest.mark.fork_safe(schedules=2)
def test_exits():
    print("about to exit")
    torch.jit.wait(torch.jit.fork(os._exit, 3))


@pytest.mark.fork_safe(schedules=1, timeout=0.5)
def test_loops():
    while True:
        pass


@pytest.mark.fork_safe(schedules=1)
def test_asserts():
    got = [2, 1]
    assert got == [1, 2]


@pytest.mark.fork_safe(schedules=2)
def test_skips():
    pytest.skip("not today")


@pytest.mark.fork_safe(schedules=2)
def test_reads_its_output(capsys):
    print("hello")
    assert capsys.readouterr().out == "hello\\n"


def test_plain_after():
    pass
"""


@pytest.fixture
def run(fc, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    """pytest in a subprocess, with a timeout: what crashes or hangs there cannot take this run with it."""
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        monkeypatch.delenv(name, raising=False)

    def run(*args: str) -> pytest.RunResult:
        return pytester.runpytest_subprocess(*QUICK, "-W", "ignore::DeprecationWarning", *args, timeout=300)

    return run


def line_of(path, text: str) -> str:
    return f"{path}:{path.read_text().splitlines().index(text) + 1}"


# -- isolation -----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_crash_or_hang_in_a_marked_test_is_that_items_and_the_session_goes_on(fc, pytester, run) -> None:
    pytester.makepyfile(test_ends=source(ENDS_ITS_PROCESS))
    result = run()
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stderr.str()[-2000:]
    result.assert_outcomes(failed=3, passed=2, skipped=1)
    rows = fc.rows()
    assert rows["test_ends.py::test_skips"]["verdict"] == "skipped"
    assert rows["test_ends.py::test_reads_its_output"]["verdict"] == "pass"
    exited = rows["test_ends.py::test_exits"]
    assert (exited["kind"], exited["verdict"]) == ("test", "error")
    assert "exited with status 3 during schedule 1 of 2" in exited["error"] and "about to exit" in exited["error"]
    looped = rows["test_ends.py::test_loops"]
    assert looped["verdict"] == "fail" and [f["kind"] for f in looped["findings"]] == ["hang"]
    hang = looped["findings"][0]
    assert "did not finish within 0.5 s; the forked copy of this process running it went silent and was stopped " \
           "after" in hang["message"] and hang["replay"]
    loop = line_of(pytester.path / "test_ends.py", "    while True:")
    file, line = loop.rsplit(":", 1)
    assert hang["location"] in (loop, f"{file}:{int(line) + 1}")  # where it looped: the loop's line or its body's
    shown = result.stdout.str()  # the assertion as pytest rewrites it, then forkcheck's note
    assert shown.index("E       assert [2, 1] == [1, 2]") < shown.index("E         At index 0 diff: 2 != 1") \
        < shown.index("forkcheck: failed under schedule 1 of 1 (random); replay it with")
    assert rows["test_ends.py::test_asserts"]["findings"][0]["kind"] == "nondeterminism"
    assert rows["test_ends.py::test_asserts"]["stats"]["isolation"] == "forked"


@pytest.mark.slow
def test_a_replay_whose_copy_is_stopped_counts_the_rerun_that_hung(fc, pytester, run) -> None:
    pytester.makepyfile(test_ends=source(ENDS_ITS_PROCESS))
    run("test_ends.py::test_loops").assert_outcomes(failed=1)
    token = fc.rows()["test_ends.py::test_loops"]["findings"][0]["replay"]
    replayed = run("test_ends.py::test_loops", "--forkcheck-replay", token)
    replayed.assert_outcomes(failed=1)
    again = fc.rows()["test_ends.py::test_loops"]["replay_run"]
    assert [f["kind"] for f in again["findings"]] == ["hang"]
    replays = again["stats"]["replays"]  # the copy stops at the first rerun: it hung, a wrong outcome
    assert (replays["runs"], replays["reproduced"], replays["wrong_outcome"]) == (1, 1, 1)
    assert "reproduced 1 of 1 (1 with a wrong outcome)" in replayed.stdout.str()


@pytest.mark.slow
def test_a_process_whose_inter_op_pool_runs_checks_marked_tests_in_process(fc, pytester, run) -> None:
    """A forked copy of a process whose pool has threads cannot run a scripted fork: the test runs here instead."""
    starts_the_pool = """
        def test_a_starts_the_pool():
            assert torch.equal(_starts(torch.ones(2)), torch.full((2,), 2.0))

        @torch.jit.script
        def _starts(x: Tensor) -> Tensor:
            return torch.jit.wait(torch.jit.fork(torch.mul, x, 2))
    """
    pytester.makepyfile(test_pool=source(starts_the_pool, SCRIPTED))
    result = run("-k", "starts_the_pool or test_pure or test_total")
    result.assert_outcomes(passed=2, failed=1)
    for name in ("test_pure", "test_total"):
        assert fc.rows()[f"test_pool.py::{name}"]["stats"]["isolation"].startswith("in-process (torch's inter-op")


# -- scripted code -------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("isolation", ["child", "inprocess"])
def test_forks_inside_scripted_code_are_scheduled_and_their_races_found(fc, pytester, run, isolation) -> None:
    path = pytester.makepyfile(test_scripted=source(SCRIPTED))
    result = run("--forkcheck-isolation", isolation, "--forkcheck-schedules", "10")
    result.assert_outcomes(passed=1, failed=2)
    rows = fc.rows()
    assert rows["test_scripted.py::test_pure"]["verdict"] == "pass"
    assert rows["test_scripted.py::test_pure"]["schedules"] == 10
    assert "PASS test_scripted.py::test_pure: 10 schedules, no finding" in result.stdout.str()
    total = rows["test_scripted.py::test_total"]
    assert total["stats"]["isolation"] == ("forked" if isolation == "child" else "in-process")
    [race] = total["findings"]
    add = line_of(path, "    total.add_(x)")
    assert race["kind"] == "race" and race["tasks"] == [1, 2] and race["location"] == add
    assert race["detail"]["locations"] == [add, add] and race["detail"]["outputs_affected"] is False
    assert "task 1 writes it (aten::add_ at" in race["message"] and "task 2 writes it" in race["message"]
    order = rows["test_scripted.py::test_order"]  # under forkcheck's schedules, not by the pool's luck
    assert order["verdict"] == "fail" and {f["kind"] for f in order["findings"]} & {"race", "nondeterminism"}
    replayed = run("test_scripted.py::test_total", "--forkcheck-isolation", isolation,
                   "--forkcheck-replay", race["replay"])
    replayed.assert_outcomes(failed=1)
    again = fc.rows()["test_scripted.py::test_total"]["replay_run"]  # the replay, beside the row it replays
    assert again["schedules"] == 1 and [(f["kind"], f["location"]) for f in again["findings"]] == [("race", add)]
    assert again["stats"]["replays"] == {"runs": 10, "reproduced": 10, "wrong_outcome": 0, "schedules": 1,
                                         "strategy": "random", "pool_size": 0, "what": "the test"}
    shown = replayed.stdout.str()  # the replay's block, not another replay command
    said = "the test and its 1 schedule (random), reproduced 10 of 10 (0 with a wrong outcome)"
    assert f"REPLAY test_scripted.py::test_total: {said}" in shown
    assert "replayed the test and its 1 schedule (random), 10 times: reproduced 10 of 10" in shown
    assert "replay it with" not in shown and "--forkcheck-replay fc1" not in shown


@pytest.mark.slow
def test_a_replay_of_a_marked_test_whose_race_was_fixed_passes_reproducing_none(fc, pytester, run) -> None:
    path = pytester.makepyfile(test_scripted=source(SCRIPTED))
    run("test_scripted.py::test_total", "--forkcheck-schedules", "2").assert_outcomes(failed=1)
    token = fc.rows()["test_scripted.py::test_total"]["findings"][0]["replay"]
    waits = "    torch.jit.wait(a)\n    torch.jit.wait(b)\n    return total"
    summed = "    return torch.jit.wait(a) + torch.jit.wait(b)"
    fixed = path.read_text().replace("    total.add_(x)\n    return total", "    return total + x")
    fixed = fixed.replace(waits, summed)
    assert fixed.count("torch.jit.wait(a) + torch.jit.wait(b)") == 2  # two_accumulations' and doubled_pair's
    path.write_text(fixed)
    replayed = run("test_scripted.py::test_total", "--forkcheck-replay", token)
    replayed.assert_outcomes(passed=1)
    again = fc.rows()["test_scripted.py::test_total"]["replay_run"]
    assert again["verdict"] == "pass" and again["findings"] == []
    assert (again["stats"]["replays"]["runs"], again["stats"]["replays"]["reproduced"]) == (10, 0)
    assert "REPLAY test_scripted.py::test_total: the test and its 1 schedule (random), reproduced 0 of 10" \
        in replayed.stdout.str()


def _acc(total: Tensor, x: Tensor) -> Tensor:
    total.add_(x)
    return total


@torch.jit.script
def _two_accumulations(x: Tensor) -> Tensor:
    total = torch.zeros_like(x)
    a = torch.jit.fork(_acc, total, x)
    b = torch.jit.fork(_acc, total, x * 2)
    torch.jit.wait(a)
    torch.jit.wait(b)
    return total


def _separate(x: Tensor) -> Tensor:
    return x + 1


@torch.jit.script
def _two_separate(x: Tensor) -> Tensor:
    a = torch.jit.fork(_separate, x)
    b = torch.jit.fork(_separate, x)
    return torch.jit.wait(a) + torch.jit.wait(b)


def test_check_test_without_pytest_finds_a_race_inside_a_scripted_call_and_replays_it() -> None:
    x = torch.ones(100)
    result = check_test(lambda: _two_accumulations(x), Settings(seed=3, schedules=3), "accumulates")
    assert (result.kind, result.verdict, result.schedules) == ("test", "fail", 1)
    [race] = result.findings
    assert race.kind == "race" and race.tasks == [1, 2] and race.location.endswith(
        f"test_marked_checks.py:{_acc.__code__.co_firstlineno + 1}")
    replayed = check_test(lambda: _two_accumulations(x), Settings(), "accumulates", replay=race.replay)
    assert [f.kind for f in replayed.findings] == ["race"] and replayed.schedules == 1
    replays = replayed.stats.replays.to_json()  # the race is predicted, the sum right: no wrong outcome
    assert (replays["runs"], replays["reproduced"], replays["wrong_outcome"]) == (10, 10, 0)
    assert _two_accumulations(x).tolist() == [3.0] * 100


def test_a_replay_counts_the_reruns_whose_test_failed_as_wrong_outcomes() -> None:
    def body() -> None:
        order: list[int] = []
        futures = [torch.jit.fork(order.append, i) for i in range(2)]
        for future in futures:
            torch.jit.wait(future)
        assert order == [0, 1]

    found = check_test(body, Settings(seed=1, schedules=20), "appends")
    failed = next(f for f in found.findings if f.kind == "nondeterminism")
    replayed = check_test(body, Settings(), "appends", replay=failed.replay)
    assert replayed.verdict == "fail" and "nondeterminism" in {f.kind for f in replayed.findings}
    replays = replayed.stats.replays.to_json()
    assert (replays["runs"], replays["reproduced"], replays["wrong_outcome"]) == (10, 10, 10)


def test_scripted_forks_of_separate_data_are_no_race_and_routing_is_undone() -> None:
    calls = (torch._C.ScriptFunction.__call__, torch.ScriptMethod.__call__)
    result = check_test(lambda: _two_separate(torch.ones(4)), Settings(seed=1, schedules=4), "separate")
    assert (result.verdict, result.schedules, result.findings) == ("pass", 4, [])
    assert (torch._C.ScriptFunction.__call__, torch.ScriptMethod.__call__) == calls


def test_a_race_between_a_forked_task_and_a_scripted_call_is_found() -> None:
    """The scripted call's tasks join the test's happens-before: an eager task writing the tensor a scripted fork
    reads races with it."""
    x = torch.ones(8)

    def bump() -> Tensor:
        return x.add_(1)

    def body() -> None:
        future = torch.jit.fork(bump)
        _two_separate(x)
        torch.jit.wait(future)

    result = check_test(body, Settings(seed=2, schedules=2), "mixed", arguments={"x": x})
    races = [f for f in result.findings if f.kind == "race"]
    assert races and races[0].detail["storage"] == "x"
    assert {access["op"] for access in races[0].detail["accesses"]} >= {"aten::add_"}


def test_a_forked_child_that_dies_or_stays_silent_is_reported() -> None:
    with pytest.raises(ChildDied, match="exited with status 3"):
        run_forked(lambda send: os._exit(3), timeout=60)

    def silent(send) -> None:
        send({"event": "run", "what": "schedule 1", "timeout": 0.2})
        while True:
            pass

    with pytest.raises(ChildStopped) as stopped:
        run_forked(silent, timeout=60)
    assert stopped.value.last["what"] == "schedule 1" and "in silent" in stopped.value.output
    assert run_forked(lambda send: {"answer": 42}, timeout=60) == {"answer": 42}


class _Bump(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("count", torch.zeros(3))

    def forward(self, x: Tensor) -> Tensor:
        self.count.add_(x)
        return self.count


class _Heads(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.bump = _Bump()

    def forward(self, x: Tensor) -> Tensor:
        a = torch.jit.fork(self.bump, x)
        b = torch.jit.fork(self.bump, x)
        return torch.jit.wait(a) + torch.jit.wait(b)


def test_a_scripted_modules_forks_racing_on_its_buffer_are_named_after_it() -> None:
    heads = torch.jit.script(_Heads())
    result = check_test(lambda: heads(torch.ones(3)), Settings(seed=1, schedules=2), "heads")
    [race] = result.findings
    assert race.kind == "race" and race.tasks == [1, 2] and race.detail["storage"] == "_Heads.bump.count"
    assert race.location.endswith(f"test_marked_checks.py:{_Bump.forward.__code__.co_firstlineno + 1}")
