"""A target that leaves processes running (a ``subprocess.Popen``, an ``os.fork``) neither holds pytest's exit nor
loses its result: the processes are stopped with the child process that checked the target, and the result says so.

pytest runs in a subprocess with a generous timeout: a regression fails the test instead of hanging the suite.
"""
from __future__ import annotations

import os
import time

import pytest

from conftest import QUICK
from sources import SCALE, source

LEAVES_PROCESSES = """
import subprocess

@fork_safe
def leaves_a_sleep(x: Tensor) -> Tensor:
    subprocess.Popen(["sleep", "90"])
    return x * 2

@fork_safe
def forks_the_process(x: Tensor) -> Tensor:
    os.fork()  # the copy runs on in forkcheck's code and never ends
    return x * 2
"""


def running_in(directory: str) -> list[str]:
    """Command lines of the processes (not zombies, not this one) whose working directory is ``directory``."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            if not entry.isdigit() or int(entry) == os.getpid() or os.readlink(f"/proc/{entry}/cwd") != directory:
                continue
            with open(f"/proc/{entry}/stat") as stat, open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                if stat.read().rpartition(")")[2].split()[0] != "Z":
                    found.append(cmdline.read().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:  # it ended meanwhile
            continue
    return found


def gone(directory: str, patience_s: float = 30.0) -> list[str]:
    """``running_in(directory)`` once it is empty, or after ``patience_s``: multiprocessing's fork server and
    resource tracker end a moment after the process that started them."""
    deadline = time.monotonic() + patience_s
    while (found := running_in(directory)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return found


@pytest.mark.slow
def test_processes_a_target_leaves_are_stopped_and_said(fc, pytester: pytest.Pytester,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        monkeypatch.delenv(name, raising=False)
    pytester.makepyfile(test_leaves=source(LEAVES_PROCESSES, SCALE))
    result = pytester.runpytest_subprocess(*QUICK, timeout=240)  # the hang guard: pytest used to wait for ever
    result.assert_outcomes(passed=3)
    rows = fc.rows()
    for name in ("leaves_a_sleep", "forks_the_process"):
        stats = rows[f"test_leaves.py::{name}"]["stats"]
        assert (rows[f"test_leaves.py::{name}"]["verdict"], rows[f"test_leaves.py::{name}"]["findings"]) == (
            "pass", [])
        assert stats["left_running"].startswith("the target left "), stats
        assert stats["left_running"].endswith("they were stopped with the process that checked it"), stats
        assert stats["child retired"].startswith("the target left "), stats
    assert "sleep (pid " in rows["test_leaves.py::leaves_a_sleep"]["stats"]["left_running"]
    assert "left_running" not in rows["test_leaves.py::scale"]["stats"]
    assert gone(str(pytester.path)) == []  # the sleep and the copies went with the child
