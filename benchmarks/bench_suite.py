"""What forkcheck adds to a test suite, against a baseline commit, all measured side by side in one run.

Run on demand: ``python benchmarks/bench_suite.py --baseline-python /tmp/fc-base-venv/bin/python --baseline-root
/tmp/fc-base`` (a scratch venv with the baseline commit installed editable, e.g. ``git worktree add /tmp/fc-base
5ba8d97``, a copy of the venv and ``python -m pip install --no-deps -e /tmp/fc-base`` with the copy's own
interpreter). Prints, per repeat:

- forkcheck's added wall time (plugin on minus ``-p no:forkcheck``) at ``-n 0`` on a generated suite of 24 small
  targets (16 pure, 8 unsafe) and on the bundled examples, for this tree and the baseline, and their ratio (goal
  <= 0.2x). The examples are compared on the files both trees have (this tree's newer ones, which the baseline may
  not check, left out), then this tree's are timed in full;
- ``-n 2`` against ``-n 0`` on the 24-target suite (goal >= 1.6x faster), and whether the verdicts are the same;
- a warm in-process check of the docs' ``bar`` against the same number of plain scripted fork/wait calls (goal <=
  8x), for both trees;
- the peak memory (PSS, children included) of a session on the examples suite (goal <= 2 GiB).

Timings on a loaded machine are noisy: the load average is printed with the figures; read the ratios. CPU time
(user + system, of the session and everything it started) is printed beside wall time: under load it says more.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from typing import NamedTuple, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PURE = """
def _double_{i}(x: Tensor) -> Tensor:
    return x * 2 + {i}


@fork_safe(x=fst.tensors(shape=(4,)))
def forked_{i}(x: Tensor) -> Tensor:
    return torch.jit.wait(torch.jit.fork(_double_{i}, x)) - x


@fork_safe(x=fst.tensors(shape=(2, 3)))
def siblings_{i}(x: Tensor) -> Tensor:
    a = torch.jit.fork(_double_{i}, x)
    b = torch.jit.fork(torch.neg, x)
    return torch.jit.wait(a) + torch.jit.wait(b)


def _nested_{i}(x: Tensor) -> Tensor:
    return torch.jit.wait(torch.jit.fork(_double_{i}, x)).sum(0)


@fork_safe(x=fst.tensors(shape=(3, 2)))
def nested_{i}(x: Tensor) -> Tensor:
    return torch.jit.wait(torch.jit.fork(_nested_{i}, x))


@fork_safe(x=fst.tensors(shape=(2, 4)))
class Heads_{i}(nn.Module):
    def __init__(self):
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(4, 2) for _ in range({i} + 1))

    def forward(self, x: Tensor) -> Tensor:
        futures = [torch.jit.fork(head, x) for head in self.heads]
        return torch.stack([torch.jit.wait(f) for f in futures]).sum(0)
"""

UNSAFE = """
def _bump_{i}(x: Tensor) -> Tensor:
    x.add_({i} + 1)
    return x


@fork_safe(x=fst.tensors(shape=(4,)))
def in_place_{i}(x: Tensor) -> Tensor:
    return torch.jit.wait(torch.jit.fork(_bump_{i}, x))


def _add_chunk_{i}(total: Tensor, chunk: Tensor) -> Tensor:
    total.copy_(total + chunk.sum(0))
    return total


@fork_safe(batch=fst.tensors(shape=(8, 2)))
def lost_update_{i}(batch: Tensor) -> Tensor:
    total = torch.zeros(batch.shape[1])
    futures: List[torch.jit.Future[Tensor]] = []
    for chunk in batch.chunk(4):
        futures.append(torch.jit.fork(_add_chunk_{i}, total, chunk))
    for future in futures:
        torch.jit.wait(future)
    return total


@fork_safe(x=fst.tensors(shape=(2, 3)))
class Counter_{i}(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        return x * 2


@fork_safe(x=fst.tensors(shape=(4,)))
def noisy_{i}(x: Tensor) -> Tensor:
    return x * (torch.rand(x.shape) > 0.5)
"""

HEADER = """from typing import List

import torch
from torch import Tensor, nn

import strategies as fst
from forkcheck import fork_safe
"""

INI = """[pytest]
python_files = test_*.py
filterwarnings =
    ignore:`torch\\.jit\\.\\w+` is deprecated
"""


def write_suite(directory: str) -> None:
    """24 targets: 4 kinds of pure one x 4 and 4 kinds of unsafe one x 2."""
    body = HEADER + "".join(PURE.format(i=i) for i in range(4)) + "".join(UNSAFE.format(i=i) for i in range(2))
    with open(os.path.join(directory, "test_suite_targets.py"), "w") as out:
        out.write(body)
    with open(os.path.join(directory, "pytest.ini"), "w") as out:
        out.write(INI)


class PeakMemory:
    """Samples the summed PSS of a process and all its descendants (children share pages after a fork)."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._done = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.wait(0.2):
            self.peak = max(self.peak, sum(_pss(pid) for pid in _tree(self.pid)))

    def stop(self) -> int:
        self._done.set()
        self._thread.join()
        return self.peak


def _tree(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parents[int(entry)] = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    found, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        found += frontier
    return found


def _pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Session(NamedTuple):
    seconds: float  # wall time
    cpu: float  # user + system time of the session and every process it started (a fork server's children too)
    verdicts: dict[str, str]  # by nodeid, from the JSON report
    peak: int  # bytes of PSS, when measured


def become_subreaper() -> None:
    """Orphans of a session (a fork server outliving pytest for a moment, its children) are reparented to this
    process, which reaps them: their CPU time then counts in ``RUSAGE_CHILDREN`` whoever started them."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def _reap_all(deadline_s: float = 30.0) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.05)


def session(python: str, cwd: str, path: str, workers: str, plugin: bool, memory: bool = False,
            ignore: tuple[str, ...] = ()) -> Session:
    """One pytest session, waited for with everything it started (``ignore``: files of ``path`` left out)."""
    with tempfile.TemporaryDirectory() as report:
        args = [python, "-m", "pytest", path, "-q", "-p", "xdist", "-n", workers, "-p", "no:cacheprovider"]
        args += [f"--ignore={os.path.join(path, name)}" for name in ignore]
        args += ["--forkcheck-seed", "1", "--forkcheck-report", report] if plugin else ["-p", "no:forkcheck"]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.Popen(args, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        sampler = PeakMemory(proc.pid) if memory else None
        proc.wait()
        seconds = time.perf_counter() - start
        peak = sampler.stop() if sampler else 0
        _reap_all()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        verdicts: dict[str, str] = {}
        if plugin and os.path.exists(os.path.join(report, "forkcheck.json")):
            with open(os.path.join(report, "forkcheck.json")) as data:
                verdicts = {row["nodeid"]: row["verdict"] for row in json.load(data)["results"]}
        return Session(seconds, cpu, verdicts, peak)


WARM_CHECK = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, os.path.join(sys.argv[1], "benchmarks"))
    import torch
    import strategies as fst
    from forkcheck.marker import fork_safe
    from bench_check import bar, checked, foo, plain_calls
    checked(fork_safe(foo, a=fst.tensors(shape=(4,))))  # the first check's one-time costs out of the way
    target = fork_safe(bar, a=fst.tensors(shape=(4,)))
    ratios = []
    for _ in range(3):
        seconds, runs = checked(target)
        ratios.append(seconds / plain_calls(bar, lambda: torch.randn(4), 3, runs))
    print(json.dumps(sorted(ratios)))
    sys.stdout.flush()
    os._exit(0)
""")


def warm_check_ratios(python: str, root: str) -> list[float]:
    """A warm default check of ``bar`` over as many plain scripted calls, three times, in a fresh process."""
    out = subprocess.run([python, "-c", WARM_CHECK, root], cwd=tempfile.gettempdir(), capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else []


def load() -> str:
    return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def summary(verdicts: dict[str, str]) -> str:
    counts: dict[str, int] = {}
    for verdict in verdicts.values():
        counts[verdict] = counts.get(verdict, 0) + 1
    return ", ".join(f"{n} {v}" for v, n in sorted(counts.items()))


def example_files(root: str) -> set[str]:
    return {name for name in os.listdir(os.path.join(root, "examples")) if name.endswith(".py")}


def compare(label: str, base_python: Optional[str], base_root: Optional[str], suite_dir: str) -> None:
    """One repeat: every figure, each tree's sessions run one after the other."""
    trees = [("this tree", sys.executable, ROOT)] + ([("baseline", base_python, base_root)] if base_python else [])
    # the examples both trees have (this tree's newer ones left out: the baseline may not check them), then all of
    # this tree's, with no ratio
    newer = tuple(sorted(example_files(ROOT) - example_files(base_root))) if base_root else ()
    print(f"## {label} ({load()})")
    suites = [("24-target suite", lambda root: suite_dir, suite_dir, trees, ()),
              ("examples suite" + (f" (the files both trees have; this tree's {', '.join(newer)} left out)"
                                   if newer else ""), lambda root: root, "examples", trees, newer)]
    if newer:
        suites.append(("examples suite (all of this tree's)", lambda root: root, "examples", trees[:1], ()))
    for what, cwd_of, path, checked, ignored in suites:
        added: dict[str, tuple[float, float]] = {}
        for name, python, root in checked:
            ignore = ignored if name == "this tree" else ()
            memory = what.startswith("examples suite") and not ignore
            on = session(python, cwd_of(root), path, "0", True, memory=memory, ignore=ignore)
            off = session(python, cwd_of(root), path, "0", False, ignore=ignore)
            added[name] = (on.seconds - off.seconds, on.cpu - off.cpu)
            peak = f"; peak memory {on.peak / 2**30:.2f} GiB (PSS, children included)" if on.peak else ""
            print(f"{what}, {name}, -n 0: on {on.seconds:.1f} s (cpu {on.cpu:.1f} s), off {off.seconds:.1f} s "
                  f"(cpu {off.cpu:.1f} s), added {added[name][0]:.1f} s, cpu {added[name][1]:.1f} s "
                  f"({added[name][0] / max(len(on.verdicts), 1):.2f} s per target); {summary(on.verdicts)}{peak}"
                  f" ({load()})")
        if "baseline" in added:
            print(f"{what}: added time, this tree / baseline = wall {added['this tree'][0] / added['baseline'][0]:.2f}x"
                  f", cpu {added['this tree'][1] / added['baseline'][1]:.2f}x (goal <= 0.2x)")
    serial = session(sys.executable, suite_dir, suite_dir, "0", True)
    parallel = session(sys.executable, suite_dir, suite_dir, "2", True)
    same = "identical verdicts" if serial.verdicts == parallel.verdicts else (
        f"verdicts DIFFER: {sorted(k for k in serial.verdicts if serial.verdicts[k] != parallel.verdicts.get(k))}")
    print(f"24-target suite, this tree: -n 0 {serial.seconds:.1f} s, -n 2 {parallel.seconds:.1f} s, speed-up "
          f"{serial.seconds / parallel.seconds:.2f}x (goal >= 1.6x); {same} ({load()})")
    for name, python, root in trees:
        ratios = warm_check_ratios(python, root)
        shown = ", ".join(f"{r:.1f}x" for r in ratios) or "failed"
        print(f"warm check of bar / plain scripted calls, {name}: {shown} (goal <= 8x)")
    print(f"({load()})")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-python", default="", help="python of a venv with the baseline installed")
    parser.add_argument("--baseline-root", default="", help="the baseline's work tree (its examples/ are checked)")
    parser.add_argument("--repeats", type=int, default=1)
    options = parser.parse_args()
    become_subreaper()
    with tempfile.TemporaryDirectory() as suite_dir:
        write_suite(suite_dir)
        for repeat in range(1, options.repeats + 1):
            compare(f"repeat {repeat} of {options.repeats}", options.baseline_python or None,
                    options.baseline_root or None, suite_dir)


if __name__ == "__main__":
    main()
