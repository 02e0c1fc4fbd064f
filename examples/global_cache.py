"""Positional encodings memoised in a module-level dict: unsafe (``global-mutation``).

The cache is global state shared by every task, filled with an unlocked check-then-insert: two tasks that miss at
once both build the table and one overwrites the other, and which task pays for the build depends on the schedule.
The global dict also keeps the function from scripting, so forkcheck runs it under its own scheduler (plain
``torch.jit.fork`` would run it inline and gain nothing; called from scripted code through ``torch.jit.ignore`` the
tasks would race on the dict for real).
"""
import math

import torch
from torch import Tensor

import strategies as fst
from forkcheck import fork_safe

_TABLES = {}  # (length, width) -> sinusoidal table


def positional_table(length: int, width: int) -> Tensor:
    key = (length, width)
    if key not in _TABLES:
        position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
        frequency = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width))
        table = torch.zeros(length, width)
        table[:, 0::2] = torch.sin(position * frequency)
        table[:, 1::2] = torch.cos(position * frequency)
        _TABLES[key] = table
    return _TABLES[key]


@fork_safe(x=fst.tensors(shape=(2, 5, 8)), examples=5)
def add_positions(x: Tensor) -> Tensor:
    """Adds sinusoidal position encodings to a (batch, length, width) sequence."""
    return x + positional_table(x.shape[1], x.shape[2])
