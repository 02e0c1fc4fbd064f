"""Predictive race detection on the real runtime: every rule of happens-before over fork/wait, both sides of a race
reported with their lines, no race on pure programs, and races found on the first schedule whatever the outputs."""
from __future__ import annotations

import inspect
import threading
from typing import List

import pytest
import torch
from torch import Tensor, nn

import forkcheck
from forkcheck.runner import AFTER_A_RACE
import strategies as fst
from forkcheck._warnings import quiet_jit
from forkcheck.engines import Observe
from forkcheck.engines.script import ScriptEngine
from forkcheck.instrument import instrument
from forkcheck.observe import AccessLog, storage_names
from forkcheck.oracles.races import race_findings
from forkcheck.schedules import Schedule

SEEDS = (0, 1, 2)

# -- programs (the lines a test looks for are marked ``# at: tag``) --------------------------------------------------


def reader(t: Tensor) -> Tensor:
    return t * 2  # at: read


def writer(t: Tensor) -> Tensor:
    t.add_(1)  # at: write
    return t.sum()


def read_while_parent_writes(x: Tensor) -> Tensor:
    buf = x.clone()  # at: made
    f = torch.jit.fork(reader, buf)
    buf.mul_(1.0)  # at: parent-write
    return torch.jit.wait(f)


def two_writers(x: Tensor) -> Tensor:
    buf = x.clone()
    f = torch.jit.fork(writer, buf)
    g = torch.jit.fork(writer, buf)
    return torch.jit.wait(f) + torch.jit.wait(g)


def two_readers(x: Tensor) -> Tensor:
    buf = x.clone()
    f = torch.jit.fork(reader, buf)
    g = torch.jit.fork(reader, buf)
    return torch.jit.wait(f) + torch.jit.wait(g)


def write_after_wait(x: Tensor) -> Tensor:
    buf = x.clone()
    f = torch.jit.fork(reader, buf)
    out = torch.jit.wait(f)
    buf.add_(1)
    return out + buf


def write_after_waiting_a_list(x: Tensor) -> Tensor:
    buf = x.clone()
    futures = [torch.jit.fork(reader, buf) for _ in range(3)]
    out = torch.zeros_like(x)
    for f in futures:
        out = out + torch.jit.wait(f)
    buf.add_(1)
    return out + buf


def separate_storages(x: Tensor) -> Tensor:
    a, b = x.clone(), x.clone()
    f = torch.jit.fork(writer, a)
    g = torch.jit.fork(writer, b)
    return torch.jit.wait(f) + torch.jit.wait(g)


def disjoint_rows(x: Tensor) -> Tensor:
    buf = torch.zeros(3, 4)
    f = torch.jit.fork(writer, buf[0])
    g = torch.jit.fork(writer, buf[2])
    return torch.jit.wait(f) + torch.jit.wait(g) + x.sum()


def overlapping_rows(x: Tensor) -> Tensor:
    buf = torch.zeros(3, 4)
    f = torch.jit.fork(writer, buf[0:2])
    g = torch.jit.fork(writer, buf[1:3])
    return torch.jit.wait(f) + torch.jit.wait(g) + x.sum()


def write_through_child(t: Tensor) -> Tensor:
    g = torch.jit.fork(writer, t)
    return torch.jit.wait(g)


def grandchild_races_with_root(x: Tensor) -> Tensor:
    buf = x.clone()
    f = torch.jit.fork(write_through_child, buf)
    y = buf * 3  # at: root-read
    return torch.jit.wait(f) + y.sum()


def grandchild_then_root(x: Tensor) -> Tensor:
    buf = x.clone()
    f = torch.jit.fork(write_through_child, buf)
    s = torch.jit.wait(f)
    return buf * 3 + s


def bump_input(x: Tensor) -> Tensor:
    x.add_(1)
    return x.sum()


class Counter(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("count", torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        self.count.add_(1)
        return x + self.count


class Ensemble(nn.Module):
    def __init__(self):
        super().__init__()
        self.heads = nn.ModuleList(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)) for _ in range(3))

    def forward(self, x: Tensor) -> Tensor:
        futures: List[torch.jit.Future[Tensor]] = []
        for h in self.heads:
            futures.append(torch.jit.fork(h, x))
        return torch.stack([torch.jit.wait(f) for f in futures]).mean(dim=0)


def column_stats(x: Tensor) -> Tensor:
    means = torch.jit.fork(torch.mean, x, [0])
    spread = torch.jit.fork(reader, x)
    return torch.cat([torch.jit.wait(means), torch.jit.wait(spread).max(dim=0).values])


def nested_pure(x: Tensor) -> Tensor:
    stats = torch.jit.fork(column_stats, x)
    norms = torch.jit.fork(torch.linalg.vector_norm, x, 2.0, [1])
    return torch.cat([torch.jit.wait(stats), torch.jit.wait(norms)])


def shared_reads(x: Tensor, w: Tensor) -> Tensor:
    futures = [torch.jit.fork(torch.matmul, x, w) for _ in range(3)]
    return torch.stack([torch.jit.wait(f) for f in futures]).sum(dim=0) + x @ w


# -- helpers --------------------------------------------------------------------------------------------------------


def line_of(fn, tag: str) -> str:
    """``file:line`` of the line of ``fn`` marked ``# at: tag``."""
    lines, start = inspect.getsourcelines(fn)
    for offset, text in enumerate(lines):
        if text.rstrip().endswith(f"# at: {tag}"):
            return f"{inspect.getsourcefile(fn)}:{start + offset}"
    raise AssertionError(f"no line tagged {tag} in {fn.__name__}")


def engine_for(target, names=("x",), tasks: int = 1) -> ScriptEngine:
    with quiet_jit():
        return ScriptEngine(target, list(names), tasks)


def races_per_run(engine: ScriptEngine, make_args,
                  observe: Observe = Observe.ACCESSES) -> list[list[forkcheck.Finding]]:
    """The race findings of one run per seed, each on fresh arguments (none for a run that logged no accesses)."""
    found = []
    for seed in SEEDS:
        with quiet_jit():
            run = engine.run(make_args(), Schedule("random", seed), observe)
        run.result()
        found.append(race_findings(run.log) if run.log is not None else [])
    return found


def vector() -> list[Tensor]:
    return [torch.linspace(-1.0, 1.0, 4)]


# -- the rules ------------------------------------------------------------------------------------------------------


def test_a_read_racing_a_write_is_reported_every_run_with_both_lines():
    engine = engine_for(read_while_parent_writes)
    for races in races_per_run(engine, vector):
        (race,) = races
        assert race.kind == "race"
        assert race.tasks == [1, 1001]
        sides = {(side["task"], side["op"], side["kind"], side["location"]) for side in race.detail["accesses"]}
        assert sides == {(1, "aten::mul_", "write", line_of(read_while_parent_writes, "parent-write")),
                         (1001, "aten::mul", "read", line_of(reader, "read"))}
        assert race.location == line_of(read_while_parent_writes, "parent-write")
        assert line_of(reader, "read") in race.message and line_of(read_while_parent_writes, "parent-write") in \
            race.message
        assert race.detail["storage"] == f"a tensor made by aten::clone at {line_of(read_while_parent_writes, 'made')}"


def test_two_writers_race():
    engine = engine_for(two_writers)
    for races in races_per_run(engine, vector):
        (race,) = races
        assert race.tasks == [1001, 1002]
        assert [side["kind"] for side in race.detail["accesses"]] == ["write", "write"]
        assert race.detail["ops"] == ["aten::add_", "aten::add_"]
        assert race.detail["locations"] == [line_of(writer, "write")] * 2


def test_timeline_events_draw_forks_waits_and_the_two_accesses():
    engine = engine_for(read_while_parent_writes)
    (race,) = races_per_run(engine, vector)[0]
    events = race.detail["events"]
    assert {e["kind"] for e in events} <= {"fork", "wait", "read", "write"}
    assert [e for e in events if e["conflict"]] == [
        {**side, "conflict": True} for side in sorted(race.detail["accesses"], key=lambda s: events.index(
            next(e for e in events if e["conflict"] and e["task"] == s["task"])))]
    forks = [(e["task"], e["child"]) for e in events if e["kind"] == "fork"]
    waits = [(e["task"], e["child"]) for e in events if e["kind"] == "wait"]
    assert forks == [(0, 1), (1, 1001)]
    assert (1, 1001) in waits and (0, 1) in waits
    assert events.index(next(e for e in events if e["kind"] == "fork" and e["child"] == 1001)) < \
        events.index(next(e for e in events if e["task"] == 1001))


@pytest.mark.parametrize("target", [two_readers, write_after_wait, write_after_waiting_a_list, separate_storages,
                                    disjoint_rows])
def test_not_races(target):
    """Two reads; a parent writing after it waited (also for futures taken from a list); different storages or
    disjoint rows of one."""
    engine = engine_for(target)
    assert races_per_run(engine, vector) == [[]] * len(SEEDS)


def test_overlapping_rows_race():
    engine = engine_for(overlapping_rows)
    for races in races_per_run(engine, vector):
        (race,) = races
        assert race.tasks == [1001, 1002]


def test_nested_forks_a_grandchild_races_with_the_root_until_the_wait_orders_it():
    engine = engine_for(grandchild_races_with_root)
    for races in races_per_run(engine, vector):
        (race,) = races
        assert race.tasks == [1, 1001001]
        assert {side["location"] for side in race.detail["accesses"]} == {
            line_of(writer, "write"), line_of(grandchild_races_with_root, "root-read")}
        assert "task 1.1.1 (forked at " in race.message  # named as a tree: the first grandchild of task 1
    # waiting for the child that waited for the grandchild orders the grandchild's write before the root's read
    assert races_per_run(engine_for(grandchild_then_root), vector) == [[]] * len(SEEDS)


def test_instances_writing_a_shared_input_race_on_it_by_name():
    engine = engine_for(bump_input, tasks=3)
    for races in races_per_run(engine, vector):
        (race,) = races
        assert race.detail["storage"] == "x"
        assert len(race.tasks) == 2 and set(race.tasks) <= {1, 2, 3}


def test_module_attribute_race_names_the_attribute():
    engine = engine_for(Counter(), tasks=2)
    for races in races_per_run(engine, vector):
        (race,) = races
        assert race.detail["storage"] == "self.count"
        assert race.tasks == [1, 2]


@pytest.mark.parametrize("target, names, make_args", [
    (Ensemble(), ("x",), lambda: [torch.randn(2, 4)]),
    (nested_pure, ("x",), lambda: [torch.randn(3, 4)]),
    (shared_reads, ("x", "w"), lambda: [torch.randn(3, 4), torch.randn(4, 2)]),
])
def test_pure_programs_have_no_race(target, names, make_args):
    engine = engine_for(target, names, tasks=3)
    assert races_per_run(engine, make_args) == [[]] * len(SEEDS)


def test_resume_sites_know_which_fork_they_wait_for():
    with quiet_jit():
        program = instrument(torch.jit.script(write_after_waiting_a_list))
    resumes = [site for site in program.sites.values() if site.event == "resume"]
    loop_fork = next(task for task, info in program.tasks.items() if info.parent == 0)
    assert [site.waits for site in resumes] == [(loop_fork,)]
    with quiet_jit():
        program = instrument(torch.jit.script(two_writers))
    assert sorted(site.waits for site in program.sites.values() if site.event == "resume") == [(1,), (2,)]


def test_engine_without_race_detection_reports_none():
    engine = engine_for(two_writers)
    assert races_per_run(engine, vector, Observe.SIGNATURE) == [[]] * len(SEEDS)
    assert races_per_run(engine, vector) != [[]] * len(SEEDS)  # the same runs logged: the race is there


def test_explicit_task_identity_as_an_eager_scheduler_gives_it():
    """Without scheduling ops the engine says which task runs (here two threads run one after the other)."""
    x = torch.zeros(4)
    log = AccessLog(names=storage_names({"x": x}))

    def task(task_id: int, body) -> None:
        with log:
            log.enter(task_id, f"eager.py:{task_id}")
            body()
        log.end(task_id)

    with log:
        log.enter(0, "eager.py:0")
        for task_id, body in ((1, lambda: x.add_(1)), (2, lambda: x[2:].sum())):
            log.fork(0, task_id, "eager.py:0")
            thread = threading.Thread(target=task, args=(task_id, body))
            thread.start()
            thread.join()
        log.join(0, 1, "eager.py:0")
        log.join(0, 2, "eager.py:0")
        x.mul_(2)  # after both joins: ordered after both tasks
    (race,) = race_findings(log)
    assert race.tasks == [1, 2] and race.detail["storage"] == "x"
    assert race.detail["locations"] == ["eager.py:1", "eager.py:2"]


# -- end to end -----------------------------------------------------------------------------------------------------


def test_check_reports_a_race_on_the_first_schedule_although_outputs_match():
    target = forkcheck.fork_safe(read_while_parent_writes, x=fst.tensors(shape=(4,), elements_min=-8, elements_max=8))
    result = forkcheck.check(target, seed=1, examples=2, schedules=6)
    assert result.verdict == "fail"
    assert [f.kind for f in result.findings] == ["race"]
    (race,) = result.findings
    # a race only predicted does not end the search: every example ran, looking for a wrong outcome, each with
    # AFTER_A_RACE of its schedules once the race was predicted
    assert (result.examples, result.schedules, result.stats.failed_after) == (2, 2 * AFTER_A_RACE, 1)
    assert result.stats.wrong_outcome_after is None
    assert race.detail["outputs_affected"] is False
    assert "outputs matched" in race.message
    assert race.replay


# -- later runs perturb only where the logged run saw tasks conflict --------------------------------------------------


def _points_passed_to(policy_class, monkeypatch) -> list[int]:
    """The sites at which ``policy_class.on_point`` is called from now on."""
    seen: list[int] = []
    original = policy_class.on_point

    def on_point(self, site: int, task: int) -> None:
        seen.append(site)
        original(self, site, task)

    monkeypatch.setattr(policy_class, "on_point", on_point)
    return seen


def test_before_a_logged_run_the_random_policy_decides_at_every_point(monkeypatch):
    from forkcheck.schedules import RandomPolicy

    engine = engine_for(two_writers)
    seen = _points_passed_to(RandomPolicy, monkeypatch)
    run = engine.run(vector(), Schedule("random", 1), Observe.SIGNATURE)
    run.result()
    assert len(seen) == run.steps > 0 and len(run.interleaving) >= 3  # root, then both forks at least


def test_once_tasks_conflicted_the_random_policy_decides_only_before_the_ops_that_did_and_pct_everywhere(monkeypatch):
    from forkcheck.schedules import PCTPolicy, RandomPolicy

    engine = engine_for(two_writers)
    engine.run(vector(), Schedule("random", 0), Observe.ACCESSES).result()
    seen = _points_passed_to(RandomPolicy, monkeypatch)
    run = engine.run(vector(), Schedule("random", 1), Observe.SIGNATURE)
    run.result()
    kinds = {engine.program.sites[site].kind for site in seen}
    assert kinds == {"aten::add_", "aten::sum"}, kinds  # each task's write, and its read of the other's write
    assert {engine.program.sites[site].task for site in seen} == {2, 3}  # each fork's static task
    assert run.steps > len(seen)  # the run still passed (and recorded) every point
    pct_seen = _points_passed_to(PCTPolicy, monkeypatch)
    pct_run = engine.run(vector(), Schedule("pct", 1), Observe.SIGNATURE)
    pct_run.result()
    assert len(pct_seen) == pct_run.steps  # PCT keeps every task's state from every point


def test_where_the_logged_run_saw_no_conflict_later_runs_are_plain_runs_of_the_driver(monkeypatch):
    from forkcheck.schedules import PCTPolicy, RandomPolicy

    engine = engine_for(two_readers, tasks=3)
    logged = engine.run(vector(), Schedule("random", 0), Observe.ACCESSES)
    assert logged.result() and race_findings(logged.log) == [] and len(logged.interleaving) > 1
    seen = _points_passed_to(RandomPolicy, monkeypatch) + _points_passed_to(PCTPolicy, monkeypatch)
    for strategy in ("random", "pct"):
        run = engine.run(vector(), Schedule(strategy, 1), Observe.SIGNATURE)
        assert [out.tolist() for out in run.result()] == [out.tolist() for out in logged.result()]
        assert run.interleaving == () and run.steps == 0  # no point passed: the uninstrumented driver ran
    assert seen == []


def test_coverage_says_when_no_logged_run_saw_an_order_to_vary() -> None:
    """Tasks that only read what they share have no conflicting order (the line says so); a write the parent makes
    after its wait is one, ordered by the wait (counted as interleavings, and no race)."""
    from forkcheck.coverage import statement

    readers = forkcheck.check(two_readers, seed=1, examples=2, schedules=4)
    assert (readers.verdict, readers.stats.coverage["conflicts"]) == ("pass", False)
    assert "with no conflicting accesses to order" in statement(readers.stats.coverage)
    ordered = forkcheck.check(write_after_wait, seed=1, examples=2, schedules=4)
    assert (ordered.verdict, ordered.stats.coverage["conflicts"]) == ("pass", True)
    assert "distinct interleaving" in statement(ordered.stats.coverage)
