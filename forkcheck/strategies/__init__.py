"""Hypothesis strategies for the inputs of code checked by forkcheck: tensors, and inference from annotations.

``tensors`` draws tensors; ``from_type`` maps one annotation to a strategy; ``for_callable`` gives every
parameter of a function or Module its strategy, and raises ``InferenceError`` naming any it cannot infer;
``parse_input`` reads a ``NAME=SPEC`` text such as ``x=float32[2,8]`` (the command line's ``--input``).
"""
from .inference import InferenceError, for_callable, from_type
from .specs import SPEC_HELP, SpecError, from_spec, parse_input
from .tensors import tensors

__all__ = ["InferenceError", "SPEC_HELP", "SpecError", "for_callable", "from_spec", "from_type", "parse_input",
           "tensors"]
