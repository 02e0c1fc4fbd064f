"""pytest items: one per ``fork_safe`` target, and the runner for ``@pytest.mark.fork_safe`` tests."""
from __future__ import annotations

import importlib
import random
import time
import traceback
import zlib
from typing import Any, Optional

import pytest

from .plugin import _STATE, KIND_PROPERTY


class ForkcheckError(Exception):
    """The check could not run: a setup mistake or an error inside forkcheck (never a silent pass)."""


class TargetFailed(Exception):
    """The target has findings; the item's failure text lists them."""


def _settings_for(config: pytest.Config, name: str, overrides: dict[str, Any]):
    from .settings import Settings

    state = config.stash[_STATE]
    seed = (state.seed ^ zlib.crc32(name.encode())) & 0xFFFFFFFF  # per target: independent of order and worker
    return Settings().replace(**state.options["settings"]).replace(seed=seed, **overrides)


class TargetItem(pytest.Item):
    """Checks one marked function, closure or Module."""

    def __init__(self, *, obj: Any, target_name: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.obj = obj
        self.target_name = target_name
        self.forkcheck_result: Any = None
        self.user_properties.append((KIND_PROPERTY, "target"))

    @classmethod
    def from_object(cls, parent: pytest.Collector, name: str, obj: Any) -> "TargetItem":
        return cls.from_parent(parent, name=name, obj=obj, target_name=f"{parent.obj.__name__}:{name}")

    def setup(self) -> None:
        from .runner import check
        from .target import Target

        target = Target.from_object(self.obj, self.target_name)
        settings = _settings_for(self.config, self.target_name, dict(target.mark.settings))
        replay = self.config.stash[_STATE].options["replay"]
        self.forkcheck_result = result = check(target, settings, replay=replay, nodeid=self.nodeid)
        if result.verdict == "error":
            raise ForkcheckError(result.error)

    def runtest(self) -> None:
        if self.forkcheck_result.verdict == "fail":
            raise TargetFailed()

    def repr_failure(self, excinfo: Any, style: Any = None) -> str:
        if isinstance(excinfo.value, (TargetFailed, ForkcheckError)) and self.forkcheck_result is not None:
            from .report.terminal import failure_text

            return failure_text(self.forkcheck_result)
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Any, Optional[int], str]:
        return self.path, None, f"fork_safe {self.target_name}"


class _ModuleTargets(pytest.Collector):
    """The marked objects of a module named by ``--forkcheck-modules``."""

    def __init__(self, *, module: Any, **kwargs: Any):
        super().__init__(**kwargs)
        self.obj = module

    def collect(self) -> list[TargetItem]:
        from .marker import get_mark

        return [TargetItem.from_object(self, name, obj) for name, obj in vars(self.obj).items()
                if (mark := get_mark(obj)) is not None and mark.module == self.obj.__name__]


def collect_modules(session: pytest.Session, names: list[str]) -> list[TargetItem]:
    items = []
    for name in names:
        try:
            module = importlib.import_module(name)
        except ImportError as err:
            raise pytest.UsageError(f"--forkcheck-modules: cannot import {name!r} ({err}); name an importable "
                                    "module, e.g. mypackage.ops") from None
        collector = _ModuleTargets.from_parent(session, name=name, module=module,
                                               path=__import__("pathlib").Path(module.__file__))
        items.extend(collector.collect())
    return items


def run_marked_test(item: pytest.Function, marker: Any) -> None:
    """Run a ``@pytest.mark.fork_safe`` test under ``schedules`` schedules of forkcheck's own scheduler."""
    from . import _warnings
    from .engines.eager import ControlledScheduler
    from .findings import CheckResult, Finding
    from .marker import MarkError
    from .replay import ReplayToken
    from .settings import TARGET_SETTINGS, SettingsError

    unknown = set(marker.kwargs) - set(TARGET_SETTINGS) or (marker.args and {"positional arguments"})
    if unknown:
        raise MarkError(f"@pytest.mark.fork_safe takes only the keywords {', '.join(TARGET_SETTINGS)}; "
                        f"got {', '.join(sorted(unknown))}")
    try:
        settings = _settings_for(item.config, item.nodeid, dict(marker.kwargs))
    except SettingsError as err:
        raise MarkError(f"@pytest.mark.fork_safe: {err}") from None
    replay = item.config.stash[_STATE].options["replay"]
    token = ReplayToken.decode(replay) if replay else None
    if token is not None and token.target != item.nodeid:
        raise ForkcheckError(f"this replay token is for {token.target}, not {item.nodeid}")
    rng = random.Random(settings.seed)
    seeds = [token.schedule_seed] if token else [rng.randrange(2**32) for _ in range(settings.schedules)]
    result = CheckResult(target=item.nodeid, kind="test", nodeid=item.nodeid, engine="eager",
                         engine_reason="a marked test's forks run under forkcheck's scheduler", examples=1)
    item.forkcheck_result = result
    started = time.perf_counter()
    arguments = {name: item.funcargs[name] for name in item._fixtureinfo.argnames}
    for seed in seeds:
        result.schedules += 1
        scheduler = ControlledScheduler(random.Random(seed))
        try:
            with _warnings.quiet_jit(), scheduler:
                item.obj(**arguments)
        except Exception as err:
            in_task = scheduler.failed_task is not None
            replay_token = ReplayToken(item.nodeid, "", "", 0, seed).encode()
            result.findings = [Finding(
                "exception" if in_task or not isinstance(err, AssertionError) else "nondeterminism",
                f"{'a forked task raised' if in_task else 'the test failed'} under schedule {result.schedules} "
                f"of {len(seeds)} (task order {scheduler.order}): {type(err).__name__}: {err}",
                location=_frame_of(err), tasks=scheduler.order, replay=replay_token,
                detail={"traceback": "".join(traceback.format_exception(err))[-4000:]})]
            result.verdict = "fail"
            result.duration_s = round(time.perf_counter() - started, 3)
            err.add_note(f"forkcheck: failed under schedule {result.schedules} of {len(seeds)}; replay it with\n"
                         f"  pytest '{item.nodeid}' --forkcheck-replay {replay_token}")
            raise
    result.duration_s = round(time.perf_counter() - started, 3)


def _frame_of(err: BaseException) -> str:
    frames = traceback.extract_tb(err.__traceback__)
    user = [f for f in frames if "/forkcheck/" not in f.filename and "/torch/" not in f.filename]
    return f"{user[-1].filename}:{user[-1].lineno}" if user else ""
