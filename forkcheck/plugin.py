"""The pytest plugin: options, the ``fork_safe`` marker, collection of marked targets, and the report.

Thin by design: the checking lives in ``forkcheck.runner``; nothing heavy (torch, Hypothesis) is imported at the
top of this module, so loading pytest stays fast.
"""
from __future__ import annotations

import json
import os
import random
from typing import Any

import pytest

from .options import OPTIONS, resolve_session_options

RESULT_PROPERTY = "forkcheck_result"
KIND_PROPERTY = "forkcheck_kind"
_STATE = pytest.StashKey["ForkcheckState"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("forkcheck", "forkcheck: determinism and race checks for torch.jit.fork/wait")
    for option in OPTIONS:
        group.addoption(option.flag, **option.argparse)
        parser.addini(option.ini, option.help, type=option.ini_type)


class ForkcheckState:
    """What the session shares: resolved options, the seed, and (on the controller) every item's result."""

    def __init__(self, options: dict[str, Any], seed: int):
        self.options = options
        self.seed = seed
        self.results: dict[str, dict[str, Any]] = {}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "fork_safe(tasks=3, examples=10, schedules=10, atol=0, rtol=0, timeout=60): re-run this test under many "
        "fork/wait schedules of forkcheck's own scheduler; it fails if any schedule fails.",
    )
    options = resolve_session_options(config)
    worker = getattr(config, "workerinput", None)
    seed = options["seed"]
    if worker is not None and "forkcheck_seed" in worker:
        seed = worker["forkcheck_seed"]
    elif seed is None:
        seed = random.randrange(2**32)
    state = ForkcheckState(options, seed)
    config.stash[_STATE] = state
    if worker is None:
        config.pluginmanager.register(ResultCollector(state), "forkcheck-results")


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist: every worker checks with the controller's seed."""
    node.workerinput["forkcheck_seed"] = node.config.stash[_STATE].seed


def pytest_report_header(config: pytest.Config) -> str:
    state = config.stash[_STATE]
    return f"forkcheck: seed {state.seed} (rerun with --forkcheck-seed {state.seed})"


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: Any) -> Any:
    from .marker import get_mark

    mark = get_mark(obj)
    module = getattr(collector, "obj", None)
    if mark is None or not isinstance(collector, pytest.Module) or mark.module != getattr(module, "__name__", None):
        return None
    from .items import TargetItem

    return TargetItem.from_object(collector, name, obj)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list) -> None:
    modules = config.stash[_STATE].options["modules"]
    if modules:
        from .items import collect_modules

        items.extend(collect_modules(session, modules))
    for item in items:
        if isinstance(item, pytest.Function) and item.get_closest_marker("fork_safe") is not None:
            item.user_properties.append((KIND_PROPERTY, "test"))


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Any:
    marker = pyfuncitem.get_closest_marker("fork_safe")
    if marker is None:
        return None
    from .items import run_marked_test

    run_marked_test(pyfuncitem, marker)
    return True


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    result = getattr(item, "forkcheck_result", None)
    if result is not None and not any(key == RESULT_PROPERTY for key, _ in report.user_properties):
        if report.when == "call" or (report.when == "setup" and result.verdict == "error"):
            report.user_properties.append((RESULT_PROPERTY, json.dumps(result.to_json())))


class ResultCollector:
    """Registered per session: keeps every forkcheck item's result once, by nodeid, and writes the report.

    Under pytest-xdist the workers' reports arrive here on the controller, which alone writes the files.
    """

    def __init__(self, state: ForkcheckState):
        self.state = state
        self.report_paths: Any = None

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        properties = dict(report.user_properties)
        if KIND_PROPERTY not in properties:
            return
        results = self.state.results
        if RESULT_PROPERTY in properties:
            results[report.nodeid] = json.loads(properties[RESULT_PROPERTY])
        elif (report.skipped or report.failed) and report.nodeid not in results:
            results[report.nodeid] = {
                "nodeid": report.nodeid, "target": report.nodeid, "kind": properties[KIND_PROPERTY],
                "verdict": "skipped" if report.skipped else "error", "engine": "", "examples": 0, "schedules": 0,
                "duration_s": round(report.duration, 3), "findings": [],
                "error": "" if report.skipped else str(report.longrepr)[-2000:]}

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        options = self.state.options
        if options["no_report"] or not self.state.results:
            return
        from .report import write_reports

        self.report_paths = write_reports(options["report"], self.state.results, self.state.seed,
                                          complete=exitstatus != pytest.ExitCode.INTERRUPTED)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.state.results:
            return
        from .report.terminal import summary_lines

        for line in summary_lines(list(self.state.results.values()), self.report_paths):
            terminalreporter.write_line(line)
