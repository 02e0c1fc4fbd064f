"""Degenerate inputs (no elements, 0-dim, strided views, bool and complex dtypes) check like any other: a pure target
passes and an in-place writer fails, through pytest."""
from __future__ import annotations

import pytest
import torch

from forkcheck.runner import _fingerprint
from forkcheck.state import snapshot
from sources import source

PROGRAMS = """
COMPLEX = fst.tensors(shape=(3,)).map(lambda t: torch.complex(t, -t))

@fork_safe(x=fst.tensors(shape=(0,)))
def empty(x):
    return x * 2

@fork_safe(x=fst.tensors(shape=(0,)), y=fst.tensors(shape=(3,)))
def empty_beside_a_written_input(x, y):
    y.add_(1)
    return x * 2

@fork_safe(x=fst.tensors(shape=(2, 0, 3)))
def empty_written(x):
    x.add_(1)
    return x

@fork_safe(x=fst.tensors(shape=()))
def zero_dim(x):
    return x * 2

@fork_safe(x=fst.tensors(shape=()))
def zero_dim_written(x):
    x.add_(1)
    return x

@fork_safe(x=fst.tensors(shape=(3, 4), contiguous=False))
def strided(x):
    return x * 2

@fork_safe(x=fst.tensors(shape=(3, 4), contiguous=False))
def strided_written(x):
    x.add_(1)
    return x

@fork_safe(x=fst.tensors(dtype=torch.bool, shape=(4,)))
def bools(x):
    return ~x

@fork_safe(x=fst.tensors(dtype=torch.bool, shape=(4,)))
def bools_written(x):
    x.logical_not_()
    return x

@fork_safe(x=COMPLEX)
def complexes(x):
    return x * 2

@fork_safe(x=COMPLEX)
def complexes_written(x):
    x.add_(1)
    return x
"""

PURE = ("empty", "zero_dim", "strided", "bools", "complexes")
WRITERS = {"empty_beside_a_written_input": "y", "empty_written": "x", "zero_dim_written": "x",
           "strided_written": "x", "bools_written": "x", "complexes_written": "x"}


@pytest.mark.slow
def test_degenerate_inputs_check_normally(fc, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_degenerate=source(PROGRAMS))
    result = fc.run()
    rows = fc.rows()
    for name in PURE:
        row = rows[f"test_degenerate.py::{name}"]
        assert (row["verdict"], row["findings"], row["error"]) == ("pass", [], ""), row
    for name, written in WRITERS.items():
        row = rows[f"test_degenerate.py::{name}"]
        assert row["verdict"] == "fail", row
        assert [(f["kind"], f["message"].split(" changed")[0]) for f in row["findings"]] == [
            ("input-mutation", f"input {written!r}")], row
    result.assert_outcomes(passed=len(PURE), failed=len(WRITERS))


def degenerate_tensors() -> list[torch.Tensor]:
    matrix = torch.arange(6.0).reshape(2, 3)
    return [torch.zeros(0), torch.zeros(2, 0, 3), torch.zeros(0, dtype=torch.complex64), torch.tensor(3.0),
            matrix.t(), matrix[:, ::2], torch.ones(2).expand(3, 2), torch.tensor([True, False]),
            torch.tensor([1 + 2j, 3j]), torch.tensor([1 + 2j]).conj(), torch.ones(2, dtype=torch.bfloat16)]


@pytest.mark.parametrize("index", range(len(degenerate_tensors())))
def test_a_degenerate_tensor_has_a_fingerprint_and_a_snapshot(index: int) -> None:
    tensor, same = degenerate_tensors()[index], degenerate_tensors()[index]
    assert _fingerprint(tensor) == _fingerprint(same)
    assert snapshot(tensor).changes(tensor) == []
    if tensor.numel():  # one element changed: another fingerprint
        other, first = tensor.clone(), (0,) * tensor.dim()
        other[first] = ~other[first] if tensor.dtype == torch.bool else other[first] + 1
        assert _fingerprint(other) != _fingerprint(tensor)

def test_a_conjugate_view_fingerprints_by_its_values() -> None:
    z = torch.tensor([1 + 2j])
    assert _fingerprint(z.conj()) == _fingerprint(z.conj().resolve_conj()) != _fingerprint(z)
