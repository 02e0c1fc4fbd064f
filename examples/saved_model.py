"""A deployed ensemble as a serving team gets it: a file written by ``torch.jit.save``, checked without its source.

``deployed_ensemble`` forks its classifier heads on one batch and averages their class probabilities: safe, each
task reads the batch and its own head's weights and returns a new tensor. ``monitored_ensemble`` is the same
ensemble with heads that count the batches they served, for a metrics endpoint: ``self.served += 1`` in a forked
head is a ``prim::SetAttr`` on a module every task shares, so concurrent calls lose counts (``attribute-mutation``).

Both are scripted, saved to a temporary file and loaded back with ``torch.jit.load``, as a deployment loads them;
nothing is left on disk. ``python examples/saved_model.py DIR`` writes the two files into DIR for the command line:
``forkcheck check DIR/monitored_ensemble.pt --input x=float32[4,8]``.
"""
import contextlib
import os
import sys
import tempfile
import warnings
from typing import List

import torch
from torch import Tensor, nn

import strategies as fst
from forkcheck import fork_safe

FEATURES, CLASSES, HEADS = 8, 3, 4


class Head(nn.Module):
    """One classifier head."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(FEATURES, 16), nn.ReLU(), nn.Linear(16, CLASSES))

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x).softmax(dim=-1)


class MonitoredHead(Head):
    """A head that counts the batches it served, for a metrics endpoint."""

    def __init__(self):
        super().__init__()
        self.served = 0

    def forward(self, x: Tensor) -> Tensor:
        self.served += 1
        return self.layers(x).softmax(dim=-1)


class Ensemble(nn.Module):
    """Forks every head on the same batch, waits for all, and averages their class probabilities."""

    def __init__(self, head: type = Head):
        super().__init__()
        self.heads = nn.ModuleList([head() for _ in range(HEADS)])

    def forward(self, x: Tensor) -> Tensor:
        futures: List[torch.jit.Future[Tensor]] = []
        for head in self.heads:
            futures.append(torch.jit.fork(head, x))
        return torch.stack([torch.jit.wait(future) for future in futures]).mean(dim=0)


@contextlib.contextmanager
def jit_warnings_hidden():
    """torch 2.13 deprecates ``torch.jit.*``; nothing else is hidden."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated")
        yield


def save(model: nn.Module, path: str) -> None:
    with jit_warnings_hidden():
        torch.jit.save(torch.jit.script(model), path)


def deployed(model: nn.Module) -> torch.jit.ScriptModule:
    """``model`` as a deployment gets it: scripted, saved to a temporary file and loaded back."""
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "model.pt")
        save(model, path)
        with jit_warnings_hidden():
            return torch.jit.load(path)


deployed_ensemble = fork_safe(deployed(Ensemble()), x=fst.tensors(shape=(4, FEATURES)))
monitored_ensemble = fork_safe(deployed(Ensemble(MonitoredHead)), x=fst.tensors(shape=(4, FEATURES)))


if __name__ == "__main__":
    directory = sys.argv[1] if len(sys.argv) > 1 else "."
    os.makedirs(directory, exist_ok=True)
    for name, model in (("ensemble", Ensemble()), ("monitored_ensemble", Ensemble(MonitoredHead))):
        save(model, os.path.join(directory, f"{name}.pt"))
        print(os.path.join(directory, f"{name}.pt"))
