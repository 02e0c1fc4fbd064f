"""Compiled TorchScript targets end to end: scripted, frozen, loaded, legacy and traced code, checked on the real
runtime; modules holding scripted submodules; marking errors that must not stop the collection."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
from hypothesis import strategies as st
from torch import Tensor, nn

import strategies as fst
from sources import SCALE, source

# Every compiled form, safe and unsafe. ``# <name>`` comments mark the lines findings must point at.
PROGRAMS = """
import warnings
warnings.filterwarnings("ignore", message=r"`torch\\.jit\\.\\w+` is deprecated")
warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
HERE = os.path.dirname(os.path.abspath(__file__))

def _neg(x: Tensor) -> Tensor:
    return -x

def _bump(x: Tensor) -> Tensor:
    x.add_(1)  # <bump>
    return x

def _acc(total: Tensor, x: Tensor) -> Tensor:
    total.add_(x)  # <acc>
    return total

@fork_safe
@torch.jit.script
def function_safe(x: Tensor, k: int) -> Tensor:
    f = torch.jit.fork(_neg, x)
    return torch.jit.wait(f) + x * k

@fork_safe
@torch.jit.script
def function_writes_input(x: Tensor) -> Tensor:
    f = torch.jit.fork(_bump, x)
    return torch.jit.wait(f)

@fork_safe
@torch.jit.script
def function_races(x: Tensor) -> Tensor:
    total = torch.zeros_like(x)
    a = torch.jit.fork(_acc, total, x)
    b = torch.jit.fork(_acc, total, x * 2)
    torch.jit.wait(a)
    torch.jit.wait(b)
    return total

class Heads(nn.Module):
    def __init__(self):
        super().__init__()
        self.heads = nn.ModuleList([nn.Linear(4, 4) for _ in range(2)])

    def forward(self, x: Tensor) -> Tensor:
        futures = [torch.jit.fork(head, x) for head in self.heads]
        return torch.stack([torch.jit.wait(f) for f in futures]).sum(0)

class Counter(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1  # <count>
        return x * 2

class Counting(nn.Module):
    def __init__(self):
        super().__init__()
        self.counter = Counter()

    def forward(self, x: Tensor) -> Tensor:
        f = torch.jit.fork(self.counter, x)
        return torch.jit.wait(f)

class Accumulating(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("total", torch.zeros(2, 4))

    def forward(self, x: Tensor) -> Tensor:
        self.total.add_(x)  # <total>
        return self.total * 1

class ForksAccumulating(nn.Module):
    def __init__(self):
        super().__init__()
        self.acc = Accumulating()

    def forward(self, x: Tensor) -> Tensor:
        f = torch.jit.fork(self.acc, x)
        return torch.jit.wait(f)

class WritesInput(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        f = torch.jit.fork(_bump, x)
        return torch.jit.wait(f)

ROWS = fst.tensors(shape=(2, 4))
module_safe = fork_safe(torch.jit.script(Heads()), x=ROWS)
module_counts = fork_safe(torch.jit.script(Counting()))
frozen_safe = fork_safe(torch.jit.freeze(torch.jit.script(Heads()).eval()), x=ROWS)
frozen_writes_input = fork_safe(torch.jit.freeze(torch.jit.script(WritesInput()).eval()))
frozen_writes_buffer = fork_safe(torch.jit.freeze(torch.jit.script(ForksAccumulating()).eval()), x=ROWS)

torch.jit.save(torch.jit.script(Heads()), os.path.join(HERE, "heads.pt"))
torch.jit.save(torch.jit.script(Counting()), os.path.join(HERE, "counting.pt"))
loaded_safe = fork_safe(torch.jit.load(os.path.join(HERE, "heads.pt")), x=ROWS)
loaded_counts = fork_safe(torch.jit.load(os.path.join(HERE, "counting.pt")))

class LegacyScaled(torch.jit.ScriptModule):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3))

    @torch.jit.script_method
    def forward(self, x):
        f = torch.jit.fork(torch.mul, x, self.scale)
        return torch.jit.wait(f) + x

@fork_safe
class LegacyRaces(torch.jit.ScriptModule):
    @torch.jit.script_method
    def forward(self, x):
        total = torch.zeros_like(x)
        a = torch.jit.fork(_acc, total, x)
        b = torch.jit.fork(_acc, total, x * 2)
        torch.jit.wait(a)
        torch.jit.wait(b)
        return total

@fork_safe(x=fst.tensors(shape=(2, 3)))
class LegacyClassSafe(torch.jit.ScriptModule):
    @torch.jit.script_method
    def forward(self, x):
        f = torch.jit.fork(torch.neg, x)
        return torch.jit.wait(f) * 2

legacy_instance_safe = fork_safe(LegacyScaled(), x=fst.tensors(shape=(3,)))

def _two_negations(x):
    a = torch.jit.fork(torch.neg, x)
    b = torch.jit.fork(torch.neg, x * 2)
    return torch.jit.wait(a) + torch.jit.wait(b)

class _WritesInputEagerly(nn.Module):
    def forward(self, x):
        f = torch.jit.fork(_bump, x)
        return torch.jit.wait(f)

# check_trace=False: checking a trace runs its forks, which would fix this process's inter-op pool size at import
traced_safe = fork_safe(torch.jit.trace(_two_negations, torch.ones(3), check_trace=False))
traced_writes_input = fork_safe(torch.jit.trace(_WritesInputEagerly(), torch.ones(3), check_trace=False))
"""

SAFE = ("function_safe", "module_safe", "frozen_safe", "loaded_safe", "legacy_instance_safe", "LegacyClassSafe",
        "traced_safe")
# unsafe target -> (the finding kind it must show, the marked line it must point at)
UNSAFE = {
    "function_writes_input": ("input-mutation", "bump"),
    "function_races": ("race", "acc"),
    "module_counts": ("attribute-mutation", "count"),
    "frozen_writes_input": ("input-mutation", "bump"),
    "frozen_writes_buffer": ("race", "total"),  # a buffer folded into the graph, written all the same
    "loaded_counts": ("attribute-mutation", "count"),
    "LegacyRaces": ("race", "acc"),
    "traced_writes_input": ("input-mutation", None),  # a traced fork's ops keep no line of the user's: the graph
}


def _line(path, mark: str) -> int:
    """The line of the file ``path`` that carries the ``# <mark>`` comment."""
    lines = path.read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if f"# <{mark}>" in line)


@pytest.fixture
def checked(fc, pytester: pytest.Pytester):
    """Every compiled form checked once by the plugin (one pool size: a child process for all of them)."""
    path = pytester.makepyfile(test_compiled_forms=source(PROGRAMS))
    result = fc.run("--forkcheck-seed", "7", "--forkcheck-pool-sizes", "2")
    return result, fc.rows(), path


@pytest.mark.slow
def test_every_compiled_form_is_checked_on_the_real_runtime(checked) -> None:
    result, rows, path = checked
    result.assert_outcomes(passed=len(SAFE), failed=len(UNSAFE))
    for name in (*SAFE, *UNSAFE):
        row = rows[f"test_compiled_forms.py::{name}"]
        assert row["engine"] == "script", (name, row["engine_reason"], row["error"])
        assert row["target"] == f"test_compiled_forms:{name}"
    for name in SAFE:
        assert rows[f"test_compiled_forms.py::{name}"]["verdict"] == "pass", name
    for name, (kind, mark) in UNSAFE.items():
        row = rows[f"test_compiled_forms.py::{name}"]
        assert row["verdict"] == "fail", name
        finding = next(f for f in row["findings"] if f["kind"] == kind)
        where = f"test_compiled_forms.py:{_line(path, mark)}" if mark else "_WritesInputEagerly.forward"
        assert finding["location"].endswith(where), (name, finding)
        assert finding["replay"].startswith("fc1."), name
    folded = rows["test_compiled_forms.py::frozen_writes_buffer"]["findings"]  # named as the buffer it was
    assert {f["kind"] for f in folded} >= {"attribute-mutation", "race"}, folded  # the first by the static pre-check
    assert all(f["message"].startswith(("self.total (a tensor constant", "race on self.total (a tensor constant"))
               for f in folded if f["kind"] in ("attribute-mutation", "race")), folded


@pytest.mark.slow
@pytest.mark.parametrize("name", ["function_writes_input", "module_counts", "function_races", "loaded_counts"])
def test_a_compiled_target_s_replay_token_reproduces_its_failure(fc, pytester, name) -> None:
    pytester.makepyfile(test_compiled_forms=source(PROGRAMS))
    fc.run("--forkcheck-seed", "7", "--forkcheck-pool-sizes", "2", "-k", name).assert_outcomes(failed=1)
    kind = UNSAFE[name][0]
    finding = next(f for f in fc.rows()[f"test_compiled_forms.py::{name}"]["findings"] if f["kind"] == kind)
    fc.run(f"test_compiled_forms.py::{name}", "--forkcheck-replay", finding["replay"]).assert_outcomes(failed=1)
    row = fc.rows()[f"test_compiled_forms.py::{name}"]["replay_run"]  # the replay, beside the row it replays
    assert row["engine"] == "script"
    assert row["stats"]["replays"]["reproduced"] == row["stats"]["replays"]["runs"] == 10
    assert kind in {f["kind"] for f in row["findings"]}


@pytest.mark.slow
def test_a_race_in_compiled_code_shows_under_every_pool_size(fc, pytester) -> None:
    pytester.makepyfile(test_compiled_forms=source(PROGRAMS))
    fc.run("--forkcheck-seed", "7", "--forkcheck-pool-sizes", "1,2", "-k", "function_races").assert_outcomes(failed=1)
    row = fc.rows()["test_compiled_forms.py::function_races"]
    race = next(f for f in row["findings"] if f["kind"] == "race")
    assert race["detail"]["pool_sizes"] == [1, 2], (row["stats"]["pool_sizes"], row["findings"])
    assert set(row["stats"]["pool_sizes"]) == {"1", "2"}


# -- without pytest ----------------------------------------------------------------------------------------------


def _bump(x: Tensor) -> Tensor:
    x.add_(1)
    return x


class _Counter(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0
        self.register_buffer("seen", torch.zeros(3))

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        self.seen.add_(x)
        return x * 2


class _Counting(nn.Module):
    def __init__(self):
        super().__init__()
        self.counter = _Counter()

    def forward(self, x: Tensor) -> Tensor:
        f = torch.jit.fork(self.counter, x)
        return torch.jit.wait(f)


def _script(obj):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated")
        return torch.jit.script(obj)


def test_the_user_s_compiled_object_is_never_changed() -> None:
    import forkcheck

    model = forkcheck.fork_safe(_script(_Counting()), x=fst.tensors(shape=(3,)))
    graph, code, state = str(model.graph), model.code, copy.deepcopy(model.state_dict())
    result = forkcheck.check(model, seed=1, examples=2, schedules=2)
    assert result.verdict == "fail" and result.engine == "script"
    kinds = {(f.kind, f.detail["name"]) for f in result.findings}
    assert {("attribute-mutation", "counter.calls"), ("attribute-mutation", "counter.seen")} <= kinds
    assert str(model.graph) == graph and model.code == code
    assert model.counter.calls == 0
    assert all(torch.equal(state[key], value) for key, value in model.state_dict().items())


def test_the_serial_reference_runs_the_forks_one_at_a_time_in_program_order() -> None:
    from forkcheck.compiled import serial_program

    order = _script(_records_order)
    program = serial_program(order)
    for _ in range(5):
        assert program(None, torch.zeros(1)) == [0, 1, 2, 3]
    assert "prim::fork" in str(order.graph)  # built from a copy of the graph


def _append(out: list[int], i: int) -> Tensor:
    out.append(i)
    return torch.zeros(1)


def _append_twice(out: list[int], i: int) -> Tensor:
    inner = torch.jit.fork(_append, out, i)
    torch.jit.wait(inner)
    out.append(i + 1)
    return torch.zeros(1)


def _records_order(x: Tensor) -> list[int]:
    out: list[int] = []
    a = torch.jit.fork(_append_twice, out, 0)
    b = torch.jit.fork(_append_twice, out, 2)
    torch.jit.wait(b)
    torch.jit.wait(a)
    return out


def _mixed(x: Tensor, k: int, ws: list[float], named: dict[str, Tensor], scale: float | None,
           pair: tuple[int, str], flag: bool = True) -> Tensor:
    return x * k


def test_inputs_are_inferred_from_the_torchscript_schema() -> None:
    from hypothesis import given

    scripted = _script(_mixed)
    strategies = fst.for_callable(scripted)
    assert list(strategies) == ["x", "k", "ws", "named", "scale", "pair", "flag"]

    @given(st.fixed_dictionaries(strategies))
    def drawn(inputs):
        assert isinstance(inputs["x"], Tensor) and isinstance(inputs["k"], int) and isinstance(inputs["flag"], bool)
        assert all(isinstance(w, float) for w in inputs["ws"]) and isinstance(inputs["pair"], tuple)
        assert all(isinstance(k, str) and isinstance(v, Tensor) for k, v in inputs["named"].items())
        assert inputs["scale"] is None or isinstance(inputs["scale"], float)
        scripted(**inputs)  # what was drawn is what the schema takes

    drawn()


def test_a_module_s_self_is_never_an_input_and_explicit_strategies_win() -> None:
    explicit = fst.tensors(shape=(3,))
    strategies = fst.for_callable(_script(_Counting()), {"x": explicit})
    assert strategies == {"x": explicit}


def test_a_traced_graph_s_inputs_keep_the_traced_dtype_and_shape() -> None:
    from hypothesis import find

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore")
        traced = torch.jit.trace(_two_negations, torch.ones(2, 5, dtype=torch.float64))
    drawn = find(fst.for_callable(traced)["x"], lambda t: True)
    assert drawn.shape == (2, 5) and drawn.dtype == torch.float64


def _two_negations(x):
    a = torch.jit.fork(torch.neg, x)
    return torch.jit.wait(a) * 2


def _on_device(x: Tensor, device: torch.device) -> Tensor:
    return x.to(device)


def test_an_input_type_that_cannot_be_inferred_is_an_error_naming_the_parameter_and_the_fix() -> None:
    import forkcheck

    result = forkcheck.check(_script(_on_device), seed=1)
    assert result.verdict == "error"
    assert "setup error" in result.error and "'device'" in result.error and "device=" in result.error


def test_strategies_for_a_parameter_the_compiled_target_lacks_are_a_mark_error() -> None:
    from forkcheck import MarkError, fork_safe

    with pytest.raises(MarkError, match="'y'.*parameters are \\['x'\\]"):
        fork_safe(_script(_Counting()), y=fst.tensors())


# -- modules holding scripted submodules ---------------------------------------------------------------------------


class _Sub(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * 3


class _HoldsScripted(nn.Module):
    """An eager module whose submodule is scripted: torch caches the scripted methods in its ``__dict__``."""

    def __init__(self):
        super().__init__()
        self.sub = _script(_Sub())

    def forward(self, x: Tensor) -> Tensor:
        f = torch.jit.fork(self.sub, x)
        return torch.jit.wait(f) + 1


def test_torch_s_method_cache_of_a_scripted_submodule_is_not_module_state() -> None:
    import forkcheck
    from forkcheck.state import ModuleSnapshot, module_state

    model = _HoldsScripted()
    snapshot = ModuleSnapshot.take(model)
    model(torch.ones(3))  # the first call caches ``sub.forward``
    assert snapshot.changed() == {}
    assert not any(path.endswith("forward") for path in module_state(model))
    result = forkcheck.check(forkcheck.fork_safe(model, x=fst.tensors(shape=(3,))), seed=1, examples=3, schedules=2)
    assert result.verdict == "pass", [f.message for f in result.findings] or result.error


def test_a_scripted_submodule_s_attributes_are_still_watched() -> None:
    from forkcheck.state import ModuleSnapshot

    model = nn.Module()
    model.counting = _script(_Counting())
    snapshot = ModuleSnapshot.take(model)
    model.counting(torch.ones(3))
    assert set(snapshot.changed()) == {"counting.counter.calls", "counting.counter.seen"}


class _CountsCalls(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("count", torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        self.count += 1  # an assignment: freezing folds the buffer and keeps the write
        return x * self.count


class _ForksCounting(nn.Module):
    def __init__(self):
        super().__init__()
        self.counter = _CountsCalls()

    def forward(self, x: Tensor) -> Tensor:
        return torch.jit.wait(torch.jit.fork(self.counter, x))


def test_a_frozen_module_s_folded_buffer_is_put_back_after_every_run() -> None:
    """Every copy of a frozen graph shares its constants, the user's object too: the check leaves it as it was."""
    import forkcheck

    class Accumulates(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("total", torch.zeros(3))

        def forward(self, x: Tensor) -> Tensor:
            return self.total.add_(x) * 1

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated")
        frozen = torch.jit.freeze(torch.jit.script(_Forks(Accumulates()).eval()))
    result = forkcheck.check(forkcheck.fork_safe(frozen, x=fst.tensors(shape=(3,))), seed=2, examples=5)
    assert result.verdict == "fail" and "attribute-mutation" in [f.kind for f in result.findings], result.error
    assert torch.equal(frozen(torch.zeros(3)), torch.zeros(3))  # the buffer holds zeros still


class _Forks(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        return torch.jit.wait(torch.jit.fork(self.inner, x))


def test_a_frozen_module_that_assigns_a_folded_buffer_is_a_setup_error_naming_the_fix() -> None:
    """torch.jit.freeze leaves a module whose calls raise: running its graph as the serial reference crashed the
    checking process. With the attribute kept, the write is found."""
    import forkcheck

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated")
        broken = torch.jit.freeze(torch.jit.script(_ForksCounting().eval()))
        kept = torch.jit.freeze(torch.jit.script(_ForksCounting().eval()), preserved_attrs=["counter.count"])
    with pytest.raises(RuntimeError, match="does not have an attribute with name 'count'"):
        broken(torch.ones(3))  # torch's own doing
    result = forkcheck.check(forkcheck.fork_safe(broken, x=fst.tensors(shape=(3,))), seed=1, examples=2)
    assert result.verdict == "error" and result.error.startswith("setup error"), result.error
    assert "self.counter.count" in result.error and "preserved_attrs=['counter.count']" in result.error
    result = forkcheck.check(forkcheck.fork_safe(kept, x=fst.tensors(shape=(3,))), seed=1, examples=2)
    assert result.verdict == "fail" and "attribute-mutation" in [f.kind for f in result.findings], result.error


# -- marking errors ------------------------------------------------------------------------------------------------


def test_a_marking_error_is_that_item_s_error_and_the_collection_goes_on(fc, pytester) -> None:
    pytester.makepyfile(test_bad_marks=source(SCALE, """
        @fork_safe(y=st.integers())
        def wrong_parameter(x: Tensor) -> Tensor:
            return x

        @fork_safe(examples=0)
        def wrong_setting(x: Tensor) -> Tensor:
            return x

        scripted = fork_safe(torch.jit.script(nn.Linear(2, 2)), weight=st.integers())

        def test_plain():
            pass
    """), test_good=source(SCALE))
    result = fc.run("--forkcheck-seed", "1")
    result.assert_outcomes(passed=3, errors=3)
    assert "Interrupted" not in result.stdout.str()
    rows = fc.rows()
    assert rows["test_good.py::scale"]["verdict"] == rows["test_bad_marks.py::scale"]["verdict"] == "pass"
    wrong = rows["test_bad_marks.py::wrong_parameter"]
    assert wrong["verdict"] == "error" and "'y'" in wrong["error"] and "wrong_parameter" in wrong["error"]
    assert "parameters are ['x']" in wrong["error"]
    assert "examples" in rows["test_bad_marks.py::wrong_setting"]["error"]
    assert "'weight'" in rows["test_bad_marks.py::scripted"]["error"]
    result.stdout.fnmatch_lines(["*ERROR at setup of*wrong_parameter*", "*fork_safe got strategies for 'y'*"])


def test_outside_a_collection_a_marking_error_raises() -> None:
    from forkcheck import MarkError, fork_safe

    with pytest.raises(MarkError, match="'y'"):
        fork_safe(y=st.integers())(_bump)
    with pytest.raises(MarkError, match="examples"):
        fork_safe(_bump, examples=0)
    assert "__forkcheck__" not in vars(_bump)

