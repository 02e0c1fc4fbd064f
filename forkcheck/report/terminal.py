"""Text for the terminal: a failing item's findings, and the end-of-run summary."""
from __future__ import annotations

import shlex
from typing import Any, Iterable, Mapping, Optional


def replay_command(nodeid: str, token: str, replay_with: str = "") -> str:
    """The shell command that reruns the failing example: ``replay_with`` and the token when the row says how (a
    saved model's, see ``forkcheck.cli``), else pytest's; the node id is always quoted (``[`` is a glob)."""
    if replay_with:
        return f"{replay_with} {shlex.quote(token)}"
    quoted = shlex.quote(nodeid)
    if not quoted.startswith("'"):
        quoted = f"'{nodeid}'"
    return f"pytest {quoted} --forkcheck-replay {shlex.quote(token)}"


def _get(record: Any, key: str, default: Any = "") -> Any:
    """A field of a result or finding, whether a dataclass or its JSON row."""
    if isinstance(record, Mapping):
        return record.get(key, default)
    return getattr(record, key, default)


def _replay_with(result: Any) -> str:
    return (_get(result, "stats", {}) or {}).get("replay_with", "")


def _first_line(text: str) -> str:
    return next((line for line in text.splitlines() if line.strip()), "")


def failure_text(result: Any) -> str:
    """The failure section of one item: every finding, the minimal input, the replay command."""
    if _get(result, "verdict") == "error":
        return f"{_get(result, 'target')}: {_get(result, 'error')}"
    findings = _get(result, "findings", [])
    kinds = ", ".join(dict.fromkeys(_get(f, "kind") for f in findings))
    lines = [f"not safe to fork: {kinds} in {_get(result, 'target')} "
             f"({_get(result, 'engine')} engine: {_get(result, 'engine_reason')})"]
    for finding in findings:
        lines.append(f"  [{_get(finding, 'kind')}] {_get(finding, 'message')}")
        where, tasks = _get(finding, "location"), _get(finding, "tasks", [])
        if where or tasks:
            lines.append(f"      at {where or '?'}" + (f" (tasks {', '.join(map(str, tasks))})" if tasks else ""))
    per_size = _get(result, "stats", {}).get("pool_sizes")
    if per_size:
        lines.append(f"inter-op pool sizes: {pool_line(per_size)}")
    failing = _get(result, "failing_input", {})
    if failing:
        lines.append("minimal failing input:")
        lines.extend(f"  {name} = {text}" for name, text in failing.items())
    token = next((_get(f, "replay") for f in findings if _get(f, "replay")), "")
    if token:
        lines.append("replay: " + replay_command(_get(result, "nodeid"), token, _replay_with(result)))
    return "\n".join(lines)


def summary_lines(results: Iterable[Mapping[str, Any]], paths: Optional[Mapping[str, Any]]) -> list[str]:
    """The counts, one line per failing item (first finding, replay command), then where the report is."""
    results = sorted(results, key=lambda r: r["nodeid"])
    counts = {v: sum(r["verdict"] == v for r in results) for v in ("pass", "fail", "error", "skipped")}
    lines = [", ".join(f"{n} {v}" for v, n in counts.items() if n)]
    for result in results:
        if result["verdict"] == "error":
            lines.append(f"ERROR {result['nodeid']}: {_first_line(result.get('error') or 'error')}")
        elif result["verdict"] == "fail" and result["findings"]:
            first = result["findings"][0]
            lines.append(f"FAIL {result['nodeid']} [{first['kind']}] {_first_line(first['message'])}")
            if first.get("replay"):
                lines.append(f"  replay: {replay_command(result['nodeid'], first['replay'], _replay_with(result))}")
    if paths:
        lines.append(f"report: {paths['html']} (machine-readable: {paths['json']})")
    return lines


def pool_shown(summary: dict[str, Any]) -> str:
    """What one size's schedules showed, in words."""
    verdict = summary.get("verdict")
    if verdict == "skipped":
        return str(summary.get("reason", ""))
    if verdict == "error":
        return f"error: {summary.get('error', '')}"
    if verdict != "fail":
        return f"nothing in {summary.get('schedules', 0)} schedules"
    kinds = ", ".join(summary.get("kinds", []))
    after = summary.get("wrong_outcome_after")
    if summary.get("found_by") == "serial run":
        return f"{kinds} (serial run)"
    if after:
        return f"{kinds}: a wrong outcome after {after} schedule{'s' if after != 1 else ''}"
    return f"{kinds}: predicted only, no wrong outcome in {summary.get('schedules', 0)} schedules"


def pool_line(per_size: dict[str, Any]) -> str:
    """One line: what each pool size showed, e.g. ``1 thread: nothing in 40 schedules; 2 threads: ...``."""
    return "; ".join(f"{size} thread{'s' if str(size) != '1' else ''}: {pool_shown(summary)}"
                     for size, summary in per_size.items())
