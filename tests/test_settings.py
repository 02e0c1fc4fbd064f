"""Settings resolved in one place: keywords over options over defaults, the seed defaulted and derived once, the
replay token's override."""
from __future__ import annotations

import pytest
import torch

import forkcheck
from forkcheck.replay import ReplayToken
from forkcheck.settings import Settings, SettingsError, replayed, resolve_settings, target_seed


def test_keywords_beat_options_which_beat_the_defaults() -> None:
    settings = resolve_settings({"schedules": 4}, {"schedules": 7, "examples": 2}, session_seed=1, name="m:f")
    assert (settings.schedules, settings.examples, settings.tasks) == (4, 2, Settings().tasks)


def test_in_a_session_each_check_has_its_own_seed_derived_from_the_session_s() -> None:
    first = resolve_settings(session_seed=12345, name="m:f").seed
    assert first == target_seed(12345, "m:f") == resolve_settings(session_seed=12345, name="m:f").seed
    assert resolve_settings(session_seed=12345, name="m:g").seed != first
    assert resolve_settings(session_seed=54321, name="m:f").seed != first
    # the session's seed wins over a seed option: the option set the session's seed already
    assert resolve_settings({}, {"seed": 3}, session_seed=12345, name="m:f").seed == first


def test_without_a_session_the_seed_is_the_one_given_or_a_drawn_one() -> None:
    assert resolve_settings({"seed": "17"}).seed == 17
    drawn = {resolve_settings().seed for _ in range(5)}
    assert all(isinstance(seed, int) and 0 <= seed < 2**32 for seed in drawn) and len(drawn) > 1


def test_a_bad_value_is_a_settings_error_naming_the_setting() -> None:
    with pytest.raises(SettingsError, match="tasks must be a positive whole number, got 0"):
        resolve_settings({"tasks": 0})
    with pytest.raises(SettingsError, match="unknown forkcheck setting 'task'"):
        resolve_settings(options={"task": 2})
    with pytest.raises(SettingsError, match="strategy must be one of"):
        forkcheck.check(lambda x: x, strategy="sideways")  # the library path resolves the same way


def test_a_replay_runs_with_the_token_s_tasks_strategy_and_schedules_in_one_process() -> None:
    settings = Settings(tasks=3, schedules=10, strategy="portfolio", pool_sizes=(1, 2), seed=5)
    token = ReplayToken("m:f", "6.0", "blob", 2, strategy="pct", schedules=4, pool_size=2)
    again = replayed(settings, token)
    assert (again.tasks, again.strategy, again.schedules, again.pool_sizes, again.seed) == (2, "pct", 4, (), 5)
    marked = ReplayToken("tests/test_x.py::test_y", "", "", 0, 99, "random")  # a marked test's: no tasks, schedules
    again = replayed(settings, marked)
    assert (again.tasks, again.strategy, again.schedules) == (3, "random", 10)



@forkcheck.fork_safe(examples=2, schedules=3)
def _forks(x: torch.Tensor) -> torch.Tensor:
    return torch.jit.wait(torch.jit.fork(torch.add, x, 1))


def test_the_library_check_takes_the_marked_object_s_keywords_and_the_call_s_over_them() -> None:
    marked = forkcheck.check(_forks, seed=1)
    assert (marked.verdict, marked.examples, marked.schedules) == ("pass", 2, 6), marked.error
    called = forkcheck.check(_forks, seed=1, examples=3)
    assert (called.examples, called.schedules) == (3, 9)
