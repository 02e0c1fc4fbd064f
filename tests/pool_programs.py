"""Programs checked under several inter-op pool sizes (imported by child processes, so not a test module)."""
import torch
from torch import Tensor

import strategies as fst
from forkcheck import fork_safe


def _bump(acc: Tensor, x: Tensor) -> Tensor:
    for _ in range(x.numel()):
        seen = acc[0].item()
        acc[0] = seen + 1.0  # read, then write: a lost update when a sibling runs in between
    return acc


@fork_safe(x=fst.tensors(shape=(16,)))
def siblings(x: Tensor) -> Tensor:
    """Two sibling forks update one local tensor: they overlap only when the pool has a second thread."""
    acc = torch.zeros(1)
    first, second = torch.jit.fork(_bump, acc, x), torch.jit.fork(_bump, acc, x)
    torch.jit.wait(first)
    torch.jit.wait(second)
    return acc


@fork_safe(x=fst.tensors(shape=(4,)))
def pure(x: Tensor) -> Tensor:
    return torch.jit.wait(torch.jit.fork(torch.mul, x, 2)) + 1
