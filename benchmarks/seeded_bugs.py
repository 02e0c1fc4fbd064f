"""Seeded schedule-dependent bugs in TorchScript fork/wait programs, each with a ground-truth check.

Every target scripts, forks its own subtasks, and is wrong only under some interleavings of them: the serial order
(each fork run inline, to completion, before the code after it) gives the right answer. A bug's ``is_buggy`` looks at
one concurrent run (``tasks`` instances of the target forked on the same inputs, as forkcheck runs them, and the
inputs and module after the run) and says whether the wrong answer appeared. It computes the right answer on its own,
without forkcheck, so the same check judges forkcheck's schedules and plain re-runs.

Used by ``bench_schedules.py`` (schedules until first detection) and ``tests/test_seeded_bugs.py`` (each bug is
found). The bugs are written the way such code is written, not tuned to any scheduler: some show up often when the
program is simply re-run, some almost never.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Sequence

import torch
from torch import Tensor, nn

import strategies as fst
from forkcheck import fork_safe

VECTOR = fst.tensors(shape=(8,), elements_min=-4, elements_max=4)
ROWS = fst.tensors(shape=(5, 4), elements_min=-4, elements_max=4)


def _ramp(*shape: int) -> Tensor:
    """Distinct multiples of 0.5 around zero, exactly representable: their sums do not depend on the order."""
    n = 1
    for side in shape:
        n *= side
    return (torch.arange(n, dtype=torch.float32) - n // 2).mul(0.5).reshape(shape)


@dataclass
class Run:
    """One run: the inputs after it (shared by every instance), one output per instance, the shared module."""

    args: Sequence[Any]
    outputs: Sequence[Any]
    module: Optional[nn.Module] = None


@dataclass(frozen=True)
class SeededBug:
    """A target with a planted bug, a fresh input for it, and the ground truth."""

    name: str
    what: str  # the kind of defect: "read/write race", "write/write race", "lost update", "append order"
    shared: str  # what the tasks share: "local tensor", "input tensor", "local list", "module buffer"
    target: Any  # a fork_safe-marked function or Module instance
    make_args: Callable[[], list]  # a fresh input, the same values every call
    is_buggy: Callable[[Run], bool]  # whether the run shows the wrong answer
    kinds: tuple[str, ...] = ("nondeterminism",)  # what forkcheck's oracles report for it (``race`` counts too)
    reset: Callable[[Any], None] = field(default=lambda module: None)  # put the shared module back before a run
    note: str = ""


# --- 1. read/write race on a local tensor: a reader forked before the writer finished ------------------------------


def _double_into(buf: Tensor, x: Tensor) -> Tensor:
    buf.copy_(x * 2)
    return buf


def _total(buf: Tensor) -> Tensor:
    return buf.sum()


@fork_safe(x=VECTOR)
def read_before_write(x: Tensor) -> Tensor:
    buf = torch.zeros_like(x)
    writer = torch.jit.fork(_double_into, buf, x)
    reader = torch.jit.fork(_total, buf)  # reads buf while the writer may not have written it yet
    torch.jit.wait(writer)
    return torch.jit.wait(reader)


def _read_before_write_buggy(run: Run) -> bool:
    expected = (run.args[0] * 2).sum()
    return any(not torch.equal(out, expected) for out in run.outputs)


# --- 2. write/write race on a local tensor: two tasks fill overlapping rows (off by one) ----------------------------


def _fill_head(out: Tensor, x: Tensor) -> Tensor:
    out[0:3] = x[0:3] * 2
    return out


def _fill_tail(out: Tensor, x: Tensor) -> Tensor:
    out[2:5] = x[2:5] + 1  # row 2 overlaps the head's rows: the later fork is meant to win
    return out


@fork_safe(x=ROWS)
def overlapping_rows(x: Tensor) -> Tensor:
    out = torch.zeros_like(x)
    head = torch.jit.fork(_fill_head, out, x)
    tail = torch.jit.fork(_fill_tail, out, x)
    torch.jit.wait(head)
    torch.jit.wait(tail)
    return out


def _overlapping_rows_buggy(run: Run) -> bool:
    x = run.args[0]
    expected = torch.cat([x[0:2] * 2, x[2:5] + 1])
    return any(not torch.equal(out, expected) for out in run.outputs)


# --- 3. lost update on a local accumulator: read, add, write back --------------------------------------------------


def _accumulate(acc: Tensor, part: Tensor) -> Tensor:
    total = acc + part.sum()
    acc.copy_(total)
    return total


@fork_safe(x=ROWS)
def local_lost_update(x: Tensor) -> Tensor:
    acc = torch.zeros(1)
    first = torch.jit.fork(_accumulate, acc, x[0])
    second = torch.jit.fork(_accumulate, acc, x[1])
    torch.jit.wait(first)
    torch.jit.wait(second)
    return acc


def _local_lost_update_buggy(run: Run) -> bool:
    x = run.args[0]
    expected = x[0].sum().reshape(1) + x[1].sum()
    return any(not torch.equal(out, expected) for out in run.outputs)


# --- 4. read/write race on an input: rectified in place while a sibling reads it ------------------------------------


def _rectify(x: Tensor) -> Tensor:
    return x.clamp_(min=0.0)


@fork_safe(x=VECTOR)
def rectify_input(x: Tensor) -> Tensor:
    rectified = torch.jit.fork(_rectify, x)
    total = torch.jit.fork(_total, x)  # meant to read the rectified values
    torch.jit.wait(rectified)
    return torch.jit.wait(total)


def _rectify_input_buggy(run: Run) -> bool:
    expected = run.args[0].clamp(min=0.0).sum()  # clamping is idempotent: every instance expects the same total
    return any(not torch.equal(out, expected) for out in run.outputs)


# --- 5. lost update on an input: a hit counter the caller passes in -------------------------------------------------


def _count_hits(hits: Tensor, x: Tensor) -> Tensor:
    found = (x > 0).sum()
    hits.copy_(hits + found)
    return found


@fork_safe(x=ROWS, hits=fst.tensors(shape=(1,), dtype=torch.int64, elements_min=0, elements_max=0))
def count_hits(x: Tensor, hits: Tensor) -> Tensor:
    first = torch.jit.fork(_count_hits, hits, x[0])
    second = torch.jit.fork(_count_hits, hits, x[1])
    return torch.jit.wait(first) + torch.jit.wait(second)


def _count_hits_buggy(run: Run) -> bool:
    x, hits = run.args
    expected = ((x[0] > 0).sum() + (x[1] > 0).sum()) * len(run.outputs)
    return int(hits.item()) != int(expected)


# --- 6. write/write race on an input: two tasks fill overlapping rows of the caller's output -----------------------


@fork_safe(x=ROWS, out=ROWS)
def overlapping_out(x: Tensor, out: Tensor) -> Tensor:
    head = torch.jit.fork(_fill_head, out, x)
    tail = torch.jit.fork(_fill_tail, out, x)
    torch.jit.wait(head)
    torch.jit.wait(tail)
    return out.sum()


def _overlapping_out_buggy(run: Run) -> bool:
    x, out = run.args
    return not torch.equal(out[2], x[2] + 1)  # every instance writes the same values: the tail must land last


# --- 7. order-dependent appends to a local list ---------------------------------------------------------------------


def _embed(parts: List[Tensor], x: Tensor, k: float) -> Tensor:
    y = torch.tanh(x * k)
    parts.append(y)
    return y


@fork_safe(x=VECTOR)
def append_order(x: Tensor) -> Tensor:
    parts: List[Tensor] = []
    futures = [torch.jit.fork(_embed, parts, x, 1.0), torch.jit.fork(_embed, parts, x, 2.0),
               torch.jit.fork(_embed, parts, x, 3.0)]
    for future in futures:
        torch.jit.wait(future)
    return torch.cat(parts)  # in the order the tasks happened to append


def _append_order_buggy(run: Run) -> bool:
    x = run.args[0]
    expected = torch.cat([torch.tanh(x * 1.0), torch.tanh(x * 2.0), torch.tanh(x * 3.0)])
    return any(not torch.equal(out, expected) for out in run.outputs)


# --- 8. lost update on a module buffer: a sample counter updated by per-chunk subtasks -----------------------------


class ChunkedCounter(nn.Module):
    """Normalises a batch chunk by chunk and counts the samples it has seen in a buffer."""

    def __init__(self):
        super().__init__()
        self.register_buffer("seen", torch.zeros(1, dtype=torch.int64))

    def _chunk(self, chunk: Tensor) -> Tensor:
        self.seen.copy_(self.seen + chunk.size(0))
        return torch.nn.functional.normalize(chunk, dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        first = torch.jit.fork(self._chunk, x[:2])
        second = torch.jit.fork(self._chunk, x[2:])
        return torch.cat([torch.jit.wait(first), torch.jit.wait(second)])


chunked_counter = fork_safe(ChunkedCounter(), x=ROWS)


def _chunked_counter_buggy(run: Run) -> bool:
    return int(run.module.seen.item()) != run.args[0].size(0) * len(run.outputs)


def _zero_seen(module: Any) -> None:
    module.seen.zero_()


# --- 9. read/write race on a module buffer used as scratch space by two heads ---------------------------------------


class ScratchHeads(nn.Module):
    """Two heads that share one scratch buffer to save an allocation."""

    def __init__(self):
        super().__init__()
        self.register_buffer("scratch", torch.zeros(8))

    def _head(self, x: Tensor, gain: float) -> Tensor:
        self.scratch.copy_(x * gain)
        return torch.tanh(self.scratch).sum()

    def forward(self, x: Tensor) -> Tensor:
        low = torch.jit.fork(self._head, x, 1.0)
        high = torch.jit.fork(self._head, x, 3.0)
        return torch.stack([torch.jit.wait(low), torch.jit.wait(high)])


scratch_heads = fork_safe(ScratchHeads(), x=VECTOR)


def _scratch_heads_buggy(run: Run) -> bool:
    x = run.args[0]
    expected = torch.stack([torch.tanh(x * 1.0).sum(), torch.tanh(x * 3.0).sum()])
    return any(not torch.equal(out, expected) for out in run.outputs)


# --- 10. a rare interleaving: a fast default write must not land after a slow refined one -------------------------


def _default(buf: Tensor, x: Tensor) -> Tensor:
    buf.copy_(x)
    return buf


def _refine(buf: Tensor, x: Tensor) -> Tensor:
    y = x
    for _ in range(16):
        y = y - 0.25 * torch.tanh(y)
    buf.copy_(y)
    return buf


@fork_safe(x=VECTOR)
def slow_refine(x: Tensor) -> Tensor:
    buf = torch.empty_like(x)
    quick = torch.jit.fork(_default, buf, x)  # a starting value ...
    refined = torch.jit.fork(_refine, buf, x)  # ... overwritten by the refined one, unless the default lands later
    torch.jit.wait(refined)
    torch.jit.wait(quick)
    return buf


def _slow_refine_buggy(run: Run) -> bool:
    y = run.args[0]
    for _ in range(16):
        y = y - 0.25 * torch.tanh(y)
    return any(not torch.equal(out, y) for out in run.outputs)


# --- 11. nested forks: a task forks the writer and returns; a sibling reads --------------------------------------


def _scale_into(buf: Tensor, x: Tensor) -> Tensor:
    buf.copy_(x * 3)
    return buf


def _launch(buf: Tensor, x: Tensor) -> Tensor:
    inner = torch.jit.fork(_scale_into, buf, x)
    return torch.jit.wait(inner)


@fork_safe(x=VECTOR)
def nested_writer(x: Tensor) -> Tensor:
    buf = torch.zeros_like(x)
    outer = torch.jit.fork(_launch, buf, x)
    reader = torch.jit.fork(_total, buf)  # the write happens two forks deep: often after this read
    torch.jit.wait(outer)
    return torch.jit.wait(reader)


def _nested_writer_buggy(run: Run) -> bool:
    expected = (run.args[0] * 3).sum()
    return any(not torch.equal(out, expected) for out in run.outputs)


# --- pure twins: the same programs with the ordering they need ------------------------------------------------------


@fork_safe(x=ROWS)
def local_update_in_order(x: Tensor) -> Tensor:
    """``local_lost_update`` with each update waited before the next starts."""
    acc = torch.zeros(1)
    first = torch.jit.fork(_accumulate, acc, x[0])
    torch.jit.wait(first)
    second = torch.jit.fork(_accumulate, acc, x[1])
    torch.jit.wait(second)
    return acc


def _embed_pure(x: Tensor, k: float) -> Tensor:
    return torch.tanh(x * k)


@fork_safe(x=VECTOR)
def append_in_order(x: Tensor) -> Tensor:
    """``append_order`` with the tasks returning their parts and the caller appending them in fork order."""
    futures = [torch.jit.fork(_embed_pure, x, 1.0), torch.jit.fork(_embed_pure, x, 2.0),
               torch.jit.fork(_embed_pure, x, 3.0)]
    parts: List[Tensor] = []
    for future in futures:
        parts.append(torch.jit.wait(future))
    return torch.cat(parts)


INPUT = ("input-mutation",)  # the serial run already shows a write to an input or a module: no schedule needed
MODULE = ("attribute-mutation",)

BUGS: List[SeededBug] = [
    SeededBug("read_before_write", "read/write race", "local tensor", read_before_write,
              lambda: [_ramp(8)], _read_before_write_buggy),
    SeededBug("overlapping_rows", "write/write race", "local tensor", overlapping_rows,
              lambda: [_ramp(5, 4)], _overlapping_rows_buggy),
    SeededBug("local_lost_update", "lost update", "local tensor", local_lost_update,
              lambda: [_ramp(5, 4)], _local_lost_update_buggy),
    SeededBug("rectify_input", "read/write race", "input tensor", rectify_input,
              lambda: [_ramp(8)], _rectify_input_buggy, INPUT,
              note="clamping is idempotent: a reader is wrong only if it reads before every instance's clamp"),
    SeededBug("count_hits", "lost update", "input tensor", count_hits,
              lambda: [_ramp(5, 4).neg(), torch.zeros(1, dtype=torch.int64)], _count_hits_buggy, INPUT),
    SeededBug("overlapping_out", "write/write race", "input tensor", overlapping_out,
              lambda: [_ramp(5, 4), torch.zeros(5, 4)], _overlapping_out_buggy, INPUT),
    SeededBug("append_order", "append order", "local list", append_order,
              lambda: [_ramp(8)], _append_order_buggy,
              note="unsynchronised appends to one c10::List from pool threads can also corrupt the heap"),
    SeededBug("chunked_counter", "lost update", "module buffer", chunked_counter,
              lambda: [_ramp(5, 4)], _chunked_counter_buggy, MODULE, reset=_zero_seen),
    SeededBug("scratch_heads", "read/write race", "module buffer", scratch_heads,
              lambda: [_ramp(8)], _scratch_heads_buggy, MODULE),
    SeededBug("slow_refine", "write/write race, rare", "local tensor", slow_refine,
              lambda: [_ramp(8)], _slow_refine_buggy,
              note="the fast task's one write must land after all 16 loop iterations of the slow task"),
    SeededBug("nested_writer", "read/write race, nested", "local tensor", nested_writer,
              lambda: [_ramp(8)], _nested_writer_buggy,
              note="the write is two forks deep: unperturbed, it lands after the read in nearly every run"),
]

#: Pure twins of two bugs: forkcheck must pass them.
PURE = {"local_lost_update": local_update_in_order, "append_order": append_in_order}
