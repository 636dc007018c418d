"""Shallow feed-forward networks in place of attention (Bozic et al., arXiv 2311.10642).

Every replacement sees the whole sentence at once: the token vectors are zero-padded to
`max_len`, flattened into one vector of W = max_len * d_model numbers and mapped by a
`ShallowFF`. Padded slots are zeroed on the way in and on the way out, so padding never
reaches a real token. That is also why the network fixes the longest sentence it can read.

Where each scheme sits in ffattn.model.Transformer (`slot_path`):

    where         scheme  slot                                      maps
    encoder       ALR     encoder.layers.i.self_attn_block.attn     LN(x) -> heads, teacher W_O
    encoder       ASLR    encoder.layers.i.self_attn_block.attn     one FF per head, teacher W_O
    encoder       ALRR    encoder.layers.i.self_attn_block          residual -> residual
    encoder       ELR     encoder.layers.i                          layer in -> layer out
    decoder       ALR     decoder.layers.i.self_attn_block.attn     causal: i sees <= i
    cross         ALR     decoder.layers.i.cross_attn_block.attn    the paper's form, not causal
    cross_causal  ALR     decoder.layers.i.cross_attn_block.attn    decoder side causal

Distillation (`distill_io`, `record_io`): each student is trained alone on the frozen
teacher's own activations; its `distill_forward(x, x_pad, memory, memory_pad)` gives the
tensor that is compared with the recorded target, so training needs no teacher.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ffattn.config import SCHEMES, SIZES, check_choice
from ffattn.model import MultiHeadAttention, Transformer

WHERES = ("encoder", "decoder", "cross", "cross_causal")

# Hidden width as a fraction (num, den) of W = max_len * d_model (the authors' code).
_HIDDEN = {"XS": (1, 256), "S": (1, 128), "M": (1, 8), "L": (1, 2), "XL": (2, 1)}
# ASLR has one FF per head, so each one is narrower. The authors' code has XS..L only;
# XL = W/2 is our extrapolation (the next step of the doubling).
_HIDDEN_ASLR = {"XS": (1, 32), "S": (1, 16), "M": (1, 8), "L": (1, 4), "XL": (1, 2)}


def _check_slot(where: str, scheme: str) -> None:
    """Only encoder self-attention has four schemes; the paper uses ALR everywhere else."""
    check_choice("where", where, WHERES)
    check_choice("scheme", scheme, SCHEMES)
    if where != "encoder" and scheme != "ALR":
        raise ValueError(f"scheme {scheme!r} is not available for where={where!r}; "
                         f"choose one of: ALR (ALRR, ASLR, ELR replace encoder layers only)")


def _check_len(n: int, max_len: int, what: str = "sentence") -> None:
    if n > max_len:
        raise ValueError(f"{what} of {n} tokens is longer than max_len={max_len}, "
                         f"the width this feed-forward replacement was built for")


# ----------------------------------------------------------------------------- the network

class ShallowFF(nn.Module):
    """The paper's FF: LayerNorm -> Linear -> LeakyReLU(0.01) -> LayerNorm -> Linear."""

    def __init__(self, d_in: int, hidden: int, d_out: int):
        super().__init__()
        self.ln_in = nn.LayerNorm(d_in)
        self.fc1 = nn.Linear(d_in, hidden)
        self.act = nn.LeakyReLU(0.01)
        self.ln_hidden = nn.LayerNorm(hidden)
        self.fc2 = nn.Linear(hidden, d_out)

    def forward(self, x):
        return self.fc2(self.ln_hidden(self.act(self.fc1(self.ln_in(x)))))


def hidden_width(scheme: str, size: str, max_len: int, d_model: int) -> int:
    """Hidden width of the FF for a scheme and size, relative to W = max_len * d_model."""
    check_choice("scheme", scheme, SCHEMES)
    check_choice("size", size, SIZES)
    num, den = (_HIDDEN_ASLR if scheme == "ASLR" else _HIDDEN)[size]
    return max(1, max_len * d_model * num // den)


def ff_params(d_in: int, hidden: int, d_out: int) -> int:
    """Parameters of one ShallowFF: two LayerNorms (gain + bias) and two Linears."""
    return 2 * d_in + d_in * hidden + hidden + 2 * hidden + hidden * d_out + d_out


def count_params(scheme: str, size: str, max_len: int, d_model: int, n_heads: int = 1,
                 where: str = "encoder") -> int:
    """Trainable parameters of one replacement (the teacher's frozen W_O not counted).

    With max_len 50, d_model 128 (W = 6400), ALR: XS 0.34M, S 0.66M, M 10.3M, L 41.0M,
    the paper's per-layer figures.
    """
    _check_slot(where, scheme)
    W, h = max_len * d_model, hidden_width(scheme, size, max_len, d_model)
    if scheme == "ASLR":
        return n_heads * ff_params(W, h, max_len * (d_model // n_heads))
    return ff_params(2 * W if where.startswith("cross") else W, h, W)


# ----------------------------------------------------------------------------- helpers

def _zero(t, pad):
    """Zero the padded positions of a (B, T, ...) tensor; pad is (B, T) bool or None."""
    return t if pad is None else t.masked_fill(pad[..., None], 0.0)


def _pad_to(t, max_len: int, what: str = "sentence"):
    """(B, T, d) -> (B, max_len, d), zeros appended."""
    _check_len(t.shape[1], max_len, what)
    return F.pad(t, (0, 0, 0, max_len - t.shape[1]))


def _flat(x, pad, max_len: int, what: str = "sentence"):
    """(B, T, d) -> (B, max_len * d): the FF's view of a sentence, padding zeroed."""
    return _pad_to(_zero(x, pad), max_len, what).flatten(1)


def _frozen_copy(linear: nn.Module | None):
    """The teacher's W_O, copied (the teacher stays untouched) and frozen (never trained)."""
    return None if linear is None else copy.deepcopy(linear).requires_grad_(False)


# ----------------------------------------------------------------------------- padding skipped

# A batch padded to T < max_len tokens leaves a non-causal FF's input zero beyond T and throws its
# output beyond T away, yet the flat view multiplies all max_len * d numbers both ways. At random
# batches of 128 Multi30k sentences (the longest 37 source and 33 target tokens on average, of
# max_len 50) that is a quarter to a third of an encoder student's products. `_ff_on_spans`
# computes the same function without them: the zeros still count in the input LayerNorm's
# statistics, and their normalised values (beta - mean * rstd * g: one rank-2 term) reach fc1
# as two weight-only vectors, as in `_causal_pass`. Distillation (`distill_forward`) uses it;
# inference keeps the full width, the paper's model, whose FLOPs and latency chapter 9 measures.
SKIP_PADDING = True  # False: every product at full width (the reference; bench_distill.py --width full)


def _skips_padding(x) -> bool:
    """Distillation skips the padding in fp32 and tf32; under autocast (bf16) it runs dense."""
    return SKIP_PADDING and not torch.is_autocast_enabled(x.device.type)


class _SpanLinear(torch.autograd.Function):
    """fc1 on a LayerNorm's output that is `u` on the column `spans` and, on the `rest`, the
    LayerNorm of zeros: beta - s * g (s = mean * rstd, one per row). Only the spans' columns of
    the weight meet the batch; the rest costs a product with two vectors each way."""

    @staticmethod
    def forward(ctx, u, s, weight, bias, g, beta, spans, rest):
        gb = torch.stack([beta, g], 1)  # (D, 2)
        c = sum((weight[:, lo:hi] @ gb[lo:hi] for lo, hi in rest), weight.new_zeros(weight.shape[0], 2))
        out = torch.addmm(bias + c[:, 0], s, c[:, 1:].t(), alpha=-1)  # the rest: W beta - s W g
        at = 0
        for lo, hi in spans:
            out = torch.addmm(out, u[:, at:at + hi - lo], weight[:, lo:hi].t())
            at += hi - lo
        ctx.save_for_backward(u, s, weight, gb, c)
        ctx.spans, ctx.rest = spans, rest
        return out

    @staticmethod
    def backward(ctx, da):
        u, s, weight, gb, c = ctx.saved_tensors
        da = da.contiguous()
        du = torch.cat([da @ weight[:, lo:hi] for lo, hi in ctx.spans], 1)
        ds = -(da @ c[:, 1:])
        gw = torch.empty_like(weight)
        at = 0
        for lo, hi in ctx.spans:
            torch.mm(da.t(), u[:, at:at + hi - lo], out=gw[:, lo:hi])
            at += hi - lo
        coef = torch.cat([da.sum(0, keepdim=True), -(s.t() @ da)])  # (2, h): d/d beta, d/d g of the rest
        ggb = torch.zeros_like(gb)
        for lo, hi in ctx.rest:
            torch.mm(coef.t(), gb[lo:hi].t(), out=gw[:, lo:hi])  # two outer products
            ggb[lo:hi] = (coef @ weight[:, lo:hi]).t()
        return du, ds, gw, coef[0], ggb[:, 1], ggb[:, 0], None, None


class _RowsLinear(torch.autograd.Function):
    """The first n outputs of a Linear: only those rows of the weight are multiplied."""

    @staticmethod
    def forward(ctx, h, weight, bias, n):
        ctx.save_for_backward(h, weight)
        ctx.n = n
        return torch.addmm(bias[:n], h, weight[:n].t())

    @staticmethod
    def backward(ctx, dy):
        h, weight = ctx.saved_tensors
        n, dy = ctx.n, dy.contiguous()
        gw, gb = torch.empty_like(weight), dy.new_zeros(weight.shape[0])
        torch.mm(dy.t(), h, out=gw[:n])
        gw[n:].zero_()
        gb[:n] = dy.sum(0)
        return dy @ weight[:n], gw, gb, None


def _ff_on_spans(ff: ShallowFF, parts, n_out: int):
    """`ff` on a flat input that is zero except on `parts` [(start, (B, k) values), ...] (in
    order, not overlapping); its first `n_out` outputs. The same function as
    `ff(full_input)[:, :n_out]`, with the zeros' products left out."""
    D = ff.fc1.in_features
    spans = [(lo, lo + z.shape[1]) for lo, z in parts]
    edges = [0] + [e for span in spans for e in span] + [D]
    rest = [(a, b) for a, b in zip(edges[::2], edges[1::2]) if b > a]
    z = torch.cat([p for _, p in parts], 1)
    g, beta = ff.ln_in.weight, ff.ln_in.bias
    mean = z.sum(-1, keepdim=True) / D
    var = ((z - mean).square().sum(-1, keepdim=True) + (D - z.shape[1]) * mean.square()) / D
    rstd = torch.rsqrt(var + ff.ln_in.eps)
    u = torch.addcmul(torch.cat([beta[lo:hi] for lo, hi in spans]), (z - mean) * rstd,
                      torch.cat([g[lo:hi] for lo, hi in spans]))
    a = _SpanLinear.apply(u, mean * rstd, ff.fc1.weight, ff.fc1.bias, g, beta, spans, rest)
    return _RowsLinear.apply(ff.ln_hidden(ff.act(a)), ff.fc2.weight, ff.fc2.bias, n_out)


class _HeadsPrefixLinear(torch.autograd.Function):
    """`HeadFFs`' fc1 (one weight per head) on LayerNorms whose first k inputs are `u` (n, B, k)
    and whose rest is the LayerNorm of zeros, beta - s * g: `_SpanLinear`'s sums, head by head,
    for a sentence's prefix, as batched products."""

    @staticmethod
    def forward(ctx, u, s, weight, bias, g, beta):
        k = u.shape[2]
        gb = torch.stack([beta[:, k:], g[:, k:]], 2)  # (n, D - k, 2)
        c = torch.bmm(weight[:, :, k:], gb)  # (n, h, 2): W beta and W g over the rest
        out = torch.baddbmm((bias + c[..., 0])[:, None], s.expand(weight.shape[0], -1, -1),
                            c[:, None, :, 1], alpha=-1)
        out = torch.baddbmm(out, u, weight[:, :, :k].transpose(1, 2))
        ctx.save_for_backward(u, s, weight, gb, c)
        return out

    @staticmethod
    def backward(ctx, da):
        u, s, weight, gb, c = ctx.saved_tensors
        k, da = u.shape[2], da.contiguous()
        du = torch.bmm(da, weight[:, :, :k])
        ds = -torch.bmm(da, c[..., 1:]).sum(0)  # s is every head's
        gw = torch.empty_like(weight)
        torch.bmm(da.transpose(1, 2), u, out=gw[:, :, :k])
        coef = torch.cat([da.sum(1, keepdim=True), -torch.matmul(s.t(), da)], 1)  # (n, 2, h)
        torch.bmm(coef.transpose(1, 2), gb.transpose(1, 2), out=gw[:, :, k:])  # two outer products a head
        ggb = torch.bmm(coef, weight[:, :, k:])  # (n, 2, D - k)
        gbeta, gg = weight.new_zeros(weight.shape[::2]), weight.new_zeros(weight.shape[::2])  # (n, D)
        gbeta[:, k:], gg[:, k:] = ggb[:, 0], ggb[:, 1]
        return du, ds, gw, coef[:, 0], gg, gbeta


def _heads_on_prefix(heads: HeadFFs, z, n_out: int):
    """`heads` on a flat input that is zero beyond its first z.shape[1] values; each head's
    first `n_out` outputs, (B, n, n_out). The same function as `heads(full)[..., :n_out]`."""
    D, k = heads.in_features, z.shape[1]
    mean = z.sum(-1, keepdim=True) / D
    var = ((z - mean).square().sum(-1, keepdim=True) + (D - k) * mean.square()) / D
    rstd = torch.rsqrt(var + heads.eps)
    u = torch.addcmul(heads.ln_in_bias[:, None, :k], ((z - mean) * rstd)[None], heads.ln_in_weight[:, None, :k])
    a = _HeadsPrefixLinear.apply(u, mean * rstd, heads.fc1_weight, heads.fc1_bias,
                                 heads.ln_in_weight, heads.ln_in_bias)  # (n, B, h)
    a = F.layer_norm(F.leaky_relu(a, heads.negative_slope), (heads.hidden,), eps=heads.eps)
    a = torch.addcmul(heads.ln_hidden_bias[:, None], a, heads.ln_hidden_weight[:, None])
    return torch.baddbmm(heads.fc2_bias[:, None, :n_out], a,
                         heads.fc2_weight[:, :n_out].transpose(1, 2)).transpose(0, 1)


class _Slot(nn.Module):
    """An attention slot: per-head outputs from `forward_heads`, then the teacher's W_O."""

    def __init__(self, d_model: int, max_len: int, out_proj: nn.Module | None = None):
        super().__init__()
        self.d_model, self.max_len = d_model, max_len
        self.out_proj = _frozen_copy(out_proj)

    def _unflat(self, y, T: int, pad, start: int = 0):
        """(B, max_len * d) -> positions start..start+T-1 as (B, T, d), padding zeroed."""
        return _zero(y.view(y.shape[0], self.max_len, -1)[:, start:start + T], pad)

    def forward(self, x, x_pad, memory=None, memory_pad=None, state=None):
        heads = self.forward_heads(x, x_pad, memory, memory_pad, state)
        return heads if self.out_proj is None else _zero(self.out_proj(heads), x_pad)

    def distill_forward(self, x, x_pad, memory=None, memory_pad=None):
        """What is compared with the teacher's input to W_O (the pre-W_O heads)."""
        return self.forward_heads(x, x_pad, memory, memory_pad)

    def _ff_skipping_padding(self, x, x_pad, memory=None, memory_pad=None):
        """`self.ff` on the flat sentence (after the flat memory, if given), positions beyond
        the batch's longest sentence skipped (`_ff_on_spans`): (B, T, d), padding zeroed."""
        B, T, d = x.shape
        _check_len(T, self.max_len)
        parts = [(0, _zero(x, x_pad).flatten(1))]
        if memory is not None:
            _check_len(memory.shape[1], self.max_len, "source sentence")
            parts = [(0, _zero(memory, memory_pad).flatten(1)), (self.max_len * d, parts[0][1])]
        return _zero(_ff_on_spans(self.ff, parts, T * d).view(B, T, d), x_pad)


# ----------------------------------------------------------------------------- encoder

class FFSelfAttention(_Slot):
    """ALR: LN(x) of the whole sentence -> the concatenated per-head outputs before W_O.

    Q/K/V, scores and softmax are replaced; the teacher's W_O (`out_proj`, frozen), the
    LayerNorm, dropout and residual around the slot are kept.
    """

    def __init__(self, d_model: int, max_len: int, hidden: int, out_proj: nn.Module | None = None):
        super().__init__(d_model, max_len, out_proj)
        W = max_len * d_model
        self.ff = ShallowFF(W, hidden, W)

    def forward_heads(self, x, x_pad, memory=None, memory_pad=None, state=None):
        return self._unflat(self.ff(_flat(x, x_pad, self.max_len)), x.shape[1], x_pad)

    def distill_forward(self, x, x_pad, memory=None, memory_pad=None):
        if _skips_padding(x):
            return self._ff_skipping_padding(x, x_pad)
        return self.forward_heads(x, x_pad)


class HeadFFs(nn.Module):
    """n ShallowFFs of the same shape, one per head, run as batched matrix products.

    The same function as `n` separate `ShallowFF`s (`as_ff(k)` gives head k as one), but one
    `bmm` per layer instead of a Python loop over heads: ASLR's students train at the
    machine's matmul rate. The input LayerNorm's statistics are shared (every head reads the
    same input); its gain and bias, like every other weight, are the head's own.
    """

    def __init__(self, n: int, d_in: int, hidden: int, d_out: int):
        super().__init__()
        self.n, self.in_features, self.hidden, self.out_features = n, d_in, hidden, d_out
        self.ln_in_weight = nn.Parameter(torch.ones(n, d_in))
        self.ln_in_bias = nn.Parameter(torch.zeros(n, d_in))
        self.fc1_weight = nn.Parameter(torch.empty(n, hidden, d_in))
        self.fc1_bias = nn.Parameter(torch.empty(n, hidden))
        self.ln_hidden_weight = nn.Parameter(torch.ones(n, hidden))
        self.ln_hidden_bias = nn.Parameter(torch.zeros(n, hidden))
        self.fc2_weight = nn.Parameter(torch.empty(n, d_out, hidden))
        self.fc2_bias = nn.Parameter(torch.empty(n, d_out))
        self.eps, self.negative_slope = 1e-5, 0.01
        for w, b in ((self.fc1_weight, self.fc1_bias), (self.fc2_weight, self.fc2_bias)):
            bound = w.shape[-1] ** -0.5  # nn.Linear's default initialisation, head by head
            nn.init.uniform_(w, -bound, bound)
            nn.init.uniform_(b, -bound, bound)

    def forward(self, z):
        """(B, d_in) -> (B, n, d_out)."""
        zn = F.layer_norm(z, (self.in_features,), eps=self.eps)
        u = torch.addcmul(self.ln_in_bias, zn[:, None], self.ln_in_weight)  # (B, n, d_in)
        a = torch.baddbmm(self.fc1_bias[:, None], u.transpose(0, 1), self.fc1_weight.transpose(1, 2))
        a = F.layer_norm(F.leaky_relu(a, self.negative_slope), (self.hidden,), eps=self.eps)
        a = torch.addcmul(self.ln_hidden_bias[:, None], a, self.ln_hidden_weight[:, None])  # (n, B, h)
        return torch.baddbmm(self.fc2_bias[:, None], a, self.fc2_weight.transpose(1, 2)).transpose(0, 1)

    def as_ff(self, k: int) -> ShallowFF:
        """Head k as an ordinary ShallowFF (a copy): for tests, FLOP counts and Jacobians."""
        ff = ShallowFF(self.in_features, self.hidden, self.out_features).to(self.fc1_weight)
        with torch.no_grad():
            for name, p in (("ln_in.weight", self.ln_in_weight), ("ln_in.bias", self.ln_in_bias),
                            ("fc1.weight", self.fc1_weight), ("fc1.bias", self.fc1_bias),
                            ("ln_hidden.weight", self.ln_hidden_weight), ("ln_hidden.bias", self.ln_hidden_bias),
                            ("fc2.weight", self.fc2_weight), ("fc2.bias", self.fc2_bias)):
                ff.get_parameter(name).copy_(p[k])
        return ff


class FFSeparateHeads(_Slot):
    """ASLR: one FF per head, each W -> max_len * d_head, stacked, then the teacher's W_O.

    Each head's FF has its own parameters, so the heads can be trained independently
    (head k's target is the slice [..., k*d_head:(k+1)*d_head] of the pre-W_O output); they
    run together as batched matrix products (`HeadFFs`).
    """

    def __init__(self, d_model: int, n_heads: int, max_len: int, hidden: int,
                 out_proj: nn.Module | None = None):
        super().__init__(d_model, max_len, out_proj)
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.heads = HeadFFs(n_heads, max_len * d_model, hidden, max_len * self.d_head)

    def forward_heads(self, x, x_pad, memory=None, memory_pad=None, state=None):
        z = _flat(x, x_pad, self.max_len)
        B, T = x.shape[:2]
        # (B, heads, max_len, d_head) -> (B, max_len, heads * d_head): the teacher's head-major layout
        out = self.heads(z).view(B, self.n_heads, self.max_len, self.d_head).transpose(1, 2)
        return _zero(out.flatten(2)[:, :T], x_pad)

    def distill_forward(self, x, x_pad, memory=None, memory_pad=None):
        if not _skips_padding(x):
            return self.forward_heads(x, x_pad)
        B, T, d = x.shape
        _check_len(T, self.max_len)
        out = _heads_on_prefix(self.heads, _zero(x, x_pad).flatten(1), T * self.d_head)
        return _zero(out.view(B, self.n_heads, T, self.d_head).transpose(1, 2).flatten(2), x_pad)


class FFBlock(_Slot):
    """ALRR: replaces LayerNorm + attention + residual: residual stream in and out (W -> W)."""

    def __init__(self, d_model: int, max_len: int, hidden: int):
        super().__init__(d_model, max_len)
        W = max_len * d_model
        self.ff = ShallowFF(W, hidden, W)

    def forward(self, x, x_pad, memory=None, memory_pad=None, state=None):
        return self._unflat(self.ff(_flat(x, x_pad, self.max_len)), x.shape[1], x_pad)

    def distill_forward(self, x, x_pad, memory=None, memory_pad=None):
        """Compared with the teacher block's (or layer's) output."""
        if _skips_padding(x):
            return self._ff_skipping_padding(x, x_pad)
        return self.forward(x, x_pad)


class FFLayer(FFBlock):
    """ELR: replaces a whole EncoderLayer, both sublayers: layer input -> layer output."""


# ----------------------------------------------------------------------------- decoder
def _prefix_sum_(t, reverse: bool = False):
    """Prefix (or suffix) sums over dim 0, in place: one contiguous slice at a time, many
    times faster on the CPU than `cumsum` over a leading dim (35 ms against about 1.5 ms for
    (33, 128, 1600) here); under torch.compile, `cumsum`, which traces for any length."""
    if torch.compiler.is_compiling():
        return t.flip(0).cumsum(0).flip(0) if reverse else t.cumsum(0)
    for i in (range(len(t) - 2, -1, -1) if reverse else range(1, len(t))):
        t[i] += t[i + 1] if reverse else t[i - 1]
    return t


class _PrefixFC1(torch.autograd.Function):
    """fc1 of the causal pass, time-major, with a hand-written backward:

        pre_i = r_i * (P_i + proj0 - mean_i * A g) + A b + fc1.bias,
        P_i   = sum_{j<=i} A_j (g_j x_j),   proj0 = A_mem (g_mem m) (+ a decoding carry)

    for all positions i at once. Autograd's own backward of these few lines copied,
    zero-filled and flipped (T, B, hidden) tensors several times a step and built three or
    four weight-sized gradients of fc1 to add up; this one keeps the work
    time-major and contiguous, sums prefixes and suffixes in place (`_prefix_sum_`), writes
    fc1's gradient into one buffer, and reads its output instead of saving P
    (P + proj0 - mean * A g = (pre - bias) / r). A whole epoch at `tiny` ran 1.4x as fast
    (`benchmarks/bench_distill.py --against`, benchmarks/README.md).

    xg: (T, B, d) decoder tokens times their LayerNorm gains; mg: (B, S, d) the memory times
    its gains, or None; carry: a decoding step's running sum, or None; consts: (A b + bias,
    A g) kept by a decoding state, or None (computed here, with gradients). Returns pre
    (T, B, h), the running sum at the last position and the two consts (not differentiable).
    """

    @staticmethod
    def forward(ctx, xg, mg, A, g, b, c1, lo: int, carry, mean, rstd, consts):
        T, B, d = xg.shape
        h = A.shape[0]
        bias, Ag = consts if consts is not None else (A @ b + c1, A @ g)
        P = torch.bmm(xg, A.view(h, -1, d)[:, lo:lo + T].permute(1, 2, 0))  # (T, B, h): block j on token j
        P = _prefix_sum_(P.to(xg.dtype))  # under bf16 autocast the sums are kept in fp32
        if mg is not None:
            P += mg.flatten(1) @ A[:, :mg.shape[1] * d].T
        if carry is not None:
            P += carry
        last = P[-1].clone()
        P.addcmul_(mean[..., None], Ag, value=-1.0).mul_(rstd[..., None]).add_(bias)
        ctx.save_for_backward(xg, mg, A, g, b, mean, rstd, Ag, bias, P)
        ctx.lo, ctx.given = lo, consts is not None  # given consts are constants: no gradient through them
        bias, Ag = bias.detach(), Ag.detach()  # new handles: a state's own tensors are left as they are
        ctx.mark_non_differentiable(last, bias, Ag)
        return P, last, bias, Ag

    @staticmethod
    def backward(ctx, G, *_):
        xg, mg, A, g, b, mean, rstd, Ag, bias, pre = ctx.saved_tensors
        T, B, d = xg.shape
        h, lo = A.shape[0], ctx.lo
        G = G.to(pre.dtype).contiguous()
        bias, Ag = bias.to(G.dtype), Ag.to(G.dtype)  # A g is bf16 under autocast; the sums are not
        dot = torch.linalg.vecdot(G, pre)  # sum over h of G * pre, (T, B)
        g_rstd = (dot - G @ bias) / rstd
        R = G * rstd[..., None]  # the gradient of P + proj0 - mean * A g
        g_mean = -(R @ Ag)
        g_Ag = -(mean.reshape(1, -1) @ R.view(-1, h)).view(h)
        g_bias = G.sum((0, 1))
        R = _prefix_sum_(R, reverse=True)  # the prefix sum's backward: a suffix sum; R[0] is proj0's
        blocks = A.view(h, -1, d)[:, lo:lo + T]  # (h, T, d)
        g_xg = torch.bmm(R, blocks.permute(1, 0, 2))  # (T, B, d)
        g_A = A.new_zeros(A.shape) if ctx.given else torch.outer(g_Ag, g).addr_(g_bias, b)  # A g, A b: every column
        g_A.view(h, -1, d)[:, lo:lo + T] += torch.bmm(R.transpose(1, 2), xg).permute(1, 0, 2)
        g_mg = None
        if mg is not None:
            S = mg.shape[1]
            g_mg = (R[0] @ A[:, :S * d]).view(B, S, d)
            g_A[:, :S * d] += R[0].T @ mg.flatten(1)
        if ctx.given:
            return g_xg, g_mg, g_A, None, None, None, None, None, g_mean, g_rstd, None
        return g_xg, g_mg, g_A, g_Ag @ A, g_bias @ A, g_bias, None, None, g_mean, g_rstd, None


# On the CPU a causal student's step is bound by its (T, B, hidden) passes through memory, and
# in a batch of random sentences most of that tensor is padding: at `tiny` a target batch of
# 128 averages about 15 real tokens a sentence against 33 for its longest. With every
# sentence's padding at its end, the packed pass below sorts the batch by length and keeps,
# position by position, only the sentences still running: the same function on the real
# tokens' rows only (`benchmarks/bench_distill.py --against`, benchmarks/README.md).
PACK_CAUSAL = True  # False: the dense (T, B, hidden) pass for every batch (the reference)


def _suffix_lengths(x_pad, T: int):
    """Each sentence's length when all of its padding comes after its tokens, else None."""
    n = T - x_pad.sum(1)
    return n if torch.equal(x_pad, torch.arange(T, device=x_pad.device) >= n[:, None]) else None


def _packs(x, state) -> bool:
    return (PACK_CAUSAL and state is None and x.device.type == "cpu"
            and not torch.compiler.is_compiling() and not torch.is_autocast_enabled(x.device.type))


def _chunks(counts):
    """(start, rows) of each position's chunk in a packed (N, ...) tensor."""
    at, out = 0, []
    for n in counts:
        out.append((at, n))
        at += n
    return out


class _PackedPrefixFC1(torch.autograd.Function):
    """`_PrefixFC1` on packed rows: position t's chunk holds the `counts[t]` longest sentences
    (the batch sorted by length, longest first), so a sentence's rows at t-1 and t sit at the
    same place in their chunks and the prefix sum adds chunk t-1's first rows to chunk t.
    xg: (N, d); mg: the sorted memory times its gains (B, S, d) or None; mean, rstd: (N,).
    Returns pre (N, h)."""

    @staticmethod
    def forward(ctx, xg, mg, A, g, b, c1, lo: int, mean, rstd, counts):
        d, h = xg.shape[1], A.shape[0]
        chunks = _chunks(counts)
        bias, Ag = A @ b + c1, A @ g
        P = xg.new_empty(xg.shape[0], h)
        for t, (at, n) in enumerate(chunks):
            torch.mm(xg[at:at + n], A[:, (lo + t) * d:(lo + t + 1) * d].t(), out=P[at:at + n])
        if mg is not None:  # the memory's projection: one constant per sentence, from position 0 on
            n0 = counts[0]
            P[:n0] += mg[:n0].flatten(1) @ A[:, :mg.shape[1] * d].t()
        for (prev, _), (at, n) in zip(chunks, chunks[1:]):
            P[at:at + n] += P[prev:prev + n]
        P.addcmul_(mean[:, None], Ag, value=-1.0).mul_(rstd[:, None]).add_(bias)
        ctx.save_for_backward(xg, mg, A, g, b, mean, rstd, Ag, bias, P)
        ctx.lo, ctx.counts = lo, counts
        return P

    @staticmethod
    def backward(ctx, G):
        xg, mg, A, g, b, mean, rstd, Ag, bias, pre = ctx.saved_tensors
        lo, counts = ctx.lo, ctx.counts
        chunks = _chunks(counts)
        N, d = xg.shape
        h = A.shape[0]
        G = G.contiguous()
        dot = torch.linalg.vecdot(G, pre)  # sum over h of G * pre
        g_rstd = (dot - G @ bias) / rstd
        R = G * rstd[:, None]  # the gradient of P - mean * A g
        g_mean = -(R @ Ag)
        g_Ag = -(mean @ R)
        g_bias = G.sum(0)
        for (at, n), (nxt, m) in reversed(list(zip(chunks, chunks[1:]))):  # the suffix sum
            R[at:at + m] += R[nxt:nxt + m]
        g_xg = torch.empty_like(xg)
        g_A = torch.outer(g_Ag, g).addr_(g_bias, b)  # A g and A b reach every column
        for t, (at, n) in enumerate(chunks):
            cols = slice((lo + t) * d, (lo + t + 1) * d)
            torch.mm(R[at:at + n], A[:, cols], out=g_xg[at:at + n])
            torch.addmm(g_A[:, cols], R[at:at + n].t(), xg[at:at + n], out=g_A[:, cols])  # (not addmm_,
            # which FlopCounterMode leaves uncounted)
        g_mg = None
        if mg is not None:
            n0, S = counts[0], mg.shape[1]
            g_mg = mg.new_zeros(mg.shape)
            g_mg[:n0] = (R[:n0] @ A[:, :S * d]).view(n0, S, d)
            torch.addmm(g_A[:, :S * d], R[:n0].t(), mg[:n0].flatten(1), out=g_A[:, :S * d])
        return g_xg, g_mg, g_A, g_Ag @ A, g_bias @ A, g_bias, None, g_mean, g_rstd, None


class _PackedBlockLinear(torch.autograd.Function):
    """fc2 of the causal pass on packed rows: chunk t meets only the d rows of the weight that
    produce block `start + t`. a: (N, h); returns (N, d)."""

    @staticmethod
    def forward(ctx, a, weight, bias, d: int, start: int, counts):
        ctx.save_for_backward(a, weight)
        ctx.d, ctx.start, ctx.counts = d, start, counts
        out = a.new_empty(a.shape[0], d)
        for t, (at, n) in enumerate(_chunks(counts)):
            rows = slice((start + t) * d, (start + t + 1) * d)
            torch.addmm(bias[rows], a[at:at + n], weight[rows].t(), out=out[at:at + n])
        return out

    @staticmethod
    def backward(ctx, G):
        a, weight = ctx.saved_tensors
        d, start = ctx.d, ctx.start
        G = G.contiguous()
        g_a, g_w = torch.empty_like(a), torch.empty_like(weight)
        g_b = weight.new_zeros(weight.shape[0])
        g_w[:start * d].zero_()
        g_w[(start + len(ctx.counts)) * d:].zero_()  # the blocks of positions beyond the batch's longest
        for t, (at, n) in enumerate(_chunks(ctx.counts)):
            rows = slice((start + t) * d, (start + t + 1) * d)
            torch.mm(G[at:at + n], weight[rows], out=g_a[at:at + n])
            torch.mm(G[at:at + n].t(), a[at:at + n], out=g_w[rows])
            g_b[rows] = G[at:at + n].sum(0)
        return g_a, g_w, g_b, None, None, None


def _packed_causal_pass(ff: ShallowFF, x, x_pad, lengths, max_len: int, memory=None, memory_pad=None):
    """`_causal_pass` without a decoding state, on the real tokens' rows only (`PACK_CAUSAL`)."""
    B, T, d = x.shape
    D = ff.fc1.in_features
    A, g, b = ff.fc1.weight, ff.ln_in.weight, ff.ln_in.bias
    gb = g.view(D // d, d)
    lead = D // d - max_len
    order = torch.argsort(lengths, descending=True, stable=True)
    lens = lengths[order].tolist()
    T = lens[0] if lens else 0
    if T == 0:
        return x.new_zeros(x.shape)
    counts = [sum(1 for n in lens if n > t) for t in range(T)]
    keep = torch.arange(T, device=x.device)[:, None] < lengths[order][None, :]  # (T, B): time-major, the packed order

    mg = None
    s1_0 = s2_0 = 0.0
    if memory is not None:
        _check_len(memory.shape[1], max_len, "source sentence")
        m = _zero(memory, memory_pad)[order]
        mg = m * gb[:memory.shape[1]]
        s1_0, s2_0 = m.sum((1, 2)), m.square().sum((1, 2))
    xs = _zero(x, x_pad)[:, :T][order].transpose(0, 1)  # (T, B, d), longest sentence first
    s1, s2 = xs.sum(-1).cumsum(0) + s1_0, xs.square().sum(-1).cumsum(0) + s2_0
    mean = s1 / D
    rstd = torch.rsqrt((s2 / D - mean.square()).clamp_min(0) + ff.ln_in.eps)
    xg = xs * gb[lead:lead + T, None]
    pre = _PackedPrefixFC1.apply(xg[keep], mg, A, g, b, ff.fc1.bias, lead, mean[keep], rstd[keep], counts)
    a = ff.ln_hidden(ff.act(pre))
    out = _PackedBlockLinear.apply(a, ff.fc2.weight, ff.fc2.bias, d, 0, counts)  # (N, d)
    dense = x.new_zeros(T, B, d).index_put((keep,), out).transpose(0, 1)  # (B, T, d), sorted
    return F.pad(dense[torch.argsort(order)], (0, 0, 0, x.shape[1] - T))  # the batch's order


def _causal_pass(ff: ShallowFF, x, x_pad, max_len: int, state=None, memory=None,
                 memory_pad=None):
    """Position i's output of `ff` on the input with every decoder slot > i zeroed, all i at once.

    The authors run the FF once per position. Write z_i for that masked input (width D: the
    W decoder numbers, after the encoder's W for cross-attention), x_j for decoder token j
    (zero if padded), g/b for the input LayerNorm's gain/bias and A for fc1's weight. Then

        mean_i = (sum_{j<=i} 1.x_j + memory sum) / D      (the zeros count: divide by D)
        var_i  = (sum_{j<=i} x_j.x_j + memory sum of squares) / D - mean_i^2
        fc1(LN(z_i)) = r_i * (P_i - mean_i * A g) + A b + fc1.bias,   r_i = 1/sqrt(var_i + eps)
        P_i    = sum_{j<=i} A[:, block j] (g[block j] * x_j)  (+ the memory's projection)

    The "- mean_i * A g" term is the normalisation of *every* slot, zeroed ones included,
    and "A b" is the bias every slot gets. Three prefix sums (cumsum over positions) give all
    i in one pass, at the cost of one ordinary forward (`_PrefixFC1`). Position i then needs
    only the rows of fc2 that produce block i. The work runs time-major, (T, B, ...), so each
    position's slice is contiguous.

    With `state` (a dict), the prefix sums continue from the previous call and are stored
    back: step-by-step decoding keeps three running sums, a position counter and the two
    weight-only vectors (A b + bias, A g), no cache that grows. That path is for decoding:
    no gradient flows through the carried state into earlier steps.
    """
    B, T, d = x.shape
    D, h = ff.fc1.in_features, ff.fc1.out_features
    A, g, b = ff.fc1.weight, ff.ln_in.weight, ff.ln_in.bias
    gb = g.view(D // d, d)
    lead = D // d - max_len  # slots in front of the decoder stream (the memory, if any)
    start = 0 if state is None else state.get("pos", 0)
    _check_len(start + T, max_len, "decoder prefix")
    if _packs(x, state):
        lengths = x.new_full((B,), T, dtype=torch.long) if x_pad is None else _suffix_lengths(x_pad, T)
        if lengths is not None:
            return _packed_causal_pass(ff, x, x_pad, lengths, max_len, memory, memory_pad)

    mg, carry = None, None
    if state is not None and "proj" in state:
        carry, s1_0, s2_0 = state["proj"], state["s1"], state["s2"]
    elif memory is not None:  # the encoder output: a constant of each sentence (its real slots only)
        _check_len(memory.shape[1], max_len, "source sentence")
        m = _zero(memory, memory_pad)
        mg = m * gb[:memory.shape[1]]
        s1_0, s2_0 = m.sum((1, 2)), m.square().sum((1, 2))
    else:
        s1_0 = s2_0 = 0.0

    x = _zero(x, x_pad).transpose(0, 1)  # (T, B, d)
    s1, s2 = x.sum(-1).cumsum(0) + s1_0, x.square().sum(-1).cumsum(0) + s2_0  # (T, B)
    mean = s1 / D
    rstd = torch.rsqrt((s2 / D - mean.square()).clamp_min(0) + ff.ln_in.eps)
    xg = (x * gb[lead + start:lead + start + T, None]).contiguous()
    # A b + fc1.bias and A g depend on the weights only: while decoding, computed at the
    # first step and kept in the state (they would otherwise be most of each step's work)
    pre, last, *consts = _PrefixFC1.apply(xg, mg, A, g, b, ff.fc1.bias, lead + start, carry, mean, rstd,
                                         None if state is None else state.get("consts"))
    if state is not None:
        # decoding runs without gradients (decode.py, under no_grad): the carried sums are constants
        state.update(proj=last, s1=s1[-1].detach(), s2=s2[-1].detach(), pos=start + T, consts=tuple(consts))

    a = ff.ln_hidden(ff.act(pre))
    W2 = ff.fc2.weight.view(max_len, -1, h)[start:start + T]  # rows of block i, per i: (T, d, h)
    out = torch.baddbmm(ff.fc2.bias.view(max_len, 1, -1)[start:start + T], a, W2.transpose(1, 2))
    return _zero(out.transpose(0, 1), x_pad).contiguous()


def per_position_reference(ff: ShallowFF, x, x_pad, memory=None, memory_pad=None):
    """The authors' causal FF, slowly: for each i, zero slots > i, run the whole FF, keep block i.

    `memory` (cross-attention) is prepended whole. For tests and the benchmark only.
    """
    B, T, d = x.shape
    max_len = ff.fc2.out_features // d
    xs = _pad_to(_zero(x, x_pad), max_len)
    m = None if memory is None else _flat(memory, memory_pad, max_len, "source sentence")
    keep = torch.arange(max_len, device=x.device)[:, None]
    outs = []
    for i in range(T):
        z = (xs * (keep <= i)).flatten(1)
        if m is not None:
            z = torch.cat([m, z], 1)
        outs.append(ff(z).view(B, max_len, -1)[:, i])
    return _zero(torch.stack(outs, 1), x_pad)


class CausalFFSelfAttention(_Slot):
    """ALR for decoder self-attention: position i sees positions <= i only.

    Equal to the authors' one-FF-pass-per-position masking, computed in one pass
    (`_causal_pass`); step by step with `state`, keeping three running sums.
    """

    def __init__(self, d_model: int, max_len: int, hidden: int, out_proj: nn.Module | None = None):
        super().__init__(d_model, max_len, out_proj)
        W = max_len * d_model
        self.ff = ShallowFF(W, hidden, W)

    def forward_heads(self, x, x_pad, memory=None, memory_pad=None, state=None):
        return _causal_pass(self.ff, x, x_pad, self.max_len, state)


class _CrossSlot(_Slot):
    """A cross-attention slot: the flattened memory (W) and decoder stream (W) in, W out."""

    def __init__(self, d_model: int, max_len: int, hidden: int, out_proj: nn.Module | None = None):
        super().__init__(d_model, max_len, out_proj)
        W = max_len * d_model
        self.ff = ShallowFF(2 * W, hidden, W)


def _need_memory(memory) -> None:
    if memory is None:
        raise ValueError("a cross-attention replacement needs the encoder output (memory)")


class FFCrossAttention(_CrossSlot):
    """ALR for cross-attention, the paper's form: [memory (W), decoder stream (W)] -> W.

    Not causal, as in the paper: trained on whole teacher-forced targets, while in
    step-by-step decoding it sees zeros beyond the current step, a train/test mismatch.
    With `state` it keeps the decoder inputs seen so far and returns the newest positions.
    """

    def forward_heads(self, x, x_pad, memory=None, memory_pad=None, state=None):
        _need_memory(memory)
        T = x.shape[1]
        x = _zero(x, x_pad)
        if state is not None:  # decoding: the prefix so far, zeros beyond it
            if "x" in state:
                x = torch.cat([state["x"], x], 1)
            _check_len(x.shape[1], self.max_len, "decoder prefix")
            state["x"] = x
        m = _flat(memory, memory_pad, self.max_len, "source sentence")
        y = self.ff(torch.cat([m, _flat(x, None, self.max_len)], 1))
        return self._unflat(y, T, x_pad, start=x.shape[1] - T)

    def distill_forward(self, x, x_pad, memory=None, memory_pad=None):
        _need_memory(memory)
        if _skips_padding(x):
            return self._ff_skipping_padding(x, x_pad, memory, memory_pad)
        return self.forward_heads(x, x_pad, memory, memory_pad)


class CausalFFCrossAttention(_CrossSlot):
    """ALR for cross-attention, causal: position i sees all of the memory and decoder <= i.

    Same one-pass prefix sums as CausalFFSelfAttention; the memory's projection and
    LayerNorm statistics (the LN spans all 2W inputs) are one constant per sentence.
    """

    def forward_heads(self, x, x_pad, memory=None, memory_pad=None, state=None):
        _need_memory(memory)
        return _causal_pass(self.ff, x, x_pad, self.max_len, state, memory, memory_pad)


class TeacherAttention(nn.Module):
    """Passes through to the teacher's own attention: a 'replacement' that changes nothing.

    It checks the plumbing (slots, signatures, decoding state) without any learning.
    """

    def __init__(self, attn: MultiHeadAttention):
        super().__init__()
        self.attn = attn

    def forward(self, x, x_pad, memory=None, memory_pad=None, state=None):
        return self.attn(x, x_pad, memory, memory_pad, state)

    def forward_heads(self, x, x_pad, memory=None, memory_pad=None, state=None):
        return self.attn.mix(x, x_pad, memory, memory_pad, state)

    def distill_forward(self, x, x_pad, memory=None, memory_pad=None):
        return self.attn.mix(x, x_pad, memory, memory_pad)


# ----------------------------------------------------------------------------- installing

def slot_path(where: str, layer: int, scheme: str) -> str:
    """Dotted path of the module a replacement takes the place of in a Transformer."""
    _check_slot(where, scheme)
    if where == "encoder":
        return {"ALR": f"encoder.layers.{layer}.self_attn_block.attn",
                "ASLR": f"encoder.layers.{layer}.self_attn_block.attn",
                "ALRR": f"encoder.layers.{layer}.self_attn_block",
                "ELR": f"encoder.layers.{layer}"}[scheme]
    if where == "decoder":
        return f"decoder.layers.{layer}.self_attn_block.attn"
    return f"decoder.layers.{layer}.cross_attn_block.attn"


def _check_layer(model: Transformer, where: str, layer: int) -> None:
    n = len((model.encoder if where == "encoder" else model.decoder).layers)
    if not isinstance(layer, int) or not 0 <= layer < n:
        raise ValueError(f"layer {layer!r} does not exist for where={where!r}; "
                         f"choose one of: {', '.join(map(str, range(n)))}")


def build_replacement(teacher: Transformer, where: str, layer: int, scheme: str, size: str,
                      max_len: int) -> nn.Module:
    """A randomly initialised replacement for one slot, holding the teacher's W_O if kept."""
    _check_slot(where, scheme)
    check_choice("size", size, SIZES)
    _check_layer(teacher, where, layer)
    side = teacher.encoder if where == "encoder" else teacher.decoder
    block = side.layers[layer].self_attn_block if where in ("encoder", "decoder") \
        else side.layers[layer].cross_attn_block
    d = block.norm.normalized_shape[0]
    h = hidden_width(scheme, size, max_len, d)
    w_o = getattr(block.attn, "out_proj", None)
    p = next(teacher.parameters())
    with torch.device(p.device):
        if where == "encoder":
            if scheme == "ALR":
                module = FFSelfAttention(d, max_len, h, w_o)
            elif scheme == "ASLR":
                module = FFSeparateHeads(d, block.attn.n_heads, max_len, h, w_o)
            elif scheme == "ALRR":
                module = FFBlock(d, max_len, h)
            else:
                module = FFLayer(d, max_len, h)
        elif where == "decoder":
            module = CausalFFSelfAttention(d, max_len, h, w_o)
        elif where == "cross":
            module = FFCrossAttention(d, max_len, h, w_o)
        else:
            module = CausalFFCrossAttention(d, max_len, h, w_o)
    return module.to(p.dtype)


def install(teacher: Transformer, replacements: dict) -> Transformer:
    """A deep copy of the teacher with modules put into slots; the teacher is not changed.

    `replacements` maps (where, layer, scheme) -> module; any set at once, all of them
    giving the attentionless Transformer. The modules are placed as they are, not copied.
    """
    model = copy.deepcopy(teacher)
    paths = {}
    for key, module in replacements.items():
        where, layer, scheme = key
        _check_slot(where, scheme)
        _check_layer(teacher, where, layer)
        path = slot_path(where, layer, scheme)
        for other in paths:
            if path == other or path.startswith(other + ".") or other.startswith(path + "."):
                raise ValueError(f"replacements {key!r} and {paths[other][0]!r} overlap "
                                 f"({path} vs {other}); install one of them")
        paths[path] = (key, module)
    for path, (_, module) in paths.items():
        parent, name = path.rsplit(".", 1)
        setattr(model.get_submodule(parent), name, module)
    return model


# ----------------------------------------------------------------------------- distillation

@dataclass(frozen=True)
class DistillIO:
    """What one student is trained on, as places in the teacher to hook.

    input_path: the module whose call arguments (x, x_pad, memory, memory_pad) are the
        student's input (a forward pre-hook).
    target_path, target_hook: "input" means the first argument of that module (a forward
        pre-hook: the teacher's W_O input, the pre-W_O heads); "output" its output.
    """
    input_path: str
    target_path: str
    target_hook: str
    what: str


def distill_io(where: str, scheme: str, layer: int = 0) -> DistillIO:
    """Where a student's input and target come from in the teacher (see DistillIO).

    ALR/ASLR: LN(x) (plus memory for cross) -> the input of the teacher's `attn.out_proj`.
    ALRR: the block's input -> its output. ELR: the layer's input -> its output.
    Targets are compared at real positions only: zero them at padding (record_io does).
    """
    path = slot_path(where, layer, scheme)
    if scheme in ("ALR", "ASLR"):
        return DistillIO(path, path + ".out_proj", "input",
                         "LN(x) the slot receives -> per-head attention output before W_O")
    what = "block input -> block output" if scheme == "ALRR" else "layer input -> layer output"
    return DistillIO(path, path, "output", what)


def record_io(teacher: Transformer, src, tgt_in, keys, pad_to: int | None = None) -> dict:
    """Run the teacher (eval, no grad, teacher forcing) and record each student's data.

    Returns {(where, layer, scheme): dict(x, x_pad, memory, memory_pad, target)}, target
    zeroed at padding, so `mse(student.distill_forward(x, x_pad, memory, memory_pad),
    target)` is the distillation loss. `pad_to` pads the time axis (e.g. to max_len), so
    batches of different lengths can be stacked.
    """
    names = ("x", "x_pad", "memory", "memory_pad")
    rec = {key: {} for key in keys}
    handles = []

    def grab_input(key):
        def hook(module, args, kwargs):
            got = dict(zip(names, args))
            got.update({n: kwargs[n] for n in names if n in kwargs})
            rec[key].update({n: got.get(n) for n in names})
        return hook

    def grab_target(key, kind):
        if kind == "input":
            return lambda module, args: rec[key].__setitem__("target", args[0])
        return lambda module, args, out: rec[key].__setitem__("target", out)

    was_training = teacher.training
    try:
        for key in keys:
            where, layer, scheme = key
            _check_layer(teacher, where, layer)
            io = distill_io(where, scheme, layer)
            handles.append(teacher.get_submodule(io.input_path)
                           .register_forward_pre_hook(grab_input(key), with_kwargs=True))
            target = teacher.get_submodule(io.target_path)
            hook = grab_target(key, io.target_hook)
            handles.append(target.register_forward_pre_hook(hook) if io.target_hook == "input"
                           else target.register_forward_hook(hook))
        teacher.eval()
        with torch.no_grad():
            teacher(src, tgt_in)
    finally:
        for handle in handles:
            handle.remove()
        teacher.train(was_training)

    for r in rec.values():
        r["target"] = _zero(r["target"], r["x_pad"])
        if pad_to is not None:
            for n in ("x", "target", "memory"):
                if r[n] is not None:
                    r[n] = _pad_to(r[n], pad_to)
            for n in ("x_pad", "memory_pad"):
                if r[n] is not None:
                    r[n] = F.pad(r[n], (0, pad_to - r[n].shape[1]), value=True)
    return rec
