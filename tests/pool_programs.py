"""Programs checked under several inter-op pool sizes (imported by child processes, so not a test module)."""
import threading
import time

import torch
from torch import Tensor

import strategies as fst
from forkcheck import fork_safe


def _bump(acc: Tensor, x: Tensor) -> Tensor:
    for _ in range(x.numel()):
        seen = acc[0].item()
        acc[0] = seen + 1.0  # read, then write: a lost update when a sibling runs in between
    return acc


@fork_safe(x=fst.tensors(shape=(16,)))
def siblings(x: Tensor) -> Tensor:
    """Two sibling forks update one local tensor: they overlap only when the pool has a second thread."""
    acc = torch.zeros(1)
    first, second = torch.jit.fork(_bump, acc, x), torch.jit.fork(_bump, acc, x)
    torch.jit.wait(first)
    torch.jit.wait(second)
    return acc


@fork_safe(x=fst.tensors(shape=(4,)))
def pure(x: Tensor) -> Tensor:
    return torch.jit.wait(torch.jit.fork(torch.mul, x, 2)) + 1


@torch.jit.ignore
def _stall_on_the_pool(x: Tensor) -> Tensor:
    """Stalls on torch's pool threads (Python knows them as dummy threads), noting the pool's size in ``stalls`` in
    the working directory; the serial run calls it on a Python thread of forkcheck's, where it returns at once."""
    if isinstance(threading.current_thread(), threading._DummyThread):
        with open("stalls", "a") as record:
            record.write(f"{torch.get_num_interop_threads()}\n")
        time.sleep(30)
    return x


def _stalling(x: Tensor) -> Tensor:
    return _stall_on_the_pool(x) + 1


@fork_safe(x=fst.tensors(shape=(2,)), timeout=1)
def stalls_on_the_pool(x: Tensor) -> Tensor:
    """Hangs in every concurrent run, never in the serial one."""
    return torch.jit.wait(torch.jit.fork(_stalling, x))
