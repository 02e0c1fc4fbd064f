"""The command-line options and ini keys (one table, ``OPTIONS``), resolved once per session into validated
``SessionOptions``; a check's own settings come of them through ``forkcheck.settings.resolve_settings``."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

import pytest

from .settings import DEFAULT_POOL_SIZES, Settings, SettingsError, isolation, validate


@dataclass(frozen=True)
class Option:
    name: str  # the setting's name; flag ``--forkcheck-<name>`` and ini key ``forkcheck_<name>``
    help: str
    metavar: str = ""
    flag_only: bool = False  # a switch: ``store_true`` on the command line, a boolean ini key
    ini_type: str = "string"

    @property
    def flag(self) -> str:
        return "--forkcheck-" + self.name.replace("_", "-")

    @property
    def ini(self) -> str:
        return "forkcheck_" + self.name

    @property
    def argparse(self) -> dict[str, Any]:
        if self.flag_only:
            return {"action": "store_true", "default": None, "dest": self.ini, "help": self.help}
        return {"default": None, "dest": self.ini, "help": self.help, "metavar": self.metavar or self.name.upper()}


OPTIONS = (
    Option("examples", "Hypothesis examples of inputs per target (default 10).", "N"),
    Option("schedules", "concurrent schedules per example (default 10).", "N"),
    Option("tasks", "instances forked together on the same inputs (default 3).", "N"),
    Option("seed", "seed for inputs and schedules (default: random, shown in the header).", "S"),
    Option("strategy", "schedule strategy: random, pct, portfolio (two random schedules to one pct, by turns; "
                     "default), or exhaustive (every interleaving of each input up to --forkcheck-preemptions, with "
                     "partial-order reduction, under forkcheck's own scheduler).",
           "random|pct|portfolio|exhaustive"),
    Option("preemptions", "exhaustive: the preemption bound (default 2).", "K"),
    Option("budget", "exhaustive: runs per input before the search stops and says how far it got (default 500).",
           "N"),
    Option("replay", "rerun one failing example and schedule from the token a failure printed; other forkcheck "
                     "items are deselected.", "TOKEN"),
    Option("timeout", "seconds one run may take before it is a hang (default 60).", "SECONDS"),
    Option("pool_sizes", "inter-op pool sizes (threads) to split a scripted target's schedules over, a child process "
                         "each; the report says which sizes showed a bug (default 1,2,4).", "N,N,..."),
    Option("modules", "comma-separated importable modules whose fork_safe targets are checked too, in every run.",
           "MODS", ini_type="args"),
    Option("isolation", "where fork_safe targets are checked: child (a child process, stopped on a hang, surviving a "
                        "crash; marked tests in a forked copy of this process; default) or inprocess (this process, "
                        "e.g. to debug forkcheck).", "child|inprocess"),
    Option("report", "directory for forkcheck.json and index.html (default reports).", "DIR"),
    Option("no_report", "write no report files.", flag_only=True),
    Option("fresh_report", "start the report over: without it, a run's rows are merged into the forkcheck.json "
                           "there by node id (for -k, --lf and replays).", flag_only=True),
)

_SETTING_NAMES = tuple(o.name for o in OPTIONS if o.name in {f.name for f in dataclasses.fields(Settings)})
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


@dataclass(frozen=True)
class SessionOptions:
    """What the options and ini keys ask of this run, validated."""

    settings: dict[str, Any] = field(default_factory=dict)  # Settings fields given by option or ini key
    seed: Optional[int] = None  # given by option or ini key (the session's own: ``ForkcheckState.seed``)
    replay: Optional[str] = None
    modules: tuple[str, ...] = ()
    report: str = "reports"
    no_report: bool = False
    fresh_report: bool = False
    pool_sizes: tuple[int, ...] = DEFAULT_POOL_SIZES
    isolation: str = "child"


def _raw(config: pytest.Config, option: Option) -> tuple[Any, str]:
    """The value and where it came from: the command-line flag over the ini key; (None, "") when unset."""
    value = config.getoption(option.ini)
    if value is not None:
        return value, option.flag
    value = config.getini(option.ini)
    if isinstance(value, str):
        value = value.strip()
    if value in ("", None, []):
        return None, ""
    return value, f"ini key {option.ini}"


def resolve_session_options(config: pytest.Config) -> SessionOptions:
    """Command-line option over ini key over default; a bad value is a ``pytest.UsageError`` naming its source."""
    raw = {option.name: _raw(config, option) for option in OPTIONS}
    settings = {}
    for name in _SETTING_NAMES:
        value, source = raw[name]
        if value is None:
            continue
        try:
            settings.update(validate({name: value}))
        except SettingsError as err:
            raise pytest.UsageError(f"{source}: {err}") from None
    seed = settings.pop("seed", None)
    pool_sizes = settings.pop("pool_sizes", DEFAULT_POOL_SIZES)  # per session: where checks run, not how
    replay, _ = raw["replay"]
    if replay:
        _check_token(replay)
    modules, _ = raw["modules"]
    if isinstance(modules, (list, tuple)):
        modules = ",".join(modules)
    report, _ = raw["report"]
    where, source = raw["isolation"]
    try:
        where = isolation(source, where) if where is not None else "child"
    except SettingsError as err:
        raise pytest.UsageError(f"{source}: {err}") from None
    return SessionOptions(
        settings=settings, seed=seed, replay=replay or None,
        modules=tuple(m.strip() for m in (modules or "").split(",") if m.strip()),
        report=report or "reports", no_report=_switch(*raw["no_report"]),
        fresh_report=_switch(*raw["fresh_report"]), pool_sizes=pool_sizes, isolation=where)


def _switch(value: Any, source: str) -> bool:
    if isinstance(value, bool) or value is None:
        return bool(value)
    text = str(value).strip().lower()
    if text not in _TRUE + _FALSE:
        raise pytest.UsageError(f"{source}: expected true or false, got {value!r}")
    return text in _TRUE


def _check_token(token: str) -> None:
    from .replay import ReplayError, ReplayToken

    try:
        ReplayToken.decode(token).check_hypothesis()
    except ReplayError as err:
        raise pytest.UsageError(f"--forkcheck-replay: {err}") from None
