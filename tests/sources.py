"""Source text of small fork_safe programs, for the test files pytester writes."""
from __future__ import annotations

import textwrap

HEADER = """
import ctypes
import os
import re
import sys
import pytest
import torch
from torch import Tensor, nn
from hypothesis import strategies as st
import strategies as fst
from forkcheck import fork_safe
"""

SCALE = """
@fork_safe
def scale(x: Tensor) -> Tensor:
    return x * 2
"""

ADD_IN_PLACE = """
@fork_safe
def add_in_place(x: Tensor) -> Tensor:
    x.add_(1)
    return x
"""


def source(*parts: str) -> str:
    """A module: the imports every program needs, then ``parts``."""
    return textwrap.dedent(HEADER) + "".join(textwrap.dedent(part) for part in parts)
