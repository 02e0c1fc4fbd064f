"""A result's statistics (``CheckResult.stats``): typed fields, ``None`` or empty meaning "not measured".

The ``stats`` object of a ``forkcheck.json`` row is written from them (``Stats.to_json``: the unset fields left out,
each field under the key it has always had there) and read back (``Stats.from_json``: how a child process hands its
result to the parent). The report's renderers read that JSON, whose values these types name (``FoundBy``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional


class FoundBy(str, Enum):
    """Which runs showed a check's first finding."""

    SERIAL_RUN = "serial run"  # the serial reference (forks inline): no schedule, no pool needed to show it
    CONCURRENT_RUNS = "concurrent runs"


#: Where a check ran (``Isolation.place``), and how a run there ended when it did not end by itself.
CHILD, FORKED, IN_PROCESS = "child process", "forked", "in-process"
STOPPED, CRASHED, DIED = "stopped", "crashed", "died"


@dataclass(frozen=True)
class Isolation:
    """Where a check ran; in the JSON one phrase: ``child process (crashed) (a fresh one: ...)``."""

    place: str  # CHILD, FORKED or IN_PROCESS
    ended: str = ""  # STOPPED (on a hang), CRASHED (a child process) or DIED (a forked copy); "": by itself
    note: str = ""  # why it ran there, or what happened to the process before

    def noted(self, note: str) -> "Isolation":
        return dataclasses.replace(self, note=note)

    def __str__(self) -> str:
        return self.place + "".join(f" ({part})" for part in (self.ended, self.note) if part)

    @classmethod
    def parse(cls, text: str) -> "Isolation":
        place = next((p for p in (CHILD, FORKED, IN_PROCESS) if text.startswith(p)), None)
        if place is None:
            raise ValueError(f"not a place a check runs: {text!r}")
        rest = text[len(place):]
        ended = next((e for e in (STOPPED, CRASHED, DIED) if rest.startswith(f" ({e})")), "")
        rest = rest[len(f" ({ended})"):] if ended else rest
        return cls(place, ended, rest[2:-1] if rest.startswith(" (") and rest.endswith(")") else "")


def _json(value: Any) -> Any:
    """A field's value as the JSON holds it."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Isolation):
        return str(value)
    if hasattr(value, "to_json"):
        return value.to_json()
    if isinstance(value, dict):
        return {str(key): _json(item) for key, item in value.items()}
    return value


def _set(value: Any) -> bool:
    return value is not None and not (isinstance(value, (str, list, dict, tuple)) and not value)


def _to_json(record: Any) -> dict[str, Any]:
    """The record's set fields, each under its JSON key (``metadata["json"]``, else its name)."""
    return {f.metadata.get("json", f.name): _json(getattr(record, f.name))
            for f in dataclasses.fields(record) if _set(getattr(record, f.name))}


def _fields_of(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """``data``'s JSON keys as ``cls``'s field names; an unknown key is an error, as a field name would be."""
    names = {f.metadata.get("json", f.name): f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise TypeError(f"{cls.__name__} has no field for {', '.join(map(repr, unknown))}")
    return {names[key]: value for key, value in data.items()}


@dataclass
class Replays:
    """What a replay token's reruns showed: ``reproduced`` of ``runs`` had a finding, ``wrong_outcome`` of those an
    outcome that went wrong (not only a race predicted); and what they reran."""

    runs: int = 0
    reproduced: int = 0
    wrong_outcome: int = 0
    schedules: int = 0  # schedules per rerun
    strategy: str = ""
    pool_size: int = 0  # threads of the inter-op pool they ran on (0: forkcheck's own scheduler)
    what: Optional[str] = None  # what was rerun, when not "the failing input" (a marked test's: "the test")

    def to_json(self) -> dict[str, Any]:
        return {key: value for key, value in dataclasses.asdict(self).items() if value is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Replays":
        return cls(**data)


@dataclass
class SizeSummary:
    """What one inter-op pool size's share of a split check found (``forkcheck.pools``), or why it was skipped."""

    verdict: str  # a result's verdict, or "skipped"
    reason: Optional[str] = None  # skipped: why
    examples: Optional[int] = None
    schedules: Optional[int] = None
    kinds: Optional[list[str]] = None  # the kinds of its findings, each once
    duration_s: Optional[float] = None
    pool_size: Optional[int] = None
    failed_after: Optional[int] = None
    wrong_outcome_after: Optional[int] = None
    found_by: Optional[FoundBy] = None
    interleavings: Optional[int] = None
    error: Optional[str] = None  # error: its first line

    def __post_init__(self):
        if self.found_by is not None:
            self.found_by = FoundBy(self.found_by)

    def to_json(self) -> dict[str, Any]:
        data = _to_json(self)
        if self.kinds is not None:
            data["kinds"] = list(self.kinds)  # an empty list too: a size that found nothing
        return {f.name: data[f.name] for f in dataclasses.fields(self) if f.name in data}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "SizeSummary":
        return cls(**_fields_of(cls, data))


@dataclass
class Stats:
    """A check's statistics and notes, as the report shows them; each field ``None`` or empty until measured."""

    seed: Optional[int] = None  # the check's seed (inputs and schedules)
    flaky: str = ""  # Hypothesis saw the failure not repeat on a rerun
    replays: Optional[Replays] = None  # a replay's reruns
    replay_note: str = ""  # why a replay may not repeat the failure (another pool size)
    interleavings: Optional[int] = None  # distinct task orders the recorded concurrent runs took (every step counted)
    switches: Optional[int] = None  # task switches in them
    coverage: dict[str, Any] = field(default_factory=dict)  # ``forkcheck.coverage.Coverage.stats``
    strategy_note: str = ""  # the strategy asked for could not be used, and what was used instead
    pool_size: Optional[int] = None  # threads of the inter-op pool the runs used (None: not on the pool)
    found_by: Optional[FoundBy] = None
    failed_after: Optional[int] = None  # concurrent schedules run before the first finding (0: the serial run)
    wrong_outcome_after: Optional[int] = None  # ... before the first wrong outcome (not only a predicted race)
    failed_under: str = ""  # a marked test: the schedule of its first finding
    scripted_calls: list[str] = field(default_factory=list)  # a marked test: notes on the scripted code it called
    isolation: Optional[Isolation] = None
    left_running: str = ""  # processes the target left running
    child_retired: str = field(default="", metadata={"json": "child retired"})  # why its child process was retired
    pool_sizes_note: str = ""  # an in-process check: not split over the pool sizes asked for
    pool_sizes: dict[int, SizeSummary] = field(default_factory=dict)  # a split check: each size's share
    replay_with: str = ""  # ``forkcheck check``: the command a replay token is appended to

    def __post_init__(self):
        if self.found_by is not None:
            self.found_by = FoundBy(self.found_by)

    def to_json(self) -> dict[str, Any]:
        return _to_json(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Stats":
        values = _fields_of(cls, data)
        if values.get("replays") is not None:
            values["replays"] = Replays.from_json(values["replays"])
        if values.get("isolation") is not None:
            values["isolation"] = Isolation.parse(values["isolation"])
        if values.get("pool_sizes"):
            values["pool_sizes"] = {int(size): SizeSummary.from_json(summary)
                                    for size, summary in values["pool_sizes"].items()}
        return cls(**values)
