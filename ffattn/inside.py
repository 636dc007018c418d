"""What a replacement does inside, and where it breaks (chapter 10).

Token mixing: how much output position i moves with input position j, the norm of the
Jacobian block d out_i / d x_j (`jacobian`, `token_mixing`; closed form for the encoder's
slots, autograd otherwise), compared with the teacher's attention maps (`attention_map`) by
rank correlation (`mixing_agreement`). Where it breaks: how errors grow through a replaced
stack (`error_growth`), BLEU by sentence length (`bleu_by_length`), and what happens to
sentences longer than MAX_LEN (`beyond_max_len`). What a replacement costs is `cost`'s.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

from .decode import greedy, pad_batch, sequence_limit
from .distill import masked_mse
from .evaluate import score
from .model import EOS, PAD, AttentionBlock, EncoderLayer, MultiHeadAttention, Transformer
from .replace import FFBlock, FFSelfAttention, FFSeparateHeads, ShallowFF, TeacherAttention, record_io, slot_path

# ----------------------------------------------------------------------------- token mixing

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


# ----------------------------------------------------------------------------- where it breaks

def _masked_mse(a, b, pad) -> float:
    return float(masked_mse(a, b, pad))


@torch.no_grad()
def error_growth(teacher: Transformer, student: Transformer, src: torch.Tensor):
    """MSE (real tokens) between each encoder layer's output in the student and in the teacher:
    fed with the teacher's input to that layer (the error the layer makes on its own), and
    fed with the student stack's own output of the layer below (the error that reached it).
    The last row is the encoder output after the final LayerNorm (the decoder's memory)."""
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
