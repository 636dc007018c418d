"""Every file ffattn writes goes through here: atomic writes, checkpoints, safe loading.

A write goes to a temporary file beside its target and is renamed over it, so a crash or a
killed process never leaves half a file where a finished one is expected; the temporary file
is removed on any failure. Checkpoints load with `weights_only=True`: tensors and plain
containers only, never arbitrary pickled code.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch


def _atomically(path: Path, write) -> None:
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
    _atomically(path, write)


def save_atomic(obj, path: Path) -> None:
    """torch.save to a temporary file, then rename: an interrupted save leaves the old file."""
    _atomically(path, lambda tmp: torch.save(obj, tmp))


def load_checkpoint(path: Path, mmap: bool = False) -> dict:
    """torch.load with weights_only=True onto the CPU; a clear error for a damaged file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # truncated zip, wrong format, an unsafe pickle, ...
        raise RuntimeError(f"checkpoint {path} is damaged or not a checkpoint ({e.__class__.__name__}: "
                           f"{e}); delete it to retrain") from e
