"""What the schedules of one check covered: distinct interleavings for every strategy, and for ``exhaustive`` whether
each input's search (``forkcheck.dpor``) was complete. ``stats.coverage`` of a result, and the sentence saying it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

FIRST_RUN = "each example's first run"  # the one logged: a replay logs each rerun's
#: How interleavings are told apart, per engine.
BY = {"eager": "the order of conflicting accesses",
      "script": f"the order in which tasks reached the ops that conflicted in {FIRST_RUN}"}


@dataclass
class Coverage:
    """Counted over a check: the signatures of its runs (``forkcheck.interleavings``) and its exhaustive searches."""

    engine: str
    signatures: set[int] = field(default_factory=set)
    runs: int = 0  # runs with a signature
    searches: list[dict[str, Any]] = field(default_factory=list)  # one per input explored exhaustively
    conflicted: Optional[bool] = None  # whether two tasks' accesses conflicted in any logged run (None: none logged)

    def saw(self, trace: Optional[int]) -> None:
        """A run's signature (``forkcheck.engines.Run.trace``; ``None``: the run was not told apart)."""
        if trace is not None:
            self.signatures.add(trace)
            self.runs += 1

    def logged(self, log: Any) -> None:
        """A run's access log: whether two tasks touched the same data, one writing (an order to vary)."""
        from .interleavings import conflicts

        self.conflicted = bool(self.conflicted) or next(conflicts(log.accesses), None) is not None

    def explored(self, exploration: Any, stopped: bool, raced: int = 0) -> None:
        """An input's search is over (``stopped``: at a failing interleaving; ``raced``: cut short after that many
        runs once a race was predicted, for another input that may show a wrong outcome)."""
        self.searches.append({"interleavings": exploration.interleavings, "runs": raced or exploration.runs,
                              "complete": exploration.complete and not stopped, "stopped": stopped, "raced": raced,
                              "pending": exploration.pending, "diverged": exploration.diverged})

    def stats(self, bound: int, budget: int) -> dict[str, Any]:
        data: dict[str, Any] = {"interleavings": len(self.signatures), "runs": self.runs, "by": BY.get(self.engine, "")}
        if self.conflicted is not None:
            data["conflicts"] = self.conflicted
        if self.searches:
            counts = [s["interleavings"] for s in self.searches]
            data["exhaustive"] = {
                "preemptions": bound, "budget": budget, "inputs": len(self.searches),
                "complete": sum(s["complete"] for s in self.searches), "stopped": any(s["stopped"] for s in self.searches),
                "per_input": [min(counts), max(counts)], "runs": sum(s["runs"] for s in self.searches),
                "pending": sum(s["pending"] for s in self.searches if not s["complete"]),
                "diverged": next((s["diverged"] for s in self.searches if s["diverged"]), ""),
                "raced": sum(bool(s["raced"]) for s in self.searches),
                "raced_after": max(s["raced"] for s in self.searches),
            }
        return data


def _span(low: int, high: int) -> str:
    """``4`` or ``4-12`` distinct interleavings."""
    return f"{low} distinct interleaving" if low == high == 1 else \
        f"{low if low == high else f'{low}-{high}'} distinct interleavings"


def statement(coverage: Mapping[str, Any], replays: int = 0, per_replay: int = 0) -> str:
    """One sentence: what a check's schedules covered (``""`` when nothing was counted); for a replay, what its
    ``replays`` reruns of ``per_replay`` schedules covered together (each stops at its first failing schedule, so
    they may have run fewer than all)."""
    said = _statement(coverage) if coverage else ""
    if not (said and replays):
        return said
    stopped = coverage.get("runs", 0) < replays * per_replay
    said = said.replace(FIRST_RUN, "each replay's first run")
    return f"over the {replays} replays{', each stopping at its first failure,' if stopped else ''} {said}"


def _cut_short(search: Mapping[str, Any]) -> str:
    """Which inputs' searches a predicted race cut short, and why."""
    return (f"once a race was predicted (it fails the check), the search of {search['raced']} of {search['inputs']} "
            f"inputs stopped after {search['raced_after']} runs, for another input that might show a wrong outcome")


def _statement(coverage: Mapping[str, Any]) -> str:
    search = coverage.get("exhaustive")
    if search:
        k, n = search["preemptions"], _span(*search["per_input"])
        inputs = search["inputs"]
        of = f"of {'the' if inputs == 1 else 'each of'} {inputs} input{'s' * (inputs != 1)}"
        if search["stopped"]:
            return (f"exhaustive (≤ {k} preemptions): stopped at a failing interleaving after {search['runs']} runs "
                    f"({n} explored" + (f"; {_cut_short(search)}" if search.get("raced") else "") + ")")
        if search["complete"] == inputs:
            return f"explored all {n} with ≤ {k} preemptions {of} ({search['runs']} runs, DPOR)"
        raced, ran_out = search.get("raced", 0), inputs - search["complete"] - search.get("raced", 0)
        reasons = [_cut_short(search)] if raced else []
        if ran_out > 0:
            reasons.append(f"the budget of {search['budget']} runs per input ran out on {ran_out} of {inputs} inputs, "
                           f"at least {search['pending']} choices left untried")
        why = search["diverged"] or "; ".join(reasons)
        return f"explored {n} with ≤ {k} preemptions {of}, not all: {why}"
    runs, seen = coverage.get("runs", 0), coverage.get("interleavings", 0)
    if coverage.get("conflicts") is False and seen <= 1:
        return (f"{runs} schedule{'s' * (runs != 1)}, with no conflicting accesses to order: in no example's logged "
                f"run did two tasks touch the same data with one of them writing")
    return (f"{runs} schedule{'s' * (runs != 1)} covered {'at least ' if coverage.get('at_least') else ''}{seen} "
            f"distinct interleaving{'s' * (seen != 1)} (by {coverage.get('by') or 'conflicting accesses'})")
