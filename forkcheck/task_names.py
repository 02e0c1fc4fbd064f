"""Task names that read as a tree: ``task 2`` is the second instance a check forked, ``task 2.1`` the first task
that task 2 forked; ``main`` is the code that forked them. One function, for the terminal, the JSON and the page."""
from __future__ import annotations

#: Task ids encode the fork path in base ``FANOUT``: the k-th task forked by task ``p`` is ``p * FANOUT + k``.
FANOUT = 1000
OVERFLOW_BASE = 2**62  # ids past the deterministic encoding (more than FANOUT - 1 forks, or too deep)


def task_path(task: int) -> tuple[int, ...]:
    """The fork path of a task id: ``2001`` -> ``(2, 1)``; the root is ``()``."""
    if task >= OVERFLOW_BASE or task < 0:
        return (task,)
    path = []
    while task:
        task, k = divmod(task, FANOUT)
        path.append(k)
    return tuple(reversed(path))


def task_name(task: int) -> str:
    """``task 2.1`` for id 2001, ``main`` for 0; an id past the encoding keeps its number (``task #...``)."""
    if task == 0:
        return "main"
    if task >= OVERFLOW_BASE or task < 0:
        return f"task #{task}"
    return "task " + ".".join(map(str, task_path(task)))


def task_names(tasks: list) -> list[str]:
    """The names of a finding's ``tasks`` (anything but an int is left out)."""
    return [task_name(task) for task in tasks if isinstance(task, int) and not isinstance(task, bool)]
