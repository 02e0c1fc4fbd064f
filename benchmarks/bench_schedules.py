"""Schedules until a seeded bug first shows: forkcheck's random, PCT and portfolio schedules against plain re-running.

Run on demand: ``python benchmarks/bench_schedules.py [--seeds 10] [--cap 6000] [--plain-processes 3]
[--check-seeds 10] [--only a,b]``.
Each bug of ``seeded_bugs.BUGS`` (a target with a planted schedule-dependent defect and a ground-truth check) is
measured in a process of its own, so that a bug which corrupts memory (unsynchronised list appends can) costs a retry,
not the run:

- **forkcheck schedules**: the scripted driver forkcheck builds (``tasks`` instances of the target forked on the same
  inputs) run under schedules drawn from Hypothesis as a check draws them (``examples`` x ``schedules``, each
  example's schedules drawn before its runs, PCT's ``k`` calibrated by one unperturbed run), on the bug's fixed input;
  the first of each example's runs logged, as a check logs it (the later ones perturb only the ops that conflicted
  in it); the count is runs until the ground truth first sees the wrong answer. Median over ``--seeds`` seeds, per strategy
  (``portfolio`` takes random and PCT schedules by turns, two to one).
- **plain re-running**: the same scripted driver, not instrumented, re-run ``--cap`` times on fresh inputs, split over
  ``--plain-processes`` processes (how often it goes wrong differs between processes by more than 10x). Its median
  runs until the first wrong answer is estimated from the fraction of wrong runs (geometric: ``ln 2 / -ln(1 - p)``).
- **forkcheck.check**: the whole check with the default budget (inputs drawn by Hypothesis, forkcheck's own oracles):
  the kinds of the first findings, the median of ``stats.failed_after``, the concurrent schedules run until the
  first finding (0 when the serial run already showed the defect, as it does for a write to an input or a module),
  and of ``stats.wrong_outcome_after``, until one's outcome went wrong (not only a race predicted).

Goals (issue 3): every bug found within the default budget, median <= 3 schedules, >= 50x fewer runs than plain.
"""
from __future__ import annotations

import argparse
import copy
import inspect
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

STRATEGIES = ("random", "pct", "portfolio")
HERE = os.path.dirname(os.path.abspath(__file__))


class _Detected(Exception):
    pass


def _detected() -> None:
    raise _Detected()  # one raise site: Hypothesis tells failures apart by where they were raised


# ---------------------------------------------------------------------------------------- in the per-bug process


@dataclass
class Subject:
    """One bug with its engine: the instrumented driver for schedules, the plain scripted driver for re-runs."""

    bug: Any  # seeded_bugs.SeededBug
    engine: Any  # forkcheck.engines.script.ScriptEngine

    @classmethod
    def build(cls, bug: Any, tasks: int) -> "Subject":
        import torch

        from forkcheck._warnings import quiet_jit
        from forkcheck.engines.script import ScriptEngine

        instance = copy.deepcopy(bug.target) if isinstance(bug.target, torch.nn.Module) else bug.target
        function = instance.forward if isinstance(instance, torch.nn.Module) else instance
        names = [name for name in inspect.signature(function).parameters if name != "self"]
        with quiet_jit():
            engine = ScriptEngine(instance, names, tasks)
        return cls(bug, engine)

    def judge(self, call: Callable[[list], Sequence[Any]]) -> bool:
        """Run ``call(args)`` on a fresh input and a reset module; whether the ground truth sees the bug."""
        from seeded_bugs import Run

        args = self.bug.make_args()
        self.bug.reset(self.engine.module)
        outputs = list(call(args))
        return self.bug.is_buggy(Run(args, outputs, self.engine.module))


def schedules_until_found(subject: Subject, strategy: str, seed: int, examples: int, per_example: int) -> Optional[int]:
    """Runs until the first wrong answer under schedules drawn as a check draws them; None if the budget ran out."""
    import hypothesis
    from hypothesis import HealthCheck, Phase
    from hypothesis import strategies as st

    from forkcheck.engines import Observe
    from forkcheck.schedules.portfolio import draw_schedules, members, with_steps

    steps = 0
    if "pct" in members(strategy):
        steps = min(subject.engine.calibrate(subject.bug.make_args()), 100_000)
    runs, found = 0, None

    @hypothesis.settings(max_examples=examples, database=None, deadline=None, phases=[Phase.generate],
                         derandomize=False, suppress_health_check=list(HealthCheck), report_multiple_bugs=False)
    @hypothesis.seed(seed)
    @hypothesis.given(data=st.data())
    def search(data: Any) -> None:
        nonlocal runs, found
        if found is not None:  # Hypothesis replays a failing example: answer without running again
            _detected()
        drawn = with_steps(draw_schedules(lambda source, label: data.draw(source, label=label), strategy, per_example),
                           steps)
        for index, schedule in enumerate(drawn):
            runs += 1
            # as a check runs them: the first logged (the later ones perturb only the ops that conflicted in it)
            observe = Observe.ACCESSES if index == 0 else Observe.NOTHING
            if subject.judge(lambda args: subject.engine.run(args, schedule, observe).result()):
                found = runs
                _detected()

    try:
        search()
    except _Detected:
        pass
    except hypothesis.errors.HypothesisException:
        if found is None:
            raise
    return found


def plain_runs(subject: Subject, cap: int) -> dict[str, Any]:
    """Wrong answers in ``cap`` plain runs of the scripted driver, and the run that showed the first one."""
    call = lambda args: subject.engine.driver(*args)  # noqa: E731
    for _ in range(3):  # past the profiling executor's first runs
        subject.judge(call)
    wrong, first = 0, None
    for run in range(1, cap + 1):
        if subject.judge(call):
            wrong += 1
            first = first or run
    return {"wrong": wrong, "first": first, "runs": cap}


def check_runs(bug: Any, seeds: Sequence[int], strategy: str) -> dict[str, Any]:
    """``forkcheck.check`` with the default budget per seed: concurrent schedules run until its first finding (0:
    the serial run showed one; None: it passed), and until one's outcome went wrong (None: none did)."""
    import forkcheck

    counts: list[Optional[int]] = []
    wrong: list[Optional[int]] = []
    kinds: set[str] = set()
    for seed in seeds:
        result = forkcheck.check(bug.target, seed=seed, strategy=strategy)
        if result.verdict == "error":
            raise RuntimeError(f"{bug.name}: forkcheck errored: {result.error}")
        counts.append(result.stats.failed_after if result.verdict == "fail" else None)
        wrong.append(0 if result.stats.found_by == "serial run" else result.stats.wrong_outcome_after)
        kinds.update(f.kind for f in result.findings[:1])
    return {"counts": counts, "wrong": wrong, "kinds": sorted(kinds)}


def child(options: argparse.Namespace) -> None:
    """Measure one bug; one JSON line per finished phase on stdout (the parent keeps what arrived before a crash)."""
    from forkcheck.settings import Settings
    from seeded_bugs import BUGS

    defaults = Settings()
    bug = next(b for b in BUGS if b.name == options.child)
    subject = Subject.build(bug, defaults.tasks)
    seeds = list(range(1, options.seeds + 1))
    done = set(options.skip.split(",")) if options.skip else set()

    def emit(phase: str, value: Any, started: float) -> None:
        print(json.dumps({"phase": phase, "value": value, "seconds": round(time.perf_counter() - started, 2)}),
              flush=True)

    for strategy in STRATEGIES:
        if strategy not in done:
            started = time.perf_counter()
            emit(strategy, [schedules_until_found(subject, strategy, seed, defaults.examples, defaults.schedules)
                            for seed in seeds], started)
    for strategy in STRATEGIES if options.check_seeds else ():
        if f"check-{strategy}" not in done:
            started = time.perf_counter()
            emit(f"check-{strategy}", check_runs(bug, seeds[: options.check_seeds], strategy), started)
    plain = next((phase for phase in plain_phases(options) if phase not in done), None)
    if plain is not None:  # last, one per process: it may corrupt the heap, and its rate differs between processes
        started = time.perf_counter()
        emit(plain, plain_runs(subject, options.cap // options.plain_processes), started)


# ----------------------------------------------------------------------------------------------- in the parent


def plain_phases(options: argparse.Namespace) -> list[str]:
    return [f"plain-{i}" for i in range(1, options.plain_processes + 1)]


def plain_total(phases: dict[str, Any], options: argparse.Namespace) -> Optional[dict[str, Any]]:
    """Plain re-running summed over its processes (None if none finished), with the wrong runs of each."""
    done = [phases[p]["value"] for p in plain_phases(options) if p in phases]
    if not done:
        return None
    firsts = [run["first"] + i * run["runs"] for i, run in enumerate(done) if run["first"]]
    return {"wrong": sum(run["wrong"] for run in done), "runs": sum(run["runs"] for run in done),
            "first": min(firsts) if firsts else None, "each": [run["wrong"] for run in done]}


def measure(name: str, options: argparse.Namespace) -> tuple[dict[str, Any], list[str]]:
    """Run a bug's processes until every phase finished (one plain phase per process; a process that died is
    followed by one for the phases it did not finish), within a bounded number of processes."""
    wanted = [*STRATEGIES, *plain_phases(options), *(f"check-{s}" for s in STRATEGIES if options.check_seeds)]
    phases: dict[str, Any] = {}
    crashes: list[str] = []
    for _attempt in range(options.plain_processes + 2):
        if all(phase in phases for phase in wanted):
            break
        command = [sys.executable, os.path.abspath(__file__), "--child", name, "--seeds", str(options.seeds),
                   "--cap", str(options.cap), "--check-seeds", str(options.check_seeds), "--skip", ",".join(phases),
                   "--plain-processes", str(options.plain_processes)]
        proc = subprocess.run(command, cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for line in proc.stdout.splitlines():
            if line.startswith("{"):
                record = json.loads(line)
                phases[record["phase"]] = record
        if proc.returncode != 0:
            tail = [line for line in proc.stderr.splitlines() if line.strip() and "Warning" not in line][-1:]
            crashes.append(f"exit {proc.returncode} after phases {sorted(phases) or 'none'}"
                           + (f": {tail[0][:120]}" if tail else ""))
    return phases, crashes


def plain_median(wrong: int, runs: int) -> float:
    """Median runs until the first wrong answer, for a run that is wrong with probability ``wrong / runs``."""
    if wrong == 0:
        return math.inf
    p = wrong / runs
    return 1.0 if p >= 1 else max(1.0, float(math.ceil(math.log(0.5) / math.log1p(-p))))


def median(values: Sequence[Optional[int]]) -> float:
    """Median with "not found" counted as worse than any count."""
    return statistics.median(math.inf if v is None else v for v in values)


def _fmt(value: float, budget: int) -> str:
    return f"not found in {budget}" if math.isinf(value) else f"{value:g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10, help="seeds per bug and strategy (median over them)")
    parser.add_argument("--cap", type=int, default=6000, help="plain re-runs per bug, split over its processes")
    parser.add_argument("--plain-processes", type=int, default=3, help="processes plain re-running is split over")
    parser.add_argument("--check-seeds", type=int, default=10, help="seeds for the forkcheck.check columns (0: skip)")
    parser.add_argument("--only", default="", help="comma-separated bug names")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--skip", default="", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        child(options)
        return

    import torch

    from forkcheck.settings import Settings
    from seeded_bugs import BUGS

    defaults = Settings()
    budget = defaults.examples * defaults.schedules
    bugs = [b for b in BUGS if not options.only or b.name in options.only.split(",")]
    print(f"torch {torch.__version__}, inter-op threads {torch.get_num_interop_threads()}, {os.cpu_count()} cores; "
          f"tasks={defaults.tasks}; budget {defaults.examples} examples x {defaults.schedules} schedules; "
          f"{options.seeds} seeds; plain {options.cap} runs in {options.plain_processes} processes; "
          f"check column over {options.check_seeds} seeds")
    started = time.perf_counter()
    rows = []
    for bug in bugs:
        phases, crashes = measure(bug.name, options)
        rows.append((bug, phases, crashes))
        brief = {k: v["value"] for k, v in phases.items()}
        print(f"  {bug.name} [{time.perf_counter() - started:.0f} s]: {brief}"
              + (f"; process died: {crashes}" if crashes else ""), file=sys.stderr, flush=True)

    print()
    names = " / ".join(STRATEGIES)
    print(f"| bug | defect, shared | wrong answer after, median schedules ({names}) | seeds found "
          f"| plain: wrong runs (per process) "
          f"| plain median | ratio plain / forkcheck | check: first finding | check fails after ({names}) "
          f"| check: wrong outcome after |")
    print("|---|---|---:|---:|---:|---:|---:|---|---:|---:|")
    truth, checked = Goals(), Goals()
    notes = []
    for bug, phases, crashes in rows:
        plain = plain_total(phases, options)
        if any(s not in phases for s in STRATEGIES) or plain is None:
            found = " / ".join(_fmt(median(phases[s]["value"]), budget) if s in phases else "?" for s in STRATEGIES)
            print(f"| {bug.name} | {bug.what}, {bug.shared} | {found} | | measurement incomplete: {crashes} |||||")
            continue
        found = {s: phases[s]["value"] for s in STRATEGIES}
        plain_med = plain_median(plain["wrong"], plain["runs"])
        ratio = truth.add(found, plain_med, plain["runs"], budget)
        cells = ["", "", ""]
        if all(f"check-{s}" in phases for s in STRATEGIES):
            checks = {s: phases[f"check-{s}"]["value"] for s in STRATEGIES}
            kinds = sorted(set().union(*(c["kinds"] for c in checks.values())))
            # a check that failed after 0 schedules still ran the program once (its serial reference)
            checked.add({s: [None if c is None else max(c, 1) for c in checks[s]["counts"]] for s in STRATEGIES},
                        plain_med, plain["runs"], budget)
            cells = [", ".join(kinds) or "none",
                     " / ".join(_fmt(median(checks[s]["counts"]), budget) for s in STRATEGIES),
                     " / ".join(_fmt(median(checks[s]["wrong"]), budget) for s in STRATEGIES)]
        first = f" (first: run {plain['first']})" if plain["first"] else ""
        print(f"| {bug.name} | {bug.what}, {bug.shared} "
              f"| {' / '.join(_fmt(median(found[s]), budget) for s in STRATEGIES)} "
              f"| {' / '.join(f'{sum(v is not None for v in found[s])}/{options.seeds}' for s in STRATEGIES)} "
              f"| {' + '.join(map(str, plain['each']))} / {plain['runs']}{first} | {_fmt(plain_med, plain['runs'])} "
              f"| {ratio} "
              f"| {' | '.join(cells)} |")
        if crashes:
            notes.append(f"{bug.name}: the process died and was rerun for the phases left ({'; '.join(crashes)})")
    print()
    for bug, _, _ in rows:
        if bug.note:
            print(f"- {bug.name}: {bug.note}")
    for note in notes:
        print(f"Note: {note}")
    print(f"Summary, until the wrong answer shows (ground truth): {truth.summary(budget)}.")
    if checked.bugs:
        print(f"Summary, until forkcheck.check fails (any finding): {checked.summary(budget)}.")
    print(f"Took {time.perf_counter() - started:.0f} s.")


class Goals:
    """Tallies of the issue's three goals over bugs, per strategy and for the best one; ``add`` returns a cell."""

    def __init__(self):
        self.bugs = 0
        self.met = {name: {"found": 0, "fast": 0, "fewer": 0} for name in (*STRATEGIES, "best of them")}

    def add(self, counts: dict[str, list[Optional[int]]], plain_med: float, plain_runs: int, budget: int) -> str:
        """Count one bug; the cell is the ratio of plain re-runs to each strategy's median, one per strategy."""
        self.bugs += 1
        ratios, better = [], {"found": False, "fast": False, "fewer": False}
        for strategy in STRATEGIES:
            med = median(counts[strategy])
            if math.isinf(med):
                ratio, text = 0.0, "n/a"
            elif math.isinf(plain_med):
                ratio, text = plain_runs / med, f"> {plain_runs / med:.0f}x"
            else:
                ratio, text = plain_med / med, f"{plain_med / med:.0f}x"
            met = {"found": all(v is not None for v in counts[strategy]), "fast": med <= 3, "fewer": ratio >= 50}
            for goal, ok in met.items():
                self.met[strategy][goal] += ok
                better[goal] = better[goal] or ok
            ratios.append(text)
        for goal, ok in better.items():
            self.met["best of them"][goal] += ok
        return " / ".join(ratios)

    def summary(self, budget: int) -> str:
        n = self.bugs
        return "; ".join(
            f"{name}: every seed found within {budget} schedules {m['found']}/{n}, median <= 3 {m['fast']}/{n}, "
            f">= 50x fewer runs than plain {m['fewer']}/{n}" for name, m in self.met.items())


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    os._exit(0)  # skip teardown: after fork use torch may abort at exit (pytorch issue 60998)
