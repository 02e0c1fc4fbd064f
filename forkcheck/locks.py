"""Whether the running Python code is inside ``with lock:`` for a lock: forkcheck's own scheduler does not switch a
task there (``forkcheck.engines.eager``).

A ``with`` statement calls the lock's ``__enter__`` without a call a profile function sees, so the statement is read
from the source instead: for each of the user's frames on the stack, the ``with`` blocks of its function around its
current line, whose context is a name or an attribute chain (``LOCK``, ``self._lock``, ``mod.LOCK``), looked up in
the frame (no call is made) and compared with the lock types. A lock taken by ``lock.acquire()`` is not seen.
"""
from __future__ import annotations

import ast
import linecache
import threading
from typing import Any, Optional

from .locate import is_users_frame

_LOCKS = (type(threading.Lock()), type(threading.RLock()), threading.Condition, threading.Semaphore)
_Block = tuple[int, int, tuple[str, ...]]  # the with statement's first line, its body's last line, the context's names
_BLOCKS: dict[Any, tuple[_Block, ...]] = {}  # code object -> the with blocks of its function
_FILES: dict[str, Optional[ast.AST]] = {}  # file -> its syntax tree (None: no source)


def holds_a_lock(frame: Optional[Any]) -> bool:
    """Whether ``frame`` or a caller of it is in a ``with`` block of a lock, in the user's code."""
    while frame is not None:
        code = frame.f_code
        blocks = _BLOCKS.get(code)
        if blocks is None:
            blocks = _BLOCKS[code] = _with_blocks(code) if is_users_frame(code.co_filename) else ()
        if blocks:
            line = frame.f_lineno
            if any(first < line <= last and isinstance(_look_up(frame, names), _LOCKS)
                   for first, last, names in blocks):
                return True
        frame = frame.f_back
    return False


def _with_blocks(code: Any) -> tuple[_Block, ...]:
    """The ``with`` blocks of the function ``code`` runs whose context is a name or attribute chain."""
    tree = _FILES.get(code.co_filename, False)
    if tree is False:
        source = "".join(linecache.getlines(code.co_filename))
        try:
            tree = _FILES[code.co_filename] = ast.parse(source) if source else None
        except (SyntaxError, ValueError):
            tree = _FILES[code.co_filename] = None
    if tree is None:
        return ()
    function = next((node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                     and node.name == code.co_name and _first_line(node) == code.co_firstlineno), None)
    if function is None:
        return ()
    found = []
    for node in ast.walk(function):
        if isinstance(node, ast.With) and node.body:
            for item in node.items:
                names = _names(item.context_expr)
                if names:
                    found.append((node.lineno, node.end_lineno or node.body[-1].lineno, names))
    return tuple(found)


def _first_line(function: ast.AST) -> int:
    """The line a function's code object starts at: its first decorator's, else its ``def``'s."""
    decorators = getattr(function, "decorator_list", [])
    return min([function.lineno, *(d.lineno for d in decorators)])


def _names(expression: ast.AST) -> tuple[str, ...]:
    """``a.b.c`` as ``("a", "b", "c")``; () for anything else (a call, a subscript)."""
    parts = []
    while isinstance(expression, ast.Attribute):
        parts.append(expression.attr)
        expression = expression.value
    if not isinstance(expression, ast.Name):
        return ()
    return (expression.id, *reversed(parts))


def _look_up(frame: Any, names: tuple[str, ...]) -> Any:
    """The value ``names`` stand for in ``frame``, attribute by attribute (None where one is missing)."""
    first, *rest = names
    scopes = (frame.f_locals, frame.f_globals, frame.f_builtins)
    value = next((scope[first] for scope in scopes if first in scope), None)
    for name in rest:
        try:
            value = getattr(value, name)
        except Exception:  # a property that raised: not a lock we can see
            return None
    return value

