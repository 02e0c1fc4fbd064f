"""The bundled examples: safe ones pass, unsafe ones fail with the expected first finding, and all still script.

``pytest examples/`` runs once, in a subprocess with a fixed seed; the assertions read its ``forkcheck.json``.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import pytest
import torch

from forkcheck._warnings import quiet_jit
from forkcheck.marker import get_mark

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

# nodeid -> the kind of the first finding, or None for a safe example.
EXPECTED: dict[str, Optional[str]] = {
    "examples/doc_examples.py::foo": None,
    "examples/doc_examples.py::bar": None,
    "examples/doc_examples.py::Mod": None,
    "examples/ensemble.py::Ensemble": None,
    "examples/pipeline.py::describe_batch": None,
    "examples/inplace_normalize.py::normalize_inplace": "input-mutation",
    "examples/call_counter.py::counting_classifier": "attribute-mutation",
    "examples/batchnorm_split.py::SplitBatchNorm": "attribute-mutation",
    "examples/global_cache.py::add_positions": "global-mutation",
    "examples/random_mask.py::random_mask": "global-mutation",
    "examples/score_log.py::score_and_log": "input-mutation",
    "examples/chunked_sum.py::chunked_sum": "race",
    "examples/saved_model.py::deployed_ensemble": None,
    "examples/saved_model.py::monitored_ensemble": "attribute-mutation",
}
NOT_SCRIPTABLE = {"examples/global_cache.py::add_positions"}  # a global dict: runs on forkcheck's scheduler


def _run_examples(report: Path) -> dict[str, dict[str, Any]]:
    """Every row of the report of one ``pytest examples/`` run, by nodeid."""
    # Not an outer run's PYTEST_ADDOPTS or pytest-xdist worker variables: the examples run as a user would run them.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", str(EXAMPLES), "-q", "-p", "no:cacheprovider",
         "--rootdir", str(ROOT), "-c", str(ROOT / "pyproject.toml"),
         "--forkcheck-seed", "1", "--forkcheck-report", str(report)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    path = report / "forkcheck.json"
    assert path.exists(), f"no report written (exit {run.returncode}):\n{run.stdout[-4000:]}\n{run.stderr[-2000:]}"
    assert run.returncode == (1 if any(EXPECTED.values()) else 0), run.stdout[-4000:]
    return {row["nodeid"]: row for row in json.loads(path.read_text())["results"]}


def _problems(nodeid: str, row: dict[str, Any]) -> list[str]:
    """How one report row differs from the table (empty when it matches)."""
    expected = EXPECTED[nodeid]
    problems = []
    if row["verdict"] != ("pass" if expected is None else "fail"):
        details = row.get("error") or "; ".join(f"[{f['kind']}] {f['message']}" for f in row["findings"])
        return [f"verdict {row['verdict']!r}: {details}"]
    engine = "eager" if nodeid in NOT_SCRIPTABLE else "script"
    if row["engine"] != engine:
        problems.append(f"engine {row['engine']!r}, expected {engine!r} ({row['engine_reason']})")
    if expected is None:
        if not (row["examples"] and row["schedules"]):
            problems.append(f"passed after {row['examples']} examples and {row['schedules']} schedules")
    else:
        first = row["findings"][0]
        example_file = str(EXAMPLES / nodeid.split("::")[0].split("/")[-1])
        if first["kind"] != expected:
            problems.append(f"first finding [{first['kind']}] {first['message']}, expected {expected}")
        if not first["location"].startswith(example_file + ":"):
            problems.append(f"first finding located at {first['location']!r}, not in {example_file}")
        if not first["replay"] or not row["failing_input"]:
            problems.append("a failing target carries a replay token and its minimal input")
    return problems


@pytest.mark.slow
def test_examples_get_the_verdicts_of_the_table(tmp_path: Path) -> None:
    """One run of ``pytest examples/``: safe examples pass, unsafe ones fail, first finding of the expected kind."""
    results = _run_examples(tmp_path)
    assert sorted(results) == sorted(EXPECTED)
    problems = {nodeid: p for nodeid, row in results.items() if (p := _problems(nodeid, row))}
    assert not problems, "\n".join(f"{nodeid}: {'; '.join(p)}" for nodeid, p in problems.items())


def _load(path: Path) -> Any:
    """The example module, imported under a name of its own (collection here must not pick up its targets)."""
    spec = importlib.util.spec_from_file_location(f"forkcheck_example_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("nodeid", sorted(EXPECTED))
def test_marked_object_still_scripts(nodeid: str) -> None:
    """``fork_safe`` marks without wrapping: what scripted before marking scripts after it."""
    filename, name = nodeid.split("/")[-1].split("::")
    obj = getattr(_load(EXAMPLES / filename), name)
    assert get_mark(obj) is not None
    scriptable = obj() if isinstance(obj, type) else obj
    with quiet_jit():
        if nodeid in NOT_SCRIPTABLE:
            with pytest.raises(Exception):
                torch.jit.script(scriptable)
        else:
            torch.jit.script(scriptable)
