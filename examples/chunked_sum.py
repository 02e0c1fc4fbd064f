"""Summing a batch chunk by chunk into one accumulator from parallel tasks: unsafe (``race``).

Each task adds its chunk's column sums to ``total``, a tensor the target made itself, by reading it and writing the
new value back. Inline (plain Python) the tasks run one after another and the sum is right; on the inter-op pool two
tasks can read the same old value and one chunk's contribution is lost. No input, attribute or global changes, so
only concurrency shows the bug: forkcheck reports the race on the first schedule, whether or not that run lost an
update.
"""
from typing import List

import torch
from torch import Tensor

import strategies as fst
from forkcheck import fork_safe


def add_chunk(total: Tensor, chunk: Tensor) -> Tensor:
    updated = total + chunk.sum(0)
    total.copy_(updated)
    return total


@fork_safe(batch=fst.tensors(shape=(8, 4)))
def chunked_sum(batch: Tensor) -> Tensor:
    """Column sums of ``batch``, four chunks in parallel."""
    total = torch.zeros(batch.shape[1])
    futures: List[torch.jit.Future[Tensor]] = []
    for chunk in batch.chunk(4):
        futures.append(torch.jit.fork(add_chunk, total, chunk))
    for future in futures:
        torch.jit.wait(future)
    return total
