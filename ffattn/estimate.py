"""What reproducing a whole preset will cost, before running it: FLOPs over a matmul rate.

`estimate(cfg)` adds up the FLOPs of every part of `python -m ffattn reproduce` (the teacher's
training and validation, recording it, every student of the grid to its epoch cap, their
held-out evaluation, decoding the test split with every cell), counted by `cost`'s formulas on
untrained models (the meta device: no memory, no data), and divides each by the device's
matmul rate times an efficiency measured for its kind of work. `python -m ffattn bench
--preset paper --estimate` prints it. What one model costs, measured, is `cost`'s.
"""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import experiments, replace
from .cost import count_flops, decode_steps, ff_flops, flops, flops_breakdown, machine
from .model import Transformer
from .replace import (CausalFFCrossAttention, CausalFFSelfAttention, FFBlock, FFCrossAttention, FFSelfAttention,
                      FFSeparateHeads)

# The corpora's sizes per direction (x-en and en-x share one corpus): training pairs, validation
# pairs, test pairs. IWSLT2017: the Hugging Face splits (/work/shared/PAPER.md: de-en 206,112 /
# 888 / 8,079; fr-en "about 232.8k / 890 / 8.6k", so fr-en's train and test are rounded). The
# training counts are before the MAX_LEN filter, which drops the few pairs over 50 pieces: an
# upper bound. Multi30k: 28,991 of 29,000 training pairs and 1,013 of 1,014 validation pairs
# pass the filter at `tiny` (its recordings); test_2016_flickr has 1,000.
CORPUS_SIZES = {
    "iwslt2017": {"de-en": (206_112, 888, 8_079), "en-de": (206_112, 888, 8_079),
                  "fr-en": (232_800, 890, 8_600), "en-fr": (232_800, 890, 8_600)},
    "multi30k": {p: (28_991, 1_013, 1_000) for p in ("de-en", "en-de", "fr-en", "en-fr")},
}
# Mean tokens per sentence, one figure for both sides: source pieces + EOS, and target input
# BOS + pieces (= pieces + EOS, the greedy steps of a translation).
MEAN_TOKENS = {
    # measured at `tiny` (its recording of all 28,991 pairs): source 16.24, target 15.36
    "multi30k": (15.8, "Multi30k at tiny, measured on its recording: de source 16.2 (pieces + EOS), "
                       "en target input 15.4 (BOS + pieces); their mean"),
    # not measured: no IWSLT training text here. The mirror's IWSLT tst2016-2017 talks have 15-18
    # whitespace words a sentence (de 14.9, en 16.8, fr 16.9); at tiny, SentencePiece cut a
    # Multi30k word into 1.21 (en) to 1.37 (de) pieces; so about 17 x 1.25 + 1 = 22.
    "iwslt2017": (22.0, "assumed, not measured: about 17 whitespace words a sentence (IWSLT tst2016-2017 in "
                        "the offline mirror: de 14.9, en 16.8, fr 16.9) x 1.25 SentencePiece pieces a word "
                        "(Multi30k at tiny: en 1.21, de 1.37) + 1 (EOS or BOS) = 22; the training talks may "
                        "have longer sentences, the MAX_LEN filter drops the longest"),
}
# Achieved GFLOP/s over the matmul rate, for when the rate is given rather than measured here
# (measured ones replace them: `measure_efficiency`). All four come from this project's 2-core
# CPUs: on a GPU, where a d_model-128 teacher's small matrix products are bound by kernel
# launches, teacher and decode are likely lower. Measure them there: `estimate` without a rate.
DEFAULT_EFFICIENCY = {
    "teacher": 0.25,  # teacher training and recording: tiny's 5 epochs, 7.7 TFLOP in 190 s at ~150 GFLOP/s
    "decode": 0.2,    # greedy decoding, one token a step: measured at tiny on this project's CPU, 0.22
    "dense": 0.5,     # non-causal students: benchmarks/README.md, 54-73% at L, less for the small ones
    "causal": 0.15,   # causal students: benchmarks/README.md, 13-21%, memory-bound (one hidden vector per position)
}
EFFICIENCY_WHAT = {
    "teacher": "teacher training and recording",
    "decode": "greedy decoding (teacher validation BLEU, the grid's evaluation; its non-causal FFs count as dense)",
    "dense": "non-causal students: encoder ALR, ASLR, ALRR, ELR, cross-attention paper form",
    "causal": "causal students: decoder self-attention, cross-attention causal form",
}


def distill_step_flops(module: nn.Module, B: int, T: int, backward: bool = True, S: int | None = None) -> int:
    """FLOPs of one distillation step of a student (`distill_forward` on B sentences whose
    longest has T tokens, and with `backward` its gradients), as `count_flops` counts them.

    The non-causal students read every sentence padded to MAX_LEN: with `replace.SKIP_PADDING`
    only the batch's T positions (and the cross form's S of memory, default T) meet fc1 and
    fc2, plus products of a few vectors with the rest of fc1 (`_spans_flops`; ASLR: per head);
    without it, B x one pass of the FF whatever T (`ff_flops`; ASLR: one FF per head). The causal ones work per position up to
    the batch's longest sentence: B x (4 T d h, the blocks of fc1 and fc2, + 2 S d h for the
    memory of the causal cross form, its real tokens only) and, once a step, 4 h D for fc1's
    weight against the input LayerNorm's gain and bias. The backward pass is twice the forward's
    matrix products (the gradients of both operands: even the input's, since the input LayerNorm
    has weights), except the weight gradients of those two matrix-vector products (outer
    products, not counted), plus, for the causal ones, 6 B T h: three reductions over the hidden
    units that `replace._PrefixFC1`'s backward runs as matrix products (a fourth, row by row, is
    a dot product, which the counter leaves out). On the CPU the causal
    ones pack the batch (`replace.PACK_CAUSAL`): there B T is the batch's real tokens, so this
    count, for B sentences of T tokens each, is an upper bound for a batch with padding.
    """
    k = 3 if backward else 1
    if isinstance(module, (CausalFFSelfAttention, CausalFFCrossAttention)):
        ff, d = module.ff, module.d_model
        h, D = ff.fc1.out_features, ff.fc1.in_features
        memory = 2 * (S if S is not None else T) * d * h * isinstance(module, CausalFFCrossAttention)
        reductions = 6 * B * T * h if backward else 0
        return k * B * (4 * T * d * h + memory) + (2 if backward else 1) * 4 * h * D + reductions
    if isinstance(module, FFSeparateHeads):
        f = module.heads
        if not replace.SKIP_PADDING:
            return k * B * 2 * f.n * (f.in_features * f.hidden + f.hidden * f.out_features)
        return f.n * _spans_flops(k, B, f.hidden, f.in_features, T * module.d_model, T * module.d_head)
    if isinstance(module, (FFSelfAttention, FFBlock, FFCrossAttention)):
        if not replace.SKIP_PADDING:
            return k * B * ff_flops(module.ff)
        n = T * module.d_model
        seen = n + (S if S is not None else T) * module.d_model * isinstance(module, FFCrossAttention)
        return _spans_flops(k, B, module.ff.fc1.out_features, module.ff.fc1.in_features, seen, n)
    raise TypeError(f"no distillation FLOP formula for {type(module).__name__}")


def _spans_flops(k: int, B: int, h: int, D: int, seen: int, n_out: int) -> int:
    """One FF's step with the padding skipped (`replace._ff_on_spans`): fc1 on the `seen`
    columns and fc2's first `n_out` rows; s's two products (B h each); fc1's rest against the
    LayerNorm's gain and bias (2 x 2 h (D - seen)), and, backward, twice that."""
    return k * (2 * B * h * (seen + n_out) + 2 * B * h + 4 * h * (D - seen))


def count_distill_step(module: nn.Module, B: int, T: int, S: int | None = None) -> int:
    """`count_flops` of one distillation step of `module` on random inputs: B sentences of T
    tokens (and, for cross-attention, a memory of S); the check of `distill_step_flops`."""
    from .distill import masked_mse
    p = next(module.parameters())
    x = torch.randn(B, T, module.d_model, device=p.device, dtype=p.dtype)
    pad = torch.zeros(B, T, dtype=torch.bool, device=p.device)
    mem = mpad = None
    if isinstance(module, (FFCrossAttention, CausalFFCrossAttention)):
        S = S or T
        mem = torch.randn(B, S, module.d_model, device=p.device, dtype=p.dtype)
        mpad = torch.zeros(B, S, dtype=torch.bool, device=p.device)

    def step():
        with torch.enable_grad():  # count_flops runs under no_grad
            pred = module.distill_forward(x, pad, mem, mpad)
            masked_mse(pred, torch.zeros_like(pred), pad).backward()
    flops_counted = count_flops(step)
    module.zero_grad(set_to_none=True)
    return flops_counted


def _is_causal(module: nn.Module) -> bool:
    return isinstance(module, (CausalFFSelfAttention, CausalFFCrossAttention))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(device=None, sizes=None, repeats: int = 5, dtype=torch.float32) -> float:
    """Best GFLOP/s of a square matmul C = A @ B on `device` (default: where training runs), as
    benchmarks/bench_distill.py measures it: fp32 by default, the dtype of the teacher and, unless
    `distill_precision` says bf16, of the students."""
    from .train import default_device
    device = torch.device(device) if device is not None else default_device()
    gpu = device.type == "cuda"
    sizes = sizes or ((4096, 8192) if gpu else (1024, 2048))
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        a @ b
        _sync(device)
        k = max(1, int((2e12 if gpu else 1e10) // (2 * n ** 3)))
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(k):
                a @ b
            _sync(device)
            best = max(best, 2 * n ** 3 * k / (time.perf_counter() - t0) / 1e9)
        del a, b
    return best


matmul_gflops_fn = matmul_gflops  # `estimate`'s parameter of the same name hides the function


def _best_seconds(fn, device, warmup: int = 1, repeats: int = 2) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def measure_efficiency(cfg, rate: float, tokens: float, device=None, size: str = "L") -> dict:
    """Achieved GFLOP/s over the matmul rate `rate` of the four kinds of work (see
    DEFAULT_EFFICIENCY), each timed here on untrained models at the preset's sizes and random
    inputs: a teacher training step on a token batch of `tokens`-long sentences; encoding and
    greedy decoding 64 of them; a training step (with Adam) of an encoder ALR student and of a
    decoder (causal) student at `size`, on the preset's distillation batch (at most 256
    sentences on a CPU), the causal one at MAX_LEN tokens, in `distill_precision` (bf16 on a CPU
    only where it has native bfloat16: elsewhere that would take minutes, and a run would warn).
    Returns {kind: ratio, "details": ...}."""
    from .distill import Student, _adam, masked_mse, new_student
    from .train import autocast, batch_loss, cpu_has_bf16, default_device
    device = torch.device(device) if device is not None else default_device()
    L = max(1, round(tokens))
    g = torch.Generator().manual_seed(0)
    V = cfg.vocab_size
    torch.manual_seed(cfg.seed)
    model = Transformer.from_config(cfg, V, V).to(device)
    details = {}

    B = max(1, cfg.batch_tokens // (L + 2))  # the token batches: B x max(src, tgt + 2) <= batch_tokens
    src = torch.randint(4, V, (B, L), generator=g).to(device)
    tgt = torch.randint(4, V, (B, L + 1), generator=g).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-9, betas=(0.9, 0.98), eps=1e-9)

    def teacher_step():
        model.train()
        loss, n = batch_loss(model, src, tgt, cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        (loss / n).backward()
        opt.step()
    sec = _best_seconds(teacher_step, device)
    f = 3 * flops(model, L, L, "forward") * B
    details["teacher"] = {"batch": B, "tokens": L, "seconds": sec, "gflop": f / 1e9}

    model.eval()
    src64 = torch.randint(4, V, (64, L), generator=g).to(device)
    with torch.no_grad():
        sec = _best_seconds(lambda: decode_steps(model, src64, L), device)
    details["decode"] = {"batch": 64, "tokens": L, "seconds": sec, "gflop": flops(model, L, L, "greedy") * 64 / 1e9}

    Bs = cfg.distill_batch if device.type == "cuda" else min(cfg.distill_batch, 256)
    for kind, where, T in (("dense", "encoder", L), ("causal", "decoder", cfg.max_len)):
        s = Student(where, 0, "ALR", size)
        student = new_student(model, s, cfg.max_len, cfg.seed).train()
        sopt = _adam([p for p in student.parameters() if p.requires_grad], 1e-9)
        x = torch.randn(Bs, T, cfg.d_model, generator=g).to(device)
        pad = torch.zeros(Bs, T, dtype=torch.bool, device=device)
        target = torch.randn(Bs, T, cfg.d_model, generator=g).to(device)

        def student_step():
            with autocast(cfg.distill_precision, device, cpu_bf16=cpu_has_bf16()):
                pred = student.distill_forward(x, pad)
                loss = masked_mse(pred.float(), target, pad)
            sopt.zero_grad(set_to_none=True)
            loss.backward()
            sopt.step()
        with torch.enable_grad():
            sec = _best_seconds(student_step, device)
        details[kind] = {"student": s.name, "batch": Bs, "tokens": T, "seconds": sec,
                         "gflop": distill_step_flops(student, Bs, T) / 1e9}
    out = {k: d["gflop"] / d["seconds"] / rate for k, d in details.items()}
    out["details"] = details
    return out


def _flops_at(model, tokens: float, mode: str) -> float:
    """`flops(model, S, T, mode)` at S = T = `tokens`, linear between the integers around it."""
    return sum(_breakdown_at(model, tokens, mode).values())


def _breakdown_at(model, tokens: float, mode: str) -> dict:
    """`flops_breakdown` at S = T = `tokens`, linear between the integers around it."""
    lo = max(1, int(np.floor(tokens)))
    w = max(0.0, tokens - lo)
    a = flops_breakdown(model, lo, lo, mode)
    if not w:
        return {k: float(v) for k, v in a.items()}
    b = flops_breakdown(model, lo + 1, lo + 1, mode)
    return {k: (1 - w) * a[k] + w * b[k] for k in a}


def _slot_module(model, key: str):
    """The module behind a `flops_breakdown` key (None for the FF sublayers and the generator)."""
    parts = key.split(".")
    if len(parts) != 3:
        return None
    side, i, what = parts
    layer = getattr(model, side).layers[int(i)]
    if what == "layer":
        return layer
    if what == "self_attn":
        block = layer.self_attn_block
        return block if isinstance(block, FFBlock) else block.attn
    if what == "cross_attn":
        return layer.cross_attn_block.attn
    return None


DENSE_SLOTS = (FFSelfAttention, FFSeparateHeads, FFBlock, FFCrossAttention)  # FFLayer is an FFBlock


def _greedy_split(model, tokens: float) -> dict:
    """Greedy FLOPs of one sentence, split into the non-causal FF replacements ("dense": one
    pass of a wide FF per sentence or per step, large matrix products) and the rest ("decode")."""
    bd = _breakdown_at(model, tokens, "greedy")
    dense = sum(v for k, v in bd.items() if isinstance(_slot_module(model, k), DENSE_SLOTS))
    return {"greedy_flops": sum(bd.values()), "dense": dense, "decode": sum(bd.values()) - dense}


def recording_bytes(cfg, sentences: int, tokens: float) -> float:
    """Bytes of the teacher's recordings (`experiments.recordings`) of `sentences` sentences of
    `tokens` tokens on both sides: float16 vectors of d_model, real tokens only; an input and a
    target per source (`experiments.all_sources`) and the encoder's output once. At `tiny` this
    formula gives exactly the recording's 1,239,208,576 bytes with the measured lengths."""
    from .experiments import all_sources
    src = sum(2 for s in all_sources(cfg) if s[0] == "encoder") + 1  # + the memory
    tgt = sum(2 for s in all_sources(cfg) if s[0] != "encoder")
    return float((src + tgt) * tokens * sentences * cfg.d_model * 2)


def _steps(n: int, batch: int) -> dict[int, int]:
    """{batch size: how many batches} of one pass over n sentences in batches of `batch`."""
    return {batch: n // batch, **({n % batch: 1} if n % batch else {})}


def _greedy_split_with(teacher, modules: dict, tokens: float) -> dict:
    """`_greedy_split` of the teacher with `modules` ({(where, layer, scheme): module}) in their
    slots: put in place for the count and taken out again (`replace.install` without its deep
    copy of the teacher, which costs more than the count)."""
    from .replace import slot_path
    saved = []
    try:
        for (where, layer, scheme), module in modules.items():
            parent, name = slot_path(where, layer, scheme).rsplit(".", 1)
            owner = teacher.get_submodule(parent)
            saved.append((owner, name, getattr(owner, name)))
            setattr(owner, name, module)
        return _greedy_split(teacher, tokens)
    finally:
        for owner, name, old in reversed(saved):
            setattr(owner, name, old)


def estimate(cfg, matmul_gflops: float | None = None, sentences: int | None = None,
             tokens_per_sentence: float | None = None, efficiency: float | dict | None = None,
             heldout_batch: int = 256) -> dict:
    """What `python -m ffattn reproduce` costs at `cfg`: FLOPs and hours per part, for the
    direction `cfg.pair` and for all four, on one device. Builds untrained models only (on the
    meta device, so even the attentionless L cells cost no memory): no teacher, no data.

    Parts, each with its FLOPs (`flops`, `distill_step_flops`: 2 x multiply-adds of matrix
    products) and the kind of work that sets its efficiency:
      teacher          forward + backward (3 x the forward at the mean sentence length) x
                       training sentences x epochs
      teacher_valid    per epoch: the validation loss (a forward over the validation split) and
                       greedy BLEU on `valid_bleu_sentences`
      recording        one forward over the training sentences recorded and the validation split
      students         every distinct trained student of `experiments.grid`, one training step
                       per batch of `distill_batch` over the distilled sentences, x the epoch
                       cap `distill_epochs`: an upper bound, the stopping rule may end earlier
      students_heldout per student and epoch, a forward over the validation split (batches of
                       `heldout_batch`)
      evaluation       greedy decoding of the test split by the teacher and every cell of the
                       grid, mean-length outputs (its non-causal FFs at the dense efficiency)
    Seconds = FLOPs / (matmul rate x efficiency). matmul_gflops: the device's rate (None:
    measured here by a square fp32 matmul, and then the efficiencies too, `measure_efficiency`);
    efficiency: one factor for every part, or {kind: factor}, else DEFAULT_EFFICIENCY (given
    rate) or measured (measured rate). sentences, tokens_per_sentence: override the corpus's
    training sentences (every direction alike) and mean sentence length (`MEAN_TOKENS`).
    Every assumption is in the result's "assumptions".
    """
    from .config import PAIRS
    from .distill import new_student

    started = time.time()
    sizes = CORPUS_SIZES[cfg.corpus]
    tokens, tokens_why = (tokens_per_sentence, "given") if tokens_per_sentence else MEAN_TOKENS[cfg.corpus]
    measured = matmul_gflops is None
    rate = matmul_gflops_fn() if measured else float(matmul_gflops)
    if rate <= 0:
        raise ValueError(f"matmul_gflops={matmul_gflops} must be positive")
    if isinstance(efficiency, (int, float)):
        eff, eff_why = {k: float(efficiency) for k in DEFAULT_EFFICIENCY}, "given: one factor for every part"
        details = None
    elif isinstance(efficiency, dict):
        eff, eff_why, details = {**DEFAULT_EFFICIENCY, **efficiency}, "given (the rest: DEFAULT_EFFICIENCY)", None
    elif measured:
        m = measure_efficiency(cfg, rate, tokens)
        details = m.pop("details")
        after = matmul_gflops_fn()  # a busy machine: the better of before and after, as bench_distill
        if after > rate:
            m = {k: v * rate / after for k, v in m.items()}
            rate = after
        eff, eff_why = m, "measured here against the measured matmul rate (measure_efficiency)"
    else:
        eff, eff_why, details = dict(DEFAULT_EFFICIENCY), "documented constants (DEFAULT_EFFICIENCY)", None
    if any(v <= 0 for v in eff.values()):
        raise ValueError(f"efficiency must be positive: {eff}")

    # untrained models on the meta device: shapes only
    with torch.device("meta"):
        teacher = Transformer.from_config(cfg, cfg.vocab_size, cfg.vocab_size)
    fwd = _flops_at(teacher, tokens, "forward")
    greedy_t = _flops_at(teacher, tokens, "greedy")
    cells = experiments.grid(cfg)
    wanted = sorted({s for c in cells if c.trained for s in c.students}, key=lambda s: s.name)
    modules = {s: new_student(teacher, s, cfg.max_len, cfg.seed) for s in wanted}
    # a student's step works up to the batch's longest sentence (the causal ones, and the others
    # skipping the padding): MAX_LEN, an upper bound (at batch 2000 almost always close to it;
    # at 128 on Multi30k the longest is 33 to 37 tokens on average: an estimate's margin)
    T_batch = cfg.max_len
    students = []
    for s, mod in modules.items():
        kind = "causal" if _is_causal(mod) else "dense"
        students.append({"student": s.name, "kind": kind, "params": sum(p.numel() for p in mod.parameters()
                                                                      if p.requires_grad),
                         "step": distill_step_flops(mod, cfg.distill_batch, T_batch),
                         "module": mod})
    cell_rows = [{"cell": "teacher", **_greedy_split(teacher, tokens)}]
    for c in cells:
        if c.trained:
            mods = {s.key: modules[s] for s in c.students}
        else:
            mods = {s.key: new_student(teacher, s, cfg.max_len, cfg.seed) for s in c.students}
        cell_rows.append({"cell": c.name, **_greedy_split_with(teacher, mods, tokens)})

    live = cfg.distill_source == "on_the_fly"
    groups = len(experiments.all_sources(cfg))  # sources the grid's students learn from

    def direction(n_train: int, n_valid: int, n_test: int) -> dict:
        n_train = min(n_train, cfg.train_limit) if cfg.train_limit else n_train
        n_valid = min(n_valid, cfg.valid_limit) if cfg.valid_limit else n_valid
        n_distill = min(cfg.distill_sentences or n_train, n_train)
        parts = {}
        parts["teacher"] = {"flops": 3 * fwd * n_train * cfg.epochs, "kind": "teacher"}
        n_bleu = min(cfg.valid_bleu_sentences, n_valid)
        parts["teacher_valid"] = {"flops": cfg.epochs * (fwd * n_valid + greedy_t * n_bleu), "kind": "decode"}
        if live:  # each group of students sharing a source runs the teacher on each of its batches
            parts["recording"] = {"flops": fwd * groups * (n_distill * cfg.distill_epochs + n_valid), "kind": "teacher"}
        else:
            parts["recording"] = {"flops": fwd * (n_distill + n_valid), "kind": "teacher"}
        train_b, held_b = _steps(n_distill, cfg.distill_batch), _steps(n_valid, heldout_batch)
        by_kind = {"dense": [0.0, 0.0], "causal": [0.0, 0.0]}  # [training, held-out] FLOPs
        for st in students:
            mod = st["module"]
            epoch = sum(k * distill_step_flops(mod, b, T_batch) for b, k in train_b.items())
            held = sum(k * distill_step_flops(mod, b, T_batch, backward=False) for b, k in held_b.items())
            by_kind[st["kind"]][0] += epoch * cfg.distill_epochs
            by_kind[st["kind"]][1] += held * cfg.distill_epochs
        parts["students"] = {"flops": sum(v[0] for v in by_kind.values()), "kind": "students",
                             "by_kind": {k: v[0] for k, v in by_kind.items()}}
        parts["students_heldout"] = {"flops": sum(v[1] for v in by_kind.values()), "kind": "students",
                                     "by_kind": {k: v[1] for k, v in by_kind.items()}}
        parts["evaluation"] = {"flops": n_test * sum(r["greedy_flops"] for r in cell_rows), "kind": "mixed",
                               "by_kind": {k: n_test * sum(r[k] for r in cell_rows) for k in ("decode", "dense")}}
        # the calls each part makes (optimiser steps, forward batches, greedy steps of a batch): the
        # FLOPs miss a fixed cost per call (kernel launches on a GPU); these let a reader add one
        per_batch = max(1, cfg.batch_tokens // (round(tokens) + 2))  # B x max(src, tgt + 2) <= batch_tokens
        steps_of = {"teacher": cfg.epochs * -(-n_train // per_batch),
                    "teacher_valid": cfg.epochs * (-(-n_valid // per_batch) + -(-n_bleu // 100) * round(tokens)),
                    "recording": (groups * (cfg.distill_epochs * sum(train_b.values()) + sum(held_b.values()))
                                  if live else -(-(n_distill + n_valid) // 128)),
                    "students": len(students) * cfg.distill_epochs * sum(train_b.values()),
                    "students_heldout": len(students) * cfg.distill_epochs * sum(held_b.values()),
                    "evaluation": len(cell_rows) * -(-n_test // 64) * round(tokens)}
        for k, p in parts.items():
            p["steps"] = steps_of[k]
            if "by_kind" in p:
                p["seconds"] = sum(f / (rate * 1e9 * eff[k]) for k, f in p["by_kind"].items())
            else:
                p["seconds"] = p["flops"] / (rate * 1e9 * eff[p["kind"]])
            p["hours"] = p["seconds"] / 3600
        total = {"flops": sum(p["flops"] for p in parts.values()),
                 "seconds": sum(p["seconds"] for p in parts.values())}
        total["hours"] = total["seconds"] / 3600
        return {"sentences": n_train, "distill_sentences": n_distill, "valid_sentences": n_valid,
                "recording_bytes": 0 if live else recording_bytes(cfg, n_distill + n_valid, tokens),
                "test_sentences": n_test, "student_epochs": len(students) * cfg.distill_epochs,
                "parts": parts, "total": total}

    def sizes_of(pair):
        n_train, n_valid, n_test = sizes[pair]
        return (sentences or n_train), n_valid, n_test

    directions = {pair: direction(*sizes_of(pair)) for pair in PAIRS}
    this = directions[cfg.pair]
    all_parts = {k: {"flops": sum(d["parts"][k]["flops"] for d in directions.values()),
                     "seconds": sum(d["parts"][k]["seconds"] for d in directions.values())}
                 for k in this["parts"]}
    for p in all_parts.values():
        p["hours"] = p["seconds"] / 3600
    all_total = {"flops": sum(d["total"]["flops"] for d in directions.values()),
                 "seconds": sum(d["total"]["seconds"] for d in directions.values())}
    all_total["hours"] = all_total["seconds"] / 3600
    for st in students:
        st.pop("module")
    assumptions = {
        "device": "one device; every part runs one after another, as `reproduce` runs them",
        "matmul_gflops": rate,
        "matmul": ("measured here: best square fp32 matmul (1024, 2048 on a CPU; 4096, 8192 on a GPU), "
                   "before and after the efficiencies" if measured else "given"),
        "efficiency": eff,
        "efficiency_source": eff_why,
        "efficiency_kinds": EFFICIENCY_WHAT,
        "tokens_per_sentence": tokens,
        "tokens_source": tokens_why,
        "sentences": {p: d["sentences"] for p, d in directions.items()},
        "sentences_source": ("given, every direction alike" if sentences else
                             f"{cfg.corpus} training pairs per direction (CORPUS_SIZES), before the MAX_LEN filter"),
        "teacher": f"forward + backward = 3 x the forward FLOPs at S = T = {tokens:g} (cost.flops, 'forward'), "
                   f"x sentences x {cfg.epochs} epochs; padding in the token batches not counted",
        "students": f"{len(students)} distinct trained students (the attentionless cells reuse the L students) x "
                    f"{cfg.distill_epochs} epochs (the cap: the stopping rule may stop earlier, so an upper bound), "
                    f"batches of {cfg.distill_batch}; the non-causal FFs read every sentence padded to MAX_LEN "
                    f"{cfg.max_len}; the causal ones work up to the batch's longest sentence, taken as MAX_LEN "
                    f"(an upper bound); gathering batches from the recording not counted",
        "evaluation": f"greedy decoding of the test split by the teacher and {len(cells)} cells, "
                      f"{tokens:g} steps a sentence (the mean length): batches decode until their longest output "
                      "ends, so this is a lower bound, most for poor students that run to MAX_LEN",
        "recording": (f"on the fly (distill_source): nothing on disk; each of the {groups} groups of students that "
                      f"share a source runs the teacher on each of its batches, every epoch to the cap, and once on "
                      f"the validation split (the recording would be "
                      f"{recording_bytes(cfg, this['distill_sentences'] + this['valid_sentences'], tokens) / 1e9:,.1f}"
                      " GB)") if live else
                     (f"{this['recording_bytes'] / 1e9:,.1f} GB of float16 recordings on disk for {cfg.pair} "
                      f"({this['distill_sentences']:,} training + {this['valid_sentences']:,} validation sentences "
                      f"of {tokens:g} tokens; recording_bytes), read back every epoch by every group of students"),
        "calls": "the table's calls: optimiser steps (teacher: token batches of the mean length; students: one per "
                 "student and batch), forward batches (recording: 128 sentences; held-out: "
                 f"{heldout_batch}), greedy steps of a batch (64 sentences, the mean length); not in the hours: "
                 "on a GPU each costs a few kernel launches whatever its FLOPs, so calls x a few ms is a floor",
        "not_counted": "embeddings, LayerNorm, softmax, activations, Adam's updates, data loading, tokenizer "
                       "training, disk writes of the recordings, per-step launch overheads beyond what the "
                       "efficiency measured",
    }
    return {"preset": cfg.preset, "corpus": cfg.corpus, "pair": cfg.pair, "distill_source": cfg.distill_source, "matmul_gflops": rate,
            "matmul_measured": measured, "efficiency": eff, "efficiency_measured": details is not None,
            "efficiency_details": details, "assumptions": assumptions,
            "teacher_forward_flops": fwd, "teacher_greedy_flops": greedy_t,
            "students": students, "cells": cell_rows,
            "parts": this["parts"], "per_direction": this["total"],
            "directions": directions, "all_directions": {"parts": all_parts, "total": all_total},
            "machine": machine(), "seconds": round(time.time() - started, 1)}



ESTIMATE_PARTS = {"teacher": "teacher training", "teacher_valid": "teacher validation (every epoch)",
                  "recording": "the teacher's activations (recorded once, or on the fly)", "students": "training the students (to the epoch cap)",
                  "students_heldout": "students' held-out MSE (every epoch)",
                  "evaluation": "evaluating the grid (greedy, test split)"}


# How each part divides among the ranks of `torchrun` (experiments.run_grid, train.train_teacher):
# the teacher trains data-parallel, the students and the cells are shared out; one rank records
# the teacher (the others wait for its lock), and every rank validates the teacher alike.
PARALLEL_PARTS = {"teacher": True, "teacher_valid": False, "recording": False, "students": True,
                  "students_heldout": True, "evaluation": True}


def on_devices(e: dict, n: int) -> dict:
    """Hours on `n` devices under torchrun, per direction and for all four: the parallel parts
    divided by n (perfect scaling, no communication: a lower bound), the others as they are."""
    parallel = {**PARALLEL_PARTS, "recording": e.get("distill_source") == "on_the_fly"}  # on the fly: per group

    def hours(parts):
        return sum(p["hours"] / (n if parallel.get(k, False) else 1) for k, p in parts.items())
    return {"devices": n, "per_direction_hours": hours(e["parts"]),
            "all_directions_hours": hours(e["all_directions"]["parts"])}


def estimate_markdown(e: dict) -> str:
    """An `estimate` as a Markdown table (parts x FLOPs x hours, this direction and all four)
    followed by its assumptions."""
    from .report import to_markdown
    a, every, pair = e["assumptions"], e["all_directions"], e["pair"]
    rows = [{"part": ESTIMATE_PARTS.get(k, k), f"FLOPs ({pair})": f"{p['flops']:.3g}",
             f"hours ({pair})": p["hours"], "hours (all four directions)": every["parts"][k]["hours"],
             f"calls ({pair})": f"{p['steps']:,}"} for k, p in e["parts"].items()]
    rows.append({"part": "**total**", f"FLOPs ({pair})": f"{e['per_direction']['flops']:.3g}",
                 f"hours ({pair})": e["per_direction"]["hours"],
                 "hours (all four directions)": every["total"]["hours"],
                 f"calls ({pair})": f"{sum(p['steps'] for p in e['parts'].values()):,}"})
    eff = ", ".join(f"{k} {v:.2f}" for k, v in a["efficiency"].items())
    lines = [f"Estimated wall time of `python -m ffattn reproduce --preset {e['preset']}` ({e['corpus']}) on one "
             f"device: {len(e['students'])} students and {len(e['cells']) - 1} cells a direction.", "",
             to_markdown(pd.DataFrame(rows), floatfmt=".3g"), "", "Assumptions:",
             f"- matmul rate: {a['matmul_gflops']:,.0f} GFLOP/s ({a['matmul']})",
             f"- efficiency, achieved over the matmul rate: {eff} ({a['efficiency_source']})"]
    lines += [f"  - {k}: {what}" for k, what in a["efficiency_kinds"].items()]
    lines += [f"- tokens per sentence: {a['tokens_per_sentence']:g} ({a['tokens_source']})",
              "- training sentences: " + ", ".join(f"{p} {n:,}" for p, n in a["sentences"].items())
              + f" ({a['sentences_source']})"]
    lines += [f"- {k}: {a[k]}" for k in ("teacher", "students", "evaluation", "recording", "device",
                                         "not_counted", "calls")]
    lines += ["", "On several devices (torchrun; the parallel parts divided by the devices, no communication "
                  "counted: a lower bound):"]
    for n in (1, 8):
        d = on_devices(e, n)
        lines.append(f"- {n} device{'s' if n > 1 else ''}: {d['per_direction_hours']:,.1f} h for {pair}, "
                     f"{d['all_directions_hours']:,.1f} h for all four directions")
    m = e["machine"]
    lines += ["", f"computed in {e['seconds']:.0f} s on {m['cpu']} ({m['threads']} threads, torch {m['torch']})"]
    return "\n".join(lines)
