"""The command-line options and ini keys, and their resolution into validated session settings."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from .settings import SettingsError, validate


@dataclass(frozen=True)
class Option:
    name: str  # the setting's name; flag ``--forkcheck-<name>`` and ini key ``forkcheck_<name>``
    help: str
    type: Any = str
    ini_type: str = "string"
    metavar: str = ""

    @property
    def flag(self) -> str:
        return "--forkcheck-" + self.name.replace("_", "-")

    @property
    def ini(self) -> str:
        return "forkcheck_" + self.name

    @property
    def argparse(self) -> dict[str, Any]:
        if self.type is bool:
            return {"action": "store_true", "default": None, "dest": self.ini, "help": self.help}
        return {"default": None, "dest": self.ini, "help": self.help, "metavar": self.metavar or self.name.upper()}


OPTIONS = (
    Option("examples", "Hypothesis examples of inputs per target (default 10).", metavar="N"),
    Option("schedules", "concurrent schedules per example (default 10).", metavar="N"),
    Option("tasks", "instances forked together on the same inputs (default 3).", metavar="N"),
    Option("seed", "seed for inputs and schedules (default: random, shown in the header).", metavar="S"),
    Option("strategy", "schedule strategy: random or pct (default random).", metavar="random|pct"),
    Option("replay", "rerun one failing example and schedule from the replay token a failure printed.",
           metavar="TOKEN"),
    Option("timeout", "seconds one run may take before it is a hang (default 60).", metavar="SECONDS"),
    Option("modules", "comma-separated modules whose fork_safe targets are checked too.", ini_type="args",
           metavar="MODS"),
    Option("report", "directory for forkcheck.json and index.html (default reports).", metavar="DIR"),
    Option("no_report", "write no report files.", type=bool, ini_type="bool"),
)

_SETTING_NAMES = ("examples", "schedules", "tasks", "seed", "strategy", "timeout")


def _raw(config: pytest.Config, option: Option) -> Any:
    value = config.getoption(option.ini)
    if value is None:
        value = config.getini(option.ini)
        if value in ([], ""):
            value = None
    return value


def resolve_session_options(config: pytest.Config) -> dict[str, Any]:
    """Command-line option over ini key over default, validated; a bad value is a ``pytest.UsageError``."""
    raw = {option.name: _raw(config, option) for option in OPTIONS}
    settings = {name: raw[name] for name in _SETTING_NAMES if raw[name] is not None}
    try:
        clean = validate(settings, source="--forkcheck-")
    except SettingsError as err:
        raise pytest.UsageError(f"{err} (fix the option or the ini key forkcheck_...)") from None
    modules = raw["modules"] or []
    if isinstance(modules, str):
        modules = modules.split(",")
    return {
        "settings": {name: value for name, value in clean.items() if name not in ("seed",)},
        "seed": clean.get("seed"),
        "replay": raw["replay"],
        "modules": [m.strip() for entry in modules for m in entry.split(",") if m.strip()],
        "report": raw["report"] or "reports",
        "no_report": bool(raw["no_report"]),
    }
