"""``forkcheck.json``: design section 3's shape, one row per item, sorted by nodeid."""
from __future__ import annotations

import json
from typing import Any, Mapping


def build_report(results: Mapping[str, Mapping[str, Any]], seed: int, complete: bool = True) -> dict[str, Any]:
    """The report: versions, the session seed, and the rows; ``complete`` is false for an interrupted run."""
    from importlib.metadata import version

    from .. import __version__

    return {
        "forkcheck": __version__,
        "torch": version("torch").split("+")[0],
        "seed": seed,
        "complete": complete,
        "results": [dict(results[nodeid]) for nodeid in sorted(results)],
    }


def dump_report(report: Mapping[str, Any]) -> str:
    return json.dumps(report, indent=1, sort_keys=False) + "\n"
