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

from ..findings import KINDS, VERDICTS
from .terminal import pool_shown, replay_command

_TEMPLATES = Path(__file__).parent / "templates"
_MUTATIONS = ("input-mutation", "attribute-mutation", "global-mutation")
_ENGINES = {
    "script": "TorchScript runtime",
    "eager": "forkcheck's controlled scheduler",
}
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
    """Turns the report into what the template shows: counts, anchors, snippets, timelines, heatmaps."""

    def __init__(self, report: Mapping[str, Any]):
        self.report = report
        self.sources = _SourceCache()
        self.ids: set[str] = set()
        self.first_of_kind: dict[str, str] = {}

    def build(self) -> dict[str, Any]:
        style = (_TEMPLATES / "report.css").read_text(encoding="utf-8")
        script = (_TEMPLATES / "report.js").read_text(encoding="utf-8")
        items = [self._item(row) for row in self.report.get("results", [])]
        verdicts = {v: sum(item["verdict"] == v for item in items) for v in VERDICTS}
        by_kind = {k: 0 for k in KINDS}
        for item in items:
            for finding in item["findings"]:
                by_kind[finding["kind"]] = by_kind.get(finding["kind"], 0) + 1
        kinds = [{"kind": k, "count": n, "href": "#" + self.first_of_kind[k]} for k, n in by_kind.items() if n]
        return {
            "style": style, "script": script,
            "csp": (f"default-src 'none'; style-src {_csp_hash(style)}; script-src {_csp_hash(script)}; "
                    "img-src data:; base-uri 'none'; form-action 'none'"),
            "forkcheck": str(self.report.get("forkcheck", "")), "torch": str(self.report.get("torch", "")),
            "seed": self.report.get("seed"), "complete": bool(self.report.get("complete", True)),
            "items": items,
            "attention": [item for item in items if item["verdict"] in ("fail", "error")],
            "verdicts": verdicts, "kinds": kinds,
            "total": len(items),
            "targets": sum(item["kind"] == "target" for item in items),
            "tests": sum(item["kind"] == "test" for item in items),
            "examples": sum(_number(row.get("examples")) for row in self.report.get("results", [])),
            "schedules": sum(_number(row.get("schedules")) for row in self.report.get("results", [])),
            "duration": _duration(sum(_number(row.get("duration_s")) for row in self.report.get("results", []))),
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
        findings = [self._finding(anchor, i, f, row) for i, f in enumerate(row.get("findings") or [])]
        tokens = list(dict.fromkeys(f["replay"] for f in findings if f["replay"]))
        engine = str(row.get("engine") or "")
        stats = dict(row.get("stats") or {})
        pools = stats.pop("pool_sizes", None)
        replay_with = str(stats.pop("replay_with", "") or "")
        return {
            "id": anchor, "nodeid": nodeid, "target": str(row.get("target") or ""),
            "kind": str(row.get("kind") or "target"), "verdict": verdict,
            "engine": engine, "engine_name": _ENGINES.get(engine, engine),
            "engine_reason": str(row.get("engine_reason") or ""),
            "examples": _number(row.get("examples")), "schedules": _number(row.get("schedules")),
            "duration": _duration(_number(row.get("duration_s"))),
            "stats": [(str(k), _text(v)) for k, v in stats.items()],
            "pools": _pools(pools) if isinstance(pools, Mapping) else [],
            "findings": findings,
            "finding_kinds": " ".join(dict.fromkeys(f["kind"] for f in findings)),
            "failing_input": [(str(k), _text(v)) for k, v in (row.get("failing_input") or {}).items()],
            "error": str(row.get("error") or ""),
            "replays": [replay_command(nodeid, token, replay_with) for token in tokens],
        }

    def _finding(self, target_anchor: str, index: int, data: Mapping[str, Any], row: Mapping[str, Any]) -> dict:
        kind = str(data.get("kind") or "?")
        anchor = self._unique(f"{target_anchor}--{_words(kind)}-{index + 1}")
        self.first_of_kind.setdefault(kind, anchor)
        detail = dict(data.get("detail") or {})
        location = str(data.get("location") or "")
        path, line = _split_location(location)
        tasks = [t for t in (data.get("tasks") or []) if isinstance(t, int) and not isinstance(t, bool)]
        shown = {"name", "op", "changes", "differences", "traceback", "events", "diff"}
        return {
            "id": anchor, "kind": kind, "message": str(data.get("message") or ""),
            "location": location, "location_short": _short_path(path) + (f":{line}" if line else ""),
            "snippet": self.sources.snippet(path, line) if line else None,
            "tasks": tasks, "replay": str(data.get("replay") or ""),
            "static": detail.get("source") == "static",
            "name": _text(detail.get("name", "")), "op": _text(detail.get("op", "")),
            "changes": [_text(c) for c in detail.get("changes") or []],
            "differences": [_text(d) for d in detail.get("differences") or []],
            "traceback": _text(detail.get("traceback", "")),
            "tensor": _tensor_facts(kind, detail, row) if kind in _MUTATIONS else None,
            "heatmap": _heatmap(detail.get("diff")),
            "timeline": _timeline(kind, tasks, detail, line),
            "facts": [(str(k), _text(v)) for k, v in detail.items() if k not in shown],
        }


def _pools(per_size: Mapping[str, Any]) -> list[dict[str, str]]:
    """Rows of the per-pool-size table: what each size's share of the schedules showed."""
    return [{"size": str(size), "verdict": _text(summary.get("verdict", "")),
             "schedules": _text(summary.get("schedules", "")), "shown": pool_shown(summary)}
            for size, summary in per_size.items() if isinstance(summary, Mapping)]


def _number(value: Any) -> float:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def _text(value: Any) -> str:
    """A JSON value as the page shows it (strings as they are, lists and dicts as Python writes them)."""
    if isinstance(value, str):
        return value
    return str(value) if isinstance(value, (int, float)) else repr(value)


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


def _short_path(path: str) -> str:
    """Relative to the current directory when inside it (the run's root), else as written."""
    if not os.path.isabs(path):
        return path
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive
        return path
    return path if relative.startswith("..") else relative


class _SourceCache:
    """Lines of the user's Python files, read once per render; only ``.py`` files, so a report cannot leak others."""

    def __init__(self):
        self.files: dict[str, Optional[list[str]]] = {}

    def lines(self, path: str) -> Optional[list[str]]:
        if path not in self.files:
            self.files[path] = None
            try:
                file = Path(path)
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


def _tensor_facts(kind: str, detail: Mapping[str, Any], row: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Name, shape, dtype, changed elements, largest change, first changed index: from ``diff`` or the texts."""
    diff = detail.get("diff") if isinstance(detail.get("diff"), Mapping) else {}
    facts: dict[str, str] = {}
    if detail.get("name"):
        facts["name"] = _text(detail["name"])
    if detail.get("op"):
        facts["first write"] = _text(detail["op"])
    if diff.get("shape") is not None:
        facts["shape"] = _text(list(diff["shape"]) if isinstance(diff["shape"], (list, tuple)) else diff["shape"])
    if diff.get("dtype"):
        facts["dtype"] = _text(diff["dtype"])
    if kind == "input-mutation" and "shape" not in facts:
        shape = _SHAPE.search(str((row.get("failing_input") or {}).get(detail.get("name"), "")))
        if shape:
            facts["shape"], facts["dtype"] = shape.group(1), shape.group(2)
    if diff.get("changed") is not None:
        facts["changed elements"] = f"{diff['changed']}" + (f" of {diff['numel']}" if diff.get("numel") else "")
    if diff.get("max_abs") is not None:
        facts["largest absolute change"] = f"{diff['max_abs']:.6g}" if isinstance(diff["max_abs"], float) \
            else _text(diff["max_abs"])
    if diff.get("first"):
        facts["first changed indices"] = ", ".join(_text(i) for i in list(diff["first"])[:5])
    if "changed elements" not in facts:
        for change in detail.get("changes") or []:
            match = _CHANGED.search(str(change))
            if match:
                facts["changed elements"] = f"{match.group(1)} of {match.group(2)}"
                facts["first changed indices"] = match.group(3)
                if match.group(4):
                    facts["largest absolute change"] = match.group(4)
                break
    return list(facts.items())


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


def _lane_label(task: int) -> str:
    return "main" if task == 0 else f"task {task}"


def _timeline(kind: str, tasks: list[int], detail: Mapping[str, Any], line: int) -> Optional[dict[str, Any]]:
    events = detail.get("events")
    if isinstance(events, list) and events:
        return _event_timeline([e for e in events if isinstance(e, Mapping)])
    if not tasks or kind in ("hang",):
        return None
    return _lane_timeline(kind, tasks, detail, line)


def _lane_timeline(kind: str, tasks: list[int], detail: Mapping[str, Any], line: int) -> dict[str, Any]:
    """No recorded events: main forks every task, each runs, main waits; the involved tasks carry the mark."""
    count = min(max(max(tasks), 1), _MAX_LANES)
    involved = set(tasks)
    op = _text(detail.get("op") or "")
    where = f"line {line}" if line else ""
    if kind in _MUTATIONS:
        label = " · ".join(p for p in (op or f"writes {detail.get('name', '')}".strip(), where) if p)
    elif kind == "nondeterminism":
        label = "output differs"
    elif kind == "exception":
        label = " · ".join(p for p in ("raised", where) if p)
    else:
        label = " · ".join(p for p in (op or kind, where) if p)
    width, y_main = 560, _TOP
    lanes = [{"y": y_main, "label": "main", "x1": _LEFT, "x2": width - 16, "involved": 0 in involved}]
    arrows, marks = [], []
    for task in range(1, count + 1):
        y = _TOP + task * _LANE_GAP
        x_fork, x_wait = _LEFT + 20 + 16 * (task - 1), width - 40 - 16 * (count - task)
        lanes.append({"y": y, "label": _lane_label(task), "x1": x_fork, "x2": x_wait, "involved": task in involved})
        arrows.append({"kind": "fork", "x1": x_fork, "y1": y_main, "x2": x_fork, "y2": y - 4})
        arrows.append({"kind": "wait", "x1": x_wait, "y1": y, "x2": x_wait, "y2": y_main + 4})
        if task in involved:
            x = (x_fork + x_wait) // 2 if kind != "nondeterminism" else x_wait - 60
            marks.append({"x": x, "y": y, "kind": "conflict", "label": label, "label_y": y - 10,
                          "title": f"{_lane_label(task)}: {label}"})
    if 0 in involved:
        marks.append({"x": width // 2, "y": y_main, "kind": "conflict", "label": label, "label_y": y_main - 10,
                      "title": f"main: {label}"})
    hidden = max(tasks) - count
    return {"width": width, "height": _TOP + count * _LANE_GAP + 12, "lanes": lanes, "arrows": arrows,
            "marks": marks, "note": f"{hidden} more task(s) not drawn" if hidden > 0 else "", "recorded": False}


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
        op, location = _text(event.get("op") or ""), _text(event.get("location") or "")
        _, line = _split_location(location)
        if kind in ("fork", "wait") and child in row and child != task:
            reach(child, x)
            down = 1 if y_of(child) > y else -1
            if kind == "fork":
                forked.add(child)
                arrows.append({"kind": "fork", "x1": x, "y1": y, "x2": x, "y2": y_of(child) - 4 * down})
            else:
                arrows.append({"kind": "wait", "x1": x, "y1": y_of(child), "x2": x, "y2": y + 4 * down})
            continue
        conflict = bool(event.get("conflict"))
        shape = "conflict" if conflict else kind if kind in ("write", "fork", "wait") else "read"
        mark = {"x": x, "y": y, "kind": shape, "label": "", "label_y": y - 10,
                "title": " · ".join(p for p in (_lane_label(task), kind, op, location) if p)}
        if conflict:
            mark["label"] = " · ".join(p for p in (op or kind, f"line {line}" if line else "") if p)
            if x - last_label.get(task, -1000) < 150:  # two labels close on one lane: the second goes below
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
        notes.append(f"{len(order) - len(row)} more task(s) not drawn")
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
