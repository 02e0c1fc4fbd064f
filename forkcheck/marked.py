"""The check of a marked test: its body under many schedules, what went wrong under them, as one result. No pytest.

``check_test(body, settings, name)`` runs a zero-argument callable once per schedule (a replay token's one schedule
``REPLAYS`` times, and ``stats.replays`` says how many reproduced a finding) under forkcheck's own scheduler; calls
of scripted code that forks run on the real runtime under a schedule of their own (``forkcheck.scripted_calls``).
The oracle is the body's own outcome (its assertions: ``nondeterminism``; anything else it raised: ``exception``),
a forked task's exception (``exception``), a deadlock or a schedule over the timeout (``hang``), and ``race``: two
tasks that fork/wait leaves unordered touched the same storage, one writing, under any schedule, whether or not the
body then failed. The first schedule with a finding ends the check (a replay's reruns all run).

With ``forked=True`` the schedules run in a forked copy of this process (``forkcheck.forked``), so that a crash is an
``error`` naming the signal or exit status and the last output, and a hang that no switch point can see (a loop in
the body itself, a call holding the GIL) is a ``hang`` once the copy is stopped; this process runs no fork.
"""
from __future__ import annotations

import dataclasses
import os
import random
import sys
import time
import traceback
import weakref
from typing import Any, Callable, Mapping, Optional

from . import _exit, _warnings
from .findings import CheckResult, Finding, exception_finding, hang_finding, sort_findings
from .forked import ChildDied, ChildFailed, ChildStopped, pool_started, run_forked
from .replay import ReplayError, ReplayToken
from .schedules import Schedule
from .schedules.portfolio import members
from .settings import Settings, default_seed, replayed
from .stats import DIED, FORKED, IN_PROCESS, STOPPED, Isolation, Replays, Stats

REASON = ("a marked test's Python forks run under forkcheck's scheduler, and the forks of scripted code it calls on "
          "the real runtime, under forkcheck's schedules")
ORDER_SHOWN = 24  # tasks of the order a finding's message shows
#: A marked test's PCT: depth 3 over 48 steps (a test body's steps are not counted first, as a target's are).
PCT_PARAMS = {"d": 3, "k": 48}


def check_test(body: Callable[[], Any], settings: Settings = Settings(), name: str = "test", *,
               replay: Optional[str] = None, arguments: Optional[Mapping[str, Any]] = None,
               describe_failure: Optional[Callable[[BaseException], str]] = None, forked: bool = False,
               keep_python_streams: bool = False) -> CheckResult:
    """Check one test body; never raises for the body's failures (they are findings), only for what is not a
    failure (``KeyboardInterrupt``, a test framework's skip).

    ``arguments`` name storages in race reports (a test's fixtures); ``describe_failure(err)`` says how the body's
    own failure reads (pytest's report of it; default: the traceback). ``forked``: in a forked copy of this process
    (in-process, and the result says why, when this process's inter-op pool has threads: a copy could not use it).
    ``keep_python_streams``: see ``forkcheck.forked.run_forked``.
    """
    started = time.perf_counter()
    try:
        token = ReplayToken.decode(replay) if replay else None
        if token is not None and token.target != name:
            raise ReplayError(f"this replay token is for {token.target}, not {name}")
    except ReplayError as err:
        return _result(name, started, verdict="error", error=f"setup error: {err}")
    run = _Schedules(body, settings, name, token, arguments, describe_failure)
    where = Isolation(IN_PROCESS)
    if forked and not hasattr(os, "fork"):
        where = where.noted("this platform cannot fork")
    elif forked and pool_started():
        where = where.noted("torch's inter-op pool already has threads in this process, started by earlier code: "
                            "a forked copy could not run scripted forks")
    elif forked:
        return _in_a_fork(run, settings, name, started, keep_python_streams)
    _exit.forks_ran()
    try:
        result = run.check()
    except Exception:
        return _result(name, started, verdict="error", error="internal error in forkcheck:\n" + traceback.format_exc())
    result.stats.isolation = where
    return result


def _in_a_fork(run: "_Schedules", settings: Settings, name: str, started: float, keep: bool) -> CheckResult:
    def work(send: Callable[[dict], None]) -> dict:
        run.announce = lambda number, what, token: send({"event": "run", "number": number, "what": what,
                                                         "replay": token, "timeout": settings.timeout,
                                                         "replays": run.replays and run.replays.to_json()})
        try:
            return {"result": run.check().to_json()}
        except Exception:
            raise
        except BaseException as err:  # not a failure of the body (pytest.skip, SystemExit): raised in the parent
            return {"raise": [id(type(err)), type(err).__qualname__, str(err)]}

    try:
        answer = run_forked(work, settings.timeout, keep_python_streams=keep)
    except ChildStopped as stopped:
        what = stopped.last.get("what", "the test")
        finding = hang_finding(what, settings.timeout, location=_innermost_user_line(stopped.output),
                               stacks=stopped.output[-4000:])
        finding.message += (f"; the forked copy of this process running it went silent and was stopped after "
                            f"{stopped.waited:.0f} s")
        finding.replay = stopped.last.get("replay", "")
        stats = Stats(isolation=Isolation(FORKED, STOPPED), failed_under=what)
        if stopped.last.get("replays"):  # a replay's counts before the rerun that hung, and that one (reproduced)
            replays = Replays.from_json(stopped.last["replays"])
            stats.replays = dataclasses.replace(replays, runs=replays.runs + 1, reproduced=replays.reproduced + 1,
                                                wrong_outcome=replays.wrong_outcome + 1)
        return _result(name, started, verdict="fail", findings=[finding], schedules=run.count_of(stopped.last),
                       stats=stats)
    except ChildDied as died:
        what = died.last.get("what", "the test")
        replay = died.last.get("replay", "")
        message = (f"the forked copy of this process running the test {died.how} during {what}: the test's code, or "
                   f"torch under it, ended the process" + (f" (replay token {replay})" if replay else "")
                   + ". Its last output:\n" + (died.output.rstrip() or "(none)"))
        return _result(name, started, verdict="error", error=message, stats=Stats(isolation=Isolation(FORKED, DIED)),
                       schedules=run.count_of(died.last))
    except ChildFailed as failed:
        return _result(name, started, verdict="error", error=f"internal error in forkcheck (in the forked copy):\n"
                                                             f"{failed}")
    if "raise" in answer:
        raise _rebuilt(*answer["raise"])
    result = CheckResult.from_json(answer["result"])
    result.stats.isolation = Isolation(FORKED)
    return result


class _Schedules:
    """The schedules of one test body, each seeded from the settings' seed (or the replay token's)."""

    def __init__(self, body: Callable[[], Any], settings: Settings, name: str, token: Optional[ReplayToken],
                 arguments: Optional[Mapping[str, Any]], describe_failure: Optional[Callable[[BaseException], str]]):
        self.body = body
        self.name = name
        settings = replayed(settings, token) if token is not None else settings
        self.timeout = settings.timeout
        self.strategy = settings.strategy
        rng = random.Random(default_seed(settings.seed))
        self.seeds = [token.schedule_seed] if token is not None else [
            rng.randrange(2**32) for _ in range(settings.schedules)]
        self.replaying = token is not None
        self.replays: Optional[Replays] = None  # a replay's counts so far (``stats.replays``)
        self.arguments = dict(arguments or {})
        self.describe_failure = describe_failure
        self.announce: Callable[[int, str, str], None] = lambda number, what, token: None
        self.programs: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()

    def count_of(self, message: dict) -> int:
        """The schedules begun, by the last one a child announced."""
        return int(message.get("number", 0)) or (1 if message else 0)

    def check(self) -> CheckResult:
        started = time.perf_counter()
        result = _result(self.name, started)
        names = _argument_names(self.arguments)
        notes: list[str] = []
        if self.replaying:
            self._replay(result, names, notes)
        else:
            for number, seed in enumerate(self.seeds, start=1):
                which = f"schedule {number} of {len(self.seeds)}"
                self.announce(number, which, self._token(number, seed))
                result.schedules = number
                findings = self._schedule(number, seed, which, names, notes)
                if findings:
                    self._failed(result, findings, number, which)
                    break
        if notes:
            result.stats.scripted_calls = notes
        if self.strategy == "exhaustive":
            result.stats.strategy_note = ("exhaustive search does not drive a marked test's body: its schedules "
                                          "were the portfolio's")
        result.duration_s = round(time.perf_counter() - started, 3)
        return result

    def _replay(self, result: CheckResult, names: dict[int, str], notes: list[str]) -> None:
        """Rerun the token's schedule ``REPLAYS`` times (its first failure is the result's); ``stats.replays`` says
        how many reproduced a finding and how many of those went wrong (not only a predicted race)."""
        from .runner import REPLAYS, _wrong_outcome

        [seed] = self.seeds
        which = "schedule 1 of 1"
        self.replays = Replays(schedules=1, strategy=self._kind(1), what="the test")
        for rerun in range(1, REPLAYS + 1):
            self.announce(1, f"{which}, rerun {rerun} of {REPLAYS}", self._token(1, seed))
            findings = self._schedule(1, seed, which, names, notes)
            self.replays.runs = rerun
            if findings:
                self.replays.reproduced += 1
                self.replays.wrong_outcome += _wrong_outcome(findings)
                if result.verdict != "fail":
                    self._failed(result, findings, 1, which)
        result.schedules = 1
        result.stats.replays = dataclasses.replace(self.replays)

    def _kind(self, number: int) -> str:
        kinds = members(self.strategy)
        return kinds[(number - 1) % len(kinds)]

    def _token(self, number: int, seed: int) -> str:
        return ReplayToken(self.name, "", "", 0, seed, self._kind(number)).encode()

    def _failed(self, result: CheckResult, findings: list[Finding], number: int, which: str) -> None:
        for finding in findings:
            finding.replay = self._token(number, self.seeds[number - 1])
        result.findings, result.verdict = sort_findings(findings), "fail"
        result.stats.failed_under = f"{which} ({self._kind(number)})"

    def _schedule(self, number: int, seed: int, which: str, names: dict[int, str], notes: list[str]) -> list[Finding]:
        """Run the body once under the schedule ``seed`` seeds; its findings (none: it passed)."""
        from .engines import ScheduleError
        from .engines.eager import ControlledScheduler, race_log
        from .oracles.races import outputs_affected, race_findings
        from .scripted_calls import ScriptedCalls

        kind = self._kind(number)
        log = race_log(names)
        schedule = Schedule(kind, seed, PCT_PARAMS if kind == "pct" else {})
        scheduler = ControlledScheduler(schedule.chooser(), timeout=self.timeout, observer=log)
        scripted = ScriptedCalls(log, seed, self.programs)
        failure: Optional[Exception] = None
        try:
            with _warnings.quiet_jit(), scripted, scheduler:
                self.body()
        except Exception as err:
            failure = err
        notes += [note for note in scripted.notes if note not in notes]
        log.number_nested()
        races = [] if isinstance(failure, ScheduleError) else [
            outputs_affected(race, failure is not None, judged_by="test") for race in race_findings(log)]
        return races + ([self._finding(failure, scheduler, which, kind)] if failure is not None else [])

    def _finding(self, err: Exception, scheduler: Any, which: str, kind: str) -> Finding:
        """The finding of a failed schedule: a hang, a forked task's exception, or the body's own failure."""
        from .engines import ScheduleError
        from .task_names import task_name

        order = scheduler.order[:ORDER_SHOWN] + (["..."] if len(scheduler.order) > ORDER_SHOWN else [])
        where = f"{which}, task order {' '.join(map(str, order))}"
        tasks = sorted({scheduler.tree_id(task) for task in scheduler.order} - {0})
        described = self.describe_failure(err) if self.describe_failure is not None else ""
        if isinstance(err, ScheduleError):
            from .locate import error_location

            finding = hang_finding(where, self.timeout, because=str(err), tasks=tasks,
                                   location=err.location or error_location(err),
                                   reason=type(err).__name__, traceback=described[-4000:])
        elif scheduler.failed_task is not None:
            finding = exception_finding(f"forked {task_name(scheduler.failed_task)}", err, where, tasks=tasks,
                                        traceback_text=described)
        else:
            finding = exception_finding("the test", err, where, tasks=tasks, traceback_text=described,
                                        kind="nondeterminism" if isinstance(err, AssertionError) else "exception")
        finding.detail["order"] = scheduler.order[:500]
        return finding


def _rebuilt(kind_id: int, qualname: str, text: str) -> BaseException:
    """The exception a forked copy raised that was no failure of the body, made again here from its text and its
    type: the copy's type is this process's, at the same address (it was made before the fork; pytest's outcome
    types say their module is ``builtins``, so a name cannot find them)."""
    name = qualname.rsplit(".", 1)[-1]
    for module in list(sys.modules.values()):
        kind = getattr(module, name, None)
        if id(kind) == kind_id and isinstance(kind, type) and issubclass(kind, BaseException):
            try:
                return kind(text)
            except Exception:  # noqa: BLE001 - a constructor of another shape: said, not rebuilt
                break
    return RuntimeError(f"the test raised {qualname}: {text}")


def _argument_names(arguments: Mapping[str, Any]) -> dict[int, str]:
    """Storage key -> the argument (or ``argument.attribute`` of a Module argument) a race report names it by."""
    import torch

    from .observe import storage_names

    names = storage_names(arguments)
    for name, value in arguments.items():
        if isinstance(value, torch.nn.Module):
            for key, path in storage_names(module=value).items():
                names.setdefault(key, name + path[len("self"):])
    return names


def _innermost_user_line(stacks: str) -> str:
    """``file:line`` of the user's code in ``faulthandler``'s dump of the stopped copy (``locate.users_line``): from
    a thread that was running it if one was (a task in its loop), else from one waiting in it (the test at its
    ``wait``)."""
    import re

    from .locate import users_line

    frame = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+)')
    return users_line([(m["file"], int(m["line"])) for m in frame.finditer(thread)]
                      for thread in re.split(r"\n(?=(?:Current thread|Thread) 0x)", stacks))


def _result(name: str, started: float, **fields: Any) -> CheckResult:
    result = CheckResult(target=name, kind="test", nodeid=name, engine="eager", engine_reason=REASON, examples=1,
                         **fields)
    result.duration_s = round(time.perf_counter() - started, 3)
    return result
