"""Options, ini keys and marker keywords: validation, precedence, and the help texts."""
from __future__ import annotations

import pytest

from forkcheck.options import OPTIONS

PURE = """
from torch import Tensor
from forkcheck import fork_safe

@fork_safe{keywords}
def double(x: Tensor) -> Tensor:
    return x * 2
"""


def examples_checked(fc) -> int:
    return fc.rows()["test_ops.py::double"]["examples"]


@pytest.mark.parametrize("flag, value", [
    ("--forkcheck-examples", "0"),
    ("--forkcheck-schedules", "1.5"),
    ("--forkcheck-tasks", "x"),
    ("--forkcheck-strategy", "foo"),
    ("--forkcheck-timeout", "-1"),
    ("--forkcheck-timeout", "0"),
    ("--forkcheck-seed", "abc"),
])
def test_bad_option_value_is_a_usage_error_naming_the_option(fc, flag: str, value: str) -> None:
    result = fc.run(flag, value, quick=False)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert flag in result.stderr.str() and repr(value) in result.stderr.str()


def test_a_negative_timeout_says_it_must_be_more_than_zero(fc) -> None:
    result = fc.run("--forkcheck-timeout", "-1", quick=False)
    assert "timeout must be a finite number of seconds > 0, got '-1'" in result.stderr.str()


def test_an_empty_replay_token_is_a_usage_error(fc) -> None:  # it ran a normal check
    result = fc.run("--forkcheck-replay=", quick=False)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--forkcheck-replay: the token is empty" in result.stderr.str()


@pytest.mark.parametrize("key, value", [
    ("forkcheck_examples", "0"),
    ("forkcheck_strategy", "sideways"),
    ("forkcheck_no_report", "maybe"),
])
def test_bad_ini_value_is_a_usage_error_naming_the_key(fc, pytester: pytest.Pytester, key: str, value: str) -> None:
    pytester.makeini(f"[pytest]\n{key} = {value}\n")
    result = fc.run(quick=False)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"ini key {key}" in result.stderr.str() and value in result.stderr.str()


@pytest.mark.slow
def test_ini_keys_work(fc, pytester: pytest.Pytester) -> None:
    pytester.makepyprojecttoml("""
        [tool.pytest.ini_options]
        forkcheck_examples = 1
        forkcheck_schedules = "2"
        forkcheck_seed = 77
        forkcheck_report = "out"
    """)
    pytester.makepyfile(test_ops=PURE.format(keywords=""))
    fc.run("-p", "no:cacheprovider", quick=False).assert_outcomes(passed=1)
    report = fc.report("out")
    assert report["seed"] == 77 and report["results"][0]["examples"] == 1


def test_command_line_beats_ini_and_marker_keywords_beat_both(fc, pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nforkcheck_examples = 1\nforkcheck_no_report = true\n")
    pytester.makepyfile(test_ops=PURE.format(keywords=""))
    fc.run("--forkcheck-examples", "3", "--forkcheck-schedules", "1", quick=False).assert_outcomes(passed=1)
    assert not (pytester.path / "reports").exists()  # the ini switch
    pytester.makeini("[pytest]\nforkcheck_examples = 1\n")
    fc.run("--forkcheck-examples", "3", "--forkcheck-schedules", "1", quick=False).assert_outcomes(passed=1)
    assert examples_checked(fc) == 3
    pytester.makepyfile(test_ops=PURE.format(keywords="(examples=2)"))
    fc.run("--forkcheck-examples", "3", "--forkcheck-schedules", "1", quick=False).assert_outcomes(passed=1)
    assert examples_checked(fc) == 2


def test_unknown_fork_safe_keyword_is_its_target_s_error_naming_it(fc, pytester: pytest.Pytester) -> None:
    """A marking error in a collected file is that target's error; it never interrupts the collection."""
    pytester.makepyfile(test_ops=PURE.format(keywords="(bogus=3)"))
    result = fc.run()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*ERROR at setup of fork_safe test_ops:double*", "*unknown keyword bogus=3*"])


def test_a_session_option_as_a_keyword_names_its_flag(fc, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_ops=PURE.format(keywords="(seed=3)"))
    fc.run().assert_outcomes(errors=1)
    assert "seed is set per run, not per target: give --forkcheck-seed on the command line (or the ini key " \
           "forkcheck_seed)" in fc.rows()["test_ops.py::double"]["error"]


def test_a_target_s_strategy_keyword_beats_the_option(fc, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_ops=PURE.format(keywords='(strategy="exhaustive")'))
    fc.run("--forkcheck-strategy", "pct").assert_outcomes(passed=1)
    assert "exhaustive" in fc.rows()["test_ops.py::double"]["stats"]["coverage"]


def test_strategy_pct_is_accepted(fc, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_ops=PURE.format(keywords=""))
    fc.run("--forkcheck-strategy", "pct").assert_outcomes(passed=1)


def test_help_lists_every_option_and_ini_key(fc, pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nforkcheck_examples = 0\n")  # still helps, to fix that
    text = fc.run("--help", quick=False).stdout.str()
    for option in OPTIONS:
        assert option.flag in text and option.ini in text


def test_markers_lists_fork_safe(fc) -> None:
    fc.run("--markers", quick=False).stdout.fnmatch_lines(["@pytest.mark.fork_safe(schedules=10, timeout=60): *"])
