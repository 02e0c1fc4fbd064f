"""Cost of race detection per schedule: plain scripted call, forkcheck's run without and with race detection.

Run on demand: ``python benchmarks/bench_races.py [--runs K]``. Each target is forked ``tasks`` times by forkcheck's
scripted driver, as a check does. Per run (one schedule), side by side in one process:

- ``plain``: the scripted driver called directly (no scheduling points, no policy);
- ``sched``: forkcheck's run without race detection (scheduling points, the schedule's policy);
- ``races``: the same run with the access log (a dispatch mode over every op) and the happens-before replay.

Two policies: ``none`` never delays (the instrumentation's own cost), ``drawn`` uses random schedules as a check draws
them (their yields and sleeps are part of every run with or without detection). Goal: ``races / plain`` <= 10x,
ThreadSanitizer's 5-15x being the anchor. Then whole default checks with detection off, on the first schedule of each
example (what the runner does: the analysis is predictive, and a task's ops depend on its inputs, not on the
schedule, so later schedules of the same example rarely add an access), and on every schedule.
"""
from __future__ import annotations

import argparse
import time
from typing import Callable, List

import torch
from torch import Tensor, nn

from forkcheck._warnings import quiet_jit
from forkcheck.engines.script import ScriptEngine
from forkcheck.schedules import Schedule


def foo(a: Tensor, b: int) -> Tensor:
    return a + b


def bar(a: Tensor) -> Tensor:
    fut = torch.jit.fork(foo, a, b=2)
    return torch.jit.wait(fut)


def column_means(x: Tensor) -> Tensor:
    return x.mean(dim=0)


def column_spread(x: Tensor) -> Tensor:
    return x.max(dim=0).values - x.min(dim=0).values


def summarize(x: Tensor) -> Tensor:
    means = torch.jit.fork(column_means, x)
    spread = torch.jit.fork(column_spread, x)
    return torch.cat([torch.jit.wait(means), torch.jit.wait(spread)])


def pipeline(x: Tensor) -> Tensor:
    summary = torch.jit.fork(summarize, x)
    norms = torch.jit.fork(torch.linalg.vector_norm, x, 2.0, [1])
    return torch.cat([torch.jit.wait(summary), torch.jit.wait(norms)])


def work(x: Tensor) -> Tensor:
    v = x.clone()
    for _ in range(4):
        v = torch.tanh(v @ v.T) + 1
    return v


def heavy(x: Tensor) -> Tensor:
    a = torch.jit.fork(work, x)
    b = torch.jit.fork(work, x)
    return torch.jit.wait(a) + torch.jit.wait(b)


class Ensemble(nn.Module):
    def __init__(self):
        super().__init__()
        self.heads = nn.ModuleList(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)) for _ in range(4))

    def forward(self, x: Tensor) -> Tensor:
        futures: List[torch.jit.Future[Tensor]] = []
        for h in self.heads:
            futures.append(torch.jit.fork(h, x))
        return torch.stack([torch.jit.wait(f).softmax(dim=-1) for f in futures]).mean(dim=0)


TARGETS = [
    ("doc example (bar)", bar, "a", lambda: torch.randn(4)),
    ("nested pipeline", pipeline, "x", lambda: torch.randn(4, 6)),
    ("ensemble of 4 heads", Ensemble(), "x", lambda: torch.randn(4, 8)),
    ("2 x 4 matmul+tanh 64x64", heavy, "x", lambda: torch.randn(64, 64)),
]
POLICIES = {
    "none": lambda i: Schedule("random", i, {"p": 0}),
    "drawn": lambda i: Schedule("random", i, {"p": 300 + (i * 97) % 700, "s": 10 + (i * 31) % 290}),
}


def per_run(calls: dict[str, Callable[[int], object]], runs: int, rounds: int = 5) -> dict[str, float]:
    """Seconds per call of each variant: the best of ``rounds`` rounds, variants interleaved (the machine is shared)."""
    for call in calls.values():
        for i in range(3):  # warm: the profiling executor's first calls
            call(i)
    best = {name: float("inf") for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            for i in range(runs):
                call(i)
            best[name] = min(best[name], (time.perf_counter() - start) / runs)
    return best


class _Forced:
    """Pins ``ScriptEngine.races`` for a whole check (the runner's per-example choice is ignored)."""

    def __init__(self, value: bool):
        self.value = value

    def __get__(self, obj: object, owner: type) -> bool:
        return self.value

    def __set__(self, obj: object, value: bool) -> None:
        pass


def check_seconds(obj: object, name: str, make_input: Callable[[], Tensor], detection: str) -> tuple[float, int]:
    """One default check (10 examples x 10 schedules); detection ``off``, ``first`` (per example, the default) or
    ``all`` schedules."""
    import strategies as fst
    from forkcheck import Settings, fork_safe
    from forkcheck.runner import check
    from forkcheck.target import Target

    shape = tuple(make_input().shape)
    target = Target.from_object(fork_safe(obj, **{name: fst.tensors(shape=shape)}), name=f"bench:{detection}")
    saved = ScriptEngine.__dict__.get("races")
    if detection != "first":
        ScriptEngine.races = _Forced(detection == "all")
    try:
        start = time.perf_counter()
        result = check(target, Settings(seed=1))
        assert result.verdict == "pass", result
        return time.perf_counter() - start, result.schedules
    finally:
        if saved is None and "races" in ScriptEngine.__dict__:
            del ScriptEngine.races


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--no-check", action="store_true", help="skip the whole-check figures")
    options = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op / {torch.get_num_interop_threads()} "
          f"inter-op threads, {options.tasks} tasks; per run (one schedule), best of 5 rounds of {options.runs}")
    print(f"{'target':26} {'policy':6} {'accesses':>8} {'plain us':>9} {'sched us':>9} {'races us':>9} "
          f"{'races/plain':>11} {'races/sched':>11}")
    for name, obj, param, make_input in TARGETS:
        with quiet_jit():
            engine = ScriptEngine(obj, [param], options.tasks)
            inputs = [make_input() for _ in range(options.runs + 3)]
            accesses = _accesses(engine, inputs[0])
            for policy, schedule in POLICIES.items():
                def run(races: bool) -> Callable[[int], object]:
                    def call(i: int) -> object:
                        engine.races = races
                        return engine.run([inputs[i]], schedule(i))
                    return call

                t = per_run({"plain": lambda i: engine.driver(inputs[i]), "sched": run(False), "races": run(True)},
                            options.runs)
                print(f"{name:26} {policy:6} {accesses:8d} {t['plain'] * 1e6:9.0f} {t['sched'] * 1e6:9.0f} "
                      f"{t['races'] * 1e6:9.0f} {t['races'] / t['plain']:10.1f}x {t['races'] / t['sched']:10.1f}x")
    if options.no_check:
        return
    print("\nwhole default check (10 examples x 10 schedules), race detection off / on the first schedule of each "
          "example (the default) / on every schedule")
    print(f"{'target':26} {'off s':>7} {'first s':>8} {'all s':>7} {'first/off':>9} {'all/off':>8}")
    check_seconds(bar, "a", TARGETS[0][3], "first")  # one-time imports and the first scripting out of the way
    for name, obj, param, make_input in TARGETS:
        seconds = {mode: check_seconds(obj, param, make_input, mode)[0] for mode in ("off", "first", "all")}
        print(f"{name:26} {seconds['off']:7.2f} {seconds['first']:8.2f} {seconds['all']:7.2f} "
              f"{seconds['first'] / seconds['off']:8.2f}x {seconds['all'] / seconds['off']:7.2f}x")


def _accesses(engine: ScriptEngine, x: Tensor) -> int:
    """How many accesses one run records (the target's size in tensor reads and writes)."""
    from forkcheck.engines.script import _Recorder
    from forkcheck.observe import AccessLog
    from forkcheck.schedules import run_under

    log = AccessLog(engine.program.sites)
    with log:
        run_under(_Recorder(POLICIES["none"](0).policy()), engine.program, x)
    return len(log.accesses)


if __name__ == "__main__":
    main()
