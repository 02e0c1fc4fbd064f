"""forkcheck's controlled scheduler: interleavings op by op, replay, futures, errors, deadlocks and timeouts."""
from __future__ import annotations

import inspect
import random
import sys
import threading
import time
from typing import Any, Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from forkcheck import _warnings
from forkcheck.engines import Observe
from forkcheck.schedules import PCT, Choices, RandomChoices, Recorded, Replay, ReplayDiverged, Schedule
from forkcheck.engines.eager import (ControlledFuture, ControlledScheduler, Deadlock, EagerEngine, ScheduleError,
                                     ScheduleTimeout)

fork = torch.jit.fork
wait = torch.jit.wait


@pytest.fixture(autouse=True)
def _quiet_and_unpatched():
    saved = (torch._C.fork, torch._C.wait)
    with _warnings.quiet_jit():
        yield
    assert (torch._C.fork, torch._C.wait) == saved, "the scheduler left torch._C.fork/wait patched"


def read_modify_write(x: torch.Tensor) -> torch.Tensor:
    v = x.clone()
    v = v * 1
    x.copy_(v + 1)
    return x


def run_counter(choose: Any, tasks: int = 2) -> tuple[float, ControlledScheduler]:
    x = torch.zeros(1)
    with ControlledScheduler(choose, timeout=10) as scheduler:
        futures = [fork(read_modify_write, x) for _ in range(tasks)]
        for future in futures:
            wait(future)
    return x.item(), scheduler


def nested(log: list, x: torch.Tensor) -> list[torch.Tensor]:
    def leaf(i: int) -> torch.Tensor:
        log.append(i)
        return x + i

    def middle(i: int) -> torch.Tensor:
        futures = [fork(leaf, 10 * i + j) for j in range(2)]
        log.append(i)
        return sum(wait(f) for f in futures)

    futures = [fork(middle, i) for i in (1, 2)]
    return [wait(f) for f in futures]


# --- interleaving and replay ----------------------------------------------------------------------------------


def test_same_decisions_replay_the_same_interleaving():
    for seed in range(10):
        value, recorded = run_counter(random.Random(seed), tasks=3)
        assert recorded.decisions, "a three-task schedule makes choices"
        for _ in range(10):
            replayed_value, replayed = run_counter(Replay(recorded.decisions), tasks=3)
            assert replayed.order == recorded.order
            assert replayed.decisions == recorded.decisions
            assert replayed_value == value


def test_replay_reproduces_nested_forks_exactly():
    for seed in range(5):
        log: list = []
        with ControlledScheduler(random.Random(seed)) as recorded:
            outputs = nested(log, torch.zeros(2))
        for _ in range(10):
            log2: list = []
            with ControlledScheduler(Replay(recorded.decisions)) as replayed:
                outputs2 = nested(log2, torch.zeros(2))
            assert (replayed.order, replayed.events, log2) == (recorded.order, recorded.events, log)
            assert all(torch.equal(a, b) for a, b in zip(outputs, outputs2))


def test_the_same_seed_gives_the_same_schedule():
    assert run_counter(random.Random(7), 3)[1].order == run_counter(random.Random(7), 3)[1].order
    assert run_counter(PCT(7), 3)[1].order == run_counter(PCT(7), 3)[1].order


@pytest.mark.parametrize("make", [lambda seed: random.Random(seed), lambda seed: PCT(seed, steps=24)],
                         ids=["random", "pct"])
def test_seeded_search_finds_the_lost_update(make: Callable[[int], Any]):
    found = [seed for seed in range(50) if run_counter(make(seed))[0] != 2.0]
    assert found, "no schedule among 50 lost an update"
    value, replayed = run_counter(Replay(run_counter(make(found[0]))[1].decisions))
    assert value == 1.0  # the failing schedule replays


def test_no_preemption_means_no_lost_update():
    value, scheduler = run_counter(lambda n: 0)
    assert value == 2.0 and scheduler.preemptions == 0


def test_pure_program_gives_identical_outputs_under_every_schedule():
    def pure(x: torch.Tensor, k: int) -> torch.Tensor:
        y = x * k
        z = y.sin() + x.cos()
        return (z @ z.T).sum(dim=0)

    x = torch.arange(6.0).reshape(2, 3)
    expected = [pure(x, k) for k in range(3)]
    orders = set()
    for make in (random.Random, PCT):
        for seed in range(15):
            with ControlledScheduler(make(seed)) as scheduler:
                outputs = [wait(f) for f in [fork(pure, x, k) for k in range(3)]]
            orders.add(tuple(scheduler.order))
            assert all(torch.equal(a, b) for a, b in zip(outputs, expected))
    assert len(orders) > 5  # the schedules really differed


def test_order_dependent_appends_differ_across_schedules():
    def append(log: list, x: torch.Tensor, i: int) -> None:
        y = x + i
        log.append(i)
        y.mul_(2)

    orders = set()
    for seed in range(20):
        log: list = []
        with ControlledScheduler(random.Random(seed)):
            for future in [fork(append, log, torch.ones(1), i) for i in range(3)]:
                wait(future)
        assert sorted(log) == [0, 1, 2]
        orders.add(tuple(log))
    assert len(orders) >= 3


# --- futures, results and exceptions ------------------------------------------------------------------------


def test_nested_forks_compute_what_serial_code_computes():
    log: list = []
    with ControlledScheduler(random.Random(3)) as scheduler:
        outputs = nested(log, torch.zeros(2))
    assert [o.tolist() for o in outputs] == [[21.0, 21.0], [41.0, 41.0]]
    assert sorted(log) == [1, 2, 10, 11, 20, 21]
    assert scheduler.stats["tasks"] == 7 and set(scheduler.order) == set(range(7))
    forks = [(parent, child) for _, kind, parent, child in scheduler.events if kind == "fork"]
    assert sorted(forks)[:2] == [(0, 1), (0, 2)] and len(forks) == 6


def test_future_methods_work():
    with ControlledScheduler(random.Random(1)):
        future = fork(torch.add, torch.ones(2), 1)
        assert future.value().tolist() == [2.0, 2.0]
        assert future.done()
        other = fork(lambda: torch.ones(1) * 3)
        assert other.wait().item() == 3.0
        assert wait(other).item() == 3.0  # a second wait returns the same value
    late = fork(lambda: torch.zeros(1))  # outside any schedule: the real runtime
    assert not isinstance(late, ControlledFuture) and wait(late).item() == 0.0


def test_kwargs_reach_the_task():
    with ControlledScheduler(random.Random(1)):
        assert wait(fork(torch.add, torch.ones(1), other=torch.ones(1), alpha=3)).item() == 4.0


def test_exception_is_delivered_at_wait():
    def boom(x: torch.Tensor) -> None:
        x.add_(1)
        raise ValueError("boom in a task")

    for seed in range(5):
        x = torch.zeros(1)
        with ControlledScheduler(random.Random(seed)) as scheduler:
            future = fork(boom, x)
            with pytest.raises(ValueError, match="boom in a task"):
                wait(future)
        assert scheduler.failed_task == 1 and isinstance(scheduler.errors[1], ValueError)
        assert x.item() == 1.0


def test_unwaited_tasks_still_run():
    done: list = []

    def child(x: torch.Tensor, i: int) -> None:
        x.add_(1)
        done.append(i)

    x = torch.zeros(1)
    with ControlledScheduler(random.Random(2)) as scheduler:
        futures = [fork(child, x, i) for i in range(3)]
    assert sorted(done) == [0, 1, 2] and x.item() == 3.0
    assert all(f.done() for f in futures) and scheduler.stats["tasks_run"] == 4
    assert futures[0].wait() is None  # waitable after the schedule


def test_unwaited_task_exception_is_recorded_not_raised():
    with ControlledScheduler(random.Random(2)) as scheduler:
        fork(lambda: 1 / 0)
    assert scheduler.failed_task == 1 and isinstance(scheduler.errors[1], ZeroDivisionError)


def test_scripted_code_and_real_futures_keep_working():
    @torch.jit.script
    def negate(x: torch.Tensor) -> torch.Tensor:
        return torch.jit.wait(torch.jit.fork(torch.neg, x))

    with ControlledScheduler(random.Random(1)):
        real = negate(torch.ones(2))  # its forks run on the real runtime
        controlled = wait(fork(negate, torch.ones(2)))
        scripted_now = torch.jit.script(read_modify_write)  # scripting still works while installed
    assert real.tolist() == controlled.tolist() == [-1.0, -1.0]
    assert scripted_now(torch.zeros(1)).item() == 1.0


def test_grad_mode_follows_the_fork():
    with torch.no_grad(), ControlledScheduler(random.Random(1)):
        assert wait(fork(torch.is_grad_enabled)) is False
    with ControlledScheduler(random.Random(1)):
        assert wait(fork(torch.is_grad_enabled)) is True


# --- failures: patch restored, deadlocks, timeouts ----------------------------------------------------------


ORIGINAL = (torch._C.fork, torch._C.wait)


def test_patch_restored_after_an_exception_in_the_block():
    ran: list = []
    with pytest.raises(KeyError):
        with ControlledScheduler(random.Random(1)):
            assert (torch._C.fork, torch._C.wait) != ORIGINAL
            fork(lambda: ran.append(torch.ones(1) + 1))
            raise KeyError("the test body failed")
    assert (torch._C.fork, torch._C.wait) == ORIGINAL
    assert len(ran) == 1  # the pending task still ran


def test_deadlock_on_itself_is_a_clear_error():
    box: list = []

    def wait_for_myself() -> Any:
        torch.ones(1).add_(1)
        return wait(box[0])

    with pytest.raises(Deadlock, match=r"task 1 \(.*wait_for_myself\) waits for task 1"):  # not the timeout's error
        with ControlledScheduler(random.Random(1), timeout=600):
            box.append(fork(wait_for_myself))
            wait(box[0])


def test_wait_cycle_is_a_deadlock_also_when_nobody_waits():
    futures: dict = {}

    def first() -> Any:
        while "second" not in futures:
            torch.ones(1) * 2  # a switch point: the root gets to fork the second task
        return wait(futures["second"])

    def second() -> Any:
        torch.ones(1) * 2
        return wait(futures["first"])

    for seed in range(3):
        futures.clear()
        with pytest.raises(Deadlock, match="waits for task 2 .*waits for task 1"):
            with ControlledScheduler(random.Random(seed), timeout=5):
                futures["first"] = fork(first)
                futures["second"] = fork(second)
    assert not [t for t in threading.enumerate() if t.name.startswith("forkcheck-task")]


LOCK = threading.Lock()


class _Guarded:
    def __init__(self):
        self._lock = threading.RLock()
        self.total = torch.zeros(1)

    def add(self, x: torch.Tensor) -> None:
        with self._lock:  # a read-modify-write no other task may split
            self.total.copy_(self.total + x)


def _locked_double(x: torch.Tensor) -> torch.Tensor:
    with LOCK:
        y = x * 2  # tensor ops with the lock held: switch points where no other task may run
        y = y + 1
    return y - 1


@pytest.mark.parametrize("seed", range(8))
def test_a_task_holding_a_lock_across_tensor_ops_is_not_switched(seed: int):
    """A task given the baton that then waited for the lock would block where no switch point is: a false hang."""
    x = torch.ones(3)
    with ControlledScheduler(random.Random(seed), timeout=5) as scheduler:
        outputs = [wait(f) for f in [fork(_locked_double, x) for _ in range(3)]]
    assert all(torch.equal(out, x * 2) for out in outputs)
    guarded = _Guarded()
    with ControlledScheduler(random.Random(seed), timeout=5):
        for future in [fork(guarded.add, torch.ones(1)) for _ in range(3)]:
            wait(future)
    assert guarded.total.item() == 3  # the lock kept every update: none lost
    assert scheduler.switch_points > 0


def test_the_same_read_modify_write_without_its_lock_loses_updates_under_some_schedule():
    class Unguarded(_Guarded):
        def add(self, x: torch.Tensor) -> None:
            self.total.copy_(self.total + x)

    totals = set()
    for seed in range(20):
        unguarded = Unguarded()
        with ControlledScheduler(random.Random(seed), timeout=5):
            for future in [fork(unguarded.add, torch.ones(1)) for _ in range(3)]:
                wait(future)
        totals.add(unguarded.total.item())
    assert 3 in totals and min(totals) < 3, totals


def test_holds_a_lock_reads_the_with_blocks_of_the_stack():
    from forkcheck.locks import holds_a_lock

    def inner() -> bool:
        return holds_a_lock(sys._getframe())

    with LOCK:
        assert holds_a_lock(sys._getframe()) and inner()  # a callee of the block holds it too
    with torch.no_grad():  # a context manager that is no lock
        assert not holds_a_lock(sys._getframe())
    assert not holds_a_lock(sys._getframe()) and not inner()


def test_task_without_switch_points_times_out():
    stop = threading.Event()

    def spin() -> None:
        torch.ones(1) + 1
        while not stop.is_set():
            pass

    try:
        with pytest.raises(ScheduleTimeout, match=r"0.3 s; task 1 \(.*spin\) was running at .*test_eager.py") as err:
            with ControlledScheduler(random.Random(1), timeout=0.3):
                wait(fork(spin))
        assert (torch._C.fork, torch._C.wait) == ORIGINAL
        lines, first = inspect.getsourcelines(spin)
        assert err.value.location in {f"{__file__}:{first + 2}", f"{__file__}:{first + 3}"}  # the loop, not the wait
    finally:
        stop.set()  # the one thread a timeout leaves behind


def test_endless_task_with_tensor_ops_times_out_and_unwinds():
    def endless(x: torch.Tensor) -> None:
        while True:
            x.add_(1)

    with pytest.raises(ScheduleTimeout, match="still reaching switch points"):
        with ControlledScheduler(random.Random(1), timeout=0.3):
            futures = [fork(endless, torch.zeros(1)) for _ in range(2)]
            wait(futures[0])
    assert (torch._C.fork, torch._C.wait) == ORIGINAL
    time.sleep(0.05)
    assert not [t for t in threading.enumerate() if t.name.startswith("forkcheck-task")]


def test_stopped_schedule_refuses_further_forks():
    box: list = []
    with ControlledScheduler(random.Random(1), timeout=5) as scheduler:
        box.append(fork(lambda: wait(box[0])))
        with pytest.raises(Deadlock):
            wait(box[0])
        with pytest.raises(ScheduleError, match="stopped by an earlier error"):
            fork(torch.ones, 1)
        assert (torch.ones(1) + 1).item() == 2.0  # the root's own ops still run
    assert scheduler.failed_task is None


# --- choices ---------------------------------------------------------------------------------------------------


def test_bare_choosers_run_on_the_controller_thread_and_only_for_real_choices():
    controller = threading.get_ident()
    seen: list = []
    rng = random.Random(4)

    def choose(n: int) -> int:
        seen.append((threading.get_ident(), n))
        return rng.randrange(n)

    log: list = []
    with ControlledScheduler(choose) as scheduler:
        nested(log, torch.zeros(2))
    assert seen and all(ident == controller and n > 1 for ident, n in seen)
    assert len(seen) == len(scheduler.decisions)


@settings(max_examples=30, deadline=None, database=None)
@given(data=st.data())
def test_hypothesis_draws_drive_the_schedule(data: Any):
    value, scheduler = run_counter(lambda n: data.draw(st.integers(0, n - 1)))
    assert value in (1.0, 2.0)
    assert scheduler.preemptions <= len(scheduler.decisions)


def test_hypothesis_finds_and_shrinks_the_lost_update():
    seen: list = []

    @settings(max_examples=200, deadline=None, database=None)
    @given(data=st.data())
    def counter_is_two(data: Any) -> None:
        value, scheduler = run_counter(lambda n: data.draw(st.integers(0, n - 1)))
        seen.append((value, scheduler))
        assert value == 2.0

    with pytest.raises(AssertionError):
        counter_is_two()
    first_failure = next(scheduler for value, scheduler in seen if value != 2.0)
    shrunk = seen[-1][1]  # Hypothesis reruns the minimal example last
    assert shrunk.preemptions < first_failure.preemptions and shrunk.preemptions <= 3
    assert run_counter(Replay(shrunk.decisions))[0] == 1.0


def test_pct_all_zero_draws_never_preempt():
    pct = PCT(lambda n: 0, depth=3, steps=10)
    assert pct.change_points == {}
    value, scheduler = run_counter(pct, tasks=3)
    assert value == 3.0 and scheduler.preemptions == 0


def test_pct_change_point_lowers_the_running_task():
    pct = PCT(lambda n: 0, depth=2, steps=10)
    pct.change_points = {2: 1}
    assert pct.pick([0, 1], True) == 0  # step 1: the root (highest priority) goes on
    assert pct.pick([0, 1], True) == 1  # step 2: the root drops below task 1


def test_replay_that_does_not_fit_raises():
    with pytest.raises(ReplayDiverged):
        Replay([5]).pick([0, 1], True)
    assert Replay([1]).pick([3], False) == 0  # no real choice: no decision used


def test_bad_choice_is_an_error():
    with pytest.raises(ValueError, match="option 7 of"):
        run_counter(lambda n: 7)


def picks(chooser: Any, count: int = 40) -> list[int]:
    return [chooser.pick(list(range(1 + i % 4)), i % 3 != 0) for i in range(count)]


def test_a_schedule_makes_its_algorithm_s_chooser():
    random_chooser = Schedule("random", 1).chooser()
    assert isinstance(random_chooser, RandomChoices)
    assert picks(random_chooser) == picks(RandomChoices(random.Random(1))) == picks(Schedule("random", 1).chooser())
    pct = Schedule("pct", 1, {"d": 3, "k": 20}).chooser()
    assert isinstance(pct, PCT) and (pct.depth, pct.steps) == (3, 20)
    assert picks(pct) == picks(PCT(random.Random(1), depth=3, steps=20))
    replay = Recorded([1, 0]).chooser()
    assert isinstance(replay, Replay) and (replay.decisions, replay.position) == ([1, 0], 0)
    assert Recorded([1, 0]).chooser() is not replay  # each run replays from the start
    with pytest.raises(ValueError, match="unknown schedule strategy"):
        Schedule("dfs", 1)


def test_choosers_over_a_choose_callable_draw_from_it():
    assert type(Choices(lambda n: 0)) is Choices and Choices(lambda n: n - 1).pick([4, 5, 6], True) == 2
    asked: list = []
    PCT(lambda n: asked.append(n) or 0, depth=2, steps=5, max_tasks=4)
    assert asked == [4, 3, 2, 2**31, 6]  # the priority shuffle, the late tasks' seed, one change point


def test_choices_stop_asking_after_max_choices():
    asked: list = []
    value, scheduler = run_counter(Choices(lambda n: asked.append(n) or n - 1, max_choices=2), tasks=3)
    assert len(asked) == 2 and len(scheduler.decisions) > 2
    assert scheduler.decisions[2:] == [0] * (len(scheduler.decisions) - 2)


# --- the engine -------------------------------------------------------------------------------------------------


def test_engine_runs_tasks_and_counts():
    engine = EagerEngine(read_modify_write, tasks=2, reason="does not script")
    assert (engine.name, engine.reason, engine.module) == ("eager", "does not script", None)
    finals = set()
    for seed in range(30):
        x = torch.zeros(1)
        outputs = engine.run([x], Schedule("pct" if seed % 2 else "random", seed), Observe.NOTHING).result()
        assert len(outputs) == 2 and all(o is x for o in outputs)
        finals.add(x.item())
    assert finals == {1.0, 2.0}
    stats = engine.stats
    assert stats["schedules"] == 30 and 1 < stats["interleavings"] <= 30 and stats["preemptions"] > 0
    module = torch.nn.Linear(2, 2)
    assert EagerEngine(module, 3, "r").module is module



def test_engine_calibrates_pct_steps_and_reads_schedule_params():
    engine = EagerEngine(read_modify_write, tasks=2, reason="r")
    steps = engine.calibrate([torch.zeros(1)])
    assert engine.last.preemptions == 0 and steps == engine.last.steps > 4
    assert engine.stats["schedules"] == 0  # calibration is not a schedule
    pct = Schedule("pct", 5, {"d": 3, "k": steps}).chooser()
    assert isinstance(pct, PCT) and (pct.depth, pct.steps) == (3, steps)
    finals = []
    for seed in range(50):
        x = torch.zeros(1)
        run = engine.run([x], Schedule("pct", seed, {"d": 2, "k": steps}), Observe.NOTHING)
        run.result()
        finals.append(x.item())
    assert 1.0 in finals and run.interleaving == tuple(engine.last.order)
