"""Which inter-op pool sizes show each seeded bug: ``forkcheck.check(bug, pool_sizes=(1, 2, 4))`` over a few seeds.

Run on demand: ``python benchmarks/bench_pools.py [--seeds 3] [--only a,b] [--sizes 1,2,4]``. Each size checks its
share of the default budget in a child process whose pool has that many threads. Per bug and size the table says in
how many seeds an outcome went wrong there (and the median schedules until it did), or that the race was only
predicted, or that the serial run already showed the defect (then the other sizes are not run); and in how many
seeds the check as a whole failed.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

SIZES = (1, 2, 4)


def cell(summaries: list[dict[str, Any]]) -> str:
    """What one size showed over the seeds."""
    if not summaries:
        return "not run"
    if all(s.get("found_by") == "serial run" for s in summaries):
        return "serial run"
    if all(s.get("verdict") == "skipped" for s in summaries):
        return "skipped"
    errors = sum(s.get("verdict") == "error" for s in summaries)
    wrong = [s["wrong_outcome_after"] for s in summaries if s.get("wrong_outcome_after")]
    predicted = sum("race" in s.get("kinds", ()) for s in summaries)
    parts = []
    if wrong:
        parts.append(f"wrong outcome {len(wrong)}/{len(summaries)} (median after {statistics.median(wrong):g})")
    elif predicted:
        parts.append(f"race predicted {predicted}/{len(summaries)}, no wrong outcome")
    else:
        parts.append(f"nothing in {len(summaries)} seeds")
    if errors:
        parts.append(f"{errors} crashed")
    return "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated bug names")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="pool sizes, e.g. 2,4 (default 1,2,4)")
    options = parser.parse_args()
    sizes = tuple(int(size) for size in options.sizes.split(","))

    import forkcheck
    from seeded_bugs import BUGS

    started = time.perf_counter()
    print(f"pool sizes {sizes}; default budget split over them; {options.seeds} seeds")
    print()
    print("| bug | " + " | ".join(f"{size} thread{'s' if size > 1 else ''}" for size in sizes) + " | check failed |")
    print("|---|" + "---|" * (len(sizes) + 1))
    for bug in BUGS:
        if options.only and bug.name not in options.only.split(","):
            continue
        per_size: dict[str, list[dict[str, Any]]] = {str(size): [] for size in sizes}
        failed = 0
        for seed in range(1, options.seeds + 1):
            result = forkcheck.check(bug.target, pool_sizes=sizes, seed=seed)
            failed += result.verdict == "fail"
            split = result.stats.to_json().get("pool_sizes") or {}  # as the JSON report has it: size -> summary
            for size, summary in split.items():
                per_size.setdefault(size, []).append(summary)
            if result.verdict == "error" and not split:
                per_size[str(sizes[0])].append({"verdict": "error"})
        print(f"| {bug.name} ({bug.what}, {bug.shared}) | "
              + " | ".join(cell(per_size[str(size)]) for size in sizes) + f" | {failed}/{options.seeds} |", flush=True)
    print()
    print(f"Took {time.perf_counter() - started:.0f} s.")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
    sys.stdout.flush()
    os._exit(0)  # skip teardown: after fork use torch may abort at exit (pytorch issue 60998)
