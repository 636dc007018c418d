"""Every file ffattn writes goes through here: atomic writes, checkpoints, safe loading, locks.

A write goes to a temporary file beside its target and is renamed over it, so a crash or a
killed process never leaves half a file where a finished one is expected; the temporary file
is removed on any failure. Checkpoints load with `weights_only=True`: tensors and plain
containers only, never arbitrary pickled code.

Several processes can share one `runs/` folder (a workshop room, a papermill sweep): each
artifact (a teacher, a recording, a student) is built under its own lock, so the first process
builds it and the others wait, then load it. The locks are the operating system's (`filelock`:
flock on Unix), released when their process ends however it ends, so a killed run never blocks
the next one.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from filelock import FileLock, Timeout


def atomically(path: Path, write) -> None:
    """Call write(tmp) on a temporary file beside `path`, then rename it over `path`; on any
    failure the temporary file is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write text or bytes to `path` through a temporary file and a rename."""
    def write(tmp):
        with open(tmp, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
    atomically(path, write)


def save_atomic(obj, path: Path) -> None:
    """torch.save to a temporary file, then rename: an interrupted save leaves the old file."""
    atomically(path, lambda tmp: torch.save(obj, tmp))


def load_checkpoint(path: Path, mmap: bool = False) -> dict:
    """torch.load with weights_only=True onto the CPU; a clear error for a damaged file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # truncated zip, wrong format, an unsafe pickle, ...
        raise RuntimeError(f"checkpoint {path} is damaged or not a checkpoint ({e.__class__.__name__}: "
                           f"{e}); delete it to retrain") from e


class Waited:
    """How long `lock` waited for another process (seconds); 0.0 when the lock was free."""

    seconds: float = 0.0


WAITS: list = []  # (what, seconds) of every wait for another process in this process, for reports


@contextlib.contextmanager
def lock(path: Path, what: str | None = None):
    """Hold the lock of the artifact at `path` (the file `<path>.lock`) for the block.

    Build the artifact inside the block after checking, inside it too, whether it exists:
    the process that waited finds it built and loads it. Yields a `Waited`. Not re-entrant:
    a process must not take the lock of an artifact it already holds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    held = FileLock(str(path) + ".lock")
    waited = Waited()
    try:
        held.acquire(timeout=0)
    except Timeout:
        print(f"ffattn: another process is building or reading {what or path}; waiting for it",
              file=sys.stderr, flush=True)
        started = time.perf_counter()
        held.acquire()
        waited.seconds = time.perf_counter() - started
        WAITS.append((what or str(path), waited.seconds))
    try:
        yield waited
    finally:
        held.release()


@contextlib.contextmanager
def locks(paths, what: str | None = None):
    """`lock` on several artifacts at once, taken in sorted order so two processes asking for
    overlapping sets never wait on each other in a circle. Yields a `Waited` (the total)."""
    waited = Waited()
    with contextlib.ExitStack() as stack:
        for p in sorted(Path(p) for p in paths):
            waited.seconds += stack.enter_context(lock(p, what)).seconds
        yield waited
