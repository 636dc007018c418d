"""Batched greedy and beam search with an incremental state (key/value cache or running sums).

Every attention slot receives a `state` dict per layer while decoding, so the teacher's
self-attention reuses its cached keys and values, and a causal feed-forward replacement keeps
its running sums: the decoder is called on one new token per step.
"""
from __future__ import annotations

import torch

from .data import pad_batch as _pad
from .model import BOS, EOS, PAD


def sequence_limit(model) -> int | None:
    """The longest sequence a model can take: MAX_LEN of its FF replacements, else None."""
    limits = [m.max_len for m in model.modules() if isinstance(getattr(m, "max_len", None), int)]
    return min(limits) if limits else None


def _max_steps(model, src, max_steps):
    if max_steps is None:  # long enough for any sensible translation of this batch
        max_steps = int(src.shape[1] * 1.5) + 10
    limit = sequence_limit(model)
    return max_steps if limit is None else min(max_steps, limit)


def _map_state(states, fn):
    """Apply fn to every batch-first tensor in the nested decoding states."""
    if isinstance(states, dict):
        return {k: _map_state(v, fn) for k, v in states.items()}
    if isinstance(states, list):
        return [_map_state(v, fn) for v in states]
    return fn(states) if torch.is_tensor(states) and states.dim() > 0 else states


def _strip(seq: list[int]) -> list[int]:
    out = []
    for t in seq:
        if t == EOS:
            break
        if t not in (PAD, BOS):
            out.append(t)
    return out


@torch.no_grad()
def greedy(model, src: torch.Tensor, max_steps: int | None = None) -> list[list[int]]:
    """Most likely token at every step. src: (B, S) padded ids -> B lists of target ids."""
    model.eval()
    steps = _max_steps(model, src, max_steps)
    memory, memory_pad = model.encode(src)
    B = src.shape[0]
    states = [{} for _ in model.decoder.layers]
    ys = torch.full((B, 1), BOS, dtype=torch.long, device=src.device)
    done = torch.zeros(B, dtype=torch.bool, device=src.device)
    for t in range(steps):
        logp = model.decode(ys[:, -1:], memory, memory_pad, states, offset=t)[:, -1]
        nxt = logp.argmax(-1).masked_fill(done, PAD)
        ys = torch.cat([ys, nxt[:, None]], dim=1)
        done |= nxt == EOS
        if done.all():
            break
    return [_strip(row) for row in ys[:, 1:].tolist()]


@torch.no_grad()
def beam_search(model, src: torch.Tensor, beam: int = 4, length_penalty: float = 0.6,
                max_steps: int | None = None) -> list[list[int]]:
    """Keep the `beam` best partial translations per sentence; rank finished ones by
    log-probability / ((5 + length) / 6) ** length_penalty (GNMT). beam=1 is greedy."""
    model.eval()
    steps = _max_steps(model, src, max_steps)
    B, K = src.shape[0], beam
    memory, memory_pad = model.encode(src)
    memory = memory.repeat_interleave(K, 0)
    memory_pad = memory_pad.repeat_interleave(K, 0)
    states = [{} for _ in model.decoder.layers]
    ys = torch.full((B * K, 1), BOS, dtype=torch.long, device=src.device)
    scores = torch.full((B, K), float("-inf"), device=src.device)
    scores[:, 0] = 0.0  # all beams start identical: only the first may expand
    done = torch.zeros(B * K, dtype=torch.bool, device=src.device)
    lengths = torch.zeros(B * K, device=src.device)
    for t in range(steps):
        logp = model.decode(ys[:, -1:], memory, memory_pad, states, offset=t)[:, -1]
        V = logp.shape[-1]
        # a finished beam only continues with PAD, at no cost
        logp = torch.where(done[:, None], torch.full_like(logp, float("-inf")), logp)
        logp[:, PAD] = torch.where(done, 0.0, logp[:, PAD])
        cand = (scores.view(B, K, 1) + logp.view(B, K, V)).view(B, K * V)
        scores, flat = cand.topk(K, dim=-1)
        origin = (flat // V + torch.arange(B, device=src.device)[:, None] * K).view(-1)
        token = (flat % V).view(-1)
        ys = torch.cat([ys[origin], token[:, None]], dim=1)
        states = _map_state(states, lambda s: s.index_select(0, origin))
        lengths = lengths[origin] + (~done[origin]).float()
        done = done[origin] | (token == EOS)
        if done.all():
            break
    penalty = ((5.0 + lengths) / 6.0) ** length_penalty
    best = (scores.view(-1) / penalty).view(B, K).argmax(-1)
    rows = ys[best + torch.arange(B, device=src.device) * K, 1:]
    return [_strip(row) for row in rows.tolist()]


def pad_batch(seqs: list[list[int]], device=None) -> torch.Tensor:
    """Right-padded (B, T) ids on `device`."""
    return _pad(seqs).to(device) if device is not None else _pad(seqs)


def translate(model, tokenizers, sentences: list[str], beam: int = 1, length_penalty: float = 0.6,
              batch_size: int = 64, max_steps: int | None = None, progress: bool = False) -> list[str]:
    """Translate raw sentences in batches of similar length; returns them in input order.

    A source longer than the model's MAX_LEN (FF students only) is cut to MAX_LEN tokens, the
    last one EOS: a fixed-width feed-forward replacement cannot read more; a warning says how
    many were cut. An empty (or blank) sentence translates to the empty string.
    """
    import warnings

    from tqdm.auto import tqdm

    if isinstance(sentences, str):
        raise TypeError("translate() takes a list of sentences, not one string")
    sentences = list(sentences)
    ids = tokenizers.encode_src(sentences)
    limit = sequence_limit(model)
    if limit is not None:
        cut = sum(len(s) > limit for s in ids)
        if cut:
            warnings.warn(f"{cut} of {len(ids)} sources are longer than the {limit} tokens this model reads "
                          f"(its feed-forward replacements' max_len): they were cut to {limit} tokens", stacklevel=2)
        ids = [s if len(s) <= limit else s[:limit - 1] + [EOS] for s in ids]
    order = sorted((i for i in range(len(ids)) if sentences[i].strip()), key=lambda i: len(ids[i]))
    device = next(model.parameters()).device
    out: list[list[int]] = [[] for _ in ids]
    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    for chunk in tqdm(chunks, desc="translate", disable=not progress, leave=False):
        src = pad_batch([ids[i] for i in chunk], device)
        if beam == 1:
            hyps = greedy(model, src, max_steps)
        else:
            hyps = beam_search(model, src, beam, length_penalty, max_steps)
        for i, h in zip(chunk, hyps):
            out[i] = h
    return tokenizers.decode_tgt(out)
