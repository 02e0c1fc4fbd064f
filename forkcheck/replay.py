"""Replay tokens: one printable string that names a target and the Hypothesis choices of one failing example.

The choices cover the inputs and every schedule drawn for them, so replaying the token reruns exactly that
example (``hypothesis.reproduce_failure`` does the rest). Choices fit only the strategies they were drawn from, under
the Hypothesis version that drew them: a token carries both, and one that no longer fits is refused, never replayed
as something else.
"""
from __future__ import annotations

import base64
import json
import re
import zlib
from dataclasses import dataclass

from .settings import STRATEGIES

_BLOB = re.compile(r"@reproduce_failure\('([^']+)', b'([^']+)'\)")
_WHOLE = "copy the whole token from the failure message or the report (it is one word, with no spaces)"
_PREFIX = "fc1."
#: How a target's schedules are drawn from its choices (``schedules.portfolio.draw_schedules``): 2 since one draw
#: per example; a token made under another form would replay other schedules.
DRAWS = 2


class ReplayError(ValueError):
    """A replay token is corrupt, or belongs to another target, another Hypothesis version, or an older form of its
    target."""


FRESH = "run the check again without --forkcheck-replay for a fresh token"


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
    parameters: tuple[str, ...] = ()  # the target's parameters when the token was made (older tokens: unknown)
    inputs: str = ""  # ``forkcheck.strategies.inputs.Inputs.fingerprint`` of them ("": unknown)
    draws: int = DRAWS  # the form of schedule draws its choices were made for (tokens without one: 1)

    def encode(self) -> str:
        raw = json.dumps([self.target, self.hypothesis_version, self.blob, self.tasks, self.schedule_seed,
                          self.strategy, self.schedules, self.pool_size, self.pct_steps, list(self.decisions),
                          list(self.parameters), self.inputs, self.draws], separators=(",", ":"))
        return _PREFIX + base64.urlsafe_b64encode(zlib.compress(raw.encode())).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> "ReplayToken":
        if not token.startswith(_PREFIX):
            raise ReplayError(f"not a forkcheck replay token: {token[:40]!r} (tokens start with {_PREFIX!r})")
        body = token[len(_PREFIX):]
        try:
            raw = zlib.decompress(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except (ValueError, zlib.error):  # base64's and zlib's own words say nothing a user can act on
            raise ReplayError(f"corrupt forkcheck replay token: it does not decode, so part of it is missing or "
                              f"changed ({len(token)} characters); {_WHOLE}") from None
        try:
            target, version, blob, tasks, schedule_seed, strategy, *rest = json.loads(raw)
            if strategy not in STRATEGIES:
                raise ValueError(f"unknown schedule strategy {strategy!r}")
            schedules, pool_size, pct_steps = (list(map(int, rest[:3])) + [0, 0, 0])[:3]  # older tokens: fewer fields
            decisions = tuple(map(int, rest[3])) if len(rest) > 3 else ()
            parameters, inputs, draws = (rest[4:] + [[], "", 1][len(rest[4:]):])[:3]
            if min(schedules, pool_size, pct_steps, *decisions) < 0:
                raise ValueError("a negative count")
            if not isinstance(parameters, list):
                raise ValueError("parameters are not a list")
            return cls(str(target), str(version), str(blob), int(tasks), int(schedule_seed), strategy, schedules,
                       pool_size, pct_steps, decisions, tuple(map(str, parameters)), str(inputs), int(draws))
        except (ValueError, TypeError):
            raise ReplayError(f"corrupt forkcheck replay token: it decodes, but not to a token's fields; {_WHOLE}") \
                from None

    def check_hypothesis(self) -> None:
        """Raise ``ReplayError`` when the token was made under another Hypothesis version: its choices are that
        version's, and ``hypothesis.reproduce_failure`` refuses them."""
        import hypothesis

        if self.hypothesis_version and self.hypothesis_version != hypothesis.__version__:
            raise ReplayError(f"this replay token was made with Hypothesis {self.hypothesis_version}, and this run "
                              f"has {hypothesis.__version__}: a token replays only under the Hypothesis version that "
                              f"made it. Install hypothesis=={self.hypothesis_version} to replay it, or {FRESH}")

    def check_fits(self, target: str, parameters: list[str], inputs: str) -> None:
        """Raise ``ReplayError`` when the target's parameters or their strategies changed since the token was made:
        its choices would draw other inputs, or none; or its schedules were drawn in another form."""
        if self.blob and self.draws != DRAWS:
            raise ReplayError(f"this replay token was made by an older forkcheck, which drew {target}'s schedules "
                              f"from its choices in another way: replayed, it would run other schedules; {FRESH}")
        if self.inputs and self.inputs != inputs:
            if tuple(parameters) != self.parameters:
                why = (f"it was made when it took ({', '.join(self.parameters)}), and it now takes "
                       f"({', '.join(parameters)})")
            else:
                why = "the strategies of its parameters changed since the token was made"
            raise ReplayError(f"this replay token no longer fits {target}: {why}; {FRESH}")


def blob_from_notes(error: BaseException) -> tuple[str, str] | None:
    """Hypothesis's (version, blob) from the notes it attaches to a failure, when ``print_blob`` was on."""
    for note in getattr(error, "__notes__", ()) or ():
        match = _BLOB.search(note)
        if match:
            return match.group(1), match.group(2)
    return None
