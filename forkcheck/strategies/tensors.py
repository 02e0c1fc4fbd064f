"""Hypothesis strategies for CPU tensors, drawn as numpy arrays and copied into memory the tensor owns."""
from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np
import torch
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

__all__ = ["tensors"]

# bfloat16 has no numpy twin: its values are drawn as float32 (which holds every bfloat16 exactly) and cast.
_NUMPY_DTYPES = {
    torch.float16: np.float16,
    torch.float32: np.float32,
    torch.float64: np.float64,
    torch.bfloat16: np.float32,
    torch.int8: np.int8,
    torch.int16: np.int16,
    torch.int32: np.int32,
    torch.int64: np.int64,
    torch.uint8: np.uint8,
    torch.bool: np.bool_,
}
_FLOAT_WIDTHS = {torch.float16: 16, torch.float32: 32, torch.float64: 64, torch.bfloat16: 32}
# Small by default, so that arithmetic in the code under test neither overflows nor loses all precision.
_DEFAULT_FLOAT_BOUNDS = (-10.0, 10.0)
_DEFAULT_INT_BOUNDS = (-10, 10)
_LAYOUTS = ("contiguous", "transposed", "strided")


def tensors(
    *,
    dtype: torch.dtype = torch.float32,
    shape: tuple[int, ...] | st.SearchStrategy[tuple[int, ...]] | None = None,
    min_dims: int = 1,
    max_dims: int = 3,
    min_side: int = 1,
    max_side: int = 5,
    elements_min: float | None = None,
    elements_max: float | None = None,
    allow_nan: bool = False,
    allow_infinity: bool = False,
    requires_grad: bool = False,
    contiguous: bool = True,
) -> st.SearchStrategy[torch.Tensor]:
    """Strided CPU tensors that own their memory, with finite values in [-10, 10] unless told otherwise.

    A fixed ``shape``, or a strategy of shapes (``st.shared(...)`` of one gives several inputs the same shape),
    overrides the dims/side bounds. ``elements_min``/``elements_max`` bound the finite values;
    ``allow_nan``/``allow_infinity`` add NaN/±inf on top (float dtypes only). ``contiguous=False`` also draws
    transposed and step-sliced views of a larger tensor, which shrink towards the contiguous layout.
    """
    if dtype not in _NUMPY_DTYPES:
        supported = ", ".join(str(d) for d in _NUMPY_DTYPES)
        raise ValueError(f"dtype={dtype!r} is not supported; use one of {supported}")
    flags = {"allow_nan": allow_nan, "allow_infinity": allow_infinity, "requires_grad": requires_grad}
    for name, flag in {**flags, "contiguous": contiguous}.items():
        if not isinstance(flag, bool):
            raise ValueError(f"{name}={flag!r} must be a bool")
        if flag and name in flags and not dtype.is_floating_point:
            raise ValueError(f"{name}=True needs a floating point dtype, got dtype={dtype}")
    shapes = _shapes(shape, min_dims, max_dims, min_side, max_side)
    elements = _elements(dtype, elements_min, elements_max, allow_nan, allow_infinity)

    def owned_tensor(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array).to(dtype=dtype, copy=True)

    strategy = hnp.arrays(_NUMPY_DTYPES[dtype], shapes, elements=elements).map(owned_tensor)
    if not contiguous:
        strategy = _relayout(strategy)
    if requires_grad:
        strategy = strategy.map(_requiring_grad)
    return strategy


def _shapes(shape, min_dims, max_dims, min_side, max_side) -> st.SearchStrategy[tuple[int, ...]]:
    if isinstance(shape, st.SearchStrategy):
        return shape
    if shape is not None:
        if not isinstance(shape, (tuple, list)) or not all(_is_int(side) and side >= 0 for side in shape):
            raise ValueError(f"shape={shape!r} must be a tuple of non-negative ints")
        return st.just(tuple(int(side) for side in shape))
    for name, value in (("min_dims", min_dims), ("max_dims", max_dims), ("min_side", min_side), ("max_side", max_side)):
        if not _is_int(value) or value < 0:
            raise ValueError(f"{name}={value!r} must be a non-negative int")
    if max_dims < min_dims:
        raise ValueError(f"max_dims={max_dims} is smaller than min_dims={min_dims}")
    if max_dims > 32:
        raise ValueError(f"max_dims={max_dims} exceeds 32, the most dimensions numpy supports")
    if max_side < min_side:
        raise ValueError(f"max_side={max_side} is smaller than min_side={min_side}")
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side)


def _elements(dtype, lo, hi, allow_nan, allow_infinity) -> st.SearchStrategy:
    if dtype is torch.bool:
        for name, bound in (("elements_min", lo), ("elements_max", hi)):
            if bound is not None:
                raise ValueError(f"{name}={bound!r} does not apply to dtype=torch.bool")
        return st.booleans()
    if dtype.is_floating_point:
        lo, hi = _bounds(dtype, lo, hi, _DEFAULT_FLOAT_BOUNDS, Real, torch.finfo(dtype))
        lo, hi = _round_inwards(lo, hi, dtype)
        elements = st.floats(lo, hi, width=_FLOAT_WIDTHS[dtype])
        specials = [math.nan] * allow_nan + [math.inf, -math.inf] * allow_infinity
        return elements | st.sampled_from(specials) if specials else elements
    info = torch.iinfo(dtype)
    default = (max(_DEFAULT_INT_BOUNDS[0], info.min), _DEFAULT_INT_BOUNDS[1])
    lo, hi = _bounds(dtype, lo, hi, default, Integral, info)
    return st.integers(int(lo), int(hi))


def _bounds(dtype, lo, hi, default, kind, info) -> tuple:
    """Fill in the default bounds and check both lie in the dtype's range, finite and ordered."""
    for name, bound in (("elements_min", lo), ("elements_max", hi)):
        if bound is None:
            continue
        if isinstance(bound, bool) or not isinstance(bound, kind):
            raise ValueError(f"{name}={bound!r} must be {'an int' if kind is Integral else 'a real number'} for {dtype}")
        if not math.isfinite(bound):
            raise ValueError(f"{name}={bound!r} must be finite; use allow_nan/allow_infinity for special values")
        if not info.min <= bound <= info.max:
            raise ValueError(f"{name}={bound!r} is outside the range of {dtype} ({info.min}..{info.max})")
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"elements_min={lo!r} is greater than elements_max={hi!r}")
    if lo is not None and hi is None and lo > default[1]:
        raise ValueError(f"elements_min={lo!r} is above the default elements_max={default[1]!r}; pass elements_max too")
    if hi is not None and lo is None and hi < default[0]:
        raise ValueError(f"elements_max={hi!r} is below the default elements_min={default[0]!r}; pass elements_min too")
    return (default[0] if lo is None else lo), (default[1] if hi is None else hi)


def _round_inwards(lo: float, hi: float, dtype: torch.dtype) -> tuple[float, float]:
    """The closest bounds inside [lo, hi] that ``dtype`` represents exactly, so drawn values never round outside."""
    low = torch.tensor(lo, dtype=torch.float64).to(dtype)
    if low.item() < lo:
        low = torch.nextafter(low, torch.tensor(math.inf, dtype=dtype))
    high = torch.tensor(hi, dtype=torch.float64).to(dtype)
    if high.item() > hi:
        high = torch.nextafter(high, torch.tensor(-math.inf, dtype=dtype))
    if low.item() > high.item():
        raise ValueError(f"no {dtype} value lies between elements_min={lo!r} and elements_max={hi!r}")
    return low.item(), high.item()


@st.composite
def _relayout(draw, contiguous: st.SearchStrategy[torch.Tensor]) -> torch.Tensor:
    """The same values, possibly as a permuted or step-sliced view of a larger tensor that nothing else references."""
    t = draw(contiguous)
    layouts = _LAYOUTS if t.dim() else _LAYOUTS[:1]
    layout = draw(st.sampled_from(layouts))
    if layout == "transposed":
        order = draw(st.permutations(range(t.dim())))
        inverse = sorted(range(t.dim()), key=order.__getitem__)
        return t.permute(order).contiguous().permute(inverse)
    if layout == "strided":
        dim = draw(st.integers(0, t.dim() - 1))
        step = draw(st.integers(2, 3))
        start = draw(st.integers(0, step - 1))
        size = list(t.shape)
        size[dim] = size[dim] * step + start
        view = torch.zeros(size, dtype=t.dtype).narrow(dim, start, size[dim] - start)[
            (slice(None),) * dim + (slice(None, None, step),)
        ]
        return view.copy_(t)
    return t


def _requiring_grad(t: torch.Tensor) -> torch.Tensor:
    return t.requires_grad_(True)


def _is_int(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)
