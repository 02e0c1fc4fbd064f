"""torch 2.13+ deprecates ``torch.jit.*``: silence exactly that warning, only where forkcheck calls it."""
from __future__ import annotations

import contextlib
import warnings

JIT_DEPRECATION = r"`torch\.jit\.\w+` is deprecated"


@contextlib.contextmanager
def quiet_jit():
    """Hide the ``torch.jit`` deprecation warning (any category) inside the block, nothing else."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=JIT_DEPRECATION)
        yield
