"""The static pre-check: writes to shared inputs and module state are found on every branch, pure code passes."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest
import torch
from torch import Tensor, nn

from forkcheck._warnings import quiet_jit
from forkcheck.oracles.static import static_findings

# -- targets that write shared state (the line to blame is marked ``# W: tag``) ----------------------------------


def add_to_input(x: Tensor) -> Tensor:
    x.add_(1)  # W: add_
    return x * 2


def write_through_views(x: Tensor) -> Tensor:
    x[0].mul_(2)  # W: select
    x.view(-1).zero_()  # W: view
    return x.sum()


def add_out_into_input(a: Tensor, b: Tensor) -> Tensor:
    return torch.add(a, b, out=a)  # W: out


def append_to_input_list(xs: List[Tensor], x: Tensor) -> int:
    xs.append(x)  # W: append
    return len(xs)


def write_list_element(xs: List[Tensor]) -> Tensor:
    xs[0].add_(1)  # W: element
    return xs[0]


def set_input_dict_item(d: Dict[str, Tensor], x: Tensor) -> int:
    d["seen"] = x  # W: set_item
    return len(d)


def write_on_rare_branch(x: Tensor, k: int) -> Tensor:
    if k > 100:
        x.add_(1)  # W: rare
    return x + k


def write_containers_and_optionals(t: Tuple[Tensor, Tensor], o: Optional[Tensor], d: Dict[str, Tensor]) -> Tensor:
    t[0].add_(1)  # W: tuple
    if o is not None:
        o.mul_(2)  # W: optional
    for _, v in d.items():
        v.sub_(1)  # W: items
    return t[1]


def write_split_pieces(x: Tensor) -> Tensor:
    torch.split(x, 1)[0].zero_()  # W: split
    x.unbind(0)[1].mul_(3)  # W: unbind
    return x


def write_through_a_local_list(xs: List[Tensor], x: Tensor) -> Tensor:
    held: List[Tensor] = [x.clone()]
    for t in xs:
        held.append(t)
    held[-1].add_(1)  # W: held
    return held[0]


def write_detached(x: Tensor) -> Tensor:
    x.detach().zero_()  # W: detach
    return x


def write_converted(x: Tensor) -> Tensor:
    y = x.float()
    y.add_(1)  # W: to
    return y


def write_in_loop(x: Tensor) -> Tensor:
    for _ in range(3):
        x.add_(1)  # W: loop
    return x


def forked_writer(x: Tensor) -> Tensor:
    x.add_(1)  # W: forked
    return x * 2


def fork_a_writer(x: Tensor) -> Tensor:
    fut = torch.jit.fork(forked_writer, x)
    return torch.jit.wait(fut)


def fork_a_forker(x: Tensor) -> Tensor:
    fut = torch.jit.fork(fork_a_writer, x)
    return torch.jit.wait(fut)


class Counter(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1  # W: calls
        return x * 2


class Accumulator(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("buf", torch.zeros(3))

    def forward(self, x: Tensor) -> Tensor:
        self.buf.add_(x)  # W: buf
        return self.buf * 1


class ForksAccumulator(nn.Module):
    def __init__(self):
        super().__init__()
        self.acc = Accumulator()

    def forward(self, x: Tensor) -> Tensor:
        return torch.jit.wait(torch.jit.fork(self.acc, x))


class TrainingOnlyWrite(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("steps", torch.zeros(()))

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            self.steps.add_(1)  # W: training
        return x * 2


class ArmsItsOwnFlag(nn.Module):
    def __init__(self):
        super().__init__()
        self.armed = False
        self.register_buffer("hits", torch.zeros(()))

    def forward(self, x: Tensor) -> Tensor:
        torch.jit.wait(torch.jit.fork(self.arm, x))
        if self.armed:
            self.hits.add_(1)  # W: armed
        return x

    @torch.jit.export
    def arm(self, x: Tensor) -> Tensor:
        self.armed = True
        return x


# -- pure targets ------------------------------------------------------------------------------------------------


def add_to_clone(x: Tensor) -> Tensor:
    y = x.clone()
    y.add_(1)
    acc = [x.clone()]
    acc[0].mul_(2)
    return y + acc[0]


def rebind_then_write(x: Tensor) -> Tensor:
    x = x * 2
    x.add_(1)
    for _ in range(2):
        x = x + 1
        x.mul_(2)
    return x


def read_inputs(x: Tensor, xs: List[Tensor], d: Dict[str, Tensor]) -> Tensor:
    return x * 2 + x.sum() + xs[0] + d["a"]


def return_views(x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    return x[0], x.view(-1), x.t()


def build_list_locally(xs: List[Tensor]) -> Tensor:
    out: List[Tensor] = []
    for t in xs:
        out.append(t * 2)
    out[0].add_(1)
    return torch.stack(out)


def add_out_into_local(x: Tensor) -> Tensor:
    z = torch.empty_like(x)
    torch.add(x, x, out=z)
    return z


def pure_child(x: Tensor) -> Tensor:
    y = x * 2
    y.add_(1)
    return y


def fork_pure_children(x: Tensor) -> Tensor:
    futs = [torch.jit.fork(pure_child, x), torch.jit.fork(pure_child, x.clone().add_(1))]
    return torch.jit.wait(futs[0]) + torch.jit.wait(futs[1])


def fork_pure_forker(x: Tensor) -> Tensor:
    return torch.jit.wait(torch.jit.fork(fork_pure_children, x))


def _rows_of(x: Tensor) -> List[Tensor]:
    return list(x.unbind(0))


def append_to_lists_from_futures(x: Tensor) -> Tensor:
    """Each task's list holds views of ``x``; appending to the list writes the list, not ``x`` (the list of futures
    once held its futures' lists' elements as its own, so the append read as a write of ``x``)."""
    futures = [torch.jit.fork(_rows_of, x) for _ in range(2)]
    total = torch.zeros(3)
    for future in futures:
        rows = torch.jit.wait(future)
        rows.append(total)
        total = total + torch.stack(rows).sum(0)
    return total


def _same(x: Tensor) -> Tensor:
    return x


def write_what_a_future_of_a_list_gave(x: Tensor) -> Tensor:
    futures = [torch.jit.fork(_same, x) for _ in range(2)]
    for future in futures:
        torch.jit.wait(future).add_(1)  # at: through a future
    return x


def _input_and_scratch(x: Tensor) -> Tuple[Tensor, Tensor]:
    return x, torch.zeros_like(x)


def write_the_scratch_of_a_tuple(x: Tensor) -> Tensor:
    given, scratch = _input_and_scratch(x)  # a tuple's elements by index: the scratch is never x
    scratch.add_(given)
    return scratch


def write_the_input_of_a_tuple(x: Tensor) -> Tensor:
    given, scratch = _input_and_scratch(x)
    given.add_(scratch)
    return given


def _centre(x: Tensor, inplace: bool) -> Tensor:
    if not inplace:
        x = x.clone()
    x.sub_(x.mean())
    return x


def fork_with_a_false_flag(x: Tensor) -> Tensor:
    return torch.jit.wait(torch.jit.fork(_centre, x, False))


def fork_with_a_true_flag(x: Tensor) -> Tensor:
    return torch.jit.wait(torch.jit.fork(_centre, x, True))


class ModeSwitch(nn.Module):
    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode
        self.register_buffer("calib", torch.zeros(3))

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "calibrate":
            self.calib.add_(x.mean(0))
        return x - self.calib


class ReadsParameters(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 4)
        self.scale = nn.Parameter(torch.ones(4))

    def forward(self, x: Tensor) -> Tensor:
        return self.lin(x) * self.scale


# -- helpers -----------------------------------------------------------------------------------------------------


def script(target):
    with quiet_jit():
        return torch.jit.script(target)


def line(tag: str) -> str:
    """``test_static.py:N`` for the line marked ``# W: tag``."""
    lines = Path(__file__).read_text().splitlines()
    (number,) = [i for i, text in enumerate(lines, 1) if text.endswith(f"# W: {tag}")]
    return f"test_static.py:{number}"


def facts(findings):
    return {(f.kind, f.detail["name"], f.detail["op"]) for f in findings}


def at(findings, tag):
    return [f for f in findings if f.location.endswith(line(tag))]


# -- writes are found --------------------------------------------------------------------------------------------


def test_in_place_on_an_input_names_the_parameter_op_and_line():
    (finding,) = static_findings(script(add_to_input))
    assert (finding.kind, finding.detail, finding.tasks) == (
        "input-mutation", {"source": "static", "op": "aten::add_", "name": "x"}, [])
    assert finding.location.endswith(line("add_"))
    assert finding.message == f"x is written in place by aten::add_ at {finding.location}; every forked task shares it"


def test_writes_through_views_are_traced_back_to_the_input():
    findings = static_findings(script(write_through_views))
    assert facts(at(findings, "select")) == {("input-mutation", "x", "aten::mul_")}
    assert facts(at(findings, "view")) == {("input-mutation", "x", "aten::zero_")}
    assert len(findings) == 2


def test_out_variant_writes_its_out_argument_only():
    assert facts(static_findings(script(add_out_into_input))) == {("input-mutation", "a", "aten::add")}


def test_list_and_dict_inputs_changed_in_place():
    assert facts(static_findings(script(append_to_input_list))) == {("input-mutation", "xs", "aten::append")}
    assert facts(static_findings(script(write_list_element))) == {("input-mutation", "xs", "aten::add_")}
    assert facts(static_findings(script(set_input_dict_item))) == {("input-mutation", "d", "aten::_set_item")}


def test_write_on_a_branch_no_example_takes_is_still_found():
    scripted = script(write_on_rare_branch)
    x = torch.zeros(2)
    scripted(x, 3)
    assert x._version == 0  # no ordinary run reaches the write
    (finding,) = static_findings(scripted)
    assert facts([finding]) == {("input-mutation", "x", "aten::add_")}
    assert finding.location.endswith(line("rare"))


def test_elements_of_tuples_optionals_and_dict_items_are_the_input():
    findings = static_findings(script(write_containers_and_optionals))
    assert facts(at(findings, "tuple")) == {("input-mutation", "t", "aten::add_")}
    assert facts(at(findings, "optional")) == {("input-mutation", "o", "aten::mul_")}
    assert facts(at(findings, "items")) == {("input-mutation", "d", "aten::sub_")}


def test_pieces_of_split_and_unbind_are_views_of_the_input():
    findings = static_findings(script(write_split_pieces))
    assert facts(at(findings, "split")) == {("input-mutation", "x", "aten::zero_")}
    assert facts(at(findings, "unbind")) == {("input-mutation", "x", "aten::mul_")}


def test_an_input_stored_in_a_local_list_is_still_the_input():
    assert facts(static_findings(script(write_through_a_local_list))) == {("input-mutation", "xs", "aten::add_")}


def test_detach_shares_storage_so_its_write_counts():
    assert facts(static_findings(script(write_detached))) == {("input-mutation", "x", "aten::zero_")}


def test_conversion_that_may_return_its_input_is_reported_as_may():
    (finding,) = static_findings(script(write_converted))
    assert finding.detail["via"] == "aten::to"
    assert finding.message.startswith("x may be written in place by aten::add_")


def test_one_finding_per_site_and_stable_order():
    assert len(static_findings(script(write_in_loop))) == 1
    scripted = script(write_containers_and_optionals)
    first, second = static_findings(scripted), static_findings(scripted)
    assert first == second
    assert [f.location for f in first] == sorted((f.location for f in first), key=lambda s: int(s.rsplit(":")[1]))


def test_fork_inside_the_target_maps_the_subgraph_back_to_the_input():
    for target in (fork_a_writer, fork_a_forker):
        (finding,) = static_findings(script(target))
        assert facts([finding]) == {("input-mutation", "x", "aten::add_")}
        assert finding.location.endswith(line("forked"))


def test_an_input_handed_back_through_a_list_of_futures_is_still_the_input():
    (finding,) = static_findings(script(write_what_a_future_of_a_list_gave))
    assert facts([finding]) == {("input-mutation", "x", "aten::add_")}


def test_module_counter_rebinding_is_an_attribute_mutation():
    (finding,) = static_findings(script(Counter()))
    assert facts([finding]) == {("attribute-mutation", "calls", "prim::SetAttr")}
    assert finding.location.endswith(line("calls"))  # SetAttr has no source range of its own


def test_buffer_in_place_directly_and_through_a_forked_submodule():
    assert facts(static_findings(script(Accumulator()))) == {("attribute-mutation", "buf", "aten::add_")}
    (finding,) = static_findings(script(ForksAccumulator()))
    assert facts([finding]) == {("attribute-mutation", "acc.buf", "aten::add_")}
    assert finding.location.endswith(line("buf"))


def test_batch_norm_in_training_writes_running_stats_and_the_counter():
    bn = nn.BatchNorm1d(3)
    scripted = script(bn)
    assert facts(static_findings(scripted)) == {
        ("attribute-mutation", "num_batches_tracked", "aten::add_"),
        # aten::batch_norm's schema does not declare these writes; they happen all the same:
        ("attribute-mutation", "running_mean", "aten::batch_norm"),
        ("attribute-mutation", "running_var", "aten::batch_norm"),
    }
    before = scripted.running_mean.clone()
    scripted(torch.randn(4, 3))
    assert not torch.equal(before, scripted.running_mean)


def test_training_only_writes_follow_the_module_mode():
    assert static_findings(script(nn.BatchNorm1d(3).eval())) == []
    assert static_findings(script(TrainingOnlyWrite().eval())) == []
    assert facts(static_findings(script(TrainingOnlyWrite()))) == {("attribute-mutation", "steps", "aten::add_")}


def test_branches_decided_by_a_fork_s_constant_argument_or_a_str_attribute_and_eval_dropout_write_nothing():
    assert static_findings(script(fork_with_a_false_flag)) == []
    assert facts(static_findings(script(fork_with_a_true_flag))) == {("input-mutation", "x", "aten::sub_")}
    assert static_findings(script(ModeSwitch("infer"))) == []
    assert facts(static_findings(script(ModeSwitch("calibrate")))) == {("attribute-mutation", "calib", "aten::add_")}
    assert static_findings(script(nn.Dropout(0.1, inplace=True).eval()), ["input"]) == []
    assert facts(static_findings(script(nn.Dropout(0.1, inplace=True)), ["input"])) == {
        ("input-mutation", "input", "aten::dropout_")}


def test_a_tuple_s_elements_are_told_apart():
    assert static_findings(script(write_the_scratch_of_a_tuple)) == []
    assert facts(static_findings(script(write_the_input_of_a_tuple))) == {("input-mutation", "x", "aten::add_")}


def test_a_flag_that_forward_rebinds_is_not_taken_from_the_live_module():
    assert facts(static_findings(script(ArmsItsOwnFlag()))) == {
        ("attribute-mutation", "armed", "prim::SetAttr"), ("attribute-mutation", "hits", "aten::add_")}


# -- pure code passes --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [add_to_clone, rebind_then_write, read_inputs, return_views, build_list_locally,
                                    add_out_into_local, fork_pure_children, fork_pure_forker,
                                    append_to_lists_from_futures])
def test_pure_functions_have_no_findings(target):
    assert static_findings(script(target)) == []


@pytest.mark.parametrize("module", [ReadsParameters(), nn.Linear(3, 4), nn.LSTM(3, 4), nn.Dropout(0.5)],
                         ids=lambda m: type(m).__name__)
def test_modules_that_only_read_parameters_have_no_findings(module):
    assert static_findings(script(module)) == []


# -- the API -----------------------------------------------------------------------------------------------------


def test_param_names_rename_inputs_and_must_match():
    scripted = script(add_out_into_input)
    assert facts(static_findings(scripted, ["left", "right"])) == {("input-mutation", "left", "aten::add")}
    assert facts(static_findings(script(Accumulator()), ["self", "x"])) == {("attribute-mutation", "buf", "aten::add_")}
    with pytest.raises(ValueError, match="param_names"):
        static_findings(scripted, ["only_one"])


def test_the_users_graph_is_left_untouched():
    scripted = script(fork_a_writer)
    before = str(scripted.graph)
    static_findings(scripted)
    assert str(scripted.graph) == before
    assert "prim::CallFunction" in before  # the analysis inlined a copy, not the original


def test_unscripted_targets_are_rejected():
    with pytest.raises(TypeError, match="scripted"):
        static_findings(add_to_input)
