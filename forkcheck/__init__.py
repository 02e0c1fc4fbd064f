"""forkcheck: make races and nondeterminism in ``torch.jit.fork``/``wait`` code show up, explained and replayable.

Layout: ``marker`` (``fork_safe``), ``target`` (what is checked), ``runner`` (one check), ``marked`` (the check of a
``@pytest.mark.fork_safe`` test body; ``scripted_calls`` puts the scripted code it calls under control, ``forked``
runs it in a forked copy of the process), ``engines/`` (real runtime, own scheduler), ``oracles/`` (mutation,
determinism, races, static), ``findings`` (results), ``report/`` (JSON, HTML), ``plugin`` (the thin pytest layer),
``items`` (its pytest items and the adapter of marked tests).
"""
from .findings import KINDS, CheckResult, Finding
from .marker import MarkError, fork_safe
from .settings import Settings, SettingsError

__version__ = "0.1.0"


def check(obj, *, pool_sizes=None, **settings):
    """Check one marked (or unmarked) function or Module without pytest; returns a ``CheckResult``.

    In this process by default; ``pool_sizes=(1, 2, 4)`` checks a module-level target in child processes, one per
    inter-op pool size, and the result says which sizes showed a bug.
    """
    from .runner import check as run_check
    from .target import Target

    target = Target.from_object(obj)
    if pool_sizes is None:
        return run_check(target, Settings().replace(**settings))
    from .pools import check_module_level
    from .settings import validate

    sizes = validate({"pool_sizes": pool_sizes})["pool_sizes"]
    return check_module_level(target, Settings().replace(**settings), sizes)


__all__ = ["CheckResult", "Finding", "KINDS", "MarkError", "Settings", "SettingsError", "check", "fork_safe",
           "__version__"]
