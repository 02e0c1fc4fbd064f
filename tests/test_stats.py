"""A result's typed statistics: the JSON written from them keeps its keys, leaves the unset out, and reads back."""
from __future__ import annotations

import json

import pytest

from forkcheck.findings import CheckResult
from forkcheck.stats import (CHILD, CRASHED, DIED, FORKED, IN_PROCESS, STOPPED, FoundBy, Isolation, Replays,
                             SizeSummary, Stats)


def test_unset_fields_are_left_out_and_measured_zeros_kept() -> None:
    assert Stats().to_json() == {}
    stats = Stats(seed=0, failed_after=0, switches=0, pool_size=None, coverage={}, scripted_calls=[])
    assert stats.to_json() == {"seed": 0, "failed_after": 0, "switches": 0}


def test_fields_keep_their_json_keys_and_values() -> None:
    stats = Stats(found_by=FoundBy.SERIAL_RUN, child_retired="it left a process running",
                  isolation=Isolation(CHILD, CRASHED), replays=Replays(runs=10, reproduced=3, strategy="pct"),
                  pool_sizes={2: SizeSummary("pass", examples=1, schedules=2, kinds=[], duration_s=0.5),
                              1: SizeSummary("skipped", reason="not run: a hang")})
    data = stats.to_json()
    assert data == {
        "replays": {"runs": 10, "reproduced": 3, "wrong_outcome": 0, "schedules": 0, "strategy": "pct",
                    "pool_size": 0},
        "found_by": "serial run", "isolation": "child process (crashed)", "child retired": "it left a process running",
        "pool_sizes": {"2": {"verdict": "pass", "examples": 1, "schedules": 2, "kinds": [], "duration_s": 0.5},
                       "1": {"verdict": "skipped", "reason": "not run: a hang"}}}
    assert type(data["found_by"]) is str  # plain JSON values: pytest-xdist ships rows between processes


@pytest.mark.parametrize("isolation", [
    Isolation(CHILD), Isolation(CHILD, STOPPED), Isolation(CHILD, CRASHED, "a fresh one: in the one before, gone"),
    Isolation(CHILD, note="a fresh one: in the one before, the child process was gone (EOF)"),
    Isolation(IN_PROCESS), Isolation(IN_PROCESS, note="in a child process, the target did not import (x (y))"),
    Isolation(FORKED), Isolation(FORKED, STOPPED), Isolation(FORKED, DIED)])
def test_where_a_check_ran_reads_back_from_its_phrase(isolation: Isolation) -> None:
    assert Isolation.parse(str(isolation)) == isolation


def test_a_result_round_trips_through_json_as_a_child_process_sends_it() -> None:
    result = CheckResult(target="m:f", verdict="fail", stats=Stats(
        seed=7, interleavings=3, switches=9, coverage={"interleavings": 3, "runs": 4, "by": "the order of ops"},
        found_by=FoundBy.CONCURRENT_RUNS, failed_after=2, wrong_outcome_after=2, isolation=Isolation(CHILD),
        replays=Replays(runs=10, reproduced=10, what="the test"), scripted_calls=["a note"],
        pool_sizes={1: SizeSummary("fail", kinds=["race"], found_by=FoundBy.SERIAL_RUN)}))
    again = CheckResult.from_json(json.loads(json.dumps(result.to_json())))
    assert again == result and again.stats.pool_sizes[1].found_by is FoundBy.SERIAL_RUN


def test_an_unknown_key_is_an_error_naming_it() -> None:
    with pytest.raises(TypeError, match="'speed'"):
        Stats.from_json({"seed": 1, "speed": 2})


def test_a_replay_s_coverage_says_it_counts_every_rerun_s_schedules() -> None:
    """A replay reruns the token's schedules 10 times, each rerun stopping at its first failing schedule: its coverage
    counts the schedules they ran together, and says so (19 beside "its 5 schedules ... 10 times" read as a slip)."""
    from forkcheck.coverage import BY
    from forkcheck.findings import Finding
    from forkcheck.report.html import render_html
    from forkcheck.report.terminal import failure_text

    result = CheckResult(target="m:f", kind="function", nodeid="t.py::f", engine="script", verdict="fail",
                         findings=[Finding("race", "race on a tensor")],
                         stats=Stats(replays=Replays(runs=10, reproduced=10, schedules=5),
                                     coverage={"runs": 19, "interleavings": 3, "by": BY["script"]}))
    text = failure_text(result)
    assert ("coverage: over the 10 replays, each stopping at its first failure, 19 schedules covered 3 distinct "
            "interleavings") in text, text
    # the replayed example's first run is logged in every rerun: it is not several examples
    assert "ops that conflicted in each replay's first run" in text and "each example's" not in text
    row = json.loads(json.dumps(result.to_json()))
    page = render_html({"results": [row], "complete": True})
    assert "over the 10 replays, each stopping at its first failure, 19 schedules" in page
    result.stats.replays = Replays(runs=10, reproduced=10, schedules=2)  # all 20 ran: none stopped early
    assert "coverage: over the 10 replays 19 schedules covered" not in failure_text(result)
    result.stats.coverage["runs"] = 20
    assert "coverage: over the 10 replays 20 schedules covered 3 distinct" in failure_text(result)
    result.stats.replays = None  # a check's own coverage: as it was
    assert "coverage: 20 schedules covered 3 distinct interleavings" in failure_text(result)
    assert "ops that conflicted in each example's first run" in failure_text(result)
