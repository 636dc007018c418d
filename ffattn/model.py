"""The teacher: a pre-LN encoder-decoder Transformer built from scratch.

The attention sublayers are *slots*. Every attention module, and every block around one, is
called with the same signature

    module(x, x_pad, memory=None, memory_pad=None, state=None) -> (B, T, d_model)

so a replacement network (ffattn.replace) can be dropped into any layer at one of three
granularities, the paper's schemes:

    layer.self_attn_block.attn   the attention computation + W_O   (ALR, ASLR keep W_O)
    layer.self_attn_block        LayerNorm + attention + residual   (ALRR)
    encoder.layers[i]            the whole encoder layer            (ELR)

`x_pad` / `memory_pad` are (B, T) booleans, True at padding. `state` is a dict that a module
may use during step-by-step decoding (the key/value cache here; a running sum in the causal
feed-forward replacement).
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

PAD, BOS, EOS, UNK = 0, 1, 2, 3  # the ids every ffattn tokenizer uses


class MultiHeadAttention(nn.Module):
    """Q/K/V projections, scaled dot-product attention per head, then the output projection W_O.

    `mix` is the part the paper's ALR replaces (everything before W_O); `forward` adds W_O.
    Self-attention when `memory` is None, cross-attention otherwise; `causal` lets position i
    see keys <= i only.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, causal: bool = False):
        super().__init__()
        self.n_heads, self.d_head, self.causal = n_heads, d_model // n_heads, causal
        self.in_proj = nn.Linear(d_model, 3 * d_model)  # W_Q, W_K, W_V stacked, as torch's
        self.out_proj = nn.Linear(d_model, d_model)
        self.dropout = dropout
        self.keep_weights = False  # set by Transformer.attention_maps()
        self.last_weights = None

    def _split(self, t):  # (B, T, d) -> (B, h, T, d_head)
        return t.unflatten(-1, (self.n_heads, self.d_head)).transpose(1, 2)

    def mix(self, x, x_pad, memory=None, memory_pad=None, state=None):
        """The concatenated per-head outputs (B, T, d_model), before W_O."""
        d, W, b = self.out_proj.in_features, self.in_proj.weight, self.in_proj.bias
        if memory is None:  # self-attention: keys are x (plus the cache while decoding)
            q, k, v = map(self._split, self.in_proj(x).chunk(3, dim=-1))  # one matmul for all three
            key_pad = x_pad
            if state is not None:
                if "k" in state:
                    k = torch.cat([state["k"], k], dim=2)
                    v = torch.cat([state["v"], v], dim=2)
                    key_pad = torch.cat([state["pad"], x_pad], dim=1)
                state["k"], state["v"], state["pad"] = k, v, key_pad
        else:  # cross-attention: the memory's keys and values are computed once per sentence
            q = self._split(F.linear(x, W[:d], b[:d]))
            if state is not None and "k" in state:
                k, v = state["k"], state["v"]
            else:
                k, v = map(self._split, F.linear(memory, W[d:], b[d:]).chunk(2, dim=-1))
                if state is not None:
                    state["k"], state["v"] = k, v
            key_pad = memory_pad
        T, S = q.shape[2], k.shape[2]
        allowed = ~key_pad[:, None, None, :]  # (B, 1, 1, S): True where a key may be seen
        if self.causal and T > 1:  # during cached decoding T == 1 and every cached key is past
            allowed = allowed & torch.ones(T, S, dtype=torch.bool, device=x.device).tril(S - T)
        p = self.dropout if self.training else 0.0
        if self.keep_weights:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.d_head)
            weights = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
            self.last_weights = weights.detach()
            out = F.dropout(weights, p, self.training) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=p)
        return out.transpose(1, 2).flatten(2)

    def forward(self, x, x_pad, memory=None, memory_pad=None, state=None):
        return self.out_proj(self.mix(x, x_pad, memory, memory_pad, state))


class AttentionBlock(nn.Module):
    """Pre-LN residual sublayer around an attention slot: x + Dropout(attn(LayerNorm(x)))."""

    def __init__(self, d_model: int, attn: nn.Module, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.attn = attn
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, x_pad, memory=None, memory_pad=None, state=None):
        return x + self.dropout(self.attn(self.norm(x), x_pad, memory, memory_pad, state))


class FeedForwardBlock(nn.Module):
    """Pre-LN residual position-wise feed-forward sublayer: x + Dropout(W2 Dropout(ReLU(W1 LN(x))))."""

    def __init__(self, d_model: int, d_ff: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, d_ff), nn.ReLU(), nn.Dropout(dropout),
                                nn.Linear(d_ff, d_model))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return x + self.dropout(self.ff(self.norm(x)))


class EncoderLayer(nn.Module):
    def __init__(self, d_model, n_heads, d_ff, dropout):
        super().__init__()
        attn = MultiHeadAttention(d_model, n_heads, dropout)
        self.self_attn_block = AttentionBlock(d_model, attn, dropout)
        self.ff_block = FeedForwardBlock(d_model, d_ff, dropout)

    def forward(self, x, x_pad, memory=None, memory_pad=None, state=None):
        return self.ff_block(self.self_attn_block(x, x_pad))


class DecoderLayer(nn.Module):
    def __init__(self, d_model, n_heads, d_ff, dropout):
        super().__init__()
        self_attn = MultiHeadAttention(d_model, n_heads, dropout, causal=True)
        cross_attn = MultiHeadAttention(d_model, n_heads, dropout)
        self.self_attn_block = AttentionBlock(d_model, self_attn, dropout)
        self.cross_attn_block = AttentionBlock(d_model, cross_attn, dropout)
        self.ff_block = FeedForwardBlock(d_model, d_ff, dropout)

    def forward(self, y, y_pad, memory, memory_pad, state=None):
        s_self = s_cross = None
        if state is not None:
            s_self, s_cross = state.setdefault("self", {}), state.setdefault("cross", {})
        y = self.self_attn_block(y, y_pad, state=s_self)
        y = self.cross_attn_block(y, y_pad, memory, memory_pad, state=s_cross)
        return self.ff_block(y)


class PositionalEncoding(nn.Module):
    """Sinusoidal positions (Vaswani et al.), added to embeddings scaled by sqrt(d_model)."""

    def __init__(self, d_model: int, max_positions: int = 1024):
        super().__init__()
        pos = torch.arange(max_positions).unsqueeze(1)
        div = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_positions, d_model)
        pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * div), torch.cos(pos * div)
        self.register_buffer("pe", pe, persistent=False)

    def forward(self, x, offset: int = 0):
        if offset + x.shape[1] > self.pe.shape[0]:
            raise ValueError(f"sequence of {offset + x.shape[1]} tokens is longer than the "
                             f"{self.pe.shape[0]} positions this model encodes")
        return x + self.pe[offset:offset + x.shape[1]]


class Embedding(nn.Module):
    def __init__(self, vocab: int, d_model: int, dropout: float):
        super().__init__()
        self.tok = nn.Embedding(vocab, d_model, padding_idx=PAD)
        self.pos = PositionalEncoding(d_model)
        self.dropout = nn.Dropout(dropout)
        self.scale = math.sqrt(d_model)

    def forward(self, ids, offset: int = 0):
        return self.dropout(self.pos(self.tok(ids) * self.scale, offset))


class Encoder(nn.Module):
    def __init__(self, vocab, d_model, n_heads, d_ff, n_layers, dropout):
        super().__init__()
        self.embed = Embedding(vocab, d_model, dropout)
        self.layers = nn.ModuleList(EncoderLayer(d_model, n_heads, d_ff, dropout)
                                    for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)

    def forward(self, src, src_pad):
        x = self.embed(src)
        for layer in self.layers:
            x = layer(x, src_pad)
        return self.norm(x)


class Decoder(nn.Module):
    def __init__(self, vocab, d_model, n_heads, d_ff, n_layers, dropout):
        super().__init__()
        self.embed = Embedding(vocab, d_model, dropout)
        self.layers = nn.ModuleList(DecoderLayer(d_model, n_heads, d_ff, dropout)
                                    for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)

    def forward(self, tgt, tgt_pad, memory, memory_pad, states=None, offset: int = 0):
        y = self.embed(tgt, offset)
        for i, layer in enumerate(self.layers):
            y = layer(y, tgt_pad, memory, memory_pad, None if states is None else states[i])
        return self.norm(y)


class Transformer(nn.Module):
    """Encoder-decoder Transformer (pre-LN, separate embeddings, no weight tying, Xavier init)."""

    def __init__(self, src_vocab: int, tgt_vocab: int, d_model: int = 128, n_heads: int = 8,
                 d_ff: int = 512, n_enc: int = 6, n_dec: int = 6, dropout: float = 0.1):
        super().__init__()
        self.encoder = Encoder(src_vocab, d_model, n_heads, d_ff, n_enc, dropout)
        self.decoder = Decoder(tgt_vocab, d_model, n_heads, d_ff, n_dec, dropout)
        self.generator = nn.Linear(d_model, tgt_vocab)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    @classmethod
    def from_config(cls, cfg, src_vocab: int, tgt_vocab: int) -> "Transformer":
        return cls(src_vocab, tgt_vocab, cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.n_enc,
                   cfg.n_dec, cfg.dropout)

    def encode(self, src):
        src_pad = src == PAD
        return self.encoder(src, src_pad), src_pad

    def decode(self, tgt, memory, memory_pad, states=None, offset: int = 0):
        """Log-probabilities of the next token at every target position."""
        y = self.decoder(tgt, tgt == PAD, memory, memory_pad, states, offset)
        return self.generator(y).log_softmax(-1)

    def forward(self, src, tgt_in):
        """Teacher forcing: src (B, S), tgt_in = BOS + target (B, T) -> log-probs (B, T, V)."""
        memory, memory_pad = self.encode(src)
        return self.decode(tgt_in, memory, memory_pad)

    def attention_modules(self) -> dict[str, MultiHeadAttention]:
        """{'encoder.3.self': module, 'decoder.0.cross': module, ...} for every attention left."""
        found = {}
        for side in ("encoder", "decoder"):
            for i, layer in enumerate(getattr(self, side).layers):
                for kind in ("self", "cross"):
                    block = getattr(layer, f"{kind}_attn_block", None)
                    attn = getattr(block, "attn", None)
                    if isinstance(attn, MultiHeadAttention):
                        found[f"{side}.{i}.{kind}"] = attn
        return found

    @contextmanager
    def attention_maps(self):
        """Within the block, every attention keeps its weights (B, heads, T, S) in a dict."""
        mods = self.attention_modules()
        maps = {}
        for m in mods.values():
            m.keep_weights = True
        try:
            yield maps
        finally:
            for name, m in mods.items():
                m.keep_weights = False
                if m.last_weights is not None:
                    maps[name] = m.last_weights
                m.last_weights = None
