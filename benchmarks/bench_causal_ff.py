"""The causal feed-forward replacement: one pass with prefix sums against the authors' loop.

The authors make decoder self-attention causal by running the FF once per position with
later slots zeroed (max_len forward passes). CausalFFSelfAttention computes the same outputs
in one pass. Both run on the same random batch of full-length sentences, in turns, in one
process; the script checks they agree and prints the median time of each and the ratio.

    python benchmarks/bench_causal_ff.py --max-len 50 --d-model 128 --batch 64 --size M
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from ffattn.config import SIZES
from ffattn.replace import CausalFFSelfAttention, hidden_width, per_position_reference


def timed(fn, repeats: int) -> tuple[float, torch.Tensor]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", choices=SIZES, default="M")
    p.add_argument("--repeats", type=int, default=5, help="timed runs of each; the median counts")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    hidden = hidden_width("ALR", args.size, args.max_len, args.d_model)
    mod = CausalFFSelfAttention(args.d_model, args.max_len, hidden).eval()
    with torch.no_grad():  # non-default LayerNorm and bias values: every term of the math counts
        for prm in mod.parameters():
            if prm.dim() == 1:
                prm.copy_(torch.randn_like(prm) * 0.3 + 0.5)
    x = torch.randn(args.batch, args.max_len, args.d_model)
    x_pad = torch.zeros(args.batch, args.max_len, dtype=torch.bool)

    one_pass = lambda: mod.forward_heads(x, x_pad)  # noqa: E731
    loop = lambda: per_position_reference(mod.ff, x, x_pad)  # noqa: E731
    with torch.no_grad():
        one_pass(), loop()  # warm-up
        t_fast, fast = timed(one_pass, args.repeats)
        t_slow, slow = timed(loop, args.repeats)
    err = (fast - slow).abs().max().item()
    scale = slow.abs().max().item()

    print(f"CausalFFSelfAttention, size {args.size}: max_len {args.max_len}, d_model "
          f"{args.d_model}, hidden {hidden}, batch {args.batch}, {torch.get_num_threads()} "
          f"threads, median of {args.repeats}")
    print(f"  per-position loop ({args.max_len} FF passes): {t_slow * 1e3:9.1f} ms")
    print(f"  one pass (prefix sums):            {t_fast * 1e3:9.1f} ms")
    print(f"  speed-up: {t_slow / t_fast:.1f}x")
    print(f"  max |difference| {err:.2e} (outputs up to {scale:.2f})")
    if err > 1e-3 * max(scale, 1.0):
        raise SystemExit("the one-pass form does not match the per-position reference")


if __name__ == "__main__":
    main()
