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
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import distributed as dd
from .data import pad_batch
from .replace import CausalFFCrossAttention, CausalFFSelfAttention, build_replacement, count_params, record_io
from .train import autocast, cpu_has_bf16, heap_memory
from .files import load_checkpoint, locks, save_atomic, write_atomic


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
    """Teacher activations of N sentences: real tokens only, float16, memory-mapped.

    `batch` gathers a batch with one vectorised index per array (no Python loop over
    sentences) and pads it to the longest sentence of the batch.
    """

    def __init__(self, folder: Path, limit: int | None = None):
        """The recording in `folder`; with `limit`, only its first `limit` sentences (a
        recording of a prefix of the sentences is a prefix of the recording)."""
        self.folder = Path(folder)
        self.meta = json.loads((self.folder / "meta.json").read_text())
        self.src_len = np.load(self.folder / "src_len.npy")[:limit]
        self.tgt_len = np.load(self.folder / "tgt_len.npy")[:limit]
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
        n = lengths[idx]
        T = int(n.max())
        pos = np.arange(T)
        pad = pos[None, :] >= n[:, None]
        rows = offsets[idx][:, None] + np.minimum(pos[None, :], n[:, None] - 1)  # padding repeats a real row
        out = torch.from_numpy(np.ascontiguousarray(self.arrays[name][rows.ravel()]))
        out = out.view(len(idx), T, -1).float()
        pad = torch.from_numpy(pad)
        return out.masked_fill_(pad[..., None], 0.0), pad

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


@heap_memory()
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


class OnTheFly:
    """A `Recording` with nothing on disk: each batch runs the teacher (eval, teacher forcing)
    with hooks on the slot a student learns (`replace.record_io`), on the batch's sentences.

    The values are rounded to float16 and zeroed at padding as a recording's are, so the
    students learn the same thing from either, batch for batch. On a GPU the teacher's forward
    pass is cheap next to a large student's; at the paper's scale the recording it saves would
    be about 50 GB per direction."""

    def __init__(self, teacher, src_ids, tgt_ids):
        self.teacher = teacher
        self.src_ids, self.tgt_ids = list(src_ids), list(tgt_ids)
        self.src_len = np.array([len(s) for s in self.src_ids], dtype=np.int64)
        self.tgt_len = np.array([len(t) - 1 for t in self.tgt_ids], dtype=np.int64)  # BOS + pieces
        self.device = torch.device("cpu")
        self.meta = {"sentences": len(self.src_ids), "bytes": 0, "on_the_fly": True}

    def __len__(self) -> int:
        return len(self.src_ids)

    nbytes = 0

    def batch(self, source, idx) -> dict:
        """x, x_pad, memory, memory_pad, target for the sentences `idx`, as `Recording.batch`."""
        dev = next(self.teacher.parameters()).device
        src = pad_batch([self.src_ids[i] for i in idx]).to(dev)
        tgt = pad_batch([self.tgt_ids[i] for i in idx]).to(dev)
        got = record_io(self.teacher, src, tgt[:, :-1], [tuple(source)])[tuple(source)]

        def like_recorded(v, pad):  # float16 values, zeros at padding
            return v.half().float().masked_fill(pad[..., None], 0.0)
        # a recording keeps a sentence's real positions only: on the target side BOS and the
        # pieces, not the EOS that teacher forcing feeds the shorter sentences of a batch
        n = torch.as_tensor((self.src_len if source[0] == "encoder" else self.tgt_len)[idx], device=dev)
        x_pad = torch.arange(got["x"].shape[1], device=dev)[None, :] >= n[:, None]
        out = dict(x=like_recorded(got["x"], x_pad), x_pad=x_pad, memory=None, memory_pad=None,
                   target=like_recorded(got["target"], x_pad))
        if source[0] == "cross":
            out.update(memory=like_recorded(got["memory"], got["memory_pad"]), memory_pad=got["memory_pad"])
        return {k: (v.to(self.device) if v is not None else None) for k, v in out.items()}


@torch.no_grad()
def heldout_mse(module, rec: Recording, source, batch_size: int = 256) -> float:
    """Masked MSE of a student over every sentence of a recording (the held-out one)."""
    return _heldout(module, _batches(rec, source, batch_size))


def _batches(rec: Recording, source, batch_size: int = 256) -> list[dict]:
    return [rec.batch(source, np.arange(i, min(i + batch_size, len(rec)))) for i in range(0, len(rec), batch_size)]


@torch.no_grad()
def _heldout(module, batches) -> float:
    was_training = module.training
    module.eval()
    total, n = 0.0, 0
    for b in batches:
        pred = module.distill_forward(b["x"], b["x_pad"], b["memory"], b["memory_pad"])
        k = int((~b["x_pad"]).sum())
        total += masked_mse(pred, b["target"], b["x_pad"]).item() * k
        n += k
    module.train(was_training)
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


# ----------------------------------------------------------------------------- when to stop

def stop_reason(curve, patience: int, min_delta: float, cap: int) -> str | None:
    """Why training stops after the held-out MSEs `curve` (one per epoch so far), or None.

    "plateau": the last `patience` epochs did not lower the best MSE by a fraction
    `min_delta` (patience 0: never); "cap": `cap` epochs have run. The student kept is the
    one of the epoch with the lowest held-out MSE (`kept_epoch`).
    """
    if len(curve) >= cap:
        return "cap"
    if patience <= 0 or not curve:
        return None
    best, since = float("inf"), 0
    for v in curve:
        if v < best * (1 - min_delta):
            best, since = v, 0
        else:
            since += 1
            best = min(best, v)
    return "plateau" if since >= patience else None


def kept_epoch(history, patience: int = 1) -> int:
    """The 1-based epoch whose weights a student keeps: with the stopping rule (patience > 0)
    the one with the lowest held-out MSE; with a fixed number of epochs (patience 0, the
    paper's practice) the last."""
    if patience <= 0:
        return len(history)
    return 1 + int(np.argmin([h["heldout_mse"] for h in history]))


def budget(history, patience: int = 1) -> dict:
    """What a student's distillation cost and reached: one row of the budget tables."""
    if not history:
        return {"epochs": 0, "kept_epoch": 0, "steps": 0, "sentences_seen": 0, "seconds": 0.0,
                "heldout_mse": float("nan")}
    b = kept_epoch(history, patience)
    return {"epochs": len(history), "kept_epoch": b, "steps": sum(h["steps"] for h in history),
            "sentences_seen": sum(h["sentences"] for h in history),
            "seconds": round(sum(h["seconds"] for h in history), 2),
            "heldout_mse": history[b - 1]["heldout_mse"]}


# ----------------------------------------------------------------------------- training

def epoch_batches(lengths, batch: int, seed: int, epoch: int, pool: int = 1) -> list[np.ndarray]:
    """The batches of one epoch: sentence indices shuffled, cut into batches (indices sorted
    within a batch, for reading the recording in order). The same seed and epoch give the same
    batches, so a resumed run repeats them.

    `pool` > 1 sorts sentences by length within pools of that many batches, so a batch holds
    sentences of similar length: the causal students' work grows with a batch's longest
    sentence, but measured at `tiny` it made encoder ALRR-L's held-out MSE after 3 epochs twice
    as high (0.585 against 0.266), so the trainer uses random batches (pool 1)."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    out = []
    for p in range(0, len(order), pool * batch):
        chunk = order[p:p + pool * batch]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        out += [np.sort(chunk[i:i + batch]) for i in range(0, len(chunk), batch)]
    return [out[i] for i in rng.permutation(len(out))]


def _checkpoint(cfg, s: Student, path: Path, st: dict, finished: bool, stopped: str | None = None) -> None:
    """An unfinished student keeps its optimiser (to resume) and its best weights so far; a
    finished one is its best weights only (a third of the bytes)."""
    ck = {"distill_key": cfg.distill_key(), "student": s.name, "epoch": st["epoch"], "history": st["history"],
          "finished": finished}
    if finished:
        ck.update(model=st["best"] or st["module"].state_dict(), stopped=stopped)
    else:
        ck.update(model=st["module"].state_dict(), optimizer=st["opt"].state_dict(), best=st["best"])
    save_atomic(ck, path)


def _load_state(teacher, s: Student, cfg, folder: Path) -> dict:
    """A student's state from its checkpoint, or a fresh one; finished students get no optimiser."""
    module = new_student(teacher, s, cfg.max_len, cfg.seed)
    path = Path(folder) / f"{s.name}.pt"
    st = dict(module=module, opt=None, epoch=0, history=[], best=None, path=path, finished=False, stopped=None)
    if path.exists():
        ck = load_checkpoint(path)
        if ck.get("distill_key") != cfg.distill_key():
            raise ValueError(f"{path} was trained under other distillation settings; delete it")
        module.load_state_dict(ck["model"])
        st.update(epoch=ck["epoch"], history=ck["history"], finished=ck.get("finished", False),
                  stopped=ck.get("stopped"), best=ck.get("best"))
        if not st["finished"]:
            st["opt"] = _adam([p for p in module.parameters() if p.requires_grad], s.lr(cfg))
            st["opt"].load_state_dict(ck["optimizer"])
        del ck
    else:
        st["opt"] = _adam([p for p in module.parameters() if p.requires_grad], s.lr(cfg))
    return st


def load_student(teacher, s: Student, cfg, folder: Path):
    """(module, history) of a finished student, in eval mode; an error if it is not finished."""
    st = _load_state(teacher, s, cfg, folder)
    if not st["finished"]:
        raise ValueError(f"student {s.name} is not trained yet in {folder}; train it with experiments.students")
    return st["module"].eval(), st["history"]


@heap_memory()
def train_students(teacher, students: list[Student], rec_train: Recording, rec_valid: Recording,
                   cfg, folder: Path, progress: bool = True) -> dict:
    """Train (or resume) every unfinished student until it stops; returns {Student: history}.

    Students that learn from the same recording share each batch; each has its own Adam, stops
    on its own (`stop_reason` on its held-out MSE after every epoch) and is checkpointed after
    every epoch in `folder/<name>.pt`, so an interrupted run resumes. Only one recording's
    students are in memory at a time, and of them at most this process's share of
    `distill_memory_gb` in one turn (a larger student trains alone); the caller loads finished
    ones with `load_student`. A checkpoint of other settings is refused before anything trains.
    """
    folder = Path(folder)
    rec_train.device = rec_valid.device = device = next(teacher.parameters()).device
    if cfg.distill_precision == "bf16" and device.type == "cpu" and not cpu_has_bf16():
        warnings.warn("distill_precision='bf16' on a CPU without native bfloat16 (AVX512-BF16 or AMX): its "
                      "students' steps run slower than in fp32 (a bf16 matmul measured 2.6x slower with AVX-512, "
                      "200x with AVX2 alone); distill_precision='fp32' is the faster choice here")
    out = {}
    groups: dict = {}
    for s in students:
        groups.setdefault(s.source, []).append(s)
    limit = memory_share(cfg, device)
    for source, members in groups.items():
        # each student under its own lock: another process asking for it waits, then loads it
        with locks([folder / f"{s.name}.pt" for s in members], f"the students of {_name(source)}"):
            todo = []
            for s in members:
                path = folder / f"{s.name}.pt"
                ck = load_checkpoint(path, mmap=True) if path.exists() else {}  # no weights read
                if ck and ck.get("distill_key") != cfg.distill_key():
                    raise ValueError(f"{path} was trained under other distillation settings; delete it")
                if ck.get("finished"):  # finished: its history only
                    out[s] = ck["history"]
                else:
                    todo.append(s)
                del ck
            plan = turns(todo, [training_bytes(s, cfg) for s in todo], limit)
            for k, turn in enumerate(plan):
                _train_group(teacher, source, turn, rec_train, rec_valid, cfg, folder, progress, out,
                             f" turn {k + 1} of {len(plan)}" if len(plan) > 1 else "")
    return out


# Bytes a student holds while it trains, per parameter: 16 counted (fp32 weights, Adam's two
# moments and, from its second epoch, a copy of its best weights; gradients are freed after each
# step, so only the stepping student holds them) and 20 measured at `small` (bench_memory.py:
# the stepping student's gradients, the allocator's own overhead); the limit uses the measure.
BYTES_PER_PARAM = 20


def memory_share(cfg, device=None) -> float:
    """Bytes of students this process may train at once: `distill_memory_gb` (0: no limit),
    divided among the processes of this machine on a CPU (they share its memory; on GPUs each
    process has its own device, and the limit is per device)."""
    on_cpu = device is None or torch.device(device).type == "cpu"
    return cfg.distill_memory_gb * 1e9 / (dd.local_world() if on_cpu else 1)


def training_bytes(s: Student, cfg) -> int:
    """The memory a student holds while it trains (`BYTES_PER_PARAM` per parameter)."""
    return BYTES_PER_PARAM * count_params(s.scheme, s.size, cfg.max_len, cfg.d_model, cfg.n_heads, s.where)


def turns(students: list, sizes: list[int], limit: float) -> list[list]:
    """`students` in turns whose `sizes` sum to at most `limit` (0: all in one turn): largest
    first, each into the first turn with room; one larger than the limit trains alone. Each
    turn keeps the order of `students`, and training in turns changes no student's weights."""
    if not students:
        return []
    if not limit:
        return [list(students)]
    bins: list[list[int]] = []
    room: list[float] = []
    for i in sorted(range(len(students)), key=lambda i: (-sizes[i], i)):
        k = next((k for k, r in enumerate(room) if sizes[i] <= r), None)
        if k is None:
            bins.append([])
            room.append(limit)
            k = len(bins) - 1
        bins[k].append(i)
        room[k] -= sizes[i]
    return [[students[i] for i in sorted(b)] for b in bins]


def finished_history(s: Student, cfg, folder: Path) -> list | None:
    """The history of a student finished in `folder` under `cfg`'s key, else None (no weights loaded)."""
    path = Path(folder) / f"{s.name}.pt"
    if not path.exists():
        return None
    ck = load_checkpoint(path, mmap=True)
    return ck["history"] if ck.get("finished") and ck.get("distill_key") == cfg.distill_key() else None


def step_loss(module, compile: bool = False):
    """loss(batch) of a student's distillation step: its prediction's masked MSE against the
    teacher's. With `compile`, through `torch.compile` with dynamic shapes (the batches vary
    in length): on 2 CPU cores a causal student's epoch at L ran 1.7-1.9x faster at `small`, after
    15-35 s of compiling per student, and was slower overall at `tiny` (benchmarks/bench_compile.py --grid)."""
    def loss(x, x_pad, memory, memory_pad, target):
        pred = module.distill_forward(x, x_pad, memory, memory_pad)
        return masked_mse(pred.float(), target, x_pad)
    if not compile:
        return loss
    # every student compiles this same function: room for a few variants (first static, then
    # dynamic shapes) of each student of a grid, instead of torch's 8, after which it runs eagerly
    dynamo = torch._dynamo.config
    dynamo.recompile_limit = max(dynamo.recompile_limit, 1024)
    dynamo.accumulated_recompile_limit = max(dynamo.accumulated_recompile_limit, 4096)
    now = [torch.compile(loss, dynamic=True)]

    def compiled(*batch):
        try:
            return now[0](*batch)
        except Exception as e:  # no C++ compiler, an unsupported platform: the eager step
            if now[0] is loss:
                raise
            warnings.warn(f"torch.compile failed ({type(e).__name__}: {str(e)[:200]}); distilling without it")
            now[0] = loss
            return loss(*batch)
    return compiled


def _compiled(cfg, module) -> bool:
    return cfg.distill_compile == "all" or (
        cfg.distill_compile == "causal" and isinstance(module, (CausalFFSelfAttention, CausalFFCrossAttention)))


def _train_group(teacher, source, members, rec_train, rec_valid, cfg, folder, progress, out, turn="") -> None:
    """Train `members`, unfinished students that all learn from `source`, side by side into `out`."""
    if not members:
        return
    state = {}
    for s in members:
        state[s] = _load_state(teacher, s, cfg, folder)
        state[s]["loss"] = step_loss(state[s]["module"], _compiled(cfg, state[s]["module"]))
    todo = list(members)
    valid = _batches(rec_valid, source)
    bar = tqdm(desc=f"distilling {_name(source)}{turn} ({', '.join(s.where + ' ' + s.scheme + '-' + s.size for s in todo)})",
               total=cfg.distill_epochs, initial=min(state[s]["epoch"] for s in todo),
               unit="epoch", disable=not progress, leave=False)
    active = list(todo)
    while active:
        epoch = min(state[s]["epoch"] for s in active)
        stepping = [s for s in active if state[s]["epoch"] == epoch]
        seconds = {s: 0.0 for s in stepping}
        losses = {s: [0.0, 0] for s in stepping}
        for s in stepping:
            st = state[s]
            st["module"].train()
            # the weights going into this epoch are the best so far: keep a copy before they move
            st["candidate"] = None if st["best"] is not None or not st["history"] else \
                {k: v.detach().clone() for k, v in st["module"].state_dict().items()}
        lengths = rec_train.src_len if source[0] == "encoder" else rec_train.tgt_len
        started = time.perf_counter()
        for idx in epoch_batches(lengths, cfg.distill_batch, cfg.seed, epoch):
            b = rec_train.batch(source, idx)
            for s in stepping:
                t0 = time.perf_counter()
                st = state[s]
                with autocast(cfg.distill_precision, b["x"].device, cpu_bf16=True):
                    loss = st["loss"](b["x"], b["x_pad"], b["memory"], b["memory_pad"], b["target"])
                loss.backward()
                st["opt"].step()
                st["opt"].zero_grad(set_to_none=True)  # freed now, not at the next step: one student's at a time
                seconds[s] += time.perf_counter() - t0
                losses[s][0] += loss.item()
                losses[s][1] += 1
        loading = time.perf_counter() - started - sum(seconds.values())  # gathering batches
        for s in stepping:
            st = state[s]
            t0 = time.perf_counter()
            mse = _heldout(st["module"], valid)
            st["epoch"] = epoch + 1
            st["history"].append({"epoch": epoch + 1, "train_mse": losses[s][0] / losses[s][1],
                                  "heldout_mse": mse, "steps": losses[s][1], "sentences": len(rec_train),
                                  "seconds": seconds[s], "heldout_seconds": time.perf_counter() - t0,
                                  "loading_seconds": loading / len(stepping)})
            if kept_epoch(st["history"], cfg.distill_patience) == st["epoch"]:
                st["best"] = None  # the current weights are the best
            elif st["best"] is None:
                st["best"] = st["candidate"]
            st["candidate"] = None
            stopped = stop_reason([h["heldout_mse"] for h in st["history"]], cfg.distill_patience,
                                  cfg.distill_min_delta, cfg.distill_epochs)
            _checkpoint(cfg, s, st["path"], st, finished=stopped is not None, stopped=stopped)
            if stopped:
                active.remove(s)
                out[s] = st["history"]
                del state[s]  # free its weights and optimiser
        bar.update(1)
        bar.set_postfix(students=len(active))
    bar.close()
