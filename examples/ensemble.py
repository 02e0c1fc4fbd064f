"""An ensemble of small classifier heads run in parallel on one batch, averaged: safe.

The heads are independent: each forked task reads the shared input and its own head's weights and returns a new
tensor, so no task can see another's work, and any schedule gives the serial result bit for bit.
"""
from typing import List

import torch
from torch import Tensor, nn

import strategies as fst
from forkcheck import fork_safe

FEATURES, CLASSES, HEADS = 8, 3, 4


def head() -> nn.Module:
    return nn.Sequential(nn.Linear(FEATURES, 16), nn.ReLU(), nn.Linear(16, CLASSES))


@fork_safe(x=fst.tensors(shape=(4, FEATURES)))
class Ensemble(nn.Module):
    """Forks every head on the same input, waits for all, and averages their class probabilities."""

    def __init__(self):
        super().__init__()
        self.heads = nn.ModuleList([head() for _ in range(HEADS)])

    def forward(self, x: Tensor) -> Tensor:
        futures: List[torch.jit.Future[Tensor]] = []
        for h in self.heads:
            futures.append(torch.jit.fork(h, x))
        probabilities = [torch.jit.wait(future).softmax(dim=-1) for future in futures]
        return torch.stack(probabilities).mean(dim=0)
