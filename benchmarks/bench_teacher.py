"""Teacher training throughput: ffattn's Transformer against torch.nn.Transformer.

Both models get the same embeddings, output layer, config and token batches; only the
encoder-decoder stack differs. They train in turns on the same batches in one process, and
the script prints target tokens per second of each and the ratio (ffattn / torch).

    python benchmarks/bench_teacher.py --preset tiny --batches 60
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from ffattn.config import PRESETS, get_config
from ffattn.data import prepare
from ffattn.model import PAD, Embedding, Transformer
from ffattn.train import batch_loss


class TorchTransformerMT(nn.Module):
    """torch.nn.Transformer (pre-LN) with the same embeddings and generator as ffattn's model."""

    def __init__(self, cfg, src_vocab, tgt_vocab):
        super().__init__()
        self.src_embed = Embedding(src_vocab, cfg.d_model, cfg.dropout)
        self.tgt_embed = Embedding(tgt_vocab, cfg.d_model, cfg.dropout)
        self.core = nn.Transformer(cfg.d_model, cfg.n_heads, cfg.n_enc, cfg.n_dec, cfg.d_ff,
                                   cfg.dropout, batch_first=True, norm_first=True)
        self.generator = nn.Linear(cfg.d_model, tgt_vocab)

    def forward(self, src, tgt_in):
        T = tgt_in.shape[1]
        causal = nn.Transformer.generate_square_subsequent_mask(T, dtype=torch.bool)
        y = self.core(self.src_embed(src), self.tgt_embed(tgt_in), tgt_mask=causal,
                      src_key_padding_mask=src == PAD, tgt_key_padding_mask=tgt_in == PAD,
                      memory_key_padding_mask=src == PAD, tgt_is_causal=True)
        return self.generator(y).log_softmax(-1)


def train_steps(model, opt, batches):
    model.train()
    start, tokens = time.perf_counter(), 0
    for src, tgt in batches:
        loss, k = batch_loss(model, src, tgt, 0.1)
        opt.zero_grad(set_to_none=True)
        (loss / k).backward()
        opt.step()
        tokens += k
    return tokens / (time.perf_counter() - start)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=PRESETS, default="tiny")
    p.add_argument("--pair", default="de-en")
    p.add_argument("--batches", type=int, default=40, help="batches per timed round")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per model (median reported)")
    args = p.parse_args(argv)
    cfg = get_config(args.preset, pair=args.pair)
    data = prepare(cfg)
    batches = list(data.batches("train", shuffle=True, seed=0, epoch=0))[: args.batches]
    torch.manual_seed(0)
    models = {"ffattn": Transformer.from_config(cfg, data.tok.src_vocab_size, data.tok.tgt_vocab_size),
              "torch.nn.Transformer": TorchTransformerMT(cfg, data.tok.src_vocab_size,
                                                         data.tok.tgt_vocab_size)}
    opts = {k: torch.optim.Adam(m.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9) for k, m in models.items()}
    for k, m in models.items():  # warm-up
        train_steps(m, opts[k], batches[:5])
    rates = {k: [] for k in models}
    for _ in range(args.rounds):  # take turns so both see the same machine load
        for k, m in models.items():
            rates[k].append(train_steps(m, opts[k], batches))
    print(f"preset {cfg.preset}, {len(batches)} batches of <= {cfg.batch_tokens} tokens, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print({k: [round(x) for x in v] for k, v in rates.items()})
    med = {k: statistics.median(v) for k, v in rates.items()}
    for k, v in med.items():
        params = sum(p.numel() for p in models[k].parameters())
        print(f"{k:>22}: {v:8.0f} target tokens/s  ({params / 1e6:.2f}M parameters)")
    print(f"ratio ffattn / torch.nn.Transformer: {med['ffattn'] / med['torch.nn.Transformer']:.2f}")


if __name__ == "__main__":
    main()
