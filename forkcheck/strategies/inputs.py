"""One example's inputs: every parameter's strategy drawn in turn, and a strategy's failure named by its parameter.

A strategy the user gave that raises, can never give a value, or rejects every value it draws is the user's
mistake, not a bug in forkcheck: ``StrategyError`` names the parameter and the fix. ``fingerprint`` stands for what
a replay token's choices were drawn for (the parameters and their strategies), so a token can tell it no longer fits.
"""
from __future__ import annotations

import collections
import hashlib
import os
import re
from typing import Any, Collection, Mapping, Optional

import hypothesis
from hypothesis import strategies as st
from hypothesis.errors import HypothesisException, InvalidArgument, StopTest, UnsatisfiedAssumption

from ..locate import error_location

__all__ = ["Inputs", "StrategyError"]

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")  # in default reprs: differs from process to process
_HYPOTHESIS_DIR = os.path.dirname(hypothesis.__file__)


class StrategyError(Exception):
    """A parameter's strategy cannot give inputs; the message names the parameter and the fix."""

    def __init__(self, message: str, parameter: str) -> None:
        super().__init__(message)
        self.parameter = parameter


class Inputs:
    """The strategy of one example's inputs, a dictionary by parameter; ``given`` names the parameters whose
    strategy the user gave (a failure of the others' is forkcheck's own)."""

    def __init__(self, strategies: Mapping[str, st.SearchStrategy], given: Collection[str], what: str) -> None:
        self.strategies = dict(strategies)
        self.what = what
        self.rejected: collections.Counter[str] = collections.Counter()  # parameter -> draws it abandoned
        for name in given:
            if self._empty(name):
                raise StrategyError(f"the strategy for parameter '{name}' of {what} is empty "
                                    f"({self.strategies[name]!r}): it can never give a value. Give one that can: "
                                    f"@fork_safe({name}=...)", name)
        self.strategy = st.fixed_dictionaries(
            {name: _attributed(self, name, strategy) if name in given else strategy
             for name, strategy in self.strategies.items()})

    @property
    def fingerprint(self) -> str:
        """A short digest of the parameter names and their strategies, the same in every process."""
        text = "\n".join(f"{name}={_ADDRESS.sub('', repr(strategy))}" for name, strategy in self.strategies.items())
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()

    def failed(self, name: str, err: BaseException) -> StrategyError:
        """The error for parameter ``name``'s strategy raising ``err``."""
        where = error_location(err)
        where = f" at {where}" if where and not where.startswith(_HYPOTHESIS_DIR) else ""
        text = str(err).strip().splitlines()
        return StrategyError(f"the strategy for parameter '{name}' of {self.what} raised {type(err).__name__}: "
                             f"{text[0] if text else ''}{where} while drawing an input. Fix the strategy given as "
                             f"@fork_safe({name}=...)", name)

    def unsatisfiable(self) -> Optional[StrategyError]:
        """Why Hypothesis found no input, when the user's strategies are to blame: the one that rejected most."""
        if not self.rejected:
            return None
        name, count = self.rejected.most_common(1)[0]
        return StrategyError(f"the strategy for parameter '{name}' of {self.what} rejects every value it draws "
                             f"({count} tries; {self.strategies[name]!r}): a .filter() or assume() that (almost) "
                             f"nothing passes. Loosen it, or build values that pass: st.integers(min_value=1) "
                             f"rather than st.integers().filter(lambda v: v > 0)", name)

    def _empty(self, name: str) -> bool:
        try:
            return self.strategies[name].is_empty
        except Exception as err:  # a lazily built strategy validates its arguments here
            raise self.failed(name, err) from None


@st.composite
def _attributed(draw: Any, inputs: Inputs, name: str, strategy: st.SearchStrategy) -> Any:
    """Draw from the user's ``strategy`` for ``name``; an error in it becomes that parameter's ``StrategyError``."""
    try:
        return draw(strategy)
    except (StopTest, UnsatisfiedAssumption):  # the test case is abandoned: a filter or assume() rejected it
        inputs.rejected[name] += 1
        raise
    except InvalidArgument as err:  # the strategy was built wrongly (Hypothesis checks lazily)
        raise inputs.failed(name, err) from None
    except HypothesisException:
        raise
    except Exception as err:
        raise inputs.failed(name, err) from None
