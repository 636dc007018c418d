"""Tables and figures from the results of the grid (a DataFrame, one row per cell).

Laid out in the paper's structure (method x size x direction), so the book can set each
table beside the paper's claims. Every number comes from `experiments.run_grid`.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

SIZE_ORDER = ["XS", "S", "M", "L", "XL"]
GROUP_LABELS = {
    "encoder": "encoder self-attention",
    "decoder": "decoder self-attention",
    "cross": "cross-attention (paper form)",
    "cross_causal": "cross-attention (causal form)",
    "attentionless": "attentionless (paper cross)",
    "attentionless_causal": "attentionless (causal cross)",
}


def _sizes(df):
    return [s for s in SIZE_ORDER if s in set(df["size"])]


def encoder_table(df: pd.DataFrame, value: str = "bleu") -> pd.DataFrame:
    """Encoder schemes x sizes (rows: pair and scheme), trained students only."""
    enc = df[(df.group == "encoder") & df.trained]
    t = enc.pivot_table(index=["pair", "scheme"], columns="size", values=value, aggfunc="first")
    return t[_sizes(enc)]


def replacement_table(df: pd.DataFrame, value: str = "bleu") -> pd.DataFrame:
    """Decoder self-attention and both cross-attention forms (ALR) x sizes."""
    sub = df[df.group.isin(["decoder", "cross", "cross_causal"]) & df.trained]
    t = sub.pivot_table(index=["pair", "group"], columns="size", values=value, aggfunc="first")
    return t[_sizes(sub)].rename(index=GROUP_LABELS, level="group")


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """Teacher, attentionless Transformers and untrained floors: BLEU, relative BLEU, size."""
    keep = (df.group == "teacher") | df.group.str.startswith("attentionless") | ~df.trained
    cols = ["pair", "group", "scheme", "size", "trained", "bleu", "chrf", "bleu_rel", "replaced_params"]
    out = df.loc[keep, cols].copy()
    out["group"] = out["group"].map(lambda g: GROUP_LABELS.get(g, g))
    return out.reset_index(drop=True)


def to_markdown(df: pd.DataFrame, floatfmt: str = ".1f") -> str:
    """A Markdown table without the optional `tabulate` dependency."""
    df = df.reset_index() if not isinstance(df.index, pd.RangeIndex) else df
    cols = [str(c) for c in df.columns]

    def fmt(v):
        if isinstance(v, float):
            return "" if pd.isna(v) else format(v, floatfmt)
        return str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def markdown_report(df: pd.DataFrame) -> str:
    parts = ["## Encoder self-attention replaced in every layer: sacreBLEU", to_markdown(encoder_table(df)),
             "## Encoder: BLEU relative to the teacher (%)", to_markdown(encoder_table(df, "bleu_rel")),
             "## Decoder self-attention and cross-attention (ALR): sacreBLEU",
             to_markdown(replacement_table(df)),
             "## Teacher, attentionless Transformer, untrained floor", to_markdown(summary_table(df)),
             "## Parameters of the replacement networks (all layers)",
             to_markdown(encoder_table(df, "replaced_params").astype("Int64"))]
    return "\n\n".join(parts) + "\n"


def plot_sizes(df: pd.DataFrame, pair: str | None = None, ax=None):
    """BLEU against replacement size, one line per encoder scheme and per decoder/cross form,
    the teacher as a dashed line."""
    import matplotlib.pyplot as plt

    pair = pair or df.pair.iloc[0]
    d = df[df.pair == pair]
    ax = ax or plt.subplots(figsize=(7, 4))[1]
    sizes = _sizes(d[d.group != "teacher"])
    for (group, scheme), sub in d[d.trained & d.group.isin(["encoder", "decoder", "cross", "cross_causal"])] \
            .groupby(["group", "scheme"], sort=False):
        sub = sub.set_index("size").reindex(sizes)
        label = f"encoder {scheme}" if group == "encoder" else GROUP_LABELS[group]
        ax.plot(sizes, sub["bleu"], marker="o", label=label,
                linestyle="-" if group == "encoder" else "--")
    teacher = d[d.group == "teacher"]["bleu"].iloc[0]
    ax.axhline(teacher, color="black", linestyle=":", label="teacher")
    ax.set_xlabel("replacement size")
    ax.set_ylabel("sacreBLEU (test)")
    ax.set_title(f"{pair}: BLEU against the size of the feed-forward replacement")
    ax.legend(fontsize=8, ncol=2)
    return ax


def plot_groups(df: pd.DataFrame, size: str = "L", pair: str | None = None, ax=None):
    """Bars: the teacher and each attention type replaced at one size, plus the floors."""
    import matplotlib.pyplot as plt

    pair = pair or df.pair.iloc[0]
    d = df[df.pair == pair]
    ax = ax or plt.subplots(figsize=(7, 3.5))[1]
    rows = [("teacher", d[d.group == "teacher"]["bleu"].iloc[0])]
    for g in ["encoder", "decoder", "cross", "cross_causal", "attentionless", "attentionless_causal"]:
        sub = d[(d.group == g) & d.trained & (d.scheme == "ALR") & (d["size"] == size)]
        if len(sub):
            rows.append((GROUP_LABELS[g], sub["bleu"].iloc[0]))
    for g in ["encoder", "decoder", "cross"]:
        sub = d[(d.group == g) & ~d.trained]
        if len(sub):
            rows.append((f"untrained {g}", sub["bleu"].iloc[0]))
    labels, values = zip(*rows)
    colors = ["black"] + ["tab:blue"] * (len(rows) - 1)
    colors = [("tab:gray" if l.startswith("untrained") else c) for l, c in zip(labels, colors)]
    ax.barh(labels[::-1], values[::-1], color=colors[::-1])
    for i, v in enumerate(values[::-1]):
        ax.text(v, i, f" {v:.1f}", va="center", fontsize=8)
    ax.set_xlabel("sacreBLEU (test)")
    ax.set_title(f"{pair}: what is replaced (ALR, size {size})")
    return ax


def write_report(df: pd.DataFrame, folder: Path) -> dict:
    """results.csv, results.md and one PNG per figure and pair, in `folder`."""
    from matplotlib.figure import Figure  # no pyplot: leaves the caller's backend alone

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    df.to_csv(folder / "results.csv", index=False)
    (folder / "results.md").write_text(markdown_report(df))
    files = {"csv": folder / "results.csv", "md": folder / "results.md"}
    for pair in df.pair.unique():
        for name, fn in (("sizes", plot_sizes), ("groups", plot_groups)):
            fig = Figure(figsize=(7, 4))
            ax = fig.subplots()
            fn(df, pair=pair, ax=ax)
            fig.tight_layout()
            path = folder / f"{name}-{pair}.png"
            fig.savefig(path, dpi=120)
            files[f"{name}-{pair}"] = path
    return files
