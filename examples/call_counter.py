"""A classifier that counts its calls in a plain attribute: unsafe (``attribute-mutation``).

``self.calls += 1`` is a read, an add and a write of state every task shares (the same module instance). Tasks that
run at once on the inter-op pool read the same old count and write the same new one, so calls can be lost, and the
count a caller sees depends on the schedule. The model is checked in the call form, as a configured instance.
"""
from torch import Tensor, nn

import strategies as fst
from forkcheck import fork_safe


class CountingClassifier(nn.Module):
    """A linear classifier with a call counter for monitoring."""

    def __init__(self, features: int, classes: int):
        super().__init__()
        self.linear = nn.Linear(features, classes)
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        return self.linear(x).softmax(dim=-1)


counting_classifier = fork_safe(CountingClassifier(8, 3), x=fst.tensors(shape=(4, 8)))
