"""Exhaustive search (DPOR, ``forkcheck.dpor``) against trying every choice and against sampled schedules, all under
forkcheck's own scheduler.

Run on demand: ``python benchmarks/bench_exhaustive.py [--seeds 5] [--cap 1000] [--instances 1] [--check-seeds 3]
[--only a,b] [--json PATH]``.
Each seeded bug of ``seeded_bugs.BUGS`` and each fixed twin of ``seeded_bugs.PURE`` runs its Python code under
forkcheck's scheduler (``EagerEngine``), ``--instances`` instances forked on the bug's fixed input (1: the program's
own 2-3 forks), the ground truth judging every run:

- **dpor**: the search with the default bound (2 preemptions): runs until the first wrong answer, runs to explore
  everything (``--cap`` at most) and the distinct interleavings it saw (``forkcheck.interleavings``);
- **every choice**: the same search without the reduction (every runnable task tried at every switch point within the
  bound), capped at ``--cap`` runs;
- **random / pct / portfolio**: schedules drawn from Hypothesis as a check draws them, runs until the first wrong
  answer, median over ``--seeds`` seeds (at most 100 runs a seed);
- **check**: ``forkcheck.check(bug, strategy="exhaustive")`` with the default budget (inputs drawn by Hypothesis):
  median ``stats.failed_after`` and ``stats.wrong_outcome_after`` over ``--check-seeds`` seeds, and seconds.
"""
from __future__ import annotations

import argparse
import copy
import inspect
import json
import os
import statistics
import sys
import time
from typing import Any, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
SAMPLED = ("random", "pct", "portfolio")


def eager_subject(bug: Any, instances: int) -> Any:
    """The bug's Python code under forkcheck's scheduler, judged like ``bench_schedules`` judges scripted runs."""
    import torch

    from bench_schedules import Subject
    from forkcheck.engines.eager import EagerEngine

    instance = copy.deepcopy(bug.target) if isinstance(bug.target, torch.nn.Module) else bug.target
    function = instance.forward if isinstance(instance, torch.nn.Module) else instance
    names = [name for name in inspect.signature(function).parameters if name != "self"]
    engine = EagerEngine(instance, instances, "benchmark", param_names=names)
    return Subject(bug, engine)


def search(subject: Any, cap: int, reduce: bool) -> dict[str, Any]:
    """One exhaustive search on the bug's fixed input: runs until wrong, runs in all, interleavings, complete."""
    from forkcheck.dpor import Exploration
    from forkcheck.engines import Observe

    exploration = Exploration(bound=2, budget=cap, reduce=reduce)
    wrong_after: Optional[int] = None
    started = time.perf_counter()
    for probe in exploration:
        wrong = subject.judge(lambda args: subject.engine.run(args, probe, Observe.NOTHING).result())
        if wrong and wrong_after is None:
            wrong_after = exploration.runs
    return {"wrong_after": wrong_after, "runs": exploration.runs, "interleavings": exploration.interleavings,
            "complete": exploration.complete, "seconds": round(time.perf_counter() - started, 2)}


def sampled(subject: Any, strategy: str, seeds: int) -> Optional[float]:
    """Median runs until the first wrong answer under drawn schedules (None: not within 100 runs in most seeds)."""
    from bench_schedules import schedules_until_found

    found = [schedules_until_found(subject, strategy, seed, 10, 10) for seed in range(seeds)]
    hits = sorted(f if f is not None else float("inf") for f in found)
    median = statistics.median(hits)
    return None if median == float("inf") else median


def check(bug: Any, seeds: int) -> dict[str, Any]:
    import forkcheck

    rows = []
    for seed in range(seeds):
        started = time.perf_counter()
        result = forkcheck.check(bug.target, seed=seed, strategy="exhaustive")
        rows.append((result.stats.failed_after, result.stats.wrong_outcome_after,
                     time.perf_counter() - started, result.verdict))

    def median(values: list) -> Any:
        known = [v for v in values if v is not None]
        return statistics.median(known) if known else None

    return {"failed_after": median([r[0] for r in rows]), "wrong_after": median([r[1] for r in rows]),
            "seconds": round(statistics.median(r[2] for r in rows), 1), "verdicts": [r[3] for r in rows]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--cap", type=int, default=1000)
    parser.add_argument("--instances", type=int, default=1)
    parser.add_argument("--check-seeds", type=int, default=3)
    parser.add_argument("--only", default="")
    parser.add_argument("--json", default="")
    options = parser.parse_args()

    import warnings

    warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated")
    import seeded_bugs

    wanted = set(filter(None, options.only.split(",")))
    subjects = [(bug.name, bug, True) for bug in seeded_bugs.BUGS]
    subjects += [(f"{name} (fixed)", seeded_bugs.SeededBug(f"{name} (fixed)", "", "", fixed, bug.make_args,
                                                           bug.is_buggy), False)
                 for bug in seeded_bugs.BUGS for name, fixed in seeded_bugs.PURE.items() if bug.name == name]
    rows = {}
    print("| program | dpor: wrong after / runs to explore all / distinct | every choice: wrong after / runs "
          "| random / pct / portfolio: wrong after (median) | check (exhaustive): fails after / wrong after / s |")
    print("|---|---|---|---|---|")
    for name, bug, buggy in subjects:
        if wanted and name not in wanted:
            continue
        subject = eager_subject(bug, options.instances)
        dpor = search(subject, options.cap, reduce=True)
        every = search(subject, options.cap, reduce=False)
        draws = {s: sampled(subject, s, options.seeds) for s in SAMPLED} if buggy else {}
        checked = check(bug, options.check_seeds) if options.check_seeds else {}
        rows[name] = {"dpor": dpor, "every_choice": every, "sampled": draws, "check": checked}

        def runs(r: dict) -> str:
            return f"{r['runs']}{'' if r['complete'] else '+ (cap)'}"

        print(f"| {name} | {dpor['wrong_after'] or '-'} / {runs(dpor)} / {dpor['interleavings']} "
              f"| {every['wrong_after'] or '-'} / {runs(every)} "
              f"| {' / '.join(str(draws.get(s) or 'not in 100') for s in SAMPLED) if buggy else '-'} "
              f"| {checked.get('failed_after')} / {checked.get('wrong_after') or '-'} / {checked.get('seconds')} |",
              flush=True)
    if options.json:
        with open(options.json, "w") as stream:
            json.dump(rows, stream, indent=1)


if __name__ == "__main__":
    main()
