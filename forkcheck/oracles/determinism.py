"""The nondeterminism oracle: do two outputs agree, bit for bit or within ``atol``/``rtol``?"""
from __future__ import annotations

import types
from typing import Any

import torch

from ..state import bits_equal, describe_tensor_diff


def differences(expected: Any, actual: Any, atol: float = 0.0, rtol: float = 0.0, path: str = "output") -> list[str]:
    """Where ``actual`` differs from ``expected``, one line per place: tensors (and numpy arrays), sequences, dicts,
    objects' attributes, plain values."""
    expected, actual = _as_tensor(expected), _as_tensor(actual)
    if isinstance(expected, torch.Tensor) or isinstance(actual, torch.Tensor):
        if not (isinstance(expected, torch.Tensor) and isinstance(actual, torch.Tensor)):
            return [f"{path}: {type(expected).__name__} vs {type(actual).__name__}"]
        if expected.shape != actual.shape or expected.dtype != actual.dtype:
            return [f"{path}: {expected.dtype}{list(expected.shape)} vs {actual.dtype}{list(actual.shape)}"]
        if atol == 0 and rtol == 0 or expected.dtype == torch.bool:
            same = bits_equal(expected, actual)
        else:
            same = torch.allclose(expected.detach(), actual.detach(), atol=atol, rtol=rtol, equal_nan=True)
        return [] if same else [f"{path}: {describe_tensor_diff(expected, actual)}"]
    if isinstance(expected, (list, tuple)) and isinstance(actual, (list, tuple)):
        if len(expected) != len(actual):
            return [f"{path}: length {len(expected)} vs {len(actual)}"]
        return [line for i, (e, a) in enumerate(zip(expected, actual))
                for line in differences(e, a, atol, rtol, f"{path}[{i}]")]
    if isinstance(expected, dict) and isinstance(actual, dict):
        if list(expected) != list(actual):
            return [f"{path}: keys {list(expected)} vs {list(actual)}"]
        return [line for key in expected
                for line in differences(expected[key], actual[key], atol, rtol, f"{path}[{key!r}]")]
    if type(expected) is type(actual) and _has_attributes(expected):
        return differences(vars(expected), vars(actual), atol, rtol, f"{path}.__dict__")
    if isinstance(expected, float) and isinstance(actual, float) and (atol or rtol):
        same = abs(expected - actual) <= atol + rtol * abs(actual) or (expected != expected and actual != actual)
    else:
        same = type(expected) is type(actual) and _plain_equal(expected, actual)
    return [] if same else [f"{path}: {expected!r} vs {actual!r}"]


def _as_tensor(value: Any) -> Any:
    """numpy arrays compare as tensors (bitwise, NaN-aware)."""
    if type(value).__module__ == "numpy" and type(value).__name__ == "ndarray":
        try:
            return torch.from_numpy(value.copy())
        except TypeError:  # dtypes torch has no equivalent for (strings, objects)
            return value
    return value


def _has_attributes(value: Any) -> bool:
    """Objects (dataclasses, plain classes) compare attribute by attribute: their ``==`` is identity or chokes on
    tensors."""
    return isinstance(getattr(value, "__dict__", None), dict) and not isinstance(
        value, (type, types.ModuleType, types.FunctionType, types.MethodType, torch.nn.Module))


def _plain_equal(expected: Any, actual: Any) -> bool:
    if expected is actual:
        return True
    try:
        return bool(expected == actual) or (expected != expected and actual != actual)
    except Exception:  # values whose comparison is elementwise or not defined
        return False
