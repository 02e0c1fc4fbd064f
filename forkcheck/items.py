"""pytest items: one per ``fork_safe`` target, and the adapter that runs ``@pytest.mark.fork_safe`` tests
through ``forkcheck.marked``."""
from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import traceback
from pathlib import Path
from typing import Any, Optional

import pytest

from .plugin import KIND, RESULT, STATE
from ._words import plural

SETTINGS = pytest.StashKey[Any]()  # a marked test's resolved Settings, from its setup


class TargetFailed(Exception):
    """The target has findings; the item's failure text lists them."""


def _settings_for(config: pytest.Config, name: str, keywords: dict[str, Any]):
    from .settings import resolve_settings

    state = config.stash[STATE]
    return resolve_settings(keywords, state.options.settings, session_seed=state.seed, name=name)


def forkcheck_name(item: pytest.Item) -> Optional[str]:
    """The name a replay token carries for ``item``: ``module:name`` for a target, the nodeid for a marked test."""
    if isinstance(item, TargetItem):
        return item.target_name
    return item.nodeid if item.stash.get(KIND, None) == "test" else None


def _shown_as(config: pytest.Config) -> tuple[str, str]:
    """How this session's texts show commands and paths: the invocation that started pytest, and its rootdir."""
    return config.stash[STATE].invocation, str(config.rootpath)


class TargetItem(pytest.Item):
    """Checks one marked function, closure or Module; the check runs at setup, so a setup problem is an ERROR."""

    def __init__(self, *, obj: Any, target_name: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.obj = obj
        self.target_name = target_name
        self.stash[KIND] = "target"

    @classmethod
    def from_object(cls, parent: pytest.Collector, name: str, obj: Any) -> "TargetItem":
        return cls.from_parent(parent, name=name, obj=obj, target_name=f"{parent.obj.__name__}:{name}")

    def setup(self) -> None:
        from .report.terminal import failure_text
        from .target import Target

        target = Target.from_object(self.obj, self.target_name)
        settings = _settings_for(self.config, self.target_name, dict(target.mark.settings))
        result = self._check(target, settings)
        self.stash[RESULT] = result
        if result.verdict == "error":
            pytest.fail(failure_text(result, *_shown_as(self.config)), pytrace=False)

    def _check(self, target: Any, settings: Any) -> Any:
        """In child processes, one per inter-op pool size (``forkcheck.pools``), unless asked to check in-process or
        the target does not import there; in-process, a hang is detected but cannot be stopped, and a crash ends the
        session."""
        from . import _exit
        from .findings import CheckResult
        from .runner import check
        from .stats import IN_PROCESS, Isolation, Stats

        state = self.config.stash[STATE]
        replay, where = state.options.replay, Isolation(IN_PROCESS)
        if state.isolation == "child":
            from .isolation import Unavailable
            from .pools import check_over_pool_sizes

            try:
                return check_over_pool_sizes(self.parent.obj, self.name, target, settings, state.options.pool_sizes,
                                             replay, self.nodeid)
            except Unavailable as err:
                where = where.noted(str(err))
            except Exception:
                return CheckResult(target=target.name, nodeid=self.nodeid, verdict="error",
                                   error="internal error in forkcheck, running the check in a child process:\n"
                                   + traceback.format_exc())
        if state.stuck:
            return CheckResult(target=target.name, nodeid=self.nodeid, verdict="error", stats=Stats(isolation=where),
                               error=f"not checked: a hung run of {state.stuck} still runs in this process, on "
                                     "torch's inter-op pool, where it holds up every task forked after it; check "
                                     "targets in a child process (--forkcheck-isolation child, the default) to go "
                                     "on after a hang")
        result = check(target, settings, replay=replay, nodeid=self.nodeid)
        result.stats.isolation = where
        if result.stats.pool_size and not replay:  # one process has one pool size
            sizes = ",".join(map(str, state.options.pool_sizes))
            result.stats.pool_sizes_note = (f"checked in-process: with this process's pool of "
                                            f"{plural(result.stats.pool_size, 'thread')} only, not sizes {sizes}")
        if _exit.abandoned():
            state.stuck = target.name
        return result

    def runtest(self) -> None:
        if self.stash[RESULT].verdict == "fail":
            raise TargetFailed()

    def repr_failure(self, excinfo: Any, style: Any = None) -> Any:
        if isinstance(excinfo.value, TargetFailed):
            from .report.terminal import failure_text

            return failure_text(self.stash[RESULT], *_shown_as(self.config))
        return super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[Any, Optional[int], str]:
        return self.path, None, f"fork_safe {self.target_name}"


def first_name(module: Any, obj: Any) -> str:
    """The first of the module's names for ``obj``: one object under two names (``checked = fork_safe(scripted)``) is
    one item, by that name."""
    return next(name for name, value in vars(module).items() if value is obj)


class ModuleTargets(pytest.Collector):
    """The targets marked at the top level of a module named by ``--forkcheck-modules`` (imported here)."""

    def collect(self) -> list[TargetItem]:
        from .marker import get_mark

        self.obj = importlib.import_module(self.name)
        items = [TargetItem.from_object(self, name, obj) for name, obj in vars(self.obj).items()
                 if (mark := get_mark(obj)) is not None and mark.module == self.obj.__name__
                 and first_name(self.obj, obj) == name]
        if not items:
            self.warn(pytest.PytestWarning(
                f"--forkcheck-modules: {self.name} holds no fork_safe target at its top level, so none of it is "
                f"checked; mark targets in {self.name} itself (one imported into it is checked where it is marked)"))
        return items


def locate_modules(names: tuple[str, ...], config: pytest.Config) -> dict[str, Optional[Path]]:
    """Each module's source file, found without importing it; a name that is not importable is a UsageError.

    A module that is not on ``sys.path`` yet is looked for where pytest's default import mode puts the test files'
    directories on it once it collects them (the rootdir, and the directories the run collects from): the ``pytest``
    script, unlike ``python -m pytest``, starts without the working directory there. That directory is added then.
    """
    located = {}
    for name in names:
        spec, why = _find_spec(name)
        if spec is None:
            top = name.partition(".")[0]
            root = next((root for root in _import_roots(config)
                         if importlib.machinery.PathFinder.find_spec(top, [str(root)]) is not None), None)
            if root is not None:
                sys.path.insert(0, str(root))
                spec, why = _find_spec(name)
        if spec is None:
            raise pytest.UsageError(f"--forkcheck-modules: cannot import {name!r} ({why}); name an importable "
                                    "module, e.g. mypackage.ops (the ini key pythonpath can add its directory)")
        located[name] = Path(spec.origin) if spec.has_location and spec.origin else None
    return located


def _find_spec(name: str) -> tuple[Any, str]:
    """The module's spec on ``sys.path`` (None when there is none), and why not."""
    try:
        return importlib.util.find_spec(name), f"no module named {name!r}"
    except (ImportError, ValueError) as err:  # a parent package is missing, or the name is malformed
        return None, str(err)


def _import_roots(config: pytest.Config) -> list[Path]:
    """The rootdir, the invocation directory and the directories of the run's arguments, each once."""
    here = config.invocation_params.dir
    roots = [config.rootpath, here]
    for arg in config.args:
        path = here / arg.split("::")[0]
        roots.append(path if path.is_dir() else path.parent)
    return list(dict.fromkeys(root.resolve() for root in roots if root.is_dir()))


def module_collectors(session: pytest.Session, located: dict[str, Optional[Path]]) -> list[ModuleTargets]:
    """One collector per module; its node id is the file's, as if pytest had collected the file itself."""
    collectors = []
    for name, path in located.items():
        if path is None:  # a namespace package
            path, nodeid = session.config.rootpath, name
        elif path.is_relative_to(session.config.rootpath):
            nodeid = path.relative_to(session.config.rootpath).as_posix()
        else:
            nodeid = path.as_posix()
        collectors.append(ModuleTargets.from_parent(session, name=name, path=path, nodeid=nodeid))
    return collectors


def marked_test_settings(item: pytest.Item, marker: pytest.Mark) -> Any:
    """The settings of a ``@pytest.mark.fork_safe`` test; a wrong keyword fails its setup, naming the keyword."""
    from .settings import TEST_SETTINGS, SettingsError

    unknown = sorted(set(marker.kwargs) - set(TEST_SETTINGS))
    if marker.args or unknown:
        got = ", ".join(unknown + (["positional arguments"] if marker.args else []))
        pytest.fail(f"@pytest.mark.fork_safe got {got}; a marked test takes only the keywords "
                    f"{', '.join(TEST_SETTINGS)} (inputs, tasks and tolerances belong to @fork_safe targets)",
                    pytrace=False)
    try:
        return _settings_for(item.config, item.nodeid, dict(marker.kwargs))
    except SettingsError as err:
        pytest.fail(f"@pytest.mark.fork_safe: {err}", pytrace=False)


CAPTURE_FIXTURES = {"capsys", "capsysbinary", "capfd", "capfdbinary"}  # they read the test's own sys.stdout


def run_marked_test(item: pytest.Function, settings: Any) -> None:
    """Run the test through ``forkcheck.marked.check_test``: its fixtures make the body, its result the outcome.

    In a forked copy of pytest's process unless checking in-process (``--forkcheck-isolation inprocess``). The body's
    own failure reads as pytest reports it, with forkcheck's note (the schedule, the replay command) after it;
    in-process it is raised again as it was, so ``--pdb`` and pytest's usual report work on it.
    """
    from _pytest._code import ExceptionInfo

    from .marked import check_test
    from .report.terminal import failure_text

    state = item.config.stash[STATE]
    arguments = {name: item.funcargs[name] for name in item._fixtureinfo.argnames}
    raised: list[BaseException] = []

    def describe(err: BaseException) -> str:
        raised.append(err)
        return str(item.repr_failure(ExceptionInfo.from_exception(err)))

    result = check_test(lambda: item.obj(**arguments), settings, item.nodeid, replay=state.options.replay,
                        arguments=arguments, describe_failure=describe, forked=state.isolation == "child",
                        keep_python_streams=bool(CAPTURE_FIXTURES & set(item.fixturenames)))
    item.stash[RESULT] = result
    if result.verdict == "error":
        pytest.fail(f"forkcheck: {failure_text(result, *_shown_as(item.config))}", pytrace=False)
    if result.verdict != "fail":
        return
    note = _failure_note(result, *_shown_as(item.config))
    if raised:  # in-process: the exception the (first failing) schedule ended with, as pytest reports it, and the note
        raised[0].add_note(note)
        raise raised[0]
    first = result.findings[0]
    shown = first.detail.get("traceback") or first.message if first.kind != "race" else ""
    pytest.fail((shown.rstrip() + "\n\n" if shown else "") + note, pytrace=False)


def _failure_note(result: Any, invocation: str, rootdir: str) -> str:
    """forkcheck's words after a failure: the schedule, the races it showed, the replay command (a replay's: what
    it reran and how often the failure came back)."""
    from .report.terminal import relative, replay_command, replay_outcome, replay_what

    races = [f for f in result.findings if f.kind == "race"]
    listed = relative("".join(f"\n  - {race.message}" for race in races), rootdir)
    plural = "s" * (len(races) > 1)
    under = result.stats.failed_under
    token, replays = result.findings[0].replay, result.stats.replays
    if replays:
        said = replays.to_json()
        replay = f"replayed {replay_what(said)}, {replays.runs} times: {replay_outcome(said)}"
    else:
        replay = f"replay it with\n  {replay_command(result.nodeid, token, invocation)}" if token else ""
    if len(races) == len(result.findings):
        return f"forkcheck: {len(races)} race{plural} under {under}, although the test's assertions passed:" \
               f"{listed}\n{replay}"
    also = f", which also showed {len(races)} race{plural}:{listed}\n" if races else "; "
    return f"forkcheck: failed under {under}{also}{replay}"
