"""Text for the terminal: a failing target's findings, and the end-of-run summary."""
from __future__ import annotations

import shlex
from typing import Any, Iterable, Mapping, Optional


def replay_command(nodeid: str, token: str) -> str:
    return f"pytest {shlex.quote(nodeid)} --forkcheck-replay {token}"


def _get(result: Any, key: str) -> Any:
    return result[key] if isinstance(result, Mapping) else getattr(result, key)


def _finding(finding: Any, key: str) -> Any:
    return finding[key] if isinstance(finding, Mapping) else getattr(finding, key)


def failure_text(result: Any) -> str:
    """The failure section of one item: every finding, the minimal input, the replay command."""
    if _get(result, "verdict") == "error":
        return f"forkcheck could not check {_get(result, 'target')}:\n{_get(result, 'error')}"
    engine = _get(result, "engine")
    lines = [f"{_get(result, 'target')} is not safe to fork ({engine} engine: {_get(result, 'engine_reason')})"]
    for finding in _get(result, "findings"):
        tasks = _finding(finding, "tasks")
        lines.append(f"  [{_finding(finding, 'kind')}] {_finding(finding, 'message')}")
        where = _finding(finding, "location")
        if where or tasks:
            lines.append(f"      at {where or '?'}" + (f" (tasks {', '.join(map(str, tasks))})" if tasks else ""))
    failing = _get(result, "failing_input")
    if failing:
        lines.append("minimal failing input:")
        lines.extend(f"  {name} = {text}" for name, text in failing.items())
    token = next((_finding(f, "replay") for f in _get(result, "findings") if _finding(f, "replay")), "")
    if token:
        lines.append("replay: " + replay_command(_get(result, "nodeid"), token))
    return "\n".join(lines)


def summary_lines(results: Iterable[Mapping[str, Any]], paths: Optional[Mapping[str, Any]]) -> list[str]:
    """One line per failing item (first finding, replay command), then where the report is."""
    results = list(results)
    failing = [r for r in results if r["verdict"] in ("fail", "error")]
    lines = []
    if failing:
        lines.append("forkcheck: targets that are not safe to fork")
    for result in failing:
        if result["verdict"] == "error":
            first_line = (result.get("error") or "error").splitlines()[0]
            lines.append(f"  ERROR {result['nodeid']}: {first_line}")
            continue
        first = result["findings"][0]
        lines.append(f"  FAIL {result['nodeid']} [{first['kind']}] {first['message']}")
        if first.get("replay"):
            lines.append(f"    replay: {replay_command(result['nodeid'], first['replay'])}")
    counts = {v: sum(r["verdict"] == v for r in results) for v in ("pass", "fail", "error", "skipped")}
    lines.append("forkcheck: " + ", ".join(f"{n} {v}" for v, n in counts.items() if n))
    if paths:
        lines.append(f"forkcheck report: {paths['html']} (machine-readable: {paths['json']})")
    return lines
