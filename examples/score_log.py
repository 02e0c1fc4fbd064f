"""Scores appended to a list the caller passes in: unsafe (``input-mutation``).

Every forked task appends to the same list. On TorchScript's inter-op threads these are unsynchronised appends to
one shared list (entries can be lost or the list corrupted), and even when they all land, the order of the log
is the order the schedule happened to run the tasks in.
"""
from typing import List

from torch import Tensor

from forkcheck import fork_safe


@fork_safe
def score_and_log(logits: Tensor, log: List[float]) -> Tensor:
    """The mean confidence of a batch, recorded in ``log`` for monitoring."""
    score = logits.softmax(dim=-1).max(dim=-1).values.mean()
    log.append(float(score))
    return score
