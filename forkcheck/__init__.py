"""forkcheck: make races and nondeterminism in ``torch.jit.fork``/``wait`` code show up, explained and replayable.

The path of data: target -> search -> example -> engine -> run -> oracles -> findings -> result -> report.

- What is checked: ``marker`` (``fork_safe``), ``target`` (a function, Module or compiled object), ``compiled``
  (TorchScript targets: schema, serial program), ``strategies/`` (inputs; the top-level ``strategies`` re-exports).
- Checking: ``runner`` (one target: Hypothesis examples x schedules, the oracles over each run), ``marked`` (one
  ``@pytest.mark.fork_safe`` test body; ``scripted_calls`` puts the scripted code it calls under control, ``forked``
  runs it in a forked copy of the process), ``settings`` and ``options`` (what is asked), ``replay`` (tokens).
- Running: ``engines/`` (the protocol: ``run(args, schedule, observe) -> Run``, ``calibrate``; ``script``: the real
  runtime; ``eager``: forkcheck's own scheduler; engines record, the runner judges), ``instrument``
  (scheduling points in TorchScript graphs), ``schedules/`` (one file per algorithm, ``random`` and ``pct``, each
  serving both engines: a ``Schedule`` gives the real runtime a policy and forkcheck's scheduler a chooser;
  ``portfolio`` draws a check's schedules; ``decisions`` replays recorded ones), ``dpor`` (the exhaustive search),
  ``isolation``, ``_template`` and ``pools`` (child processes, one per inter-op pool size), ``_exit`` (a steady exit
  status).
- Observing and judging: ``observe`` (the access log), ``containers`` (eager list/dict accesses), ``state`` (snapshots),
  ``locate`` (the user's line that did it), ``oracles/`` (mutation, determinism, races, static), ``interleavings`` and
  ``coverage`` (what the schedules covered), ``findings`` (findings and results), ``stats`` (a result's
  typed statistics), ``task_names``.
- Telling: ``report/`` (JSON, HTML, terminal), ``session`` (result rows and the report merge), ``plugin`` (pytest
  hooks only), ``items`` (pytest items), ``cli`` (``forkcheck check PATH``).
- For users' own tests: ``testing`` (public: the controlled scheduler, to pin, replay or enumerate the interleavings
  of one's own fork/wait code in a plain test).

Public, documented and kept stable: this package's ``__all__`` (``fork_safe``, ``check``, ``CheckResult``, ...),
``forkcheck.testing``, ``forkcheck.strategies``, ``forkcheck.marked.check_test``, the ``forkcheck`` command and the
pytest plugin's options and markers. Every other module is internal and may change; those with a leading underscore
serve one or two modules only.
"""
from .findings import KINDS, CheckResult, Finding
from .marker import MarkError, fork_safe
from .settings import Settings, SettingsError

__version__ = "0.1.0"


def check(obj, *, pool_sizes=None, **settings):
    """Check one marked (or unmarked) function or Module without pytest; returns a ``CheckResult``.

    In this process by default; ``pool_sizes=(1, 2, 4)`` checks a module-level target in child processes, one per
    inter-op pool size, and the result says which sizes showed a bug. Settings given here win over the object's own
    ``fork_safe(...)`` keywords, as a command-line option does not (the call is about this object alone).
    """
    from .runner import check as run_check
    from .settings import resolve_settings
    from .target import Target

    target = Target.from_object(obj)
    given = settings if pool_sizes is None else {**settings, "pool_sizes": pool_sizes}
    resolved = resolve_settings({**target.mark.settings, **given})
    if not resolved.pool_sizes:
        return run_check(target, resolved)
    from .pools import check_module_level

    return check_module_level(target, resolved, resolved.pool_sizes)


__all__ = ["CheckResult", "Finding", "KINDS", "MarkError", "Settings", "SettingsError", "check", "fork_safe",
           "__version__"]
