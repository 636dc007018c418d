"""What a model costs: parameters, FLOPs, CPU latency and memory, and the trade-off (chapter 9).

Parameters (`param_counts`), analytic FLOPs per sentence (`flops`, checked against a counted
forward pass by `count_flops`), CPU latency and memory measured side by side in one process
(`measure`, `decode_curve`), all of it for the teacher and a chosen set of grid cells in one
JSON (`bench`), and the trade-off read from that JSON (`pareto_front`, `decision_table`).
What a replacement does inside (token mixing, error growth, lengths) is `inside`'s.

Latency is measured two ways. End to end, a batch translates until its longest output ends,
so a model that rambles on one sentence looks slow; at equal work every model encodes the
batch and decodes the same fixed number of steps, which isolates what the model costs. The
decision table and the trade-off plot use the equal-work figure; the end-to-end one is kept
beside it with the output lengths.

FLOPs here are 2 x the multiply-adds of matrix products (every Linear, every attention
score and weighted sum, every einsum), the operations that dominate and that
`torch.utils.flop_counter` counts. Not counted: embeddings (a table lookup), LayerNorm,
softmax, activations, residual and bias additions, masking, and the prefix sums of the causal
FF (elementwise work, at most O(heads x S^2) for the softmax).
"""
from __future__ import annotations

import ctypes
import gc
import json
import os
import platform
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import experiments
from .config import GROUP_LABELS, GROUP_SHORT
from .decode import greedy, pad_batch, sequence_limit
from .distill import new_student
from .files import write_atomic
from .model import BOS, PAD, MultiHeadAttention, Transformer
from .replace import (CausalFFCrossAttention, CausalFFSelfAttention, FFBlock, FFCrossAttention,
                      FFLayer, FFSelfAttention, FFSeparateHeads, ShallowFF, TeacherAttention, install)

REPLACEMENTS = (FFSelfAttention, FFSeparateHeads, FFBlock, FFLayer, CausalFFSelfAttention,
                FFCrossAttention, CausalFFCrossAttention)

# ----------------------------------------------------------------------------- parameters


def _unique_params(module: nn.Module):
    seen = set()
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            yield p


def replacement_modules(model: nn.Module) -> dict[str, nn.Module]:
    """{dotted path: module} of every FF replacement installed in `model` (outermost only)."""
    found = {}
    for name, m in model.named_modules():
        if isinstance(m, REPLACEMENTS) and not any(name.startswith(p + ".") for p in found):
            found[name] = m
    return found


def param_counts(model: nn.Module) -> dict[str, int]:
    """Parameters of a model: `total`, `replaced` (the FF replacement networks, without the
    frozen copy of the teacher's W_O that ALR and ASLR keep), `attention` (attention modules
    left) and `embeddings` (token tables)."""
    total = sum(p.numel() for p in _unique_params(model))
    replaced = 0
    for m in replacement_modules(model).values():
        w_o = {id(p) for p in m.out_proj.parameters()} if getattr(m, "out_proj", None) is not None else set()
        replaced += sum(p.numel() for p in _unique_params(m) if id(p) not in w_o)
    attention = sum(p.numel() for m in model.modules() if isinstance(m, MultiHeadAttention)
                    for p in m.parameters())
    embeddings = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Embedding))
    return {"total": total, "replaced": replaced, "attention": attention, "embeddings": embeddings}


def weights_mb(model: nn.Module) -> float:
    """Bytes of the parameters and buffers, in MiB (what loading the model costs)."""
    n = sum(p.numel() * p.element_size() for p in _unique_params(model))
    n += sum(b.numel() * b.element_size() for b in model.buffers())
    return n / 2 ** 20


# ----------------------------------------------------------------------------- FLOPs

def ff_flops(ff: ShallowFF) -> int:
    """One pass of a ShallowFF on one sentence: fc1 and fc2, 2 x multiply-adds."""
    return 2 * (ff.fc1.in_features * ff.fc1.out_features + ff.fc2.in_features * ff.fc2.out_features)


def attention_flops(d: int, q: int, k: int, kv: int | None = None) -> int:
    """Multi-head attention of q queries over k keys: Q (2qd^2), K and V of `kv` new key
    positions (4 kv d^2; default k), scores and weighted sum (4qkd, all heads), W_O (2qd^2)."""
    kv = k if kv is None else kv
    return 4 * q * d * d + 4 * kv * d * d + 4 * q * k * d


def _causal_ff_flops(ff: ShallowFF, d: int, T: int, mode: str, S: int | None) -> int:
    """The one-pass causal FF (`replace._causal_pass`) over T positions.

    Each position's block of fc1 (2dh) and its rows of fc2 (2hd); once per sentence, the two
    weight-only matrix-vector products A b and A g over all D inputs (4hD: step by step they
    are computed at the first step and kept in the state) and, with a memory of S tokens
    (cross), its projection (2 S d h: its real tokens only). So every greedy step after the
    first costs the same 4dh.
    """
    h, D = ff.fc1.out_features, ff.fc1.in_features
    once = (4 * h * D + (2 * S * d * h if S else 0)) if T else 0
    return 2 * T * d * h + 2 * T * h * d + once


def _slot_flops(m: nn.Module, side: str, S: int, T: int, mode: str) -> int:
    """FLOPs of one attention slot (what sits in `block.attn`, or the block, or the layer)."""
    n = S if side == "encoder" else T  # positions of the stream the slot belongs to
    if isinstance(m, TeacherAttention):
        m = m.attn
    if isinstance(m, MultiHeadAttention):
        d = m.out_proj.in_features
        if side == "cross":
            return attention_flops(d, T, S) if T else 0
        if side == "decoder" and mode == "greedy":  # one query per step over the cache
            return sum(attention_flops(d, 1, k, kv=1) for k in range(1, T + 1))
        return attention_flops(d, n, n)
    w_o = 2 * n * m.out_proj.in_features * m.out_proj.out_features \
        if getattr(m, "out_proj", None) is not None else 0
    if isinstance(m, (FFSelfAttention, FFBlock)):  # FFLayer is an FFBlock
        return ff_flops(m.ff) + w_o
    if isinstance(m, FFSeparateHeads):
        f = m.heads
        return 2 * f.n * (f.in_features * f.hidden + f.hidden * f.out_features) + w_o
    if isinstance(m, FFCrossAttention):  # the whole FF again at every decoding step
        return (T if mode == "greedy" else min(T, 1)) * ff_flops(m.ff) + w_o
    if isinstance(m, CausalFFSelfAttention):
        return _causal_ff_flops(m.ff, m.d_model, T, mode, S=None) + w_o
    if isinstance(m, CausalFFCrossAttention):
        return _causal_ff_flops(m.ff, m.d_model, T, mode, S=S) + w_o
    raise TypeError(f"no FLOP formula for {type(m).__name__} in a {side} slot")


def _ff_block_flops(block, n: int) -> int:
    lin = [m for m in block.ff if isinstance(m, nn.Linear)]
    return sum(2 * n * m.in_features * m.out_features for m in lin)


def flops_breakdown(model: Transformer, S: int, T: int, mode: str = "greedy") -> dict[str, int]:
    """FLOPs of one sentence (S source tokens, T target positions), part by part.

    mode "forward": one teacher-forced forward pass, as in training (T = target input length).
    mode "greedy": encoding once, then T decoding steps of one token each with the cache or
    running state, as in translation. Keys: "encoder.<i>.self_attn" (or ".layer" for ELR),
    "encoder.<i>.ff", "decoder.<i>.self_attn", "decoder.<i>.cross_attn", "decoder.<i>.ff",
    "generator".
    """
    if mode not in ("forward", "greedy"):
        raise ValueError(f"unknown mode {mode!r}; choose one of: forward, greedy")
    out = {}
    for i, layer in enumerate(model.encoder.layers):
        if isinstance(layer, FFLayer):
            out[f"encoder.{i}.layer"] = _slot_flops(layer, "encoder", S, T, mode)
            continue
        block = layer.self_attn_block
        slot = block if isinstance(block, FFBlock) else block.attn
        out[f"encoder.{i}.self_attn"] = _slot_flops(slot, "encoder", S, T, mode)
        out[f"encoder.{i}.ff"] = _ff_block_flops(layer.ff_block, S)
    for i, layer in enumerate(model.decoder.layers):
        out[f"decoder.{i}.self_attn"] = _slot_flops(layer.self_attn_block.attn, "decoder", S, T, mode)
        out[f"decoder.{i}.cross_attn"] = _slot_flops(layer.cross_attn_block.attn, "cross", S, T, mode)
        out[f"decoder.{i}.ff"] = _ff_block_flops(layer.ff_block, T)
    out["generator"] = 2 * T * model.generator.in_features * model.generator.out_features
    return out


def flops(model: Transformer, S: int, T: int, mode: str = "greedy", part: str | None = None) -> int:
    """Total FLOPs of one sentence (see `flops_breakdown`); `part` "encoder" or "decoder"
    sums only that side (the generator counts as decoder)."""
    parts = flops_breakdown(model, S, T, mode)
    if part is not None:
        parts = {k: v for k, v in parts.items()
                 if k.startswith(part) or (part == "decoder" and k == "generator")}
    return int(sum(parts.values()))


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
    from torch.utils.flop_counter import sdpa_flop_count
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _mv_flops(a_shape, b_shape, *args, out_shape=None, **kwargs):
    return 2 * a_shape[0] * a_shape[1]


def count_flops(fn, *args, **kwargs) -> int:
    """Run fn(*args, **kwargs) under torch's FlopCounterMode and return the FLOPs it counted.

    torch counts mm, addmm, bmm, baddbmm (so every Linear and einsum) and its GPU attention
    kernels; the CPU kernel of scaled_dot_product_attention and matrix-vector products are
    added here with the same formulas, so the count covers what `flops` computes.
    """
    from torch.utils.flop_counter import FlopCounterMode
    aten = torch.ops.aten
    extra = {aten.mv: _mv_flops}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        extra[aten._scaled_dot_product_flash_attention_for_cpu] = _sdpa_cpu_flops
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=extra) as counter:
        fn(*args, **kwargs)
    return int(counter.get_total_flops())


def decode_steps(model: Transformer, src: torch.Tensor, steps: int, timer: list | None = None):
    """Encode, then exactly `steps` greedy decoding steps (no stop at EOS), one token each.

    With `timer` (a list), the seconds of each step are appended to it.
    """
    memory, memory_pad = model.encode(src)
    states = [{} for _ in model.decoder.layers]
    ys = torch.full((src.shape[0], 1), BOS, dtype=torch.long, device=src.device)
    for t in range(steps):
        t0 = time.perf_counter()
        logp = model.decode(ys[:, -1:], memory, memory_pad, states, offset=t)[:, -1]
        ys = torch.cat([ys, logp.argmax(-1, keepdim=True)], dim=1)
        if timer is not None:
            timer.append(time.perf_counter() - t0)
    return ys


# ----------------------------------------------------------------------------- latency and memory

def _trim_heap() -> None:
    """Give freed heap memory back to the OS (glibc), so RSS deltas start from a clean floor."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        import psutil
        return psutil.Process().memory_info().rss


def peak_rss_mb(fn, interval: float = 0.0005) -> float:
    """Peak increase of the process's resident memory (RSS, MiB) while fn() runs, sampled by a
    thread every `interval` seconds above the level just before (after trimming the heap).
    tracemalloc would miss it: torch's tensors are not allocated through Python."""
    _trim_heap()
    base = peak = _rss_bytes()
    stop = threading.Event()

    def sample():
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _rss_bytes())
            time.sleep(interval)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        fn()
    finally:
        stop.set()
        th.join()
    peak = max(peak, _rss_bytes())
    return (peak - base) / 2 ** 20


def machine() -> dict:
    """Where the numbers were measured."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu": cpu,
            "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "load_average": load, "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def _greedy(model, src, max_steps):
    return greedy(model, src, max_steps)


@torch.no_grad()
def measure(models: dict[str, nn.Module], src_b1: torch.Tensor, src_batch: torch.Tensor,
            repeats: int = 3, warmup: int = 1, max_steps: int | None = None, memory: bool = True,
            min_seconds: float = 0.3, max_repeats: int = 25, fixed_steps: int | None = None) -> dict[str, dict]:
    """CPU latency of every model: encoder forward and whole greedy translation, at batch 1
    (`src_b1`, one sentence) and at batch B (`src_batch`), in milliseconds; with `fixed_steps`
    also `steps_b<B>`: encoding the batch and exactly that many greedy steps, the same work
    for every model whatever the length of its outputs (`decode_steps`).

    Each latency is the median of at least `repeats` timed runs after `warmup` runs; a quick
    task is repeated until its runs add up to `min_seconds` (at most `max_repeats`). The runs
    go round robin over models and tasks in this process, so a change in the machine's load
    affects every model alike. With `memory`, the first warm-up run of the batch translation
    also records the peak RSS increase (MiB, `peak_rss_mb`).

    Returns {name: {"latency_ms": {"encoder_b1", "encoder_b<B>", "translate_b1",
    "translate_b<B>"[, "steps_b<B>"]} (medians), "latency_spread_ms": {task: {"min", "median",
    "max"}}, "out_tokens" and "max_out_tokens": mean and longest output at batch B,
    "peak_mem_mb", "runs": timed runs per task}}.
    """
    B = src_batch.shape[0]
    tasks = {"encoder_b1": lambda m: m.encode(src_b1), f"encoder_b{B}": lambda m: m.encode(src_batch),
             "translate_b1": lambda m: _greedy(m, src_b1, max_steps),
             f"translate_b{B}": lambda m: _greedy(m, src_batch, max_steps)}
    if fixed_steps:
        tasks[f"steps_b{B}"] = lambda m: decode_steps(m, src_batch, fixed_steps)
    big = f"translate_b{B}"
    times = {name: {k: [] for k in tasks} for name in models}
    out = {name: {"peak_mem_mb": None} for name in models}
    for m in models.values():
        m.eval()
    for name, m in models.items():  # warm up (and measure memory) model by model
        for k, task in tasks.items():
            for w in range(max(warmup, 1 if memory else 0)):
                if memory and k == big and w == 0:
                    out[name]["peak_mem_mb"] = peak_rss_mb(lambda: task(m))
                else:
                    task(m)

    def wanted(v):
        return len(v) < repeats or (sum(v) < min_seconds and len(v) < max_repeats)

    while any(wanted(v) for t in times.values() for v in t.values()):
        for name, m in models.items():
            for k, task in tasks.items():
                if wanted(times[name][k]):
                    t0 = time.perf_counter()
                    hyps = task(m)
                    times[name][k].append(time.perf_counter() - t0)
                    if k == big:  # the batch decodes until its longest translation ends
                        out[name]["out_tokens"] = float(np.mean([len(h) for h in hyps]))
                        out[name]["max_out_tokens"] = int(max(len(h) for h in hyps))
    for name in models:
        out[name]["latency_ms"] = {k: 1000 * statistics.median(v) for k, v in times[name].items()}
        out[name]["latency_spread_ms"] = {k: {"min": 1000 * min(v), "median": 1000 * statistics.median(v),
                                              "max": 1000 * max(v)} for k, v in times[name].items()}
        out[name]["runs"] = {k: len(v) for k, v in times[name].items()}
    return out


@torch.no_grad()
def decode_curve(models: dict[str, nn.Module], src: torch.Tensor, steps: dict[str, int] | int,
                 repeats: int = 3, warmup: int = 1) -> dict:
    """Milliseconds of each greedy decoding step (median over repeats), step by step.

    The teacher's self-attention appends to its key/value cache and attends over all of it, so
    its steps grow with the length; a causal FF keeps three running sums and its steps do not.
    `steps` per model (a causal FF stops at its MAX_LEN). Also the analytic FLOPs of each step.
    """
    steps = {n: steps for n in models} if isinstance(steps, int) else steps
    for name, m in models.items():
        limit = sequence_limit(m)
        if limit is not None and steps[name] > limit:
            raise ValueError(f"{name} cannot decode {steps[name]} steps: its MAX_LEN is {limit}")
        m.eval()
    times = {n: [] for n in models}
    for r in range(warmup + repeats):
        for name, m in models.items():
            timer = []
            decode_steps(m, src, steps[name], timer)
            if r >= warmup:
                times[name].append(timer)
    S = int((src != PAD).sum(1).max())
    curve = {}
    for name, m in models.items():
        per_step = np.median(np.array(times[name]), axis=0) * 1000
        cum = [flops(m, S, k, "greedy", part="decoder") for k in range(steps[name] + 1)]
        curve[name] = {"step": list(range(1, steps[name] + 1)), "ms": [float(x) for x in per_step],
                       "flops": [int(b - a) for a, b in zip(cum, cum[1:])]}
    return {"batch": int(src.shape[0]), "source_len": S, "repeats": repeats, "models": curve}


# ----------------------------------------------------------------------------- the benchmark

MODEL_KEYS = ("name", "group", "scheme", "size", "bleu", "params_total", "params_replaced",
              "flops_per_sentence", "latency_ms", "latency_spread_ms", "out_tokens", "max_out_tokens",
              "peak_mem_mb")


def run_bench(entries: list[dict], src_b1: torch.Tensor, src_batch: torch.Tensor, S: int, T: int,
              repeats: int = 3, warmup: int = 1, max_steps: int | None = None,
              curve: dict | None = None, lengths: list[int] | None = None, extra: dict | None = None,
              fixed_steps: int | None = None) -> dict:
    """Measure a set of models (no data needed: token ids in, numbers out).

    entries: [{"name", "model", "group", "scheme", "size", "bleu"}]; S, T: the sentence the
    FLOPs are given for (greedy translation of T tokens from S); curve: {"models": {name: model},
    "src": ids, "steps": {name: n}} for `decode_curve`; lengths: n for the FLOPs-against-length
    curves (S = T = n; None beyond a model's MAX_LEN); fixed_steps: the equal-work latency
    (default T).
    """
    started = time.time()
    models = {e["name"]: e["model"] for e in entries}
    fixed_steps = fixed_steps or T
    measured = measure(models, src_b1, src_batch, repeats, warmup, max_steps, fixed_steps=fixed_steps)
    rows = []
    for e in entries:
        m = e["model"]
        p = param_counts(m)
        limit = sequence_limit(m)
        rows.append({"name": e["name"], "group": e.get("group", "teacher"), "scheme": e.get("scheme", "-"),
                     "size": e.get("size", "-"), "bleu": e.get("bleu"),
                     "params_total": p["total"], "params_replaced": p["replaced"],
                     "flops_per_sentence": flops(m, S, T, "greedy"),
                     "flops_encoder": flops(m, S, T, "greedy", part="encoder"),
                     **measured[e["name"]], "weights_mb": weights_mb(m), "max_len": limit})
    result = {"machine": machine(), **(extra or {}),
              "settings": {"repeats": repeats, "warmup": warmup, "batch": int(src_batch.shape[0]),
                           "fixed_steps": fixed_steps,
                           "batch1_source_len": int((src_b1 != PAD).sum()),
                           "batch_source_len_max": int(src_batch.shape[1]),
                           "flops_at": {"S": S, "T": T, "mode": "greedy"},
                           "peak_mem": "peak RSS increase (MiB) during the first batch translation, "
                                       "sampled by a thread, above the level after trimming the heap"},
              "models": rows}
    if lengths:
        curves = {}
        for e in entries:
            lim = sequence_limit(e["model"]) or max(lengths)
            curves[e["name"]] = {part: [flops(e["model"], n, n, "greedy", part=part) if n <= lim else None
                                        for n in lengths] for part in ("encoder", "decoder")}
        result["flops_curve"] = {"lengths": list(lengths), "S=T": True, "models": curves}
    if curve:
        result["decode_curve"] = decode_curve(curve["models"], curve["src"], curve["steps"], repeats, warmup)
    result["seconds"] = round(time.time() - started, 1)
    return result


def check_schema(result: dict) -> None:
    """Raise ValueError if a bench result lacks a key of the documented schema."""
    problems = [k for k in ("machine", "preset", "pair", "models", "decode_curve") if k not in result]
    for k in ("platform", "cpu", "threads", "torch"):
        if k not in result.get("machine", {}):
            problems.append(f"machine.{k}")
    B = result.get("settings", {}).get("batch", 64)
    for row in result.get("models", []):
        problems += [f"{row.get('name')}.{k}" for k in MODEL_KEYS if k not in row]
        for key in ("latency_ms", "latency_spread_ms"):
            lat = row.get(key, {})
            problems += [f"{row.get('name')}.{key}.{k}" for k in
                         ("encoder_b1", f"encoder_b{B}", "translate_b1", f"translate_b{B}", f"steps_b{B}")
                         if k not in lat]
    if problems:
        raise ValueError(f"bench result lacks: {', '.join(problems)}")


def default_cells(cfg) -> list:
    """A representative subset of the grid: encoder ALR/ALRR/ASLR/ELR at M and L, decoder ALR
    at L, cross-attention at L in both forms, the attentionless Transformer."""
    keep = {f"encoder-{s}-{z}" for s in ("ALR", "ALRR", "ASLR", "ELR") for z in ("M", "L")}
    keep |= {"decoder-ALR-L", "cross-ALR-L", "cross_causal-ALR-L", "attentionless-ALR-L"}
    return [c for c in experiments.grid(cfg) if c.name in keep]


def bench_path(t) -> Path:
    return experiments.distill_dir(t) / "bench.json"


def _pick_inputs(split, max_len: int, batch: int, seed: int = 0):
    """One sentence of median length, and `batch` sentences drawn at random, all <= max_len."""
    ids = [s for s in split.src_ids if len(s) <= max_len]
    lens = np.array([len(s) for s in ids])
    one = ids[int(np.argsort(lens)[len(lens) // 2])]
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(ids), size=min(batch, len(ids)), replace=False)
    return pad_batch([one]), pad_batch([ids[i] for i in sorted(pick)])


DEFAULT_REPEATS = {"tiny": 3, "small": 5, "paper": 10}
BENCH_VERSION = 2  # bump when the JSON's content changes: `bench(reuse=True)` then measures again


def bench(cfg, cells=None, repeats: int | None = None, out: str | Path | None = None,
          reuse: bool = False, batch: int = 64, progress: bool = False) -> dict:
    """Measure the teacher and grid cells of `cfg`; write and return the JSON.

    cells: Cells or cell names (default `default_cells`). BLEU is read from the cached grid
    evaluation (computed if missing). reuse: return the JSON at `out` if it holds the same
    models (default `bench_path`: the distillation folder of the run).
    """
    if cells is None:
        cells = default_cells(cfg)
    else:  # checked before anything is trained
        by_name = {c.name: c for c in experiments.grid(cfg)}
        unknown = [c for c in cells if isinstance(c, str) and c not in by_name]
        if unknown:
            raise ValueError(f"unknown cell(s) {unknown}; choose from: {', '.join(by_name)}")
        cells = [by_name[c] if isinstance(c, str) else c for c in cells]
    t = experiments.teacher(cfg, progress=progress)
    out = Path(out) if out else bench_path(t)
    names = ["teacher"] + [c.name for c in cells]
    if reuse and out.exists():
        old = json.loads(out.read_text())
        if old.get("bench_version") == BENCH_VERSION and [m["name"] for m in old.get("models", [])] == names:
            return old
    repeats = repeats or DEFAULT_REPEATS.get(cfg.preset, 3)
    trained = experiments.students(t, {s for c in cells if c.trained for s in c.students}, progress=False)
    entries = [{"name": "teacher", "model": t.model, "group": "teacher", "scheme": "-", "size": "-",
                "bleu": experiments.teacher_metrics(t, "test", progress=progress)["bleu"]}]
    for c in cells:
        entries.append({"name": c.name, "model": experiments.cell_model(t, c, trained), "group": c.group,
                        "scheme": c.scheme, "size": c.size,
                        "bleu": experiments.evaluate_cell(t, c, trained, progress=progress)["bleu"]})
    test = t.data["test"]
    src_b1, src_batch = _pick_inputs(test, cfg.max_len, batch, cfg.seed)
    S = int(np.median([len(s) for s in test.src_ids]))
    T = int(np.median([len(s) - 1 for s in test.tgt_ids]))  # BOS + pieces + EOS: pieces + EOS steps
    # the decoding curve: the teacher against a decoder whose self-attention is causal FFs
    dec = next((e for e in entries if e["name"] == "decoder-ALR-L"), None)
    if dec is None:
        mods = {s.key: new_student(t.model, s, cfg.max_len, cfg.seed)
                for s in experiments.all_layers(cfg, "decoder", "ALR", "L")}
        dec = {"name": "decoder-ALR-L (untrained: same cost)", "model": install(t.model, mods).eval()}
    curve = {"models": {"teacher": t.model, dec["name"]: dec["model"]}, "src": src_batch,
             "steps": {"teacher": 2 * cfg.max_len, dec["name"]: sequence_limit(dec["model"])}}
    lengths = sorted({*range(1, 2 * cfg.max_len + 1, max(1, cfg.max_len // 10)), cfg.max_len, 2 * cfg.max_len})
    result = run_bench(entries, src_b1, src_batch, S, T, repeats=repeats, curve=curve, lengths=lengths,
                       extra={"bench_version": BENCH_VERSION, "preset": cfg.preset, "pair": cfg.pair,
                              "corpus": cfg.corpus,
                              "max_len": cfg.max_len, "teacher_key": cfg.teacher_key(),
                              "distill_key": cfg.distill_key()})
    check_schema(result)
    write_atomic(out, json.dumps(result, indent=1))
    return result


# ----------------------------------------------------------------------------- trade-offs


def models_frame(result: dict):
    """The bench's models as a flat DataFrame (latencies as latency_<task> columns), with
    BLEU, parameters, FLOPs and latency relative to the teacher."""
    rows = []
    for m in result["models"]:
        row = {k: v for k, v in m.items() if k not in ("latency_ms", "latency_spread_ms")}
        row.update({f"latency_{k}": v for k, v in m["latency_ms"].items()})
        for k, spread in m.get("latency_spread_ms", {}).items():
            row.update({f"latency_{k}_min": spread["min"], f"latency_{k}_max": spread["max"]})
        rows.append(row)
    df = pd.DataFrame(rows)
    df["bleu"] = pd.to_numeric(df["bleu"], errors="coerce")
    base = df[df.group == "teacher"].iloc[0]
    df["bleu_rel"] = 100 * df["bleu"] / base["bleu"] if base["bleu"] else float("nan")
    df["params_x"] = df["params_total"] / base["params_total"]
    df["flops_x"] = df["flops_per_sentence"] / base["flops_per_sentence"]
    for k in result["models"][0]["latency_ms"]:
        df[f"latency_{k}_x"] = df[f"latency_{k}"] / base[f"latency_{k}"]
    return df


def pareto_front(cost, quality) -> np.ndarray:
    """True where no other point is at least as cheap and at least as good, and better in one."""
    cost, quality = np.asarray(cost, float), np.asarray(quality, float)
    ok = ~(np.isnan(cost) | np.isnan(quality))
    front = np.zeros(len(cost), dtype=bool)
    for i in np.flatnonzero(ok):
        dominated = ok & (cost <= cost[i]) & (quality >= quality[i]) & ((cost < cost[i]) | (quality > quality[i]))
        front[i] = not dominated.any()
    return front


def model_latency(result: dict) -> str:
    """The latency column that isolates what a model costs: encoding the batch and a fixed
    number of greedy steps (`steps_b<B>`), or, in a bench JSON without it, whole translation."""
    B = result.get("settings", {}).get("batch", 64)
    first = result["models"][0]["latency_ms"]
    return f"latency_steps_b{B}" if f"steps_b{B}" in first else f"latency_translate_b{B}"


def latency_label(result: dict, latency: str) -> str:
    """'encode + 14 greedy steps, batch 64' for a latency column of the bench."""
    task, _, batch = latency.removeprefix("latency_").rpartition("_b")
    what = {"encoder": "encode", "translate": "greedy translation, end to end",
            "steps": f"encode + {result.get('settings', {}).get('fixed_steps')} greedy steps"}.get(task, task)
    return f"{what}, batch {batch}"


def tradeoff(result: dict, latency: str | None = None):
    """models_frame with `front_latency` and `front_params`: on the Pareto front of BLEU against
    latency (default `model_latency`: equal work for every model) and against total parameters."""
    df = models_frame(result)
    latency = latency or model_latency(result)
    df["front_latency"] = pareto_front(df[latency], df["bleu"])
    df["front_params"] = pareto_front(df["params_total"], df["bleu"])
    return df


def decision_table(result: dict, latency: str | None = None):
    """One plain sentence per replacement: what it keeps of the teacher's BLEU, and how many
    times the teacher's parameters, FLOPs and latency it needs.

    The latency is `model_latency` (equal work) unless given; the end-to-end latency of the
    batch translation stands beside it with the longest output, which sets how many steps a
    batch decodes."""
    B = result.get("settings", {}).get("batch", 64)
    latency = latency or model_latency(result)
    end = f"latency_translate_b{B}"
    df = tradeoff(result, latency)
    teacher = df[df.group == "teacher"].iloc[0]
    rows = []
    for _, r in df[df.group != "teacher"].iterrows():
        what = GROUP_LABELS.get(r.group, r.group)
        bleu = ("BLEU not measured" if pd.isna(r.bleu) else
                f"BLEU {r.bleu:.1f} (the teacher's: {teacher.bleu})" if pd.isna(r.bleu_rel) else
                f"{r.bleu_rel:.0f}% of the teacher's BLEU")
        tail = ""
        if latency != end:
            tail = (f"; end to end {r[end + '_x']:.1f} times (its longest output {r.max_out_tokens:.0f} tokens, "
                    f"the teacher's {teacher.max_out_tokens:.0f})")
        rows.append({"replacement": f"{what} -> {r.scheme}-{r['size']}",
                     "decision": f"replace {what} with {r.scheme}-{r['size']}: {bleu}, "
                                 f"{r.params_x:.1f} times the parameters, "
                                 f"{r[latency + '_x']:.1f} times the latency ({latency_label(result, latency)}), "
                                 f"{r.flops_x:.1f} times the FLOPs{tail}",
                     "bleu_rel": r.bleu_rel, "params_x": r.params_x, "latency_x": r[latency + "_x"],
                     "end_to_end_x": r[end + "_x"], "max_out_tokens": r.max_out_tokens,
                     "flops_x": r.flops_x, "pareto": bool(r.front_latency or r.front_params)})
    return pd.DataFrame(rows)


def _short_name(r) -> str:
    if r["group"] == "teacher":
        return "teacher"
    return f"{GROUP_SHORT.get(r['group'], r['group'])} {r['scheme']}-{r['size']}"


def plot_tradeoff(result: dict, axes=None, latency: str | None = None):
    """BLEU against latency and against parameters, one point per model, Pareto fronts drawn."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter
    latency = latency or model_latency(result)
    df = tradeoff(result, latency)
    if axes is None:
        axes = plt.subplots(1, 2, figsize=(13, 4.5), layout="constrained")[1]
    for ax, x, front, label in ((axes[0], latency, "front_latency", f"latency, ms ({latency_label(result, latency)})"),
                                (axes[1], "params_total", "front_params", "parameters (whole model)")):
        for group, sub in df.groupby("group", sort=False):
            ax.scatter(sub[x], sub["bleu"], s=40, label=GROUP_LABELS.get(group, group), zorder=3,
                       marker="*" if group == "teacher" else "o", c="black" if group == "teacher" else None)
        f = df[df[front]].sort_values(x)
        ax.step(f[x], f["bleu"], where="post", color="0.5", ls="--", zorder=2, label="Pareto front")
        ax.scatter(f[x], f["bleu"], s=140, facecolors="none", edgecolors="0.3", zorder=4)
        for _, r in df.iterrows():
            ax.annotate(_short_name(r), (r[x], r["bleu"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
        ax.set(xscale="log", xlabel=label + ", log scale", ylabel="sacreBLEU (test)")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    axes[0].legend(fontsize=7, loc="best")
    return axes
