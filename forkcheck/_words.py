"""Counted nouns in messages: ``plural(1, "thread")`` is ``1 thread``, ``plural(2, "process", "processes")``."""
from __future__ import annotations


def plural(n: float, word: str, many: str = "") -> str:
    """``n word``, the word made plural (``many``, or with an ``s``) unless ``n`` is 1; ``2.0`` reads as ``2``."""
    n = int(n) if float(n).is_integer() else n
    return f"{n} {word if n == 1 else many or word + 's'}"
