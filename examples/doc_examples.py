"""The two examples of the ``torch.jit.fork`` documentation, checked as written there: both are safe.

``bar`` forks ``foo`` and waits for it; ``Mod`` forks its submodule ``AddMod``. Every task only reads its inputs and
returns a new tensor, so running several of them at once on the same tensor cannot change anyone's result.
"""
import torch
from torch import Tensor, nn

from forkcheck import fork_safe


@fork_safe
def foo(a: Tensor, b: int) -> Tensor:
    """The forked function: a new tensor from its inputs, nothing written."""
    return a + b


@fork_safe
def bar(a: Tensor) -> Tensor:
    """Forks ``foo`` with a keyword argument and waits for its result."""
    fut: torch.jit.Future[Tensor] = torch.jit.fork(foo, a, b=2)
    return torch.jit.wait(fut)


class AddMod(nn.Module):
    def forward(self, a: Tensor, b: int) -> Tensor:
        return a + b


@fork_safe
class Mod(nn.Module):
    """Forks its submodule: a Module is forked through its ``forward``."""

    def __init__(self):
        super().__init__()
        self.mod = AddMod()

    def forward(self, input: Tensor) -> Tensor:
        fut = torch.jit.fork(self.mod, input, b=2)
        return torch.jit.wait(fut)
