"""Where a schedule's randomness comes from, for both engines.

On the real runtime tasks reach their points on pool threads in any order, so a draw is keyed by ``(seed, task,
step)`` (:func:`mix`, :func:`unit`), not taken from a shared stream: the same task at the same step makes the same
choice whatever order the threads come in. Under forkcheck's own scheduler one thread decides at a time, so a draw
is the next of a stream (:func:`as_draw`): a seeded ``random.Random``, or a ``choose(n)`` callable such as
Hypothesis data, which then shrinks and replays it.
"""
from __future__ import annotations

import random
from typing import Callable, Union

_MASK = (1 << 64) - 1

#: A stream of draws for the controlled scheduler: a ``random.Random``, a seed, or ``draw(n) -> int in [0, n)``.
Source = Union[random.Random, int, Callable[[int], int]]


def mix(*parts: int) -> int:
    """A 64-bit hash of integers (splitmix64 steps): independent draws keyed by seed, task and step."""
    h = 0x9E3779B97F4A7C15
    for part in parts:
        h = (h ^ (part & _MASK)) + 0x9E3779B97F4A7C15 & _MASK
        h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9 & _MASK
        h = (h ^ (h >> 27)) * 0x94D049BB133111EB & _MASK
        h ^= h >> 31
    return h


def unit(*parts: int) -> float:
    """A float in [0, 1) keyed by the parts."""
    return (mix(*parts) >> 11) / float(1 << 53)


def as_draw(source: Source) -> Callable[[int], int]:
    """``draw(n) -> int in [0, n)`` from a ``random.Random``, a seed, or such a callable."""
    if isinstance(source, random.Random):
        return source.randrange
    if isinstance(source, int) and not isinstance(source, bool):
        return random.Random(source).randrange
    if callable(source):
        return source
    raise TypeError(f"a source of randomness is a random.Random, a seed or a callable n -> [0, n); got {source!r}")
