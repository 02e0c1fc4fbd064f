"""Input strategies from short text specs, as ``forkcheck check --input`` takes them.

Grammar (``NAME=SPEC``; spaces are ignored):

- a tensor: ``DTYPE[SHAPE]``, DTYPE one of float16, bfloat16, float32, float64, int8, int16, int32, int64,
  uint8, bool; SHAPE comma-separated sizes, each ``N`` or a range ``LO..HI``; ``[]`` is a 0-dim tensor.
  ``float32[2,8]``, ``int64[3]``, ``float32[]``, ``float32[2,1..8]``.
- a Python value: ``int``, ``float``, ``bool``, ``str`` (the ranges inference uses), or ``int[LO..HI]``,
  ``float[LO..HI]``.
"""
from __future__ import annotations

import re

from hypothesis import strategies as st

from .inference import from_type
from .tensors import _NUMPY_DTYPES, tensors

__all__ = ["SpecError", "SPEC_HELP", "from_spec", "parse_input"]

SPEC_HELP = ("DTYPE[SHAPE] for a tensor (float32[2,8], int64[3], float32[] for 0-dim, float32[2,1..8] for a "
             "range of sizes), or int, float, bool, str, int[LO..HI], float[LO..HI] for a Python value")
DTYPES = {str(dtype).removeprefix("torch."): dtype for dtype in _NUMPY_DTYPES}
SCALARS = {"int": int, "float": float, "bool": bool, "str": str}
_SPEC = re.compile(r"(?P<kind>[a-z0-9]+)(?:\[(?P<inside>[^\[\]]*)\])?")
_NAME = re.compile(r"[A-Za-z_]\w*")


class SpecError(ValueError):
    """A spec does not follow the grammar; the message says what was expected."""


def parse_input(text: str) -> tuple[str, st.SearchStrategy]:
    """``NAME=SPEC`` -> the input's name and its strategy."""
    name, equals, spec = text.replace(" ", "").partition("=")
    if not equals or not _NAME.fullmatch(name):
        raise SpecError(f"{text!r} is not NAME=SPEC (e.g. x=float32[2,8]); SPEC is {SPEC_HELP}")
    try:
        return name, from_spec(spec)
    except SpecError as err:
        raise SpecError(f"{text!r}: {err}") from None


def from_spec(spec: str) -> st.SearchStrategy:
    """The strategy a spec such as ``float32[2,1..8]`` or ``int[0..5]`` stands for."""
    spec = spec.replace(" ", "")
    match = _SPEC.fullmatch(spec)
    if match is None:
        raise SpecError(f"cannot parse {spec!r}; expected {SPEC_HELP}")
    kind, inside = match["kind"], match["inside"]
    if kind in DTYPES and (inside is not None or kind != "bool"):
        if inside is None:
            raise SpecError(f"{spec!r} needs a shape, e.g. {kind}[2,8], or {kind}[] for a 0-dim tensor")
        sides = [_side(part, spec) for part in inside.split(",")] if inside else []
        return st.tuples(*sides).flatmap(lambda shape: tensors(dtype=DTYPES[kind], shape=shape))
    if kind in SCALARS:
        if inside is None:
            return from_type(SCALARS[kind])
        if kind in ("int", "float"):
            if ".." not in inside:
                raise SpecError(f"{spec!r}: {kind}[...] is a range of values, {kind}[LO..HI]; for a tensor write its "
                                f"dtype, e.g. {kind}{'64' if kind == 'int' else '32'}[{inside}]")
            lo, hi = _range(inside, spec, int if kind == "int" else float)
            return st.integers(lo, hi) if kind == "int" else st.floats(lo, hi)
        raise SpecError(f"{spec!r}: {kind} takes no range; write {kind}")
    raise SpecError(f"unknown type {kind!r} in {spec!r}; tensor dtypes are {', '.join(DTYPES)}, Python values "
                    f"{', '.join(SCALARS)}")


def _side(text: str, spec: str) -> st.SearchStrategy[int]:
    """One dimension: ``N`` or ``LO..HI`` sizes."""
    if ".." in text:
        lo, hi = _range(text, spec, int)
        if lo < 0:
            raise SpecError(f"{spec!r}: a size cannot be negative ({text})")
        return st.integers(lo, hi)
    if not text.isdigit():
        raise SpecError(f"{spec!r}: a size is a whole number N or a range LO..HI, not {text!r}")
    return st.just(int(text))


def _range(text: str, spec: str, kind: type) -> tuple:
    lo, dots, hi = text.partition("..")
    try:
        if not dots:
            raise ValueError
        lo, hi = kind(lo), kind(hi)
    except ValueError:
        raise SpecError(f"{spec!r}: expected a range LO..HI of {kind.__name__}s, e.g. "
                        f"{'0..5' if kind is int else '-1.0..1.0'}, not {text!r}") from None
    if lo > hi:
        raise SpecError(f"{spec!r}: the range {text} is empty ({lo} > {hi})")
    return lo, hi

