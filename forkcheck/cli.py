"""``forkcheck check PATH``: check a model saved with ``torch.jit.save``, for those who have a ``.pt`` file and no tests.

The model is checked as the plugin checks a target: in child processes, one per inter-op pool size
(``forkcheck.pools``), each loading PATH itself. A loaded model is no module-level name a child could import, so the
children reach it through this module: the attribute ``saved:{"path": ..., "inputs": [...]}`` loads PATH and marks it
with the ``--input`` strategies (the module's ``__getattr__``).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import traceback
from typing import Any, Optional

SAFE, FINDINGS, USAGE, INTERNAL = 0, 1, 2, 3  # exit statuses
SAVED = "saved:"
REPORTS = "reports"  # the default report directory
SETUP_ERROR = "setup error: "
SUGGESTED = {"Tensor": "float32[2,8]", "int": "int[0..5]", "float": "float[-1.0..1.0]", "bool": "bool", "str": "str"}

DESCRIPTION = """\
Check a TorchScript model saved with torch.jit.save: its forward runs on forkcheck's inputs under many schedules of
its torch.jit.fork tasks, on the real runtime, and the oracles say whether it is safe to fork.

Exit status: 0 safe, 1 findings, 2 usage error (the message names the fix), 3 no verdict: an internal error in
forkcheck, or the process checking the model crashed."""
INPUT_HELP = ("an input of forward and what to draw for it (repeat for each input; inputs not given are inferred "
              "from the model's schema); SPEC as below")
SPECS = """\
input specs (NAME=SPEC):
  DTYPE[SHAPE]   a tensor; DTYPE one of float16, bfloat16, float32, float64, int8, int16, int32, int64, uint8, bool;
                 SHAPE comma-separated sizes, each N or a range LO..HI:
                 x=float32[2,8]  ids=int64[3]  t=float32[] (0-dim)  x=float32[2,1..8]
  int, float, bool, str, int[LO..HI], float[LO..HI]
                 a Python value: k=int  k=int[0..5]  p=float[-1.0..1.0]  flag=bool  name=str

example:
  forkcheck check model.pt --input x=float32[4,8] --examples 20 --report reports"""


class UsageError(Exception):
    """The command line cannot be carried out as written; exit status 2, the message names the fix."""


def main(argv: Optional[list[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return _check(args)
    except UsageError as err:
        print(f"forkcheck check: error: {err}", file=sys.stderr)
        return USAGE
    except Exception:
        traceback.print_exc()
        print("forkcheck check: internal error in forkcheck (a bug in forkcheck, not in the model)", file=sys.stderr)
        return INTERNAL


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="forkcheck", description="forkcheck: race and determinism checks for "
                                                                   "torch.jit.fork/wait code")
    commands = parser.add_subparsers(dest="command", required=True, metavar="check")
    check = commands.add_parser("check", help="check a model saved with torch.jit.save", description=DESCRIPTION,
                                epilog=SPECS, formatter_class=argparse.RawDescriptionHelpFormatter)
    check.add_argument("path", metavar="PATH", help="a .pt file written by torch.jit.save")
    check.add_argument("--input", action="append", default=[], metavar="NAME=SPEC", help=INPUT_HELP)
    check.add_argument("--examples", metavar="N", help="Hypothesis examples of inputs (default 10)")
    check.add_argument("--schedules", metavar="N", help="concurrent schedules per example (default 10)")
    check.add_argument("--seed", metavar="S", help="seed for inputs and schedules (default: random, printed)")
    check.add_argument("--pool-sizes", metavar="N,N,...",
                       help="inter-op pool sizes the schedules are split over, a child process each (default 1,2,4)")
    check.add_argument("--replay", metavar="TOKEN", help="rerun the failing example a replay token names")
    check.add_argument("--report", metavar="DIR", default=REPORTS,
                       help="directory for forkcheck.json and index.html (default reports)")
    check.add_argument("--no-report", action="store_true", help="write no report files")
    return parser


def _check(args: argparse.Namespace) -> int:
    from .marker import get_mark
    from .report.terminal import invocation, summary_lines
    from .session import now
    from .target import Target

    started = now()

    settings, sizes = _settings(args)
    _check_token(args.replay, args.path)
    if not args.no_report:
        _check_report_dir(args.report)
    model = _load_or_explain(args.path, args.input)
    inputs = _inferred(model, args.path)
    print(f"forkcheck: replaying a failure of {args.path}" if args.replay else
          f"forkcheck: checking {args.path}, seed {settings.seed} (rerun with --seed {settings.seed})", flush=True)
    result = _run(Target.from_object(model, args.path), settings, sizes, args)
    _blame_inputs(result, [name for name in inputs if name not in get_mark(model).strategies], args.input)
    command = f"{invocation(module='forkcheck')} check"
    result.stats.replay_with = _replay_with(command, args)
    root = os.getcwd()
    print(_result_text(result, root))
    rows = {args.path: result.to_json()}
    paths = None if args.no_report else _write_reports(args, rows, settings.seed, {
        "run_at": started, "rootdir": root, "command": command, "seed_option": "--seed",
        **({"replay": True} if args.replay else {})})
    print("\n".join(summary_lines(rows.values(), paths, rootdir=root)))
    if result.verdict != "error":
        return FINDINGS if result.verdict == "fail" else SAFE
    return USAGE if result.error.startswith(SETUP_ERROR) else INTERNAL


def _replay_with(command: str, args: argparse.Namespace) -> str:
    """The command that replays a failure of this run (the token follows): this run's own program and inputs, and
    its report directory (when not the default), so the replay's row joins the row it replays."""
    report = ["--no-report"] if args.no_report else ["--report", args.report] if args.report != REPORTS else []
    return " ".join([command, shlex.join([args.path, *[part for spec in args.input for part in ("--input", spec)],
                                          *report, "--replay"])])


def _write_reports(args: argparse.Namespace, rows: dict[str, Any], seed: int, run: dict[str, Any]) -> Any:
    """The reports in ``--report``, merged with the rows already there (a replay's row beside the row it replays)."""
    from pathlib import Path

    from .report import previous_report, write_reports
    from .session import merge_rows

    previous = previous_report(Path(args.report)).get("results", [])
    merged = merge_rows(previous, rows, Path(run["rootdir"]), set(rows), args.replay or "")
    return write_reports(args.report, merged, seed, run=run)


def _result_text(result: Any, rootdir: str) -> str:
    """What the check found, as the plugin prints a failing item (paths relative to ``rootdir``); for a pass, what
    was run."""
    from .report.terminal import engine_clause, failure_text, pool_line
    from .stats import IN_PROCESS

    stats = result.stats
    if result.verdict == "pass":
        lines = [f"safe to fork: no findings in {result.examples} examples, {result.schedules} schedules "
                 f"({engine_clause(result.engine, result.engine_reason)})"]
        if stats.pool_sizes:
            lines.append(f"inter-op pool sizes: {pool_line(stats.to_json()['pool_sizes'])}")
    else:
        lines = [failure_text(result, rootdir=rootdir)]
    if stats.isolation is not None and stats.isolation.place == IN_PROCESS:
        lines.append(f"checked {stats.isolation}, with this process's inter-op pool only")
    return "\n".join(lines)


def _settings(args: argparse.Namespace) -> tuple[Any, tuple[int, ...]]:
    """The check's settings (a drawn seed when none is given) and pool sizes; a bad value is a usage error."""
    import dataclasses

    from .settings import CHECK_POOL_SIZES, SettingsError, resolve_settings, validate

    given = {name: value for name in ("examples", "schedules", "seed", "pool_sizes")
             if (value := getattr(args, name)) is not None}
    try:
        settings = resolve_settings(options=validate(given, source="--"))
    except SettingsError as err:
        raise UsageError(str(err).replace("--pool_sizes", "--pool-sizes")) from None
    return dataclasses.replace(settings, pool_sizes=()), settings.pool_sizes or CHECK_POOL_SIZES


def _check_report_dir(directory: str) -> None:
    """The report directory can be written, and holds no files forkcheck did not write (it never overwrites them)."""
    from .report import ReportPathError, check_report_dir

    try:
        check_report_dir(directory)
    except ReportPathError as err:
        raise UsageError(str(err).replace("--forkcheck-no-report", "--no-report")
                         .replace("--forkcheck-report", "--report")) from None


def _check_token(token: Optional[str], path: str) -> None:
    from .replay import ReplayError, ReplayToken

    if token is None:
        return
    try:
        target = ReplayToken.decode(token).target
    except ReplayError as err:
        raise UsageError(f"--replay: {err}") from None
    if target != path:
        raise UsageError(f"--replay: the token is for {target}, not {path}: replay it with forkcheck check {target} "
                         "and the --input options the failure printed")


def load_model(path: str, specs: list[str]) -> Any:
    """The model saved at ``path``, marked with the strategies of the ``--input`` specs."""
    import torch

    from . import strategies as fst

    from ._warnings import quiet_jit
    from .compiled import parameter_names
    from .marker import fork_safe

    with quiet_jit():
        model = torch.jit.load(path, map_location="cpu")
    given = dict(fst.parse_input(spec) for spec in specs)
    unknown = [name for name in given if name not in parameter_names(model)]
    if unknown:
        raise UsageError(f"--input {unknown[0]}: the model's forward takes no input {unknown[0]!r}; its inputs are "
                         f"{', '.join(parameter_names(model)) or 'none'}")
    return fork_safe(model, **given)


def __getattr__(name: str) -> Any:
    """``saved:{...}``: how a child process reaches the saved model it is to check (see the module docstring)."""
    if name.startswith(SAVED):
        request = json.loads(name[len(SAVED):])
        return load_model(request["path"], request["inputs"])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _load_or_explain(path: str, specs: list[str]) -> Any:
    """``load_model``, with each way it can fail told as a usage error."""
    from . import strategies as fst

    names = [spec.partition("=")[0].strip() for spec in specs]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise UsageError(f"--input {', '.join(twice)} given more than once: give each input once")
    for spec in specs:
        try:
            fst.parse_input(spec)
        except fst.SpecError as err:
            raise UsageError(f"--input {err}") from None
    if not os.path.isfile(path):
        where = "is a directory" if os.path.isdir(path) else "does not exist"
        raise UsageError(f"{path} {where}: give the path of a .pt file written by torch.jit.save")
    try:
        return load_model(path, specs)
    except UsageError:
        raise
    except Exception as err:
        text = str(err).strip().splitlines()
        what = ("a torch.save file (a pickled model or state dict), not a TorchScript archive" if _torch_saved(path)
                else f"not a TorchScript archive (torch.jit.load: {type(err).__name__}: {text[0] if text else ''})")
        raise UsageError(f"{path} is {what}; save the model with "
                         f"torch.jit.save(torch.jit.script(model), {path!r})") from None


def _torch_saved(path: str) -> bool:
    """Whether ``path`` was written by ``torch.save``: a zip archive with a pickle and no TorchScript code, or the
    legacy format (a bare pickle)."""
    import zipfile

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        return any(name.endswith("data.pkl") for name in names) and not any("/code/" in name for name in names)
    with open(path, "rb") as stream:
        return stream.read(1) == b"\x80"  # a pickle's protocol opcode


def _inferred(model: Any, path: str) -> list[str]:
    """The inputs of ``forward``: given, or inferred from the schema; one that cannot be inferred is a usage
    error that names it and the ``--input`` to give."""
    from . import strategies as fst

    from .marker import get_mark

    try:
        return list(fst.for_callable(model, get_mark(model).strategies, what=path))
    except fst.InferenceError as err:
        name = err.parameter
        if name is None:
            raise UsageError(str(err)) from None
        kind = _schema_type(model, name)
        if kind not in SUGGESTED:
            raise UsageError(f"cannot infer input {name!r} of {path}: its type {kind or '?'} is none that "
                             "forkcheck infers (Tensor, int, float, bool, str, and lists, tuples, dicts and "
                             "optionals of them) or --input gives (tensors, int, float, bool, str). Check the "
                             f"model from Python with a strategy for it: forkcheck.check(fork_safe(torch.jit.load("
                             f"{path!r}), {name}=...))") from None
        hint = " (the dtype and shape forward takes)" if kind == "Tensor" else ""
        raise UsageError(f"cannot infer input {name!r} of {path}: {err}; give it: --input {name}={SUGGESTED[kind]}"
                         f"{hint}") from None


def _schema_type(model: Any, name: str) -> str:
    """The type of ``forward``'s argument ``name`` in the model's schema, as TorchScript writes it."""
    from .compiled import arguments

    return next((str(argument.type) for argument in arguments(model) if argument.name == name), "")


def _run(target: Any, settings: Any, sizes: tuple[int, ...], args: argparse.Namespace) -> Any:
    """The check in child processes, one per pool size, each loading PATH; in this process if no child can."""
    from .isolation import Unavailable
    from .pools import check_over_pool_sizes
    from .runner import check

    attribute = SAVED + json.dumps({"path": os.path.abspath(args.path), "inputs": args.input})
    try:
        return check_over_pool_sizes(sys.modules[__name__], attribute, target, settings, sizes, args.replay,
                                     args.path)
    except Unavailable as err:
        from .stats import IN_PROCESS, Isolation

        result = check(target, settings, replay=args.replay, nodeid=args.path)
        result.stats.isolation = Isolation(IN_PROCESS, note=str(err))
        return result


def _blame_inputs(result: Any, inferred: list[str], given: list[str]) -> None:
    """A model that raised with its forks inline (before any concurrency) was given inputs it does not take: the
    schema says ``Tensor``, not which shape, and an ``--input`` may name the wrong one. Whatever else was found, not
    a finding but a usage error that names the inputs to give (``inferred``: the names forkcheck inferred;
    ``given``: the ``--input`` specs)."""
    from .stats import FoundBy

    serial = FoundBy.SERIAL_RUN in (result.stats.found_by,
                                    *(size.found_by for size in result.stats.pool_sizes.values()))
    error = next((f for f in result.findings if f.kind == "exception"), None) if result.verdict == "fail" else None
    if not ((inferred or given) and serial and error):  # else: the inputs were wrong, so it tells nothing
        return
    shown = "; ".join(f"{name} = {text}" for name, text in result.failing_input.items())
    trace = [line for line in error.detail.get("traceback", "").splitlines() if line.strip()]
    raised = trace[-1] if trace else error.message  # TorchScript's own message comes last, after its stack
    result.verdict, result.findings = "error", []
    if inferred:
        flags = " ".join(f"--input {name}={SUGGESTED['Tensor']}" for name in inferred)
        result.error = (f"{SETUP_ERROR}the model raised {raised} with its forks inline, on inputs inferred from its "
                        f"schema ({shown}): give the inputs forward takes, e.g. {flags} (the dtype and shape it "
                        "expects)")
    else:
        flags = " ".join(f"--input {spec}" for spec in given)
        result.error = (f"{SETUP_ERROR}the model raised {raised} with its forks inline (a serial run: no "
                        f"concurrency involved), on inputs drawn from {flags} ({shown}): give each --input the dtype, "
                        "shape and values forward takes")
