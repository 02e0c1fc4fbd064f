"""``forkcheck check PATH``: the command line for a saved model, run as a user runs it (a real subprocess).

Models are scripted and saved with ``torch.jit.save`` into a temporary directory; the safe one must pass, each unsafe
one must fail with its finding kind on the real runtime, and every usage error must exit 2 and name its fix.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

import strategies as fst
from forkcheck._warnings import quiet_jit

ROOT = Path(__file__).resolve().parent.parent
QUICK = ("--examples", "2", "--schedules", "3", "--seed", "1")
TOKEN = re.compile(r"--replay (fc1\.[A-Za-z0-9_\-]+)")


class Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x).softmax(dim=-1)


class CountingHead(Head):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1  # prim::SetAttr on a module every forked task shares
        return self.linear(x).softmax(dim=-1)


class Ensemble(nn.Module):
    def __init__(self, head: type = Head):
        super().__init__()
        self.heads = nn.ModuleList([head(), head()])

    def forward(self, x: Tensor) -> Tensor:
        futures: List[torch.jit.Future[Tensor]] = [torch.jit.fork(h, x) for h in self.heads]
        return torch.stack([torch.jit.wait(f) for f in futures]).mean(dim=0)


def _accumulate(total: Tensor, x: Tensor) -> Tensor:
    total.add_(x)
    return total


class SharedAccumulator(nn.Module):
    """Two forked tasks ``add_`` into one tensor the model made: a race."""

    def forward(self, x: Tensor) -> Tensor:
        total = torch.zeros_like(x)
        a = torch.jit.fork(_accumulate, total, x)
        b = torch.jit.fork(_accumulate, total, x * 2)
        torch.jit.wait(a)
        torch.jit.wait(b)
        return total


def _scale_in_place(x: Tensor) -> Tensor:
    return x.mul_(2)


class ScalesItsInput(nn.Module):
    """A forked task writes the caller's tensor."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.jit.wait(torch.jit.fork(_scale_in_place, x)) + 1


class Classifier(nn.Module):
    """Takes batches of 8 features, which its schema (``x: Tensor``) does not say."""

    def __init__(self):
        super().__init__()
        self.head = Head()

    def forward(self, x: Tensor) -> Tensor:
        return torch.jit.wait(torch.jit.fork(self.head, x))


class OnDevice(nn.Module):
    """An input whose type (``Device``) has no strategy to infer and no ``--input`` spec."""

    def forward(self, x: Tensor, device: torch.device) -> Tensor:
        return torch.jit.wait(torch.jit.fork(torch.neg, x)).to(device)


class Scaled(nn.Module):
    """A tensor and an ``int``: ``k`` is inferred from the schema when not given."""

    def forward(self, x: Tensor, k: int) -> Tensor:
        return torch.jit.wait(torch.jit.fork(torch.mul, x, k))


MODELS = {"ensemble": Ensemble, "counting": lambda: Ensemble(CountingHead), "accumulator": SharedAccumulator,
          "scales_input": ScalesItsInput, "classifier": Classifier, "on_device": OnDevice, "scaled": Scaled}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("models")
    paths = {}
    with quiet_jit():
        for name, make in MODELS.items():
            paths[name] = directory / f"{name}.pt"
            torch.jit.save(torch.jit.script(make()), str(paths[name]))
    return paths


def forkcheck(*args: object, cwd: Path, **variables: str) -> subprocess.CompletedProcess:
    """``python -m forkcheck ...`` in ``cwd``, as a user runs it (not under this pytest's variables; ``variables``
    over the environment)."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}, **variables}
    return subprocess.run([sys.executable, "-m", "forkcheck", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


def _row(report: Path) -> dict:
    rows = json.loads((report / "forkcheck.json").read_text())["results"]
    assert len(rows) == 1
    return rows[0]


# --- usage errors: exit 2, the message names the fix -------------------------------------------------------


def test_help_documents_the_input_grammar(tmp_path: Path) -> None:
    run = forkcheck("check", "--help", cwd=tmp_path)
    assert run.returncode == 0
    for text in ("--input NAME=SPEC", "float32[2,8]", "float32[]", "float32[2,1..8]", "int[0..5]", "Exit status"):
        assert text in run.stdout


def test_the_console_script_is_the_same_command() -> None:
    from importlib.metadata import entry_points

    from forkcheck.cli import main

    (script,) = entry_points(group="console_scripts", name="forkcheck")
    assert script.load() is main


def test_a_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    run = forkcheck("check", "missing.pt", cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    assert "missing.pt does not exist" in run.stderr and "torch.jit.save" in run.stderr
    assert not (tmp_path / "reports").exists()


@pytest.mark.parametrize("zipped", [True, False])
def test_a_torch_save_file_is_a_usage_error_that_says_so(tmp_path: Path, zipped: bool) -> None:
    # a pickle (zipped, or the legacy format), not a TorchScript archive
    torch.save(Head().state_dict(), tmp_path / "weights.pt", _use_new_zipfile_serialization=zipped)
    run = forkcheck("check", "weights.pt", cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    assert "weights.pt is a torch.save file (a pickled model or state dict), not a TorchScript archive" in run.stderr
    assert "corrupted" not in run.stderr  # torch.jit.load's guess, wrong for a torch.save file
    assert "torch.jit.save(torch.jit.script(model), 'weights.pt')" in run.stderr


def test_a_file_that_is_no_torchscript_archive_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "notes.pt").write_text("not a model")
    run = forkcheck("check", "notes.pt", cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    assert "notes.pt is not a TorchScript archive (torch.jit.load: " in run.stderr and "torch.save" not in run.stderr
    assert "torch.jit.save(torch.jit.script(model), 'notes.pt')" in run.stderr


@pytest.mark.parametrize("spec, says", [
    ("x", "is not NAME=SPEC"),
    ("x=float32", "needs a shape, e.g. float32[2,8]"),
    ("x=float33[2]", "unknown type 'float33'"),
    ("x=float32[2,a]", "a size is a whole number N or a range LO..HI"),
    ("x=int[3]", "for a tensor write its dtype, e.g. int64[3]"),
    ("x=int[5..1]", "the range 5..1 is empty"),
])
def test_a_spec_that_does_not_parse_is_a_usage_error(models: dict[str, Path], tmp_path: Path, spec: str,
                                                     says: str) -> None:
    run = forkcheck("check", models["ensemble"], "--input", spec, cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    assert f"--input {spec!r}" in run.stderr, run.stderr
    assert says in run.stderr


def test_an_input_the_model_does_not_take_is_a_usage_error(models: dict[str, Path], tmp_path: Path) -> None:
    run = forkcheck("check", models["ensemble"], "--input", "y=float32[4,8]", cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    assert "--input y: the model's forward takes no input 'y'; its inputs are x" in run.stderr


def test_bad_settings_are_usage_errors_naming_the_option(models: dict[str, Path], tmp_path: Path) -> None:
    for option, value in (("--examples", "0"), ("--pool-sizes", "1,1"), ("--replay", "nonsense")):
        run = forkcheck("check", models["ensemble"], option, value, cwd=tmp_path)
        assert run.returncode == 2, (option, run.stderr)
        assert option in run.stderr


def test_an_input_that_cannot_be_inferred_names_it_and_the_way_to_give_it(models: dict[str, Path],
                                                                          tmp_path: Path) -> None:
    run = forkcheck("check", models["on_device"], "--input", "x=float32[3]", cwd=tmp_path)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "cannot infer input 'device'" in run.stderr
    assert "forkcheck.check(fork_safe(torch.jit.load(" in run.stderr  # no --input spec makes a Device


# --- checks on the real runtime -----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_safe_model_passes_and_writes_the_reports(models: dict[str, Path], tmp_path: Path) -> None:
    run = forkcheck("check", models["ensemble"], "--input", "x=float32[4,8]", *QUICK, "--report", "out",
                    cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "safe to fork" in run.stdout and "1 pass" in run.stdout
    row = _row(tmp_path / "out")
    assert row["verdict"] == "pass" and row["engine"] == "script", row
    assert row["nodeid"] == str(models["ensemble"]) and row["examples"] == 2 and row["schedules"] > 0
    assert set(row["stats"]["pool_sizes"]) == {"1", "2", "4"}  # each child loaded the same file
    assert "<html" in (tmp_path / "out" / "index.html").read_text()


@pytest.mark.slow
def test_inputs_not_given_are_inferred_from_the_schema(models: dict[str, Path], tmp_path: Path) -> None:
    run = forkcheck("check", models["scaled"], *QUICK, "--pool-sizes", "2", cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    row = _row(tmp_path / "reports")
    assert row["verdict"] == "pass" and row["engine"] == "script", row


@pytest.mark.slow
@pytest.mark.parametrize("model, kind", [("counting", "attribute-mutation"), ("accumulator", "race"),
                                         ("scales_input", "input-mutation")])
def test_an_unsafe_model_fails_with_its_finding_and_a_replay_that_reproduces(models: dict[str, Path],
                                                                             tmp_path: Path, model: str,
                                                                             kind: str) -> None:
    shape = "x=float32[4,8]" if model == "counting" else "x=float32[64]"
    run = forkcheck("check", models[model], "--input", shape, *QUICK, cwd=tmp_path)
    assert run.returncode == 1, run.stdout + run.stderr
    assert f"[{kind}]" in run.stdout and "1 fail" in run.stdout
    row = _row(tmp_path / "reports")
    assert row["verdict"] == "fail" and row["engine"] == "script", row
    kinds = [f["kind"] for f in row["findings"]]
    assert kind in kinds and "exception" not in kinds, row["findings"]  # the model runs; what it does is unsafe
    (token,) = set(TOKEN.findall(run.stdout))
    html = (tmp_path / "reports" / "index.html").read_text()
    assert "forkcheck check" in html and "--forkcheck-replay" not in html  # the report replays with this command
    replay = forkcheck("check", models[model], "--input", shape, "--replay", token, cwd=tmp_path)
    assert replay.returncode == 1, replay.stdout + replay.stderr
    replays = _row(tmp_path / "reports")["replay_run"]["stats"]["replays"]  # beside the row it replays
    assert replays["reproduced"] >= 1, replays


@pytest.mark.slow
def test_a_model_that_raises_on_inferred_inputs_asks_for_them(models: dict[str, Path], tmp_path: Path) -> None:
    """The schema says ``Tensor``, not that the head takes 8 features: not a finding, a usage error."""
    run = forkcheck("check", models["classifier"], *QUICK, "--pool-sizes", "2", cwd=tmp_path)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "cannot be multiplied" in run.stdout  # what the model raised, with its forks inline
    assert "inputs inferred from its schema" in run.stdout and "--input x=float32[2,8]" in run.stdout
    row = _row(tmp_path / "reports")
    assert row["verdict"] == "error" and row["error"].startswith("setup error") and not row["findings"]
    given = forkcheck("check", models["classifier"], "--input", "x=float32[2,8]", *QUICK, "--pool-sizes", "2",
                      cwd=tmp_path)
    assert given.returncode == 0, given.stdout + given.stderr


@pytest.mark.slow
def test_an_input_of_the_wrong_shape_is_a_usage_error_naming_it(models: dict[str, Path], tmp_path: Path) -> None:
    """An ``--input`` the model does not take raises with its forks inline: the spec is wrong, not the forks."""
    run = forkcheck("check", models["classifier"], "--input", "x=float32[3,5]", *QUICK, "--pool-sizes", "2",
                    cwd=tmp_path)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "cannot be multiplied (3x5" in run.stdout and "inputs drawn from --input x=float32[3,5]" in run.stdout
    assert "[exception]" not in run.stdout and "replay:" not in run.stdout
    row = _row(tmp_path / "reports")
    assert row["verdict"] == "error" and row["error"].startswith("setup error") and not row["findings"]


SAVE_BAD = """\
from typing import List

import torch
from torch import Tensor, nn


class Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 4)
        self.register_buffer("total", torch.zeros(4))

    def forward(self, x: Tensor) -> Tensor:
        self.total.add_(self.linear(x).sum(0))  # every call writes the buffer: an attribute mutation
        return self.total


class Ensemble(nn.Module):
    def __init__(self):
        super().__init__()
        self.heads = nn.ModuleList([Head(), Head()])

    def forward(self, x: Tensor) -> Tensor:
        futures: List[torch.jit.Future[Tensor]] = [torch.jit.fork(h, x) for h in self.heads]
        return torch.stack([torch.jit.wait(f) for f in futures]).mean(0)


torch.jit.save(torch.jit.script(Ensemble()), "bad.pt")
"""


@pytest.fixture
def bad_model(tmp_path: Path) -> Path:
    """``bad.pt``, saved by a script in ``tmp_path`` as a user saves one: its source lines are under ``tmp_path``."""
    (tmp_path / "save_bad.py").write_text(SAVE_BAD)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    subprocess.run([sys.executable, "save_bad.py"], cwd=tmp_path, env=env, check=True, capture_output=True,
                   timeout=900)
    return tmp_path / "bad.pt"


@pytest.mark.slow
def test_a_model_that_raises_on_inferred_inputs_asks_for_them_whatever_else_it_does(bad_model: Path) -> None:
    """The serial run raised on inferred inputs; the buffer writes it also shows tell nothing about forking."""
    run = forkcheck("check", "bad.pt", *QUICK, "--pool-sizes", "2", cwd=bad_model.parent)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "mat1 and mat2 shapes cannot be multiplied" in run.stdout  # TorchScript's own message
    assert "The following operation failed" not in run.stdout
    assert "--input x=float32[2,8]" in run.stdout and "[exception]" not in run.stdout
    row = _row(bad_model.parent / "reports")
    assert row["verdict"] == "error" and row["error"].startswith("setup error") and not row["findings"]


@pytest.mark.slow
def test_the_printed_replay_runs_in_a_shell_without_the_venv_and_joins_its_row(bad_model: Path) -> None:
    here = bad_model.parent
    bare = os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep)
                           if d and not Path(d, "forkcheck").exists() and not Path(d, "python").exists()
                           and os.path.abspath(d) != os.path.dirname(sys.executable))
    run = forkcheck("check", "bad.pt", "--input", "x=float32[2,8]", *QUICK, "--pool-sizes", "2", "--report", "out",
                    cwd=here, PATH=bare)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "[attribute-mutation]" in run.stdout and "aten::add_ at save_bad.py:" in run.stdout
    assert str(here) not in run.stdout  # paths relative to the working directory
    html = (here / "out" / "index.html").read_text()
    assert "aten::add_ at save_bad.py:" in html and str(here) not in html
    assert "<code>--seed 1</code> repeats this run" in html and "--forkcheck-seed" not in html
    (command,) = set(re.findall(r"replay: (.+)", run.stdout))
    assert command.startswith(f"{sys.executable} -m forkcheck check bad.pt") and "--report out" in command
    replay = subprocess.run(command, shell=True, cwd=here, env={"PATH": bare}, capture_output=True, text=True,
                            timeout=900)  # pasted into a shell that has no venv on its PATH
    assert replay.returncode == 1, replay.stdout + replay.stderr
    row = _row(here / "out")  # the replay's row beside the row it replays
    assert row["verdict"] == "fail" and row["replay_run"]["stats"]["replays"]["reproduced"] >= 1, row


def test_an_error_inside_forkcheck_exits_3_with_the_traceback(models: dict[str, Path], tmp_path: Path) -> None:
    """A bug in forkcheck (here: its pool-size split breaks) is told apart from the model's problems."""
    code = ("import sys, forkcheck.cli, forkcheck.pools as pools\n"
            "def broken(*args, **kwargs): raise RuntimeError('the pool split broke')\n"
            "pools.check_over_pool_sizes = broken\n"
            "sys.exit(forkcheck.cli.main(sys.argv[1:]))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    run = subprocess.run([sys.executable, "-c", code, "check", str(models["scaled"])], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 3, run.stdout + run.stderr
    assert "Traceback" in run.stderr and "the pool split broke" in run.stderr
    assert "internal error in forkcheck" in run.stderr


# --- the spec grammar ---------------------------------------------------------------------------------------


@given(st.data())
def test_specs_draw_what_they_say(data: st.DataObject) -> None:
    cases = {"x=float32[2,8]": (torch.float32, (2, 8)), "ids=int64[3]": (torch.int64, (3,)),
             "t=float32[]": (torch.float32, ()), "m=bool[2]": (torch.bool, (2,))}
    for text, (dtype, shape) in cases.items():
        name, strategy = fst.parse_input(text)
        value = data.draw(strategy)
        assert name == text.split("=")[0] and value.dtype == dtype and tuple(value.shape) == shape
    ranged = data.draw(fst.from_spec("float32[2, 1..8]"))
    assert ranged.shape[0] == 2 and 1 <= ranged.shape[1] <= 8
    assert 0 <= data.draw(fst.from_spec("int[0..5]")) <= 5
    assert -1.0 <= data.draw(fst.from_spec("float[-1.0..1.0]")) <= 1.0
    assert isinstance(data.draw(fst.from_spec("k=int".split("=")[1])), int)
    assert isinstance(data.draw(fst.from_spec("bool")), bool)
