"""How often a lost update shows up, and what a run costs: plain scripted, instrumented (no hook), random, PCT.

Run on demand: ``python benchmarks/bench_perturb.py [--runs K]``. Two tasks forked on one tensor each read it,
compute a while and write ``read + 1`` back; a run "detects" when one increment is lost. Times are per run, as
ratios to the plain scripted program (the pure workload has the same shape and no race).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable, Tuple

import torch
from torch import Tensor

from forkcheck._warnings import quiet_jit
from forkcheck.instrument import instrument
from forkcheck.schedules import PCTPolicy, RandomPolicy, run_under


def bump(x: Tensor) -> Tensor:
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


def work(x: Tensor) -> Tensor:
    v = x.clone()
    for _ in range(4):
        v = torch.tanh(v @ v.T) + 1
    return v


def pure(x: Tensor) -> Tuple[Tensor, Tensor]:
    a = torch.jit.fork(work, x)
    b = torch.jit.fork(work, x)
    return torch.jit.wait(a), torch.jit.wait(b)


def measure(runs: int, call: Callable[[int, Tensor], object], make_input: Callable[[], Tensor]) -> Tuple[float, float]:
    """(fraction of runs that lost an update, seconds per run)."""
    lost, total = 0, 0.0
    for index in range(runs):
        x = make_input()
        start = time.perf_counter()
        call(index, x)
        total += time.perf_counter() - start
        lost += x.numel() == 4 and x[0].item() == 1.0
    return lost / runs, total / runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    runs = parser.parse_args().runs
    print(f"torch {torch.__version__}, inter-op threads {torch.get_num_interop_threads()}, {runs} runs each")
    for name, fn, make_input in (
        ("racy", racy, lambda: torch.zeros(4)),
        ("pure", pure, lambda: torch.linspace(-1, 1, 64 * 64).reshape(64, 64)),
    ):
        with quiet_jit():
            plain = torch.jit.script(fn)
        program = instrument(plain)
        for _ in range(3):  # past the profiling runs
            plain(make_input())
            program(make_input())
        steps = program.steps
        modes = {
            "plain scripted": lambda i, x: plain(x),
            "instrumented, no hook": lambda i, x: program(x),
            "random (p=0.9, 60us)": lambda i, x: run_under(RandomPolicy(i), program, x),
            "pct (d=2, k=steps)": lambda i, x: run_under(PCTPolicy(i, depth=2, steps=steps), program, x),
            "pct (d=3, k=steps)": lambda i, x: run_under(PCTPolicy(i, depth=3, steps=steps), program, x),
        }
        print(f"\n{name}: {steps} scheduling points a run")
        baseline = None
        for mode, call in modes.items():
            rate, seconds = measure(runs, call, make_input)
            baseline = baseline or seconds
            detection = f"lost update in {rate:6.1%} of runs" if name == "racy" else ""
            print(f"  {mode:24s} {seconds * 1e3:7.3f} ms/run  x{seconds / baseline:5.1f}  {detection}")


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    os._exit(0)  # skip teardown: after fork use torch may abort at exit (pytorch issue 60998)
