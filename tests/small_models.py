"""Small random Transformers the cost and inside tests share (no data, no cached runs)."""
import torch

from ffattn.model import Transformer
from ffattn.replace import build_replacement, install

D, H, ML = 16, 2, 8  # d_model, heads, max_len of the small models


def small_teacher(seed=0):
    torch.manual_seed(seed)
    return Transformer(40, 45, d_model=D, n_heads=H, d_ff=32, n_enc=2, n_dec=2, dropout=0.0).eval()


def with_slots(teacher, keys, size="M"):
    torch.manual_seed(1)
    return install(teacher, {k: build_replacement(teacher, k[0], k[1], k[2], size, ML) for k in keys}).eval()
