"""Bounded-exhaustive exploration (``exhaustive``): DPOR over the access log's conflicts under forkcheck's own
scheduler finds every outcome within the preemption bound, runs fewer interleavings than trying every choice, says
what a pass covered, replays the failing interleaving; and every strategy reports its interleaving coverage."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor

import forkcheck
from forkcheck.coverage import statement
from forkcheck.dpor import Exploration
from forkcheck.engines import CONTROLLED, Observe
from forkcheck.engines.eager import EagerEngine
from forkcheck.settings import SettingsError, validate

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

# -- programs: a set in every call keeps them from scripting (forkcheck's own scheduler runs them) --------------------


def accumulate(acc: Tensor, part: Tensor, tags: set) -> Tensor:
    total = acc + part.sum()
    acc.copy_(total)
    return total


def lost_update(x: Tensor, tags: set) -> Tensor:
    acc = torch.zeros(1)
    first = torch.jit.fork(accumulate, acc, x[0], tags)
    second = torch.jit.fork(accumulate, acc, x[1], tags)
    torch.jit.wait(first)
    torch.jit.wait(second)
    return acc


def update_in_order(x: Tensor, tags: set) -> Tensor:
    acc = torch.zeros(1)
    torch.jit.wait(torch.jit.fork(accumulate, acc, x[0], tags))
    torch.jit.wait(torch.jit.fork(accumulate, acc, x[1], tags))
    return acc


def tag(parts: list, x: Tensor, k: float, tags: set) -> Tensor:
    y = torch.tanh(x * k)
    parts.append(y)
    return y


def three_appends(x: Tensor, tags: set) -> Tensor:
    parts: list = []
    futures = [torch.jit.fork(tag, parts, x, k, tags) for k in (1.0, 2.0, 3.0)]
    for f in futures:
        torch.jit.wait(f)
    return torch.cat(parts)


def independent(x: Tensor, tags: set) -> Tensor:
    futures = [torch.jit.fork(torch.mul, x, k) for k in (1.0, 2.0, 3.0)]
    return torch.stack([torch.jit.wait(f) for f in futures]).sum(0)


ROWS = torch.arange(1.0, 7.0).reshape(2, 3)


def explore(program, bound: int = 2, budget: int = 2000, reduce: bool = True, tasks: int = 1):
    """The search over ``program`` on ``ROWS``: (exploration, the distinct outputs it saw)."""
    engine = EagerEngine(program, tasks, "test", param_names=["x", "tags"])
    exploration = Exploration(bound, budget, reduce)
    outputs = set()
    for probe in exploration:
        out = engine.run([ROWS.clone(), set()], probe, Observe.NOTHING).result()
        outputs.add(tuple(torch.cat([o.flatten() for o in out]).tolist()))
    return exploration, outputs


# -- the search ---------------------------------------------------------------------------------------------------


def test_a_lost_update_shows_both_outcomes_and_the_search_completes() -> None:
    exploration, outputs = explore(lost_update)
    assert exploration.complete and not exploration.diverged
    assert outputs == {(21.0,), (6.0,), (15.0,)}  # both updates, or one lost either way
    assert exploration.interleavings >= 3


def test_the_reduction_runs_fewer_interleavings_than_every_choice_and_sees_the_same_outcomes() -> None:
    reduced, seen = explore(lost_update)
    full, every = explore(lost_update, reduce=False)
    assert full.complete and reduced.runs < full.runs
    assert seen == every
    assert reduced.interleavings == full.interleavings


def test_the_preemption_bound_decides_what_is_explored() -> None:
    none, outputs = explore(lost_update, bound=0)
    assert none.complete and outputs == {(21.0,)}  # without a preemption each task runs to its end
    one, outputs = explore(lost_update, bound=1)
    assert len(outputs) == 3 and one.runs > none.runs


@pytest.mark.parametrize("program", [independent, update_in_order])
def test_programs_without_unordered_conflicts_need_one_run(program) -> None:
    exploration, outputs = explore(program, tasks=2)
    assert exploration.complete and exploration.runs == 1 and exploration.interleavings == 1
    assert len(outputs) == 1


def test_appends_of_three_tasks_show_every_order() -> None:
    exploration, outputs = explore(three_appends)
    assert exploration.complete
    assert len(outputs) == 6  # 3! orders of the parts


def test_a_budget_too_small_says_how_far_the_search_got() -> None:
    exploration, _ = explore(three_appends, budget=3)
    assert exploration.runs == 3 and not exploration.complete and exploration.pending > 0


# -- in a check ---------------------------------------------------------------------------------------------------


def test_a_check_finds_the_lost_update_and_replays_its_interleaving() -> None:
    lost = forkcheck.fork_safe(lost_update, x=forkcheck_rows(), tags=empty_sets())
    result = forkcheck.check(lost, seed=2, examples=5, strategy="exhaustive", tasks=1)
    assert result.verdict == "fail" and result.engine == "eager"
    assert {f.kind for f in result.findings} >= {"race", "nondeterminism"}
    assert result.stats.failed_after == 1
    assert "stopped at a failing interleaving" in statement(result.stats.coverage)
    token = result.findings[0].replay
    from forkcheck.replay import ReplayToken
    from forkcheck.runner import check
    from forkcheck.settings import Settings
    from forkcheck.target import Target

    assert ReplayToken.decode(token).strategy == "exhaustive"
    replayed = check(Target.from_object(lost), Settings(tasks=1), replay=token)
    assert replayed.stats.replays.reproduced == replayed.stats.replays.runs
    assert replayed.stats.replays.wrong_outcome == replayed.stats.replays.runs


def same_write(buf: Tensor, x: Tensor, tags: set) -> Tensor:
    for _ in range(6):  # many conflicting writes: many interleavings, all with the same outcome
        buf.copy_(x.abs())
    return buf


def benign_race(x: Tensor, tags: set) -> Tensor:
    buf = torch.zeros_like(x)
    first = torch.jit.fork(same_write, buf, x, tags)
    second = torch.jit.fork(same_write, buf, x, tags)
    torch.jit.wait(first)
    torch.jit.wait(second)
    return buf


def test_once_a_race_is_predicted_each_input_s_search_stops_early_for_another_input() -> None:
    """Both tasks write the same values: a race whose outcome is never wrong, however the writes interleave."""
    from forkcheck.runner import SEARCH_AFTER_A_RACE

    benign = forkcheck.fork_safe(benign_race, x=forkcheck_rows(), tags=empty_sets())
    result = forkcheck.check(benign, seed=2, examples=3, strategy="exhaustive", tasks=1, budget=300)
    assert result.verdict == "fail" and [f.kind for f in result.findings] == ["race"]
    search = result.stats.coverage["exhaustive"]
    assert search["raced"] == search["inputs"] == 3 and search["raced_after"] == SEARCH_AFTER_A_RACE
    assert result.schedules == 3 * SEARCH_AFTER_A_RACE  # not 3 x 300
    assert "once a race was predicted (it fails the check), the search of 3 of 3 inputs stopped after 20 runs" in \
        statement(result.stats.coverage)


def test_shrinking_searches_each_smaller_input_only_a_little_past_the_failure_s_own_interleaving(
        monkeypatch) -> None:
    """Searching every smaller input to the budget took the whole shrinking time on a few inputs (and left the
    failure's input as large as found)."""
    import forkcheck.dpor
    from forkcheck.runner import SHRINK_RUNS

    searches = []

    class Recorded(forkcheck.dpor.Exploration):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            searches.append(self)

    monkeypatch.setattr(forkcheck.dpor, "Exploration", Recorded)
    lost = forkcheck.fork_safe(lost_update, x=forkcheck_rows(), tags=empty_sets())
    result = forkcheck.check(lost, seed=2, examples=5, strategy="exhaustive", tasks=1, budget=300)
    assert result.verdict == "fail"
    budgets = [search.budget for search in searches]
    assert budgets[0] == 300 and len(set(budgets)) == 2, budgets  # the search's, then the shrinking's
    shrinking = budgets[-1]
    assert shrinking <= 2 * result.stats.wrong_outcome_after + SHRINK_RUNS < 300  # at most: it counts all inputs
    assert all(search.runs <= shrinking for search in searches if search.budget == shrinking)


def test_a_pass_says_it_explored_every_interleaving_within_the_bound() -> None:
    fixed = forkcheck.fork_safe(update_in_order, x=forkcheck_rows(), tags=empty_sets())
    result = forkcheck.check(fixed, seed=2, examples=3, strategy="exhaustive", preemptions=1)
    assert result.verdict == "pass"
    search = result.stats.coverage["exhaustive"]
    assert search["complete"] == search["inputs"] == 3 and search["preemptions"] == 1
    assert statement(result.stats.coverage).startswith("explored all 1 distinct interleaving with ≤ 1 preemptions")


def test_a_target_that_scripts_is_explored_under_forkcheck_s_scheduler() -> None:
    import seeded_bugs

    result = forkcheck.check(seeded_bugs.local_update_in_order, seed=1, examples=2, strategy="exhaustive")
    assert result.verdict == "pass" and result.engine == "eager" and result.engine_reason == CONTROLLED
    assert statement(result.stats.coverage).startswith("explored all ")


def test_a_compiled_target_stays_on_torchscript_s_runtime_where_schedules_are_the_portfolio_s() -> None:
    import seeded_bugs
    from forkcheck.engines import choose_engine
    from forkcheck.schedules.portfolio import PORTFOLIO, members

    with forkcheck._warnings.quiet_jit():
        compiled = torch.jit.script(seeded_bugs.local_update_in_order)
        assert choose_engine(compiled, ["x"], 1, controlled=True).name == "script"
        assert choose_engine(seeded_bugs.local_update_in_order, ["x"], 1, controlled=True).reason == CONTROLLED
    assert members("exhaustive") == PORTFOLIO


def test_every_strategy_counts_the_interleavings_its_schedules_covered() -> None:
    lost = forkcheck.fork_safe(lost_update, x=forkcheck_rows(), tags=empty_sets())
    for strategy in ("random", "pct", "portfolio"):
        coverage = forkcheck.check(lost, seed=4, examples=2, schedules=4, strategy=strategy).stats.coverage
        assert 1 <= coverage["interleavings"] <= coverage["runs"]
        assert "distinct interleaving" in statement(coverage)


@pytest.mark.parametrize("bad", [{"preemptions": -1}, {"preemptions": "two"}, {"budget": 0}])
def test_bad_bounds_are_errors_naming_the_setting(bad) -> None:
    (name,) = bad
    with pytest.raises(SettingsError, match=name):
        validate(bad)


def test_zero_preemptions_is_a_bound() -> None:
    assert validate({"preemptions": "0", "strategy": "exhaustive"}) == {"preemptions": 0, "strategy": "exhaustive"}


# -- the seeded bugs ----------------------------------------------------------------------------------------------


def forkcheck_rows():
    import strategies as fst

    return fst.tensors(shape=(2, 3), elements_min=-4, elements_max=4)


def empty_sets():
    from hypothesis import strategies as st

    return st.just(set())


def _seeded(kind: str) -> list:
    """The seeded bugs (``BUGS``) or their fixed versions (``PURE``), as parameters: xdist spreads them."""
    import seeded_bugs

    return ([pytest.param(bug, id=bug.name) for bug in seeded_bugs.BUGS] if kind == "bugs" else
            [pytest.param(fixed, id=name) for name, fixed in seeded_bugs.PURE.items()])


@pytest.mark.slow
@pytest.mark.parametrize("bug", _seeded("bugs"))
def test_exhaustive_finds_every_seeded_bug(bug) -> None:
    # a race: at once; the first input (zeros) shows no wrong outcome, so its search stops soon, the next one does
    result = forkcheck.check(bug.target, seed=1, examples=3, strategy="exhaustive")
    assert result.verdict == "fail", bug.name
    kinds = {f.kind for f in result.findings}
    assert kinds & ({"race", *bug.kinds}), (bug.name, kinds)


@pytest.mark.slow
@pytest.mark.parametrize("fixed", _seeded("pure"))
def test_exhaustive_passes_the_seeded_bugs_fixed_versions_with_full_coverage(fixed) -> None:
    result = forkcheck.check(fixed, seed=1, examples=3, strategy="exhaustive")
    assert result.verdict == "pass"
    assert statement(result.stats.coverage).startswith("explored all ")


def test_the_coverage_statement_is_in_the_terminal_summary_and_the_html_report() -> None:
    from forkcheck.report.html import render_html
    from forkcheck.report.json import build_report
    from forkcheck.report.terminal import failure_text, summary_lines

    fixed = forkcheck.fork_safe(update_in_order, x=forkcheck_rows(), tags=empty_sets())
    row = dict(forkcheck.check(fixed, seed=2, examples=2, strategy="exhaustive").to_json(), nodeid="t.py::fixed")
    said = statement(row["stats"]["coverage"])
    assert said.startswith("explored all 1 distinct interleaving with ≤ 2 preemptions of each of 2 inputs")
    assert f"PASS t.py::fixed: {said}" in summary_lines([row], None)
    assert f"coverage: {said}" in failure_text(row)
    page = render_html(build_report({"t.py::fixed": row}, seed=2))
    assert f'<p class="coverage">{said}</p>' in page.replace("&le;", "≤").replace("&#8804;", "≤")
