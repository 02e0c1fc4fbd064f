"""forkcheck's own fork/wait scheduler, for code that does not script (and for replaying a schedule exactly).

While installed it replaces ``torch._C.fork`` and ``torch._C.wait``, which every alias of ``torch.jit.fork`` and
``torch.jit.wait`` calls. A fork makes a pending task; the schedule decides when pending tasks run: at each fork
and wait it may run some of them, in an order it draws, and a ``wait`` runs tasks until its own is done.
"""
from __future__ import annotations

import random
import threading
from typing import Any, Callable, Optional, Sequence

import torch

_install_lock = threading.Lock()


class ControlledFuture:
    """The future a controlled fork returns; ``wait()``/``value()``/``done()`` work as on ``torch.jit.Future``."""

    def __init__(self, scheduler: "ControlledScheduler", task_id: int, fn: Callable, args, kwargs):
        self._scheduler = scheduler
        self.task_id = task_id
        self._call = (fn, args, kwargs)
        self._done = False
        self._result: Any = None
        self._error: Optional[BaseException] = None

    def _run(self) -> None:
        fn, args, kwargs = self._call
        self._scheduler.current.append(self.task_id)
        try:
            self._result = fn(*args, **kwargs)
        except BaseException as err:  # delivered at wait, as the real runtime does
            self._error = err
            if self._scheduler.failed_task is None:
                self._scheduler.failed_task = self.task_id
        finally:
            self._scheduler.current.pop()
            self._done = True

    def done(self) -> bool:
        return self._done

    def wait(self) -> Any:
        return self._scheduler.wait(self)

    def value(self) -> Any:
        return self.wait()


class ControlledScheduler:
    """One schedule of fork/wait decisions, drawn from ``rng``; install with ``with``."""

    def __init__(self, rng: random.Random, run_early: float = 0.5):
        self.rng = rng
        self.run_early = run_early  # chance, at each fork or wait, of running pending tasks first
        self.pending: list[ControlledFuture] = []
        self.order: list[int] = []  # task ids in the order they ran: the interleaving, for the report
        self.current: list[int] = [0]
        self.failed_task: Optional[int] = None  # the first task that raised
        self._next_id = 1
        self._saved: Optional[tuple] = None

    def __enter__(self) -> "ControlledScheduler":
        _install_lock.acquire()
        self._saved = (torch._C.fork, torch._C.wait)
        torch._C.fork, torch._C.wait = self.fork, self._wait_any
        return self

    def __exit__(self, *exc) -> None:
        try:
            if exc[0] is None:
                self.drain()  # tasks nobody waited for still run, as on the real runtime
        finally:
            torch._C.fork, torch._C.wait = self._saved
            _install_lock.release()

    def fork(self, fn: Callable, *args: Any, **kwargs: Any) -> ControlledFuture:
        future = ControlledFuture(self, self._next_id, fn, args, kwargs)
        self._next_id += 1
        self.pending.append(future)
        self._maybe_run_some()
        return future

    def _wait_any(self, future: Any) -> Any:
        if isinstance(future, ControlledFuture):
            return self.wait(future)
        return self._saved[1](future)  # a real torch Future (e.g. from a scripted call)

    def wait(self, future: ControlledFuture) -> Any:
        self._maybe_run_some()
        while not future.done():
            self._step(prefer=future if not self.pending or self.rng.random() < 0.5 else None)
        if future._error is not None:
            raise future._error
        return future._result

    def drain(self) -> None:
        while self.pending:
            self._step()

    def _maybe_run_some(self) -> None:
        while self.pending and self.rng.random() < self.run_early:
            self._step()

    def _step(self, prefer: Optional[ControlledFuture] = None) -> None:
        future = prefer if prefer in self.pending else self.rng.choice(self.pending)
        self.pending.remove(future)
        self.order.append(future.task_id)
        future._run()


class EagerEngine:
    """Runs the target's instances through ``ControlledScheduler``, one schedule per run."""

    name = "eager"

    def __init__(self, instance: Any, tasks: int, reason: str):
        self.instance = instance
        self.tasks = tasks
        self.reason = reason
        self.module = instance if isinstance(instance, torch.nn.Module) else None
        self.last_order: list[int] = []

    def run(self, args: Sequence[Any], schedule: Any) -> list[Any]:
        with ControlledScheduler(random.Random(schedule.seed)) as scheduler:
            futures = [torch.jit.fork(self.instance, *args) for _ in range(self.tasks)]
            outputs = [torch.jit.wait(future) for future in futures]
        self.last_order = scheduler.order
        return outputs
