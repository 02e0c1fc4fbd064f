"""A BatchNorm in training mode forked on the two halves of a batch: unsafe (``attribute-mutation``).

In training mode ``BatchNorm1d`` updates its ``running_mean``, ``running_var`` and ``num_batches_tracked`` buffers
in place on every call. Both forked halves update the same buffers: concurrent read-modify-write updates can be lost,
and the order of the two momentum updates (which the schedule decides) changes the statistics the model keeps for
evaluation. (In ``eval()`` mode the buffers are only read and the split is safe.)
"""
import torch
from torch import Tensor, nn

import strategies as fst
from forkcheck import fork_safe


@fork_safe(x=fst.tensors(shape=(8, 4)))
class SplitBatchNorm(nn.Module):
    """Normalises each half of the batch in its own task, to use two threads."""

    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm1d(4)  # a new Module is in training mode

    def forward(self, x: Tensor) -> Tensor:
        first, second = x.chunk(2)
        f1 = torch.jit.fork(self.norm, first)
        f2 = torch.jit.fork(self.norm, second)
        return torch.cat([torch.jit.wait(f1), torch.jit.wait(f2)])
