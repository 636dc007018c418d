"""Recording the teacher and training the replacement networks on its activations.

As the paper: the teacher runs in eval mode with teacher forcing over training sentences;
each replaced block's input and output are recorded; each student (one layer, one scheme,
one size) is trained alone, on the teacher's own inputs, with MSE over real (unpadded)
elements, Adam and a constant learning rate. No end-to-end fine-tuning.

The authors dumped ~100 GB per language pair. Here a recording keeps real tokens only
(no padding), in float16, in memory-mapped .npy files: `Recording.nbytes` reports the size.
"""
from __future__ import annotations

import json
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .data import pad_batch
from .evaluate import write_atomic
from .replace import build_replacement, record_io
from .train import load_checkpoint, save_atomic


@dataclass(frozen=True)
class Student:
    """One replacement network: which slot (where, layer), which scheme and size."""

    where: str
    layer: int
    scheme: str
    size: str

    @property
    def name(self) -> str:
        return f"{self.where}-{self.layer}-{self.scheme}-{self.size}"

    @property
    def key(self):
        """The key `replace.install` takes."""
        return (self.where, self.layer, self.scheme)

    @property
    def source(self):
        """The recording it learns from: ASLR shares ALR's, causal cross shares cross's."""
        scheme = "ALR" if self.scheme == "ASLR" else self.scheme
        where = "cross" if self.where == "cross_causal" else self.where
        return (where, self.layer, scheme)

    def lr(self, cfg) -> float:
        return cfg.lr_alr if self.scheme == "ALR" else cfg.lr_other


def _name(source) -> str:
    return "{}-{}-{}".format(*source)


class Recording:
    """Teacher activations of N sentences: real tokens only, float16, memory-mapped."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.meta = json.loads((self.folder / "meta.json").read_text())
        self.src_len = np.load(self.folder / "src_len.npy")
        self.tgt_len = np.load(self.folder / "tgt_len.npy")
        self.src_off = np.concatenate([[0], np.cumsum(self.src_len)])
        self.tgt_off = np.concatenate([[0], np.cumsum(self.tgt_len)])
        self.arrays = {p.stem: np.load(p, mmap_mode="r") for p in self.folder.glob("*.f16.npy")}
        self.arrays = {k.removesuffix(".f16"): v for k, v in self.arrays.items()}
        self.device = torch.device("cpu")  # where batch() puts its tensors: the students' device

    def __len__(self) -> int:
        return len(self.src_len)

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.arrays.values()))

    def _gather(self, name, idx, lengths, offsets):
        arr = self.arrays[name]
        T = int(lengths[idx].max())
        out = np.zeros((len(idx), T, arr.shape[1]), dtype=np.float32)
        pad = np.ones((len(idx), T), dtype=bool)
        for b, i in enumerate(idx):
            n = lengths[i]
            out[b, :n] = arr[offsets[i]:offsets[i] + n]
            pad[b, :n] = False
        return torch.from_numpy(out), torch.from_numpy(pad)

    def batch(self, source, idx) -> dict:
        """x, x_pad, memory, memory_pad, target for the sentences `idx` (padded to the longest)."""
        where, name = source[0], _name(source)
        side = (self.src_len, self.src_off) if where == "encoder" else (self.tgt_len, self.tgt_off)
        x, x_pad = self._gather(name + ".x", idx, *side)
        target, _ = self._gather(name + ".target", idx, *side)
        memory = memory_pad = None
        if where == "cross":
            memory, memory_pad = self._gather("memory", idx, self.src_len, self.src_off)
        out = dict(x=x, x_pad=x_pad, memory=memory, memory_pad=memory_pad, target=target)
        return {k: (v.to(self.device) if v is not None else None) for k, v in out.items()}


def record(model, src_ids, tgt_ids, sources, folder: Path, batch_size: int = 128,
           progress: bool = True) -> Recording:
    """Record each source's (input, target) for the given sentences, or reuse a complete
    recording of the same sources in `folder`."""
    folder = Path(folder)
    sources = sorted(set(sources))
    meta_path = folder / "meta.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta["sources"] == [list(s) for s in sources] and meta["sentences"] == len(src_ids):
            return Recording(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.npy"):
        old.unlink()
    src_len = np.array([len(s) for s in src_ids], dtype=np.int64)
    tgt_len = np.array([len(t) - 1 for t in tgt_ids], dtype=np.int64)  # BOS + pieces
    d = model.generator.in_features
    shapes = {}
    for s in sources:
        n = int(src_len.sum() if s[0] == "encoder" else tgt_len.sum())
        shapes[_name(s) + ".x"] = shapes[_name(s) + ".target"] = n
    if any(s[0] == "cross" for s in sources):
        shapes["memory"] = int(src_len.sum())
    arrays = {k: np.lib.format.open_memmap(folder / f"{k}.f16.npy", mode="w+", dtype=np.float16,
                                           shape=(n, d)) for k, n in shapes.items()}
    pos = {k: 0 for k in arrays}
    model.eval()
    chunks = range(0, len(src_ids), batch_size)
    for start in tqdm(chunks, desc="recording the teacher", disable=not progress, leave=False):
        src = pad_batch(src_ids[start:start + batch_size])
        tgt = pad_batch(tgt_ids[start:start + batch_size])
        device = next(model.parameters()).device
        rec = record_io(model, src.to(device), tgt[:, :-1].to(device), sources)
        rec = {k: {n: (v.cpu() if torch.is_tensor(v) else v) for n, v in r.items()} for k, r in rec.items()}
        ls = src_len[start:start + batch_size]
        lt = tgt_len[start:start + batch_size]
        for s in sources:
            r, lens = rec[s], (ls if s[0] == "encoder" else lt)
            for part in ("x", "target"):
                _append(arrays, pos, _name(s) + "." + part, r[part], lens)
            if s[0] == "cross" and s == min(x for x in sources if x[0] == "cross"):
                _append(arrays, pos, "memory", r["memory"], ls)
    for a in arrays.values():
        a.flush()
    np.save(folder / "src_len.npy", src_len)
    np.save(folder / "tgt_len.npy", tgt_len)
    nbytes = int(sum(a.nbytes for a in arrays.values()))
    write_atomic(meta_path, json.dumps({"sources": [list(s) for s in sources],
                                        "sentences": len(src_ids), "bytes": nbytes}))
    return Recording(folder)


def _append(arrays, pos, name, t, lengths):
    rows = torch.cat([t[b, :n] for b, n in enumerate(lengths)]).numpy().astype(np.float16)
    arrays[name][pos[name]:pos[name] + len(rows)] = rows
    pos[name] += len(rows)


def masked_mse(pred, target, pad) -> torch.Tensor:
    """Mean squared error over real (unpadded) elements only."""
    real = (~pad)[..., None].to(pred.dtype)
    return ((pred - target) ** 2 * real).sum() / (real.sum() * pred.shape[-1]).clamp(min=1)


@torch.no_grad()
def heldout_mse(module, rec: Recording, source, batch_size: int = 256) -> float:
    module.eval()
    total, n = 0.0, 0
    for start in range(0, len(rec), batch_size):
        idx = np.arange(start, min(start + batch_size, len(rec)))
        b = rec.batch(source, idx)
        pred = module.distill_forward(b["x"], b["x_pad"], b["memory"], b["memory_pad"])
        k = int((~b["x_pad"]).sum())
        total += masked_mse(pred, b["target"], b["x_pad"]).item() * k
        n += k
    return total / max(n, 1)


def new_student(teacher, student: Student, max_len: int, seed: int = 0):
    """A randomly initialised replacement, seeded by its name (the untrained floor too)."""
    torch.manual_seed(seed + zlib.crc32(student.name.encode()))
    return build_replacement(teacher, student.where, student.layer, student.scheme, student.size, max_len)


def _adam(params, lr: float) -> torch.optim.Adam:
    """Adam(0.9, 0.98, eps 1e-9); the fused kernel where this torch has one for the device.

    A size-L student has tens of millions of parameters: on 2 CPU cores the unfused update
    took 0.33 s per step against 0.05 s fused, a third of each step's time."""
    try:
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.98), eps=1e-9, fused=True)
    except (RuntimeError, TypeError, ValueError):  # older torch, or no fused kernel here
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.98), eps=1e-9)


def train_students(teacher, students: list[Student], rec_train: Recording, rec_valid: Recording,
                   cfg, folder: Path, progress: bool = True) -> dict:
    """Train (or resume, or load) every student; returns {Student: (module, history)}.

    Students that learn from the same recording share each batch; each has its own Adam and
    a checkpoint per epoch in `folder/<name>.pt`, so an interrupted run resumes.
    """
    folder = Path(folder)
    rec_train.device = rec_valid.device = next(teacher.parameters()).device
    out = {}
    groups: dict = {}
    for s in students:
        groups.setdefault(s.source, []).append(s)
    for source, members in groups.items():
        state = {}
        for s in members:
            module = new_student(teacher, s, cfg.max_len, cfg.seed)
            epoch, history, opt_state = 0, [], None
            path = folder / f"{s.name}.pt"
            if path.exists():
                ck = load_checkpoint(path)
                if ck.get("distill_key") != cfg.distill_key():
                    raise ValueError(f"{path} was trained under other distillation settings; delete it")
                module.load_state_dict(ck["model"])
                epoch, history, opt_state = ck["epoch"], ck["history"], ck["optimizer"]
            opt = None  # a finished student is only loaded: no optimiser state kept in memory
            if epoch < cfg.distill_epochs:
                opt = _adam([p for p in module.parameters() if p.requires_grad], s.lr(cfg))
                if opt_state is not None:
                    opt.load_state_dict(opt_state)
            del opt_state
            state[s] = dict(module=module, opt=opt, epoch=epoch, history=history, path=path)
        todo = [s for s in members if state[s]["epoch"] < cfg.distill_epochs]
        if todo:
            first = min(state[s]["epoch"] for s in todo)
            bar = tqdm(range(first, cfg.distill_epochs), desc=f"distilling {_name(source)} "
                       f"({', '.join(s.where + ' ' + s.scheme + '-' + s.size for s in todo)})",
                       disable=not progress, leave=False)
            for epoch in bar:
                active = [s for s in todo if state[s]["epoch"] == epoch]
                seconds = {s: 0.0 for s in active}
                losses = {s: [0.0, 0] for s in active}
                for m in active:
                    state[m]["module"].train()
                order = np.random.default_rng([cfg.seed, epoch]).permutation(len(rec_train))
                for start in range(0, len(order), cfg.distill_batch):
                    b = rec_train.batch(source, np.sort(order[start:start + cfg.distill_batch]))
                    for s in active:
                        t0 = time.perf_counter()
                        st = state[s]
                        pred = st["module"].distill_forward(b["x"], b["x_pad"], b["memory"], b["memory_pad"])
                        loss = masked_mse(pred, b["target"], b["x_pad"])
                        st["opt"].zero_grad(set_to_none=True)
                        loss.backward()
                        st["opt"].step()
                        seconds[s] += time.perf_counter() - t0
                        losses[s][0] += loss.item()
                        losses[s][1] += 1
                for s in active:
                    st = state[s]
                    st["epoch"] = epoch + 1
                    st["history"].append({"epoch": epoch + 1, "train_mse": losses[s][0] / losses[s][1],
                                          "heldout_mse": heldout_mse(st["module"], rec_valid, source),
                                          "seconds": seconds[s]})
                    save_atomic({"distill_key": cfg.distill_key(), "student": s.name, "epoch": epoch + 1,
                                 "model": st["module"].state_dict(), "optimizer": st["opt"].state_dict(),
                                 "history": st["history"]}, st["path"])
        for s in members:
            out[s] = (state[s]["module"].eval(), state[s]["history"])
    return out
