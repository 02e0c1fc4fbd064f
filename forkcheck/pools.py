"""A check split over inter-op pool sizes: which sizes show the bug.

How many threads torch's inter-op pool has changes which interleavings the real runtime can take (one thread runs
sibling forks one after another; more let them overlap), and it is fixed once per process. So a scripted target is
checked once per size, each in a child process whose pool has that many threads (``forkcheck.isolation``), each
running its share of the schedules on the same inputs (same seed), as many sizes at once as there are cores for
this process (``side_by_side``); the results merge into one whose
``stats.pool_sizes`` says, per size, what the schedules there found. Targets run by forkcheck's own scheduler do
not use the pool: they are checked once. Later sizes are skipped when they cannot tell more: a defect the serial run
shows involves no pool, a hang would wait out the timeout again, and a target whose module fixes the pool size gets
that size whatever is asked.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Optional

from .findings import SERIAL, CheckResult, Finding, defect_key, sort_findings
from .isolation import Unavailable, check_in_child, prewarm, stop
from .replay import ReplayToken
from .stats import CRASHED, FoundBy, SizeSummary
from ._words import plural


#: Result stats that hold for one pool size only: each size's summary keeps them, the merged result does not.
PER_SIZE = ("pool_size", "failed_after", "wrong_outcome_after", "found_by")  # a lone size's are the result's


def check_over_pool_sizes(module: Any, attribute: str, target: Any, settings: Any, sizes: tuple[int, ...],
                          replay: Optional[str], nodeid: str) -> CheckResult:
    """Check ``module.attribute`` under each pool size in ``sizes``; raises ``Unavailable`` when no child can.

    The first size checks alone until its first serial reference passed and it goes on to the real runtime's pool
    (until then the check may end in a way that makes the other sizes needless: a defect the serial run shows, an
    error, forkcheck's own scheduler); then the other sizes start, ``side_by_side()`` at a time. Their results are
    taken in the order of ``sizes``, as if they had run one after another: the same skips, the same merge; a size
    still checking or queued when the sizes before it made it needless (a hang, an error) is stopped, not waited for.
    (Starting every size at once gained nothing on 2 cores: the first size's pool threads keep both busy.)
    """
    if replay:  # rerun the failure under the pool size it was found with (any, off the pool)
        pool_size = ReplayToken.decode(replay).pool_size or sizes[0]
        return check_in_child(module, attribute, target, settings, replay, nodeid, pool_size=pool_size)
    split = settings.replace(pool_sizes=sizes) if len(sizes) > 1 else settings
    for size in sizes:
        prewarm(size)  # forked from the warm template while the first size checks
    on_pool, settled = threading.Event(), threading.Event()  # settled: the first size went on to the pool, or ended
    started: dict[int, Future] = {}
    dropped = threading.Event()  # set when no result is wanted any more: a size not yet in its child does not start
    stopped: list[int] = []
    with ThreadPoolExecutor(max_workers=min(side_by_side(), len(sizes)), thread_name_prefix="forkcheck-size") as pool:

        def start(size: int) -> Future:
            if size not in started:
                told = first_run if size == sizes[0] else None
                started[size] = pool.submit(check_in_child, module, attribute, target, split, None, nodeid,
                                            pool_size=size, on_run=told, dropped=dropped)
            return started[size]

        def first_run(phase: str, engine: str) -> None:
            if engine == "script" and phase != "serial":  # the serial reference passed: the other sizes can tell more
                on_pool.set()
                settled.set()

        try:
            start(sizes[0]).add_done_callback(lambda _: settled.set())
            settled.wait()
            if on_pool.is_set():
                for size in sizes[1:]:
                    start(size)
            result = _collect(sizes, start)
        finally:  # after an error, or where the sizes left were needless: end their checks, so no one waits for them
            dropped.set()
            for size, future in started.items():
                if not future.done() and not future.cancel():
                    stop(size)  # its check is under way: it ends as a crash, whose result is dropped
                    stopped.append(size)
    for size in stopped:
        prewarm(size)  # the next target's child, forked while this target is reported
    return result


def _collect(sizes: tuple[int, ...], start: Callable[[int], Future]) -> CheckResult:
    """Take each size's result in order, skipping the sizes that cannot tell more (see the module's docstring)."""
    results: dict[int, CheckResult] = {}
    skipped: dict[int, str] = {}
    for index, size in enumerate(sizes):
        try:
            result = start(size).result()
        except Unavailable as err:
            if not results:
                raise
            skipped[size] = f"not run: {err}"
            continue
        if result.engine != "script":  # forkcheck's own scheduler: the pool plays no part
            return result
        actual = result.stats.pool_size or size
        if actual != size:  # the target's module sized the pool itself: every child gets that size
            results.setdefault(actual, result)
            skipped.update((later, f"not run: the target's module fixes the pool at {plural(actual, 'thread')}")
                           for later in sizes[index:])
            break
        results[size] = result
        reason = _needless(result, size)
        if reason:
            skipped.update((later, f"not run: {reason}") for later in sizes[index + 1:])
            break
    return merge(results, skipped) if len(sizes) > 1 else next(iter(results.values()))


def side_by_side() -> int:
    """How many pool sizes check at once: the cores this process may use, shared with pytest-xdist's other
    workers (each checks its own targets)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    return max(1, cores // max(workers, 1))


def check_module_level(target: Any, settings: Any, sizes: tuple[int, ...]) -> CheckResult:
    """``forkcheck.check(obj, pool_sizes=...)``: the child processes import the target by its module and name."""
    from .target import TargetError

    module = sys.modules.get(target.name.partition(":")[0])
    attribute = next((name for name, value in vars(module).items() if value is target.obj), None) if module else None
    if attribute is None:
        raise TargetError(f"{target.name}: pool_sizes checks the target in child processes, which import it: it "
                          "must be a module-level name of an importable module (or leave pool_sizes out to check "
                          "it in this process, with this process's pool)")
    return check_over_pool_sizes(module, attribute, target, settings, sizes, None, "")


def _needless(result: CheckResult, size: int) -> str:
    """Why the other pool sizes need not be checked after ``result`` ("" when they should be)."""
    stats = result.stats
    if result.verdict == "error" and not (stats.isolation is not None and stats.isolation.ended == CRASHED):
        return f"the check under {plural(size, 'thread')} ended in an error"
    if stats.found_by is FoundBy.SERIAL_RUN:
        return "the serial run (forks inline, no pool) already shows the defect"
    if any(finding.kind == "hang" for finding in result.findings):
        return f"a run under {plural(size, 'thread')} hung; each size would wait out the timeout again"
    return ""


def merge(results: dict[int, CheckResult], skipped: dict[int, str]) -> CheckResult:
    """One result for the target: it fails if any size failed; each finding says which sizes showed it."""
    first = next(iter(results.values()))
    failed = [r for r in results.values() if r.verdict == "fail"]
    errored = [r for r in results.values() if r.verdict == "error"]
    merged = CheckResult(target=first.target, kind=first.kind, nodeid=first.nodeid, engine=first.engine,
                         engine_reason=first.engine_reason,
                         stats=dataclasses.replace(first.stats, **dict.fromkeys(PER_SIZE if len(results) > 1
                                                                                else ("pool_size",))))
    merged.verdict = "fail" if failed else "error" if errored else "pass"
    merged.error = errored[0].error if errored and not failed else ""
    merged.examples = max(r.examples for r in results.values())  # the same inputs under every size
    merged.schedules = sum(r.schedules for r in results.values())
    merged.duration_s = round(sum(r.duration_s for r in results.values()), 3)
    for key in ("interleavings", "switches"):
        counts = [getattr(r.stats, key) for r in results.values()]
        if any(count is not None for count in counts):
            setattr(merged.stats, key, sum(count or 0 for count in counts))
    merged.stats.coverage = _coverage([r.stats.coverage for r in results.values()])
    merged.findings = _union({size: r.findings for size, r in results.items()})
    merged.failing_input = _replayed_input(merged.findings, failed)
    per_size = {size: _summary(result) for size, result in results.items()}
    per_size.update((size, SizeSummary("skipped", reason=reason)) for size, reason in skipped.items())
    merged.stats.pool_sizes = {size: per_size[size] for size in sorted(per_size)}
    return merged


def _coverage(per_size: list[dict[str, Any]]) -> dict[str, Any]:
    """What the schedules of every size covered together: all their runs, and at least the most distinct
    interleavings one size saw (sizes count theirs apart, and may have seen the same ones). An exhaustive search
    (one size only: it runs under forkcheck's scheduler) stands as it is."""
    counted = [c for c in per_size if c]
    if not counted or any("exhaustive" in c for c in counted) or len(counted) == 1:
        return counted[0] if counted else {}
    merged = {"interleavings": max(c.get("interleavings", 0) for c in counted), "at_least": True,
              "runs": sum(c.get("runs", 0) for c in counted), "by": counted[0].get("by", "")}
    if all("conflicts" in c for c in counted):
        merged["conflicts"] = any(c["conflicts"] for c in counted)
    return merged


def _union(findings: dict[int, list[Finding]]) -> list[Finding]:
    """Each defect once, listing the sizes that showed it: the first size's sighting (with its replay token), or
    the first whose outputs went wrong with it (its token replays the wrong outcome too)."""
    kept: dict[tuple, Finding] = {}
    for size, found in findings.items():
        for finding in found:
            key = defect_key(finding)
            first = kept.setdefault(key, finding)
            if first.detail.get("run") == SERIAL:  # forks inline: no pool played a part
                continue
            sizes = first.detail.setdefault("pool_sizes", [])
            if finding.detail.get("outputs_affected") and not first.detail.get("outputs_affected"):
                kept[key] = first = finding
                first.detail["pool_sizes"] = sizes
            sizes.append(size)
    return sort_findings(list(kept.values()))


def _replayed_input(findings: list[Finding], failed: list[CheckResult]) -> dict[str, str]:
    """The failing input to show: that of the size whose replay token is shown (the first finding's), since the
    union may take a defect from a later size than the first that failed."""
    token = next((finding.replay for finding in findings if finding.replay), "")
    by_token = {f.replay: result.failing_input for result in failed for f in result.findings if f.replay}
    return by_token.get(token) or (failed[0].failing_input if failed else {})


def _summary(result: CheckResult) -> SizeSummary:
    """What one size's schedules found, for the report's per-size line."""
    error = (result.error.splitlines()[0] if result.error else "error") if result.verdict == "error" else None
    return SizeSummary(result.verdict, examples=result.examples, schedules=result.schedules,
                       kinds=list(dict.fromkeys(f.kind for f in result.findings)), duration_s=result.duration_s,
                       interleavings=result.stats.interleavings, error=error,
                       **{key: getattr(result.stats, key) for key in PER_SIZE})
