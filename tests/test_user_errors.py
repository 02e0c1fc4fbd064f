"""The user's mistakes are named as theirs, and no answer is silently wrong: stale replay tokens, the input shown
against the input replayed, inferred inputs, broken strategies and options, a shadowed ``strategies``, and
``--forkcheck-modules`` found the way pytest finds imports."""
from __future__ import annotations

import pytest

from sources import SCALE, source

PLAIN = """
import torch
from torch import Tensor
from forkcheck import fork_safe
"""


# -- item 11: a user module named strategies ---------------------------------------------------------------------


@pytest.mark.parametrize("isolation", ["child", "inprocess"])
def test_a_users_own_strategies_module_does_not_break_forkcheck(fc, pytester, isolation) -> None:
    """In a subprocess: this suite's own process has the public ``strategies`` imported already."""
    pytester.makepyfile(strategies="def positive(x):\n    return x.abs()\n")
    pytester.makepyfile(test_ops=PLAIN + SCALE + """
import strategies

@fork_safe
def uses_own_helper(x: Tensor) -> Tensor:
    return x + 1

def test_plain():
    assert strategies.positive(torch.tensor([-1.0])).item() == 1.0
""")
    result = fc.run("--forkcheck-isolation", isolation, subprocess=True)
    result.assert_outcomes(passed=3)
    assert {row["verdict"] for row in fc.rows().values()} == {"pass"}


def test_the_public_strategies_package_is_forkchecks_own() -> None:
    import strategies

    import forkcheck.strategies

    assert strategies.InferenceError is forkcheck.strategies.InferenceError
    assert strategies.tensors is forkcheck.strategies.tensors
    assert sorted(strategies.__all__) == sorted(forkcheck.strategies.__all__)


# -- item 9: the user's mistakes named as theirs -----------------------------------------------------------------


@pytest.mark.parametrize("how", ["flag", "ini"])
def test_a_timeout_too_long_to_wait_for_is_a_usage_error(fc, pytester, how) -> None:
    pytester.makepyfile(test_ops=source(SCALE))
    if how == "ini":
        pytester.makeini("[pytest]\nforkcheck_timeout = 1e10\n")
        result = fc.run()
    else:
        result = fc.run("--forkcheck-timeout", "1e10")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    where = "ini key forkcheck_timeout" if how == "ini" else "--forkcheck-timeout"
    assert f"{where}: timeout must be at most" in result.stderr.str() and "1e10" in result.stderr.str()


def test_a_fork_safe_timeout_too_long_fails_at_import_naming_it(fc, pytester) -> None:
    pytester.makepyfile(test_ops=source("""
        @fork_safe(timeout=1e10)
        def slow(x: Tensor) -> Tensor:
            return x
    """))
    result = fc.run()
    assert result.ret == pytest.ExitCode.INTERRUPTED  # a collection error
    result.stdout.fnmatch_lines(["*fork_safe: timeout must be at most *seconds*"])
