"""How long ``index.html`` takes to render, and how big it is, for 10, 100 and 1,000 synthetic targets.

Run: ``python benchmarks/bench_report.py``. Size and time should grow linearly (ratios near 10).
"""
from __future__ import annotations

import time

from forkcheck.report.html import render_html

_SOURCE = __file__  # findings point at this file, so snippets are read as in a real report


def synthetic_report(targets: int) -> dict:
    """A report whose items cycle through every verdict and finding kind, with events, diffs and tracebacks."""
    results = []
    for i in range(targets):
        nodeid = f"tests/test_model_{i // 50}.py::target_{i}"
        verdict = ("fail", "pass", "fail", "error", "pass", "skipped")[i % 6]
        findings = []
        if verdict == "fail":
            findings = [
                {"kind": "input-mutation", "message": f"input 'x' changed by aten::add_ at {_SOURCE}:20: "
                 "3 of 12 elements changed, first at index [0, 1], largest absolute change 1",
                 "location": f"{_SOURCE}:20", "tasks": [1, 2, 3], "replay": f"fc1.token{i}",
                 "detail": {"name": "x", "op": "aten::add_", "changes": ["3 of 12 elements changed"],
                            "diff": {"shape": [4, 3], "dtype": "torch.float32", "changed": 3, "numel": 12,
                                     "max_abs": 1.0, "first": [[0, 1]],
                                     "grid": [[0, 1, 0], [0, 0.5, 0], [0, 0, 0], [1, 0, 0]]}}},
                {"kind": "race", "message": "tasks 1 and 2 wrote the storage of 'x' without an order",
                 "location": f"{_SOURCE}:21", "tasks": [1, 2], "replay": f"fc1.token{i}",
                 "detail": {"events": [
                     {"task": 0, "kind": "fork", "child": 1}, {"task": 0, "kind": "fork", "child": 2},
                     {"task": 1, "kind": "read", "op": "aten::sum", "location": f"{_SOURCE}:20"},
                     {"task": 1, "kind": "write", "op": "aten::add_", "location": f"{_SOURCE}:21",
                      "conflict": True},
                     {"task": 2, "kind": "write", "op": "aten::add_", "location": f"{_SOURCE}:21",
                      "conflict": True},
                     {"task": 0, "kind": "wait", "child": 1}, {"task": 0, "kind": "wait", "child": 2}]}},
            ]
            if i % 4 == 2:
                findings.append({"kind": "nondeterminism", "message": "task 2 of 3 returned a different output",
                                 "location": f"{_SOURCE}:22", "tasks": [2], "replay": f"fc1.token{i}",
                                 "detail": {"differences": ["output: 1 of 4 elements changed"]}})
        results.append({
            "target": f"test_model_{i // 50}:target_{i}", "kind": "target" if i % 7 else "test", "nodeid": nodeid,
            "engine": "script" if i % 2 else "eager", "engine_reason": "" if i % 2 else "it does not script",
            "verdict": verdict, "examples": 10, "schedules": 100, "duration_s": 0.5 + i % 3,
            "findings": findings, "failing_input": {"x": "tensor([[0., 1., 2.]])"} if findings else {},
            "error": "setup error: cannot infer a strategy for 'y'" if verdict == "error" else "",
            "stats": {"seed": i},
        })
    return {"forkcheck": "0.1.0", "torch": "2.13.0", "seed": 1, "complete": True, "results": results}


def measure(targets: int, repeat: int = 3) -> tuple[float, int]:
    report = synthetic_report(targets)
    render_html(report)  # warm: templates compiled, source files cached by the OS
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        page = render_html(report)
        best = min(best, time.perf_counter() - started)
    return best, len(page.encode())


def main() -> None:
    rows = [(n, *measure(n)) for n in (10, 100, 1000)]
    print(f"{'targets':>8} {'render s':>10} {'size KB':>10} {'KB/target':>10}")
    for n, seconds, size in rows:
        print(f"{n:>8} {seconds:>10.4f} {size / 1024:>10.1f} {size / 1024 / n:>10.2f}")
    for (n1, t1, s1), (n2, t2, s2) in zip(rows, rows[1:]):
        print(f"{n1:>5} -> {n2:<5} time x{t2 / t1:.1f}, size x{s2 / s1:.1f} (targets x{n2 / n1:.0f})")


if __name__ == "__main__":
    main()
