"""Text for the terminal: a failing item's findings, a replay's outcome, and the end-of-run summary."""
from __future__ import annotations

import os
import shlex
import shutil
import sys
from typing import Any, Iterable, Mapping, Optional

from ..coverage import statement
from ..findings import SERIAL
from ..stats import FoundBy
from ..task_names import task_names
from .._words import plural as _plural


def invocation(argv0: Optional[str] = None, executable: Optional[str] = None, module: str = "pytest") -> str:
    """How this pytest (or the ``module`` command) was started, as the user's shell can run it again:
    ``.venv/bin/python -m pytest`` when it was started with ``-m pytest``, else the ``pytest`` script (by name when
    that name finds it on PATH)."""
    argv0 = sys.argv[0] if argv0 is None else argv0
    executable = sys.executable if executable is None else executable
    if os.path.basename(argv0) == "__main__.py" or not os.path.isfile(argv0):  # -m pytest, or python -c
        return f"{_runnable(executable)} -m {module}"
    return _runnable(argv0)


def _runnable(program: str) -> str:
    """A program path as a shell runs it: its bare name when PATH finds this very path, else relative to the
    current directory when inside it, else absolute. Paths are compared as written, links unresolved: a venv's
    ``python`` links to the base interpreter, and the base interpreter's name on PATH would run without the venv."""
    name = os.path.basename(program)
    found = shutil.which(name)
    if found and os.path.abspath(found) == os.path.abspath(program):
        return shlex.quote(name)
    absolute = os.path.abspath(program)
    relative = os.path.relpath(absolute)
    shown = absolute if relative.startswith("..") else relative if os.sep in relative else f".{os.sep}{relative}"
    return shlex.quote(shown)


def replay_command(nodeid: str, token: str, invocation: str = "pytest", replay_with: str = "") -> str:
    """The shell command that reruns the failing example; the node id is always quoted (``[`` is a glob). A row
    whose ``stats.replay_with`` says how (a saved model's, see ``forkcheck.cli``) replays with that and the token."""
    if replay_with:
        return f"{replay_with} {shlex.quote(token)}"
    quoted = shlex.quote(nodeid)
    if not quoted.startswith("'"):
        quoted = f"'{nodeid}'"
    return f"{invocation} {quoted} --forkcheck-replay {shlex.quote(token)}"


def relative(text: str, rootdir: str) -> str:
    """``text`` with the run's root directory left out of every path in it (``examples/x.py:3``, not ``/tmp/...``)."""
    if not rootdir or not text:
        return text
    return text.replace(rootdir.rstrip(os.sep) + os.sep, "")


#: What runs a target's tasks, by the engine's name in the JSON report: one wording in every place it is shown.
ENGINES = {"script": "the TorchScript runtime", "eager": "forkcheck's own scheduler"}


def engine_clause(engine: str, engine_reason: str) -> str:
    """``eager engine, forkcheck's own scheduler; torch.jit.script failed: ...``."""
    named = f"{engine} engine, {ENGINES[engine]}" if engine in ENGINES else f"{engine} engine"
    return f"{named}; {reason(engine_reason)}" if engine_reason else named


def reason(text: str) -> str:
    """An engine's reason as a clause: one line, without the trailing colon or full stop of a quoted error."""
    return " ".join(str(text).split()).rstrip(" .:")


def _get(record: Any, key: str, default: Any = "") -> Any:
    """A field of a result or finding, whether a dataclass or its JSON row."""
    if isinstance(record, Mapping):
        return record.get(key, default)
    return getattr(record, key, default)


def _first_line(text: str) -> str:
    return next((line for line in text.splitlines() if line.strip()), "")


def replay_outcome(replays: Mapping[str, Any]) -> str:
    """``reproduced 7 of 10 (5 with a wrong outcome)``."""
    runs, reproduced, wrong = (int(replays.get(k) or 0) for k in ("runs", "reproduced", "wrong_outcome"))
    return f"reproduced {reproduced} of {runs}" + (f" ({wrong} with a wrong outcome)" if reproduced else "")


def replay_what(replays: Mapping[str, Any]) -> str:
    """Which example and schedules a replay ran, e.g. ``the failing input and its 3 schedules (portfolio), on an
    inter-op pool of 2 threads``; ``replays["what"]`` says it otherwise (a marked test's ``the test``, a defect the
    serial run shows ``the failing input's serial run ...``)."""
    schedules, strategy, pool = replays.get("schedules"), replays.get("strategy"), replays.get("pool_size")
    what = str(replays.get("what") or "the failing input")
    if schedules:
        what += f" and its {_plural(int(schedules), 'schedule')}"
    elif not replays.get("what"):
        what += " and its schedules"
    if strategy:
        what += f" ({strategy})"
    if pool:
        what += f", on an inter-op pool of {_plural(int(pool), 'thread')}"
    return what


def replay_counts(replays: Any) -> tuple[int, int]:
    """How many reruns a replay made and how many schedules each (0, 0 for a check's own result)."""
    return (int(replays.get("runs") or 0), int(replays.get("schedules") or 0)) if isinstance(replays, Mapping) \
        else (0, 0)


def failure_text(result: Any, invocation: str = "pytest", rootdir: str = "") -> str:
    """The failure section of one item: every finding, the minimal input, the replay command (or, for a replay,
    what it ran and how often the failure came back)."""
    target = _get(result, "target")
    if _get(result, "verdict") == "error":
        return relative(f"{target}: {_get(result, 'error')}", rootdir)
    findings = _get(result, "findings", [])
    stats = _get(result, "stats", {}) or {}
    stats = stats if isinstance(stats, Mapping) else stats.to_json()  # a result's Stats, read as its JSON row is
    replays = stats.get("replays")
    kinds = ", ".join(dict.fromkeys(_get(f, "kind") for f in findings))
    lines = []
    if replays:
        lines.append(f"replayed {replay_what(replays)}, {replays.get('runs', 0)} times: {replay_outcome(replays)}")
    lines.append(f"not safe to fork: {kinds} in {target} "
                 f"({engine_clause(_get(result, 'engine'), _get(result, 'engine_reason'))})")
    for finding in findings:
        lines.append(f"  [{_get(finding, 'kind')}] {_get(finding, 'message')}")
        where, tasks = _get(finding, "location"), task_names(_get(finding, "tasks", []))
        if (_get(finding, "detail", {}) or {}).get("run") == SERIAL:
            tasks = ["the serial run, forks inline"]
        if where or tasks:
            lines.append(f"      at {where or '?'}" + (f" ({', '.join(tasks)})" if tasks else ""))
    covered = statement(stats.get("coverage") or {}, *replay_counts(replays))
    if covered:
        lines.append(f"coverage: {covered}")
    if stats.get("strategy_note"):
        lines.append(f"strategy: {stats['strategy_note']}")
    per_size = stats.get("pool_sizes")
    if per_size:
        lines.append(f"inter-op pool sizes: {pool_line(per_size)}")
    failing = _get(result, "failing_input", {})
    if failing:
        lines.append("replayed input:" if replays else "minimal failing input:")
        lines.extend(f"  {name} = {text}" for name, text in failing.items())
    token = next((_get(f, "replay") for f in findings if _get(f, "replay")), "")
    if token and not replays:
        lines.append("replay: " + replay_command(_get(result, "nodeid"), token, invocation,
                                                 stats.get("replay_with", "")))
    return relative("\n".join(lines), rootdir)


def summary_lines(results: Iterable[Mapping[str, Any]], paths: Optional[Mapping[str, Any]],
                  invocation: str = "pytest", rootdir: str = "", seed: Optional[int] = None) -> list[str]:
    """The counts (and the ``seed``, where the header that says it was not shown), one line per failing item (first
    finding, replay command) or replay, then where the report is."""
    results = sorted(results, key=lambda r: r["nodeid"])
    counts = {v: sum(r["verdict"] == v for r in results) for v in ("pass", "fail", "error", "skipped")}
    lines = [", ".join(f"{n} {v}" for v, n in counts.items() if n)
             + (f" (seed {seed}: rerun with --forkcheck-seed {seed})" if seed is not None else "")]
    for result in results:
        replays = (result.get("stats") or {}).get("replays")
        if replays:
            lines.append(f"REPLAY {result['nodeid']}: {replay_what(replays)}, {replay_outcome(replays)}")
        if result["verdict"] == "error":
            lines.append(f"ERROR {result['nodeid']}: {_first_line(result.get('error') or 'error')}")
        elif result["verdict"] == "pass":
            stats = result.get("stats") or {}
            covered = statement(stats.get("coverage") or {})
            lines.append(f"PASS {result['nodeid']}: "
                         f"{covered or _plural(result.get('schedules') or 0, 'schedule') + ', no finding'}"
                         + (f" ({stats['strategy_note']})" if stats.get("strategy_note") else ""))
        elif result["verdict"] == "fail" and result["findings"]:
            first = result["findings"][0]
            lines.append(f"FAIL {result['nodeid']} [{first['kind']}] {_first_line(first['message'])}")
            if first.get("replay") and not replays:
                command = replay_command(result["nodeid"], first["replay"], invocation,
                                         (result.get("stats") or {}).get("replay_with", ""))
                lines.append(f"  replay: {command}")
    if paths:
        lines.append(f"report: {paths['html']} (machine-readable: {paths['json']})")
    return [relative(line, rootdir) for line in lines]


SERIAL_NEEDS_NO_POOL = "none needed: the serial run (forks inline, no pool) already shows the defect"


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
    if after:
        outcome = "a run hung" if "hang" in summary.get("kinds", []) else "a wrong outcome"
        return f"{kinds}: {outcome} after {after} schedule{'s' if after != 1 else ''}"
    return f"{kinds}: predicted only, no wrong outcome in {summary.get('schedules', 0)} schedules"


def pool_line(per_size: dict[str, Any]) -> str:
    """One line: what each pool size showed, e.g. ``1 thread: nothing in 40 schedules; 2 threads: ...``; where the
    first size's serial run showed the defect (the others were skipped), that no pool was needed."""
    if any(summary.get("found_by") == FoundBy.SERIAL_RUN for summary in per_size.values()):
        return SERIAL_NEEDS_NO_POOL
    return "; ".join(f"{size} thread{'s' if str(size) != '1' else ''}: {pool_shown(summary)}"
                     for size, summary in per_size.items())
