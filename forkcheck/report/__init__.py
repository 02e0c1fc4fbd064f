"""Reports: ``forkcheck.json`` is the source of truth; ``index.html`` is rendered from it."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Mapping


def write_atomically(path: Path, text: str) -> None:
    """Write to a temporary file beside ``path``, then rename: readers never see half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes it private; a report is an ordinary file
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_reports(directory: str, results: Mapping[str, Mapping[str, Any]], seed: int,
                  complete: bool = True) -> dict[str, Path]:
    """Write ``forkcheck.json`` and ``index.html`` into ``directory``; returns their paths."""
    from .html import render_html
    from .json import build_report, dump_report

    root = Path(directory)
    report = build_report(results, seed, complete=complete)
    paths = {"json": root / "forkcheck.json", "html": root / "index.html"}
    write_atomically(paths["json"], dump_report(report))
    write_atomically(paths["html"], render_html(report))
    gitignore = root / ".gitignore"
    if not gitignore.exists():
        write_atomically(gitignore, "*\n!.gitignore\n")
    return paths
