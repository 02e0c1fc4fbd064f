"""One check without pytest: the public facade, the engine chosen, counts and reproducibility, and that a check
leaves the user's objects and the process's state as it found them."""
import dataclasses
import inspect
import threading
from typing import Dict, List

import pytest
import torch
from hypothesis import strategies as st
from torch import Tensor, nn

import forkcheck
import strategies as fst
from forkcheck.marker import Mark
from forkcheck.runner import check as run_check
from forkcheck.settings import Settings
from forkcheck.state import ModuleSnapshot, bits_equal, snapshot
from forkcheck.target import Target

QUICK = dict(examples=3, schedules=3, seed=1)


def check(obj, strategies=None, replay=None, **settings) -> forkcheck.CheckResult:
    target = Target.from_object(obj)
    if strategies:
        target = dataclasses.replace(target, mark=Mark(strategies=strategies))
    return run_check(target, Settings().replace(**{**QUICK, **settings}), replay=replay)


# -- programs -------------------------------------------------------------------------------------------------------


def _scale(x: Tensor, k: int) -> Tensor:
    return x * k


def scale_in_tasks(x: Tensor, k: int) -> Tensor:
    a = torch.jit.fork(_scale, x, k)
    b = torch.jit.fork(_scale, x, k + 1)
    return torch.jit.wait(a) + torch.jit.wait(b)


def scale_in_tasks_eagerly(x: Tensor, k: int) -> Tensor:
    futures = [torch.jit.fork(lambda t: _scale(t, k), x) for _ in range(2)]
    return torch.jit.wait(futures[0]) + torch.jit.wait(futures[1])


def add_in_place(x: Tensor) -> Tensor:
    x.add_(1)
    return x


def change_every_input(x: Tensor, xs: List[Tensor], d: Dict[str, Tensor]) -> Tensor:
    x.t_()
    x.add_(1)
    xs.append(x)
    d["seen"] = x
    return x


def untyped(x):
    return x


_TOTAL = 0
_SEEN: Dict[int, int] = {}
_NORM = nn.BatchNorm1d(3)


class Stats:
    def __init__(self):
        self.calls = 0


STATS = Stats()


def touch_all_global_state(x: Tensor) -> Tensor:
    global _TOTAL
    _TOTAL += 1
    _SEEN[len(_SEEN)] = _TOTAL
    STATS.calls += 1
    y = _NORM(x) + torch.rand(x.shape)
    torch.set_default_dtype(torch.float64)
    torch.set_grad_enabled(False)
    return y


def touch_global_state_out_of_order(x: Tensor) -> Tensor:
    """Changes globals only when a later task runs first: in concurrent runs, never in the serial one."""
    order: List[int] = []

    def work(i: int) -> Tensor:
        global _TOTAL
        order.append(i)
        if order[0] != 0:
            _TOTAL += 1
            STATS.calls += 1
            torch.rand(1)
        return x

    futures = [torch.jit.fork(work, i) for i in range(3)]
    return torch.stack([torch.jit.wait(f) for f in futures])


class CountCalls(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0
        self.register_buffer("total", torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        self.total.add_(1)
        return x * 2


class TrainingNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm1d(3)

    def forward(self, x: Tensor) -> Tensor:
        top = torch.jit.fork(self.norm, x[:2])
        return torch.cat([torch.jit.wait(top), self.norm(x[2:])])


class ReplaceHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(3, 3)
        self.seen = []

    def forward(self, x: Tensor) -> Tensor:
        self.seen.append(x)
        self.head = nn.Linear(3, 3)
        return self.head(x)


MATRIX = fst.tensors(shape=(4, 3))

# -- the facade and the result --------------------------------------------------------------------------------------


def test_public_check_needs_no_pytest_and_no_mark():
    passed = forkcheck.check(scale_in_tasks, **QUICK)
    assert (passed.verdict, passed.engine, passed.findings) == ("pass", "script", [])
    assert (passed.examples, passed.schedules) == (3, 9)
    assert passed.target == f"{__name__}:scale_in_tasks" and passed.stats.seed == 1
    failed = forkcheck.check(add_in_place, **QUICK)
    assert failed.verdict == "fail" and [f.kind for f in failed.findings] == ["input-mutation"]


class Runs:
    """A run observer that keeps what it is told."""

    def __init__(self):
        self.started, self.abandoned = [], []

    def run_started(self, run):
        self.started.append(run)

    def run_abandoned(self, run):
        self.abandoned.append(run)


def test_an_observer_is_told_every_run_by_what_phase_and_engine():
    runs = Runs()
    result = run_check(Target.from_object(scale_in_tasks), Settings().replace(**QUICK, strategy="pct"), observer=runs)
    assert result.verdict == "pass" and runs.abandoned == []
    tasks = Settings().tasks
    serial = [r.what for r in runs.started if r.phase == "serial"]
    concurrent = [r.what for r in runs.started if r.phase == "concurrent"]
    assert serial == [f"example {n}: the serial reference run (forks inline)" for n in range(1, result.examples + 1)]
    assert concurrent == [f"example {n}, schedule {s}: a concurrent run of {tasks} forked tasks"
                          for n in range(1, result.examples + 1) for s in range(3 * n - 2, 3 * n + 1)]
    # once, after the first serial run: PCT's steps counted, and the real runtime's program warmed up
    assert [(r.what, r.phase) for r in runs.started[1:2]] == [("example 1: run 2 of the check", "")]
    assert len(runs.started) == len(serial) + len(concurrent) + 1
    assert {(r.engine.name, r.timeout) for r in runs.started} == {("script", Settings().timeout)}


def sleeps(x: Tensor) -> Tensor:
    import time

    time.sleep(5.0)  # ten times the timeout: the run is given up long before
    return x


def test_an_observer_is_told_of_a_run_given_up_as_hung(monkeypatch):
    from forkcheck import _exit

    monkeypatch.setattr(_exit, "_abandoned", _exit.abandoned())  # this process's later checks do not see it
    runs = Runs()
    result = run_check(Target.from_object(sleeps), Settings().replace(**QUICK, timeout=0.5), observer=runs)
    assert result.verdict == "fail" and [f.kind for f in result.findings] == ["hang"]
    assert "the serial reference run (forks inline)" in result.findings[0].message
    lines = inspect.getsourcelines(sleeps)
    sleeping = lines[1] + next(i for i, line in enumerate(lines[0]) if "time.sleep" in line)
    assert result.findings[0].location == f"{__file__}:{sleeping}"  # where the run was, not the def line
    assert runs.abandoned == runs.started[:1] and runs.abandoned[0].phase == "serial"
    assert runs.abandoned[0].engine.name == "eager" and runs.abandoned[0].timeout == 0.5


def test_unknown_setting_is_an_error():
    with pytest.raises(forkcheck.SettingsError, match="unknown forkcheck setting 'example'"):
        forkcheck.check(scale_in_tasks, example=3)


def test_eager_engine_when_the_target_does_not_script_and_the_reason():
    result = check(scale_in_tasks_eagerly)
    assert (result.verdict, result.engine) == ("pass", "eager")
    assert result.engine_reason.startswith("torch.jit.script failed")


def test_a_parameter_without_strategy_is_a_setup_error_naming_it():
    result = check(untyped)
    assert result.verdict == "error" and "'x'" in result.error and result.error.startswith("setup error")


def test_a_defect_the_serial_run_shows_needs_no_schedules():
    result = check(add_in_place)
    assert result.schedules == 0 and result.examples >= 1
    assert result.failing_input["x"].startswith("tensor(")
    assert result.findings[0].tasks == [] and result.findings[0].detail["run"] == "serial"  # forks ran inline


def test_the_same_seed_gives_the_same_result():
    first, second = check(touch_global_state_out_of_order), check(touch_global_state_out_of_order)
    assert first.verdict == "fail"
    assert [f.to_json() for f in first.findings] == [f.to_json() for f in second.findings]
    assert first.failing_input == second.failing_input


def test_a_module_class_is_checked_through_a_fresh_instance():
    result = check(CountCalls)
    assert result.verdict == "fail" and result.findings[0].kind == "attribute-mutation"


# -- a check leaves things as it found them -------------------------------------------------------------------------


def test_globals_objects_modules_and_torch_state_are_restored_after_the_serial_run():
    rng, norm = torch.get_rng_state(), {k: v.clone() for k, v in _NORM.state_dict().items()}
    result = check(touch_all_global_state, {"x": MATRIX})
    names = {f.detail["name"] for f in result.findings if f.kind == "global-mutation"}
    assert {f"{__name__}._TOTAL", f"{__name__}._SEEN", f"{__name__}.STATS", f"{__name__}._NORM",
            "torch default RNG", "torch default dtype"} <= names
    assert (_TOTAL, _SEEN, STATS.calls) == (0, {}, 0)
    assert all(bits_equal(value, norm[key]) for key, value in _NORM.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.get_default_dtype() == torch.float32 and torch.is_grad_enabled()


def test_globals_and_torch_state_are_restored_after_concurrent_runs():
    rng = torch.get_rng_state()
    result = check(touch_global_state_out_of_order)
    assert result.engine == "eager" and result.schedules > 0
    assert {f"{__name__}._TOTAL", f"{__name__}.STATS", "torch default RNG"} <= {
        f.detail["name"] for f in result.findings if f.kind == "global-mutation"}
    assert (_TOTAL, STATS.calls) == (0, 0)
    assert torch.equal(torch.get_rng_state(), rng)


@pytest.mark.parametrize("module, strategies", [
    pytest.param(CountCalls(), None, id="CountCalls"),
    pytest.param(TrainingNorm(), {"x": MATRIX}, id="TrainingNorm"),
    pytest.param(ReplaceHead(), {"x": MATRIX}, id="ReplaceHead"),
])
def test_the_users_module_instance_is_never_changed(module, strategies):
    before = ModuleSnapshot.take(module)
    result = check(module, strategies)
    assert result.verdict == "fail" and result.findings[0].kind == "attribute-mutation"
    assert before.changed() == {}


def test_the_users_input_objects_are_never_changed():
    x = torch.arange(12.0).reshape(4, 3)
    xs, d = [x], {"k": x}
    before = [snapshot(value) for value in (x, xs, d)]
    result = check(change_every_input, {"x": st.just(x), "xs": st.just(xs), "d": st.just(d)})
    assert {f.detail["name"] for f in result.findings if f.kind == "input-mutation"} == {"x", "xs", "d"}
    assert [snap.changes(value) for snap, value in zip(before, (x, xs, d))] == [[], [], []]
    assert bits_equal(x, torch.arange(12.0).reshape(4, 3))


# -- schedule-dependent defects: the search, the strategies, replay ---------------------------------------------------


def _count_up(acc: Tensor, x: Tensor) -> Tensor:
    for _ in range(x.numel()):
        seen = acc[0].item()
        acc[0] = seen + 1.0  # read, then write: a lost update when the sibling runs in between
    return acc


def lost_update_eagerly(x: Tensor) -> Tensor:
    acc = torch.zeros(1)
    futures = list(map(lambda _: torch.jit.fork(_count_up, acc, x), range(2)))  # a lambda: forkcheck's scheduler
    return torch.jit.wait(futures[0]) + torch.jit.wait(futures[1]) * 0


def _write_scaled(out: Tensor, x: Tensor, k: float) -> Tensor:
    out.copy_(x * k)
    return out


def last_writer_wins(x: Tensor) -> Tensor:
    out = torch.empty_like(x)
    first, second = torch.jit.fork(_write_scaled, out, x, 1.0), torch.jit.fork(_write_scaled, out, x, 2.0)
    torch.jit.wait(first)
    torch.jit.wait(second)
    return out


def both_scaled(x: Tensor) -> Tensor:
    first, second = torch.jit.fork(_scale, x, 1), torch.jit.fork(_scale, x, 2)
    return torch.jit.wait(first) + torch.jit.wait(second)


@pytest.mark.parametrize("strategy", ["random", "pct", "portfolio"])
def test_a_replay_token_reproduces_a_wrong_outcome_under_forkcheck_s_scheduler_every_time(strategy):
    strategies = {"x": fst.tensors(shape=(4,))}
    found = check(lost_update_eagerly, strategies, strategy=strategy, examples=4, schedules=6)
    assert found.engine == "eager" and {"race", "nondeterminism"} <= {f.kind for f in found.findings}
    token = next(f.replay for f in found.findings if f.kind == "nondeterminism")
    replayed = check(lost_update_eagerly, strategies, replay=token, seed=None)  # the token brings the rest
    assert {k: replayed.stats.replays.to_json()[k] for k in ("runs", "reproduced", "wrong_outcome")} == {
        "runs": 10, "reproduced": 10, "wrong_outcome": 10}
    assert {f.kind for f in replayed.findings} == {f.kind for f in found.findings}
    assert replayed.examples == 1 and replayed.schedules >= 10  # one input, rerun ten times: not ten examples
    assert replayed.stats.seed is None  # its seed drew nothing: no seed to rerun with


@pytest.mark.parametrize("strategy", ["random", "pct", "portfolio"])
def test_every_strategy_finds_a_real_race_and_passes_programs_without_one(strategy):
    racy = check(last_writer_wins, {"x": fst.tensors(shape=(3,))}, strategy=strategy, examples=4, schedules=6)
    assert racy.engine == "script" and racy.verdict == "fail" and racy.findings[0].kind == "race"
    clean = check(both_scaled, {"x": fst.tensors(shape=(3,))}, strategy=strategy, examples=4, schedules=6)
    assert (clean.engine, clean.verdict, clean.schedules) == ("script", "pass", 4 * 6)
    eager = check(scale_in_tasks_eagerly, strategy=strategy, examples=4, schedules=6)  # forkcheck's scheduler
    assert (eager.engine, eager.verdict, eager.schedules) == ("eager", "pass", 4 * 6)


def test_a_predicted_race_does_not_stop_the_search_for_an_input_it_makes_go_wrong():
    # the first example is all zeros, where both writes agree: only a later input can show the wrong outcome
    zeros_first = st.just(torch.zeros(3)) | fst.tensors(shape=(3,), elements_min=1, elements_max=9)
    result = check(last_writer_wins, {"x": zeros_first}, strategy="pct", examples=10, schedules=4)
    kinds = [f.kind for f in result.findings]
    assert kinds == ["race", "nondeterminism"] and result.stats.failed_after <= 4
    assert result.stats.wrong_outcome_after > result.stats.failed_after
    assert result.failing_input["x"] != repr(torch.zeros(3))


def lost_update_on_long_inputs(x: Tensor) -> Tensor:
    if x.numel() < 4:
        return torch.full((1,), 2.0 * x.numel())
    return lost_update_eagerly(x)


def test_a_failure_under_forkcheck_s_scheduler_shrinks_to_a_minimal_input_that_still_goes_wrong():
    vectors = fst.tensors(min_dims=1, max_dims=1, min_side=1, max_side=12)
    result = check(lost_update_on_long_inputs, {"x": vectors}, examples=20, schedules=6, seed=3)
    assert result.engine == "eager" and "nondeterminism" in {f.kind for f in result.findings}
    assert "shape [4]" in result.failing_input["x"]  # the smallest input that forks at all
    token = next(f.replay for f in result.findings if f.kind == "nondeterminism")
    replayed = check(lost_update_on_long_inputs, {"x": vectors}, replay=token, seed=None)
    assert replayed.stats.replays.wrong_outcome == 10


# -- the run thread -------------------------------------------------------------------------------------------------


def _run(timeout: float):
    from forkcheck import runner

    return runner.RunStart("a test's run", "", None, timeout)


def test_runs_go_on_one_reused_thread_and_a_hung_run_keeps_its_own(monkeypatch):
    import threading

    from forkcheck import _exit, runner

    monkeypatch.setattr(_exit, "_abandoned", False)  # this test's hang ends in it: no task outlives it
    first, second = (runner._with_timeout(threading.get_ident, _run(60)) for _ in range(2))
    assert first == second != threading.get_ident()
    release = threading.Event()
    with pytest.raises(runner._Hang):
        runner._with_timeout(lambda: release.wait(60), _run(0.2))
    try:
        assert runner._with_timeout(threading.get_ident, _run(60)) not in (first, threading.get_ident())
    finally:
        release.set()
    nested = runner._with_timeout(lambda: runner._with_timeout(lambda: 7, _run(60)), _run(60))
    assert nested == 7  # a run started from a run


def _disables_grad(x: Tensor) -> Tensor:
    torch.set_grad_enabled(False)
    return x * 2


def test_a_run_s_per_thread_torch_state_does_not_reach_the_next_run_on_the_reused_thread():
    from forkcheck import runner

    changed = check(_disables_grad, examples=2, schedules=2)
    assert "torch grad mode" in {f.detail["name"] for f in changed.findings}
    assert runner._with_timeout(torch.is_grad_enabled, _run(60))  # the thread the runs went on has it back


class BumpsWhenScripted(nn.Module):
    """Writes its buffer only on the real runtime: the serial reference (eager) leaves it alone."""

    def __init__(self):
        super().__init__()
        self.register_buffer("hits", torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            self.hits.add_(1)
        return x * 2


def test_the_module_watch_shared_by_the_runs_sees_a_write_after_runs_it_put_back():
    module = BumpsWhenScripted()
    result = check(module, {"x": fst.tensors(shape=(2,))}, examples=2, schedules=3)
    assert result.engine == "script" and result.stats.found_by == "concurrent runs"
    mutation = next(f for f in result.findings if f.kind == "attribute-mutation")
    assert mutation.detail["name"] == "hits" and "in place" not in mutation.message  # the values changed
    assert torch.equal(module.hits, torch.zeros(1))


class _CountsCalls(nn.Module):
    """Writes a buffer in its forward: every serial run changes the module."""

    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        return x * 2


def test_serial_runs_share_one_copy_of_a_module_put_back_after_each_and_the_target_is_untouched():
    from forkcheck.runner import Checker

    target = Target.from_object(forkcheck.fork_safe(_CountsCalls(), x=fst.tensors(shape=(2,))), "mod:counts")
    checker = Checker(target, Settings(seed=1))
    for _ in range(3):
        findings, output = checker._serial({"x": torch.ones(2)})
        assert [f.kind for f in findings] == ["attribute-mutation"] and torch.equal(output, torch.full((2,), 2.0))
        module, _ = checker._serial_module()
        assert module.calls.item() == 0  # put back: each run starts from the target's state, and sees its write
    assert checker._serial_module()[0] is module and module is not checker.base
    assert checker.base.calls.item() == 0 and target.obj.calls.item() == 0


def _tag_total(part, tags):
    return part.sum() + len(tags)


def unannotated_tags(x, tags):
    futures = [torch.jit.fork(_tag_total, part, tags) for part in x.chunk(2)]
    return torch.stack([torch.jit.wait(f) for f in futures])


def test_inputs_that_do_not_fit_the_scripted_parameters_are_a_setup_error_naming_the_parameter():
    """Unannotated, ``tags`` is a Tensor to TorchScript: the fork driver refused the drawn sets (it was an
    ``exception`` finding of every forked task)."""
    result = check(unannotated_tags, {"x": fst.tensors(shape=(4, 3)), "tags": st.sets(st.integers(0, 5))})
    assert result.verdict == "error" and not result.findings
    assert result.error.startswith("setup error: parameter 'tags': its strategy drew values of type set where "
                                   "TorchScript takes Tensor (the parameter has no annotation")


_RELEASE = threading.Event()


@torch.jit.ignore
def _waits_on_the_pool(x: Tensor) -> Tensor:
    if threading.current_thread().name.startswith("Dummy"):  # threading now knows the pool thread, as a dummy
        while not _RELEASE.wait(0.05):  # at: waits
            pass
    return x


def _waiting_task(x: Tensor) -> Tensor:
    return _waits_on_the_pool(x)


def hangs_on_the_pool(x: Tensor) -> Tensor:
    return torch.jit.wait(torch.jit.fork(_waiting_task, x))


def test_a_hang_on_a_pool_thread_is_located_at_the_line_it_waits_on(monkeypatch):
    from forkcheck import _exit

    monkeypatch.setattr(_exit, "_abandoned", _exit.abandoned())  # this process's later checks do not see it
    try:
        result = check(hangs_on_the_pool, {"x": fst.tensors(shape=(2,))}, timeout=0.5)
    finally:
        _RELEASE.set()  # the abandoned tasks end
    assert result.engine == "script" and [f.kind for f in result.findings] == ["hang"]
    lines, first = inspect.getsourcelines(_waits_on_the_pool)
    waits = first + next(i for i, line in enumerate(lines) if "# at: waits" in line)
    assert result.findings[0].location == f"{__file__}:{waits}"


class _LazyHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.LazyLinear(3)

    def forward(self, x: Tensor) -> Tensor:
        return torch.jit.wait(torch.jit.fork(self.linear, x))


def test_a_module_with_lazy_parameters_is_a_setup_error_naming_them():  # it was an internal error
    result = check(_LazyHead(), {"x": fst.tensors(shape=(2, 4))})
    assert result.verdict == "error" and result.error.startswith(
        "setup error: its parameters linear.weight, linear.bias are lazy")
    head = _LazyHead()
    head(torch.ones(2, 4))  # initialised: checked like any module
    assert check(head, {"x": fst.tensors(shape=(2, 4))}).verdict == "pass"
