"""Random feature dropping drawn from torch's default generator: unsafe (``global-mutation``).

``torch.rand`` advances the process-wide default generator. Forked tasks draw from it in whatever order the
schedule runs them, so which task gets which mask changes from run to run even after ``torch.manual_seed``, and
the generator state every later caller sees depends on the schedule too.
"""
import torch
from torch import Tensor

import strategies as fst
from forkcheck import fork_safe


@fork_safe(x=fst.tensors(shape=(4, 8)))
def random_mask(x: Tensor) -> Tensor:
    """Test-time augmentation: zero about one feature in ten."""
    keep = torch.rand(x.shape) >= 0.1
    return x * keep
