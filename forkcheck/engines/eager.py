"""forkcheck's own fork/wait scheduler: forked tasks interleave op by op, in an order the schedule decides.

While installed it replaces ``torch._C.fork`` and ``torch._C.wait`` (which every alias of ``torch.jit.fork`` and
``torch.jit.wait`` calls; the ``torch.jit`` attributes stay untouched, so ``torch.jit.script`` keeps working). Each
forked task runs on its own thread, but only the task holding the baton runs. Switch points:

- a fork (the child is created, the parent may go on or give way),
- a wait on an unfinished task (the waiter blocks, another task runs),
- before every tensor op of a task (a ``TorchDispatchMode`` entered on each task's thread; views and ops without
  tensor arguments are not switch points: they read no shared data),
- the end of a task.

A task inside ``with lock:`` (``forkcheck.locks``) is not switched at its ops: a task given the baton that then
waited for the lock would block where no switch point is, and the run would hang although the program cannot.

At each point a chooser (``forkcheck.schedules.Chooser``) picks the next task among the runnable ones, the current
task first (index 0: no preemption). Every real choice is recorded in ``decisions``; ``Replay(decisions)`` reruns the
same interleaving. Choices are made on the thread that entered the scheduler (the controller) unless the chooser says
any thread will do, so Hypothesis data can drive them.

A task's exception is raised at its wait; tasks nobody waits for run to completion before the ``with`` block exits.
A deadlock (a task waiting for itself, a cycle of waits) raises :class:`Deadlock`; a schedule that does not finish
within ``timeout`` seconds raises :class:`ScheduleTimeout` (both ``forkcheck.engines.ScheduleError``). Either way
every blocked task is released and unwound (with an exception that ``except Exception`` does not catch); a task
stuck in a pure-Python loop cannot be stopped and is left running as a daemon thread, no longer under control (its
later forks and waits go to the real runtime).
The root task (the code inside the ``with`` block, on the controller thread) is not interrupted: a caller that
needs a bound on it runs the block in a thread of its own.

An ``observer`` (``forkcheck.observe.AccessLog``: see :class:`Observer`) is told which task runs on which thread and
each fork, task end and wait that got past its task, and is entered as a dispatch mode on every task's thread below
the switch point, so an access is recorded when the task that makes it holds the baton. Without one nothing is paid.
"""
from __future__ import annotations

import atexit
import bisect
import queue
import random
import sys
import threading
import time
from contextlib import nullcontext
from typing import Any, Callable, Optional, Protocol, Sequence, Union

import torch

from .._dispatch import DispatchMode
from ..locate import frame_line
from ..locks import holds_a_lock
from ..schedules import Chooser, Choices, RandomChoices, Replay
from . import Deadlock, Observe, Run, ScheduleError, ScheduleTimeout
from ..task_names import FANOUT, OVERFLOW_BASE

_install_lock = threading.Lock()

RUNNABLE, BLOCKED, DONE = "runnable", "blocked", "done"
_ALL = object()  # what the root waits for when the ``with`` block exits
_RUN = object()  # controller message: the root holds the baton again


class _Abort(BaseException):
    """Unwinds a task after the schedule failed; a BaseException so that ``except Exception`` lets it pass."""


class _Task:
    __slots__ = ("id", "tree_id", "forks", "parent", "name", "call", "state", "waiting_for", "waiting_at", "waiters",
                 "result", "error", "baton", "thread", "ident", "future", "grad", "inference")

    def __init__(self, task_id: int, parent: Optional["_Task"], call: Optional[tuple]):
        self.id = task_id  # the order tasks were forked in: what the choosers choose among
        self.forks = 0
        if parent is not None:  # the id reports name as a tree (``forkcheck.task_names``): 1001 is task 1.1
            parent.forks += 1
        self.tree_id = parent.tree_id * FANOUT + parent.forks if parent is not None else 0
        if parent is not None and (parent.forks >= FANOUT or self.tree_id >= OVERFLOW_BASE):
            self.tree_id = OVERFLOW_BASE + task_id  # past the encoding: unique, named by number
        self.parent = parent
        self.call = call
        fn = call[0] if call else None
        self.name = getattr(fn, "__qualname__", None) or type(fn).__name__ if fn is not None else "root"
        self.state = RUNNABLE
        self.waiting_for: Any = None
        self.waiting_at = ""
        self.waiters: list[_Task] = []
        self.result: Any = None
        self.error: Optional[BaseException] = None
        self.baton = threading.Lock()  # held while the task may not run; released to hand it the baton
        self.baton.acquire()
        self.thread: Optional[threading.Thread] = None
        self.ident: Optional[int] = None
        self.future: Optional[ControlledFuture] = None
        self.grad = torch.is_grad_enabled()
        self.inference = torch.is_inference_mode_enabled()

    def __repr__(self) -> str:
        return f"task {self.id} ({self.name})" if self.id else "task 0 (the root)"


class Observer(Protocol):
    """What the scheduler tells an access log (``forkcheck.observe.AccessLog``), in the order things happen."""

    def enter(self, task: int, location: str = "") -> None:
        """The calling thread runs ``task`` from now on."""

    def fork(self, parent: int, child: int, location: str = "") -> None:
        """``parent`` forked ``child`` (before ``child`` ran anything)."""

    def end(self, task: int) -> None:
        """``task`` finished (before its waiters go on)."""

    def join(self, task: int, child: Optional[int] = None, location: str = "") -> None:
        """``task`` got past a wait for the finished ``child``."""

    def __enter__(self) -> Any:
        """Entered on each task's thread, as a dispatch mode below the switch point."""

    def __exit__(self, *exc: Any) -> Any:
        ...


def _by_id(task: _Task) -> int:
    return task.id


class ControlledFuture:
    """The future a controlled fork returns; ``wait()``/``value()``/``done()`` work as on ``torch.jit.Future``."""

    def __init__(self, scheduler: "ControlledScheduler", task: _Task):
        self._scheduler = scheduler
        self._task = task

    @property
    def task_id(self) -> int:
        return self._task.id

    def done(self) -> bool:
        return self._task.state == DONE

    def wait(self) -> Any:
        return self._scheduler.wait(self)

    def value(self) -> Any:
        return self.wait()

    def __repr__(self) -> str:
        return f"<ControlledFuture of {self._task!r}, {self._task.state}>"


_SKIP: dict[Any, bool] = {}  # op -> no switch point before it


def _no_switch(func: Any) -> bool:
    """Views and ops without tensor arguments read no shared data: no switch point before them."""
    if getattr(func, "is_view", False):
        return True
    schema = getattr(func, "_schema", None)
    return schema is not None and not any("Tensor" in str(arg.type) for arg in schema.arguments)


class _SwitchMode(DispatchMode):
    """Entered on a task's own thread: a switch point before each tensor op the task runs."""

    def __init__(self, scheduler: "ControlledScheduler", task: _Task):
        super().__init__()
        self.scheduler = scheduler
        self.task = task

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        skip = _SKIP.get(func)
        if skip is None:
            skip = _SKIP[func] = _no_switch(func)
        if not skip:
            self.scheduler._op_point(self.task)
        return func(*args, **(kwargs or {}))


_settle_registered = False


def _pool_threads_saw_the_mode() -> None:
    """Pool threads copy the forking thread's dispatch modes and drop them (taking the GIL) after the task's future
    is complete; a process that exits in that moment aborts ("terminate called without an active exception"). Give
    them a moment at exit, in processes where it can happen."""
    global _settle_registered
    if not _settle_registered:
        _settle_registered = True
        atexit.register(time.sleep, 0.2)


def _as_chooser(choose: Any) -> Chooser:
    if choose is None:
        return RandomChoices(random.Random())
    if isinstance(choose, random.Random):
        return RandomChoices(choose)
    if hasattr(choose, "pick"):
        return choose
    if callable(choose):
        return Choices(choose)
    raise TypeError(f"ControlledScheduler takes a random.Random, a chooser or a choose(n) callable, not {choose!r}")


class ControlledScheduler:
    """One controlled schedule. ``with ControlledScheduler(choose, timeout=60) as s:`` installs it on this thread.

    ``choose``: a ``random.Random`` (uniform random choices), a chooser from ``forkcheck.schedules`` (``PCT``,
    ``Replay``, ...), or a bare ``choose(n) -> index`` callable (called only on this thread, only where ``n > 1``).
    After the block: ``order`` (task ids in the order they got the baton, starting with the root 0),
    ``decisions`` (every real choice, for ``Replay``), ``failed_task`` (the first task that raised, or None),
    ``errors`` (task id -> exception), ``events`` and ``stats``. ``observer``: an access log (see :class:`Observer`),
    handed also to a chooser that reads it (``observe(log)``: an exhaustive search's run, ``forkcheck.dpor.Probe``).
    """

    def __init__(self, choose: Union[random.Random, Chooser, Callable[[int], int], None] = None, *,
                 timeout: Optional[float] = 60.0, observer: Optional[Observer] = None):
        self.chooser = _as_chooser(choose)
        self.timeout = timeout
        self.observer = observer
        if observer is not None and hasattr(self.chooser, "observe"):
            self.chooser.observe(observer)
        self._observing = False  # the observer is entered on the controller thread
        self.order: list[int] = []
        self.decisions: list[int] = []
        self.failed_task: Optional[int] = None
        self.errors: dict[int, BaseException] = {}
        # (switch points so far, kind, task, other): ("fork", parent, child), ("wait", waiter, awaited),
        # ("done", task, parent)
        self.events: list[tuple[int, str, int, int]] = []
        self.switch_points = 0
        self.steps = 0  # switch points where the task could go on (PCT's steps)
        self.preemptions = 0
        self._tasks: list[_Task] = []  # by id; the root is 0
        self._runnable: list[_Task] = []  # by id
        self._unfinished = 0  # forked tasks not done
        self._released: set[_Task] = set()
        self._root: Optional[_Task] = None
        self._running: Optional[_Task] = None
        self._controller: Optional[int] = None
        self._messages: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self._local = threading.local()
        self._deadline: Optional[float] = None
        self._aborted = False
        self._broken: Optional[BaseException] = None  # the error that stopped the schedule
        self._active = False
        self._saved: Optional[tuple] = None
        self._mode: Optional[_SwitchMode] = None

    # --- install / uninstall ------------------------------------------------------------------------------

    def __enter__(self) -> "ControlledScheduler":
        if self._saved is not None or self._root is not None:
            raise RuntimeError("a ControlledScheduler runs one schedule; make a new one for the next")
        if not _install_lock.acquire(timeout=self.timeout if self.timeout is not None else -1):
            raise ScheduleTimeout("another controlled schedule is still installed in this process (a hung run?)")
        self._saved = (torch._C.fork, torch._C.wait)
        try:
            self._deadline = None if self.timeout is None else time.monotonic() + self.timeout
            self._controller = threading.get_ident()
            self._root = root = _Task(0, None, None)
            root.ident = self._controller
            self._tasks.append(root)
            self._runnable.append(root)
            self._running = root
            self.order.append(0)
            self._local.task = root
            torch._C.fork, torch._C.wait = self.fork, self._wait_any
            self._active = True
            if self.observer is not None:  # below the switch mode: an op is recorded after its switch point
                self.observer.__enter__()
                self._observing = True
                self.observer.enter(root.tree_id)
            mode = _SwitchMode(self, root)
            mode.__enter__()
            self._mode = mode
        except BaseException:
            self._uninstall()
            raise
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if self._broken is None:
                try:
                    self._drain()  # tasks nobody waited for still run, as on the real runtime
                except BaseException as err:
                    if exc_type is None or not isinstance(err, Exception):
                        raise
                    exc.add_note(f"forkcheck: then the tasks nobody waited for could not finish: {err}")
                else:
                    if self.observer is not None:  # the root is past every task's end now
                        for task in self._tasks[1:]:
                            self.observer.join(self._root.tree_id, task.tree_id, "")
        finally:
            self._uninstall()

    def _uninstall(self) -> None:
        try:
            if self._mode is not None:
                self._mode.__exit__(None, None, None)
                self._mode = None
            if self._observing:
                self._observing = False
                self.observer.__exit__(None, None, None)
            self._abort()
            for task in self._tasks[1:]:  # finished tasks' threads are ending: let them end before we return
                if task.thread is not None and task.state == DONE and task not in self._released:
                    task.thread.join(1.0)
        finally:
            if self._saved is not None:
                torch._C.fork, torch._C.wait = self._saved
                self._active = False
                _install_lock.release()
            self._local.task = None

    def _abort(self) -> None:
        """Release every unfinished task; each unwinds with ``_Abort`` at its next switch point."""
        stuck = [t for t in self._tasks[1:] if t.state != DONE and t not in self._released]
        if not stuck:
            return
        self._aborted = True
        released = []
        for task in stuck:
            if task.thread is None:
                task.state = DONE  # never started
            elif task is not self._running:  # the running one is past reach: it stops at its next switch point
                released.append(task)
                try:
                    task.baton.release()
                except RuntimeError:  # already released
                    pass
        self._released.update(stuck)
        self._running = None
        end = time.monotonic() + 1.0
        for task in released:
            task.thread.join(max(0.0, end - time.monotonic()))

    # --- the patched torch._C.fork / torch._C.wait ----------------------------------------------------------

    def fork(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        parent = getattr(self._local, "task", None)
        if parent is None or not self._active:  # a thread outside this schedule: the real runtime
            return self._saved[0](fn, *args, **kwargs)
        self._check_live(parent)
        child = _Task(len(self._tasks), parent, (fn, args, kwargs))
        child.future = ControlledFuture(self, child)
        self._tasks.append(child)
        self._runnable.append(child)  # ids grow: the list stays sorted
        self._unfinished += 1
        self.events.append((self.switch_points, "fork", parent.id, child.id))
        if self.observer is not None:
            self.observer.fork(parent.tree_id, child.tree_id, frame_line(sys._getframe(1)))
        self._switch(parent, True)
        return child.future

    def _wait_any(self, future: Any) -> Any:
        if isinstance(future, ControlledFuture):
            return self.wait(future)
        return self._saved[1](future)  # a real torch Future (e.g. from a scripted call)

    def wait(self, future: ControlledFuture) -> Any:
        target = future._task
        waiter = getattr(self._local, "task", None) if future._scheduler is self and self._active else None
        where = ""
        if target.state != DONE:
            if waiter is None:
                raise RuntimeError(f"{target!r} is unfinished and cannot be waited for outside its schedule")
            self._check_live(waiter)
            self.events.append((self.switch_points, "wait", waiter.id, target.id))
            where = frame_line(sys._getframe(1))
            self._block_on(waiter, target, where)
            self._switch(waiter, False)
        if self.observer is not None and waiter is not None:
            self.observer.join(waiter.tree_id, target.tree_id, where or frame_line(sys._getframe(1)))
        if target.error is not None:
            raise target.error
        return target.result

    # --- switching -------------------------------------------------------------------------------------------

    def _op_point(self, task: _Task) -> None:
        if task.ident != threading.get_ident():  # an op of a real-runtime fork (a scripted call's pool thread)
            _pool_threads_saw_the_mode()
            return
        if not self._aborted and holds_a_lock(sys._getframe(2)):
            return  # a task switched to that waits for the lock could not give the baton back
        if self._aborted:
            if task is self._root:
                return  # the schedule was stopped; the root's own ops run uncontrolled
            raise _Abort()
        self._switch(task, True)

    def _switch(self, task: _Task, can_continue: bool) -> None:
        """``task`` (holding the baton) reached a switch point: pick who runs next and, unless ``task``, wait."""
        self.switch_points += 1
        self.steps += can_continue
        if task is self._root:
            try:
                chosen = self._choose(task, can_continue)
                if chosen is not task:
                    self._give(chosen)
                    self._block(task)
            except BaseException as err:
                self._stop(err)
                raise
            return
        try:
            chosen = self._choose(task, can_continue)  # None: the controller decides
        except _Abort:
            raise
        except BaseException as err:  # raised on the controller's thread
            self._running = None
            self._messages.put(("raise", err, None, None))
            chosen = None
        if chosen is task:
            return
        if chosen is not None:
            self._give(chosen)
        if task.state != DONE:
            self._block(task)

    def _check_live(self, task: _Task) -> None:
        if self._broken is not None and task is self._root:
            raise ScheduleError(f"the schedule was stopped by an earlier error: {self._broken}")
        if self._aborted:
            raise _Abort()

    def _stop(self, err: BaseException) -> None:
        """The schedule cannot go on: no draining; every task is released and unwinds."""
        self._broken = err
        self._abort()
        self._aborted = True

    def _choose(self, task: _Task, can_continue: bool) -> Optional[_Task]:
        if self._deadline is not None and time.monotonic() > self._deadline:
            raise self._timeout_error(task, at_switch_point=True)
        if can_continue:
            options = [task]
            options += [t for t in self._runnable if t is not task]
        else:
            options = list(self._runnable)
        if not options:
            raise self._deadlock_error()
        if not self.chooser.any_thread:
            if len(options) == 1:
                return self._note(options[0])
            if task is not self._root:
                self._running = None
                self._messages.put(("decide", task, options, can_continue))
                return None
        return self._decide(options, can_continue)

    def _decide(self, options: list[_Task], can_continue: bool) -> _Task:
        index = self.chooser.pick([t.id for t in options], can_continue)
        if len(options) > 1:
            if not 0 <= index < len(options):
                raise ValueError(f"the schedule chose option {index} of {len(options)}")
            self.decisions.append(index)
            if can_continue and index:
                self.preemptions += 1
        return self._note(options[index])

    def _note(self, chosen: _Task) -> _Task:
        if chosen.id != self.order[-1]:
            self.order.append(chosen.id)
        return chosen

    def _give(self, task: _Task) -> None:
        """Hand the baton to ``task`` (the caller stops touching scheduler state right after)."""
        self._running = task
        if task is self._root:
            self._messages.put(_RUN)
        elif task.thread is None:
            task.thread = threading.Thread(target=self._body, args=(task,), daemon=True,
                                           name=f"forkcheck-task-{task.id}")
            task.thread.start()
        else:
            try:
                task.baton.release()
            except RuntimeError:  # released already by an abort
                pass

    def _block(self, task: _Task) -> None:
        """Wait until ``task`` holds the baton again (the root serves the other tasks' requests meanwhile)."""
        if task is not self._root:
            task.baton.acquire()
            if self._aborted:
                raise _Abort()
            return
        while True:
            try:
                if self._deadline is None:
                    message = self._messages.get()
                else:
                    # a task that reaches switch points reports the timeout itself, with its line: give it a moment
                    message = self._messages.get(timeout=max(0.0, self._deadline + 0.1 - time.monotonic()))
            except queue.Empty:
                raise self._timeout_error(self._running) from None
            if message is _RUN:
                return
            kind, payload, options, can_continue = message
            if kind == "raise":
                raise payload
            chosen = self._decide(options, can_continue)
            if chosen is self._root:
                self._running = chosen
                return
            self._give(chosen)

    def _body(self, task: _Task) -> None:
        fn, args, kwargs = task.call
        task.call = None
        task.ident = threading.get_ident()
        self._local.task = task
        observer = self.observer
        if observer is not None:
            observer.enter(task.tree_id)
        try:
            with torch.inference_mode(task.inference) if task.inference else torch.set_grad_enabled(task.grad):
                with observer if observer is not None else nullcontext(), _SwitchMode(self, task):
                    task.result = fn(*args, **kwargs)
        except _Abort:
            pass
        except BaseException as err:  # delivered at wait, as the real runtime does
            task.error = err
            self.errors[task.id] = err
            if self.failed_task is None and not self._aborted:
                self.failed_task = task.tree_id
        finally:
            self._local.task = None
        if not self._aborted:
            self._finish(task)
        else:
            task.state = DONE

    def _block_on(self, task: _Task, target: Any, where: str) -> None:
        task.state, task.waiting_for, task.waiting_at = BLOCKED, target, where
        self._runnable.remove(task)
        if target is not _ALL:
            target.waiters.append(task)

    def _unblock(self, task: _Task) -> None:
        task.state, task.waiting_for = RUNNABLE, None
        bisect.insort(self._runnable, task, key=_by_id)

    def _finish(self, task: _Task) -> None:
        if self.observer is not None:
            self.observer.end(task.tree_id)
        task.state = DONE
        self._runnable.remove(task)
        self._unfinished -= 1
        self.events.append((self.switch_points, "done", task.id, task.parent.id))
        for waiter in task.waiters:
            self._unblock(waiter)
        if self._unfinished == 0 and self._root.waiting_for is _ALL:
            self._unblock(self._root)
        try:
            self._switch(task, False)
        except _Abort:
            pass

    def _drain(self) -> None:
        if self._unfinished:
            self._block_on(self._root, _ALL, "the end of the schedule")
            self._switch(self._root, False)

    # --- errors ------------------------------------------------------------------------------------------------

    def _deadlock_error(self) -> Deadlock:
        lines = []
        for task in self._tasks:
            if task.state == BLOCKED:
                what = "every task to finish" if task.waiting_for is _ALL else repr(task.waiting_for)
                lines.append(f"{task!r} waits for {what}" + (f" at {task.waiting_at}" if task.waiting_at else ""))
        return Deadlock("deadlock: no task can run; " + "; ".join(lines))

    def _timeout_error(self, running: Optional[_Task], at_switch_point: bool = False) -> ScheduleTimeout:
        where = line = ""
        if running is not None and running.ident is not None:
            frame = sys._getframe() if at_switch_point else sys._current_frames().get(running.ident)
            line = frame_line(frame)
            where = f"; {running!r} was running" + (f" at {line}" if line else "")
            where += " (still reaching switch points: a loop that never ends?)" if at_switch_point else \
                " and reached no switch point since (a loop without tensor ops, or a blocking call?)"
        return ScheduleTimeout(f"the schedule did not finish within {self.timeout:g} s{where}", location=line)

    # --- statistics --------------------------------------------------------------------------------------------

    def tree_id(self, task_id: int) -> int:
        """The id a report names task ``task_id`` by (``forkcheck.task_names``): its fork path, not its fork order."""
        return self._tasks[task_id].tree_id if 0 <= task_id < len(self._tasks) else task_id

    @property
    def stats(self) -> dict[str, int]:
        return {"switch_points": self.switch_points, "steps": self.steps, "decisions": len(self.decisions),
                "preemptions": self.preemptions, "switches": len(self.order) - 1,
                "tasks": len(self._tasks), "tasks_run": len(set(self.order))}


def _op_location() -> str:
    """Where the op being recorded is written: the innermost frame of the user's code."""
    return frame_line(sys._getframe(1))


def race_log(names: Optional[dict[int, str]] = None, containers: Optional[dict[int, str]] = None) -> Any:
    """An access log to observe one controlled schedule, lists and dicts included; ``names``
    (``forkcheck.observe.storage_names``) and ``containers`` (``forkcheck.containers.container_names``) name
    storages and containers in its race reports."""
    from ..observe import AccessLog

    return AccessLog(names=names, locate=_op_location, containers=containers or {})


class EagerEngine:
    """Runs the target's instances through ``ControlledScheduler``, one schedule per run; ``param_names`` name the
    inputs in the access log's race reports."""

    name = "eager"
    scripted = None
    runs_python = True

    def __init__(self, instance: Any, tasks: int, reason: str, timeout: Optional[float] = 60.0,
                 param_names: Sequence[str] = ()):
        self.instance = instance
        self.tasks = tasks
        self.reason = reason
        self.timeout = timeout
        self.param_names = list(param_names)
        self.module = instance if isinstance(instance, torch.nn.Module) else None
        self.last: Optional[ControlledScheduler] = None  # the last run's scheduler: order, decisions, events
        self._interleavings: set[tuple[int, ...]] = set()
        self._totals = {"schedules": 0, "preemptions": 0, "decisions": 0, "switch_points": 0}

    def run(self, args: Sequence[Any], schedule: Any, observe: Observe) -> Run:
        """Fork ``tasks`` instances on ``args`` under ``schedule``'s chooser (``schedule.chooser()``: a
        ``forkcheck.schedules.Schedule``, ``Recorded`` or ``forkcheck.dpor.Probe``).

        A task's exception, a deadlock or a timeout (``ScheduleError``) is the run's ``error``. ``observe``: what
        to log (an exhaustive search's run logs every access whatever it says: the search reads the log).
        """
        return self._run(args, schedule.chooser(), self.timeout, observe)

    def calibrate(self, args: Sequence[Any]) -> int:
        """Run once without preemption; return its steps (PCT's ``k``: switch points where a task could go on)."""
        return max(1, self._run(args, Replay([]), self.timeout, Observe.NOTHING, count=False).steps)

    def _run(self, args: Sequence[Any], chooser: Chooser, timeout: Optional[float], observe: Observe,
             count: bool = True) -> Run:
        log = None
        searched = hasattr(chooser, "observe")  # an exhaustive search's run (``forkcheck.dpor.Probe``) reads the log
        if (observe is not Observe.NOTHING or searched) and count:
            from ..containers import container_names
            from ..observe import AccessLog, storage_names

            named = dict(zip(self.param_names, args))
            if observe is Observe.ACCESSES or searched:
                log = race_log(storage_names(named, self.module), container_names(named, self.module))
            else:  # only the run's signature: tensor accesses, no lines (a third of a full log's cost, measured)
                log = AccessLog()
        scheduler = self.last = ControlledScheduler(chooser, timeout=timeout, observer=log)
        outputs: list[Any] = []
        error: Optional[Exception] = None
        try:
            with scheduler:
                futures = [torch._C.fork(self.instance, *args) for _ in range(self.tasks)]
                outputs = [torch._C.wait(future) for future in futures]
        except Exception as err:  # the target's failure (or the schedule's): the runner judges it
            error = err
        stats = scheduler.stats
        trace = None
        if log is not None:
            from ..interleavings import signature

            trace = signature(log)
        if count:
            self._interleavings.add(tuple(scheduler.order))
            self._totals["schedules"] += 1
            for key in ("preemptions", "decisions", "switch_points"):
                self._totals[key] += stats[key]
        return Run(outputs, tuple(scheduler.order), stats["switches"], stats["steps"], error=error,
                   log=log if observe is Observe.ACCESSES else None, trace=trace,
                   decisions=list(scheduler.decisions))

    @property
    def stats(self) -> dict[str, int]:
        """Totals over every run so far: schedules, distinct interleavings, preemptions, decisions, switch points."""
        return {**self._totals, "interleavings": len(self._interleavings)}
