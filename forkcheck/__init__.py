"""forkcheck: make races and nondeterminism in ``torch.jit.fork``/``wait`` code show up, explained and replayable.

Layout: ``marker`` (``fork_safe``), ``target`` (what is checked), ``runner`` (one check), ``engines/`` (real runtime,
own scheduler), ``oracles/`` (mutation, determinism, static), ``findings`` (results), ``report/`` (JSON, HTML),
``plugin`` (the thin pytest layer).
"""
from .findings import KINDS, CheckResult, Finding
from .marker import MarkError, fork_safe
from .settings import Settings, SettingsError

__version__ = "0.1.0"


def check(obj, **settings):
    """Check one marked (or unmarked) function or Module without pytest; returns a ``CheckResult``."""
    from .runner import check as run_check
    from .target import Target

    return run_check(Target.from_object(obj), Settings().replace(**settings))


__all__ = ["CheckResult", "Finding", "KINDS", "MarkError", "Settings", "SettingsError", "check", "fork_safe",
           "__version__"]
