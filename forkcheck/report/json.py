"""``forkcheck.json``: design section 3's shape, one row per item, sorted by nodeid."""
from __future__ import annotations

import json
from typing import Any, Mapping, Optional

from ..task_names import task_names


def build_report(results: Mapping[str, Mapping[str, Any]], seed: int, complete: bool = True,
                 run: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """The report: versions, the session seed, facts about the run (``run``: ``run_at``, ``wall_s``, ``rootdir``,
    ``command``, ``seed_option``: the option that repeats the run's search; ``replay``: true for a run that
    replayed a token, whose seed drew no search) and the rows; ``complete`` is false
    for an interrupted run. Each finding gets ``task_names`` beside its numeric ``tasks``."""
    from importlib.metadata import version

    from .. import __version__

    return {
        "forkcheck": __version__,
        "torch": version("torch").split("+")[0],
        "seed": seed,
        "complete": complete,
        **dict(run or {}),
        "results": [_named(results[nodeid]) for nodeid in sorted(results)],
    }


def _named(row: Mapping[str, Any]) -> dict[str, Any]:
    row = dict(row)
    row["findings"] = [dict(f, task_names=task_names(f.get("tasks") or [])) for f in row.get("findings") or []]
    if isinstance(row.get("replay_run"), Mapping):
        row["replay_run"] = _named(row["replay_run"])
    return row


def dump_report(report: Mapping[str, Any]) -> str:
    return json.dumps(report, indent=1, sort_keys=False) + "\n"
