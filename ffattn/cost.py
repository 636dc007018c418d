"""What a replacement costs, and what it does inside.

Cost: parameters (`param_counts`), analytic FLOPs per sentence (`flops`, checked against a
counted forward pass by `count_flops`), CPU latency and memory measured side by side in one
process (`measure`, `decode_curve`), all of it for the teacher and a chosen set of grid cells
in one JSON (`bench`), and the trade-off read from that JSON (`pareto_front`,
`decision_table`).

Inside: the effective token mixing of any slot, the norm of the Jacobian of output position
i with respect to input position j (`token_mixing`), compared with the teacher's attention
maps by rank correlation (`mixing_agreement`); how errors grow through a replaced stack
(`error_growth`); BLEU by sentence length (`bleu_by_length`); and what happens to sentences
longer than MAX_LEN (`beyond_max_len`).

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
import torch
from torch import nn

from .model import BOS, EOS, PAD, MultiHeadAttention, Transformer
from .replace import (CausalFFCrossAttention, CausalFFSelfAttention, FFBlock, FFCrossAttention,
                      FFLayer, FFSelfAttention, FFSeparateHeads, ShallowFF, TeacherAttention)

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


def _causal_ff_flops(ff: ShallowFF, d: int, T: int, mode: str, memory: bool) -> int:
    """The one-pass causal FF (`replace._causal_pass`) over T positions.

    Each position's block of fc1 (2dh) and its rows of fc2 (2hd); once per sentence, the two
    weight-only matrix-vector products A b and A g over all D inputs (4hD: step by step they
    are computed at the first step and kept in the state) and, with memory (cross), the
    memory's projection (2 W h). So every greedy step after the first costs the same 4dh.
    """
    h, D = ff.fc1.out_features, ff.fc1.in_features
    W = ff.fc2.out_features
    once = (4 * h * D + (2 * W * h if memory else 0)) if T else 0
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
        return _causal_ff_flops(m.ff, m.d_model, T, mode, memory=False) + w_o
    if isinstance(m, CausalFFCrossAttention):
        return _causal_ff_flops(m.ff, m.d_model, T, mode, memory=True) + w_o
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
    from .decode import greedy
    return greedy(model, src, max_steps)


@torch.no_grad()
def measure(models: dict[str, nn.Module], src_b1: torch.Tensor, src_batch: torch.Tensor,
            repeats: int = 3, warmup: int = 1, max_steps: int | None = None, memory: bool = True,
            min_seconds: float = 0.3, max_repeats: int = 25) -> dict[str, dict]:
    """CPU latency of every model: encoder forward and whole greedy translation, at batch 1
    (`src_b1`, one sentence) and at batch B (`src_batch`), in milliseconds.

    Each latency is the median of at least `repeats` timed runs after `warmup` runs; a quick
    task is repeated until its runs add up to `min_seconds` (at most `max_repeats`). The runs
    go round robin over models and tasks in this process, so a change in the machine's load
    affects every model alike. With `memory`, the first warm-up run of the batch translation
    also records the peak RSS increase (MiB, `peak_rss_mb`).

    Returns {name: {"latency_ms": {"encoder_b1", "encoder_b<B>", "translate_b1",
    "translate_b<B>"}, "out_tokens" and "max_out_tokens": mean and longest output at batch B,
    "peak_mem_mb", "runs": timed runs per task}}.
    """
    B = src_batch.shape[0]
    tasks = {"encoder_b1": lambda m: m.encode(src_b1), f"encoder_b{B}": lambda m: m.encode(src_batch),
             "translate_b1": lambda m: _greedy(m, src_b1, max_steps),
             f"translate_b{B}": lambda m: _greedy(m, src_batch, max_steps)}
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
    from .decode import sequence_limit
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
              "flops_per_sentence", "latency_ms", "peak_mem_mb")


def run_bench(entries: list[dict], src_b1: torch.Tensor, src_batch: torch.Tensor, S: int, T: int,
              repeats: int = 3, warmup: int = 1, max_steps: int | None = None,
              curve: dict | None = None, lengths: list[int] | None = None, extra: dict | None = None) -> dict:
    """Measure a set of models (no data needed: token ids in, numbers out).

    entries: [{"name", "model", "group", "scheme", "size", "bleu"}]; S, T: the sentence the
    FLOPs are given for (greedy translation of T tokens from S); curve: {"models": {name: model},
    "src": ids, "steps": {name: n}} for `decode_curve`; lengths: n for the FLOPs-against-length
    curves (S = T = n; None beyond a model's MAX_LEN).
    """
    from .decode import sequence_limit
    started = time.time()
    models = {e["name"]: e["model"] for e in entries}
    measured = measure(models, src_b1, src_batch, repeats, warmup, max_steps)
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
        lat = row.get("latency_ms", {})
        problems += [f"{row.get('name')}.latency_ms.{k}" for k in
                     ("encoder_b1", f"encoder_b{B}", "translate_b1", f"translate_b{B}") if k not in lat]
    if problems:
        raise ValueError(f"bench result lacks: {', '.join(problems)}")


def default_cells(cfg) -> list:
    """A representative subset of the grid: encoder ALR/ALRR/ASLR/ELR at M and L, decoder ALR
    at L, cross-attention at L in both forms, the attentionless Transformer."""
    from .experiments import grid
    keep = {f"encoder-{s}-{z}" for s in ("ALR", "ALRR", "ASLR", "ELR") for z in ("M", "L")}
    keep |= {"decoder-ALR-L", "cross-ALR-L", "cross_causal-ALR-L", "attentionless-ALR-L"}
    return [c for c in grid(cfg) if c.name in keep]


def bench_path(t) -> Path:
    from .experiments import distill_dir
    return distill_dir(t) / "bench.json"


def _pick_inputs(split, max_len: int, batch: int, seed: int = 0):
    """One sentence of median length, and `batch` sentences drawn at random, all <= max_len."""
    from .decode import pad_batch
    ids = [s for s in split.src_ids if len(s) <= max_len]
    lens = np.array([len(s) for s in ids])
    one = ids[int(np.argsort(lens)[len(lens) // 2])]
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(ids), size=min(batch, len(ids)), replace=False)
    return pad_batch([one]), pad_batch([ids[i] for i in sorted(pick)])


DEFAULT_REPEATS = {"tiny": 3, "small": 5, "paper": 10}
BENCH_VERSION = 1  # bump when the JSON's content changes: `bench(reuse=True)` then measures again


def bench(cfg, cells=None, repeats: int | None = None, out: str | Path | None = None,
          reuse: bool = False, batch: int = 64, progress: bool = False) -> dict:
    """Measure the teacher and grid cells of `cfg`; write and return the JSON.

    cells: Cells or cell names (default `default_cells`). BLEU is read from the cached grid
    evaluation (computed if missing). reuse: return the JSON at `out` if it holds the same
    models (default `bench_path`: the distillation folder of the run).
    """
    from . import experiments
    from .decode import sequence_limit
    from .distill import new_student
    from .replace import install
    t = experiments.teacher(cfg, progress=progress)
    if cells is None:
        cells = default_cells(cfg)
    else:
        by_name = {c.name: c for c in experiments.grid(cfg)}
        unknown = [c for c in cells if isinstance(c, str) and c not in by_name]
        if unknown:
            raise ValueError(f"unknown cell(s) {unknown}; choose from: {', '.join(by_name)}")
        cells = [by_name[c] if isinstance(c, str) else c for c in cells]
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
    from .files import write_atomic
    write_atomic(out, json.dumps(result, indent=1))
    return result


# ----------------------------------------------------------------------------- trade-offs

WHAT = {"encoder": "encoder self-attention", "decoder": "decoder self-attention",
        "cross": "cross-attention (paper form)", "cross_causal": "cross-attention (causal form)",
        "attentionless": "all attention (paper cross form)",
        "attentionless_causal": "all attention (causal cross form)"}


def models_frame(result: dict):
    """The bench's models as a flat DataFrame (latencies as latency_<task> columns), with
    BLEU, parameters, FLOPs and latency relative to the teacher."""
    import pandas as pd
    rows = []
    for m in result["models"]:
        row = {k: v for k, v in m.items() if k != "latency_ms"}
        row.update({f"latency_{k}": v for k, v in m["latency_ms"].items()})
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


def tradeoff(result: dict, latency: str | None = None):
    """models_frame with `front_latency` and `front_params`: on the Pareto front of BLEU against
    latency (default: the batch translation) and against total parameters."""
    df = models_frame(result)
    latency = latency or f"latency_translate_b{result.get('settings', {}).get('batch', 64)}"
    df["front_latency"] = pareto_front(df[latency], df["bleu"])
    df["front_params"] = pareto_front(df["params_total"], df["bleu"])
    return df


def decision_table(result: dict, latency: str | None = None):
    """One plain sentence per replacement: what it keeps of the teacher's BLEU, and how many
    times the teacher's parameters, FLOPs and latency it needs."""
    import pandas as pd
    B = result.get("settings", {}).get("batch", 64)
    latency = latency or f"latency_translate_b{B}"
    df = tradeoff(result, latency)
    teacher_bleu = df[df.group == "teacher"].bleu.iloc[0]
    rows = []
    for _, r in df[df.group != "teacher"].iterrows():
        what = WHAT.get(r.group, r.group)
        bleu = ("BLEU not measured" if pd.isna(r.bleu) else
                f"BLEU {r.bleu:.1f} (the teacher's: {teacher_bleu})" if pd.isna(r.bleu_rel) else
                f"{r.bleu_rel:.0f}% of the teacher's BLEU")
        rows.append({"replacement": f"{what} -> {r.scheme}-{r['size']}",
                     "decision": f"replace {what} with {r.scheme}-{r['size']}: {bleu}, "
                                 f"{r.params_x:.1f} times the parameters, "
                                 f"{r[latency + '_x']:.1f} times the latency "
                                 f"({latency.removeprefix('latency_').replace('_b', ', batch ')}), "
                                 f"{r.flops_x:.1f} times the FLOPs",
                     "bleu_rel": r.bleu_rel, "params_x": r.params_x, "latency_x": r[latency + "_x"],
                     "flops_x": r.flops_x, "pareto": bool(r.front_latency or r.front_params)})
    return pd.DataFrame(rows)


_SHORT = {"encoder": "enc", "decoder": "dec", "cross": "cross", "cross_causal": "cross causal",
          "attentionless": "no attention", "attentionless_causal": "no attention, causal"}


def _short_name(r) -> str:
    if r["group"] == "teacher":
        return "teacher"
    return f"{_SHORT.get(r['group'], r['group'])} {r['scheme']}-{r['size']}"


def plot_tradeoff(result: dict, axes=None, latency: str | None = None):
    """BLEU against latency and against parameters, one point per model, Pareto fronts drawn."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter
    B = result.get("settings", {}).get("batch", 64)
    latency = latency or f"latency_translate_b{B}"
    df = tradeoff(result, latency)
    if axes is None:
        axes = plt.subplots(1, 2, figsize=(13, 4.5), layout="constrained")[1]
    for ax, x, front, label in ((axes[0], latency, "front_latency", f"latency, ms ({latency[8:]})"),
                                (axes[1], "params_total", "front_params", "parameters (whole model)")):
        for group, sub in df.groupby("group", sort=False):
            ax.scatter(sub[x], sub["bleu"], s=40, label=WHAT.get(group, group), zorder=3,
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


# ----------------------------------------------------------------------------- inside: token mixing

def _shallow_ff_jacobian(ff: ShallowFF, z: torch.Tensor, n_cols: int, n_rows: int) -> torch.Tensor:
    """d ff(z)[:n_rows] / d z[:n_cols] for one input vector z (exact, analytic).

    ff(z) = W2 LN_h(act(W1 LN_in(z) + b1)) + b2; a LayerNorm's Jacobian is
    diag(g) r (I - 11^T/n - zhat zhat^T/n), so only the real rows of W2 and the real columns of
    W1 enter, with rank-two corrections: 2 x rows x h x cols FLOPs instead of a backward pass
    through the whole padded width for every output.
    """
    n, h = z.numel(), ff.fc1.out_features
    r = torch.rsqrt(z.var(unbiased=False) + ff.ln_in.eps)
    zh = (z - z.mean()) * r
    A = ff.fc1.weight * ff.ln_in.weight  # W1 diag(g_in), (h, n)
    pre = A @ zh + ff.fc1.weight @ ff.ln_in.bias + ff.fc1.bias
    j_pre = r * (A[:, :n_cols] - A.sum(1, keepdim=True) / n - (A @ zh)[:, None] * zh[None, :n_cols] / n)
    slope = torch.where(pre > 0, torch.ones_like(pre), torch.full_like(pre, ff.act.negative_slope))
    a = ff.act(pre)
    rh = torch.rsqrt(a.var(unbiased=False) + ff.ln_hidden.eps)
    ah = (a - a.mean()) * rh
    L = ff.fc2.weight[:n_rows] * (ff.ln_hidden.weight * rh)
    L = L - L.sum(1, keepdim=True) / h - (L @ ah)[:, None] * ah[None, :] / h
    return (L * slope) @ j_pre


def _layer_norm_jacobian(ln: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """(T, d, d): the Jacobian of a LayerNorm at each position, diag(g) r (I - 11^T/d - xhat xhat^T/d)."""
    d = x.shape[-1]
    r = torch.rsqrt(x.var(-1, unbiased=False, keepdim=True) + ln.eps)  # (T, 1)
    xh = (x - x.mean(-1, keepdim=True)) * r
    P = torch.eye(d, dtype=x.dtype, device=x.device) - 1.0 / d - xh[:, :, None] * xh[:, None, :] / d
    return ln.weight[None, :, None] * r[:, :, None] * P


def _attention_jacobian(attn: MultiHeadAttention, x: torch.Tensor) -> torch.Tensor:
    """(T, d, T, d) of bidirectional self-attention (one sentence, no padding), in closed form.

    With a = softmax(q k^T / sqrt(d_h)) per head and o_i = sum_l a_il v_l, output i moves with
    input j through the weights it gives to j's value (a_ij W_V) and through the scores:
    d o_i / d x_j = a_ij W_V + [i = j] G_i W_Q / sqrt(d_h) + c_ij (W_K^T q_i)^T / sqrt(d_h), with
    c_il = a_il (v_l - o_i) and G_i = sum_l c_il k_l^T; then W_O.
    """
    T, d = x.shape
    H, dh = attn.n_heads, attn.d_head
    W = attn.in_proj.weight.view(3, H, dh, d)  # W_Q, W_K, W_V, head by head
    q, k, v = (attn.in_proj(x).view(T, 3, H, dh).permute(1, 2, 0, 3))  # each (H, T, dh)
    scale = dh ** -0.5
    a = (q @ k.transpose(-2, -1) * scale).softmax(-1)  # (H, T, T)
    o = a @ v
    c = a[..., None] * (v[:, None, :, :] - o[:, :, None, :])  # (H, i, l, dh)
    G = torch.einsum("hile,hilf->hief", c, k[:, None].expand(H, T, T, dh))  # (H, i, dh, dh)
    J = torch.einsum("hij,hed->hiejd", a, W[2])  # through the values
    J = J + scale * torch.einsum("hije,hid->hiejd", c, torch.einsum("hie,hed->hid", q, W[1]))
    idx = torch.arange(T)
    J[:, idx, :, idx, :] += scale * torch.einsum("hief,hfd->ihed", G, W[0])  # through the query
    J = J.permute(1, 0, 2, 3, 4).reshape(T, H * dh, T, d)
    return torch.einsum("oa,iajb->iojb", attn.out_proj.weight, J)


def _analytic_jacobian(module, x: torch.Tensor) -> torch.Tensor | None:
    """(T, d_out, T, d_in) in closed form for the encoder's slots (FF replacements, the teacher's
    bidirectional attention, attention blocks and encoder layers built of them), else None."""
    from .model import AttentionBlock, EncoderLayer
    T, d = x.shape
    if isinstance(module, TeacherAttention):
        return _analytic_jacobian(module.attn, x)
    if isinstance(module, MultiHeadAttention):
        return None if module.causal else _attention_jacobian(module, x)
    idx = torch.arange(T)
    if isinstance(module, AttentionBlock):  # x + attn(LN(x))
        J = _analytic_jacobian(module.attn, module.norm(x))
        if J is None:
            return None
        J = torch.einsum("iajb,jbc->iajc", J, _layer_norm_jacobian(module.norm, x))
        J[idx, :, idx, :] += torch.eye(d, dtype=x.dtype, device=x.device)
        return J
    if isinstance(module, EncoderLayer):  # position-wise FF block after the attention block
        J = _analytic_jacobian(module.self_attn_block, x)
        if J is None:
            return None
        pad = torch.zeros(1, T, dtype=torch.bool, device=x.device)
        y = module.self_attn_block(x[None], pad)[0]
        ffb = module.ff_block
        lin1, lin2 = [m for m in ffb.ff if isinstance(m, nn.Linear)]
        act = (lin1(ffb.norm(y)) > 0).to(x.dtype)  # ReLU's slope, (T, d_ff)
        J_ff = torch.einsum("oh,th,hd->tod", lin2.weight, act, lin1.weight)
        J_ff = torch.einsum("tod,tde->toe", J_ff, _layer_norm_jacobian(ffb.norm, y))
        J_ff = J_ff + torch.eye(d, dtype=x.dtype, device=x.device)
        return torch.einsum("tod,tdjb->tojb", J_ff, J)
    if not isinstance(module, (FFSelfAttention, FFSeparateHeads, FFBlock)):  # FFLayer is an FFBlock
        return None
    if T > module.max_len:
        raise ValueError(f"sentence of {T} tokens is longer than max_len={module.max_len}, "
                         f"the width this feed-forward replacement was built for")
    z = torch.cat([x.reshape(-1), x.new_zeros((module.max_len - T) * d)])
    if isinstance(module, FFSeparateHeads):
        dh = module.d_head
        J = torch.stack([_shallow_ff_jacobian(module.heads.as_ff(k), z, T * d, T * dh).view(T, dh, T, d)
                         for k in range(module.n_heads)], 1).reshape(T, module.n_heads * dh, T, d)
    else:
        J = _shallow_ff_jacobian(module.ff, z, T * d, T * module.ff.fc2.out_features // module.max_len)
        J = J.view(T, -1, T, d)
    if getattr(module, "out_proj", None) is not None:
        J = torch.einsum("oa,iajb->iojb", module.out_proj.weight, J)
    return J


def jacobian(module, x: torch.Tensor, x_pad=None, memory=None, memory_pad=None,
             minus_input: bool = False, method: str = "auto") -> torch.Tensor:
    """J[i, :, j, :] = d module(x)[i] / d x[j] for one sentence x (T, d) of real tokens.

    `module` is any slot (called as module(x, x_pad, memory, memory_pad)): an attention,
    a block, a layer or an FF replacement. minus_input: the Jacobian of module(x) - x (the
    update a residual block adds). method: "autograd", "analytic" (encoder slots only: FF
    replacements, bidirectional attention and the blocks and layers around them) or "auto"
    (analytic where it exists).
    """
    if x.dim() == 3:
        if x_pad is not None:
            x = x[:, ~x_pad[0]]
        x = x[0]
    x = x.detach()
    T = x.shape[0]
    pad = torch.zeros(1, T, dtype=torch.bool, device=x.device)
    J = None
    if method in ("auto", "analytic"):
        with torch.no_grad():
            J = _analytic_jacobian(module, x)
        if J is None and method == "analytic":
            raise TypeError(f"no analytic Jacobian for {type(module).__name__}")
    if J is None:
        def f(inp):
            return module(inp[None], pad, memory, memory_pad)[0]
        # attention through its explicit softmax path: the fused CPU kernel has no batching rule
        attns = [m for m in module.modules() if isinstance(m, MultiHeadAttention)]
        keep = [m.keep_weights for m in attns]
        try:
            for m in attns:
                m.keep_weights = True
            J = torch.autograd.functional.jacobian(f, x, vectorize=True)
        finally:
            for m, k in zip(attns, keep):
                m.keep_weights, m.last_weights = k, None
    if minus_input:
        J = J.clone()
        idx = torch.arange(T)
        J[idx, :, idx, :] -= torch.eye(x.shape[1], dtype=J.dtype, device=J.device)
    return J


def token_mixing(module, x: torch.Tensor, x_pad=None, memory=None, memory_pad=None,
                 minus_input: bool = False, method: str = "auto") -> torch.Tensor:
    """(T, T): M[i, j] = Frobenius norm of d output_i / d input_j, the effective token mixing
    of a slot at this sentence (see `jacobian`). For attention it is the role the attention
    weights play; for an FF replacement it is the only such map there is."""
    J = jacobian(module, x, x_pad, memory, memory_pad, minus_input, method)
    return J.square().sum((1, 3)).sqrt()


@torch.no_grad()
def attention_map(model: Transformer, src: torch.Tensor, name: str) -> torch.Tensor:
    """Head-averaged attention weights (T, T) of one encoder attention (e.g. "encoder.0.self")
    for one sentence src (1, S)."""
    with model.attention_maps() as maps:
        model.encode(src)
    if name not in maps:
        raise KeyError(f"no attention {name!r} in this model; have: {', '.join(maps) or 'none'}")
    return maps[name][0].mean(0)


def _ranks(a) -> np.ndarray:
    a = np.asarray(a, float).ravel()
    order = a.argsort(kind="mergesort")
    ranks = np.empty(len(a))
    ranks[order] = np.arange(1, len(a) + 1)
    _, inv, counts = np.unique(a, return_inverse=True, return_counts=True)
    return (np.bincount(inv, weights=ranks) / counts)[inv]  # ties share their mean rank


def rank_correlation(a, b) -> float:
    """Spearman's rank correlation of two arrays of the same size (ties get mean ranks)."""
    ra, rb = _ranks(a), _ranks(b)
    if len(ra) != len(rb):
        raise ValueError(f"arrays of {len(ra)} and {len(rb)} values")
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = np.sqrt((ra ** 2).sum() * (rb ** 2).sum())
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


def mixing_agreement(teacher: Transformer, students: dict, src_ids, tgt_ids, layers=None,
                     batch_size: int = 32, teacher_mixing: bool = True):
    """For each sentence, encoder layer and student: Spearman's correlation between the
    student's token mixing (`token_mixing` of its slot) and (a) the teacher's head-averaged
    attention weights of that layer, (b) the token mixing of the teacher's own module in the
    same slot (attention, attention block or whole layer).

    students: {label: model} with the label a scheme ("ALR"), or {label: (scheme, model)}; a
    model is the teacher with that scheme installed in the encoder (`experiments.cell_model`).
    Every slot gets the teacher's own input for it (recorded with `replace.record_io`); for
    ALRR and ELR, which include the residual, the mixing is that of the update module(x) - x.
    """
    import pandas as pd

    from .decode import pad_batch
    from .replace import record_io, slot_path
    students = {k: (v if isinstance(v, tuple) else (k, v)) for k, v in students.items()}
    layers = list(range(len(teacher.encoder.layers)) if layers is None else layers)
    keys = sorted({("encoder", l, scheme) for scheme, _ in students.values() for l in layers})
    rows = []
    for start in range(0, len(src_ids), batch_size):
        src = pad_batch(src_ids[start:start + batch_size])
        tgt = pad_batch(tgt_ids[start:start + batch_size])
        rec = record_io(teacher, src, tgt[:, :-1], keys)
        with torch.no_grad(), teacher.attention_maps() as maps:
            teacher.encode(src)
        for b in range(src.shape[0]):
            n = int((src[b] != PAD).sum())
            if n < 2:
                continue
            teacher_maps = {}  # one per slot path: ALR, ASLR and their floors share the attention
            pos = torch.arange(n)
            distance = -(pos[:, None] - pos[None, :]).abs()  # a purely positional map: near is more
            for l in layers:
                attn = maps[f"encoder.{l}.self"][b].mean(0)[:n, :n]
                attn_vs_distance = rank_correlation(attn, distance)
                for label, (scheme, model) in students.items():
                    path = slot_path("encoder", l, scheme)
                    x = rec[("encoder", l, scheme)]["x"][b, :n]
                    resid = scheme in ("ALRR", "ELR")
                    m_s = token_mixing(model.get_submodule(path), x, minus_input=resid)
                    row = {"sentence": start + b, "length": n, "layer": l, "student": label,
                           "scheme": scheme, "vs_attention": rank_correlation(m_s, attn),
                           "vs_distance": rank_correlation(m_s, distance),
                           "attention_vs_distance": attn_vs_distance}
                    if teacher_mixing:
                        if path not in teacher_maps:
                            teacher_maps[path] = token_mixing(teacher.get_submodule(path), x, minus_input=resid)
                        row["vs_teacher_mixing"] = rank_correlation(m_s, teacher_maps[path])
                        row["teacher_mixing_vs_attention"] = rank_correlation(teacher_maps[path], attn)
                    rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- inside: where it breaks

def _masked_mse(a, b, pad) -> float:
    from .distill import masked_mse
    return float(masked_mse(a, b, pad))


@torch.no_grad()
def error_growth(teacher: Transformer, student: Transformer, src: torch.Tensor):
    """MSE (real tokens) between each encoder layer's output in the student and in the teacher:
    fed with the teacher's input to that layer (the error the layer makes on its own), and
    fed with the student stack's own output of the layer below (the error that reached it).
    The last row is the encoder output after the final LayerNorm (the decoder's memory)."""
    import pandas as pd
    teacher.eval()
    student.eval()
    pad = src == PAD
    x = teacher.encoder.embed(src)
    y = student.encoder.embed(src)
    rows = []
    for i, (lt, ls) in enumerate(zip(teacher.encoder.layers, student.encoder.layers)):
        fed = ls(x, pad)
        x, y = lt(x, pad), ls(y, pad)
        rows.append({"layer": f"layer {i + 1}", "mse_teacher_inputs": _masked_mse(fed, x, pad),
                     "mse_own_inputs": _masked_mse(y, x, pad), "teacher_mean_square": _masked_mse(x, 0 * x, pad)})
    xt, ys = teacher.encoder.norm(x), student.encoder.norm(y)
    rows.append({"layer": "output (after LayerNorm)", "mse_teacher_inputs": float("nan"),
                 "mse_own_inputs": _masked_mse(ys, xt, pad), "teacher_mean_square": _masked_mse(xt, 0 * xt, pad)})
    return pd.DataFrame(rows).set_index("layer")


def bleu_by_length(hypotheses: dict[str, list[str]], references: list[str], src_lengths, edges):
    """sacreBLEU of each system on the sentences whose source length (tokens) falls in each
    bucket [edges[k], edges[k+1]); one row per bucket, one column per system."""
    import pandas as pd

    from .evaluate import score
    src_lengths = np.asarray(src_lengths)
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        idx = np.flatnonzero((src_lengths >= lo) & (src_lengths < hi))
        if not len(idx):
            continue
        label = f"{lo}-{hi - 1}" if np.isfinite(hi) else f"{lo}+"
        row = {"source tokens": label, "sentences": len(idx)}
        for name, hyps in hypotheses.items():
            row[name] = score([hyps[i] for i in idx], [references[i] for i in idx])["bleu"]
        rows.append(row)
    return pd.DataFrame(rows).set_index("source tokens")


@torch.no_grad()
def translate_ids(model, tokenizers, ids: list[list[int]], cut_to: int | None = None,
                  batch_size: int = 64) -> tuple[list[str], list[int]]:
    """Greedy translations of tokenised sources, and how many target tokens each has.

    cut_to: cut every source longer than this to cut_to tokens, the last one EOS, as
    `decode.translate` does for a model with FF replacements (MAX_LEN)."""
    from .decode import greedy, pad_batch
    if cut_to is not None:
        ids = [s if len(s) <= cut_to else s[:cut_to - 1] + [EOS] for s in ids]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: list[list[int]] = [[] for _ in ids]
    for k in range(0, len(order), batch_size):
        chunk = order[k:k + batch_size]
        for i, h in zip(chunk, greedy(model, pad_batch([ids[i] for i in chunk]))):
            out[i] = h
    return tokenizers.decode_tgt(out), [len(h) for h in out]


def beyond_max_len(models: dict[str, nn.Module], tokenizers, sources: list[str], references: list[str],
                   max_len: int, cut_teacher: str | None = "teacher"):
    """What each model does with sentences longer than MAX_LEN: how much of the source it reads,
    how long its translation is, and its BLEU/chrF on them. `cut_teacher` names the model that
    is also run on the source cut to MAX_LEN (what an FF student reads), to separate the loss
    of the cut from the loss of the student."""
    import pandas as pd

    from .decode import sequence_limit
    from .evaluate import score
    ids = tokenizers.encode_src(sources)
    ref_len = np.mean([len(s) - 2 for s in tokenizers.encode_tgt(references)])
    runs = [(name, m, sequence_limit(m)) for name, m in models.items()]
    if cut_teacher in models:
        runs.insert(1 + list(models).index(cut_teacher),
                    (f"{cut_teacher}, source cut to MAX_LEN", models[cut_teacher], max_len))
    rows, hyps = [], {}
    for name, m, limit in runs:
        h, n_out = translate_ids(m, tokenizers, ids, cut_to=limit)
        hyps[name] = h
        s = score(h, references)
        rows.append({"model": name, "sentences": len(ids),
                     "source tokens": float(np.mean([len(x) for x in ids])),
                     "tokens read": float(np.mean([min(len(x), limit or len(x)) for x in ids])),
                     "output tokens": float(np.mean(n_out)), "output cap": limit or "none",
                     "reference tokens": float(ref_len), "BLEU": s["bleu"], "chrF": s["chrf"]})
    return pd.DataFrame(rows).set_index("model"), hyps


# ----------------------------------------------------------------------------- command line

def _bench_args(p):
    p.add_argument("--repeats", type=int, default=None,
                   help="timed runs per measurement, medians reported (default: 3 at tiny, 5 small, 10 paper)")
    p.add_argument("--cells", default=None,
                   help="comma-separated grid cells, e.g. encoder-ALR-M,decoder-ALR-L "
                        "(default: a representative subset)")
    p.add_argument("--out", default=None, help="where to write the JSON (default: the run's distillation folder)")


def _bench_cli(cfg, args):
    from .report import to_markdown
    cells = [c.strip() for c in args.cells.split(",") if c.strip()] if args.cells else None
    result = bench(cfg, cells=cells, repeats=args.repeats, out=args.out, progress=True)
    df = tradeoff(result)
    cols = ["name", "bleu", "params_total", "flops_per_sentence"] + \
        [c for c in df.columns if c.startswith("latency_") and not c.endswith("_x")] + ["peak_mem_mb"]
    print(to_markdown(df[cols], floatfmt=".3g"))
    print()
    for line in decision_table(result)["decision"]:
        print("-", line)
    m = result["machine"]
    print(f"\nmeasured in {result['seconds']:.0f} s on {m['cpu']} ({m['threads']} threads, torch {m['torch']})")
    if args.out is None:
        from . import experiments
        print("written to", bench_path(experiments.teacher(cfg, progress=False)))
    else:
        print("written to", args.out)
