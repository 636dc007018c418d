"""Beyond the paper: fine-tune the attentionless Transformer on the translation loss.

The paper distils each replacement alone, against the teacher's activations, and stops there.
Installed together, the replacements' small errors add up (chapter 10). Here the whole network,
every replacement installed, trains a few epochs more on the teacher's own objective (teacher
forcing, label-smoothed cross-entropy), starting from the distilled weights: how much of the
gap to the teacher does that close?

Only a model whose decoder side is causal can learn this way. The paper's form of the
cross-attention replacement reads every target position at once, so teacher forcing would
show it the very token it must predict: its loss would fall by copying, and greedy decoding,
which has no future tokens to copy, would get worse (`check_causal` refuses it).
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .data import token_batches
from .distill import _adam
from .files import load_checkpoint, save_atomic
from .replace import FFCrossAttention
from .train import autocast, heap_memory, batch_loss, valid_bleu, validation_loss


LEAK = ("the paper's (non-causal) cross-attention form reads the target tokens it must predict, "
        "so teacher forcing cannot fine-tune it; fine-tune the causal form (attentionless_causal) instead")


def check_causal(model) -> None:
    """A ValueError when a replacement on the decoder side sees future target positions."""
    leaky = [name for name, m in model.named_modules() if isinstance(m, FFCrossAttention)]
    if leaky:
        raise ValueError(f"cannot fine-tune {leaky[0]}: {LEAK}")


@heap_memory()
def finetune(model, data, path: Path, key: str, epochs: int, lr: float, sentences: int = 0,
             label_smoothing: float = 0.1, seed: int = 0, bleu_sentences: int = 0,
             precision: str = "fp32", progress: bool = True) -> list[dict]:
    """Train every weight of `model` (in place) on the translation loss for `epochs` epochs of
    the first `sentences` training pairs (0: all); returns the history, one row per epoch.

    Adam at the constant rate `lr`, token batches as the teacher's, `precision` as the
    teacher's (`train.autocast`: bf16 or TF32 on a GPU, fp32 on the CPU). `path` is rewritten after
    every epoch (with the optimiser while unfinished, the weights alone once finished), so an
    interrupted run resumes; `key` names the settings, and a checkpoint of others is refused.
    The row of epoch 0 is the distilled start, before any step; with `bleu_sentences`, each
    row also has the greedy BLEU of that many validation sentences."""
    check_causal(model)
    path = Path(path)
    train = data["train"]
    n = min(sentences or len(train), len(train))
    src_ids, tgt_ids = train.src_ids[:n], train.tgt_ids[:n]
    valid = list(data.batches("valid", shuffle=False))
    for p in model.parameters():  # the teacher's copied weights too, and the students' frozen W_O
        p.requires_grad_(True)
    opt = _adam(list(model.parameters()), lr)
    history, start = [], 0
    if path.exists():
        ck = load_checkpoint(path)
        if ck.get("key") != key:
            raise ValueError(f"{path} was fine-tuned under other settings; delete it")
        model.load_state_dict(ck["model"])
        history, start = ck["history"], ck["epoch"]
        if "optimizer" in ck:
            opt.load_state_dict(ck["optimizer"])

    def scored(row):
        row["valid_loss"] = validation_loss(model, valid)
        row["valid_bleu"] = valid_bleu(model, data, bleu_sentences) if bleu_sentences else None
        return row

    if not history:
        history.append(scored({"epoch": 0, "step": 0, "train_loss": None, "seconds": 0.0, "sentences": 0}))
    for epoch in range(start, epochs):
        model.train()
        torch.manual_seed(seed + 1000 * (epoch + 1))  # dropout masks, repeatable per epoch
        t0, total, ntok = time.time(), 0.0, 0
        batches = token_batches(src_ids, tgt_ids, data.cfg.batch_tokens, shuffle=True, seed=seed, epoch=epoch)
        bar = tqdm(batches, desc=f"fine-tuning, epoch {epoch + 1}/{epochs}", disable=not progress, leave=False)
        for src, tgt in bar:
            with autocast(precision, next(model.parameters()).device):
                loss, k = batch_loss(model, src, tgt, label_smoothing)
            opt.zero_grad(set_to_none=True)
            (loss / k).backward()
            opt.step()
            total, ntok = total + loss.item(), ntok + k
            bar.set_postfix(loss=f"{total / ntok:.3f}")
        history.append(scored({"epoch": epoch + 1, "step": history[-1]["step"] + len(batches),
                               "train_loss": total / ntok, "seconds": time.time() - t0, "sentences": n}))
        ck = {"key": key, "epoch": epoch + 1, "history": history, "model": model.state_dict()}
        if epoch + 1 < epochs:
            ck["optimizer"] = opt.state_dict()
        save_atomic(ck, path)
    model.eval()
    return history
