"""The pytest plugin: options, the ``fork_safe`` marker, collection of marked targets, and the report.

Hooks only: the checking lives in ``forkcheck.runner`` and the items in ``forkcheck.items``. Nothing heavy (torch,
Hypothesis) is imported at the top of this module, so loading pytest stays fast.
"""
from __future__ import annotations

import shlex
from typing import Any

import pytest

from .options import OPTIONS, SessionOptions, resolve_session_options

STATE = pytest.StashKey["ForkcheckState"]()
KIND = pytest.StashKey[str]()  # on forkcheck's items: "target" or "test"
RESULT = pytest.StashKey[Any]()  # on forkcheck's items: the CheckResult, once there is one
MARKER_HELP = (
    "fork_safe(schedules=10, timeout=60): re-run this test under many fork/wait schedules of forkcheck's own "
    "scheduler (forks inside scripted code it calls too), in a forked copy of pytest's process; it fails if any "
    "schedule fails (its assertions, a race between its tasks, a forked task's exception, or a hang).")


class ForkcheckState:
    """What the session shares: resolved options, the seed, and (on the controller) every item's result row."""

    def __init__(self, options: SessionOptions, seed: int):
        self.options = options
        self.seed = seed
        self.module_files: dict[str, Any] = {}  # --forkcheck-modules name -> its source file
        self.results: dict[str, dict[str, Any]] = {}
        self.report_paths: Any = None
        self.isolation = options.isolation
        self.needs_prewarm = options.isolation == "child"  # the child process that checks targets is yet to start
        self.collected: dict[str, dict[str, str]] = {}  # nodeid -> kind and name of every selected forkcheck item
        self.seen: set[str] = set()  # every item collected, deselected ones too (which report rows still exist)
        self.invocation = "pytest"  # how this pytest was started, for replay commands that run as printed
        self.crashed: dict[str, str] = {}  # nodeid -> what pytest-xdist said when a worker crashed running it
        self.stuck = ""  # the target whose hung run still runs in this process (in-process checks only)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("forkcheck", "forkcheck: determinism and race checks for torch.jit.fork/wait")
    for option in OPTIONS:
        group.addoption(option.flag, **option.argparse)
        parser.addini(option.ini, option.help, type=option.ini_type)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)
    if config.getoption("help", False):  # --help must work even while an option or ini key is wrong
        return
    from .settings import default_seed

    options = resolve_session_options(config)
    worker = getattr(config, "workerinput", None)
    if worker is not None and "forkcheck_seed" in worker:
        seed = worker["forkcheck_seed"]
    else:
        seed = default_seed(options.seed)
    state = ForkcheckState(options, seed)
    if worker is None and not options.no_report:
        from .report import ReportPathError, check_report_dir

        try:
            check_report_dir(options.report)
        except ReportPathError as err:
            raise pytest.UsageError(str(err)) from None
    from .report.terminal import invocation

    if worker is not None:
        state.invocation = worker.get("forkcheck_invocation", "pytest")
    else:  # a report directory given on the command line: the replay joins its row there
        given = config.getoption("forkcheck_report", None) if not options.no_report else None
        state.invocation = invocation() + (f" --forkcheck-report {shlex.quote(str(given))}" if given else "")
    from . import _exit

    _exit.own(config)
    if options.modules:
        from .items import locate_modules

        state.module_files = locate_modules(options.modules, config)
    config.stash[STATE] = state
    if worker is None:
        from .session import ResultCollector

        config.pluginmanager.register(ResultCollector(state, config.rootpath), "forkcheck-results")


@pytest.hookimpl(wrapper=True)
def pytest_cmdline_main(config: pytest.Config) -> Any:
    """The run's exit status, for the exit guard (``forkcheck._exit``) of a process that ran forks."""
    status = yield
    from . import _exit

    _exit.pytest_returned(config, status)
    return status


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist: every worker checks with the controller's seed, and prints its replay commands."""
    node.workerinput["forkcheck_seed"] = node.config.stash[STATE].seed
    node.workerinput["forkcheck_invocation"] = node.config.stash[STATE].invocation


def pytest_report_header(config: pytest.Config) -> str:
    state = config.stash[STATE]
    if state.options.replay:  # the token's example and schedules: the session's seed draws nothing
        return "forkcheck: replaying a token (its input and schedules, no search: no seed to rerun with)"
    return f"forkcheck: seed {state.seed} (rerun with --forkcheck-seed {state.seed})"


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: Any) -> Any:
    """A module-level object marked in this very module (not imported into it) becomes a ``TargetItem``."""
    from .marker import get_mark

    mark = get_mark(obj)
    if mark is None or not isinstance(collector, pytest.Module) or mark.module != collector.obj.__name__:
        return None
    from .items import TargetItem, first_name

    if first_name(collector.obj, obj) != name:
        return []  # the object's item is made under its first name

    _prewarm(collector.config)
    return TargetItem.from_object(collector, name, obj)


def _may_mark_targets(path: Any) -> bool:
    """Whether a module's source names ``fork_safe`` other than as ``pytest.mark.fork_safe`` (marked tests need no
    child process): it may mark targets."""
    import re

    try:
        source = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return re.search(r"(?<!mark\.)\bfork_safe\b", source) is not None


def _prewarm(config: pytest.Config) -> None:
    """A target was collected, or a module that may mark one is about to be imported: start the child process that
    checks targets now, so its warm-up overlaps the rest of the collection."""
    state = config.stash.get(STATE, None)
    if state is not None and state.needs_prewarm and not config.option.collectonly:
        from .isolation import prewarm

        state.needs_prewarm = False
        prewarm(state.options.pool_sizes[0])


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    """The modules named by ``--forkcheck-modules`` join the session's top-level collectors. While a module is
    imported to be collected, a ``fork_safe`` used wrongly in it marks its object with the error (the item's error)
    instead of raising, which would interrupt the whole collection."""
    from .items import ModuleTargets
    from .marker import errors_deferred

    if isinstance(collector, (pytest.Module, ModuleTargets)) and collector.path is not None:
        if collector.config.stash[STATE].needs_prewarm and _may_mark_targets(collector.path):
            _prewarm(collector.config)  # before the module's import (torch's, mostly), which the warm-up overlaps
        with errors_deferred(collector.path):
            report = yield
    else:
        report = yield
    modules = collector.config.stash[STATE].module_files
    if modules and isinstance(collector, pytest.Session) and report.passed:
        from .items import module_collectors

        report.result.extend(module_collectors(collector, modules))
    return report


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list) -> None:
    """Mark ``@pytest.mark.fork_safe`` tests, drop duplicates, and keep only the replayed item when replaying."""
    seen: set[str] = set()
    unique = []
    for item in items:
        if item.nodeid in seen:  # a module both collected as a file and named by --forkcheck-modules
            continue
        seen.add(item.nodeid)
        unique.append(item)
        if isinstance(item, pytest.Function) and item.get_closest_marker("fork_safe") is not None:
            item.stash[KIND] = "test"
    items[:] = unique
    replay = config.stash[STATE].options.replay
    if replay:
        _select_replayed(config, items, replay)


def _select_replayed(config: pytest.Config, items: list, replay: str) -> None:
    """Deselect the forkcheck items the token is not for; none left is a usage error naming both sides."""
    from .items import forkcheck_name
    from .replay import ReplayToken

    wanted = ReplayToken.decode(replay).target
    names = {item.nodeid: forkcheck_name(item) for item in items}
    others = [item for item in items if names[item.nodeid] not in (None, wanted)]
    if wanted not in names.values():
        selected = ", ".join(item.nodeid if names[item.nodeid] == item.nodeid else
                             f"{item.nodeid} ({names[item.nodeid]})" for item in others) or "no forkcheck items"
        raise pytest.UsageError(f"--forkcheck-replay: the token is for {wanted}, which is not among the selected "
                                f"items ({selected}); select the token's target to replay it")
    if others:
        config.hook.pytest_deselected(items=others)
        items[:] = [item for item in items if item not in others]


def pytest_itemcollected(item: pytest.Item) -> None:
    state = item.config.stash.get(STATE, None)
    if state is not None:
        state.seen.add(item.nodeid)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Remember the selected forkcheck items (a worker hands them to the controller)."""
    from .items import forkcheck_name

    state = session.config.stash.get(STATE, None)
    if state is None or session.config.option.collectonly:
        return
    collected = {item.nodeid: {"kind": item.stash[KIND], "target": forkcheck_name(item) or item.nodeid}
                 for item in session.items if item.stash.get(KIND, None) is not None}
    worker = getattr(session.config, "workeroutput", None)
    if worker is not None:
        worker["forkcheck_items"] = collected
        worker["forkcheck_seen"] = sorted(state.seen)
    else:
        state.collected.update(collected)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A ``@pytest.mark.fork_safe`` test's keywords are checked after skip marks, before its fixtures run."""
    if item.stash.get(KIND, None) == "test":
        from .items import SETTINGS, marked_test_settings

        item.stash[SETTINGS] = marked_test_settings(item, item.get_closest_marker("fork_safe"))


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Any:
    if pyfuncitem.stash.get(KIND, None) != "test":
        return None
    from .items import SETTINGS, run_marked_test

    run_marked_test(pyfuncitem, pyfuncitem.stash[SETTINGS])
    return True


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    """Carry the item's kind and result on its report (pytest-xdist ships report attributes to the controller)."""
    report = yield
    kind = item.stash.get(KIND, None)
    if kind is not None:
        result = item.stash.get(RESULT, None)
        report.forkcheck_kind = kind
        report.forkcheck_result = result.to_json() if result is not None and call.when != "teardown" else None
    return report
