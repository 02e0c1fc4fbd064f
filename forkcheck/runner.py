"""One check: Hypothesis examples x schedules through an engine, the oracles over every run. No pytest needed."""
from __future__ import annotations

import copy
import random
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from . import _warnings
from .engines import TaskError, choose_engine
from .findings import CheckResult, Finding, sort_findings
from .locate import WriteLocator, user_location
from .marker import MarkError
from .oracles.determinism import differences
from .oracles.mutation import GlobalWatch, InputWatch, ModuleWatch, referenced_globals
from .replay import ReplayError, ReplayToken, blob_from_notes
from .settings import Settings
from .state import module_state
from .target import Target, TargetError


class _Failed(Exception):
    """Raised inside a Hypothesis example that has findings, so Hypothesis shrinks it."""

    def __init__(self, findings: list[Finding]):
        super().__init__(findings[0].message)
        self.findings = findings


class _Hang(Exception):
    pass


@dataclass
class _Schedule:
    """One concurrent run's schedule: the seed its decisions are drawn from."""

    seed: int


def _with_timeout(call: Callable[[], Any], timeout: float) -> Any:
    """Run ``call`` in a daemon thread; raise ``_Hang`` if it has not returned within ``timeout`` seconds."""
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            box["value"] = call()
        except BaseException as err:  # handed to the caller's thread
            box["error"] = err

    thread = threading.Thread(target=body, name="forkcheck-run", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise _Hang()
    if "error" in box:
        raise box["error"]
    return box["value"]


def _short_repr(value: Any, limit: int = 400) -> str:
    if isinstance(value, torch.Tensor):
        with torch._tensor_str.printoptions(threshold=20, edgeitems=2):
            text = f"{value!r} (shape {list(value.shape)}, {value.dtype})"
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _user_frame(err: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(err.__traceback__) if "/torch/" not in f.filename
              and "/forkcheck/" not in f.filename and not f.filename.startswith("<")]
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else ""


def _describe_error(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"


class Checker:
    """Everything fixed for one target: its strategies, engine, globals and static findings."""

    def __init__(self, target: Target, settings: Settings):
        import strategies as fst

        self.target = target
        self.settings = settings
        self.strategies = fst.for_callable(target.obj, target.strategies, what=target.name)
        self.param_names = list(self.strategies)
        self.base = target.instance()
        with _warnings.quiet_jit():
            self.engine = choose_engine(
                copy.deepcopy(self.base) if target.is_module else self.base, self.param_names, settings.tasks)
        self.globals = referenced_globals(self._code())
        self.location = target.source_location()
        self.static = self._static_findings()
        self.examples = 0
        self.schedules = 0
        self.failures: list[tuple[dict[str, str], list[Finding]]] = []

    def _code(self) -> list[Callable]:
        if not self.target.is_module:
            return [self.base]
        classes = {type(m) for m in self.base.modules()}
        return [value for cls in classes for klass in cls.__mro__
                if not klass.__module__.startswith("torch")
                for value in vars(klass).values() if callable(value)]

    def _static_findings(self) -> list[Finding]:
        if self.engine.name != "script":
            return []
        try:
            from .oracles.static import static_findings
        except ImportError:
            return []
        return static_findings(self.engine.scripted, self.param_names)

    # --- one example ---------------------------------------------------------------------------------------

    def example(self, inputs: dict[str, Any], draw_schedule: Callable[[int], Any]) -> None:
        self.examples += 1
        findings, reference = self._serial(inputs)
        if not findings:  # a defect the serial run shows needs no schedules (and shrinks fast)
            for index in range(self.settings.schedules):
                self.schedules += 1
                found = self._concurrent(inputs, draw_schedule(index), reference)
                findings = _merge(findings, found)
                if found:
                    break
        if findings:
            self.failures.append(({name: _short_repr(v) for name, v in inputs.items()}, findings))
            raise _Failed(findings)

    def _call(self, fn: Callable[[], Any]) -> Any:
        with _warnings.quiet_jit():
            return _with_timeout(fn, self.settings.timeout)

    def _serial(self, inputs: dict[str, Any]) -> tuple[list[Finding], Any]:
        """The reference: the target once, on copies, forks inline (plain eager Python)."""
        args = copy.deepcopy([inputs[name] for name in self.param_names])
        module = copy.deepcopy(self.base) if self.target.is_module else None
        callee = module if module is not None else self.base
        watches = [InputWatch(dict(zip(self.param_names, args))), GlobalWatch(self.globals)]
        if module is not None:
            watches.append(ModuleWatch(module))
        watched = dict(zip(self.param_names, args))
        if module is not None:
            watched.update(module_state(module))
        locator = WriteLocator(watched)
        try:
            output = self._call(lambda: _under(locator, callee, args))
            return [f for w in watches for f in w.findings([1], locator.locate, self.location)], output
        except _Hang:
            return [self._hang("the serial reference run (forks inline)")], _NO_OUTPUT
        except Exception as err:
            return [Finding("exception", f"the target raised {_describe_error(err)} (serial run, forks inline)",
                            location=_user_frame(err) or self.location, tasks=[1],
                            detail={"traceback": "".join(traceback.format_exception(err))[-4000:]})], _NO_OUTPUT
        finally:
            watches[1].restore()

    def _concurrent(self, inputs: dict[str, Any], schedule: Any, reference: Any) -> list[Finding]:
        args = copy.deepcopy([inputs[name] for name in self.param_names])
        tasks = list(range(1, self.settings.tasks + 1))
        watches = [InputWatch(dict(zip(self.param_names, args))), GlobalWatch(self.globals)]
        module_watch = ModuleWatch(self.engine.module) if self.engine.module is not None else None
        try:
            outputs = self._call(lambda: self.engine.run(args, schedule))
            findings = [f for w in watches for f in w.findings(tasks, default_location=self.location)]
        except _Hang:
            return [self._hang(f"a concurrent run of {len(tasks)} forked tasks")]
        except Exception as err:
            cause = err.__cause__ if isinstance(err, TaskError) else err
            return [Finding("exception", f"a forked task raised {_describe_error(cause)} (concurrent run, "
                                         f"{self.engine.name} engine)", location=_user_frame(cause) or self.location,
                            tasks=tasks, detail={"traceback": "".join(traceback.format_exception(cause))[-4000:]})]
        finally:
            watches[1].restore()
        if module_watch is not None:
            findings += module_watch.findings(tasks, default_location=self.location)
            module_watch.restore()
        for task, output in zip(tasks, outputs):
            diffs = differences(reference, output, self.settings.atol, self.settings.rtol)
            if diffs:
                findings.append(Finding(
                    "nondeterminism",
                    f"task {task} of {len(tasks)} returned a different output than the serial reference: "
                    + "; ".join(diffs[:3]),
                    location=self.location, tasks=[task], detail={"differences": diffs[:10]}))
                break
        return findings

    def _hang(self, what: str) -> Finding:
        return Finding("hang", f"{what} did not finish within {self.settings.timeout:g} s",
                       location=self.location, detail={"timeout_s": self.settings.timeout})


_NO_OUTPUT = object()


def _under(mode: Any, callee: Callable, args: list) -> Any:
    """Call inside ``mode``: dispatch modes are per thread, so enter it on the thread that runs the call."""
    with mode:
        return callee(*args)


def _merge(findings: list[Finding], new: list[Finding]) -> list[Finding]:
    """Add new findings, one per (kind, name): the same defect seen again is not news."""
    seen = {(f.kind, f.detail.get("name", f.message if f.kind != "nondeterminism" else "")) for f in findings}
    merged = list(findings)
    for finding in new:
        key = (finding.kind, finding.detail.get("name", finding.message if finding.kind != "nondeterminism" else ""))
        if key not in seen:
            seen.add(key)
            merged.append(finding)
    return merged


def check(target: Target, settings: Settings = Settings(), *, replay: Optional[str] = None,
          nodeid: str = "") -> CheckResult:
    """Check one target; never raises for the user's code: problems become findings or an ``error`` verdict."""
    import hypothesis
    from hypothesis import strategies as st

    import strategies as fst

    started = time.perf_counter()
    result = CheckResult(target=target.name, nodeid=nodeid, kind="target")
    seed = settings.seed if settings.seed is not None else random.randrange(2**32)
    try:
        token = ReplayToken.decode(replay) if replay else None
        if token is not None and token.target != target.name:
            raise ReplayError(f"this replay token is for {token.target}, not {target.name}")
        checker = Checker(target, settings if token is None else settings.replace(tasks=token.tasks))
    except (TargetError, MarkError, ReplayError, fst.InferenceError) as err:
        return _errored(result, started, f"setup error: {err}")
    except Exception:
        return _errored(result, started, "internal error in forkcheck while preparing the check:\n"
                        + traceback.format_exc())
    result.engine, result.engine_reason = checker.engine.name, checker.engine.reason

    @hypothesis.settings(max_examples=settings.examples, database=None, deadline=None, print_blob=True, derandomize=False,
                         suppress_health_check=list(hypothesis.HealthCheck), report_multiple_bugs=False)
    @hypothesis.seed(seed)
    @hypothesis.given(inputs=st.fixed_dictionaries(checker.strategies), data=st.data())
    def search(inputs: dict[str, Any], data: Any) -> None:
        checker.example(inputs, lambda i: _Schedule(data.draw(st.integers(0, 2**32 - 1), label=f"schedule {i}")))

    if token is not None:
        search = hypothesis.reproduce_failure(token.hypothesis_version, token.blob.encode())(search)
    findings: list[Finding] = []
    replay_token = ""
    try:
        search()
    except _Failed as failed:
        findings = failed.findings
        blob = blob_from_notes(failed)
        if blob is not None:
            replay_token = ReplayToken(target.name, blob[0], blob[1], checker.settings.tasks).encode()
    except hypothesis.errors.DidNotReproduce:
        result.stats["replay"] = "the token's example no longer fails"
    except Exception as err:
        if checker.failures and not isinstance(err, ReplayError):  # e.g. FlakyFailure: the last failure stands
            findings = checker.failures[-1][1]
            result.stats["flaky"] = f"{type(err).__name__}: the failure did not show on every rerun"
        else:
            return _errored(result, started, "internal error in forkcheck:\n" + traceback.format_exc(), checker)
    findings = _merge(findings, checker.static)
    if token is not None:
        replay_token = replay
    for finding in findings:
        finding.replay = replay_token
    result.findings = sort_findings(findings)
    result.verdict = "fail" if findings else "pass"
    if checker.failures:
        result.failing_input = checker.failures[-1][0]
    result.stats.update(seed=seed)
    _count(result, checker, started)
    return result


def _count(result: CheckResult, checker: Optional[Checker], started: float) -> None:
    if checker is not None:
        result.examples, result.schedules = checker.examples, checker.schedules
    result.duration_s = round(time.perf_counter() - started, 3)


def _errored(result: CheckResult, started: float, message: str, checker: Optional[Checker] = None) -> CheckResult:
    result.verdict = "error"
    result.error = message
    _count(result, checker, started)
    return result
