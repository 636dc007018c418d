"""How much distillation does each replacement need? The budget study (chapter 8).

The paper trained every student for a fixed 20 to 40 epochs of the whole training set and never
asked how much of that each replacement needs. Here the same cells are distilled on the first
1k, 3k, 10k and all training sentences, each under the same stopping rule, and scored like the
grid: BLEU with the students installed, held-out MSE, and what it cost (epochs, optimiser
steps, sentences seen, seconds). Every point goes through the grid's cache (the students'
key holds `distill_sentences`), so the "all" points are the grid's own cells and a rerun only
reads results back. The chapter's last section (`batch_study`) distils a few cells again at
other batch sizes and learning rates, to see whether a larger batch buys time.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from . import experiments
from .distill import kept_epoch

SENTENCES = (1000, 3000, 10000, 0)  # 0: the whole training split
CELLS = tuple([("encoder", sc, sz) for sc in ("ALR", "ASLR", "ALRR", "ELR") for sz in ("M", "L")]
              + [("decoder", "ALR", "L"), ("cross", "ALR", "L"), ("cross_causal", "ALR", "L")])


def parse_sentences(text: str) -> list[int]:
    """'1000,3000,0' -> [1000, 3000, 0]: the study's numbers of training sentences (0: all)."""
    points = []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        try:
            n = int(part)
        except ValueError:
            n = -1
        if n < 0:
            raise ValueError(f"number of sentences {part!r}: write whole numbers of training sentences, "
                             f"separated by commas, 0 for all of them, e.g. 1000,3000,10000,0")
        points.append(n)
    if not points:
        raise ValueError(f"no numbers of sentences in {text!r}; e.g. 1000,3000,10000,0 (0: all of them)")
    return list(dict.fromkeys(points))  # a point asked for twice runs once


def cell_label(group: str, scheme: str, size: str) -> str:
    return f"encoder {scheme}-{size}" if group == "encoder" else f"{group.replace('_', ' ')} {scheme}-{size}"


def with_sentences(t: experiments.Teacher, n: int) -> experiments.Teacher:
    """The same teacher, its students distilled on the first n training sentences (0: all)."""
    return experiments.Teacher(t.cfg.replace(distill_sentences=n), t.model, t.data, t.run_dir, t.history)


def study(t: experiments.Teacher, sentences=SENTENCES, cells=CELLS, progress: bool = True):
    """Train (or load) and score every cell at every number of sentences.

    Returns (points, curves): one row per (cell, sentences) with BLEU, relative BLEU, held-out
    MSE (mean over layers, the kept epoch), epochs (most over layers), steps, sentences seen,
    seconds; and one row per (cell, sentences, epoch) with the held-out MSE after that epoch
    (mean over the cell's layers)."""
    wanted = set(cells)
    n_train = len(t.data["train"])
    points, curves = [], []
    # a number at or above the training set is all of it: one point, the grid's own (its key says 0)
    for n in dict.fromkeys(0 if n >= n_train else n for n in sentences):
        tn = with_sentences(t, n)
        chosen = [c for c in experiments.grid(tn.cfg) if c.trained and (c.group, c.scheme, c.size) in wanted]
        df = experiments.run_grid(tn, chosen, progress=progress)
        histories = df.attrs["histories"]
        used = min(n or n_train, n_train)
        for c in chosen:
            row = df[(df.group == c.group) & (df.scheme == c.scheme) & (df["size"] == c.size) & df.trained].iloc[0]
            points.append({"cell": cell_label(c.group, c.scheme, c.size), "group": c.group, "scheme": c.scheme,
                           "size": c.size, "sentences": used, "bleu": row.bleu, "bleu_rel": row.bleu_rel,
                           "heldout_mse": row.heldout_mse, "epochs": row.epochs, "steps": row.steps,
                           "sentences_seen": row.sentences_seen, "distill_seconds": row.distill_seconds})
            hs = [histories[s] for s in c.students]
            for e in range(max(len(h) for h in hs)):
                mses = [h[e]["heldout_mse"] for h in hs if e < len(h)]
                curves.append({"cell": points[-1]["cell"], "sentences": used, "epoch": e + 1,
                               "sentences_seen": used * (e + 1), "heldout_mse": float(np.mean(mses)),
                               "kept": all(kept_epoch(h, tn.cfg.distill_patience) == e + 1 for h in hs if e < len(h))})
    return pd.DataFrame(points), pd.DataFrame(curves)


def enough(points: pd.DataFrame, tol: float = 1.0) -> pd.DataFrame:
    """Per cell: BLEU at each number of sentences and the fewest sentences that come within `tol`
    BLEU of the cell's best, with the epochs and sentences seen that point cost."""
    table = points.pivot_table(index="cell", columns="sentences", values="bleu", aggfunc="first", sort=False)
    rows = []
    for cell, bleu in table.iterrows():
        best = bleu.max()
        n = min(k for k, v in bleu.items() if v >= best - tol)
        p = points[(points.cell == cell) & (points.sentences == n)].iloc[0]
        rows.append({"cell": cell, "best BLEU": best, f"fewest sentences within {tol:g} BLEU": n,
                     "its epochs": int(p.epochs), "its sentences seen": int(p.sentences_seen)})
    return table.join(pd.DataFrame(rows).set_index("cell"))


def plot(points: pd.DataFrame, curves: pd.DataFrame, teacher_bleu: float, axes=None):
    """Left: BLEU against training sentences (log scale), one line per cell. Right: held-out
    MSE relative to the cell's final all-sentence value against sentences seen."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    if axes is None:
        axes = plt.subplots(1, 2, figsize=(14, 4.5), layout="constrained")[1]
    for k, (cell, sub) in enumerate(points.groupby("cell", sort=False)):
        sub = sub.sort_values("sentences")
        style = "-" if cell.startswith("encoder") else "--"
        axes[0].plot(sub.sentences, sub.bleu, "o" + style, ms=4, color=f"C{k % 10}", label=cell)
        c = curves[curves.cell == cell]
        ref = c[c.sentences == c.sentences.max()].heldout_mse.min()
        for n, cn in c.groupby("sentences"):
            axes[1].plot(cn.sentences_seen, cn.heldout_mse / ref, style, color=f"C{k % 10}", lw=1,
                         label=cell if n == c.sentences.max() else None)
    axes[0].axhline(teacher_bleu, color="black", ls=":", label="teacher")
    axes[0].set(xscale="log", xlabel="training sentences distilled on (log scale)", ylabel="sacreBLEU (test)",
                title="BLEU against the data each student saw")
    axes[1].set(xscale="log", yscale="log", xlabel="sentences seen (sentences x epochs, log scale)",
                ylabel="held-out MSE / best on all sentences", title="Held-out MSE, one line per (cell, sentences)")
    for ax in axes:
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    axes[0].legend(fontsize=7, ncol=2)
    return axes


# ----------------------------------------------------------------------------- batch size

# A larger batch takes a quarter of the optimiser steps per epoch, and an encoder student's
# epoch gets shorter (fewer Adam updates over its weights). A causal student's work is
# memory-bound elementwise passes over (tokens, hidden); on the CPU it packs each batch to its
# real tokens (replace.PACK_CAUSAL), so it too gets shorter, where the dense pass, padding every
# sentence to the batch's longest, got longer (benchmarks/bench_distill.py --batch 128 512
# measures both). Each setting is (sentences per batch, factor on both learning rates).
BATCHES = ((512, 1.0), (512, 2.0))
BATCH_CELLS = (("encoder", "ALR", "L"), ("encoder", "ALRR", "L"), ("encoder", "ELR", "M"), ("decoder", "ALR", "L"))


def parse_batches(text: str) -> list[tuple[int, float]]:
    """'512x1,512x2' -> [(512, 1.0), (512, 2.0)]: batch sizes, each with a learning-rate factor
    ('none' or '': no other batch size)."""
    settings = []
    if str(text).strip().lower() == "none":
        return settings
    for part in (p.strip().lower() for p in str(text).split(",")):
        if not part:
            continue
        try:
            batch, factor = part.split("x") if "x" in part else (part, "1")
            setting = (int(batch), float(factor))
        except ValueError:
            setting = None
        if setting is None or setting[0] <= 0 or not 0 < setting[1] < float("inf"):
            raise ValueError(f"batch setting {part!r}: write BATCHxFACTOR with a positive whole batch and a "
                             f"positive learning-rate factor, e.g. 512x2 (or 512 for a factor of 1), "
                             f"settings separated by commas, or none for no other batch size")
        settings.append(setting)
    return list(dict.fromkeys(settings))  # a setting asked for twice runs once


def batch_config(cfg, batch: int, lr_factor: float = 1.0):
    """`cfg` with `batch` sentences a distillation step and both learning rates times `lr_factor`
    (both are in the students' key, so each setting has its own place in the cache)."""
    return cfg.replace(distill_batch=batch, lr_alr=cfg.lr_alr * lr_factor, lr_other=cfg.lr_other * lr_factor)


def with_batch(t: experiments.Teacher, batch: int, lr_factor: float = 1.0) -> experiments.Teacher:
    """The same teacher, its students distilled at another batch size and learning rate."""
    return experiments.Teacher(batch_config(t.cfg, batch, lr_factor), t.model, t.data, t.run_dir, t.history)


def batch_study(t: experiments.Teacher, settings=BATCHES, cells=BATCH_CELLS, progress: bool = True):
    """The grid's own cells (the config's batch, factor 1) against the same cells at other batch
    sizes and learning rates, all under the config's sentences and stopping rule.

    Returns (points, curves): one row per (cell, setting) with BLEU, held-out MSE, epochs, steps
    and seconds of training steps (summed over the cell's layers); one row per (cell, setting,
    epoch) with the held-out MSE (mean over layers; a layer whose student stopped earlier counts
    with the epoch it kept) and the seconds spent so far."""
    wanted = set(cells)
    known = {(c.group, c.scheme, c.size) for c in experiments.grid(t.cfg) if c.trained}
    unknown = sorted(wanted - known)
    if unknown or not wanted:
        raise ValueError(f"batch_study: cells {unknown or 'none'} are not trained cells of the {t.cfg.preset} grid; "
                         f"valid: {sorted(known)}")
    points, curves = [], []
    grids = (t.cfg.distill_batch, 1.0)
    for batch, factor in dict.fromkeys([grids, *settings]):
        tb = with_batch(t, batch, factor)
        chosen = [c for c in experiments.grid(tb.cfg) if c.trained and (c.group, c.scheme, c.size) in wanted]
        df = experiments.run_grid(tb, chosen, progress=progress)
        histories = df.attrs["histories"]
        setting = f"batch {batch}, lr x{factor:g}"
        for c in chosen:
            row = df[(df.group == c.group) & (df.scheme == c.scheme) & (df["size"] == c.size) & df.trained].iloc[0]
            points.append({"cell": cell_label(c.group, c.scheme, c.size), "setting": setting, "batch": batch,
                           "lr_factor": factor, "bleu": row.bleu, "bleu_rel": row.bleu_rel,
                           "heldout_mse": row.heldout_mse, "epochs": row.epochs, "steps": row.steps,
                           "distill_seconds": row.distill_seconds,
                           "students_at_cap": row.students_at_cap, "students": row.students})
            hs = [histories[s] for s in c.students]
            for e in range(max(len(h) for h in hs)):
                mses = [h[e if e < len(h) else kept_epoch(h, tb.cfg.distill_patience) - 1]["heldout_mse"] for h in hs]
                curves.append({"cell": points[-1]["cell"], "setting": setting, "epoch": e + 1,
                               "seconds": float(sum(sum(x["seconds"] for x in h[:e + 1]) for h in hs)),
                               "heldout_mse": float(np.mean(mses))})
    return pd.DataFrame(points), pd.DataFrame(curves)


def plot_batches(curves: pd.DataFrame, axes=None):
    """One panel per cell: held-out MSE (mean over its layers) against seconds of training steps,
    one line per batch setting, a dot per epoch."""
    import matplotlib.pyplot as plt

    cells = list(dict.fromkeys(curves.cell))
    if axes is None:
        axes = plt.subplots(1, len(cells), figsize=(3.6 * len(cells), 3.4), layout="constrained")[1]
    for ax, cell in zip(np.atleast_1d(axes), cells):
        for k, (setting, c) in enumerate(curves[curves.cell == cell].groupby("setting", sort=False)):
            ax.plot(c.seconds, c.heldout_mse, "o-", ms=3, color=f"C{k}", label=setting)
        ax.set(yscale="log", xlabel="seconds of training steps", title=cell)
    np.atleast_1d(axes)[0].set_ylabel("held-out MSE (log scale)")
    np.atleast_1d(axes)[0].legend(fontsize=7)
    return axes


def study_progress(cfg, sentences=SENTENCES, settings=BATCHES, cells=CELLS, batch_cells=BATCH_CELLS) -> pd.DataFrame:
    """How far chapter 8's points have got in the cache (`experiments.grid_progress` of each):
    one row per number of sentences and per batch setting (the whole split's point and the
    grid's own setting are the grid's cells, not listed), with its students by state, the
    epochs and hours of training steps recorded. Without the data it cannot know the size of
    the training split: a number of sentences above it shows as waiting (`study` trains it as
    the whole split); with `train_limit` set, that is the size."""
    limit = cfg.train_limit or float("inf")
    points = [(f"{n:,} sentences", cfg.replace(distill_sentences=0 if n >= limit else n), cells)
              for n in dict.fromkeys(sentences)]
    points += [(f"batch {b}, lr x{f:g}", batch_config(cfg, b, f), batch_cells) for b, f in dict.fromkeys(settings)]
    rows, seen = [], {cfg.distill_key()}  # the grid's own point: its cells are the grid's
    for label, c, wanted in points:
        if c.distill_key() in seen:
            continue
        seen.add(c.distill_key())
        chosen = [x for x in experiments.grid(c) if x.trained and (x.group, x.scheme, x.size) in set(wanted)]
        df = experiments.grid_progress(c, chosen)
        counts = df.state.value_counts()
        rows.append({"point": label, "cells": len(chosen), "students": len(df),
                     **{k: int(counts.get(k, 0)) for k in ("finished", "started", "waiting")},
                     "epochs": int(df.epochs.sum()), "hours of steps": round(df.seconds.sum() / 3600, 2),
                     "cells scored": df.attrs["cells_scored"]})
    return pd.DataFrame(rows, columns=["point", "cells", "students", "finished", "started", "waiting", "epochs",
                                       "hours of steps", "cells scored"])
