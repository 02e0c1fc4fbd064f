"""Snapshots: bitwise equality, what counts as a change of a tensor, container, object or module, and restoring."""
import math
import random
import threading
from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from forkcheck.oracles.mutation import GlobalWatch, ModuleWatch, referenced_globals
from forkcheck.state import (ContainerSnapshot, ModuleSnapshot, ObjectSnapshot, TensorSnapshot, bits_equal,
                             module_state, snapshot)

# -- bits_equal ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_nan_equals_the_same_nan_and_signed_zeros_differ(dtype):
    nan = torch.tensor([math.nan, 1.0], dtype=dtype)
    assert bits_equal(nan, nan.clone())
    assert not bits_equal(torch.tensor([0.0], dtype=dtype), torch.tensor([-0.0], dtype=dtype))
    assert not bits_equal(nan, torch.tensor([math.nan, 2.0], dtype=dtype))


def test_nans_with_other_bits_differ():
    nan = torch.tensor([math.nan])
    assert not bits_equal(nan, -nan)


@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.int8, torch.int32, torch.int64])
def test_integer_and_bool_tensors(dtype):
    a = torch.tensor([1, 0, 1], dtype=dtype)
    assert bits_equal(a, a.clone())
    assert not bits_equal(a, torch.tensor([1, 1, 1], dtype=dtype))


def test_dtype_and_shape_must_match():
    assert not bits_equal(torch.zeros(2), torch.zeros(2, dtype=torch.float64))
    assert not bits_equal(torch.zeros(2), torch.zeros(1, 2))
    assert bits_equal(torch.zeros(0, 3), torch.zeros(0, 3))


def test_complex_compares_both_parts_bitwise():
    a = torch.tensor([complex(0.0, math.nan)])
    assert bits_equal(a, a.clone())
    assert not bits_equal(torch.tensor([complex(0.0, 1.0)]), torch.tensor([complex(-0.0, 1.0)]))
    assert bits_equal(a.conj(), a.conj().resolve_conj())


def test_strided_views_compare_by_value():
    base = torch.arange(12.0).reshape(3, 4)
    assert bits_equal(base.t(), base.t().contiguous())
    assert bits_equal(base[:, ::2], torch.tensor([[0.0, 2.0], [4.0, 6.0], [8.0, 10.0]]))


def test_requires_grad_tensors_compare_without_autograd():
    a = torch.ones(2, requires_grad=True)
    assert bits_equal(a, torch.ones(2))


# -- tensors ------------------------------------------------------------------------------------------------------


def test_unchanged_tensor_has_no_changes():
    x = torch.randn(3)
    assert TensorSnapshot.take(x).changes(x) == []


def test_data_change_says_how_much_and_where():
    x = torch.zeros(4)
    snap = TensorSnapshot.take(x)
    x[2] = 5.0
    (change,) = snap.changes(x)
    assert "1 of 4 elements changed" in change and "index [2]" in change and "5" in change


def test_a_scalar_s_change_says_its_two_values():
    x, n = torch.tensor(0.0), torch.tensor(3)
    snaps = TensorSnapshot.take(x), TensorSnapshot.take(n)
    x.add_(1.5)
    n.add_(1)
    assert [snap.changes(t) for snap, t in zip(snaps, (x, n))] == [["changed from 0 to 1.5"], ["changed from 3 to 4"]]


def test_write_that_restores_the_values_is_still_a_change():
    x = torch.ones(3)
    snap = TensorSnapshot.take(x)
    x.mul_(2)
    x.div_(2)
    assert snap.changes(x) == ["was written in place (2 writes); on this input the values happen to end up the same"]


def test_sign_of_zero_is_a_change():
    x = torch.zeros(2)
    snap = TensorSnapshot.take(x)
    x.neg_()
    assert any("bits" in change for change in snap.changes(x))


def test_metadata_change_in_place():
    x = torch.zeros(2, 3)
    snap = TensorSnapshot.take(x)
    x.t_()
    (change,) = snap.changes(x)
    assert change.startswith("metadata changed from shape [2, 3]") and "shape [3, 2]" in change


def test_resize_and_requires_grad_are_metadata():
    x = torch.zeros(4)
    snap = TensorSnapshot.take(x)
    x.resize_(2)
    assert "metadata" in snap.changes(x)[0]
    y = torch.zeros(2)
    snap = TensorSnapshot.take(y)
    y.requires_grad_()
    assert "requires_grad=True" in snap.changes(y)[0]


def test_write_through_data_is_seen_by_value():
    x = torch.zeros(3)
    snap = TensorSnapshot.take(x)
    x.data.add_(1)  # no version bump
    assert "3 of 3 elements changed" in snap.changes(x)[0]


def test_new_storage_with_equal_values_is_a_change():
    x = torch.zeros(3)
    snap = TensorSnapshot.take(x)
    x.data = torch.zeros(3)
    assert snap.changes(x) == ["was given other storage (through .data or set_)"]


def test_rebinding():
    x = torch.zeros(2)
    snap = TensorSnapshot.take(x)
    assert snap.changes(x.clone()) == ["was rebound to an equal new tensor"]
    assert snap.changes(torch.ones(2)) == ["was rebound to another object"]
    assert snap.changes(3) == ["was rebound to another object"]


def test_inference_tensors_are_compared_by_value():
    with torch.inference_mode():
        x = torch.zeros(2)
    snap = TensorSnapshot.take(x)
    assert snap.changes(x) == []
    with torch.inference_mode():
        x.add_(1)
    assert snap.changes(x) == ["2 of 2 elements changed, first at index [0], largest absolute change 1"]
    snap.restore()
    assert snap.changes(x) == []


def test_tensor_restore_in_place_adds_no_write():
    x = torch.arange(6.0).reshape(2, 3)
    snap = TensorSnapshot.take(x)
    x.mul_(3)
    version = x._version
    assert snap.restore() is x and bits_equal(x, torch.arange(6.0).reshape(2, 3))
    assert x._version == version
    x.t_()
    snap.restore()
    assert x.shape == (2, 3) and bits_equal(x, torch.arange(6.0).reshape(2, 3))


def test_parameter_restore_keeps_the_parameter():
    p = nn.Parameter(torch.ones(2))
    snap = TensorSnapshot.take(p)
    with torch.no_grad():
        p.mul_(0.5)
    p.requires_grad_(False)
    assert snap.restore() is p
    assert p.requires_grad and bits_equal(p, torch.ones(2))


# -- containers and objects ---------------------------------------------------------------------------------------


def test_list_append_and_item_write():
    x = torch.zeros(2)
    items = [x, 1]
    snap = snapshot(items)
    items.append(3)
    assert snap.changes(items) == ["length changed from 2 to 3"]
    items.pop()
    x.add_(1)
    assert snap.changes(items)[0].startswith("[0] 2 of 2 elements changed")
    assert snap.changes(list(items)) == ["was rebound to another object"]


def test_dict_items_added_removed_and_replaced():
    table = {"a": 1, "b": torch.zeros(1)}
    snap = snapshot(table)
    table["c"] = 2
    del table["a"]
    table["b"] = torch.zeros(1)
    assert snap.changes(table) == ["key 'a' was removed", "key 'c' was added",
                                  "key 'b' was rebound to an equal new tensor"]


def test_dict_reordering_is_a_change():
    table = {"a": 1, "b": 2}
    snap = snapshot(table)
    table["a"] = table.pop("a")
    assert snap.changes(table)[0].startswith("keys were reordered")


def test_tuples_sets_and_nesting():
    inner = [1]
    value = (torch.zeros(1), inner, {3})
    snap = snapshot(value)
    inner.append(2)
    value[2].add(4)
    assert snap.changes(value) == ["[1] length changed from 1 to 2", "[2] changed from {3} to {3, 4}"]


def test_plain_values_compare_by_value_and_type():
    assert snapshot(1.0).changes(1.0) == []
    assert snapshot(math.nan).changes(math.nan) == []
    assert snapshot(1).changes(True) == ["changed from 1 to True"]
    assert snapshot("a").changes("b") == ["changed from 'a' to 'b'"]
    assert snapshot(None).changes(None) == []


def test_opaque_objects_compare_by_identity():
    lock = threading.Lock()
    assert snapshot(lock).changes(lock) == []
    assert snapshot(lock).changes(threading.Lock()) == ["was rebound to another object"]


@dataclass
class Stats:
    calls: int = 0
    seen: List[int] = None


def test_user_objects_compare_attribute_by_attribute():
    stats = Stats(seen=[])
    snap = snapshot(stats)
    assert isinstance(snap, ObjectSnapshot) and snap.changes(stats) == []
    stats.calls += 1
    stats.seen.append(1)
    stats.extra = True
    assert snap.changes(stats) == [".extra was added", ".calls changed from 0 to 1", ".seen length changed from 0 to 1"]
    snap.restore()
    assert vars(stats) == {"calls": 0, "seen": []}


def test_copied_containers_compare_by_contents():
    snap = snapshot([1, 2], copied=True)
    assert snap.changes([1, 2]) == []
    assert snap.changes([1, 3]) == ["[1] changed from 2 to 3"]
    assert snap.changes((1, 2)) == ["was rebound to another object"]


def test_restore_puts_contents_back_in_place():
    x = torch.zeros(2)
    items = [x, {"k": 1}]
    inner = items[1]
    snap = snapshot(items)
    x.add_(1)
    inner["k"] = 2
    items.append("new")
    assert snap.restore() is items
    assert items == [x, {"k": 1}] and items[1] is inner and bits_equal(x, torch.zeros(2))


def test_numpy_arrays_compare_by_bytes_and_restore():
    a = np.zeros(3)
    snap = snapshot(a)
    a[1] = 2.0
    assert snap.changes(a) == ["1 of 3 elements changed, first at index [1], largest absolute change 2"]
    assert snapshot(a).changes(a.copy()) == ["was rebound to another object"]
    snap.restore()
    assert snap.changes(a) == [] and a[1] == 0.0


def test_big_containers_are_compared_by_length():
    big = list(range(20_000))
    snap = snapshot(big)
    assert isinstance(snap, ContainerSnapshot) and snap.items is None
    big[0] = -1
    assert snap.changes(big) == []
    big.append(0)
    assert snap.changes(big) == ["length changed from 20000 to 20001"]


# -- modules ------------------------------------------------------------------------------------------------------


class Box:
    def __init__(self, value: int):
        self.value = value


class Stateful(nn.Module):
    seen: List[Tensor]

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 2)
        self.register_buffer("count", torch.zeros(1))
        self.calls = 0
        self.seen = []
        self.table: Dict[str, int] = {"a": 1}
        self.pair: Tuple[int, str] = (1, "x")
        self.box = Box(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x) + self.count + self.table["a"] + self.box.value


def test_module_state_lists_everything_by_path():
    state = module_state(Stateful())
    expected = {"linear", "linear.weight", "linear.bias", "linear.training", "count", "calls", "seen", "table",
                "pair", "box", "training"}
    assert expected <= state.keys()


def scripted_stateful() -> torch.jit.ScriptModule:
    torch.jit.script(Box)  # compiles the class its attribute has
    return torch.jit.script(Stateful())


def test_scripted_module_state_has_the_same_paths_except_submodules_and_constants():
    scripted = module_state(scripted_stateful()).keys()
    assert scripted == module_state(Stateful()).keys() - {"linear", "linear.in_features", "linear.out_features"}


def test_reading_a_scripted_module_state_twice_is_not_a_change():
    """Lists, dicts, tuples and objects of a scripted module are new copies on every read: not a rebinding."""
    module = scripted_stateful()
    snap = ModuleSnapshot.take(module)
    module(torch.ones(2))
    assert snap.changed() == {}


def test_eager_module_changes_by_path():
    module = Stateful()
    snap = ModuleSnapshot.take(module)
    module.calls += 1
    module.count.add_(1)
    module.seen.append(torch.ones(1))
    module.box.value = 2
    with torch.no_grad():
        module.linear.weight.zero_()
    module.eval()
    changed = snap.changed()
    assert set(changed) == {"calls", "count", "seen", "box", "linear.weight", "training", "linear.training"}
    assert changed["calls"] == ["changed from 0 to 1"]
    assert changed["box"] == [".value changed from 1 to 2"]


def test_replaced_submodule_is_one_change():
    module = Stateful()
    snap = ModuleSnapshot.take(module)
    module.linear = nn.Linear(2, 2)
    assert snap.changed() == {"linear": ["was rebound to another object"]}


def test_added_and_deleted_attributes():
    module = Stateful()
    snap = ModuleSnapshot.take(module)
    module.fresh = 1
    del module.calls
    assert snap.changed() == {"calls": ["was deleted"], "fresh": ["was added"]}
    snap.restore()
    assert module.calls == 0 and not hasattr(module, "fresh")


def test_eager_module_restore():
    module = Stateful()
    linear, weight = module.linear, module.linear.weight.detach().clone()
    snap = ModuleSnapshot.take(module)
    module.calls = 5
    module.seen.append(torch.ones(1))
    module.count.add_(3)
    with torch.no_grad():
        module.linear.weight.mul_(2)
    module.linear = nn.Linear(2, 2)
    snap.restore()
    assert module.linear is linear and bits_equal(module.linear.weight, weight)
    assert module.calls == 0 and module.seen == [] and bits_equal(module.count, torch.zeros(1))
    assert ModuleWatch(module).changed() == {}


class ScriptedCounter(nn.Module):
    seen: List[Tensor]

    def __init__(self):
        super().__init__()
        self.calls = 0
        self.seen = []
        self.register_buffer("total", torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        self.seen.append(x)
        self.total.add_(x.sum())
        return x


def test_scripted_module_changes_and_restore():
    module = torch.jit.script(ScriptedCounter())
    watch = ModuleWatch(module)
    module(torch.ones(2))
    changed = watch.changed()
    assert set(changed) == {"calls", "seen", "total"}
    assert changed["seen"] == ["length changed from 0 to 1"]
    watch.restore()
    assert module.calls == 0 and module.seen == [] and bits_equal(module.total, torch.zeros(1))
    assert watch.changed() == {}


# -- globals ------------------------------------------------------------------------------------------------------

COUNTER = 0
CACHE: Dict[int, Tensor] = {}
STATS = Stats(seen=[])
NORM = nn.BatchNorm1d(2)


def touch_everything(x: Tensor) -> Tensor:
    global COUNTER
    COUNTER += 1
    CACHE[len(CACHE)] = x
    STATS.calls += 1
    torch.manual_seed(3)
    return NORM(x)


def test_global_watch_sees_and_restores_globals_objects_modules_and_torch_state():
    rng, norm_mean = torch.get_rng_state(), NORM.running_mean.clone()
    watch = GlobalWatch(referenced_globals([touch_everything]))
    touch_everything(torch.randn(4, 2))
    changed = watch.changed()
    assert {f"{__name__}.COUNTER", f"{__name__}.CACHE", f"{__name__}.STATS", f"{__name__}.NORM",
            "torch default RNG"} <= changed.keys()
    assert changed[f"{__name__}.STATS"] == [".calls changed from 0 to 1"]
    watch.restore()
    assert COUNTER == 0 and CACHE == {} and STATS.calls == 0
    assert bits_equal(NORM.running_mean, norm_mean) and int(NORM.num_batches_tracked) == 0
    assert torch.equal(torch.get_rng_state(), rng)


def test_closure_cells_are_watched_and_restored():
    count = 0

    def bump() -> int:
        nonlocal count
        count += 1
        return count

    slots = referenced_globals([bump])
    assert f"{bump.__qualname__}.count" in slots
    watch = GlobalWatch(slots)
    bump()
    assert watch.changed() == {f"{bump.__qualname__}.count": ["changed from 0 to 1"]}
    watch.restore()
    assert count == 0


def test_grad_mode_is_watched_on_the_thread_that_ran_the_code():
    def switch_off() -> None:
        torch.set_grad_enabled(False)

    watch = GlobalWatch({})
    box = {}
    thread = threading.Thread(target=lambda: box.update(grad=(watch.run(switch_off), torch.is_grad_enabled())))
    thread.start()
    thread.join()
    assert box["grad"] == (None, True)  # put back on that thread
    assert watch.changed() == {"torch grad mode": ["changed from True to False"]}


def test_random_number_generators_are_watched_and_restored():
    generator = torch.Generator().manual_seed(1)
    snap = snapshot(generator)
    watch = GlobalWatch({})
    torch.rand(1, generator=generator)
    random.random()
    np.random.rand()
    assert snap.changes(generator) == ["was advanced (random numbers were drawn)"]
    assert watch.changed() == {name: ["was advanced (random numbers were drawn)"]
                               for name in ("Python default RNG", "numpy default RNG")}
    snap.restore()
    watch.restore()
    assert snap.changes(generator) == [] and watch.changed() == {}


def test_default_dtype_change_is_seen_and_restored():
    watch = GlobalWatch({})
    torch.set_default_dtype(torch.float64)
    try:
        assert watch.changed() == {"torch default dtype": ["changed from torch.float32 to torch.float64"]}
    finally:
        watch.restore()
    assert torch.get_default_dtype() == torch.float32


REGISTRY: Dict[str, int] = {}


class Recorder:
    def record(self, key: str) -> None:
        REGISTRY[key] = len(REGISTRY)


RECORDER = Recorder()


def _helper(x: Tensor) -> Tensor:
    RECORDER.record("helper")
    return x


def calls_a_helper(x: Tensor) -> Tensor:
    return _helper(x) * COUNTER


def test_referenced_globals_follow_functions_and_methods_of_user_objects():
    names = set(referenced_globals([calls_a_helper]))
    assert {f"{__name__}.COUNTER", f"{__name__}.RECORDER", f"{__name__}.REGISTRY"} <= names
    assert f"{__name__}._helper" in names  # followed into, and watched by its attributes (``_helper.calls += 1``)
    assert f"{__name__}.torch" not in names


def test_one_module_watch_serves_run_after_run_and_a_run_seen_clean_costs_no_new_snapshot():
    module = torch.nn.Linear(2, 2)
    watch = ModuleWatch(module)
    before = module.weight.detach().clone()
    assert watch.changed() == {}
    snapshot = watch.snapshot
    watch.restore(unchanged=True)
    assert watch.snapshot is snapshot  # nothing changed: the snapshot still holds
    with torch.no_grad():
        module.weight.add_(1.0)  # the next run writes
    assert "weight" in " ".join(watch.changed())
    watch.restore()
    assert torch.equal(module.weight, before) and watch.changed() == {}
    with torch.no_grad():
        module.bias.mul_(2.0)  # a run whose changes nobody asked for (it raised): a plain restore puts them back
    watch.restore()
    assert watch.changed() == {}
