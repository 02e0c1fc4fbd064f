"""Checks split over inter-op pool sizes: each size in its own child process, the report says which showed a bug."""
from __future__ import annotations

import inspect
import os

import pytest

import forkcheck
from forkcheck.target import TargetError

import pool_programs
from sources import ADD_IN_PLACE, source

PLUGIN_PROGRAMS = source(inspect.getsource(pool_programs._bump), "\n\n", inspect.getsource(pool_programs.siblings),
                         ADD_IN_PLACE, """
@fork_safe(x=fst.tensors(shape=(2,)))
def plus_one(x: Tensor) -> Tensor:  # a lambda does not script: forkcheck's own scheduler runs it
    return torch.jit.wait(torch.jit.fork(lambda t: t + 1, x))
""")


def test_a_sibling_race_goes_wrong_only_with_a_second_pool_thread() -> None:
    result = forkcheck.check(pool_programs.siblings, pool_sizes=(1, 2), seed=3, examples=3, schedules=4)
    assert result.verdict == "fail"
    one, two = result.stats.to_json()["pool_sizes"]["1"], result.stats.to_json()["pool_sizes"]["2"]
    # one thread runs the siblings one after the other: the race is predicted, the outcome stays right
    assert one["verdict"] == "fail" and one["kinds"] == ["race"] and "wrong_outcome_after" not in one
    # predicted only: the search went on through every example (2 schedules each), looking for a wrong outcome
    assert one["pool_size"] == 1 and (one["examples"], one["schedules"]) == (3, 6)
    assert two["pool_size"] == 2 and "nondeterminism" in two["kinds"] and two["wrong_outcome_after"] >= 1
    by_kind = {f.kind: f for f in result.findings}
    assert by_kind["race"].detail["pool_sizes"] == [1, 2]
    assert by_kind["nondeterminism"].detail["pool_sizes"] == [2]
    assert by_kind["race"].detail["outputs_affected"] is True  # the sighting kept is the one that went wrong


def test_the_schedules_are_split_over_the_sizes_on_the_same_inputs() -> None:
    result = forkcheck.check(pool_programs.pure, pool_sizes=(1, 2, 4), seed=1, examples=3, schedules=5)
    assert result.verdict == "pass", result.findings
    per_size = result.stats.to_json()["pool_sizes"]
    assert list(per_size) == ["1", "2", "4"]
    assert [per_size[s]["schedules"] for s in per_size] == [3 * 2, 3 * 2, 3 * 1]  # 5 schedules: 2 + 2 + 1
    assert [per_size[s]["examples"] for s in per_size] == [3, 3, 3] and result.examples == 3
    assert result.schedules == 15 and [per_size[s]["pool_size"] for s in per_size] == [1, 2, 4]


def test_children_fork_from_a_warm_template_that_started_no_pool() -> None:
    import forkcheck.isolation

    result = forkcheck.check(pool_programs.pure, pool_sizes=(1, 4), seed=2, examples=2, schedules=2)
    assert result.verdict == "pass", result.findings
    assert [result.stats.to_json()["pool_sizes"][size]["pool_size"] for size in ("1", "4")] == [1, 4]
    for size in (1, 4):
        child = forkcheck.isolation._children[size]
        # the warm-up started no thread in the template (no inter-op pool, no OpenMP team), ran its serial runs under
        # forkcheck's dispatch modes, and they did not import torch._dynamo (about 800 modules: most of a start-up)
        imported, warmed = child.template["threads"]
        assert imported == warmed and child.template["warm_error"] == "" and not child.template["dynamo_loaded"]
        assert _parent_of(child.proc.pid) != os.getpid()  # forked by the fork server, not started by this process


def _parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[1])


def test_pool_sizes_need_a_target_the_child_can_import() -> None:
    def local(x):
        return x

    with pytest.raises(TargetError, match="module-level name"):
        forkcheck.check(local, pool_sizes=(1, 2))
    with pytest.raises(forkcheck.SettingsError, match="distinct thread counts"):
        forkcheck.check(pool_programs.pure, pool_sizes="1,1")


def test_the_plugin_reports_which_sizes_showed_each_bug(fc, pytester) -> None:
    pytester.makepyfile(test_programs=PLUGIN_PROGRAMS)
    result = fc.run("--forkcheck-pool-sizes", "1,2", "--forkcheck-seed", "3", "--forkcheck-schedules", "4")
    result.assert_outcomes(passed=1, failed=2)
    rows = fc.rows()
    sibling = rows["test_programs.py::siblings"]["stats"]["pool_sizes"]
    assert sibling["1"]["kinds"] == ["race"] and "nondeterminism" in sibling["2"]["kinds"]
    result.stdout.fnmatch_lines(["inter-op pool sizes: 1 thread: race: predicted only, no wrong outcome in 4 "
                                 "schedules; 2 threads: race, nondeterminism: a wrong outcome after * schedule*"])
    serial = rows["test_programs.py::add_in_place"]["stats"]["pool_sizes"]
    assert serial["1"]["found_by"] == "serial run"
    # it ran in the 1-thread child, but forks ran inline: no pool took part, and the result names none
    assert "pool_size" not in serial["1"] and "pool_size" not in rows["test_programs.py::add_in_place"]["stats"]
    assert serial["2"] == {"verdict": "skipped",
                           "reason": "not run: the serial run (forks inline, no pool) already shows the defect"}
    eager = rows["test_programs.py::plus_one"]
    assert eager["engine"] == "eager" and "pool_sizes" not in eager["stats"]
    assert eager["schedules"] == 2 * 4  # forkcheck's own scheduler does not use the pool: every schedule, once
    page = (pytester.path / "reports" / "index.html").read_text()
    assert page.count('<table class="pools">') == 1  # the race's: the serial run's defect took no pool


def test_a_replay_runs_under_the_pool_size_it_was_found_with(fc, pytester) -> None:
    pytester.makepyfile(test_programs=PLUGIN_PROGRAMS)
    fc.run("--forkcheck-pool-sizes", "1,2", "--forkcheck-seed", "3", "--forkcheck-schedules", "4",
           "-k", "siblings").assert_outcomes(failed=1)
    race = next(f for f in fc.rows()["test_programs.py::siblings"]["findings"] if f["kind"] == "race")
    assert race["detail"]["pool_sizes"] == [1, 2]
    fc.run("--forkcheck-replay", race["replay"], "--forkcheck-pool-sizes", "1").assert_outcomes(failed=1)
    stats = fc.rows()["test_programs.py::siblings"]["replay_run"]["stats"]  # the replay, beside the row it replays
    assert stats["pool_size"] == 2  # the token's size, not the session's
    assert stats["replays"]["runs"] == 10 and stats["replays"]["reproduced"] == 10  # the race oracle predicts
    assert 0 <= stats["replays"]["wrong_outcome"] <= 10


@pytest.mark.slow
def test_a_module_that_sizes_the_pool_itself_keeps_its_size(fc, pytester) -> None:
    pytester.makepyfile(test_sized="import torch\ntorch.set_num_interop_threads(1)\n"
                                   + PLUGIN_PROGRAMS.split("@fork_safe\ndef add_in_place")[0])
    # in a pytest subprocess: collecting the module sizes the pool of the process that imports it
    fc.run("--forkcheck-pool-sizes", "2,4", "--forkcheck-seed", "3", subprocess=True).assert_outcomes(failed=1)
    per_size = fc.rows()["test_sized.py::siblings"]["stats"]["pool_sizes"]
    assert per_size["1"]["pool_size"] == 1 and per_size["1"]["kinds"] == ["race"]
    assert per_size["2"]["reason"] == per_size["4"]["reason"] == (
        "not run: the target's module fixes the pool at 1 thread")


def test_in_process_the_report_says_only_the_process_s_pool_size_was_used(fc, pytester) -> None:
    pytester.makepyfile(test_programs=PLUGIN_PROGRAMS)
    fc.run("--forkcheck-isolation", "inprocess", "--forkcheck-pool-sizes", "1,4", "-k", "siblings")
    stats = fc.rows()["test_programs.py::siblings"]["stats"]
    assert "pool_sizes" not in stats and stats["pool_size"] >= 1
    threads = "thread" if stats["pool_size"] == 1 else "threads"
    assert stats["pool_sizes_note"] == (f"checked in-process: with this process's pool of {stats['pool_size']} "
                                        f"{threads} only, not sizes 1,4")


@pytest.mark.parametrize("args, ini, message", [
    (["--forkcheck-pool-sizes", "0"], "", "--forkcheck-pool-sizes: pool_sizes must be distinct thread counts"),
    ([], "forkcheck_pool_sizes = 2,2", "ini key forkcheck_pool_sizes: pool_sizes must be distinct thread counts"),
])
def test_bad_pool_sizes_are_usage_errors(fc, pytester, args, ini, message) -> None:
    if ini:
        pytester.makeini(f"[pytest]\n{ini}\n")
    pytester.makepyfile(test_programs=PLUGIN_PROGRAMS)
    result = fc.run(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message}*"])


def test_the_merged_coverage_counts_every_size_s_runs_and_at_least_the_most_one_size_saw() -> None:
    from forkcheck.coverage import statement
    from forkcheck.findings import CheckResult
    from forkcheck.pools import merge
    from forkcheck.stats import Stats

    def sized(runs: int, seen: int) -> CheckResult:
        return CheckResult(target="m:t", engine="script", examples=2, schedules=runs,
                           stats=Stats(coverage={"interleavings": seen, "runs": runs, "by": "the order of ops"}))

    merged = merge({1: sized(4, 1), 2: sized(3, 3), 4: sized(3, 2)}, {})
    assert statement(merged.stats.coverage) == ("10 schedules covered at least 3 distinct interleavings "
                                                   "(by the order of ops)")
    alone = merge({2: sized(3, 3)}, {4: "not run: skipped"})
    assert statement(alone.stats.coverage) == "3 schedules covered 3 distinct interleavings (by the order of ops)"
    quiet, busy = sized(3, 1), sized(3, 1)
    quiet.stats.coverage["conflicts"], busy.stats.coverage["conflicts"] = False, True
    assert merge({2: quiet, 4: quiet}, {}).stats.coverage["conflicts"] is False
    assert merge({2: quiet, 4: busy}, {}).stats.coverage["conflicts"] is True  # one size saw an order to vary


def test_a_defect_the_serial_run_showed_keeps_its_finding_s_account_and_names_no_pool() -> None:
    """Later sizes are skipped after a serial-run defect: the lone size's stats are the result's (the report says
    the serial run showed it), and its findings name no pool size (forks ran inline), in the terminal and the page."""
    from forkcheck.findings import CheckResult, Finding
    from forkcheck.pools import merge
    from forkcheck.report.html import render_html
    from forkcheck.report.terminal import failure_text
    from forkcheck.stats import FoundBy, Stats

    serial = Finding("global-mutation", "global 'm.SEEN' changed at m.py:3: length changed from 0 to 1",
                     location="m.py:3", tasks=[1], detail={"name": "m.SEEN", "run": "serial"})
    raced = Finding("race", "race on a tensor", location="m.py:9", tasks=[1, 2], detail={"name": "t"})
    result = CheckResult(target="m:t", engine="script", verdict="fail", examples=1, schedules=0,
                         findings=[serial, raced], stats=Stats(found_by=FoundBy.SERIAL_RUN, failed_after=0))
    merged = merge({2: result}, {4: "not run: the serial run (forks inline, no pool) already shows the defect"})
    assert (merged.stats.found_by, merged.stats.failed_after) == (FoundBy.SERIAL_RUN, 0)
    by_kind = {f.kind: f for f in merged.findings}
    assert "pool_sizes" not in by_kind["global-mutation"].detail and by_kind["race"].detail["pool_sizes"] == [2]
    assert "at m.py:3 (the serial run, forks inline)" in failure_text(merged)
    # no size's pool took part: the line does not list the serial run under the first size (it ran in that child)
    assert ("inter-op pool sizes: none needed: the serial run (forks inline, no pool) already shows the defect"
            in failure_text(merged))
    page = render_html({"results": [merged.to_json()], "complete": True})
    assert "the serial run (forks inline) showed it on example 1" in page
    assert "Inter-op pool sizes" not in page and "(serial run)" not in page
    assert '<span class="tasks">the serial run</span>' in page  # not "task 1": forks ran inline, in one call
    assert page.count("shown with") == 1  # the race's pool, not the serial run's


def test_a_size_queued_behind_a_hang_is_not_run(monkeypatch, tmp_path) -> None:
    # one core for this process (as under pytest-xdist with a worker per core): the second size queues behind the
    # first, which hangs on the pool; the result says the second was not run, and it was not (it was run in full,
    # waiting out the timeout again, while the report said it was not)
    import forkcheck.pools
    from forkcheck.report.terminal import pool_line

    monkeypatch.chdir(tmp_path)  # the child checks in the parent's working directory
    monkeypatch.setattr(forkcheck.pools, "side_by_side", lambda: 1)
    result = forkcheck.check(pool_programs.stalls_on_the_pool, pool_sizes=(2, 4), seed=1, examples=2, schedules=2)
    assert [f.kind for f in result.findings] == ["hang"]
    per_size = result.stats.to_json()["pool_sizes"]
    assert per_size["2"]["kinds"] == ["hang"] and per_size["4"]["verdict"] == "skipped"
    assert "a run under 2 threads hung" in per_size["4"]["reason"]
    assert pool_line(per_size).startswith("2 threads: hang: a run hung after 1 schedule; ")  # not "a wrong outcome"
    assert set((tmp_path / "stalls").read_text().split()) == {"2"}  # every stalled task ran in the 2-thread pool
