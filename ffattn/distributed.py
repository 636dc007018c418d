"""Several processes, one job: torch.distributed as `torchrun` launches it.

    torchrun --nproc_per_node 4 -m ffattn teacher --preset paper
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-endpoint host:29500 -m ffattn reproduce --preset paper
    torchrun --nproc_per_node 2 -m ffattn study --preset small     # chapter 8's points, CPUs with gloo

`torchrun` sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous; `init()` joins the group with
the backend the device wants (NCCL on CUDA, gloo on CPU). Without torchrun nothing here does
anything: one process is the plain path, with the same results as before. Everything that
talks to the other ranks lives in this room.
"""
from __future__ import annotations

import contextlib
import datetime
import os

import torch
import torch.distributed as dist


def launched() -> bool:
    """True under torchrun (or any launcher that sets WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def local_world() -> int:
    """Processes of this job on this machine (torchrun's LOCAL_WORLD_SIZE): they share its memory.
    Under a launcher that does not say, all of them (the safe side of a memory limit)."""
    if not active():
        return 1
    return int(os.environ.get("LOCAL_WORLD_SIZE", world()))


def is_main() -> bool:
    """The rank that writes files and prints (rank 0, or the only process)."""
    return rank() == 0


def device() -> torch.device:
    """This rank's device: its GPU (LOCAL_RANK) under CUDA, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def init() -> bool:
    """Join the process group when launched by torchrun; True if this is a distributed run."""
    if not launched() or active():
        return active()
    # a rank may wait hours at a barrier (its share of the grid done before the others', or
    # rank 0 waiting for another job's lock): the default 10 to 30 minutes would end the job
    timeout = datetime.timedelta(hours=float(os.environ.get("FFATTN_DIST_TIMEOUT_HOURS", "72")))
    if torch.cuda.is_available():
        torch.cuda.set_device(device())
        dist.init_process_group("nccl", timeout=timeout)
    else:
        dist.init_process_group("gloo", timeout=timeout)
    return True


def close() -> None:
    if active():
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


def sum_floats(values: list[float]) -> list[float]:
    """Each value summed over the ranks (float64)."""
    if not active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device() if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t)
    return t.tolist()


def shard(n: int, r: int | None = None, w: int | None = None) -> slice:
    """Rank r's contiguous share of n items (the first n % w ranks take one more)."""
    r, w = rank() if r is None else r, world() if w is None else w
    base, extra = divmod(n, w)
    start = r * base + min(r, extra)
    return slice(start, start + base + (r < extra))


def balanced(costs: list[float], w: int | None = None) -> list[list[int]]:
    """Indices split into w groups of nearly equal total cost (largest first, to the lightest
    group): the grid's students are shared out by their FLOPs, not by their count."""
    w = world() if w is None else w
    groups, loads = [[] for _ in range(w)], [0.0] * w
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        k = loads.index(min(loads))
        groups[k].append(i)
        loads[k] += costs[i]
    return [sorted(g) for g in groups]


def broadcast_object(obj, src: int = 0):
    """`obj` of rank `src` on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


@contextlib.contextmanager
def main_first():
    """Rank 0 runs the block first (building what it builds), the other ranks after it (loading)."""
    if is_main():
        yield
        barrier()
    else:
        barrier()
        yield
