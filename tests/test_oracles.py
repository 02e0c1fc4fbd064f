"""The oracles on real fork/wait programs, through ``runner.check`` (no pytest items): each defect is found with the
right kind, names what changed and where; correct programs pass. The line a finding should point at is marked
``# W: tag``."""
import dataclasses
import math
import random
import re
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch
from hypothesis import strategies as st
from torch import Tensor, nn

import forkcheck
import strategies as fst
from forkcheck.locate import WriteLocator
from forkcheck.marker import Mark
from forkcheck.oracles.determinism import differences
from forkcheck.runner import check as run_check
from forkcheck.settings import Settings
from forkcheck.target import Target

QUICK = dict(examples=3, schedules=3, seed=1)
MATRIX = fst.tensors(shape=(4, 3))


def check(obj, strategies=None, **settings) -> forkcheck.CheckResult:
    """``obj`` checked with small settings and, if given, explicit strategies (a mark made here, not collected)."""
    target = Target.from_object(obj)
    if strategies:
        target = dataclasses.replace(target, mark=Mark(strategies=strategies))
    return run_check(target, Settings().replace(**{**QUICK, **settings}))


def line(tag: str) -> str:
    """``path:N`` of the line in this file marked ``# W: tag``."""
    lines = Path(__file__).read_text().splitlines()
    (number,) = [i for i, text in enumerate(lines, 1) if text.endswith(f"# W: {tag}")]
    return f"{__file__}:{number}"


def cases(*rows: tuple) -> list:
    """Parametrize rows, each named after the program or module it starts with."""
    return [pytest.param(*row, id=getattr(row[0], "__name__", type(row[0]).__name__)) for row in rows]


def defined_at(obj) -> str:
    return Target.from_object(obj).source_location()


def only(result: forkcheck.CheckResult, kind: str) -> forkcheck.Finding:
    """The first finding of ``kind``; the check must have failed and found it."""
    assert result.verdict == "fail", (result.verdict, result.error, result.findings)
    found = [f for f in result.findings if f.kind == kind]
    assert found, [(f.kind, f.message) for f in result.findings]
    return found[0]


# -- programs that change their inputs ------------------------------------------------------------------------------


def add_in_place(x: Tensor) -> Tensor:
    x.add_(1)  # W: add_
    return x * 2


def write_through_view(x: Tensor) -> Tensor:
    x[0].mul_(2).add_(1)  # W: view
    return x.sum()


def write_into_out(x: Tensor, y: Tensor) -> Tensor:
    return torch.add(y, 1.0, out=x)  # W: out


def write_then_undo(x: Tensor) -> Tensor:
    x.add_(1)  # W: undo
    x.sub_(1)
    return x.clone()


def append_to_list(xs: List[Tensor], x: Tensor) -> int:
    xs.append(x)  # W: append
    return len(xs)


def set_dict_item(d: Dict[str, Tensor], x: Tensor) -> int:
    d["seen"] = x  # W: setitem
    return len(d)


def transpose_in_place(x: Tensor) -> Tensor:
    x.t_()  # W: t_
    return x + 1


def resize_in_place(x: Tensor) -> Tensor:
    x.resize_(1)  # W: resize_
    return x + 1


def write_through_data(x: Tensor) -> Tensor:
    x.data.add_(1)  # W: data
    return x + 1


def _fill_first(x: Tensor) -> Tensor:
    return x[0].fill_(7)  # W: forked


def write_in_forked_task(x: Tensor) -> Tensor:
    future = torch.jit.fork(_fill_first, x)
    return torch.jit.wait(future) + 1


@pytest.mark.parametrize("program, name, where, strategies, says", cases(
    (add_in_place, "x", "add_", None, "by aten::add_.Tensor at"),
    (write_through_view, "x", "view", None, "by aten::mul_.Tensor at"),
    (write_into_out, "x", "out", {"x": MATRIX, "y": MATRIX}, "by aten::add.out at"),
    (write_then_undo, "x", "undo", None, "written in place (2 writes); on this input the values happen to end up the same"),
    (append_to_list, "xs", "append", None, "length changed from 0 to 1"),
    (set_dict_item, "d", "setitem", None, "key 'seen' was added"),
    (transpose_in_place, "x", "t_", {"x": MATRIX}, "metadata changed from shape [4, 3] stride [3, 1]"),
    (resize_in_place, "x", "resize_", {"x": MATRIX}, "to shape [1] stride [1]"),
    (write_through_data, "x", "data", None, "elements changed"),
    (write_in_forked_task, "x", "forked", None, "by aten::fill_.Scalar at"),
))
def test_input_mutation(program, name, where, strategies, says):
    result = check(program, strategies)
    assert result.engine == "script"
    finding = only(result, "input-mutation")
    assert finding.message.startswith(f"input {name!r} changed") and says in finding.message
    assert finding.location == (line(where) if where else defined_at(program))


# -- programs that change their module ------------------------------------------------------------------------------


class CountCalls(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1  # W: calls
        return x * 2


class CountCallsEagerly(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1  # W: eager-calls
        double = lambda t: t * 2  # noqa: E731 -- TorchScript rejects lambdas: this runs on the eager scheduler
        return double(x)


class CountInBuffer(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("seen", torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        self.seen.add_(1)  # W: buffer
        return x + self.seen


class DecayWeight(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(3))

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            self.weight.mul_(0.5)  # W: parameter
        return x * self.weight


class HalvesNorm(nn.Module):
    """Batch norm in training mode, forked on the two halves of a batch: both tasks update the running stats."""

    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm1d(3)

    def forward(self, x: Tensor) -> Tensor:
        top = torch.jit.fork(self.norm, x[:2])  # W: norm
        bottom = torch.jit.fork(self.norm, x[2:])
        return torch.cat([torch.jit.wait(top), torch.jit.wait(bottom)])


class ReplaceHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(3, 3)

    def forward(self, x: Tensor) -> Tensor:
        self.head = nn.Linear(3, 3)  # W: head
        return self.head(x)


class RememberInputs(nn.Module):
    seen: List[Tensor]

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x: Tensor) -> Tensor:
        self.seen.append(x)  # W: seen
        return x * 2


@pytest.mark.parametrize("module, path, where, engine, strategies, says", cases(
    (CountCalls(), "calls", "calls", "script", None, "'calls' changed from 0 to 1 by prim::SetAttr at"),
    (CountCallsEagerly(), "calls", "eager-calls", "eager", None, "'calls' changed from 0 to 1 at"),
    (CountInBuffer(), "seen", "buffer", "script", None, "by aten::add_.Tensor at"),
    (DecayWeight(), "weight", "parameter", "script", {"x": fst.tensors(shape=(3,))}, "by aten::mul_.Tensor at"),
    (HalvesNorm(), "norm.num_batches_tracked", "norm", "script", {"x": MATRIX}, "by aten::add_.Tensor at"),
    (ReplaceHead(), "head", "head", "eager", {"x": MATRIX}, "was rebound to another object"),
    (RememberInputs(), "seen", "seen", "script", None, "length changed from 0 to 1"),
))
def test_attribute_mutation(module, path, where, engine, strategies, says):
    result = check(module, strategies)
    assert result.engine == engine
    named = {f.detail.get("name"): f for f in result.findings if f.kind == "attribute-mutation"}
    assert path in named, [(f.kind, f.message) for f in result.findings]
    assert named[path].message.startswith(f"module attribute {path!r} changed") and says in named[path].message
    assert named[path].location == (line(where) if where else defined_at(module))
    assert not [name for name in named if name.startswith(f"{path}.")]  # a replaced submodule is one change


# -- programs that change global state ------------------------------------------------------------------------------

_CACHE: Dict[int, Tensor] = {}
_CALLS = 0
_LOG: List[int] = []
_SCALE = torch.tensor([2.0])
_NORM = nn.BatchNorm1d(3)
_HISTOGRAM = np.zeros(4)
_GENERATOR = torch.Generator().manual_seed(0)


class Stats:
    def __init__(self):
        self.calls = 0


STATS = Stats()


def cache_by_size(x: Tensor) -> Tensor:
    if x.numel() not in _CACHE:
        _CACHE[x.numel()] = x * 2  # W: cache
    return _CACHE[x.numel()]


def count_calls(x: Tensor) -> Tensor:
    global _CALLS
    _CALLS += 1  # W: calls-global
    return x + 1


def make_counter():
    count = 0

    def counted(x: Tensor) -> Tensor:
        nonlocal count
        count += 1  # W: cell
        return x + 1

    return counted


counted = make_counter()


def log_sizes(x: Tensor) -> Tensor:
    _LOG.append(x.numel())  # W: log
    return x + 1


def add_noise(x: Tensor) -> Tensor:
    return x + torch.rand(x.shape)  # W: rand


def add_python_noise(x: Tensor) -> Tensor:
    return x + random.random()  # W: python-rng


def add_seeded_noise(x: Tensor) -> Tensor:
    return x + torch.rand(x.shape, generator=_GENERATOR)  # W: generator


def grad_off_scripted(x: Tensor) -> Tensor:
    torch.set_grad_enabled(False)  # W: grad-off-scripted
    return x * 2


def grad_off(x: Tensor) -> Tensor:
    torch.set_grad_enabled(False)  # W: grad-off
    return x * _SCALE


def double_precision(x: Tensor) -> Tensor:
    torch.set_default_dtype(torch.float64)  # W: dtype
    return x + 1


def count_in_array(x: Tensor) -> Tensor:
    _HISTOGRAM[min(x.numel(), 3)] += 1  # W: histogram
    return x + 1


def count_on_object(x: Tensor) -> Tensor:
    STATS.calls += 1  # W: stats
    return x + 1


def normalize_globally(x: Tensor) -> Tensor:
    return _NORM(x)  # W: global-norm


@pytest.mark.parametrize("program, subject, where, engine, strategies, says", cases(
    (cache_by_size, f"global '{__name__}._CACHE'", "cache", "eager", {"x": fst.tensors(shape=(1,))}, "key 1 was added"),
    (count_calls, f"global '{__name__}._CALLS'", "calls-global", "eager", None, "changed from 0 to 1"),
    (counted, "closure variable 'make_counter.<locals>.counted.count'", "cell", "eager", None, "changed from 0 to 1"),
    (log_sizes, f"global '{__name__}._LOG'", "log", "eager", None, "length changed from 0 to 1"),
    (add_noise, "torch default RNG", "rand", "script", None, "by aten::rand at"),
    (add_python_noise, "Python default RNG", "python-rng", "eager", None, "was advanced"),
    (add_seeded_noise, f"global '{__name__}._GENERATOR'", "generator", "eager", None, "was advanced"),
    (double_precision, "torch default dtype", "dtype", "eager", None, "changed from torch.float32 to torch.float64"),
    (count_on_object, f"global '{__name__}.STATS'", "stats", "eager", None, ".calls changed from 0 to 1"),
    (count_in_array, f"global '{__name__}._HISTOGRAM'", "histogram", "eager", None, "1 of 4 elements changed"),
    (normalize_globally, f"global '{__name__}._NORM'", "global-norm", "script", {"x": MATRIX}, ".num_batches_tracked"),
))
def test_global_mutation(program, subject, where, engine, strategies, says):
    result = check(program, strategies)
    assert result.engine == engine
    finding = only(result, "global-mutation")
    assert finding.message.startswith(f"{subject} changed") and says in finding.message
    assert finding.location == (line(where) if where else defined_at(program))


@pytest.mark.parametrize("program", [grad_off, grad_off_scripted], ids=["eager", "script"])
def test_grad_mode_left_off_is_a_global_mutation(program):
    finding = only(check(program), "global-mutation")
    where = line("grad-off" if program is grad_off else "grad-off-scripted")
    assert (finding.message, finding.location) == (f"torch grad mode changed from True to False at {where}", where)


# -- outputs that depend on the schedule ----------------------------------------------------------------------------


def completion_order(x: Tensor) -> Tensor:
    """Returns the order in which its forked tasks ran: a shared list, appended to by each task."""
    order: List[int] = []

    def work(i: int) -> Tensor:
        order.append(i)
        return x * i

    futures = [torch.jit.fork(work, i) for i in range(3)]
    for future in futures:
        torch.jit.wait(future)
    return torch.tensor(order)


def _fill(buffer: Tensor, value: float) -> Tensor:
    buffer.fill_(value)
    return buffer


def read_before_wait(x: Tensor) -> Tensor:
    """Reads a buffer its forked task writes, before waiting for it."""
    buffer = torch.zeros_like(x)
    future = torch.jit.fork(_fill, buffer, 1.0)
    early = buffer.clone()
    torch.jit.wait(future)
    return early


def drift(x: Tensor, eps: float) -> Tensor:
    """Off by ``eps`` times the index of the task that ran first (0 in the serial run, up to 2 when concurrent)."""
    order: List[int] = []

    def work(i: int) -> Tensor:
        order.append(i)
        return x

    futures = [torch.jit.fork(work, i) for i in range(3)]
    for future in futures:
        torch.jit.wait(future)
    return x + eps * order[0]


def test_output_depends_on_the_eager_schedule():
    result = check(completion_order)
    assert result.engine == "eager"
    finding = only(result, "nondeterminism")
    assert "returned a different output than the serial reference" in finding.message
    assert finding.location == Target.from_object(completion_order).return_location()  # where the output comes from
    assert finding.location.endswith(f":{completion_order.__code__.co_firstlineno + 11}")  # not work's return


def test_output_depends_on_the_real_runtime_schedule():
    result = check(read_before_wait)
    assert result.engine == "script"
    assert "different output than the serial reference" in only(result, "nondeterminism").message


EPS = {"eps": st.just(1e-4)}


@pytest.mark.parametrize("tolerance, verdict", [  # verdict: of the outputs' comparison
    ({}, "fail"),
    ({"atol": 1e-5}, "fail"),
    ({"atol": 1e-3}, "pass"),
    ({"rtol": 1e-9}, "fail"),
    ({"rtol": 1e-3}, "pass"),  # |x| >= 5: rtol * |x| >= 5e-3, above the drift of at most 2e-4
])
def test_tolerances(tolerance, verdict):
    """Tolerances decide whether differing outputs are ``nondeterminism``; the appends to ``order`` are a ``race``
    under any tolerance (the race oracle sees lists)."""
    strategies = {**EPS, "x": fst.tensors(shape=(3,), elements_min=5.0, elements_max=10.0)}
    result = check(drift, strategies, **tolerance)
    kinds = {finding.kind for finding in result.findings}
    assert result.engine == "eager" and result.verdict == "fail" and "race" in kinds, result.findings
    assert ("nondeterminism" in kinds) == (verdict == "fail"), result.findings
    if verdict == "fail":
        change = re.search(r"largest absolute change ([0-9.e+-]+)", only(result, "nondeterminism").message)
        assert 5e-5 < float(change.group(1)) < 2.5e-4


# -- programs that raise --------------------------------------------------------------------------------------------


def _boom(x: Tensor) -> Tensor:
    raise RuntimeError("boom")  # W: boom


def raise_in_task(x: Tensor) -> Tensor:
    future = torch.jit.fork(_boom, x)
    return torch.jit.wait(future)


def raise_in_task_eagerly(x: Tensor) -> Tensor:
    future = torch.jit.fork(lambda t: _boom(t), x)
    return torch.jit.wait(future)


def raise_on_big_k(x: Tensor, k: int) -> Tensor:
    if k > 2:
        raise ValueError("k is too big")  # W: big k
    return x * k


def raise_when_out_of_order(x: Tensor) -> Tensor:
    """Raises only when a later task ran first: never in the serial run."""
    order: List[int] = []

    def work(i: int) -> Tensor:
        order.append(i)
        if order[0] != 0:
            raise RuntimeError("out of order")  # W: order
        return x * i

    futures = [torch.jit.fork(work, i) for i in range(3)]
    return torch.stack([torch.jit.wait(future) for future in futures])


@pytest.mark.parametrize("program, engine", [(raise_in_task, "script"), (raise_in_task_eagerly, "eager")])
def test_a_task_that_raises(program, engine):
    result = check(program)
    assert result.engine == engine
    finding = only(result, "exception")
    assert finding.message.startswith("the target raised RuntimeError: boom (serial run, forks inline); input x was "
                                      "inferred from its annotation")
    assert finding.location == line("boom")


def test_a_target_raising_on_some_inputs_only():
    result = check(raise_on_big_k, {"k": st.integers(0, 5)}, examples=20)
    finding = only(result, "exception")
    assert "ValueError: k is too big" in finding.message and finding.location == line("big k")
    assert result.failing_input["k"] == "3"  # shrunk to the smallest failing k


def test_a_task_raising_under_some_schedules_only():
    result = check(raise_when_out_of_order)
    assert result.engine == "eager"
    finding = only(result, "exception")
    assert "a forked task raised RuntimeError: out of order (concurrent run, eager engine)" in finding.message
    assert finding.location == line("order")


# -- correct programs pass ------------------------------------------------------------------------------------------


def add_to_own_copy(x: Tensor) -> Tensor:
    y = x.clone()
    y.add_(1)
    return y


def _row_sums(x: Tensor) -> Tensor:
    return x.sum(-1)


def shared_readers(x: Tensor) -> Tensor:
    a = torch.jit.fork(_row_sums, x)
    b = torch.jit.fork(_row_sums, x)
    c = torch.jit.fork(_row_sums, x)
    return torch.jit.wait(a) + torch.jit.wait(b) * torch.jit.wait(c)


def first_row(x: Tensor) -> Tensor:
    return x[0]


def transposed(x: Tensor) -> Tensor:
    return x.t()


def _half(x: Tensor) -> Tensor:
    return x * 0.5


def _quarter(x: Tensor) -> Tensor:
    return torch.jit.wait(torch.jit.fork(_half, x)) * 0.5


def nested_forks(x: Tensor) -> Tensor:
    a = torch.jit.fork(_quarter, x)
    b = torch.jit.fork(_half, x)
    return torch.jit.wait(a) + torch.jit.wait(b)


def total_of_list(xs: List[Tensor]) -> Tensor:
    total = torch.zeros(())
    for x in xs:
        total = total + x.sum()
    return total


def scale_by_global(x: Tensor) -> Tensor:
    return x * _SCALE


def not_a_number(x: Tensor) -> Tensor:
    return torch.sqrt(-x.abs() - 1)


def negative_zero(x: Tensor) -> Tensor:
    return -(x - x)


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
        self.offsets: Dict[str, float] = {"bias": 0.5}
        self.name = "encoder"

    def forward(self, x: Tensor) -> Tensor:
        a = torch.jit.fork(self.body, x)
        b = torch.jit.fork(self.body, x * 2)
        return torch.jit.wait(a) + torch.jit.wait(b) + self.offsets["bias"]


class EagerEncoder(Encoder):
    def forward(self, x: Tensor) -> Tensor:
        futures = [torch.jit.fork(self.body, x * k) for k in range(3)]
        return sum((torch.jit.wait(f) for f in futures), torch.zeros(()))  # a generator: eager only


@pytest.mark.parametrize("target, engine, strategies", cases(
    (add_to_own_copy, "script", None),
    (shared_readers, "script", None),
    (first_row, "script", None),
    (transposed, "script", {"x": MATRIX}),
    (nested_forks, "script", None),
    (total_of_list, "script", None),
    (scale_by_global, "eager", None),
    (not_a_number, "script", None),
    (negative_zero, "script", None),
    (Encoder().eval(), "script", {"x": MATRIX}),
    (EagerEncoder().eval(), "eager", {"x": MATRIX}),
))
def test_correct_programs_pass(target, engine, strategies):
    result = check(target, strategies)
    assert (result.verdict, result.findings, result.error) == ("pass", [], "")
    assert result.engine == engine
    assert result.examples >= 1 and result.schedules >= result.examples


def test_nan_and_negative_zero_outputs_really_are_produced():
    assert torch.isnan(not_a_number(torch.ones(2))).all()
    assert math.copysign(1.0, float(negative_zero(torch.ones(1)))) == -1.0


# -- the locator ----------------------------------------------------------------------------------------------------


def test_locator_names_the_first_write_of_each_watched_name():
    x, y = torch.zeros(3), torch.zeros(3)
    locator = WriteLocator({"x": x, "y": [y]})
    with locator:
        x.add_(1)  # W: locate x
        y[1:].mul_(2)  # W: locate y
        x.sub_(1)
        torch.randn(2)  # W: locate rng
        torch.randn(2, generator=torch.Generator())
    assert locator.locate("x") == ("aten::add_.Tensor", line("locate x"))
    assert locator.locate("y") == ("aten::mul_.Tensor", line("locate y"))
    assert locator.locate("torch default RNG") == ("aten::randn", line("locate rng"))
    assert locator.locate("z") == ("", "")


def test_locator_ignores_reads_and_own_tensors():
    x = torch.ones(3)
    locator = WriteLocator({"x": x})
    with locator:
        y = x * 2
        y.add_(1)
        torch.randn(2, generator=torch.Generator())
    assert locator.first_write == {}


# -- comparing outputs ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Pair:
    first: Tensor
    second: int


def test_differences_are_bitwise_by_default():
    nan = torch.tensor([math.nan, -0.0])
    assert differences(nan, nan.clone()) == []
    assert differences(torch.tensor([0.0]), torch.tensor([-0.0])) == ["output: changed bits only (e.g. 0.0 and -0.0, "
                                                                      "or another NaN)"]
    assert differences(torch.ones(2), torch.ones(3)) == ["output: torch.float32[2] vs torch.float32[3]"]
    assert differences(1.0, 1.0 + 1e-12) == ["output: 1.0 vs 1.000000000001"]


def test_differences_within_tolerances():
    a = torch.tensor([1.0, math.nan])
    assert differences(a, a + 1e-6, atol=1e-5) == []
    assert differences(a, a + 1e-4, atol=1e-5) != []
    assert differences(torch.tensor([100.0]), torch.tensor([100.01]), rtol=1e-3) == []
    assert differences(1.0, 1.0 + 1e-6, atol=1e-5) == []
    assert differences(torch.tensor([True]), torch.tensor([False]), atol=1.0) != []


def test_differences_in_structures_name_the_place():
    assert differences((torch.zeros(1), [1, 2]), (torch.zeros(1), [1, 3])) == ["output[1][1]: 2 vs 3"]
    assert differences({"a": 1, "b": 2}, {"b": 2, "a": 1}) == ["output: keys ['a', 'b'] vs ['b', 'a']"]
    assert differences(torch.zeros(1), 0.0) == ["output: Tensor vs float"]


def test_differences_of_objects_and_arrays_compare_contents():
    assert differences(Pair(torch.zeros(2), 1), Pair(torch.zeros(2), 1)) == []
    assert differences(Pair(torch.zeros(2), 1), Pair(torch.zeros(2), 2)) == ["output.__dict__['second']: 1 vs 2"]
    assert differences(np.array([np.nan, 1.0]), np.array([np.nan, 1.0])) == []
    assert differences(np.array([1, 2]), np.array([1, 3])) != []
