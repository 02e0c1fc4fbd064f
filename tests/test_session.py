"""The report across runs: merging by node id, dropping vanished items, replays beside their rows, a fresh start,
and the report directory checked before any check (a usage error), never overwriting a file forkcheck did not
write."""
from __future__ import annotations

import json
import os
import sys

import pytest

from forkcheck.report.terminal import invocation
from sources import ADD_IN_PLACE, SCALE, source


def test_a_partial_run_merges_its_rows_into_the_report(fc, pytester) -> None:
    pytester.makepyfile(test_ops=source(SCALE, ADD_IN_PLACE))
    fc.run().assert_outcomes(passed=1, failed=1)
    first = fc.rows()
    assert all(row["run_at"] == fc.report()["run_at"] for row in first.values())
    fc.run("-k", "scale").assert_outcomes(passed=1, deselected=1)
    merged = fc.rows()
    assert sorted(merged) == ["test_ops.py::add_in_place", "test_ops.py::scale"]
    assert merged["test_ops.py::add_in_place"] == first["test_ops.py::add_in_place"]  # the earlier run's row
    assert merged["test_ops.py::scale"]["stats"]["seed"] != first["test_ops.py::scale"]["stats"]["seed"] or \
        merged["test_ops.py::scale"]["run_at"] >= first["test_ops.py::scale"]["run_at"]
    fc.run("-k", "scale", "--forkcheck-fresh-report").assert_outcomes(passed=1, deselected=1)
    assert list(fc.rows()) == ["test_ops.py::scale"]


def test_rows_of_items_that_no_longer_exist_are_dropped(fc, pytester) -> None:
    pytester.makepyfile(test_a=source(SCALE, ADD_IN_PLACE), test_b=source(SCALE))
    fc.run().assert_outcomes(passed=2, failed=1)
    assert len(fc.rows()) == 3
    pytester.makepyfile(test_a=source(SCALE))  # add_in_place removed from a file this run collects
    (pytester.path / "test_b.py").unlink()  # a file that is gone
    fc.run("test_a.py").assert_outcomes(passed=1)
    assert list(fc.rows()) == ["test_a.py::scale"]


def test_a_file_not_collected_keeps_its_rows(fc, pytester) -> None:
    pytester.makepyfile(test_a=source(SCALE), test_b=source(ADD_IN_PLACE))
    fc.run().assert_outcomes(passed=1, failed=1)
    fc.run("test_a.py").assert_outcomes(passed=1)
    assert sorted(fc.rows()) == ["test_a.py::scale", "test_b.py::add_in_place"]


def test_a_replay_is_one_block_and_its_row_goes_beside_the_row_it_replays(fc, pytester) -> None:
    pytester.makepyfile(test_ops=source(SCALE, ADD_IN_PLACE))
    (token,) = set(fc.tokens(fc.run()))
    original = fc.rows()["test_ops.py::add_in_place"]
    assert "replay" not in fc.report()
    assert "repeats this run's search" in (pytester.path / "reports" / "index.html").read_text()
    result = fc.run("test_ops.py::add_in_place", "--forkcheck-replay", token)
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "Failing test case" not in out + result.stderr.str()  # Hypothesis's own block, once per rerun
    failures = out[out.index("= FAILURES ="):out.index("= forkcheck =")]
    assert failures.count("reproduced 10 of 10 (10 with a wrong outcome)") == 1 and len(failures.splitlines()) < 15
    # the input's serial run shows the defect: no schedule ran and no pool took part in any rerun
    result.stdout.fnmatch_lines(["REPLAY test_ops.py::add_in_place: the failing input's serial run (forks inline, "
                                 "no pool), reproduced 10 of 10 (10 with a wrong outcome)"])
    rows = fc.rows()
    assert sorted(rows) == ["test_ops.py::add_in_place", "test_ops.py::scale"]
    row = rows["test_ops.py::add_in_place"]
    assert row["findings"] == original["findings"]
    assert row["replay_run"]["stats"]["replays"]["reproduced"] == 10
    page = (pytester.path / "reports" / "index.html").read_text()
    assert "Replayed " in page and "reproduced 10 of 10" in page
    # the run replayed a token: its seed drew no search, so the page does not offer it as the way to repeat one
    assert fc.report()["replay"] is True and "· a replay ·" in page and "repeats this run's search" not in page


def test_a_replay_joins_the_row_whose_finding_gave_its_token_and_takes_another_run_s_row_s_place(tmp_path) -> None:
    from forkcheck.session import merge_rows

    (tmp_path / "t.py").write_text("")
    failed = {"nodeid": "t.py::f", "verdict": "fail", "findings": [{"kind": "race", "replay": "fc1.mine"}]}
    replay = {"nodeid": "t.py::f", "verdict": "fail", "findings": [], "stats": {"replays": {"runs": 10}}}
    rows = merge_rows([failed], {"t.py::f": replay}, tmp_path, {"t.py::f"}, "fc1.mine")
    assert rows["t.py::f"]["findings"] == failed["findings"] and rows["t.py::f"]["replay_run"] == replay
    # the item was checked again since the token was printed: the row's failure is not the one replayed
    rows = merge_rows([failed], {"t.py::f": replay}, tmp_path, {"t.py::f"}, "fc1.earlier")
    assert rows["t.py::f"] == replay
    passed = {"nodeid": "t.py::f", "verdict": "pass", "findings": []}  # fixed since: does the failure come back?
    assert merge_rows([passed], {"t.py::f": replay}, tmp_path, {"t.py::f"}, "fc1.earlier")["t.py::f"] == \
        dict(passed, replay_run=replay)


def test_the_printed_replay_command_names_the_interpreter_that_ran_pytest(fc, pytester) -> None:
    pytester.makepyfile(test_ops=source(ADD_IN_PLACE))
    result = fc.run(subprocess=True)  # pytester runs ``python -m pytest`` in a subprocess
    result.stdout.fnmatch_lines([f"  replay: {invocation(executable=sys.executable, argv0='__main__.py')} "
                                 "'test_ops.py::add_in_place' --forkcheck-replay fc1.*"])
    assert json.loads((pytester.path / "reports" / "forkcheck.json").read_text())["command"].endswith("-m pytest")


def test_the_replay_command_keeps_a_report_directory_given_on_the_command_line(fc, pytester) -> None:
    """So that the replay joins the row it replays, in that report."""
    pytester.makepyfile(test_ops=source(ADD_IN_PLACE))
    result = fc.run("--forkcheck-report", "out dir")
    result.stdout.fnmatch_lines(["  replay: * --forkcheck-report 'out dir' 'test_ops.py::add_in_place' "
                                 "--forkcheck-replay fc1.*"])


def test_invocation_as_the_shell_runs_it(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("")
    main = tmp_path / "pytest" / "__main__.py"
    assert invocation(argv0=str(main), executable=str(python)) == ".venv/bin/python -m pytest"
    script = tmp_path / ".venv" / "bin" / "pytest"
    script.write_text("")
    monkeypatch.setenv("PATH", "/nonexistent")
    assert invocation(argv0=str(script), executable=str(python)) == ".venv/bin/pytest"
    script.chmod(0o755)
    monkeypatch.setenv("PATH", str(script.parent))
    assert invocation(argv0=str(script), executable=str(python)) == "pytest"  # PATH finds this very script


def test_a_venv_python_linked_to_the_interpreter_on_path_is_named_by_its_own_path(tmp_path, monkeypatch) -> None:
    """A venv's python links to the base interpreter: printing the base's bare name would run without the venv."""
    monkeypatch.chdir(tmp_path)
    base = tmp_path / "usr" / "bin" / "python3"
    base.parent.mkdir(parents=True)
    base.write_text("")
    base.chmod(0o755)
    python = tmp_path / ".venv" / "bin" / "python3"
    python.parent.mkdir(parents=True)
    python.symlink_to(base)
    monkeypatch.setenv("PATH", str(base.parent))
    main = tmp_path / "pytest" / "__main__.py"
    assert invocation(argv0=str(main), executable=str(python)) == ".venv/bin/python3 -m pytest"


@pytest.mark.parametrize("where", ["afile", "/dev/null", "afile/sub", "/proc/forkcheck-x"])
def test_a_report_path_that_cannot_be_written_is_a_usage_error_before_any_check(fc, pytester, where) -> None:
    pytester.makepyfile(test_ops=source(SCALE))
    (pytester.path / "afile").write_text("a user's file\n")
    result = fc.run("--forkcheck-report", where)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"--forkcheck-report {where}" in result.stderr.str()
    assert "collected" not in result.stdout.str()  # before any check ran


def test_never_overwrites_a_file_forkcheck_did_not_write(fc, pytester) -> None:
    pytester.makepyfile(test_ops=source(SCALE))
    site = pytester.mkdir("site")
    (site / "index.html").write_text("<h1>my site</h1>")
    result = fc.run("--forkcheck-report", "site")
    assert result.ret == pytest.ExitCode.USAGE_ERROR and "site/index.html exists" in result.stderr.str()
    assert (site / "index.html").read_text() == "<h1>my site</h1>" and not (site / ".gitignore").exists()
    (pytester.path / "reports").mkdir()
    (pytester.path / "reports" / "forkcheck.json").write_text(json.dumps({"results": []}))  # not forkcheck's
    assert fc.run().ret == pytest.ExitCode.USAGE_ERROR
    assert json.loads((pytester.path / "reports" / "forkcheck.json").read_text()) == {"results": []}


def test_the_gitignore_goes_only_into_a_directory_forkcheck_created(fc, pytester) -> None:
    pytester.makepyfile(test_ops=source(SCALE))
    fc.run("--forkcheck-report", "new/reports").assert_outcomes(passed=1)
    assert (pytester.path / "new" / "reports" / ".gitignore").is_file()
    own = pytester.mkdir("docs")
    fc.run("--forkcheck-report", "docs").assert_outcomes(passed=1)
    assert (own / "index.html").is_file() and not (own / ".gitignore").exists()
    assert not os.path.exists(pytester.path / "new" / ".gitignore")
