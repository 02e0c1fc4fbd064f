"""Hypothesis strategies for the inputs of code checked by forkcheck: tensors, and inference from annotations.

``tensors`` draws tensors; ``from_type`` maps one annotation to a strategy; ``for_callable`` gives every
parameter of a function or Module its strategy, and raises ``InferenceError`` naming any it cannot infer.
"""
from .inference import InferenceError, for_callable, from_type
from .tensors import tensors

__all__ = ["InferenceError", "for_callable", "from_type", "tensors"]
