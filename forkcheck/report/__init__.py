"""Reports: ``forkcheck.json`` is the source of truth; ``index.html`` is rendered from it.

forkcheck writes only into a directory it may write, and never over a file it did not write: ``index.html`` says
``<meta name="generator" content="forkcheck ...">``, ``forkcheck.json`` has a ``forkcheck`` version key. The
``.gitignore`` goes only into a directory forkcheck created.
"""
from __future__ import annotations

import json as _json  # (not ``json``: the submodule forkcheck.report.json takes that name here)
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional

FILES = {"json": "forkcheck.json", "html": "index.html"}
_GENERATOR = '<meta name="generator" content="forkcheck'


class ReportPathError(ValueError):
    """The report directory cannot be written, or holds a file forkcheck did not write."""


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


def written_by_forkcheck(path: Path) -> bool:
    """Whether ``path`` is a report file forkcheck wrote (or is absent, so writing it overwrites nothing)."""
    if not path.exists():
        return True
    try:
        if path.name == FILES["json"]:
            return "forkcheck" in previous_report(path.parent, strict=True)
        with path.open(encoding="utf-8", errors="replace") as stream:
            return _GENERATOR in stream.read(4096)
    except (OSError, ValueError):
        return False


def check_report_dir(directory: str) -> None:
    """Raise ``ReportPathError`` (saying what to do) unless the reports can be written into ``directory``."""
    root = Path(directory)
    option = f"--forkcheck-report {directory}"
    if root.exists() and not root.is_dir():
        raise ReportPathError(f"{option}: {root} is not a directory; give a directory for forkcheck.json and "
                              "index.html (it is created if missing), or --forkcheck-no-report")
    ancestor = root
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ReportPathError(f"{option}: {ancestor} is a file, so {root} cannot be created; give another "
                              "directory, or --forkcheck-no-report")
    try:  # the honest test of "may write here": /proc, read-only mounts and permissions all answer it
        os.rmdir(tempfile.mkdtemp(dir=ancestor, prefix=".forkcheck-probe-"))
    except OSError as err:
        raise ReportPathError(f"{option}: cannot write into {ancestor} ({err.strerror}); give a writable "
                              "directory, or --forkcheck-no-report") from None
    for name in FILES.values():
        if not written_by_forkcheck(root / name):
            raise ReportPathError(f"{option}: {root / name} exists and forkcheck did not write it; forkcheck never "
                                  "overwrites it: give another directory (e.g. the default, reports)")


def previous_report(directory: Path, strict: bool = False) -> dict[str, Any]:
    """The ``forkcheck.json`` forkcheck wrote in ``directory`` before, or ``{}`` (``strict``: raise ValueError for
    a file that is not one)."""
    path = Path(directory) / FILES["json"]
    try:
        report = _json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        if strict:
            raise ValueError(f"{path} is not a forkcheck report") from None
        return {}
    owned = isinstance(report, dict) and isinstance(report.get("forkcheck"), str) and isinstance(
        report.get("results"), list)
    if not owned and strict:
        raise ValueError(f"{path} is not a forkcheck report")
    return report if owned else {}


def write_reports(directory: str, results: Mapping[str, Mapping[str, Any]], seed: int, complete: bool = True,
                  run: Optional[Mapping[str, Any]] = None) -> dict[str, Path]:
    """Write ``forkcheck.json`` and ``index.html`` into ``directory``; returns their paths. ``run``: facts about
    the run that wrote them (``forkcheck.report.json.build_report``)."""
    from .html import render_html
    from .json import build_report, dump_report

    root = Path(directory)
    created = not root.exists()
    report = build_report(results, seed, complete=complete, run=run)
    paths = {key: root / name for key, name in FILES.items()}
    for path in paths.values():
        if not written_by_forkcheck(path):  # appeared since the session started
            raise ReportPathError(f"{path} exists and forkcheck did not write it: not overwritten")
    write_atomically(paths["json"], dump_report(report))
    write_atomically(paths["html"], render_html(report))
    if created:
        write_atomically(root / ".gitignore", "*\n!.gitignore\n")
    return paths
