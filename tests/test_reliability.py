"""forkcheck never hangs, crashes or loses a result, whatever the user's code does.

Hangs and crashes run in a pytest subprocess with a timeout, so a regression fails a test instead of hanging or
killing the suite.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from xml.etree import ElementTree

import pytest

from conftest import QUICK
from sources import ADD_IN_PLACE, SCALE, source

SPINS = """
def _spin(x: Tensor) -> Tensor:
    if torch.jit.is_scripting():  # the serial reference (eager) finishes; the scripted tasks never do
        while True:
            x = x + 1
    return x

@fork_safe(timeout=1)
def spins(x: Tensor) -> Tensor:
    return torch.jit.wait(torch.jit.fork(_spin, x))
"""

WAITS_FOREVER = """
@fork_safe(timeout=1)
def waits_forever(x: Tensor) -> Tensor:
    torch.jit.wait(torch.futures.Future())  # nobody completes it; the wait holds the GIL
    return x
"""

ONE_THREAD_POOL = """
torch.set_num_interop_threads(1)

def _leaf(x: Tensor) -> Tensor:
    return x + 1

@torch.jit.script
def _fork_leaf(x: Tensor) -> Tensor:
    return torch.jit.wait(torch.jit.fork(_leaf, x))

@torch.jit.ignore
def _blocks_its_thread(x: Tensor) -> Tensor:
    return _fork_leaf(x)  # a synchronous scripted call: the only pool thread waits for a task queued behind it

@fork_safe(timeout=1)
def nested_deadlock(x: Tensor) -> Tensor:
    return torch.jit.wait(torch.jit.fork(_blocks_its_thread, x))
"""

CRASHES = """
@fork_safe
def aborts(x: Tensor) -> Tensor:
    print("about to abort")
    os.abort()

@fork_safe
def segfaults(x: Tensor) -> Tensor:
    return ctypes.string_at(0)
"""

SHORT_GRACE = "import forkcheck.isolation\nforkcheck.isolation.GRACE_S = 3\n"


@pytest.fixture
def run(fc, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    """pytest in a subprocess, with a timeout, outside any pytest-xdist run of this suite."""
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        monkeypatch.delenv(name, raising=False)

    def run(*args: str, timeout: float = 240, quick: bool = True) -> pytest.RunResult:
        return pytester.runpytest_subprocess(*(QUICK if quick else ()), *args, timeout=timeout)

    return run


def outcome(row: dict) -> tuple:
    return row["verdict"], [finding["kind"] for finding in row["findings"]]


# -- hangs -------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_every_kind_of_hang_is_a_hang_finding_and_the_session_goes_on(fc, pytester, run) -> None:
    pytester.makeconftest(SHORT_GRACE)
    pytester.makepyfile(test_hangs=source(SPINS, WAITS_FOREVER, SCALE), test_pool=source(ONE_THREAD_POOL))
    result = run(timeout=600)  # the hang guard: a session stuck behind a hang never returns
    result.assert_outcomes(failed=3, passed=1)
    rows = fc.rows()
    for name in ("test_hangs.py::spins", "test_hangs.py::waits_forever", "test_pool.py::nested_deadlock"):
        assert outcome(rows[name]) == ("fail", ["hang"]), rows[name]
    assert outcome(rows["test_hangs.py::scale"]) == ("pass", [])
    spun = rows["test_hangs.py::spins"]["findings"][0]  # in a TorchScript loop: no Python line to point at
    assert "it is stuck in compiled code (a TorchScript loop" in spun["message"]
    # the wait holds the GIL: the child cannot report it, the parent stopped it
    assert rows["test_hangs.py::waits_forever"]["stats"]["isolation"] == "child process (stopped)"
    assert "the serial reference run" in rows["test_hangs.py::waits_forever"]["findings"][0]["message"]
    # the pool already ran forks in the child that checked scale: a fresh one imported the 1-thread module
    assert "a fresh one" in rows["test_pool.py::nested_deadlock"]["stats"]["isolation"]


@pytest.mark.slow
def test_in_process_a_hang_is_found_and_later_targets_are_not_checked_behind_it(fc, pytester, run) -> None:
    """The hung tasks keep the pool's threads: every later fork would wait behind them."""
    pytester.makepyfile(test_hangs=source(SPINS, SCALE, "\ndef test_plain():\n    pass\n"))
    result = run("--forkcheck-isolation", "inprocess", timeout=600)
    assert result.ret == 1
    result.assert_outcomes(failed=1, errors=1, passed=1)
    rows = fc.rows()
    assert outcome(rows["test_hangs.py::spins"]) == ("fail", ["hang"])
    assert rows["test_hangs.py::spins"]["stats"]["isolation"] == "in-process"
    assert rows["test_hangs.py::scale"]["verdict"] == "error"
    assert rows["test_hangs.py::scale"]["error"].startswith("not checked: a hung run of test_hangs:spins still runs")


# -- crashes -----------------------------------------------------------------------------------------------------


MANY = "".join(SCALE.replace("scale", f"scale_{i}") for i in range(4))

MARKED_ABORTS = """
def test_plain_aborts():
    os.abort()

@pytest.mark.fork_safe(schedules=2)
def test_marked_aborts():
    os.abort()
"""


@pytest.mark.slow
@pytest.mark.parametrize("xdist", [False, True], ids=["plain", "xdist"])
def test_a_crashing_target_is_an_error_with_its_signal_and_output(fc, pytester, run, xdist) -> None:
    """Under xdist, tests that crash their worker too: every other item still has its row, once."""
    pytester.makepyfile(test_crash=source(SCALE, CRASHES, ADD_IN_PLACE, MARKED_ABORTS if xdist else "", MANY))
    result = run("-p", "xdist", "-n", "2") if xdist else run()
    result.assert_outcomes(passed=5, failed=3 if xdist else 1, errors=2)
    rows = fc.rows()
    assert set(rows) == {f"test_crash.py::{name}" for name in (
        "scale", "aborts", "segfaults", "add_in_place", *(f"scale_{i}" for i in range(4)),
        *(["test_marked_aborts"] if xdist else []))}
    assert [outcome(rows[f"test_crash.py::{name}"]) for name in ("scale", "scale_0", "scale_3")] == [("pass", [])] * 3
    assert outcome(rows["test_crash.py::add_in_place"]) == ("fail", ["input-mutation"])
    aborted, crashed = rows["test_crash.py::aborts"], rows["test_crash.py::segfaults"]
    assert aborted["verdict"] == crashed["verdict"] == "error"
    assert "killed by SIGABRT" in aborted["error"] and "about to abort" in aborted["error"]
    assert "killed by SIGSEGV" in crashed["error"]
    lines = (pytester.path / "test_crash.py").read_text().splitlines()
    assert f'line {lines.index("    os.abort()") + 1} in aborts' in aborted["error"]  # the crashed thread's stack
    result.stdout.fnmatch_lines(["*ERROR at setup of*aborts*", "*killed by SIGABRT*"])
    if xdist:
        crashed = rows["test_crash.py::test_marked_aborts"]
        assert (crashed["kind"], crashed["verdict"]) == ("test", "error")
        # the marked test ran in a forked copy of the worker: its crash is its own error, the worker lives on
        assert "the forked copy of this process running the test was killed by SIGABRT" in crashed["error"]


# -- exceptions --------------------------------------------------------------------------------------------------

RAISES = """
def _check_positive(x: Tensor) -> Tensor:
    if bool((x < 0).any()):
        raise ValueError("negative input")
    return x

@fork_safe(x=fst.tensors(shape=(2,), elements_min=-1, elements_max=-1))
def raises(x: Tensor) -> Tensor:
    return torch.jit.wait(torch.jit.fork(_check_positive, x))
"""

EXITS = """
@fork_safe
def exits(x: Tensor) -> Tensor:
    sys.exit(3)
"""

PLANTED_BUG = """
import forkcheck.runner

_differences = forkcheck.runner.differences

def _broken_once(*args, **kwargs):
    forkcheck.runner.differences = _differences
    raise RuntimeError("planted bug in forkcheck")

forkcheck.runner.differences = _broken_once
"""


@pytest.mark.parametrize("isolation", ["child", "inprocess"])
def test_a_task_exception_is_a_finding_and_a_forkcheck_bug_an_error(fc, pytester, monkeypatch, isolation) -> None:
    import forkcheck.runner

    monkeypatch.setattr(forkcheck.runner, "differences", forkcheck.runner.differences)  # the bug is planted here too
    pytester.makepyfile(test_raise=source(RAISES, EXITS), test_zbug=source(PLANTED_BUG, SCALE))
    result = fc.run("--forkcheck-isolation", isolation)
    result.assert_outcomes(failed=2, errors=1)
    rows = fc.rows()
    raised = rows["test_raise.py::raises"]
    assert outcome(raised) == ("fail", ["exception"])
    finding = raised["findings"][0]
    assert "ValueError: negative input" in finding["message"]
    assert 'raise ValueError("negative input")' in finding["detail"]["traceback"]
    exited = rows["test_raise.py::exits"]
    assert outcome(exited) == ("fail", ["exception"]) and "SystemExit(3)" in exited["findings"][0]["message"]
    bug = rows["test_zbug.py::scale"]
    assert bug["verdict"] == "error" and bug["error"].startswith("internal error in forkcheck")
    assert "planted bug in forkcheck" in bug["error"] and "Traceback" in bug["error"]


def test_a_failure_of_the_child_machinery_is_an_error_not_a_pass(fc, pytester, monkeypatch) -> None:
    import forkcheck.isolation

    def broken(*args, **kwargs):
        raise RuntimeError("broken pipe to the child")

    monkeypatch.setattr(forkcheck.isolation, "_exchange", broken)
    pytester.makepyfile(test_ops=source(SCALE))
    fc.run().assert_outcomes(errors=1)
    row = fc.rows()["test_ops.py::scale"]
    assert row["verdict"] == "error" and "internal error in forkcheck" in row["error"]
    assert "broken pipe to the child" in row["error"]


# -- bad input ---------------------------------------------------------------------------------------------------


def test_a_target_that_is_not_callable_is_an_error_at_import(fc, pytester) -> None:
    pytester.makepyfile(test_ops=source(SCALE, "\nconstant = fork_safe(42)\n"))
    result = fc.run()
    assert result.ret == pytest.ExitCode.INTERRUPTED  # a collection error
    result.stdout.fnmatch_lines(["*fork_safe marks callables (functions, nn.Modules), not int 42*"])


@pytest.mark.parametrize("how", ["flag", "ini"])
def test_a_bad_isolation_is_a_usage_error_naming_the_choices(fc, pytester, how) -> None:
    pytester.makepyfile(test_ops=source(SCALE))
    if how == "ini":
        pytester.makeini("[pytest]\nforkcheck_isolation = thread\n")
        result = fc.run()
    else:
        result = fc.run("--forkcheck-isolation", "thread")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    where = "ini key forkcheck_isolation" if how == "ini" else "--forkcheck-isolation"
    assert f"{where}: must be one of child, inprocess, got 'thread'" in result.stderr.str()


def test_replay_tokens_that_are_corrupt_or_for_another_target_are_errors() -> None:
    import torch

    from forkcheck import Settings, fork_safe
    from forkcheck.replay import ReplayToken
    from forkcheck.runner import check
    from forkcheck.target import Target

    @fork_safe
    def double(x: torch.Tensor) -> torch.Tensor:
        return x * 2

    target = Target.from_object(double, "mod:double")
    settings = Settings(examples=1, schedules=1, seed=1)
    other = ReplayToken("mod:other", "6.0", "AAAA", 3).encode()
    for token, message in ((other, "this replay token is for mod:other, not mod:double"),
                           ("fc1.AAAAnotzlib", "corrupt forkcheck replay token"),
                           (other[:-6], "it does not decode, so part of it is missing or changed"),  # cut short
                           ("garbage", "not a forkcheck replay token")):
        result = check(target, settings, replay=token)
        assert result.verdict == "error" and message in result.error, result.error
        assert "Error -" not in result.error and "header" not in result.error, result.error  # no zlib words


# -- nothing lost ------------------------------------------------------------------------------------------------

ALL = {"test_many.py::add_in_place", *(f"test_many.py::scale_{i}" for i in range(4))}


@pytest.mark.slow
def test_x_k_and_lf_under_xdist_keep_every_selected_item_once(fc, pytester, run) -> None:
    pytester.makepyfile(test_many=source(ADD_IN_PLACE, MANY))
    quick = ("--forkcheck-examples", "1", "--forkcheck-schedules", "1", "-p", "xdist", "-n", "2",
             "--forkcheck-isolation", "inprocess")  # bookkeeping is tested here: spare the child processes
    assert run(*quick, "-x", quick=False).ret == pytest.ExitCode.INTERRUPTED
    assert set(fc.rows()) == ALL
    assert outcome(fc.rows()["test_many.py::add_in_place"]) == ("fail", ["input-mutation"])
    before = fc.rows()
    run(*quick, "-k", "scale_1 or scale_2", quick=False).assert_outcomes(passed=2)
    rows, ran_at = fc.rows(), fc.report()["run_at"]  # merged into the report: the others keep their rows
    assert set(rows) == ALL and rows["test_many.py::add_in_place"] == before["test_many.py::add_in_place"]
    assert {rows[f"test_many.py::scale_{i}"]["run_at"] for i in (1, 2)} == {ran_at}
    run(*quick, "--lf", quick=False).assert_outcomes(failed=1)
    rows = fc.rows()
    assert set(rows) == ALL and rows["test_many.py::add_in_place"]["run_at"] == fc.report()["run_at"]


@pytest.mark.slow
def test_x_lists_the_items_it_did_not_run(fc, pytester) -> None:
    pytester.makepyfile(test_many=source(ADD_IN_PLACE, MANY))
    fc.run("-x").assert_outcomes(failed=1)
    rows = fc.rows()
    assert set(rows) == ALL
    assert {rows[f"test_many.py::scale_{i}"]["verdict"] for i in range(4)} == {"skipped"}
    assert rows["test_many.py::scale_0"]["error"].startswith("not run: the session stopped before this item")


# -- no interference ---------------------------------------------------------------------------------------------

CLEAN = """
import random
import threading
import warnings

_BEFORE = {}

def _state():
    return {"fork": torch._C.fork, "wait": torch._C.wait, "modes": torch._C._len_torch_dispatch_stack(),
            "grad": torch.is_grad_enabled(), "inference": torch.is_inference_mode_enabled(),
            "dtype": torch.get_default_dtype(), "threads": torch.get_num_threads(),
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "rng": torch.random.get_rng_state().tolist(), "random": random.getstate(),
            "filters": list(warnings.filters), "trace": sys.gettrace(), "profile": sys.getprofile(),
            "main thread": threading.current_thread() is threading.main_thread()}

def test_a_before():
    torch.ones(2).add_(1)  # torch is warm
    _BEFORE.update(_state())

def _clean():
    now = _state()
    assert [key for key in _BEFORE if now[key] != _BEFORE[key]] == []
    x = torch.arange(4.0)
    assert torch.jit.wait(torch.jit.fork(torch.neg, x)).tolist() == [-0.0, -1.0, -2.0, -3.0]
"""

AFTER_EACH_FAILURE = """
import sys

@fork_safe
def b_mutates(x: Tensor) -> Tensor:
    x.add_(1)
    return x

def test_b_clean():
    _clean()

@fork_safe
def c_draws(x: Tensor) -> Tensor:
    return x + torch.rand_like(x)

def test_c_clean():
    _clean()

def _fails(x: Tensor) -> Tensor:
    raise ValueError("no")

@fork_safe
def d_raises(x: Tensor) -> Tensor:
    return torch.jit.wait(torch.jit.fork(_fails, x))

def test_d_clean():
    _clean()

@fork_safe
def f_untyped(x: Tensor, k) -> Tensor:
    return x * k

def test_f_clean():
    _clean()

@fork_safe
def g_grad_off(x: Tensor) -> Tensor:
    torch.set_grad_enabled(False)
    return x

def test_g_clean():
    _clean()

@pytest.mark.fork_safe(schedules=2)
def test_h_marked_fails():  # its assertion fails (the tasks share nothing: no race besides)
    futures = [torch.jit.fork(torch.full, (1,), float(i)) for i in range(3)]
    assert [torch.jit.wait(f).item() for f in futures] == [0.0, 1.0, 2.0] and False

def test_h_clean():
    _clean()

@pytest.mark.fork_safe(schedules=1, timeout=0.5)
def test_i_marked_hangs():
    x = torch.zeros(1)
    def spin():
        while True:
            x.add_(1)
    torch.jit.wait(torch.jit.fork(spin))

def test_i_clean():
    _clean()

def _spin(x: Tensor) -> Tensor:
    if torch.jit.is_scripting():
        while True:
            x = x + 1
    return x

@fork_safe(timeout=1)
def z_hangs(x: Tensor) -> Tensor:
    return torch.jit.wait(torch.jit.fork(_spin, x))

def test_z_clean():
    _clean()
"""


@pytest.mark.slow
@pytest.mark.parametrize("isolation", ["child", "inprocess"])
def test_after_every_kind_of_failure_torch_and_python_are_as_before(fc, pytester, run, isolation) -> None:
    pytester.makepyfile(test_after=source(CLEAN, AFTER_EACH_FAILURE))
    run("--forkcheck-isolation", isolation, "--junitxml", "junit.xml")
    verdicts = {nodeid.split("::")[1]: outcome(row) for nodeid, row in fc.rows().items()}
    assert verdicts == {"b_mutates": ("fail", ["input-mutation"]), "c_draws": ("fail", ["global-mutation"]),
                        "d_raises": ("fail", ["exception"]), "z_hangs": ("fail", ["hang"]),
                        "f_untyped": ("error", []), "g_grad_off": ("fail", ["global-mutation"]),
                        "test_h_marked_fails": ("fail", ["nondeterminism"]),
                        "test_i_marked_hangs": ("fail", ["hang"])}
    cases = ElementTree.parse(pytester.path / "junit.xml").getroot().iter("testcase")
    clean = {case.get("name"): [child.tag for child in case] for case in cases
             if case.get("name").endswith(("_clean", "_before"))}
    assert len(clean) == 9 and all(not problems for problems in clean.values()), clean


# -- the exit status ---------------------------------------------------------------------------------------------

STUCK = SPINS.replace("timeout=1", "timeout=1, examples=1, schedules=1")
GUARD_OFF = "import forkcheck._exit\nforkcheck._exit.pytest_returned = lambda *args: None\n"


@pytest.mark.slow
def test_a_task_left_running_by_a_hang_does_not_abort_pytest_at_exit(fc, pytester, run) -> None:
    """In-process, a hung task runs on the pool until exit, where it aborts the process (pytorch issue 60998)."""
    pytester.makepyfile(test_stuck=source(STUCK, "\ndef test_plain():\n    pass\n"), guard_off=GUARD_OFF)
    result = run("--forkcheck-isolation", "inprocess", "--junitxml", "junit.xml", quick=False)
    assert result.ret == 1, result.stderr.str()[-2000:]
    result.stdout.fnmatch_lines(["*1 failed, 1 passed*"])
    assert (pytester.path / "junit.xml").read_text().count("<testcase") == 2
    assert outcome(fc.rows()["test_stuck.py::spins"]) == ("fail", ["hang"])
    without = run("--forkcheck-isolation", "inprocess", "-p", "guard_off", quick=False)
    if without.ret != pytest.ExitCode.TESTS_FAILED:  # torch aborted at exit (it does not always): what the guard stops
        assert without.ret in (-signal.SIGABRT, -signal.SIGSEGV), without.ret


FORKS = """
@torch.jit.script
def _fan(x: Tensor) -> Tensor:
    futures = [torch.jit.fork(torch.neg, x) for _ in range(4)]
    return torch.stack([torch.jit.wait(f) for f in futures]).sum(0)

@fork_safe
def fans_out(x: Tensor) -> Tensor:
    return _fan(x)

def _bump(x: Tensor) -> Tensor:
    return x.add_(1)

@fork_safe
def writes_input(x: Tensor) -> Tensor:
    return torch.jit.wait(torch.jit.fork(_bump, x))

def test_forks_last():
    for _ in range(200):
        _fan(torch.ones(2))
"""


@pytest.mark.slow
def test_ten_runs_with_forks_in_process_all_exit_with_pytest_status(fc, pytester, monkeypatch) -> None:
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        monkeypatch.delenv(name, raising=False)
    pytester.makepyfile(test_forks=source(FORKS))
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--forkcheck-no-report",
               "--forkcheck-isolation", "inprocess", "--forkcheck-examples", "1", "--forkcheck-schedules", "1"]
    statuses = []
    for _ in range(5):  # two at a time: a loaded machine is where the abort at exit shows
        pair = [subprocess.Popen(command, cwd=pytester.path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                for _ in range(2)]
        for process in pair:
            try:
                process.communicate(timeout=180)
            finally:
                process.kill()
            statuses.append(process.returncode)
    assert statuses == [1] * 10


# -- the child process -------------------------------------------------------------------------------------------


def test_one_child_per_pool_size_checks_every_target_and_what_it_prints_is_captured(fc, pytester) -> None:
    import forkcheck.isolation

    pytester.makepyfile(test_ops=source(MANY, ADD_IN_PLACE.replace("x.add_(1)", "print('adding in place')\n"
                                                                                "    x.add_(1)")))
    for size in (1, 2):
        forkcheck.isolation.prewarm(size)
    children = dict(forkcheck.isolation._children)
    served = {size: children[size].served for size in (1, 2)}
    result = fc.run("--forkcheck-pool-sizes", "1,2")
    result.assert_outcomes(passed=4, failed=1)
    assert {size: forkcheck.isolation._children[size] for size in (1, 2)} == {size: children[size] for size in (1, 2)}
    # every target in the 1-thread child; in the 2-thread one, all but the one whose serial run showed its defect
    assert {size: children[size].served - served[size] for size in (1, 2)} == {1: 5, 2: 4}
    assert {row["stats"]["isolation"] for row in fc.rows().values()} == {"child process"}
    result.stdout.fnmatch_lines(["*Captured stderr setup*", "adding in place"])


def test_a_target_that_does_not_import_in_a_child_is_checked_in_process(fc, pytester) -> None:
    pytester.makeconftest("import sys, types\nsys.modules['made_by_conftest'] = types.ModuleType('made_by_conftest')\n")
    pytester.makepyfile(test_ops=source("import made_by_conftest\n", SCALE))
    fc.run().assert_outcomes(passed=1)
    isolation = fc.rows()["test_ops.py::scale"]["stats"]["isolation"]
    assert isolation.startswith("in-process (in a child process, the target did not import")
    assert "made_by_conftest" in isolation


def test_the_child_ends_with_its_parent() -> None:
    code = ("import forkcheck.isolation as i, os; i.prewarm(); i._children[0].wait_ready(); "
            "print(i._children[0].proc.pid); os._exit(0)")
    pid = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                             check=True).stdout)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    assert not _alive(pid)


def test_a_process_that_started_a_child_exits_as_usual() -> None:
    # nothing imported multiprocessing before the first child: its exit handler, which joins live children, must not
    # run before forkcheck's own stops them
    code = ("import sys, forkcheck.isolation as i; i.prewarm(); i._children[0].wait_ready(); "
            "print('torch' in sys.modules)")
    finished = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert (finished.returncode, finished.stdout.strip()) == (0, "False")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True
