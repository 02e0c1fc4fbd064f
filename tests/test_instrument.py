"""Scheduling points in the real runtime: the instrumented program computes what the original does, calls the hook
at every point of every task (after profiling too), and says where each point is."""
from __future__ import annotations

import inspect
import threading
import time
from typing import List, Tuple

import pytest
import torch
from torch import Tensor, nn

from forkcheck._warnings import quiet_jit
from forkcheck.instrument import FANOUT, Instrumentation, ensure_ops, hooked, instrument

# -- programs (the lines a test looks for are marked ``# at: tag``) --------------------------------------------------


def leaf(x: Tensor, k: int) -> Tensor:
    y = x * k  # at: leaf-mul
    return y.sin() + 1


def middle(x: Tensor) -> Tensor:
    f = torch.jit.fork(leaf, x, 3)  # at: fork-leaf
    y = x.cos()
    return torch.jit.wait(f) + y  # at: middle-wait


def nested(x: Tensor) -> Tensor:
    f = torch.jit.fork(middle, x)  # at: fork-middle
    g = torch.jit.fork(leaf, x, 2)  # at: fork-leaf-2
    return torch.jit.wait(f) * torch.jit.wait(g)


def loop_of_forks(x: Tensor, n: int) -> Tensor:
    futures = [torch.jit.fork(middle, x + i) for i in range(n)]  # at: fork-loop
    total = torch.zeros_like(x)
    for f in futures:
        total = total + torch.jit.wait(f)
    return total


def branchy(x: Tensor, flag: bool) -> Tuple[Tensor, List[Tensor]]:
    outs: List[Tensor] = []
    if flag:
        f = torch.jit.fork(leaf, x, 5)
        outs.append(torch.jit.wait(f))
    else:
        outs.append(x.exp())
    i = 0
    while i < 3:
        outs.append(torch.jit.wait(torch.jit.fork(middle, x * i)))
        i += 1
    return x.tanh(), outs


def raises_in_task(x: Tensor) -> Tensor:
    f = torch.jit.fork(bad_leaf, x)
    return torch.jit.wait(f)


def bad_leaf(x: Tensor) -> Tensor:
    if bool(x.sum() > -1.0):
        raise ValueError("bad leaf")
    return x


class Target(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(-1.0, 1.0, 4))
        self.register_buffer("scale", torch.full((4,), 0.5))

    def forward(self, x: Tensor) -> Tensor:
        f = torch.jit.fork(leaf, x * self.weight, 2)
        return torch.jit.wait(f) * self.scale


class Counter(Target):
    """Counts its calls: a read-modify-write of an attribute (racy when forked)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls = self.calls + 1  # at: calls
        f = torch.jit.fork(leaf, x * self.weight, 2)
        return torch.jit.wait(f) * self.scale


class Driver(nn.Module):
    """Forks ``self.target`` three times, as the script engine's driver does."""

    def __init__(self, target: nn.Module):
        super().__init__()
        self.target = target

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        f0 = torch.jit.fork(self.target, x)  # at: driver-fork
        f1 = torch.jit.fork(self.target, x)
        f2 = torch.jit.fork(self.target, x)
        return torch.jit.wait(f0), torch.jit.wait(f1), torch.jit.wait(f2)


def line_of(fn, tag: str) -> str:
    """``file:line`` of the line of ``fn`` marked ``# at: tag``."""
    lines, start = inspect.getsourcelines(fn)
    for offset, text in enumerate(lines):
        if text.rstrip().endswith(f"# at: {tag}"):
            return f"{inspect.getsourcefile(fn)}:{start + offset}"
    raise LookupError(tag)


_scripted: dict = {}


def scripted(fn):
    if fn not in _scripted:
        with quiet_jit():
            _scripted[fn] = torch.jit.script(fn)
    return _scripted[fn]


def scripted_driver(target=Target):
    with quiet_jit():
        return torch.jit.script(Driver(target()))


def same(a, b) -> bool:
    """Bitwise equality of nested outputs."""
    if isinstance(a, Tensor):
        return isinstance(b, Tensor) and a.dtype == b.dtype and a.shape == b.shape and bool(
            (a.view(-1).view(torch.uint8) == b.view(-1).view(torch.uint8)).all()
        )
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def jitter(site: int, task: int) -> None:
    """A hook that perturbs a little: every third point yields."""
    if (site + task) % 3 == 0:
        time.sleep(0)


PROGRAMS = [
    pytest.param(nested, (torch.linspace(-2, 2, 6),), id="nested"),
    pytest.param(loop_of_forks, (torch.linspace(-1, 1, 5), 4), id="loop"),
    pytest.param(branchy, (torch.linspace(0, 1, 3), True), id="branch-true"),
    pytest.param(branchy, (torch.linspace(0, 1, 3), False), id="branch-false"),
]


# -- the program computes what the original computes ---------------------------------------------------------------


@pytest.mark.parametrize("fn, args", PROGRAMS)
def test_outputs_match_the_original(fn, args):
    original = scripted(fn)
    program = instrument(original)
    expected = original(*args)
    for _ in range(3):  # the profiling run, then optimized runs
        assert same(program(*args), expected)
        with hooked(jitter):
            assert same(program(*args), expected)


def test_module_driver_outputs_match_and_the_module_is_shared():
    driver = scripted_driver()
    program = instrument(driver)
    x = torch.linspace(-1, 1, 4)
    expected = driver(x)
    for _ in range(3):
        with hooked(jitter):
            assert same(program(x), expected)
    with torch.no_grad():
        driver.target.scale.fill_(2.0)  # the instrumented program runs on this very module instance
    assert same(program(x), driver(x)) and not same(program(x), expected)


def test_the_original_is_left_untouched():
    original = scripted(nested)
    before = str(original.graph)
    instrument(original)
    assert str(original.graph) == before
    assert "forkcheck::" not in before
    calls = []
    with hooked(lambda site, task: calls.append(site)):
        original(torch.ones(3))
    assert calls == []


# -- the graph change is what runs -----------------------------------------------------------------------------------


def _count_points(program: Instrumentation, args, runs: int) -> List[int]:
    """Points passed in each of ``runs`` runs; checks each was reported by a task running its own subgraph."""
    counts = []
    for _ in range(runs):
        calls: list = []
        with hooked(lambda site, task: calls.append((site, task))):
            program(*args)
        assert all(program.sites[site].task == program.static_task(task) for site, task in calls)
        assert {program.sites[site].task for site, _ in calls} == set(program.tasks)
        counts.append(len(calls))
    return counts


@pytest.mark.parametrize("executor", ["profiling", "legacy", "unoptimized"])
def test_every_run_passes_every_point_whatever_the_executor(executor):
    was_profiling = torch._C._jit_set_profiling_executor(executor != "legacy")
    was_optimizing = torch._C._get_graph_executor_optimize()
    torch._C._set_graph_executor_optimize(executor != "unoptimized")
    try:
        with quiet_jit():
            fresh = torch.jit.script(loop_of_forks)  # a new function: a new executor, made under this setting
        program = instrument(fresh)
        counts = _count_points(program, (torch.ones(2), 3), runs=5)
    finally:
        torch._C._jit_set_profiling_executor(was_profiling)
        torch._C._set_graph_executor_optimize(was_optimizing)
    # root: 3 x (fork, spawn, append, wait, resume, getitem, add ...); each of the 3 tasks forks a leaf: all pass
    assert counts[0] > 3 * 8 and counts == [counts[0]] * 5, counts
    assert program.steps == counts[-1] - 6  # spawn events (3 middle + 3 leaf) are not steps


# -- what the sites and tasks say ---------------------------------------------------------------------------------


def test_tasks_of_nested_forks_have_parents_and_fork_locations():
    program = instrument(scripted(nested))
    assert program.tasks[0].parent is None
    middle_task, leaf_in_middle, leaf_task = 1, 2, 3  # depth-first, in program order
    assert program.tasks[middle_task].parent == 0
    assert program.tasks[middle_task].location == line_of(nested, "fork-middle")
    assert program.tasks[leaf_in_middle].parent == middle_task
    assert program.tasks[leaf_in_middle].location == line_of(middle, "fork-leaf")
    assert program.tasks[leaf_task].parent == 0
    assert program.tasks[leaf_task].location == line_of(nested, "fork-leaf-2")
    assert len(program.tasks) == 4


def test_sites_name_the_op_its_task_and_its_line():
    program = instrument(scripted(nested))
    by_place = {(s.task, s.kind, s.location, s.event) for s in program.sites.values()}
    assert (2, "aten::mul", line_of(leaf, "leaf-mul"), "op") in by_place
    assert (3, "aten::mul", line_of(leaf, "leaf-mul"), "op") in by_place
    assert (1, "aten::wait", line_of(middle, "middle-wait"), "op") in by_place
    assert (1, "aten::wait", line_of(middle, "middle-wait"), "resume") in by_place
    assert (2, "prim::fork", line_of(middle, "fork-leaf"), "spawn") in by_place
    ends = sorted(s.task for s in program.sites.values() if s.event == "end")
    assert ends == [0, 1, 2, 3]
    assert not any(s.kind in ("prim::Constant", "prim::ListConstruct") for s in program.sites.values())


def test_attribute_writes_get_points_and_a_location():
    program = instrument(scripted_driver(Counter))
    calls_line = line_of(Counter.forward, "calls")
    kinds = {s.kind for s in program.sites.values() if s.location == calls_line}
    assert {"prim::GetAttr", "prim::SetAttr", "aten::add"} <= kinds
    # the parameter and buffer are read but never rebound: the only reads with a point are of ``calls``
    reads = [s for s in program.sites.values() if s.kind == "prim::GetAttr"]
    assert sorted(s.task for s in reads) == [1, 3, 5] and {s.location for s in reads} == {calls_line}
    assert program.tasks[1].location == line_of(Driver.forward, "driver-fork")
    assert [program.tasks[t].parent for t in range(1, 7)] == [0, 1, 0, 3, 0, 5]  # each target forks a leaf


def test_hook_sees_each_task_instance_with_its_static_task():
    program = instrument(scripted(loop_of_forks))
    calls: list = []
    with hooked(lambda site, task: calls.append((site, task, threading.get_ident()))):
        program(torch.ones(2), 3)
    tasks = {task for _, task, _ in calls}
    assert tasks == {0, 1, 2, 3, FANOUT + 1, 2 * FANOUT + 1, 3 * FANOUT + 1}
    assert program.spawned[2 * FANOUT + 1][0] == 2
    for site, task, _ in calls:
        assert program.sites[site].task == program.static_task(task)
    assert len({ident for *_, ident in calls}) >= 2  # forks really ran on the pool


# -- the hook slot --------------------------------------------------------------------------------------------------


def test_hook_is_restored_after_the_block_raises():
    program = instrument(scripted(nested))
    outer: list = []
    with hooked(lambda site, task: outer.append(site)):
        with pytest.raises(KeyError):
            with hooked(lambda site, task: None):
                program(torch.ones(2))
                raise KeyError("in the block")
        program(torch.ones(2))
    assert len(outer) == program.steps + 3, "the outer hook was not restored"  # every step, and 3 spawns
    program(torch.ones(2))
    assert len(outer) == program.steps + 3, "the outer hook outlived its block"


def test_callback_errors_are_reraised_after_the_run_and_stop_the_callback():
    program = instrument(scripted(nested))
    x = torch.linspace(0, 1, 4)
    calls: list = []

    def broken(site: int, task: int) -> None:
        calls.append(task)
        if task != 0:  # raises on a pool thread
            raise ZeroDivisionError("from the hook")

    with pytest.raises(ZeroDivisionError, match="from the hook") as info:
        with hooked(broken):
            result = program(x)
    assert same(result, scripted(nested)(x))  # the program itself was not disturbed
    assert sum(1 for task in calls if task != 0) == 1  # never called again after the error
    assert any("schedule hook" in note for note in info.value.__notes__)
    with hooked(lambda site, task: None):  # and the slot is free again
        program(x)


def test_a_failing_task_fails_the_run_and_keeps_the_hook():
    program = instrument(scripted(raises_in_task))
    outer: list = []
    with hooked(lambda site, task: outer.append(task)):
        with pytest.raises(Exception, match="bad leaf"):
            program(torch.ones(2))
        count = len(outer)
        program(torch.zeros(2) - 5)
        assert len(outer) > count


def test_only_scripted_programs_are_accepted():
    with pytest.raises(TypeError, match="ScriptFunction or a scripted module"):
        instrument(nested)
    with pytest.raises(TypeError):
        instrument(Target())  # an eager module


def test_ops_are_defined_once():
    ensure_ops()
    ensure_ops()
    assert torch.ops.forkcheck.point.default is not None
    calls: list = []
    with hooked(lambda site, task: calls.append((site, task))):
        torch.ops.forkcheck.point(7, 9)
    assert calls == [(7, 9)]


def test_a_second_copy_of_the_module_hooks_into_the_same_ops():
    # pytester restores ``sys.modules`` after an in-process run: the next run imports this module afresh, while the
    # ops stay registered (once per process) with the first copy's kernels
    import importlib
    import sys

    ensure_ops()
    first = sys.modules.pop("forkcheck.instrument")
    try:
        second = importlib.import_module("forkcheck.instrument")
        assert second is not first
        with quiet_jit():
            program = second.instrument(torch.jit.script(nested))
        calls: list = []
        with second.hooked(lambda site, task: calls.append(task)):
            program(torch.ones(2))
        assert len(calls) == program.steps + 3 > 3
    finally:
        sys.modules["forkcheck.instrument"] = first
    calls.clear()
    with hooked(lambda site, task: calls.append(task)):
        instrument(scripted(nested))(torch.ones(2))
    assert calls


def with_defaults(x: Tensor, k: int = 3, shift: float = 0.5) -> Tensor:
    return torch.jit.wait(torch.jit.fork(leaf, x + shift, k))


def test_arguments_bind_like_the_original():
    original = scripted(with_defaults)
    program = instrument(original)
    x = torch.linspace(0, 1, 3)
    assert same(program(x), original(x))
    assert same(program(x, 2), original(x, 2))
    assert same(program(x, shift=1.5), original(x, shift=1.5))
    assert same(program(k=4, x=x), original(k=4, x=x))
    with pytest.raises(TypeError, match="missing argument 'x'"):
        program(k=4)
    with pytest.raises(TypeError, match="unexpected arguments"):
        program(x, scale=2)
    with pytest.raises(TypeError, match="takes 3 arguments"):
        program(x, 1, 2.0, 3)
