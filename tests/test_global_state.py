"""Global state the user's code reaches is watched, through pytest: class variables, namespaces, other user modules'
globals, names added through ``globals()``, torch's per-thread and backend settings. Each change is a
``global-mutation`` naming what changed, and is put back; pure code that reads globals, calls helpers or takes a
module-level lock passes."""
from __future__ import annotations

import threading

import pytest
import torch

from forkcheck.oracles.mutation import GlobalWatch, referenced_globals
from sources import source

HELPER = """
import logging
import threading

COUNT = 0
TABLE = {"scale": 2}
LOCK = threading.Lock()
LOG = logging.getLogger("helper")

def bump():
    global COUNT
    COUNT += 1

def scale_of():
    with LOCK:
        LOG.debug("read the scale")
        return TABLE["scale"]
"""

CHANGES = """
from types import SimpleNamespace
import helper

class Counter:
    n = 0

STATE = SimpleNamespace(n=0)

@fork_safe
def counts_on_its_class(x: Tensor) -> Tensor:
    Counter.n += 1
    return x * 2

@fork_safe
def counts_on_a_namespace(x: Tensor) -> Tensor:
    STATE.n += 1
    return x * 2

@fork_safe
def calls_a_counting_helper(x: Tensor) -> Tensor:
    helper.bump()
    return x * 2

@fork_safe
def adds_a_global(x: Tensor) -> Tensor:
    globals()["ADDED"] = 1
    return x * 2

@fork_safe
def sets_the_thread_count(x: Tensor) -> Tensor:
    torch.set_num_threads(3)
    return x * 2

@fork_safe
def reseeds(x: Tensor) -> Tensor:
    torch.manual_seed(3)
    return x * 2

@fork_safe
def makes_cudnn_deterministic(x: Tensor) -> Tensor:
    torch.backends.cudnn.deterministic = True
    return x * 2

@fork_safe
def turns_mkldnn_off(x: Tensor) -> Tensor:
    torch.backends.mkldnn.enabled = False
    return x * 2

def _counted(x: Tensor) -> Tensor:
    _counted.calls = getattr(_counted, "calls", 0) + 1
    return x * 2

@fork_safe
def counts_on_a_function(x: Tensor) -> Tensor:
    return _counted(x)

def _remembers(x: Tensor, seen=[]) -> Tensor:  # one list every call shares
    seen.append(1)
    return x * len(seen)

@fork_safe
def remembers_in_a_default(x: Tensor) -> Tensor:
    return _remembers(x)

@fork_safe
def lowers_the_matmul_precision(x: Tensor) -> Tensor:
    torch.set_float32_matmul_precision("medium")
    return x * 2
"""

PURE = """
import logging
import threading
import helper

LOCK = threading.Lock()
LOG = logging.getLogger(__name__)
OFFSETS = {"bias": 1.0}

class Config:
    factor = 3

def _shifted(x: Tensor) -> Tensor:  # a function with an attribute nothing changes
    return x + OFFSETS["bias"]

_shifted.unit = "bias"

def _scaled(x: Tensor, factors=[1.0]) -> Tensor:  # a default value only read
    return x * factors[0]

def _unused(x: Tensor) -> Tensor:
    return x + OFFSETS["bias"]

@fork_safe
def reads_globals_and_calls_helpers(x: Tensor) -> Tensor:
    with LOCK:
        LOG.debug("scaling")
        x = x * 1  # a tensor op with the lock held: forkcheck's scheduler does not switch tasks there
    return _scaled(_shifted(x)) * Config.factor * helper.scale_of()

def test_no_state_leaked_to_later_threads():
    seen = []
    reader = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    reader.start()
    reader.join()
    assert seen == [torch.get_num_threads()]
    assert torch.initial_seed() != 3 and not torch.backends.cudnn.deterministic
    assert torch.backends.mkldnn.enabled and torch.get_float32_matmul_precision() == "highest"
"""

EXPECTED = {  # what changed, how, and the line that changed it (its file, its text)
    "counts_on_its_class": ("class 'test_changes.Counter'", ".n changed from 0 to 1", "Counter.n += 1"),
    "counts_on_a_namespace": ("global 'test_changes.STATE'", ".n changed from 0 to 1", "STATE.n += 1"),
    "calls_a_counting_helper": ("global 'helper.COUNT'", "changed from 0 to 1", "helper.py:COUNT += 1"),
    "adds_a_global": ("global 'test_changes.ADDED'", "was added", 'globals()["ADDED"] = 1'),
    "sets_the_thread_count": ("torch intra-op threads", " to 3", "torch.set_num_threads(3)"),
    "reseeds": ("torch default RNG", "was reseeded (torch.manual_seed(3))", "torch.manual_seed(3)"),
    "makes_cudnn_deterministic": ("torch.backends.cudnn.deterministic", "changed from False to True",
                                  "torch.backends.cudnn.deterministic = True"),
    "turns_mkldnn_off": ("torch.backends.mkldnn.enabled", "changed from True to False",
                         "torch.backends.mkldnn.enabled = False"),
    "counts_on_a_function": ("global 'test_changes._counted'", ".calls was added",
                             '_counted.calls = getattr(_counted, "calls", 0) + 1'),
    "remembers_in_a_default": ("global 'test_changes._remembers'", "the default value of seen (one object every "
                               "call shares): length changed from 0 to 1", "seen.append(1)"),
    "lowers_the_matmul_precision": ("torch float32 matmul precision", "changed from highest to medium",
                                    'torch.set_float32_matmul_precision("medium")'),
}


@pytest.mark.slow
@pytest.mark.parametrize("isolation", ["child", "inprocess"])
def test_global_state_changes_are_findings_and_pure_code_passes(fc, pytester: pytest.Pytester, isolation) -> None:
    """Each change is located at the line that made it (no op says who: a line tracer, in the serial run)."""
    pytester.makepyfile(helper=HELPER, test_changes=source(CHANGES), test_pure=source(PURE))
    result = fc.run("--forkcheck-isolation", isolation, "--forkcheck-pool-sizes", "1")
    rows = fc.rows()
    for name, (subject, says, writer) in EXPECTED.items():
        row = rows[f"test_changes.py::{name}"]
        assert row["verdict"] == "fail", row
        messages = [f["message"] for f in row["findings"] if f["kind"] == "global-mutation"]
        where = _line(pytester, writer)
        assert len(messages) == 1, row["findings"]
        if messages[0].startswith(f"{subject} changed from "):  # said once: "... changed from 0 to 1 at helper.py:11"
            assert says in messages[0] and messages[0].endswith(where) and " at " in messages[0], messages
        else:
            assert messages[0].startswith(f"{subject} changed at ") and f"{where}: " in messages[0], messages
            assert messages[0].endswith(says), messages
        assert row["findings"][0]["location"].endswith(where), row
    pure = rows["test_pure.py::reads_globals_and_calls_helpers"]
    assert (pure["verdict"], pure["findings"], pure["error"]) == ("pass", [], "")
    result.assert_outcomes(failed=len(EXPECTED), passed=2)  # the plain test saw nothing left behind


def _line(pytester: pytest.Pytester, writer: str) -> str:
    """``file:line`` of the line ``writer`` names (``file:text``, or the text of a line of test_changes.py)."""
    file, _, text = writer.rpartition(":") if writer.startswith("helper.py:") else ("test_changes.py", "", writer)
    lines = [line.strip() for line in (pytester.path / file).read_text().splitlines()]
    return f"{file}:{lines.index(text) + 1}"


def test_a_thread_count_set_by_the_code_is_put_back_for_later_threads() -> None:
    before = torch.get_num_threads()
    watch = GlobalWatch({})
    runner = threading.Thread(target=lambda: watch.run(lambda: torch.set_num_threads(before + 1)))
    runner.start()
    runner.join()
    seen = []
    reader = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    reader.start()
    reader.join()
    assert seen == [before]
    assert watch.changed() == {"torch intra-op threads": [f"changed from {before} to {before + 1}"]}


def _reads_torch_only(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.relu(x) + threading.active_count()


def test_no_library_state_is_watched() -> None:
    """torch, the standard library and site-packages are no user's state: none of their names is watched."""
    names = referenced_globals([_reads_torch_only])
    assert all(name.startswith(__name__) for name in names), names


# -- compiled code that calls no Python reaches only torch's state -------------------------------------------------


PROGRAMS = """
import random

import torch
from torch import Tensor


@torch.jit.ignore
def python_side(x: Tensor) -> Tensor:
    random.random()
    return x


def calls_python(x: Tensor) -> Tensor:
    return torch.jit.wait(torch.jit.fork(python_side, x))


def no_python(x: Tensor) -> Tensor:
    return torch.jit.wait(torch.jit.fork(torch.neg, x))


LIBRARY = torch.library.Library("fc_user_ops", "DEF")
LIBRARY.define("twice(Tensor x) -> Tensor")
LIBRARY.impl("twice", lambda x: x * 2, "CompositeExplicitAutograd")  # a Python kernel


def _twice(x: Tensor) -> Tensor:
    return torch.ops.fc_user_ops.twice(x)


def calls_a_users_op(x: Tensor) -> Tensor:
    return torch.jit.wait(torch.jit.fork(_twice, x))
"""


def test_a_scripted_program_runs_python_only_through_an_ignored_call_or_a_users_op(tmp_path, monkeypatch):
    import importlib

    from forkcheck._warnings import quiet_jit
    from forkcheck.engines.script import ScriptEngine

    (tmp_path / "python_calls.py").write_text(PROGRAMS)  # TorchScript reads a program's source from its file
    monkeypatch.syspath_prepend(str(tmp_path))
    programs = importlib.import_module("python_calls")
    with quiet_jit():
        assert ScriptEngine(programs.calls_python, ["x"], 2).runs_python
        assert ScriptEngine(programs.calls_a_users_op, ["x"], 2).runs_python
        assert not ScriptEngine(programs.no_python, ["x"], 2).runs_python


def test_a_watch_for_code_without_python_reads_torch_state_only_and_puts_it_back():
    import random

    import numpy

    full, torch_only = GlobalWatch({}), GlobalWatch({}, python=False)
    random.random(), numpy.random.rand(), torch.rand(1)
    assert set(full.changed()) == {"Python default RNG", "numpy default RNG", "torch default RNG"}
    assert set(torch_only.changed()) == {"torch default RNG"}
    full.restore()
    assert full.changed() == {} and torch_only.changed() == {}
