"""pytest items: one per ``fork_safe`` target, and the schedules loop of ``@pytest.mark.fork_safe`` tests."""
from __future__ import annotations

import importlib
import importlib.util
import random
import time
import traceback
import zlib
from pathlib import Path
from typing import Any, Optional

import pytest

from .plugin import KIND, RESULT, STATE

SETTINGS = pytest.StashKey[Any]()  # a marked test's resolved Settings, from its setup
TEST_SETTINGS = ("schedules", "timeout")  # the keywords of @pytest.mark.fork_safe: a test has no inputs or tasks


class TargetFailed(Exception):
    """The target has findings; the item's failure text lists them."""


def _settings_for(config: pytest.Config, name: str, overrides: dict[str, Any]):
    from .settings import Settings

    state = config.stash[STATE]
    seed = (state.seed ^ zlib.crc32(name.encode())) & 0xFFFFFFFF  # per target: independent of order and worker
    return Settings().replace(**state.options.settings).replace(seed=seed, **overrides)


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

        state = self.config.stash[STATE]
        replay, where = state.options.replay, "in-process"
        if state.isolation == "child":
            from .isolation import Unavailable
            from .pools import check_over_pool_sizes

            try:
                return check_over_pool_sizes(self.parent.obj, self.name, target, settings, state.options.pool_sizes,
                                             replay, self.nodeid)
            except Unavailable as err:
                where = f"in-process ({err})"
            except Exception:
                return CheckResult(target=target.name, nodeid=self.nodeid, verdict="error",
                                   error="internal error in forkcheck, running the check in a child process:\n"
                                   + traceback.format_exc())
        if state.stuck:
            return CheckResult(target=target.name, nodeid=self.nodeid, verdict="error", stats={"isolation": where},
                               error=f"not checked: a hung run of {state.stuck} still runs in this process, on "
                                     "torch's inter-op pool, where it holds up every task forked after it; check "
                                     "targets in a child process (--forkcheck-isolation child, the default) to go "
                                     "on after a hang")
        result = check(target, settings, replay=replay, nodeid=self.nodeid)
        result.stats["isolation"] = where
        if "pool_size" in result.stats and not replay:  # one process has one pool size
            sizes = ",".join(map(str, state.options.pool_sizes))
            result.stats["pool_sizes_note"] = (f"checked in-process: with this process's pool of "
                                               f"{result.stats['pool_size']} thread(s) only, not sizes {sizes}")
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


class ModuleTargets(pytest.Collector):
    """The targets marked at the top level of a module named by ``--forkcheck-modules`` (imported here)."""

    def collect(self) -> list[TargetItem]:
        from .marker import get_mark

        self.obj = importlib.import_module(self.name)
        return [TargetItem.from_object(self, name, obj) for name, obj in vars(self.obj).items()
                if (mark := get_mark(obj)) is not None and mark.module == self.obj.__name__]


def locate_modules(names: tuple[str, ...]) -> dict[str, Optional[Path]]:
    """Each module's source file, found without importing it; a name that is not importable is a UsageError."""
    located = {}
    for name in names:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError) as err:  # a parent package is missing, or the name is malformed
            spec, why = None, str(err)
        else:
            why = f"no module named {name!r}"
        if spec is None:
            raise pytest.UsageError(f"--forkcheck-modules: cannot import {name!r} ({why}); name an importable "
                                    "module, e.g. mypackage.ops (the ini key pythonpath can add its directory)")
        located[name] = Path(spec.origin) if spec.has_location and spec.origin else None
    return located


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
    from .settings import SettingsError

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


def run_marked_test(item: pytest.Function, settings: Any) -> None:
    """Run the test body under ``schedules`` schedules of forkcheck's own scheduler (one, when replaying).

    The oracle is the test's own assertions, plus ``exception`` (a forked task raised), ``hang`` (a deadlock, or
    a schedule that did not finish within the timeout) and ``race`` (two tasks that fork/wait leaves unordered touched
    the same tensor storage, one writing: the test fails even though its assertions passed). Every schedule records
    its accesses, so a replayed schedule finds what the original one found.
    """
    from types import SimpleNamespace

    from . import _warnings
    from .choices import strategy_for
    from .engines.eager import ControlledScheduler, ScheduleError, race_log
    from .findings import CheckResult, sort_findings
    from .replay import ReplayToken
    from .report.terminal import relative, replay_command
    from .schedule import members

    replay = item.config.stash[STATE].options.replay
    if replay:  # replay under the strategy the failure was found with
        settings = settings.replace(strategy=ReplayToken.decode(replay).strategy)
    rng = random.Random(settings.seed)
    seeds = [ReplayToken.decode(replay).schedule_seed] if replay else [
        rng.randrange(2**32) for _ in range(settings.schedules)]
    result = CheckResult(target=item.nodeid, kind="test", nodeid=item.nodeid, engine="eager",
                         engine_reason="a marked test's forks run under forkcheck's scheduler", examples=1)
    started = time.perf_counter()
    arguments = {name: item.funcargs[name] for name in item._fixtureinfo.argnames}
    names = _argument_names(arguments)
    kinds = members(settings.strategy)
    for seed in seeds:
        result.schedules += 1
        which = f"schedule {result.schedules} of {len(seeds)}"
        schedule = SimpleNamespace(seed=seed, strategy=kinds[(result.schedules - 1) % len(kinds)])
        token = ReplayToken(item.nodeid, "", "", 0, seed, schedule.strategy).encode()
        log = race_log(names)
        scheduler = ControlledScheduler(strategy_for(schedule), timeout=settings.timeout, observer=log)
        try:
            with _warnings.quiet_jit(), scheduler:
                item.obj(**arguments)
        except Exception as err:
            races = [] if isinstance(err, ScheduleError) else _races(log, token, failed=True)
            result.findings = sort_findings([_finding(err, scheduler, which, token), *races])
            result.verdict = "fail"
            result.duration_s = round(time.perf_counter() - started, 3)
            item.stash[RESULT] = result
            invocation, rootdir = _shown_as(item.config)
            raced = relative("".join(f"\n  - {race.message}" for race in races), rootdir)
            err.add_note(f"forkcheck: failed under {which} ({settings.strategy})"
                         + (f", which also showed {len(races)} race{'s' * (len(races) > 1)}:{raced}\n" if races
                            else "; ")
                         + f"replay it with\n  {replay_command(item.nodeid, token, invocation)}")
            raise
        races = _races(log, token, failed=False)
        if races:
            result.findings, result.verdict = races, "fail"
            result.duration_s = round(time.perf_counter() - started, 3)
            item.stash[RESULT] = result
            invocation, rootdir = _shown_as(item.config)
            listed = relative("\n".join(f"  - {race.message}" for race in races), rootdir)
            pytest.fail(f"forkcheck: {len(races)} race{'s' * (len(races) > 1)} under {which} ({settings.strategy}), "
                        f"although the test's assertions passed:\n{listed}\nreplay it with\n  "
                        f"{replay_command(item.nodeid, token, invocation)}", pytrace=False)
    result.duration_s = round(time.perf_counter() - started, 3)
    item.stash[RESULT] = result


def _argument_names(arguments: dict[str, Any]) -> dict[int, str]:
    """Storage key -> the fixture (or ``fixture.attribute`` of a Module fixture) a race report names it by."""
    import torch

    from .observe import storage_names

    names = storage_names(arguments)
    for name, value in arguments.items():
        if isinstance(value, torch.nn.Module):
            for key, path in storage_names(module=value).items():
                names.setdefault(key, name + path[len("self"):])
    return names


def _races(log: Any, token: str, failed: bool) -> list[Any]:
    """The schedule's ``race`` findings, each with the replay token and whether the test failed under it."""
    from .oracles.races import race_findings

    races = race_findings(log)
    for race in races:
        race.replay = token
        race.detail["outputs_affected"] = failed
        race.message += ("; the test failed under this schedule" if failed else
                         "; the test's assertions passed under this schedule, another one's may not")
    return races


def _finding(err: Exception, scheduler: Any, which: str, token: str) -> Any:
    """The one finding of a failed schedule: a hang, a task's exception, or the test's own failure."""
    from .engines.eager import ScheduleError
    from .findings import Finding
    from .locate import error_location
    from .task_names import task_name

    order = scheduler.order[:24] + (["..."] if len(scheduler.order) > 24 else [])
    where, problem = f"{which} (task order {' '.join(map(str, order))})", f"{type(err).__name__}: {err}"
    if isinstance(err, ScheduleError):
        kind, message = "hang", f"{where}: {err}"
    elif scheduler.failed_task is not None:
        kind, message = "exception", f"forked {task_name(scheduler.failed_task)} raised under {where}: {problem}"
    else:
        kind = "nondeterminism" if isinstance(err, AssertionError) else "exception"
        message = f"the test failed under {where}: {problem}"
    detail = {"order": scheduler.order[:500], "traceback": "".join(traceback.format_exception(err))[-4000:]}
    tasks = sorted({scheduler.tree_id(task) for task in scheduler.order} - {0})
    return Finding(kind, message, location=error_location(err), tasks=tasks, replay=token, detail=detail)


