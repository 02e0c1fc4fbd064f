"""The command-line options and ini keys (rows of ``forkcheck.settings.OPTIONS``), resolved once per session into
validated ``SessionOptions``; a check's own settings come of them through ``forkcheck.settings.resolve_settings``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import pytest

from .settings import DEFAULT_POOL_SIZES, OPTIONS, SETTING_NAMES, Option, SettingsError


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
    checked = {}
    for option in OPTIONS:
        value, source = raw[option.name]
        if value is None or option.check is None:
            continue
        try:
            checked[option.name] = option.check(option.name, value)
        except SettingsError as err:
            raise pytest.UsageError(f"{source}: {err}") from None
    settings = {name: checked[name] for name in SETTING_NAMES if name in checked}
    seed = settings.pop("seed", None)
    pool_sizes = settings.pop("pool_sizes", DEFAULT_POOL_SIZES)  # per session: where checks run, not how
    replay, source = raw["replay"]
    if replay is not None and not str(replay).strip():
        raise pytest.UsageError(f"{source}: the token is empty: give the token a failure printed (fc1....)")
    if replay:
        _check_token(replay)
    modules, _ = raw["modules"]
    if isinstance(modules, (list, tuple)):
        modules = ",".join(modules)
    report, _ = raw["report"]
    return SessionOptions(
        settings=settings, seed=seed, replay=replay or None,
        modules=tuple(m.strip() for m in (modules or "").split(",") if m.strip()),
        report=report or "reports", no_report=_switch(*raw["no_report"]),
        fresh_report=_switch(*raw["fresh_report"]), pool_sizes=pool_sizes,
        isolation=checked.get("isolation", "child"))


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
