"""Helpers for running pytest with forkcheck end to end through ``pytester``."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator

import pytest

QUICK = ("--forkcheck-examples", "2", "--forkcheck-schedules", "2", "-p", "no:cacheprovider")
TOKEN = re.compile(r"--forkcheck-replay (fc1\.[A-Za-z0-9_\-]+)")

# pytester drops every module an in-process run imported. torch imports parts of itself lazily (and registers
# torch.library namespaces as it does), so those must outlive the run: only the run's own files are dropped.
_KEPT: dict[str, ModuleType] = {}


class _KeepLibraryImports:
    def __init__(self, root: Path):
        self.root = str(root)

    def pytest_unconfigure(self) -> None:
        _KEPT.update((name, module) for name, module in list(sys.modules.items())
                     if not str(getattr(module, "__file__", "") or "").startswith(self.root))


def _restore_kept() -> None:
    for name, module in _KEPT.items():
        sys.modules.setdefault(name, module)


class ForkcheckRun:
    """Runs pytest in a ``pytester`` directory with tiny forkcheck settings and reads what it wrote."""

    def __init__(self, pytester: pytest.Pytester):
        self.pytester = pytester

    def run(self, *args: str, subprocess: bool = False, quick: bool = True) -> pytest.RunResult:
        args = (*QUICK, *args) if quick else args
        if subprocess:
            return self.pytester.runpytest_subprocess(*args)
        try:
            return self.pytester.runpytest(*args, plugins=[_KeepLibraryImports(self.pytester.path)])
        finally:
            _restore_kept()

    def report(self, directory: str = "reports") -> dict[str, Any]:
        return json.loads((self.pytester.path / directory / "forkcheck.json").read_text())

    def rows(self, directory: str = "reports") -> dict[str, dict[str, Any]]:
        """The report's rows by nodeid, each nodeid checked to appear once."""
        rows = self.report(directory)["results"]
        nodeids = [row["nodeid"] for row in rows]
        assert len(nodeids) == len(set(nodeids)), nodeids
        return {row["nodeid"]: row for row in rows}

    @staticmethod
    def tokens(result: pytest.RunResult) -> list[str]:
        return TOKEN.findall(result.stdout.str())


@pytest.fixture
def _kept_imports() -> Iterator[None]:
    """Torn down after ``pytester`` (which restores ``sys.modules`` once more), to put the kept modules back."""
    yield
    _restore_kept()


@pytest.fixture
def fc(_kept_imports: None, pytester: pytest.Pytester) -> ForkcheckRun:
    return ForkcheckRun(pytester)
