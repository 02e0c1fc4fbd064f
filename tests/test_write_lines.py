"""A change of a Python value (no op wrote it: a global dict filled, a list appended to, an attribute counted up, a
Python RNG drawn from) is located at the user's line that made it, in eager code and in the Python a compiled
program calls back into (whose globals are watched, found from the graph); a module whose forward is
``torch.jit.ignore``d is checked as the Python it is."""
from __future__ import annotations

import importlib
import sys
import textwrap

import pytest
import torch
from hypothesis import strategies as st

import forkcheck
from forkcheck.locate import changing_lines

PROGRAMS = """
import random

import torch
from torch import Tensor, nn

CACHE = {}
SEEN = []


def cached(x: Tensor) -> Tensor:
    key = tuple(x.shape)
    if key not in CACHE:
        CACHE[key] = x * 0  # <cache>
    return x + CACHE[key]


def eager_cache(x: Tensor) -> Tensor:
    return cached(x) + len(str(CACHE))  # str(): not scriptable, so the eager engine runs it


@torch.jit.ignore
def note(x: Tensor) -> Tensor:
    random.random()  # <draw>
    SEEN.append(1)  # <append>
    return x


def _noted(x: Tensor) -> Tensor:
    return note(x) + 1


def compiled_note(x: Tensor) -> Tensor:
    return torch.jit.wait(torch.jit.fork(_noted, x))


def pure(x: Tensor) -> Tensor:
    return torch.jit.wait(torch.jit.fork(cached, x)) + len(str(CACHE))  # fills CACHE only when empty: see the test


def no_python(x: Tensor) -> Tensor:
    return torch.jit.wait(torch.jit.fork(torch.neg, x))


class Helped(nn.Module):
    @torch.jit.ignore
    def helper(self, x: Tensor) -> Tensor:
        SEEN.append(2)
        return x

    def forward(self, x: Tensor) -> Tensor:
        return torch.jit.wait(torch.jit.fork(self.helper, x))


class IgnoredForward(nn.Module):
    def __init__(self):
        super().__init__()
        self.seen = []

    @torch.jit.ignore
    def forward(self, x: Tensor) -> Tensor:
        self.seen.append(float(x.sum()))  # <seen>
        return x
"""


@pytest.fixture
def programs(tmp_path, monkeypatch):
    (tmp_path / "line_programs.py").write_text(textwrap.dedent(PROGRAMS))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("line_programs", None)
    module = importlib.import_module("line_programs")
    lines = (tmp_path / "line_programs.py").read_text().splitlines()
    marks = {line.split("# <")[1].rstrip(">"): f"{tmp_path / 'line_programs.py'}:{number}"
             for number, line in enumerate(lines, 1) if "# <" in line}
    return module, marks


def _found(result) -> dict[str, tuple[str, str]]:
    return {f.detail["name"]: (f.location, f.message) for f in result.findings}


def test_a_global_dict_filled_in_eager_code_is_located_at_its_write(programs) -> None:
    module, marks = programs
    result = forkcheck.check(module.eager_cache, examples=3)
    assert (result.verdict, result.engine) == ("fail", "eager"), result.error
    location, message = _found(result)["line_programs.CACHE"]
    assert location == marks["cache"] and message.startswith(f"global 'line_programs.CACHE' changed at {location}: ")


@pytest.mark.parametrize("compiled_by", ["forkcheck", "the user"])
def test_python_changes_a_compiled_program_calls_back_into_are_found_and_located(programs, compiled_by) -> None:
    """Scripted by forkcheck from its source, or given compiled (its Python callees found in its graph)."""
    module, marks = programs
    target = module.compiled_note if compiled_by == "forkcheck" else torch.jit.script(module.compiled_note)
    result = forkcheck.check(target, examples=3)
    assert (result.verdict, result.engine) == ("fail", "script"), result.error
    found = _found(result)
    assert found["Python default RNG"][0] == marks["draw"], found
    assert found["line_programs.SEEN"][0] == marks["append"], found


def test_a_pure_target_is_not_traced_and_still_passes(programs, monkeypatch) -> None:
    module, _ = programs
    traced = []
    monkeypatch.setattr("forkcheck.runner.changing_lines", lambda *a, **k: traced.append(a) or (None, {}))
    module.CACHE[(4,)] = torch.zeros(4)  # a warm cache: reading it changes nothing
    result = forkcheck.check(forkcheck.fork_safe(x=st.just(torch.ones(4)))(module.pure), examples=3)
    assert (result.verdict, result.findings, traced) == ("pass", [], [])


def test_each_defect_is_traced_once_per_check(programs, monkeypatch) -> None:
    """Shrinking sees a serial-run defect again and again; its line is looked for once."""
    module, marks = programs
    calls = []
    real = changing_lines
    monkeypatch.setattr("forkcheck.runner.changing_lines", lambda *a, **k: calls.append(1) or real(*a, **k))
    result = forkcheck.check(module.eager_cache, examples=5)
    assert _found(result)["line_programs.CACHE"][0] == marks["cache"]
    assert len(calls) == 1


def test_a_module_whose_forward_is_ignored_runs_as_python_and_its_attribute_is_located(programs) -> None:
    module, marks = programs
    result = forkcheck.check(module.IgnoredForward(), examples=3)
    assert (result.verdict, result.engine) == ("fail", "eager"), result.error
    assert "torch.jit.ignore'd" in result.engine_reason
    assert _found(result)["seen"][0] == marks["seen"]


def test_a_compiled_module_whose_forward_is_ignored_is_a_setup_error_naming_the_fix(programs) -> None:
    module, _ = programs
    result = forkcheck.check(torch.jit.script(module.IgnoredForward()), examples=3)
    assert result.target == "line_programs:IgnoredForward"  # its code's module, not torch's class's
    assert result.verdict == "error" and "mark the module before torch.jit.script" in result.error
    assert result.error.startswith("setup error: the compiled module's forward"), result.error  # named once


def test_changing_lines_names_the_line_after_which_each_value_changed() -> None:
    box: list[int] = []
    table: dict[str, int] = {}

    def fill() -> int:
        box.append(1)
        table["k"] = 2
        return 3

    def tracer(frame, event, arg):  # another tool's (a coverage tool, a debugger): put back afterwards
        return None

    first = fill.__code__.co_firstlineno
    before = sys.gettrace()
    sys.settrace(tracer)
    try:
        result, found = changing_lines(fill, lambda: {n for n, v in (("box", box), ("table", table)) if v},
                                       {"box", "table"})
        after = sys.gettrace()
    finally:
        sys.settrace(before)
    assert (result, after) == (3, tracer)
    assert found == {"box": f"{__file__}:{first + 1}", "table": f"{__file__}:{first + 2}"}


def test_a_compiled_module_s_ignored_methods_and_functions_are_its_python_callees(programs) -> None:
    from forkcheck.compiled import python_callees

    module, _ = programs
    assert python_callees(torch.jit.script(module.compiled_note)) == [module.note]  # in a forked, called body
    assert python_callees(torch.jit.script(module.Helped())) == [module.Helped.helper]  # unwrapped from torch's
    assert python_callees(torch.jit.script(module.no_python)) == []
