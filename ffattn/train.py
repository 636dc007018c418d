"""Training the teacher: the paper's recipe, one atomic checkpoint per epoch, resume.

Label smoothing 0.1, Adam(0.9, 0.98, eps 1e-9), lr = factor * d^-0.5 * min(s^-0.5, s * w^-1.5),
token-bucketed batches. A run interrupted at any point restarts from its last finished epoch
and ends with the same weights as an uninterrupted one (CPU, same seed).

Under `torchrun` the same computation runs data-parallel (DistributedDataParallel): every rank
builds the same global batches, takes its share of each batch's sentences, and the gradients
are averaged, so the optimisation is the one-process one (same global batch, same schedule);
rank 0 alone writes the checkpoints.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import math
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import distributed as dd
from .decode import greedy, pad_batch
from .evaluate import score
from .files import load_checkpoint, save_atomic, write_atomic
from .model import PAD, Transformer


def default_device() -> torch.device:
    """The GPU when there is one (the paper preset wants it; under torchrun, this rank's), else the CPU."""
    return dd.device() if dd.active() else torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextlib.contextmanager
def autocast(precision: str, device: torch.device, cpu_bf16: bool = False):
    """The arithmetic of the block: on a GPU, `precision` "tf32" lets matmuls use TF32 and
    "bf16" also runs them in bfloat16 (autocast); on the CPU every choice computes in fp32,
    except "bf16" with `cpu_bf16` (the students' steps, `distill_precision`), which a CPU with
    native bfloat16 (AVX512-BF16, AMX) runs faster. The TF32 switches are torch's globals: set
    for the block only, then put back."""
    if device.type != "cuda" or precision == "fp32":
        on_cpu = cpu_bf16 and precision == "bf16" and device.type == "cpu"
        with torch.autocast("cpu", dtype=torch.bfloat16) if on_cpu else contextlib.nullcontext():
            yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


HEAP_MEMORY = True  # False: glibc's own policy (benchmarks/bench_distill.py --heap on off compares them)
_HEAP_DEPTH = [0]


@contextlib.contextmanager
def heap_memory():
    """Large tensors from the process's heap while training, not fresh pages from the kernel.

    glibc serves an allocation above its mmap threshold (at most 32 MB: a large student's
    gradients and activations) with a new mapping and unmaps it on free, so every step paid
    page faults and zeroing for the same buffers again: on this project's 2 cores a third of
    a causal student's epoch at `tiny` (benchmarks/bench_distill.py, benchmarks/README.md). Inside the block
    glibc keeps freed memory in its heap for the next step (M_MMAP_MAX 0, a high trim
    threshold); at the end of the outermost block it goes back to the system (malloc_trim).
    The same arithmetic; where the C library is not glibc, nothing changes."""
    libc = _glibc()
    if libc is None or _HEAP_DEPTH[0] or not HEAP_MEMORY:
        _HEAP_DEPTH[0] += 1
        try:
            yield
        finally:
            _HEAP_DEPTH[0] -= 1
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1)
    _HEAP_DEPTH[0] += 1
    try:
        yield
    finally:
        _HEAP_DEPTH[0] -= 1
        # then where glibc's own adjustment ends in a process that frees large buffers (setting
        # any of these turns that adjustment off): mappings above 32 MB, trimming above 64 MB
        libc.mallopt(M_MMAP_MAX, 65536)
        libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)
        libc.mallopt(M_TRIM_THRESHOLD, 64 << 20)
        libc.malloc_trim(0)


@functools.lru_cache(maxsize=1)
def _glibc():
    """The process's glibc through ctypes (for mallopt), or None on another C library."""
    if platform.system() != "Linux" or not platform.libc_ver()[0] == "glibc":
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt.argtypes, libc.malloc_trim.argtypes = [ctypes.c_int, ctypes.c_int], [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):
        return None


def cpu_has_bf16() -> bool:
    """Whether torch reports native bfloat16 matrix products on this CPU (AVX512-BF16, AMX).
    Without them bf16 is emulated: on this project's AVX512-BF16 machine, limited to older
    instructions, a square bf16 matmul (n = 1024) ran at 73 GFLOP/s against fp32's 189 (AVX-512
    without BF16, `ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI`) and at 0.9 against 191 (AVX2), so
    there `distill_precision="bf16"` is slower, not faster."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, f, lambda: False)() for f in checks)


def lr_at(step: int, d_model: int, warmup: int, factor: float) -> float:
    """The inverse-square-root schedule of Vaswani et al.: linear warmup, then step^-0.5."""
    step = max(step, 1)
    return factor * d_model ** -0.5 * min(step ** -0.5, step * warmup ** -1.5)


def batch_loss(model, src, tgt, label_smoothing: float = 0.0):
    """Summed token cross-entropy of a teacher-forced batch and its number of target tokens."""
    device = next(model.parameters()).device
    src, tgt = src.to(device), tgt.to(device)
    logp = model(src, tgt[:, :-1])
    gold = tgt[:, 1:]
    loss = F.nll_loss(logp.flatten(0, 1), gold.flatten(), ignore_index=PAD, reduction="sum")
    if label_smoothing:  # (1 - eps) * NLL + eps * mean over the vocabulary of -log p
        smooth = -logp.mean(-1).masked_fill(gold == PAD, 0.0).sum()
        loss = (1 - label_smoothing) * loss + label_smoothing * smooth
    return loss, int((gold != PAD).sum())


@torch.no_grad()
def validation_loss(model, batches) -> float:
    """Mean token cross-entropy (no label smoothing) over the given batches."""
    model.eval()
    total, n = 0.0, 0
    for src, tgt in batches:
        loss, k = batch_loss(model, src, tgt)
        total, n = total + loss.item(), n + k
    return total / max(n, 1)


@heap_memory()
def train_teacher(cfg, data, run_dir: Path, progress: bool = True, stop_after_epoch: int | None = None):
    """Train (or resume training) the teacher of `cfg` on `data`; returns (model, history).

    `run_dir/teacher.pt` is rewritten after every epoch with the model, the optimiser, the
    random state and the history, so an interrupted run resumes where it stopped.
    `stop_after_epoch` ends early on purpose (the resume test uses it).
    """
    run_dir = Path(run_dir)
    path = run_dir / "teacher.pt"
    torch.manual_seed(cfg.seed)
    model = Transformer.from_config(cfg, data.tok.src_vocab_size, data.tok.tgt_vocab_size)
    model.to(default_device())
    net = model
    if dd.active():  # same initial weights on every rank (same seed; DDP also broadcasts rank 0's)
        from torch.nn.parallel import DistributedDataParallel
        net = DistributedDataParallel(model)
    opt = torch.optim.Adam(model.parameters(), lr=0.0, betas=(0.9, 0.98), eps=1e-9,
                           fused=True if next(model.parameters()).is_cuda else None)
    history, step, start = [], 0, 0
    if path.exists():
        ck = load_checkpoint(path)
        check_config(ck, cfg, path)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        torch.set_rng_state(ck["rng"])
        history, step, start = ck["history"], ck["step"], ck["epoch"]
    valid = list(data.batches("valid", shuffle=False))
    for epoch in range(start, cfg.epochs):
        model.train()
        if dd.active():  # each rank its own dropout masks, repeatable per (seed, epoch, rank)
            torch.manual_seed(cfg.seed + 1000 * (epoch + 1) + dd.rank())
        t0, total, ntok = time.time(), 0.0, 0
        batches = data.batches("train", shuffle=True, seed=cfg.seed, epoch=epoch)
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress or not dd.is_main(),
                   leave=False)
        for src, tgt in bar:
            step += 1
            for g in opt.param_groups:
                g["lr"] = lr_at(step, cfg.d_model, cfg.warmup, cfg.lr_factor)
            with autocast(cfg.precision, next(model.parameters()).device):
                loss, summed, k = _my_share_loss(net, src, tgt, cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, ntok = total + summed, ntok + k
            bar.set_postfix(loss=f"{total / ntok:.3f}")
        total, ntok = dd.sum_floats([total, ntok])  # the whole batch's, over the ranks
        ntok = int(ntok)
        row = {"epoch": epoch + 1, "step": step, "train_loss": total / ntok,
               "valid_loss": validation_loss(model, valid), "seconds": time.time() - t0,
               "tokens": ntok}
        row["valid_ppl"] = math.exp(row["valid_loss"])
        row["valid_bleu"] = valid_bleu(model, data, cfg.valid_bleu_sentences) if cfg.valid_bleu_sentences else None
        history.append(row)
        if progress and dd.is_main():
            print(f"epoch {epoch + 1:>2}: train loss {row['train_loss']:.3f}  valid loss "
                  f"{row['valid_loss']:.3f}  valid BLEU {row['valid_bleu'] or 0:.1f}  "
                  f"({row['seconds']:.0f} s)", flush=True)
        if dd.is_main():
            save_atomic({"config": cfg.to_dict(), "teacher_key": cfg.teacher_key(), "epoch": epoch + 1,
                         "step": step, "model": model.state_dict(), "optimizer": opt.state_dict(),
                         "rng": torch.get_rng_state(), "history": history}, path)
            write_atomic(run_dir / "history.json", json.dumps(history, indent=1))
        dd.barrier()
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
            break
    model.eval()
    return model, history


def _my_share_loss(net, src, tgt, label_smoothing):
    """This rank's part of a global batch's loss, scaled so that the gradients DDP averages over
    the ranks are those of the whole batch's mean token loss; returns (that loss, this rank's
    summed token loss as a float, its tokens).

    One process: the whole batch, loss / tokens. A rank with no sentence of a small batch still
    runs a forward pass (DDP needs every rank's gradients) on one sentence, weighted by 0."""
    if not dd.active():
        loss, k = batch_loss(net, src, tgt, label_smoothing)
        return loss / k, loss.item(), k
    k_all = int((tgt[:, 1:] != PAD).sum())
    part = dd.shard(len(src))
    weight = 1.0 if part.stop > part.start else 0.0
    if not weight:
        part = slice(0, 1)
    loss, k = batch_loss(net, src[part], tgt[part], label_smoothing)
    return loss * (weight * dd.world() / k_all), loss.item() * weight, int(k * weight)


def valid_bleu(model, data, n: int) -> float:
    """Greedy BLEU on the first n validation sentences: a cheap learning signal per epoch."""
    src_ids = data["valid"].src_ids[:n]
    refs = data["valid"].tgt[:n]
    hyps = []
    for i in range(0, len(src_ids), 100):
        hyps += greedy(model, pad_batch(src_ids[i:i + 100], next(model.parameters()).device))
    return score(data.tok.decode_tgt(hyps), refs)["bleu"]


def check_config(ck: dict, cfg, path) -> None:
    """Refuse a checkpoint made under another config, naming the fields that differ."""
    if ck.get("teacher_key") == cfg.teacher_key():
        return
    mine = cfg.group("data", "model", "train")
    theirs = ck.get("config", {})
    diff = sorted(k for k in mine if theirs.get(k) != mine[k])
    raise ValueError(f"checkpoint {path} was made under another config (differs in "
                     f"{', '.join(f'{k}: {theirs.get(k)!r} != {mine[k]!r}' for k in diff) or 'version'}); "
                     f"it will not be loaded")
