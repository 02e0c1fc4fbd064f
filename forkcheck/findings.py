"""What a check finds: findings, verdicts and per-target results (the JSON report's shape)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .stats import Stats

#: The stable ``kind`` strings of design section 2, in the order a report lists them.
KINDS = (
    "exception",
    "hang",
    "input-mutation",
    "attribute-mutation",
    "global-mutation",
    "race",
    "nondeterminism",
)

VERDICTS = ("pass", "fail", "error", "skipped")
#: A finding's ``detail["run"]`` when the serial reference showed it: one call, forks inline, no pool.
SERIAL = "serial"


@dataclass
class Finding:
    """One defect in the user's code, found by one oracle."""

    kind: str
    message: str
    location: str = ""  # ``file:line`` in the user's code, when known
    tasks: list[int] = field(default_factory=list)  # 0 is the root, 1..n the forked instances
    replay: str = ""
    detail: dict[str, Any] = field(default_factory=dict)  # oracle-specific facts (ops, names, diffs)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown finding kind {self.kind!r}; expected one of {KINDS}")

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if not data["detail"]:
            del data["detail"]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Finding":
        return cls(**data)


def defect_key(finding: Finding) -> tuple:
    """What makes two findings the same defect: the kind and what was hit (any output, for nondeterminism)."""
    return finding.kind, finding.detail.get("name", finding.message if finding.kind != "nondeterminism" else "")


def sort_findings(findings: list[Finding]) -> list[Finding]:
    """Most telling first: a crash or hang, then mutations, races, and nondeterminism last."""
    return sorted(findings, key=lambda f: KINDS.index(f.kind))


@dataclass
class CheckResult:
    """The outcome of checking one target or test: one row of ``forkcheck.json``."""

    target: str  # ``module:qualname``
    kind: str = "target"  # ``target`` or ``test``
    nodeid: str = ""
    engine: str = ""  # ``script`` (real runtime) or ``eager`` (forkcheck's scheduler)
    engine_reason: str = ""  # why ``eager`` was chosen, when it was
    verdict: str = "pass"
    examples: int = 0
    schedules: int = 0
    duration_s: float = 0.0
    findings: list[Finding] = field(default_factory=list)
    failing_input: dict[str, str] = field(default_factory=dict)  # parameter -> repr of the minimal input
    error: str = ""  # for ``error``: what went wrong, and whose fault (forkcheck's or the user's setup)
    stats: Stats = field(default_factory=Stats)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(dataclasses.replace(self, findings=[], stats=Stats()))
        data["findings"] = [f.to_json() for f in self.findings]
        data["stats"] = self.stats.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "CheckResult":
        data = dict(data)
        data["findings"] = [Finding.from_json(f) for f in data.get("findings", [])]
        data["stats"] = Stats.from_json(data.get("stats") or {})
        return cls(**data)


def hang_finding(what: str, timeout: float, *, because: str = "", location: str = "", tasks: Any = (),
                 **detail: Any) -> Finding:
    """``what`` did not finish within ``timeout`` seconds (or, told ``because``, for that reason: a deadlock);
    ``detail`` adds what the one who saw it knows."""
    ending = f": {because}" if because else f" within {timeout:g} s"
    return Finding("hang", f"{what} did not finish{ending}", location=location, tasks=list(tasks),
                   detail={"timeout_s": timeout, **detail})


#: The first line of every error the TorchScript interpreter raises: its cause is the message's last line.
_TORCHSCRIPT_FAILED = "The following operation failed in the TorchScript interpreter."


def describe_error(err: BaseException) -> str:
    """``Type: first line of the message``; for an error in TorchScript code, the error it raised there (the last
    line of its TorchScript traceback, e.g. ``RuntimeError: mat1 and mat2 shapes cannot be multiplied ...``)."""
    lines = str(err).strip().splitlines()
    if len(lines) > 1 and lines[0].strip() == _TORCHSCRIPT_FAILED and ": " in lines[-1]:
        return lines[-1].strip()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


def exception_finding(who: str, err: BaseException, where: str, *, location: str = "", tasks: Any = (),
                      kind: str = "exception", traceback_text: str = "") -> Finding:
    """``who`` raised ``err`` (``where``: the run); located at the innermost line of the user's code it passed."""
    import traceback

    from .locate import error_location

    problem = describe_error(err)
    trace = traceback_text or "".join(traceback.format_exception(err))
    return Finding(kind, f"{who} raised {problem} ({where})", location=error_location(err) or location,
                   tasks=list(tasks), detail={"traceback": trace[-4000:]})
