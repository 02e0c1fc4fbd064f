"""The user's mistakes are named as theirs, and no answer is silently wrong: stale replay tokens, the input shown
against the input replayed, inferred inputs, broken strategies and options, a shadowed ``strategies``, and
``--forkcheck-modules`` found the way pytest finds imports."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, strategies as st

from conftest import QUICK
from sources import ADD_IN_PLACE, SCALE, source

PLAIN = """
import torch
from torch import Tensor
from forkcheck import fork_safe
"""


# -- item 11: a user module named strategies ---------------------------------------------------------------------


@pytest.mark.slow
def test_a_users_own_strategies_module_does_not_break_forkcheck(fc, pytester) -> None:
    """In a subprocess (this suite's own process has the public ``strategies`` imported already), checked in a child
    process, which runs the check as in-process checks do."""
    pytester.makepyfile(strategies="def positive(x):\n    return x.abs()\n")
    pytester.makepyfile(test_ops=PLAIN + SCALE + """
import strategies

@fork_safe
def uses_own_helper(x: Tensor) -> Tensor:
    return x + 1

def test_plain():
    assert strategies.positive(torch.tensor([-1.0])).item() == 1.0
""")
    result = fc.run("--forkcheck-pool-sizes", "1", subprocess=True)
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


def test_a_fork_safe_timeout_too_long_is_its_target_s_error_naming_it(fc, pytester) -> None:
    pytester.makepyfile(test_ops=source("""
        @fork_safe(timeout=1e10)
        def slow(x: Tensor) -> Tensor:
            return x
    """))
    result = fc.run()
    result.assert_outcomes(errors=1)  # the target's setup error: the collection goes on
    result.stdout.fnmatch_lines(["*fork_safe: timeout must be at most *seconds*"])


BROKEN_SETUPS = """
def _boom(value):
    raise ValueError("no such value")

@fork_safe(x=st.integers().map(_boom))
def strategy_raises(x: int) -> int:
    return x

@fork_safe(x=st.nothing())
def strategy_empty(x: int) -> int:
    return x

@fork_safe(k=st.integers().filter(lambda v: False))
def filter_rejects_all(x: Tensor, k: int) -> Tensor:
    return x * k

@fork_safe(x=st.integers(5, 1))
def strategy_invalid(x: int) -> int:
    return x

@fork_safe
class NeedsWeights(nn.Module):
    def __init__(self):
        super().__init__()
        raise FileNotFoundError("weights.pt")

    def forward(self, x: Tensor) -> Tensor:
        return x
"""

SETUP_ERRORS = {  # target -> what its error must say
    "strategy_raises": ["parameter 'x'", "raised ValueError: no such value", "test_setup.py:"],
    "strategy_empty": ["parameter 'x'", "can never give a value"],
    "filter_rejects_all": ["parameter 'k'", "rejects", ".filter"],
    "strategy_invalid": ["parameter 'x'", "InvalidArgument", "max_value=1 < min_value=5"],
    "NeedsWeights": ["NeedsWeights()", "FileNotFoundError: weights.pt", "test_setup.py:", "fork_safe(NeedsWeights("],
}


def test_broken_strategies_and_constructors_are_setup_errors_naming_the_culprit(fc, pytester) -> None:
    pytester.makepyfile(test_setup=source(BROKEN_SETUPS))
    result = fc.run()
    result.assert_outcomes(errors=len(SETUP_ERRORS))
    rows = fc.rows()
    for name, says in SETUP_ERRORS.items():
        row = rows[f"test_setup.py::{name}"]
        assert row["verdict"] == "error" and row["error"].startswith("setup error: "), row["error"]
        assert "internal error" not in row["error"] and "Traceback" not in row["error"], row["error"]
        for text in says:
            assert text in row["error"], (name, text, row["error"])
    result.stdout.fnmatch_lines(["*ERROR at setup of*strategy_raises*", "*setup error: *parameter 'x'*"])


def with_hypothesis_version(token: str, version: str) -> str:
    import dataclasses

    from forkcheck.replay import ReplayToken

    return dataclasses.replace(ReplayToken.decode(token), hypothesis_version=version).encode()


def test_a_token_from_another_hypothesis_version_is_a_usage_error_saying_so(fc, pytester) -> None:
    import hypothesis

    pytester.makepyfile(test_ops=source(ADD_IN_PLACE))
    (token,) = set(fc.tokens(fc.run()))
    result = fc.run("--forkcheck-replay", with_hypothesis_version(token, "6.0.0"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    said = result.stderr.str()
    assert "--forkcheck-replay: " in said and "Traceback" not in said
    assert f"made with Hypothesis 6.0.0, and this run has {hypothesis.__version__}" in said
    assert "without --forkcheck-replay" in said


# -- item 1: a replay token that no longer fits its target -------------------------------------------------------

EAGER_MUTATION = """
@fork_safe{marks}
def bump(x: Tensor{more}) -> Tensor:
    x.add_(1)
    return (lambda v: v)(x)  # a lambda: not scriptable, so no static pre-check; only a run shows the mutation
"""


@pytest.mark.parametrize("change", [{"more": ", k: int"}, {"marks": "(x=fst.tensors(shape=(3,)))"}],
                         ids=["gained-a-parameter", "other-strategy"])
def test_a_token_taken_before_the_target_changed_is_an_error_not_a_pass(fc, pytester, change) -> None:
    before = {"marks": "(x=fst.tensors(shape=(2,)))", "more": ""}
    pytester.makepyfile(test_ops=source(EAGER_MUTATION.format(**before)))
    (token,) = set(fc.tokens(fc.run()))
    pytester.makepyfile(test_ops=source(EAGER_MUTATION.format(**{**before, **change})))
    result = fc.run("--forkcheck-replay", token)
    result.assert_outcomes(errors=1)
    row = fc.rows()["test_ops.py::bump"]["replay_run"]  # the replay, beside the row it replays
    assert row["verdict"] == "error" and "no longer fits" in row["error"], row["error"]
    assert "without --forkcheck-replay" in row["error"]
    result.stdout.fnmatch_lines(["*no longer fits*"])


def test_a_token_of_an_older_form_decodes_and_is_refused_with_the_fix_and_a_stale_one_names_what_changed() -> None:
    import base64
    import json
    import zlib

    from forkcheck import Settings, fork_safe
    from forkcheck.replay import ReplayToken
    from forkcheck.runner import check
    from forkcheck.target import Target

    @fork_safe
    def bump(x: torch.Tensor) -> torch.Tensor:
        x.add_(1)
        return (lambda v: v)(x)

    @fork_safe
    def bump2(x: torch.Tensor, k: int) -> torch.Tensor:
        x.add_(k)
        return (lambda v: v)(x)

    settings = Settings(examples=2, schedules=2, seed=3)
    found = check(Target.from_object(bump, "mod:bump"), settings)
    assert found.verdict == "fail", found.error
    new = ReplayToken.decode(found.findings[0].replay)
    assert new.parameters == ("x",) and new.inputs
    assert check(Target.from_object(bump, "mod:bump"), settings, replay=new.encode()).stats.replays.reproduced == 10
    fields = [new.target, new.hypothesis_version, new.blob, new.tasks, new.schedule_seed, new.strategy,
              new.schedules, new.pool_size, new.pct_steps]  # a token of the form before parameters were carried
    for form in (fields, fields + [[], ["x"], new.inputs]):  # and of the form before one draw per example
        old = "fc1." + base64.urlsafe_b64encode(zlib.compress(json.dumps(form).encode())).decode().rstrip("=")
        assert ReplayToken.decode(old).draws == 1
        refused = check(Target.from_object(bump, "mod:bump"), settings, replay=old)
        assert refused.verdict == "error" and "made by an older forkcheck" in refused.error, refused.error
        assert "without --forkcheck-replay for a fresh token" in refused.error
    stale = check(Target.from_object(bump2, "mod:bump"), settings, replay=new.encode())
    assert stale.verdict == "error" and "it was made when it took (x), and it now takes (x, k)" in stale.error


# -- item 12: --forkcheck-modules finds what the test files import -----------------------------------------------


def pytest_script(pytester: pytest.Pytester, *args: str) -> subprocess.CompletedProcess:
    """pytest as its ``pytest`` script starts it: without the working directory on ``sys.path`` (``-P``; ``python -m
    pytest`` puts it there) and without the ``PYTHONPATH`` pytester would set."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("PYTEST_XDIST")}
    return subprocess.run([sys.executable, "-P", "-m", "pytest", *QUICK, *args], cwd=pytester.path, env=env,
                          capture_output=True, text=True, timeout=600)


def test_forkcheck_modules_finds_a_module_beside_the_tests_and_warns_of_one_with_no_target(fc, pytester) -> None:
    pytester.makepyfile(mylib=source(SCALE), plainlib="def helper():\n    return 1\n",
                        test_uses_lib=source("from mylib import scale\n\ndef test_plain():\n"
                                             "    assert scale(torch.ones(1)).item() == 2\n"))
    ran = pytest_script(pytester, "--forkcheck-modules", "mylib,plainlib", "--forkcheck-pool-sizes", "1")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "2 passed" in ran.stdout
    assert list(fc.rows()) == ["mylib.py::scale"]
    assert "--forkcheck-modules: plainlib holds no fork_safe target" in ran.stdout, ran.stdout
    assert "mylib holds no" not in ran.stdout


# -- item 4: inferred inputs --------------------------------------------------------------------------------------

INFERRED = """
@fork_safe
def add(x: Tensor, y: Tensor) -> Tensor:
    return x + y

@fork_safe
def stacked(xs: List[Tensor], bias: Tensor) -> Tensor:
    return torch.stack(xs + [bias]).sum(0) if len(xs) else bias

@fork_safe(y=fst.tensors(shape=(7,)))
def explicit_wins(x: Tensor, y: Tensor) -> Tensor:
    return x + y

@fork_safe
def needs_a_matrix(x: Tensor, k: int) -> Tensor:
    return x.t() @ x * k if x.dim() == 2 else x[0, 0]
"""


@given(data=st.data())
def test_tensors_take_a_strategy_of_shapes_and_inferred_ones_share_one(data) -> None:
    from hypothesis.extra import numpy as hnp

    import strategies as fst

    shared = st.shared(hnp.array_shapes(max_dims=2), key="test")
    x, y = data.draw(fst.tensors(shape=shared)), data.draw(fst.tensors(shape=shared, dtype=torch.int64))
    assert x.shape == y.shape and y.dtype == torch.int64
    inferred = [data.draw(fst.from_type(torch.Tensor)) for _ in range(3)]
    assert len({t.shape for t in inferred}) == 1 and 1 <= inferred[0].dim() <= 3


def test_inferred_tensors_of_one_example_share_a_shape_and_explicit_strategies_win(fc, pytester) -> None:
    pytester.makepyfile(test_inferred=source("from typing import List\n", INFERRED))
    result = fc.run("--forkcheck-seed", "1", "--forkcheck-examples", "6")
    rows = {nodeid.split("::")[1]: row for nodeid, row in fc.rows().items()}
    assert rows["add"]["verdict"] == "pass" and rows["stacked"]["verdict"] == "pass", rows
    explicit = rows["explicit_wins"]  # y is (7,); an inferred x of another shape cannot be added to it
    assert explicit["verdict"] == "fail" and explicit["findings"][0]["kind"] == "exception"
    assert "shape [7]" in explicit["failing_input"]["y"]
    assert "; input x was inferred from its annotation" in explicit["findings"][0]["message"]
    raised = rows["needs_a_matrix"]["findings"][0]
    assert raised["kind"] == "exception" and "(serial run" in raised["message"]
    assert "inputs x, k were inferred from their annotations" in raised["message"], raised["message"]
    assert "@fork_safe(x=fst.tensors(shape=(" in raised["message"] and "k=st.integers(" in raised["message"]
    result.stdout.fnmatch_lines(["*[[]exception[]]*were inferred*@fork_safe(x=fst.tensors(shape=(*"])


# -- item 3: the input shown is the input replayed ---------------------------------------------------------------

WRONG_ON_A_POOL_OF_TWO = """
@torch.jit.ignore
def _pool_threads() -> int:
    return torch.get_num_interop_threads()

def _add(total: Tensor, x: Tensor) -> Tensor:
    total.add_(x)
    return total

@fork_safe(x=fst.tensors(shape=(3,)))
def sums_twice(x: Tensor) -> Tensor:
    total = torch.zeros(3)  # both tasks write it, unordered: a race, predicted on every input
    first = torch.jit.fork(_add, total, x)
    second = torch.jit.fork(_add, total, x)
    torch.jit.wait(first)
    torch.jit.wait(second)
    if torch.jit.is_scripting() and _pool_threads() > 1 and bool(x.abs().sum() > 0):
        return total + 1  # an outcome that goes wrong only on a pool of two, on an input other than zeros
    return total
"""


@pytest.mark.slow
def test_the_failing_input_shown_is_the_one_the_replay_token_runs(fc, pytester) -> None:
    """Pool size 1 only predicts the race (on zeros); size 2 shows a wrong outcome on another input, and its token
    is the one shown: so must its input be."""
    pytester.makepyfile(test_shown=source(WRONG_ON_A_POOL_OF_TWO))
    result = fc.run("--forkcheck-pool-sizes", "1,2", "--forkcheck-seed", "1", "--forkcheck-examples", "4")
    result.assert_outcomes(failed=1)
    row = fc.rows()["test_shown.py::sums_twice"]
    assert row["stats"]["pool_sizes"]["2"]["kinds"] != ["race"], row["stats"]["pool_sizes"]
    shown, token = row["failing_input"], row["findings"][0]["replay"]
    assert shown and token
    result.stdout.fnmatch_lines(["minimal failing input:", f"  x = {shown['x']}", f"replay: *{token}"])
    fc.run("--forkcheck-replay", token).assert_outcomes(failed=1)
    replayed = fc.rows()["test_shown.py::sums_twice"]["replay_run"]  # beside the row it replays
    assert replayed["stats"]["replays"]["reproduced"] >= 1
    assert replayed["failing_input"] == shown


class _Heads(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.heads = torch.nn.ModuleList([torch.nn.Linear(4, 4) for _ in range(2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        futures = [torch.jit.fork(head, x) for head in self.heads]
        return torch.stack([torch.jit.wait(f) for f in futures]).sum(0)


def test_an_error_inside_scripted_code_is_told_by_its_cause_not_torchscript_s_first_line() -> None:
    import forkcheck
    import strategies as fst
    from forkcheck._warnings import quiet_jit

    with quiet_jit():
        scripted = torch.jit.script(_Heads())
    result = forkcheck.check(forkcheck.fork_safe(scripted, x=fst.tensors(shape=(2, 3))), examples=1, seed=1)
    [raised] = [f for f in result.findings if f.kind == "exception"]
    assert raised.message.startswith("the target raised RuntimeError: mat1 and mat2 shapes cannot be multiplied "
                                     "(2x3 and 4x4) (serial run, forks inline)"), raised.message
    assert "TorchScript interpreter" in raised.detail["traceback"]  # the whole error is kept beside it
