"""``index.html``: a plain, self-contained listing of results (the rich report renders from the same JSON)."""
from __future__ import annotations

import html
from typing import Any, Mapping


def render_html(report: Mapping[str, Any]) -> str:
    rows = []
    for result in report["results"]:
        findings = "".join(
            f"<li><b>{html.escape(f['kind'])}</b> {html.escape(f['message'])} "
            f"<code>{html.escape(f.get('location', ''))}</code></li>" for f in result.get("findings", []))
        rows.append(
            f"<tr><td><code>{html.escape(result['nodeid'])}</code></td><td>{html.escape(result['verdict'])}</td>"
            f"<td>{html.escape(result.get('engine', ''))}</td><td><ul>{findings}</ul>"
            f"{html.escape(result.get('error', ''))}</td></tr>")
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>forkcheck report</title></head><body>"
        f"<h1>forkcheck report</h1><p>forkcheck {report['forkcheck']}, torch {report['torch']}, "
        f"seed {report['seed']}</p><table border='1'><tr><th>item</th><th>verdict</th><th>engine</th>"
        f"<th>findings</th></tr>{''.join(rows)}</table></body></html>\n")
