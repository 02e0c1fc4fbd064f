"""The pytest plugin end to end: collection, verdicts, the JSON report, xdist, replay and marked tests."""
from __future__ import annotations

import subprocess
import sys

import pytest

from sources import ADD_IN_PLACE, SCALE, source

MARKED_TESTS = """
def _append(out: list, i: int) -> Tensor:
    out.append(i)
    return torch.zeros(1)

def _run_forked(out: list) -> None:
    futures = [torch.jit.fork(_append, out, i) for i in range(4)]
    for future in futures:
        torch.jit.wait(future)

@pytest.mark.fork_safe(schedules=10)
def test_order_dependent():
    out = []
    _run_forked(out)
    assert out == [0, 1, 2, 3]

def _value(i: int) -> Tensor:
    return torch.full((1,), float(i))

@pytest.mark.fork_safe(schedules=10)
def test_order_independent():  # each task returns its value: no list is shared (appending to one is a race)
    futures = [torch.jit.fork(_value, i) for i in range(4)]
    assert sorted(int(torch.jit.wait(f)) for f in futures) == [0, 1, 2, 3]
"""


def torch_version() -> str:
    import torch

    return torch.__version__.split("+")[0]


def collected(result: pytest.RunResult) -> list[str]:
    return sorted(line for line in result.stdout.lines if "::" in line and " " not in line)


# -- collection -------------------------------------------------------------------------------------------------


def test_collects_every_marked_object_of_the_module_once(fc, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(helpers=source("""
        @fork_safe
        def imported(x: Tensor) -> Tensor:
            return x + 1
    """))
    pytester.makepyfile(test_kinds=source(SCALE, """
        from helpers import imported

        def not_marked(x: Tensor) -> Tensor:
            return x

        @fork_safe(x=fst.tensors(shape=(2, 3)))
        class Heads(nn.Module):
            def __init__(self):
                super().__init__()
                self.linear = nn.Linear(3, 3)

            def forward(self, x):
                return self.linear(x)

        class Scaled(nn.Module):
            def __init__(self, k: float):
                super().__init__()
                self.k = k

            def forward(self, x: Tensor) -> Tensor:
                return x * self.k

        checked = fork_safe(Scaled(2.0), x=fst.tensors(shape=(2, 3)))

        def make_shift(k: int):
            def shift(x: Tensor) -> Tensor:
                return x + k
            return shift

        shifted = fork_safe(make_shift(3))

        @torch.jit.script
        def compiled(x: Tensor) -> Tensor:
            return x * 2

        also_compiled = fork_safe(compiled, x=fst.tensors(shape=(2,)))  # the same object: one item, its first name
    """))
    result = fc.run("--collect-only", "-q", "test_kinds.py")
    assert collected(result) == [f"test_kinds.py::{name}"
                                 for name in ("Heads", "checked", "compiled", "scale", "shifted")]


def test_forkcheck_modules_collects_a_library_module(fc, pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\npythonpath = .\n")
    pytester.makepyfile(mylib=source(SCALE), test_uses_lib=source("from mylib import scale\n\ndef test_plain():\n"
                                                                  "    assert scale(torch.ones(1)).item() == 2\n"))
    result = fc.run("--forkcheck-modules", "mylib", "--forkcheck-seed", "3")
    result.assert_outcomes(passed=2)
    row = fc.rows()["mylib.py::scale"]
    assert (row["target"], row["kind"], row["verdict"]) == ("mylib:scale", "target", "pass")
    assert len(fc.rows()) == 1  # imported into the test file, still checked once; plain tests have no row


def test_a_module_that_cannot_be_imported_is_a_usage_error(fc) -> None:
    result = fc.run("--forkcheck-modules", "mylib_nowhere")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--forkcheck-modules" in result.stderr.str() and "mylib_nowhere" in result.stderr.str()


def test_disabled_with_p_no_forkcheck(fc, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_ops=source(SCALE, "\ndef test_plain():\n    pass\n"))
    result = fc.run("-p", "no:forkcheck", "-p", "no:cacheprovider", quick=False)
    result.assert_outcomes(passed=1)
    assert "forkcheck: seed" not in result.stdout.str()
    assert not (pytester.path / "reports").exists()


def test_last_failed_reruns_the_failing_target(fc, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_ops=source(SCALE, ADD_IN_PLACE))
    quick = ("--forkcheck-examples", "2", "--forkcheck-schedules", "2")
    fc.run(*quick, quick=False).assert_outcomes(passed=1, failed=1)
    first = fc.rows()
    fc.run(*quick, "--lf", quick=False).assert_outcomes(failed=1)
    rows = fc.rows()  # the rerun's row merged into the report; the passing item keeps its row
    assert sorted(rows) == ["test_ops.py::add_in_place", "test_ops.py::scale"]
    assert rows["test_ops.py::scale"] == first["test_ops.py::scale"]


def test_k_selects_targets(fc, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_ops=source(SCALE, ADD_IN_PLACE))
    result = fc.run("-k", "scale")
    result.assert_outcomes(passed=1, deselected=1)
    assert list(fc.rows()) == ["test_ops.py::scale"]


# -- verdicts ---------------------------------------------------------------------------------------------------


def test_pure_target_passes_and_a_mutating_one_fails_with_finding_input_and_replay(fc, pytester) -> None:
    pytester.makepyfile(test_ops=source(SCALE, ADD_IN_PLACE))
    result = fc.run("--forkcheck-seed", "5")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "*[[]input-mutation[]] input 'x' changed*",
        "minimal failing input:",
        "  x = tensor(*",
        "replay: * -m pytest 'test_ops.py::add_in_place' --forkcheck-replay fc1.*",  # as this pytest was started
    ])
    assert fc.rows()["test_ops.py::add_in_place"]["findings"][0]["kind"] == "input-mutation"


def test_parameter_without_annotation_or_strategy_is_an_error_naming_it(fc, pytester) -> None:
    pytester.makepyfile(test_ops=source("""
        @fork_safe
        def untyped(x: Tensor, scale_by) -> Tensor:
            return x * scale_by
    """))
    result = fc.run()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*ERROR at setup of*untyped*", "*parameter 'scale_by'*"])
    row = fc.rows()["test_ops.py::untyped"]
    assert row["verdict"] == "error" and "scale_by" in row["error"]


def test_module_class_needing_constructor_arguments_is_an_error_naming_the_problem(fc, pytester) -> None:
    pytester.makepyfile(test_ops=source("""
        @fork_safe
        class NeedsWidth(nn.Module):
            def __init__(self, width: int):
                super().__init__()

            def forward(self, x: Tensor) -> Tensor:
                return x
    """))
    result = fc.run()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*constructible with no arguments*"])


def test_module_class_target_is_checked(fc, pytester) -> None:
    pytester.makepyfile(test_ops=source("""
        @fork_safe(x=fst.tensors(shape=(2, 3)))
        class Heads(nn.Module):
            def __init__(self):
                super().__init__()
                self.linear = nn.Linear(3, 3)

            def forward(self, x):
                return self.linear(x)
    """))
    fc.run().assert_outcomes(passed=1)


# -- the report -------------------------------------------------------------------------------------------------


def test_json_report_has_the_documented_shape(fc, pytester) -> None:
    pytester.makepyfile(test_ops=source(SCALE, ADD_IN_PLACE, MARKED_TESTS, """
        @pytest.mark.fork_safe
        @pytest.mark.skip(reason="not today")
        def test_skipped():
            pass
    """))
    result = fc.run("--forkcheck-seed", "11", "--junitxml", "junit.xml")
    result.assert_outcomes(passed=2, failed=2, skipped=1)
    report = fc.report()
    assert {"forkcheck", "torch", "seed", "results"} <= set(report)
    assert report["forkcheck"] == "0.1.0" and report["torch"] == torch_version() and report["seed"] == 11
    rows = fc.rows()
    assert set(rows) == {f"test_ops.py::{name}" for name in (
        "scale", "add_in_place", "test_order_dependent", "test_order_independent", "test_skipped")}
    for row in rows.values():
        assert {"nodeid", "target", "kind", "engine", "verdict", "examples", "schedules", "duration_s",
                "findings"} <= set(row)
    findings = rows["test_ops.py::add_in_place"]["findings"]
    assert findings and all({"kind", "message", "location", "tasks", "replay"} <= set(f) for f in findings)
    lines = (pytester.path / "test_ops.py").read_text().splitlines()
    assert findings[0]["location"].endswith(f"test_ops.py:{lines.index('    x.add_(1)') + 1}")
    assert {nodeid.split("::")[1]: (row["kind"], row["verdict"]) for nodeid, row in rows.items()} == {
        "scale": ("target", "pass"), "add_in_place": ("target", "fail"),
        "test_order_dependent": ("test", "fail"), "test_order_independent": ("test", "pass"),
        "test_skipped": ("test", "skipped")}
    assert rows["test_ops.py::scale"]["engine"] in ("script", "eager")
    junit = (pytester.path / "junit.xml").read_text()
    assert junit.count("<testcase") == 5 and "forkcheck_result" not in junit


def test_report_directory_and_no_report(fc, pytester) -> None:
    pytester.makepyfile(test_ops=source(SCALE))
    fc.run("--forkcheck-report", "out/fc").assert_outcomes(passed=1)
    assert list(fc.rows("out/fc")) == ["test_ops.py::scale"]
    assert (pytester.path / "out/fc/index.html").is_file()
    assert not (pytester.path / "reports").exists()
    fc.run("--forkcheck-no-report").assert_outcomes(passed=1)
    assert not (pytester.path / "reports").exists()


WRITE_LOG = """
import os

import forkcheck.report

_write_reports = forkcheck.report.write_reports

def write_reports(*args, **kwargs):
    with open("writes.log", "a") as log:
        log.write(os.environ.get("PYTEST_XDIST_WORKER", "controller") + "\\n")
    return _write_reports(*args, **kwargs)

forkcheck.report.write_reports = write_reports
"""


@pytest.mark.slow
def test_xdist_controller_writes_every_item_once(fc, pytester, monkeypatch) -> None:
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        monkeypatch.delenv(name, raising=False)  # when this suite itself runs under xdist
    pytester.makeconftest(WRITE_LOG)
    names = [f"double_{i}" for i in range(3)]
    pytester.makepyfile(test_many=source(*(SCALE.replace("scale", name) for name in names), MARKED_TESTS))
    result = fc.run("-p", "xdist", "-n", "2", subprocess=True)
    result.assert_outcomes(passed=4, failed=1)
    assert (pytester.path / "writes.log").read_text().split() == ["controller"]
    report = fc.report()
    assert sorted(fc.rows()) == sorted(f"test_many.py::{name}" for name in (
        *names, "test_order_dependent", "test_order_independent"))
    result.stdout.fnmatch_lines([f"forkcheck: seed {report['seed']} *"])


def test_fixed_seed_reproduces_verdicts_and_findings(fc, pytester) -> None:
    pytester.makepyfile(test_ops=source(SCALE, ADD_IN_PLACE, MARKED_TESTS))

    def outcome() -> dict:
        fc.run("--forkcheck-seed", "42")
        return {nodeid: (row["verdict"], [(f["kind"], f["message"], f["location"], f["tasks"], f["replay"])
                                          for f in row["findings"]]) for nodeid, row in fc.rows().items()}

    first = outcome()
    assert [verdict for verdict, _ in first.values()].count("fail") == 2
    assert outcome() == first


def test_the_summary_names_the_seed_where_the_header_was_not_shown(fc, pytester) -> None:
    pytester.makepyfile(test_ops=source(SCALE))
    shown = fc.run("--forkcheck-seed", "42").stdout.str()
    assert "forkcheck: seed 42 (rerun with --forkcheck-seed 42)" in shown  # the header says it once
    assert "1 pass (seed" not in shown
    for hidden in ("-q", "--no-header"):
        result = fc.run("--forkcheck-seed", "42", hidden)
        assert "forkcheck: seed" not in result.stdout.str()
        result.stdout.fnmatch_lines(["1 pass (seed 42: rerun with --forkcheck-seed 42)"])


def test_a_replay_session_offers_no_seed_to_rerun(fc, pytester) -> None:
    pytester.makepyfile(test_ops=source(ADD_IN_PLACE))
    (token,) = set(fc.tokens(fc.run()))
    for hidden in ((), ("-q",)):
        out = fc.run("--forkcheck-replay", token, *hidden).stdout.str()
        assert "rerun with --forkcheck-seed" not in out and "(seed " not in out.split("= forkcheck =")[-1]
    assert "forkcheck: replaying a token (its input and schedules, no search" in fc.run(
        "--forkcheck-replay", token).stdout.str()


# -- replay -----------------------------------------------------------------------------------------------------


def test_replay_token_reruns_the_failing_target(fc, pytester) -> None:
    pytester.makepyfile(test_ops=source(SCALE, ADD_IN_PLACE))
    (token,) = set(fc.tokens(fc.run()))
    result = fc.run("test_ops.py::add_in_place", "--forkcheck-replay", token)
    result.assert_outcomes(failed=1)
    assert fc.rows()["test_ops.py::add_in_place"]["findings"][0]["kind"] == "input-mutation"
    result = fc.run("test_ops.py", "--forkcheck-replay", token)  # the other targets are deselected
    result.assert_outcomes(failed=1, deselected=1)
    assert sorted(fc.rows()) == ["test_ops.py::add_in_place", "test_ops.py::scale"]  # merged, not overwritten


def test_corrupt_replay_token_is_a_usage_error(fc, pytester) -> None:
    pytester.makepyfile(test_ops=source(SCALE))
    for token, message in (("fc1.AAAAnotzlib", "corrupt forkcheck replay token"),
                           ("garbage", "not a forkcheck replay token")):
        result = fc.run("--forkcheck-replay", token)
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        assert "--forkcheck-replay" in result.stderr.str() and message in result.stderr.str()


def test_replay_token_of_another_target_names_both(fc, pytester) -> None:
    pytester.makepyfile(test_ops=source(SCALE, ADD_IN_PLACE))
    (token,) = set(fc.tokens(fc.run()))
    result = fc.run("test_ops.py::scale", "--forkcheck-replay", token)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "test_ops:add_in_place" in result.stderr.str() and "test_ops.py::scale" in result.stderr.str()


# -- @pytest.mark.fork_safe tests --------------------------------------------------------------------------------


def test_marked_test_fails_on_some_order_and_replays_it(fc, pytester) -> None:
    pytester.makepyfile(test_marked=source(MARKED_TESTS))
    result = fc.run("--forkcheck-seed", "2")
    result.assert_outcomes(passed=1, failed=1)
    tokens = set(fc.tokens(result))
    assert len(tokens) == 1
    row = fc.rows()["test_marked.py::test_order_dependent"]
    assert (row["kind"], row["verdict"], row["engine"]) == ("test", "fail", "eager")
    kind = row["findings"][0]["kind"]
    result = fc.run("test_marked.py::test_order_dependent", "--forkcheck-replay", tokens.pop())
    result.assert_outcomes(failed=1)
    replayed = fc.rows()["test_marked.py::test_order_dependent"]
    assert replayed["schedules"] == 1 and replayed["findings"][0]["kind"] == kind


def test_marked_test_with_a_bad_keyword_is_an_error_naming_it(fc, pytester) -> None:
    pytester.makepyfile(test_marked="""
        import pytest

        @pytest.mark.fork_safe(bogus=1)
        def test_unknown():
            pass

        @pytest.mark.fork_safe(tasks=2)
        def test_tasks():
            pass

        @pytest.mark.fork_safe(schedules=0)
        def test_zero():
            pass
    """)
    result = fc.run()
    result.assert_outcomes(errors=3)
    result.stdout.fnmatch_lines(["*ERROR at setup of test_unknown*", "*fork_safe got bogus;*",
                                 "*ERROR at setup of test_tasks*", "*fork_safe got tasks;*",
                                 "*ERROR at setup of test_zero*", "*schedules must be a positive whole number*"])
    assert {row["verdict"] for row in fc.rows().values()} == {"error"}


def test_marked_test_reports_a_task_exception_and_a_hang(fc, pytester) -> None:
    pytester.makepyfile(test_marked="""
        import pytest
        import torch

        @pytest.mark.fork_safe(schedules=2)
        def test_task_raises():
            def explode():
                raise ValueError("bad input")
            torch.jit.wait(torch.jit.fork(explode))

        @pytest.mark.fork_safe(schedules=2, timeout=0.5)
        def test_spins():
            x = torch.zeros(1)
            def spin():
                while True:
                    x.add_(1)
            torch.jit.wait(torch.jit.fork(spin))
    """)
    fc.run().assert_outcomes(failed=2)
    rows = fc.rows()
    raised = rows["test_marked.py::test_task_raises"]["findings"][0]
    assert raised["kind"] == "exception" and "ValueError: bad input" in raised["message"] and raised["tasks"] == [1]
    hung = rows["test_marked.py::test_spins"]["findings"][0]
    assert hung["kind"] == "hang" and "0.5 s" in hung["message"]


# -- import cost ------------------------------------------------------------------------------------------------


def test_loading_the_plugin_imports_no_torch() -> None:
    code = ("import sys, forkcheck.plugin; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'hypothesis', 'numpy'}))")
    run = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True,
                         check=True)
    assert run.stdout.strip() == "[]"
    imported = [line.rsplit("|", 1)[-1].strip() for line in run.stderr.splitlines()]
    assert "forkcheck.plugin" in imported and not any(name.split(".")[0] == "torch" for name in imported)


def test_a_module_that_may_mark_targets_is_told_apart_before_its_import_one_with_marked_tests_only_is_not(tmp_path):
    from forkcheck.plugin import _may_mark_targets

    sources = {"targets.py": "from forkcheck import fork_safe\n", "called.py": "checked = forkcheck.fork_safe(f)\n",
               "marked.py": "import pytest\n\n@pytest.mark.fork_safe\ndef test_x():\n    pass\n",
               "plain.py": "def test_y():\n    assert 'fork_safe_not' != 'a name'\n"}
    for name, text in sources.items():
        (tmp_path / name).write_text(text)
    # the child process that checks targets starts before such a module is imported: its warm-up overlaps the import
    assert {name: _may_mark_targets(tmp_path / name) for name in sources} == {
        "targets.py": True, "called.py": True, "marked.py": False, "plain.py": False}
    assert _may_mark_targets(tmp_path / "missing.py") is False
