"""The base of forkcheck's dispatch modes (the access log, the write locator, the eager engine's switch points)."""
from __future__ import annotations

from torch.utils._python_dispatch import TorchDispatchMode


class DispatchMode(TorchDispatchMode):
    """A ``TorchDispatchMode`` whose handler torch does not wrap in ``torch._dynamo.disable``: the wrapper imports
    dynamo on its first call (about 800 modules, 2 s and more: it was most of a session's start-up) and costs a few
    µs per op, and forkcheck's handlers are never compiled."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False
