"""Replay tokens: one printable string that names a target and the Hypothesis choices of one failing example.

The choices cover the inputs and every schedule drawn for them, so replaying the token reruns exactly that
example (``hypothesis.reproduce_failure`` does the rest).
"""
from __future__ import annotations

import base64
import json
import re
import zlib
from dataclasses import dataclass

from .settings import STRATEGIES

_BLOB = re.compile(r"@reproduce_failure\('([^']+)', b'([^']+)'\)")
_PREFIX = "fc1."


class ReplayError(ValueError):
    """A replay token is corrupt, or belongs to another target or another Hypothesis version."""


@dataclass(frozen=True)
class ReplayToken:
    target: str
    hypothesis_version: str
    blob: str  # Hypothesis's reproduce_failure blob ("" for a marked test)
    tasks: int
    schedule_seed: int = -1  # a marked test's failing schedule
    strategy: str = "random"  # the schedule strategy the failure was found with
    schedules: int = 0  # schedules drawn per example (0: unknown, the session's setting)
    pool_size: int = 0  # threads of the inter-op pool the failure was found with (0: not on the pool)
    pct_steps: int = 0  # the steps PCT's change points were spread over (0: not counted)
    decisions: tuple[int, ...] = ()  # ``exhaustive``: the failing interleaving (``ControlledScheduler.decisions``)

    def encode(self) -> str:
        raw = json.dumps([self.target, self.hypothesis_version, self.blob, self.tasks, self.schedule_seed,
                          self.strategy, self.schedules, self.pool_size, self.pct_steps, list(self.decisions)],
                         separators=(",", ":"))
        return _PREFIX + base64.urlsafe_b64encode(zlib.compress(raw.encode())).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> "ReplayToken":
        if not token.startswith(_PREFIX):
            raise ReplayError(f"not a forkcheck replay token: {token[:40]!r} (tokens start with {_PREFIX!r})")
        body = token[len(_PREFIX):]
        try:
            raw = zlib.decompress(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
            target, version, blob, tasks, schedule_seed, strategy, *rest = json.loads(raw)
            if strategy not in STRATEGIES:
                raise ValueError(f"unknown schedule strategy {strategy!r}")
            schedules, pool_size, pct_steps = (list(map(int, rest[:3])) + [0, 0, 0])[:3]  # older tokens: fewer fields
            decisions = tuple(map(int, rest[3])) if len(rest) > 3 else ()
            if min(schedules, pool_size, pct_steps, *decisions) < 0:
                raise ValueError("a negative count")
            return cls(str(target), str(version), str(blob), int(tasks), int(schedule_seed), strategy, schedules,
                       pool_size, pct_steps, decisions)
        except (ValueError, TypeError, zlib.error) as err:
            raise ReplayError(f"corrupt forkcheck replay token ({err}); copy the whole token from the report") from None


def blob_from_notes(error: BaseException) -> tuple[str, str] | None:
    """Hypothesis's (version, blob) from the notes it attaches to a failure, when ``print_blob`` was on."""
    for note in getattr(error, "__notes__", ()) or ():
        match = _BLOB.search(note)
        if match:
            return match.group(1), match.group(2)
    return None
