"""Hypothesis strategies for the inputs of code checked by forkcheck, for ``import strategies as fst``.

A facade: they live in ``forkcheck.strategies``, which forkcheck itself uses, so a user's own module named
``strategies`` shadows only this name, never forkcheck's. Import ``forkcheck.strategies`` where it does.
"""
from forkcheck.strategies import (SPEC_HELP, InferenceError, SpecError, for_callable, from_spec, from_type, parse_input,
                                  tensors)

__all__ = ["InferenceError", "SPEC_HELP", "SpecError", "for_callable", "from_spec", "from_type", "parse_input",
           "tensors"]
