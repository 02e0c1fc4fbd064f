"""``index.html``: the JSON report drawn as one self-contained page (Jinja2 templates, CSS, JS and SVG inline).

The page loads nothing: a Content-Security-Policy admits only its own style and script (by hash), so a string
from the user's code that slipped through escaping still could not run or fetch. Without JavaScript every target
is readable (``<details>`` collapse natively); the script only adds filters, copy buttons and opening the
section a link points to.

A finding's ``detail`` may carry, beside what the oracles write today:
- ``events``: ``[{task, op, location, kind: fork|wait|read|write, conflict: bool, child: int?}]`` in the order
  they happened; drawn as the timeline (``child`` is the task a fork starts or a wait waits for).
- ``diff``: ``{shape, dtype, changed, numel, max_abs, first: [[index], ...], grid: [[abs change, ...], ...]}``
  for a changed tensor; ``grid`` (2-D, at most 48 x 48 shown) is drawn as a heatmap.
"""
from __future__ import annotations

import base64
import hashlib
import html
import math
import os
import re
from pathlib import Path
from typing import Any, Mapping, Optional

from ..coverage import statement
from ..findings import KINDS, SERIAL, VERDICTS
from ..stats import FoundBy
from ..task_names import task_name
from .terminal import (ENGINES, pool_shown, reason, relative, replay_command, replay_counts, replay_outcome,
                       replay_what)
from .._words import plural as _plural

_TEMPLATES = Path(__file__).parent / "templates"
_MUTATIONS = ("input-mutation", "attribute-mutation", "global-mutation")
_SNIPPET_CONTEXT = 2  # lines shown either side of a finding's line
_MAX_SOURCE_BYTES = 2_000_000
_MAX_LANES = 8
_MAX_EVENTS = 60
_MAX_GRID = 48

_environment: Any = None


def render_html(report: Mapping[str, Any]) -> str:
    """The whole page for one report dict (``forkcheck.report.json.build_report``'s shape)."""
    try:
        import jinja2  # noqa: F401  (an optional dependency: ``pip install forkcheck[html]``)
    except ImportError:
        return _plain_page(report)
    page = _Page(report).build()
    return _template().render(**page)


def _template() -> Any:
    global _environment
    if _environment is None:
        import jinja2

        class Unindented(jinja2.FileSystemLoader):
            """Templates without their indentation: a smaller page, and the same look (no ``<pre>`` spans lines)."""

            def get_source(self, environment: Any, template: str) -> Any:
                source, filename, uptodate = super().get_source(environment, template)
                return re.sub(r"\n[ \t]+", "\n", source), filename, uptodate

        _environment = jinja2.Environment(
            loader=Unindented(str(_TEMPLATES)),
            autoescape=True, trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    return _environment.get_template("index.html.j2")


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


# --- the view model: plain dicts the template only lays out ----------------------------------------------------

class _Page:
    """Turns the report into what the template shows: counts, anchors, snippets, timelines, heatmaps, sentences."""

    def __init__(self, report: Mapping[str, Any]):
        self.report = report
        self.root = str(report.get("rootdir") or "")
        self.command = str(report.get("command") or "pytest")
        self.run_at = str(report.get("run_at") or "")
        self.sources = _SourceCache(self.root)
        self.ids: set[str] = set()
        self.first_of_kind: dict[str, str] = {}

    def rel(self, text: Any) -> str:
        return relative(_readable(text), self.root)

    def build(self) -> dict[str, Any]:
        style = (_TEMPLATES / "report.css").read_text(encoding="utf-8")
        script = (_TEMPLATES / "report.js").read_text(encoding="utf-8")
        rows = [row for row in self.report.get("results", []) if isinstance(row, Mapping)]
        items = [self._item(row) for row in rows]
        verdicts = {v: sum(item["verdict"] == v for item in items) for v in VERDICTS}
        by_kind = {k: 0 for k in KINDS}
        for item in items:
            for finding in item["findings"]:
                by_kind[finding["kind"]] = by_kind.get(finding["kind"], 0) + 1
        kinds = [{"kind": k, "count": n, "href": "#" + self.first_of_kind[k]} for k, n in by_kind.items() if n]
        wall = self.report.get("wall_s")
        return {
            "style": style, "script": script,
            "csp": (f"default-src 'none'; style-src {_csp_hash(style)}; script-src {_csp_hash(script)}; "
                    "img-src data:; base-uri 'none'; form-action 'none'"),
            "forkcheck": str(self.report.get("forkcheck", "")), "torch": str(self.report.get("torch", "")),
            "seed": self.report.get("seed"), "seed_option": str(self.report.get("seed_option") or "--forkcheck-seed"),
            "replay": self.report.get("replay") is True,
            "complete": bool(self.report.get("complete", True)),
            "run_at": _when(self.run_at),
            "items": items,
            "attention": [item for item in items if item["verdict"] in ("fail", "error")],
            "verdicts": verdicts, "kinds": kinds,
            "total": len(items),
            "targets": sum(item["kind"] == "target" for item in items),
            "tests": sum(item["kind"] == "test" for item in items),
            "examples": sum(_number(row.get("examples")) for row in rows),
            "schedules": sum(_number(row.get("schedules")) for row in rows),
            "wall": _duration(_number(wall)) if _number(wall) else "",
            "duration": _duration(sum(_number(row.get("duration_s")) for row in rows)),
            "earlier": sum(item["earlier"] != "" for item in items),
            "all_kinds": [k for k in by_kind if by_kind[k]],
        }

    def _unique(self, base: str) -> str:
        anchor, n = base, 2
        while anchor in self.ids:
            anchor, n = f"{base}-{n}", n + 1
        self.ids.add(anchor)
        return anchor

    def _item(self, row: Mapping[str, Any]) -> dict[str, Any]:
        nodeid = str(row.get("nodeid") or row.get("target") or "?")
        verdict = row.get("verdict") if row.get("verdict") in VERDICTS else "error"
        anchor = self._unique("t-" + _slug(nodeid))
        findings = [self._finding(anchor, i, f, row) for i, f in enumerate(row.get("findings") or [])
                    if isinstance(f, Mapping)]
        engine = str(row.get("engine") or "")
        stats = dict(row.get("stats") or {}) if isinstance(row.get("stats"), Mapping) else {}
        pools = stats.pop("pool_sizes", None)
        if stats.get("found_by") == FoundBy.SERIAL_RUN:
            pools = None  # no pool took part: the counts say the serial run showed it
        replays = self._replays(nodeid, findings, str(stats.pop("replay_with", "") or ""))
        coverage = statement(stats.pop("coverage", None) or {}, *replay_counts(stats.get("replays")))
        run_at = str(row.get("run_at") or "")
        replay_run = row.get("replay_run")
        return {
            "id": anchor, "nodeid": nodeid, "nodeid_parts": re.split(r"(?<=/)|(?<=::)", nodeid),
            "target": str(row.get("target") or ""),
            "kind": str(row.get("kind") or "target"), "verdict": verdict,
            "engine": engine, "engine_name": ENGINES.get(engine, engine),
            "engine_reason": self.rel(reason(row.get("engine_reason") or "")),
            "counts": _counts(row, stats),
            "stats": self._stats(row, stats),
            "pools": _pools(pools) if isinstance(pools, Mapping) else [],
            "coverage": coverage,
            "findings": findings,
            "finding_kinds": " ".join(dict.fromkeys(f["kind"] for f in findings)),
            "failing_input": [(str(k), self.rel(v)) for k, v in (row.get("failing_input") or {}).items()],
            "input_title": "Replayed input" if stats.get("replays") else "Minimal failing input",
            "error": self.rel(row.get("error") or ""),
            "replays": replays,
            "replayed": self._replayed(replay_run) if isinstance(replay_run, Mapping) else None,
            "run_at": _when(run_at),
            "earlier": _when(run_at) if run_at and self.run_at and run_at < self.run_at and not (
                isinstance(replay_run, Mapping) and replay_run.get("run_at") == self.run_at) else "",
        }

    def _replays(self, nodeid: str, findings: list[dict], replay_with: str = "") -> list[dict[str, str]]:
        """The first finding's replay, labelled; then each finding whose own replay differs, labelled by it
        (``replay_with``: the row's own replay command, see ``replay_command``)."""
        shown: list[dict[str, str]] = []
        first = next((f for f in findings if f["replay"]), None)
        if first is None:
            return shown
        shown.append({"label": f"reruns the example of the first finding ({first['kind']})", "href": "",
                      "command": replay_command(nodeid, first["replay"], self.command, replay_with)})
        seen = {first["replay"]}
        for number, finding in enumerate(findings, 1):
            if finding["replay"] and finding["replay"] not in seen:
                seen.add(finding["replay"])
                shown.append({"label": f"reruns the example of finding {number} ({finding['kind']})",
                              "command": replay_command(nodeid, finding["replay"], self.command, replay_with),
                              "href": "#" + finding["id"]})
        return shown

    def _replayed(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """A replay's row, shown beside the row it replays: when, what it ran, how often the failure came back."""
        replays = (row.get("stats") or {}).get("replays") if isinstance(row.get("stats"), Mapping) else None
        replays = replays if isinstance(replays, Mapping) else {}
        findings = [f for f in row.get("findings") or [] if isinstance(f, Mapping)]
        return {"when": _when(str(row.get("run_at") or "")), "verdict": str(row.get("verdict") or ""),
                "what": replay_what(replays) if replays else "the failing example",
                "outcome": replay_outcome(replays) if replays else self.rel(row.get("error") or row.get("verdict")),
                "kinds": ", ".join(dict.fromkeys(str(f.get("kind")) for f in findings))}

    def _stats(self, row: Mapping[str, Any], stats: dict[str, Any]) -> list[tuple[str, str]]:
        """The item's statistics as short labelled phrases (never a Python literal)."""
        shown: list[tuple[str, str]] = []
        if row.get("duration_s") is not None:
            shown.append(("check time", _duration(_number(row.get("duration_s")))))
        if "seed" in stats:  # the check's own seed; in a session, derived from the session's (the one to rerun with)
            own, session = stats.pop("seed"), self.report.get("seed")
            option = self.report.get("seed_option") or "--forkcheck-seed"
            run_at = str(row.get("run_at") or "")
            if run_at and self.run_at and run_at < self.run_at:  # another session's row: this one's seed is not its
                session = None
                own = f"{own}: this check's own, drawn from the seed of the session that ran it ({_when(run_at)})"
            shown.append(("seed", self.rel(own) if session in (None, own) else
                          f"{own}: this check's own, drawn from the session's seed {session} (rerun with {option} "
                          f"{session})"))
        replays = stats.pop("replays", None)
        if isinstance(replays, Mapping):
            shown.append(("replay", f"{replay_what(replays)}: {replay_outcome(replays)}"))
        interleavings, switches = stats.pop("interleavings", None), stats.pop("switches", None)
        if interleavings:
            shown.append(("task orders", f"{interleavings} distinct among the recorded runs (of every step, not only "
                                          "conflicting ones; plain runs, where no op conflicted, record none)"
                          + (f", {switches} task switches" if switches else "")))
        for key in ("failed_after", "wrong_outcome_after"):
            value = stats.pop(key, None)
            if isinstance(value, int) and value > 0:
                what = "first finding" if key == "failed_after" else "first wrong outcome"
                shown.append((what, f"after {_plural(value, 'schedule')}"))
        stats.pop("found_by", None)  # said by the counts
        if stats.get("pool_size"):
            shown.append(("inter-op pool", _plural(_number(stats.pop("pool_size")), "thread")))
        for key, value in stats.items():
            shown.append((key.replace("_", " "), self.rel(value)))
        if row.get("run_at"):
            shown.append(("run", _when(str(row["run_at"]))))
        return shown

    def _finding(self, target_anchor: str, index: int, data: Mapping[str, Any], row: Mapping[str, Any]) -> dict:
        kind = str(data.get("kind") or "?")
        anchor = self._unique(f"{target_anchor}--{_words(kind)}-{index + 1}")
        self.first_of_kind.setdefault(kind, anchor)
        detail = dict(data.get("detail") or {}) if isinstance(data.get("detail"), Mapping) else {}
        location = str(data.get("location") or "")
        path, line = _split_location(location)
        tasks = [t for t in (data.get("tasks") or []) if isinstance(t, int) and not isinstance(t, bool)]
        tensor, changes = _tensor_facts(kind, detail, row) if kind in _MUTATIONS else ([], detail.get("changes"))
        return {
            "id": anchor, "kind": kind, "message": self.rel(data.get("message") or ""),
            "location": location,
            "location_short": self.rel(_short_path(path, self.root)) + (f":{line}" if line else ""),
            "snippet": self.sources.snippet(path, line) if line else None,
            "tasks": ["the serial run"] if detail.get("run") == SERIAL else [task_name(t) for t in tasks],
            "replay": str(data.get("replay") or ""),
            "static": detail.get("source") == "static",
            "tensor": [(k, self.rel(v)) for k, v in tensor],
            "changes": [self.rel(c) for c in changes or []],
            "differences": [self.rel(d) for d in detail.get("differences") or []],
            "traceback": self.rel(detail.get("traceback", "")),
            "stacks": self.rel(detail.get("stacks", "")),
            "heatmap": _heatmap(detail.get("diff")),
            "timeline": self._paths_relative(_timeline(kind, tasks, detail, line)),
            "accesses": self._accesses(_conflicts(detail) or detail.get("accesses")),
            "details": self._details(detail),
        }

    def _paths_relative(self, timeline: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
        for mark in (timeline or {}).get("marks", []):
            mark["title"], mark["label"] = self.rel(mark["title"]), self.rel(mark["label"])
        return timeline

    def _accesses(self, accesses: Any) -> list[dict[str, str]]:
        """The two conflicting accesses of a race, one table row each."""
        if not isinstance(accesses, list):
            return []
        rows = []
        for access in accesses:
            if isinstance(access, Mapping):
                task = access.get("task")
                rows.append({"task": task_name(task) if isinstance(task, int) else self.rel(task),
                             "verb": _VERBS.get(str(access.get("kind")), self.rel(access.get("kind") or "")),
                             "op": self.rel(access.get("op") or ""),
                             "where": self.rel(access.get("location") or "")})
        return rows

    def _details(self, detail: Mapping[str, Any]) -> list[tuple[str, str]]:
        """What else the oracle said, as labelled sentences: task pairs, pool sizes, the rest made readable."""
        said = {"name", "op", "changes", "differences", "traceback", "stacks", "events", "diff", "accesses", "storage",
                "ops", "locations", "outputs_affected", "source", "run"}
        shown: list[tuple[str, str]] = []
        if detail.get("run") == SERIAL:
            shown.append(("shown by", "the serial reference run: the target called once, its forks inline"))
        pairs = detail.get("task_pairs")
        if isinstance(pairs, list) and pairs:
            shown.append(("tasks that race", "; ".join(" and ".join(task_name(t) if isinstance(t, int) else
                                                                     self.rel(t) for t in pair)
                                                       for pair in pairs if isinstance(pair, list))))
        others = detail.get("other_pairs")
        if isinstance(others, list) and others:
            shown.append(("other racing ops", "; ".join(
                " and ".join(self.rel(o) for o in pair) if isinstance(pair, list) else self.rel(pair)
                for pair in others)))
        sizes = detail.get("pool_sizes")
        if isinstance(sizes, list) and sizes:
            shown.append(("shown with", "an inter-op pool of 1 thread" if sizes == [1] else
                          f"inter-op pools of {_and([str(s) for s in sizes])} threads"))
        if detail.get("via"):
            shown.append(("via", f"{self.rel(detail['via'])}, which can return its input itself"))
        if detail.get("timeout_s") is not None:
            shown.append(("timeout", f"{self.rel(detail['timeout_s'])} s"))
        if isinstance(detail.get("order"), list):
            order = detail["order"]
            shown.append(("task order", " ".join(self.rel(t) for t in order[:40]) + (" ..." if len(order) > 40
                                                                                       else "")))
        for key, value in detail.items():
            if key not in said and key not in ("task_pairs", "other_pairs", "pool_sizes", "via", "timeout_s",
                                               "order"):
                shown.append((key.replace("_", " "), self.rel(value)))
        return shown


def _conflicts(detail: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The conflicting accesses in the order the timeline draws (and numbers) them."""
    events = detail.get("events")
    return [e for e in events[:_MAX_EVENTS] if isinstance(e, Mapping) and e.get("conflict")] \
        if isinstance(events, list) else []


def _counts(row: Mapping[str, Any], stats: Mapping[str, Any]) -> str:
    """What was run, in words: a failure the serial run showed is said so, not as "0 schedules"."""
    examples, schedules = int(_number(row.get("examples"))), int(_number(row.get("schedules")))
    if stats.get("found_by") == FoundBy.SERIAL_RUN:
        return (f"the serial run (forks inline) showed it on example {examples or 1}, before any concurrent "
                "schedule")
    if not examples and not schedules:
        return ""
    return f"{_plural(examples, 'example')}, {_plural(schedules, 'concurrent schedule')}"


def _pools(per_size: Mapping[str, Any]) -> list[dict[str, str]]:
    """Rows of the per-pool-size table: what each size's share of the schedules showed."""
    return [{"size": _plural(int(size) if str(size).isdigit() else 0, "thread") if str(size).isdigit()
             else _readable(size),
             "verdict": _readable(summary.get("verdict", "")), "shown": pool_shown(summary)}
            for size, summary in per_size.items() if isinstance(summary, Mapping)]


def _number(value: Any) -> float:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1] if words else ""


def _readable(value: Any) -> str:
    """A JSON value in words: strings as they are, yes/no, lists joined with commas, mappings as ``key: value``;
    never a Python literal."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Mapping):
        return "; ".join(f"{str(k).replace('_', ' ')}: {_readable(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_readable(v) for v in value)
    return str(value)


def _when(stamp: str) -> str:
    """``2026-12-01T19:57:03Z`` as ``2026-12-01 19:57 UTC``."""
    match = re.fullmatch(r"(\d{4}-\d\d-\d\d)T(\d\d:\d\d)(?::\d\d)?Z", stamp or "")
    return f"{match.group(1)} {match.group(2)} UTC" if match else stamp


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.3g} s" if seconds < 10 else f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s"


def _words(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[-48:].strip("-") or "x"


def _slug(text: str) -> str:
    """A readable, stable anchor: the node id's words and a short hash (two node ids never share one)."""
    return f"{_words(text)}-{hashlib.sha1(text.encode()).hexdigest()[:6]}"


def _split_location(location: str) -> tuple[str, int]:
    path, _, line = location.rpartition(":")
    return (path, int(line)) if path and line.isdigit() else (location, 0)


def _short_path(path: str, root: str = "") -> str:
    """Relative to the run's root (else the current directory) when inside it, else as written."""
    if not os.path.isabs(path):
        return path
    for base in filter(None, (root, os.getcwd())):
        try:
            relative_path = os.path.relpath(path, base)
        except ValueError:  # another drive
            continue
        if not relative_path.startswith(".."):
            return relative_path
    return path


class _SourceCache:
    """Lines of the user's Python files, read once per render; only ``.py`` files, so a report cannot leak others.
    A relative path is read from the run's root."""

    def __init__(self, root: str = ""):
        self.root = root
        self.files: dict[str, Optional[list[str]]] = {}

    def lines(self, path: str) -> Optional[list[str]]:
        if path not in self.files:
            self.files[path] = None
            try:
                file = Path(path) if os.path.isabs(path) or not self.root else Path(self.root) / path
                if file.suffix == ".py" and file.is_file() and file.stat().st_size <= _MAX_SOURCE_BYTES:
                    self.files[path] = file.read_text(encoding="utf-8", errors="replace").splitlines()
            except OSError:
                pass
        return self.files[path]

    def snippet(self, path: str, line: int) -> Optional[list[dict[str, Any]]]:
        lines = self.lines(path)
        if not lines or not 1 <= line <= len(lines):
            return None
        first, last = max(1, line - _SNIPPET_CONTEXT), min(len(lines), line + _SNIPPET_CONTEXT)
        return [{"number": n, "text": lines[n - 1].rstrip(), "hit": n == line} for n in range(first, last + 1)]


# --- mutations: facts about a changed tensor, and a heatmap of where --------------------------------------------

_CHANGED = re.compile(r"(\d+) of (\d+) elements changed, first at index (\[[^\]]*\])"
                      r"(?:, largest absolute change ([-+0-9.eEinfa]+))?")
_SHAPE = re.compile(r"\(shape (\[[^\]]*\]), (torch\.\w+)\)\s*$")


def _tensor_facts(kind: str, detail: Mapping[str, Any], row: Mapping[str, Any]) -> tuple[list[tuple[str, str]],
                                                                                        list[str]]:
    """Name, shape, dtype, changed elements, largest change, first changed index (from ``diff`` or the oracle's
    texts), and the change texts the table does not already say."""
    diff = detail.get("diff") if isinstance(detail.get("diff"), Mapping) else {}
    changes = [str(c) for c in detail.get("changes") or []]
    facts: dict[str, str] = {}
    if detail.get("name"):
        facts["name"] = _readable(detail["name"])
    if detail.get("op"):
        facts["first write"] = _readable(detail["op"])
    if diff.get("shape") is not None:
        shape = diff["shape"]
        facts["shape"] = " × ".join(map(str, shape)) if isinstance(shape, (list, tuple)) else _readable(shape)
    if diff.get("dtype"):
        facts["dtype"] = _readable(diff["dtype"])
    if kind == "input-mutation" and "shape" not in facts:
        shape = _SHAPE.search(str((row.get("failing_input") or {}).get(detail.get("name"), "")))
        if shape:
            facts["shape"] = " × ".join(shape.group(1).strip("[]").split(", ")) or "scalar"
            facts["dtype"] = shape.group(2)
    if diff.get("changed") is not None:
        facts["changed elements"] = f"{diff['changed']}" + (f" of {diff['numel']}" if diff.get("numel") else "")
    if diff.get("max_abs") is not None:
        facts["largest absolute change"] = _readable(diff["max_abs"])
    if diff.get("first"):
        facts["first changed indices"] = "; ".join(_index(i) for i in list(diff["first"])[:5])
    remaining = []
    for change in changes:
        match = _CHANGED.search(change)
        if match and "changed elements" not in facts:
            facts["changed elements"] = f"{match.group(1)} of {match.group(2)}"
            facts["first changed index"] = _index(match.group(3))
            if match.group(4):
                facts["largest absolute change"] = match.group(4)
        elif not match:
            remaining.append(change)
    return list(facts.items()), remaining


def _index(index: Any) -> str:
    """A tensor index as ``[0, 1]`` reads: ``(0, 1)``; the index of a 0-d tensor is ``the only element``."""
    parts = index if isinstance(index, (list, tuple)) else str(index).strip("[]").split(",")
    parts = [str(p).strip() for p in parts if str(p).strip()]
    return "the only element" if not parts else parts[0] if len(parts) == 1 else f"({', '.join(parts)})"


def _heatmap(diff: Any) -> Optional[dict[str, Any]]:
    if not isinstance(diff, Mapping) or not isinstance(diff.get("grid"), list) or not diff["grid"]:
        return None
    grid = [row for row in diff["grid"][:_MAX_GRID] if isinstance(row, list)]
    if not grid or not any(grid):
        return None
    rows, cols = len(grid), max(len(row) for row in grid[:_MAX_GRID])
    cols = min(cols, _MAX_GRID)
    values = [[abs(float(v)) if isinstance(v, (int, float)) else 0.0 for v in row[:cols]] for row in grid]
    top = max((v for row in values for v in row if math.isfinite(v)), default=0.0) or 1.0
    values = [[min(v, top) if v == v else top for v in row] for row in values]  # inf and NaN drawn as the largest
    cell = max(4, min(22, 320 // max(rows, cols)))
    cells = [{"x": c * cell, "y": r * cell, "opacity": f"{0.15 + 0.85 * v / top:.2f}", "title": f"[{r}, {c}] {v:.6g}"}
             for r, row in enumerate(values) for c, v in enumerate(row) if v]
    clipped = len(diff["grid"]) > _MAX_GRID or any(len(row) > _MAX_GRID for row in grid if isinstance(row, list))
    return {"width": cols * cell, "height": rows * cell, "cell": cell, "cells": cells, "rows": rows, "cols": cols,
            "max": f"{top:.6g}", "clipped": clipped}


# --- timelines: one lane per task, fork and wait arrows, the conflicting accesses marked -------------------------

_LANE_GAP = 40
_TOP = 26
_LEFT = 76


_VERBS = {"write": "writes", "read": "reads"}


def _lane_label(task: int) -> str:
    return task_name(task)


def _timeline(kind: str, tasks: list[int], detail: Mapping[str, Any], line: int) -> Optional[dict[str, Any]]:
    events = detail.get("events")
    if isinstance(events, list) and events:
        return _event_timeline([e for e in events if isinstance(e, Mapping)])
    if not tasks or kind in ("hang",) or detail.get("run") == SERIAL:  # one call, forks inline: no lanes to draw
        return None
    return _lane_timeline(kind, tasks, detail, line)


def _lane_timeline(kind: str, tasks: list[int], detail: Mapping[str, Any], line: int) -> dict[str, Any]:
    """No recorded events: main forks every task, each runs, main waits; the involved tasks carry the mark."""
    count = min(max(max(tasks), 1), _MAX_LANES)
    involved = set(tasks)
    op = _readable(detail.get("op") or "")
    where = f"line {line}" if line else ""
    if kind in _MUTATIONS:
        label = " · ".join(p for p in (op or f"writes {detail.get('name', '')}".strip(), where) if p)
    elif kind == "nondeterminism":
        label = "output differs"
    elif kind == "exception":
        label = " · ".join(p for p in ("raised", where) if p)
    else:
        label = " · ".join(p for p in (op or kind, where) if p)
    width, y_main = max(320, _LEFT + 60 + 32 * count), _TOP  # a few tasks fit a phone's width
    lanes = [{"y": y_main, "label": "main", "x1": _LEFT, "x2": width - 16, "involved": 0 in involved}]
    arrows, marks = [], []
    for task in range(1, count + 1):
        y = _TOP + task * _LANE_GAP
        x_fork, x_wait = _LEFT + 20 + 16 * (task - 1), width - 40 - 16 * (count - task)
        lanes.append({"y": y, "label": _lane_label(task), "x1": x_fork, "x2": x_wait, "involved": task in involved})
        first = task == 1  # the first pair of arrows says what they are; the legend says it for all
        arrows.append({"kind": "fork", "x1": x_fork, "y1": y_main, "x2": x_fork, "y2": y - 4,
                       "label": "fork" if first else "", "lx": x_fork + 4, "ly": (y_main + y) // 2 + 4})
        arrows.append({"kind": "wait", "x1": x_wait, "y1": y, "x2": x_wait, "y2": y_main + 4,
                       "label": "wait" if first else "", "lx": x_wait - 4, "ly": (y_main + y) // 2 + 4})
        if task in involved:
            x = (x_fork + x_wait) // 2 if kind != "nondeterminism" else x_wait - 60
            marks.append({"x": x, "y": y, "kind": "conflict", "label": label, "label_y": y + 18,
                          "title": f"{_lane_label(task)}: {label}"})
    if 0 in involved:
        marks.append({"x": width // 2, "y": y_main, "kind": "conflict", "label": label, "label_y": y_main - 10,
                      "title": f"main: {label}"})
    hidden = max(tasks) - count
    note = f"{_plural(hidden, 'more task')} not drawn" if hidden > 0 else ""
    return {"width": width, "height": _TOP + count * _LANE_GAP + 26, "lanes": lanes, "arrows": arrows,
            "marks": marks, "note": note, "recorded": False}


def _event_timeline(events: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Recorded events left to right in the order they happened; conflicting accesses labelled with op and line."""
    shown = events[:_MAX_EVENTS]
    order = sorted({t for e in shown for t in (e.get("task"), e.get("child"))
                    if isinstance(t, int) and not isinstance(t, bool)})
    row = {task: i for i, task in enumerate(order[:_MAX_LANES])}

    def y_of(task: int) -> int:
        return _TOP + row[task] * _LANE_GAP

    step = 44
    width = _LEFT + step * (len(shown) + 1) + 80
    span: dict[int, list[int]] = {}
    arrows, marks = [], []
    last_label: dict[int, int] = {}
    numbered = 0
    forked: set[int] = set()  # lanes that start at their fork arrow (the others get a little lead)

    def reach(task: int, x: int) -> None:
        low, high = span.setdefault(task, [x, x])
        span[task] = [min(low, x), max(high, x)]

    for index, event in enumerate(shown):
        task, child = event.get("task"), event.get("child")
        if task not in row:
            continue
        x, y = _LEFT + step * (index + 1), y_of(task)
        reach(task, x)
        kind = str(event.get("kind") or "")
        op, location = _readable(event.get("op") or ""), _readable(event.get("location") or "")
        _, line = _split_location(location)
        if kind in ("fork", "wait") and child in row and child != task:
            reach(child, x)
            down = 1 if y_of(child) > y else -1
            middle = (y + y_of(child)) // 2 + 4
            if kind == "fork":
                forked.add(child)
                arrows.append({"kind": "fork", "x1": x, "y1": y, "x2": x, "y2": y_of(child) - 4 * down,
                               "label": "fork", "lx": x + 4, "ly": middle})
            else:
                arrows.append({"kind": "wait", "x1": x, "y1": y_of(child), "x2": x, "y2": y + 4 * down,
                               "label": "wait", "lx": x + 4, "ly": middle})
            continue
        conflict = bool(event.get("conflict"))
        shape = "conflict" if conflict else kind if kind in ("write", "fork", "wait") else "read"
        mark = {"x": x, "y": y, "kind": shape, "label": "", "label_y": y - 10,
                "title": " · ".join(p for p in (_lane_label(task), kind, op, location) if p)}
        if conflict:  # numbered as the finding lists the accesses: "1 writes", "2 reads"
            numbered += 1
            mark["label"] = f"{numbered} {_VERBS.get(kind, kind)}"
            if x - last_label.get(task, -1000) < 80:  # two labels close on one lane: the second goes below
                mark["label_y"] = y + 18
            last_label[task] = x
        marks.append(mark)
    conflicted = {m["y"] for m in marks if m["kind"] == "conflict"}
    lanes = [{"y": y_of(t), "label": _lane_label(t), "x1": span.get(t, [_LEFT, _LEFT])[0] - (0 if t in forked else 6),
              "x2": span.get(t, [_LEFT, _LEFT])[1] + 6, "involved": y_of(t) in conflicted} for t in row]
    notes = []
    if len(events) > len(shown):
        notes.append(f"first {len(shown)} of {len(events)} events")
    if len(order) > len(row):
        notes.append(f"{_plural(len(order) - len(row), 'more task')} not drawn")
    return {"width": width, "height": _TOP + (len(row) - 1) * _LANE_GAP + 26, "lanes": lanes, "arrows": arrows,
            "marks": marks, "note": "; ".join(notes), "recorded": True}


# --- without Jinja2: a plain listing, every string escaped -------------------------------------------------------

def _plain_page(report: Mapping[str, Any]) -> str:
    esc = html.escape
    rows = []
    for result in report.get("results", []):
        findings = "".join(
            f"<li><b>{esc(str(f.get('kind', '')))}</b> {esc(str(f.get('message', '')))} "
            f"<code>{esc(str(f.get('location', '')))}</code></li>" for f in result.get("findings") or [])
        rows.append(
            f"<tr><td><code>{esc(str(result.get('nodeid', '')))}</code></td><td>{esc(str(result.get('verdict')))}</td>"
            f"<td>{esc(str(result.get('engine', '')))}</td><td><ul>{findings}</ul>"
            f"<pre>{esc(str(result.get('error', '')))}</pre></td></tr>")
    banner = "" if report.get("complete", True) else "<p><b>Incomplete run: some items did not finish.</b></p>"
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>forkcheck report</title>"
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'\"></head><body>"
        f"<h1>forkcheck report</h1>{banner}<p>forkcheck {esc(str(report.get('forkcheck')))}, "
        f"torch {esc(str(report.get('torch')))}, seed {esc(str(report.get('seed')))}. "
        "Install Jinja2 (<code>pip install forkcheck[html]</code>) for the full report.</p>"
        "<table border='1'><tr><th>item</th><th>verdict</th><th>engine</th>"
        f"<th>findings</th></tr>{''.join(rows)}</table></body></html>\n")
