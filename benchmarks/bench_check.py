"""Cost of a default check against plain scripted calls, and the examples suite with -n 2 against -n 0.

Run on demand: ``python benchmarks/bench_check.py``. Prints ratios measured in one run (goals: check <= 3x the same
number of plain scripted fork/wait calls; ``-n 2`` >= 1.7x faster than ``-n 0`` on 2 cores), per schedule strategy,
and what splitting the schedules over pool sizes 1, 2 and 4 (three child processes) costs the suite against one size.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

import torch
from torch import Tensor, nn

import strategies as fst
from forkcheck import Settings
from forkcheck._warnings import quiet_jit
from forkcheck.runner import check
from forkcheck.target import Target

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def foo(a: Tensor, b: int) -> Tensor:
    return a + b


def bar(a: Tensor) -> Tensor:
    fut = torch.jit.fork(foo, a, b=2)
    return torch.jit.wait(fut)


class Ensemble(nn.Module):
    def __init__(self):
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(8, 4) for _ in range(4))

    def forward(self, x: Tensor) -> Tensor:
        futures = [torch.jit.fork(head, x) for head in self.heads]
        return torch.stack([torch.jit.wait(f) for f in futures]).mean(0)


def plain_calls(obj, make_input, tasks: int, runs: int) -> float:
    """Seconds for ``runs`` scripted calls that fork ``tasks`` instances, on a fresh input each (as a check does)."""
    with quiet_jit():
        scripted = torch.jit.script(obj)

        def driver_body(x: Tensor):
            futures = [torch.jit.fork(scripted, x) for _ in range(tasks)]
            return [torch.jit.wait(f) for f in futures]

        for _ in range(3):
            driver_body(make_input())
        start = time.perf_counter()
        for _ in range(runs):
            driver_body(make_input())
    return time.perf_counter() - start


def checked(obj, strategy: str = "portfolio") -> tuple[float, int]:
    start = time.perf_counter()
    result = check(Target.from_object(obj, name=f"bench:{type(obj).__name__}"), Settings(seed=1, strategy=strategy))
    assert result.verdict == "pass", result
    return time.perf_counter() - start, result.schedules


def suite_seconds(workers: str, *options: str) -> float:
    with tempfile.TemporaryDirectory() as report:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pytest", "examples", "-q", "-p", "xdist", "-n", workers,
                        "--forkcheck-seed", "1", "--forkcheck-report", report, *options], cwd=ROOT,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - start


def main() -> None:
    from forkcheck.marker import fork_safe

    checked(fork_safe(foo, a=fst.tensors(shape=(4,))))  # one-time imports (dispatch modes) out of the way
    rows = []
    for name, obj, make_input in [
        ("doc example (bar)", fork_safe(bar, a=fst.tensors(shape=(4,))), lambda: torch.randn(4)),
        ("ensemble of 4 heads", fork_safe(Ensemble(), x=fst.tensors(shape=(2, 8))), lambda: torch.randn(2, 8)),
    ]:
        for strategy in ("random", "pct", "portfolio"):
            seconds, runs = checked(obj, strategy)
            plain = plain_calls(obj, make_input, Settings().tasks, runs)
            rows.append((f"{name}, {strategy}", runs, seconds, plain))
    print(f"{'target, strategy':34} {'runs':>5} {'check s':>8} {'plain s':>8} {'ratio':>7}")
    for name, runs, seconds, plain in rows:
        print(f"{name:34} {runs:5d} {seconds:8.3f} {plain:8.3f} {seconds / plain:6.1f}x")
    serial, parallel = suite_seconds("0"), suite_seconds("2")
    print(f"examples suite: -n 0 {serial:.1f} s, -n 2 {parallel:.1f} s, speed-up {serial / parallel:.2f}x")
    one_size = suite_seconds("0", "--forkcheck-pool-sizes", "2")
    print(f"examples suite, -n 0: pool sizes 1,2,4 {serial:.1f} s, one size (2) {one_size:.1f} s, "
          f"cost of the split {serial / one_size:.2f}x")


if __name__ == "__main__":
    main()
