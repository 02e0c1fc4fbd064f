"""The input strategies: tensor shapes, dtypes, bounds and ownership; inference from annotations; its errors."""
from __future__ import annotations

import functools
import math
import re
import typing
from typing import Dict, List, Optional, Tuple

import numpy as np
import pytest
import torch
from hypothesis import Phase, find, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import strategies
from strategies import InferenceError, for_callable, from_type, tensors

quick = settings(max_examples=30, deadline=None)

FLOATS = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
INTS = [torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8]


def draws(strategy, n=20):
    """``n`` generated values (not shrunk ones) from one strategy."""
    seen = []

    @settings(max_examples=n, deadline=None, database=None, phases=[Phase.generate])
    @given(strategy)
    def collect(value):
        seen.append(value)

    collect()
    return seen


def is_owned(t: Tensor) -> bool:
    """Memory torch allocated itself (a numpy-backed storage cannot be resized) and no bigger than the tensor."""
    storage = t.untyped_storage()
    return storage.resizable() and storage.nbytes() == t.numel() * t.element_size()


# --- tensors ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOATS + INTS + [torch.bool])
@quick
@given(data=st.data())
def test_tensors_have_the_dtype_and_are_plain_owned_cpu_tensors(dtype, data):
    t = data.draw(tensors(dtype=dtype))
    assert t.dtype == dtype
    assert t.device.type == "cpu" and t.layout == torch.strided
    assert t.is_contiguous() and t._base is None and is_owned(t)
    assert not t.requires_grad
    assert 1 <= t.dim() <= 3 and all(1 <= side <= 5 for side in t.shape)


@quick
@given(t=tensors(shape=(4, 0, 3)), s=tensors(shape=()))
def test_fixed_shape_overrides_the_dims_and_sides(t, s):
    assert t.shape == (4, 0, 3)
    assert s.shape == ()


@quick
@given(t=tensors(min_dims=2, max_dims=4, min_side=2, max_side=3))
def test_dims_and_sides_stay_in_range(t):
    assert 2 <= t.dim() <= 4
    assert all(2 <= side <= 3 for side in t.shape)


@pytest.mark.parametrize("dtype", FLOATS)
@quick
@given(data=st.data())
def test_default_float_elements_are_finite_and_small(dtype, data):
    t = data.draw(tensors(dtype=dtype)).double()
    assert torch.isfinite(t).all()
    assert ((-10 <= t) & (t <= 10)).all()


@pytest.mark.parametrize("dtype", FLOATS)
@quick
@given(data=st.data())
def test_float_bounds_hold_even_when_the_dtype_cannot_represent_them(dtype, data):
    t = data.draw(tensors(dtype=dtype, elements_min=0.1, elements_max=0.3)).double()
    assert ((0.1 <= t) & (t <= 0.3)).all()


@pytest.mark.parametrize("dtype", INTS)
@quick
@given(data=st.data())
def test_int_elements_are_small_by_default_and_bounded_when_asked(dtype, data):
    t = data.draw(tensors(dtype=dtype))
    assert ((max(-10, torch.iinfo(dtype).min) <= t) & (t <= 10)).all()
    u = data.draw(tensors(dtype=dtype, elements_min=3, elements_max=4))
    assert ((3 <= u) & (u <= 4)).all()


def test_one_sided_bounds_keep_the_other_default():
    assert all(((t >= 5) & (t <= 10)).all() for t in draws(tensors(elements_min=5)))
    assert all(((t >= -10) & (t <= -5)).all() for t in draws(tensors(dtype=torch.int32, elements_max=-5)))


def test_all_bools_are_drawn():
    t = find(tensors(dtype=torch.bool, shape=(8,)), lambda t: t.any() and not t.all())
    assert t.dtype == torch.bool


def test_nan_and_infinity_only_when_allowed():
    nan = find(tensors(allow_nan=True), lambda t: t.isnan().any())
    inf = find(tensors(allow_infinity=True), lambda t: t.isinf().any())
    assert nan.isnan().any() and inf.isinf().any()
    assert not any(t.isnan().any() or t.isinf().any() for t in draws(tensors(dtype=torch.float16)))


@quick
@given(data=st.data())
def test_a_tensor_shares_memory_with_nothing_else(data):
    first, second = data.draw(tensors(shape=(3, 2))), data.draw(tensors(shape=(3, 2)))
    before = second.clone()
    first.add_(1).mul_(-1)
    assert torch.equal(second, before)
    assert first.untyped_storage().data_ptr() != second.untyped_storage().data_ptr()


def test_non_contiguous_tensors_are_drawn_when_allowed():
    t = find(tensors(contiguous=False, dtype=torch.int64), lambda t: not t.is_contiguous())
    assert not t.is_contiguous()
    assert ((-10 <= t) & (t <= 10)).all()
    assert t.untyped_storage().resizable()
    transposed = find(tensors(contiguous=False, min_dims=2), lambda t: t.dim() > 1 and t.stride(0) < t.stride(1))
    assert transposed.stride(0) < transposed.stride(1)
    strided = find(tensors(contiguous=False), lambda t: t.storage_offset() > 0)
    assert strided.storage_offset() > 0


@quick
@given(t=tensors(contiguous=False, dtype=torch.int64, shape=(2, 3, 4), elements_min=1, elements_max=2))
def test_non_contiguous_tensors_keep_the_shape_and_values_and_accept_writes(t):
    assert t.shape == (2, 3, 4) and t.device.type == "cpu"
    assert ((1 <= t) & (t <= 2)).all()
    copy = t.clone()
    t.add_(1)
    assert torch.equal(t, copy + 1)


@pytest.mark.parametrize("contiguous", [True, False])
@quick
@given(data=st.data())
def test_requires_grad_gives_leaves_that_take_gradients(contiguous, data):
    t = data.draw(tensors(requires_grad=True, contiguous=contiguous, dtype=torch.float64))
    assert t.requires_grad and t.is_leaf
    (t * 2).sum().backward()
    assert torch.equal(t.grad, torch.full_like(t, 2.0))


def test_default_tensors_are_contiguous_every_time():
    assert all(t.is_contiguous() and t._base is None for t in draws(tensors(), n=50))


@pytest.mark.parametrize(
    "kwargs, named",
    [
        ({"dtype": torch.complex64}, "dtype"),
        ({"dtype": np.float32}, "dtype"),
        ({"shape": (2, -1)}, "shape"),
        ({"shape": 3}, "shape"),
        ({"min_dims": -1}, "min_dims"),
        ({"min_dims": 3, "max_dims": 2}, "max_dims"),
        ({"max_dims": 33}, "max_dims"),
        ({"min_side": 1.5}, "min_side"),
        ({"min_side": 4, "max_side": 2}, "max_side"),
        ({"elements_min": 2, "elements_max": 1}, "elements_min"),
        ({"elements_min": 20}, "elements_min"),
        ({"elements_max": math.inf}, "elements_max"),
        ({"elements_max": 1e6, "dtype": torch.float16}, "elements_max"),
        ({"elements_min": 0.5, "dtype": torch.int32}, "elements_min"),
        ({"elements_max": 300, "dtype": torch.uint8}, "elements_max"),
        ({"elements_min": 0, "dtype": torch.bool}, "elements_min"),
        ({"elements_min": 0.1, "elements_max": 0.1, "dtype": torch.float16}, "elements_min"),
        ({"allow_nan": True, "dtype": torch.int64}, "allow_nan"),
        ({"allow_infinity": 1}, "allow_infinity"),
        ({"requires_grad": True, "dtype": torch.int64}, "requires_grad"),
        ({"contiguous": None}, "contiguous"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, named):
    with pytest.raises(ValueError, match=named):
        tensors(**kwargs)


# --- from_type ---------------------------------------------------------------------------------------------------


def test_scalars():
    assert all(isinstance(v, int) and -8 <= v <= 8 for v in draws(from_type(int)))
    assert all(isinstance(v, float) and math.isfinite(v) and abs(v) <= 10 for v in draws(from_type(float)))
    assert all(isinstance(v, bool) for v in draws(from_type(bool)))
    assert all(isinstance(v, str) and len(v) <= 8 for v in draws(from_type(str)))
    assert all(isinstance(t, Tensor) and t.is_contiguous() for t in draws(from_type(Tensor)))
    assert set(draws(from_type(None), n=3)) == {None}


@pytest.mark.parametrize("annotation", [List[int], list[int]])
def test_lists(annotation):
    values = draws(from_type(annotation))
    assert all(isinstance(v, list) and len(v) <= 4 and all(isinstance(x, int) for x in v) for v in values)


@pytest.mark.parametrize("annotation", [Tuple[Tensor, int], tuple[Tensor, int]])
def test_fixed_tuples(annotation):
    for v in draws(from_type(annotation)):
        assert isinstance(v, tuple) and len(v) == 2
        assert isinstance(v[0], Tensor) and isinstance(v[1], int) and not isinstance(v[1], bool)


@pytest.mark.parametrize("annotation", [Tuple[float, ...], tuple[float, ...]])
def test_variable_tuples(annotation):
    assert all(isinstance(v, tuple) and all(isinstance(x, float) for x in v) for v in draws(from_type(annotation)))
    assert len(find(from_type(annotation), lambda v: len(v) > 2)) == 3


def test_empty_tuple():
    assert set(draws(from_type(tuple[()]), n=2)) == {()}


@pytest.mark.slow
@pytest.mark.parametrize("annotation", [Dict[str, Tensor], dict[str, Tensor]])
def test_dicts(annotation):
    drawn = draws(from_type(annotation))
    for v in drawn:
        assert isinstance(v, dict) and len(v) <= 4
        assert all(isinstance(k, str) and isinstance(x, Tensor) for k, x in v.items())
    assert any(len(v) >= 2 for v in drawn)  # (``find`` shrank dicts of tensors for 10 s)


def test_int_keyed_dicts():
    assert find(from_type(Dict[int, bool]), lambda v: len(v) >= 2).keys() <= set(range(-8, 9))


@pytest.mark.parametrize("annotation", [Optional[int], int | None, typing.Union[None, int]])
def test_optional_draws_both(annotation):
    assert find(from_type(annotation), lambda v: v is None) is None
    assert isinstance(find(from_type(annotation), lambda v: v is not None), int)


def test_unions_and_annotated():
    assert isinstance(find(from_type(int | str), lambda v: isinstance(v, str)), str)
    assert isinstance(find(from_type(typing.Annotated[float, "unit"]), lambda v: True), float)


@pytest.mark.slow
def test_nested_containers():
    annotation = Dict[str, List[Optional[Tuple[Tensor, int]]]]
    value = find(from_type(annotation), lambda v: any(x is not None for xs in v.values() for x in xs))
    pair = next(x for xs in value.values() for x in xs if x is not None)
    assert isinstance(pair[0], Tensor) and isinstance(pair[1], int)


@pytest.mark.parametrize(
    "annotation, says",
    [
        (typing.Any, "not supported"),
        (np.ndarray, "numpy.ndarray"),
        (complex, "complex"),
        (list, "element types"),
        (typing.List, "element types"),
        (typing.Tuple, "element types"),
        (dict, "element types"),
        (Dict[Tensor, int], "keys"),
        (List[complex], "complex"),
        ("Tensor", "not supported"),
        ([int], "not supported"),
    ],
)
def test_unsupported_annotations_raise_inference_error(annotation, says):
    with pytest.raises(InferenceError, match=says) as info:
        from_type(annotation)
    assert info.value.parameter is None


# --- for_callable ------------------------------------------------------------------------------------------------


def scale(x: Tensor, k: int) -> Tensor:
    return x * k


def untyped(x: Tensor, k):
    return x * k


def with_defaults(x: Tensor, k=3, mode: complex = 1j, *, flag: bool = False):
    return x


def forward_ref(x: "Tensor", n: "Optional[int]"):
    return x


def unresolvable(x: "Nowhere"):  # noqa: F821
    return x


class Heads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = 2.0

    def forward(self, x: Tensor, heads: List[Tensor]) -> Tensor:
        return x * self.scale

    def method(self, k: int) -> int:
        return k


def draw_all(strategy_map):
    return draws(st.fixed_dictionaries(strategy_map), n=1)[0]


def test_inferred_from_annotations_in_parameter_order():
    found = for_callable(scale)
    assert list(found) == ["x", "k"]
    values = draw_all(found)
    assert isinstance(values["x"], Tensor) and isinstance(values["k"], int)


def test_explicit_strategies_win_over_annotations():
    found = for_callable(scale, {"k": st.just("explicit"), "x": tensors(shape=(4, 3))})
    values = draw_all(found)
    assert values["k"] == "explicit" and values["x"].shape == (4, 3)


def test_explicit_strategy_covers_an_unannotated_parameter():
    assert draw_all(for_callable(untyped, {"k": st.just(7)}))["k"] == 7


def test_defaults_fill_unannotated_and_unsupported_parameters():
    values = draw_all(for_callable(with_defaults))
    assert values["k"] == 3 and values["mode"] == 1j
    assert isinstance(values["flag"], bool)
    assert find(for_callable(with_defaults)["flag"], lambda v: v) is True


def test_string_annotations_are_resolved():
    values = draw_all(for_callable(forward_ref))
    assert isinstance(values["x"], Tensor) and (values["n"] is None or isinstance(values["n"], int))


@pytest.mark.parametrize("target", [Heads, Heads()], ids=["class", "instance"])
def test_modules_use_forward_without_self(target):
    found = for_callable(target)
    assert list(found) == ["x", "heads"]
    assert all(isinstance(t, Tensor) for t in draw_all(found)["heads"])


def test_bound_methods_partials_and_callable_objects():
    assert list(for_callable(Heads().method)) == ["k"]
    partial = for_callable(functools.partial(scale, k=2))
    assert list(partial) == ["x", "k"] and draw_all(partial)["k"] == 2

    class Halver:
        def __call__(self, y: float) -> float:
            return y / 2

    assert isinstance(draw_all(for_callable(Halver()))["y"], float)


def test_missing_annotation_names_the_parameter_the_callable_and_the_fix():
    with pytest.raises(InferenceError) as info:
        for_callable(untyped)
    message = str(info.value)
    assert info.value.parameter == "k"
    assert "parameter 'k' of untyped()" in message
    assert "no type annotation" in message
    assert "(k: int)" in message and "@fork_safe(k=st.integers(0, 10))" in message


def test_display_name_can_be_given():
    with pytest.raises(InferenceError, match="parameter 'k' of test_ops:untyped"):
        for_callable(untyped, what="test_ops:untyped")


def test_unsupported_annotation_names_the_parameter():
    def f(x: Tensor, z: complex):
        return x

    with pytest.raises(InferenceError, match=r"parameter 'z' of .*f\(\): annotation complex") as info:
        for_callable(f)
    assert info.value.parameter == "z" and "@fork_safe(z=" in str(info.value)


def test_unresolvable_annotation_names_the_parameter():
    with pytest.raises(InferenceError, match="parameter 'x' of unresolvable.*'Nowhere'") as info:
        for_callable(unresolvable)
    assert info.value.parameter == "x"


def test_unknown_explicit_names_are_listed_with_the_real_parameters():
    with pytest.raises(InferenceError) as info:
        for_callable(scale, {"y": st.just(1), "k": st.just(1), "z": st.just(2)})
    message = str(info.value)
    assert info.value.parameter == "y"
    assert "'y', 'z'" in message and "'x', 'k'" in message


def test_self_is_not_an_explicit_parameter_of_a_module_class():
    with pytest.raises(InferenceError, match="'self'"):
        for_callable(Heads, {"self": st.just(None)})


def star_args(x: Tensor, *args: Tensor):
    return x


def star_kwargs(x: Tensor, **kwargs: Tensor):
    return x


@pytest.mark.parametrize("target, name, shown", [(star_args, "args", "*args"), (star_kwargs, "kwargs", "**kwargs")])
def test_star_parameters_are_unsupported_even_when_given(target, name, shown):
    for explicit in [None, {name: st.just(())}]:
        with pytest.raises(InferenceError, match=f"parameter '{re.escape(shown)}' of .* is not supported") as info:
            for_callable(target, explicit)
        assert info.value.parameter == name


def test_explicit_values_must_be_strategies():
    with pytest.raises(InferenceError, match=r"parameter 'k' of scale\(\) is 5, not a Hypothesis strategy") as info:
        for_callable(scale, {"k": 5})
    assert info.value.parameter == "k" and "st.just(5)" in str(info.value)


def test_modules_without_forward_and_plain_classes_are_rejected():
    with pytest.raises(InferenceError, match="forward"):
        for_callable(nn.Module())
    with pytest.raises(InferenceError, match="not an nn.Module"):
        for_callable(dict)


# --- the package -------------------------------------------------------------------------------------------------


def test_the_facade_exports_exactly_the_public_names():
    # Identifiers only: pytest's assertion rewriting may add its own "@py_..." names to the package.
    public = {name for name in vars(strategies) if name.isidentifier() and not name.startswith("_")} - {"inference"}
    assert sorted(strategies.__all__) == sorted(public)
    assert callable(strategies.tensors) and issubclass(strategies.InferenceError, Exception)


@given(tensors(elements_min=100, elements_max=200))
def test_explicit_bounds_outside_the_default_range(t):
    assert bool(((t >= 100) & (t <= 200)).all())
