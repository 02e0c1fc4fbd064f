"""Check settings, resolved in one place: ``fork_safe(...)`` keywords over options over ini keys over defaults.

``resolve_settings`` owns that precedence and defaults the seed (``default_seed``, the one place a seed is drawn;
``target_seed`` derives a check's own from a session's); ``replayed`` is what a replay token overrides.
"""
from __future__ import annotations

import dataclasses
import math
import random
import threading
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

STRATEGIES = ("random", "pct", "portfolio", "exhaustive")
ISOLATIONS = ("child", "inprocess")  # where a session checks: child processes (and forked copies), or in-process


class SettingsError(ValueError):
    """A setting has a bad value; the message names the setting and the fix."""


def _positive_int(name: str, value: Any) -> int:
    fractional = isinstance(value, float) and not value.is_integer()
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if isinstance(value, bool) or fractional or number < 1:
        raise SettingsError(f"{name} must be a positive whole number, got {value!r}")
    return number


def _whole_number(name: str, value: Any) -> int:
    """A count that may be 0 (a bound)."""
    if str(value).strip() == "0" and not isinstance(value, bool):
        return 0
    try:
        return _positive_int(name, value)
    except SettingsError:
        raise SettingsError(f"{name} must be a whole number >= 0, got {value!r}") from None


def _tolerance(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SettingsError(f"{name} must be a number >= 0, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(number) or number < 0:
        raise SettingsError(f"{name} must be a finite number >= 0, got {value!r}")
    return number


#: The longest timeout: every wait for a run must stay within what Python's threads and queues accept, with room
#: for the grace periods the process running the check adds.
MAX_TIMEOUT_S = min(1e9, threading.TIMEOUT_MAX / 2)


def _seconds(name: str, value: Any) -> float:
    try:
        number = _tolerance(name, value)
    except SettingsError:
        raise SettingsError(f"{name} must be a finite number of seconds > 0, got {value!r}") from None
    if number == 0:
        raise SettingsError(f"{name} must be more than 0 seconds, got {value!r}")
    if number > MAX_TIMEOUT_S:
        raise SettingsError(f"{name} must be at most {MAX_TIMEOUT_S:.0f} seconds, got {value!r}")
    return number


def _seed(name: str, value: Any) -> Optional[int]:
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise SettingsError(f"{name} must be a whole number, got {value!r}") from None


MAX_POOL = 256
DEFAULT_POOL_SIZES = (2, 4)  # a session's: size 1 showed no wrong outcome that 2 and 4 missed (README, bench_pools.py)
CHECK_POOL_SIZES = (1, 2, 4)  # ``forkcheck check``'s: a saved model is checked once, not on every commit


def _pool_sizes(name: str, value: Any) -> tuple[int, ...]:
    """``"1,2,4"`` or a sequence of counts: distinct sizes of torch's inter-op thread pool."""
    text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    try:
        sizes = tuple(_positive_int(name, part.strip()) for part in text.split(","))
    except SettingsError:
        sizes = ()
    if not sizes or max(sizes) > MAX_POOL or len(set(sizes)) != len(sizes):
        raise SettingsError(f"{name} must be distinct thread counts from 1 to {MAX_POOL}, comma-separated "
                            f"(e.g. 1,2,4), got {value!r}")
    return sizes


def _strategy(name: str, value: Any) -> str:
    if value not in STRATEGIES:
        raise SettingsError(f"{name} must be one of {', '.join(STRATEGIES)}, got {value!r}")
    return value


def _isolation(name: str, value: Any) -> str:
    """``--forkcheck-isolation``: a session's choice, not a ``Settings`` field (``forkcheck.options``)."""
    text = str(value).strip()
    if text not in ISOLATIONS:
        raise SettingsError(f"must be one of {', '.join(ISOLATIONS)}, got {text!r}")
    return text


@dataclass(frozen=True)
class Settings:
    """How hard one target is checked."""

    tasks: int = 3  # instances forked together on the same inputs
    examples: int = 10  # Hypothesis examples of inputs
    schedules: int = 10  # concurrent schedules per example
    atol: float = 0.0  # 0 with rtol 0: outputs must match bit for bit
    rtol: float = 0.0
    timeout: float = 60.0  # seconds one schedule may take before it counts as a hang
    seed: Optional[int] = None
    strategy: str = "portfolio"  # random, pct, random, ... (see forkcheck.schedules.portfolio.PORTFOLIO)
    pool_sizes: tuple[int, ...] = ()  # inter-op pool sizes a check is split over, a process each (forkcheck.pools)
    preemptions: int = 2  # ``exhaustive``: interleavings with at most this many preemptions
    budget: int = 500  # ``exhaustive``: runs per input before the search stops and says how far it got

    def __post_init__(self):
        object.__setattr__(self, "pool_sizes", tuple(self.pool_sizes))  # a list after a JSON round trip

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **validate(changes))


@dataclass(frozen=True)
class Option:
    """A row of ``OPTIONS``: a ``Settings`` field or a session option, and how it is given and checked."""

    name: str  # flag ``--forkcheck-<name>`` and ini key ``forkcheck_<name>``
    help: str  # "": no flag, no ini key (a ``fork_safe(...)`` keyword only)
    metavar: str = ""
    check: Optional[Callable[[str, Any], Any]] = None  # validates and normalises a value (every ``Settings`` field)
    keyword: str = ""  # "target": a ``fork_safe(...)`` keyword; "test": a ``@pytest.mark.fork_safe`` one too
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


#: Every setting and session option, once: the plugin's flags and ini keys, the ``fork_safe`` keywords, validation.
TABLE = (
    Option("examples", "Hypothesis examples of inputs per target (default 10).", "N", _positive_int, "target"),
    Option("schedules", "concurrent schedules per example (default 10).", "N", _positive_int, "test"),
    Option("tasks", "instances forked together on the same inputs (default 3).", "N", _positive_int, "target"),
    Option("atol", "", check=_tolerance, keyword="target"),
    Option("rtol", "", check=_tolerance, keyword="target"),
    Option("seed", "seed for inputs and schedules (default: random, shown in the header).", "S", _seed),
    Option("strategy", "schedule strategy: random, pct, portfolio (two random schedules to one pct, by turns; "
                     "default), or exhaustive (every interleaving of each input up to --forkcheck-preemptions, with "
                     "partial-order reduction, under forkcheck's own scheduler).",
           "random|pct|portfolio|exhaustive", _strategy, "target"),
    Option("preemptions", "exhaustive: the preemption bound (default 2).", "K", _whole_number, "target"),
    Option("budget", "exhaustive: runs per input before the search stops and says how far it got (default 500).",
           "N", _positive_int, "target"),
    Option("replay", "rerun one failing example and schedule from the token a failure printed; other forkcheck "
                     "items are deselected.", "TOKEN"),
    Option("timeout", "seconds one run may take before it is a hang (default 60).", "SECONDS", _seconds, "test"),
    Option("pool_sizes", "inter-op pool sizes (threads) to split a scripted target's schedules over, a child process "
                         "each; the report says which sizes showed a bug (default 2,4).", "N,N,...", _pool_sizes),
    Option("modules", "comma-separated importable modules whose fork_safe targets are checked too, in every run.",
           "MODS", ini_type="args"),
    Option("isolation", "where fork_safe targets are checked: child (a child process, stopped on a hang, surviving a "
                        "crash; marked tests in a forked copy of this process; default) or inprocess (this process, "
                        "e.g. to debug forkcheck).", "child|inprocess", _isolation),
    Option("report", "directory for forkcheck.json and index.html (default reports).", "DIR"),
    Option("no_report", "write no report files.", flag_only=True),
    Option("fresh_report", "start the report over: without it, a run's rows are merged into the forkcheck.json "
                           "there by node id (for -k, --lf and replays).", flag_only=True),
)
OPTIONS = tuple(option for option in TABLE if option.help)  # the command-line options and ini keys
#: The settings a ``fork_safe(...)`` keyword may set (the seed and the other session options are per run).
TARGET_SETTINGS = tuple(option.name for option in TABLE if option.keyword)
TEST_SETTINGS = tuple(option.name for option in TABLE if option.keyword == "test")  # a test has no inputs or tasks
SESSION_OPTIONS = {option.name: option for option in TABLE if not option.keyword and option.help}

#: The table's rows that are ``Settings`` fields, in its order (the others are session options only).
SETTING_NAMES = tuple(option.name for option in TABLE if option.name in {f.name for f in dataclasses.fields(Settings)})
_VALIDATORS: Mapping[str, Callable[[str, Any], Any]] = {option.name: option.check for option in TABLE
                                                        if option.name in SETTING_NAMES}


def validate(values: Mapping[str, Any], *, source: str = "") -> dict[str, Any]:
    """Check and normalise setting values; ``source`` prefixes the names in errors (``--forkcheck-``)."""
    clean = {}
    for name, value in values.items():
        if name not in _VALIDATORS:
            raise SettingsError(f"unknown forkcheck setting {name!r}; known: {', '.join(_VALIDATORS)}")
        clean[name] = _VALIDATORS[name](f"{source}{name}", value)
    return clean


def default_seed(seed: Optional[int]) -> int:
    """``seed``, or a drawn one when none was given: the one place forkcheck draws a seed."""
    return seed if seed is not None else random.randrange(2**32)


def target_seed(session_seed: int, name: str) -> int:
    """A check's seed in a session: the session's mixed with the check's name, so that it does not depend on the
    order the checks run in, nor on the pytest-xdist worker that runs it."""
    return (session_seed ^ zlib.crc32(name.encode())) & 0xFFFFFFFF


def resolve_settings(keywords: Mapping[str, Any] = {}, options: Mapping[str, Any] = {}, *,
                     session_seed: Optional[int] = None, name: str = "") -> Settings:
    """The settings of one check: ``fork_safe(...)``/marker ``keywords`` over ``options`` (the command line's over
    the ini keys', as ``forkcheck.options`` reads them) over the defaults, validated (``SettingsError``).

    The seed is always set: in a session (``session_seed``), the check ``name``'s own (``target_seed``); else the
    one given, or a drawn one.
    """
    settings = Settings(**validate({**options, **keywords}))
    seed = target_seed(session_seed, name) if session_seed is not None else default_seed(settings.seed)
    return dataclasses.replace(settings, seed=seed)


def replayed(settings: Settings, token: Any) -> Settings:
    """What a replay runs with: the replay token's tasks, strategy and schedules per example over ``settings``
    (those it does not know, a marked test's tasks and a token's unknown schedules, stay), in one process."""
    changes = {"strategy": token.strategy, "tasks": token.tasks or settings.tasks,
               "schedules": token.schedules or settings.schedules}
    return dataclasses.replace(settings.replace(**changes), pool_sizes=())
