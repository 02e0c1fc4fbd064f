"""A feature pipeline with nested forks: a task that forks its own subtasks. Safe.

``describe_batch`` forks ``summarize`` and ``row_norms``; ``summarize`` in turn forks ``column_means`` and
``column_spread``. Every function builds new tensors from the batch it is given and never writes it, so the nesting
changes only the order of reads.
"""
import torch
from torch import Tensor

import strategies as fst
from forkcheck import fork_safe


def column_means(x: Tensor) -> Tensor:
    return x.mean(dim=0)


def column_spread(x: Tensor) -> Tensor:
    return x.max(dim=0).values - x.min(dim=0).values


def summarize(x: Tensor) -> Tensor:
    """Forks the two column statistics and concatenates them."""
    means = torch.jit.fork(column_means, x)
    spread = torch.jit.fork(column_spread, x)
    return torch.cat([torch.jit.wait(means), torch.jit.wait(spread)])


def row_norms(x: Tensor) -> Tensor:
    return torch.linalg.vector_norm(x, dim=1)


@fork_safe(x=fst.tensors(shape=(4, 6)))
def describe_batch(x: Tensor) -> Tensor:
    """Column statistics (computed by a nested fork) next to the row norms of the batch."""
    summary = torch.jit.fork(summarize, x)
    norms = torch.jit.fork(row_norms, x)
    return torch.cat([torch.jit.wait(summary), torch.jit.wait(norms)])
