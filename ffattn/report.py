"""Tables and figures from the results of the grid (a DataFrame, one row per cell).

Laid out in the paper's structure (method x size x direction), so the book can set each
table beside the paper's claims. Every number comes from `experiments.run_grid`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .config import GROUP_LABELS, SIZES


def _sizes(df):
    return [s for s in SIZES if s in set(df["size"])]


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
        if v is pd.NA:
            return ""
        if isinstance(v, float):
            return "" if pd.isna(v) else format(v, floatfmt)
        return str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def budget_table(df: pd.DataFrame, value: str = "epochs") -> pd.DataFrame:
    """What each cell's distillation cost: `epochs` (the most over its layers), `steps`,
    `sentences_seen` or `distill_seconds`, by group/scheme x size (trained cells)."""
    sub = df[df.trained & (df.group != "teacher")].copy()
    sub["replaced"] = [f"encoder {sc}" if g == "encoder" else GROUP_LABELS.get(g, g)
                       for g, sc in zip(sub.group, sub.scheme)]
    t = sub.pivot_table(index=["pair", "replaced"], columns="size", values=value, aggfunc="first", sort=False)
    return t[_sizes(sub)]


def budget_lines(df: pd.DataFrame) -> str:
    """One line per direction: the distillation budget the table was measured at."""
    if "budget" not in df:
        return "budget: not recorded"
    lines = []
    for pair, d in df[df.group != "teacher"].groupby("pair", sort=False):
        line = f"- {pair}: {d['budget'].iloc[0]}"
        if "students_at_cap" in d:  # each student counted once (the attentionless cells reuse others)
            own = d[d.trained & ~d.group.str.startswith("attentionless")]
            at_cap, n = int(own.students_at_cap.sum()), int(own.students.sum())
            line += (f"; {at_cap} of {n} students stopped at the cap, still improving"
                     + (", the others on a plateau" if at_cap < n else ""))
        lines.append(line)
    return "\n".join(lines)


def markdown_report(df: pd.DataFrame) -> str:
    parts = ["## Budget: how much distillation these numbers cost", budget_lines(df),
             "Epochs each cell's students ran before the stopping rule ended them (the most over its layers):",
             to_markdown(budget_table(df).astype("Int64")),
             "## Encoder self-attention replaced in every layer: sacreBLEU", to_markdown(encoder_table(df)),
             "## Encoder: BLEU relative to the teacher (%)", to_markdown(encoder_table(df, "bleu_rel")),
             "## Decoder self-attention and cross-attention (ALR): sacreBLEU",
             to_markdown(replacement_table(df)),
             "## Teacher, attentionless Transformer, untrained floor", to_markdown(summary_table(df)),
             "## Parameters of the replacement networks (all layers)",
             to_markdown(encoder_table(df, "replaced_params").astype("Int64"))]
    return "\n\n".join(parts) + "\n"


def _some(names, n: int = 8) -> str:
    names = list(names)
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def progress_report(df: pd.DataFrame, cfg) -> str:
    """`experiments.grid_progress` in words: the teacher, the students by kind of slot, what the
    started ones have left at most (their cap) and at their own pace so far, the cells scored."""
    a = df.attrs
    lines = [f"{a['run_dir']}"]
    if a["teacher_epochs"] is None:
        return "\n".join(lines + ["no teacher yet: nothing of the grid can have started"])
    lines.append(f"teacher: {a['teacher_epochs']} of {cfg.epochs} epochs"
                 + (" (training)" if a["teacher_epochs"] < cfg.epochs else ""))
    states = ("finished", "started", "waiting", "other settings", "damaged")
    counts = pd.crosstab(df["where"], df.state)
    counts = counts.reindex(columns=[s for s in states if s in counts.columns or s in states[:3]], fill_value=0)
    lines += ["", "| students | " + " | ".join(counts.columns) + " | all |", "|---" * (len(counts.columns) + 2) + "|"]
    for where, row in counts.iterrows():
        lines.append(f"| {where} | " + " | ".join(str(v) for v in row) + f" | {row.sum()} |")
    done = df[df.state == "finished"]
    reasons = done.stopped.value_counts()
    lines += ["", f"{len(done)} of {len(df)} students finished ({reasons.get('plateau', 0)} on the plateau rule, "
              f"{reasons.get('cap', 0)} at the cap of {cfg.distill_epochs} epochs); {df.epochs.sum()} epochs "
              f"recorded, {df.seconds.sum() / 3600:.2f} h of training steps"]
    started = df[df.state == "started"]
    if len(started):
        left = (cfg.distill_epochs - started.epochs).clip(lower=0)
        pace = started.seconds / started.epochs.clip(lower=1)
        lines.append(f"started: {len(started)} ({_some(f'{r.student} after {r.epochs}' for r in started.itertuples())}); "
                     f"at most {left.sum()} epochs left to them, {(left * pace).sum() / 3600:.1f} h of training "
                     "steps at their own pace so far (held-out scoring and loading not counted; less where the "
                     "plateau rule stops them), shared among the processes")
    waiting = df[df.state == "waiting"]
    if len(waiting):
        lines.append(f"waiting: {len(waiting)} ({_some(waiting.student)})")
    stale = df[df.state.isin(["other settings", "damaged"])]
    if len(stale):
        lines.append(f"trained under other distillation settings or damaged (a run would stop on them; delete "
                     f"them): {', '.join(stale.student)}")
    lines.append(f"cells scored on the test split: {a['cells_scored']} of {a['cells']}")
    return "\n".join(lines)


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
    for g in GROUP_LABELS:
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


# ----------------------------------------------------------------------------- the paper's claims, checked

RULES = {
    "competitive": 90.0,   # % of the teacher's BLEU that counts as competitive ...
    "fair": 75.0,          # ... and as "mixed"
    "modest": 80.0,        # % kept that counts as a modest loss ...
    "large": 60.0,         # ... below this it is a large loss
    "noise": 1.0,          # BLEU: differences smaller than this are noise
    "clear": 5.0,          # points of relative BLEU: a clear difference
    "blowup": 10.0,        # x the teacher's attention parameters: a blow-up
}

BOOK_QUESTION = "(this book's question)"


def verdict(ok: bool, partly: bool = False) -> str:
    return "supported" if ok else "mixed" if partly else "not supported"


def _levels(v, noise: float) -> tuple[bool, bool]:
    """(grows, levels off) of a BLEU-by-size series: no drop above noise up to the last but
    one size, which beats the first; the last two sizes within noise of each other."""
    v = np.asarray(v, dtype=float)
    grows = bool((np.diff(v[:-1]) >= -noise).all() and v[-2] > v[0])
    return grows, bool(abs(v[-1] - v[-2]) <= noise)


def check_claims(d: pd.DataFrame, teacher_attention: int, limit: int, max_len: int,
                 rules: dict | None = None) -> list[dict]:
    """Each of the paper's claims against the grid `d` of one direction (rows of `run_grid`).

    Returns one dict per claim: the claim, the rule applied (with its thresholds), the verdict
    ("supported", "mixed", "not supported") and what was measured. `teacher_attention` is the
    parameter count of the teacher's attention layers; `limit` the longest sentence a model
    with a student installed reads (`decode.sequence_limit`).
    """
    R = {**RULES, **(rules or {})}
    out = []

    def add(claim, rule, v, measured):
        out.append({"claim": claim, "rule": rule, "verdict": v, "measured": measured})

    def cell(group, size, scheme="ALR", trained=True):
        sub = d[(d.group == group) & (d.scheme == scheme) & (d["size"] == size) & (d.trained == trained)]
        if sub.empty:
            raise ValueError(f"the grid has no {'trained' if trained else 'untrained'} cell {group} {scheme} {size}")
        return sub.iloc[0]

    enc = d[(d.group == "encoder") & d.trained]
    sizes = _sizes(enc)
    top = sizes[-1]
    best = enc.loc[enc.bleu_rel.idxmax()]
    add("Encoder self-attention can be replaced with BLEU competitive with the teacher",
        f"best encoder cell keeps >= {R['competitive']:.0f}% (mixed: >= {R['fair']:.0f}%)",
        verdict(best.bleu_rel >= R["competitive"], best.bleu_rel >= R["fair"]),
        f"{best.scheme} {best['size']}: {best.bleu_rel:.1f}%")

    by_scheme = enc.groupby("scheme").bleu.max()
    alr_wins = [s for s in sizes if enc[enc["size"] == s].sort_values("bleu").iloc[-1].scheme == "ALR"]
    add("ALR is the best of the four encoder schemes",
        f"ALR's best BLEU within {R['noise']:.0f} of the best scheme's (mixed: ALR best at some size)",
        verdict(by_scheme["ALR"] >= by_scheme.max() - R["noise"], bool(alr_wins)),
        f"ALR {by_scheme['ALR']:.1f}, best {by_scheme.idxmax()} {by_scheme.max():.1f}")

    alr = enc[enc.scheme == "ALR"].set_index("size").bleu.reindex(sizes)
    grows, levels = _levels(alr, R["noise"])
    series = [enc[enc.scheme == s].set_index("size").bleu.reindex(sizes) for s in sorted(set(enc.scheme))]
    series += [d[(d.group == g) & d.trained].set_index("size").bleu.reindex(sizes)
               for g in ("decoder", "cross", "cross_causal")]
    both = sum(all(_levels(s, R["noise"])) for s in series)
    add("BLEU grows with the size of the students and levels off around L",
        f"encoder ALR: no drop > {R['noise']:.0f} BLEU from {sizes[0]} to {sizes[-2]}, {sizes[-2]} above "
        f"{sizes[0]}, and |{top} - {sizes[-2]}| <= {R['noise']:.0f} (mixed: one of the two)",
        verdict(grows and levels, grows or levels),
        "encoder ALR " + " / ".join(f"{v:.1f}" for v in alr) + f" ({' - '.join(sizes)}); "
        f"{both} of {len(series)} series meet both")

    xs_gap = cell("encoder", top).bleu_rel - cell("encoder", sizes[0]).bleu_rel
    add("XS clearly lowers BLEU",
        f"encoder ALR: {top} minus {sizes[0]} >= {R['clear']:.0f} points (mixed: > 0)",
        verdict(xs_gap >= R["clear"], xs_gap > 0), f"{xs_gap:+.1f} points")

    dec = cell("decoder", top)
    add("Decoder self-attention can be replaced with a modest loss",
        f"decoder ALR {top} keeps >= {R['modest']:.0f}% (mixed: >= {R['large']:.0f}%)",
        verdict(dec.bleu_rel >= R["modest"], dec.bleu_rel >= R["large"]), f"{dec.bleu_rel:.1f}%")

    cross, enc_alr = cell("cross", top), cell("encoder", top)
    others = min(dec.bleu_rel, enc_alr.bleu_rel)
    add("Cross-attention loses much more than the other replacements: it is the bottleneck",
        f"cross (paper form) {top} at least {R['clear']:.0f} points below both decoder and encoder ALR "
        f"{top} (mixed: below both)",
        verdict(cross.bleu_rel <= others - R["clear"], cross.bleu_rel < others),
        f"cross {cross.bleu_rel:.1f}% vs decoder {dec.bleu_rel:.1f}%, encoder {enc_alr.bleu_rel:.1f}%")

    att = d[d.group == "attentionless"].iloc[0]
    floor = d[(d.group == "cross") & ~d.trained].bleu_rel.iloc[0]
    add("An attentionless Transformer still translates",
        f"attentionless (paper form) at least {R['clear']:.0f} points above a model that cannot read "
        f"the source (untrained cross-attention students; mixed: above it)",
        verdict(att.bleu_rel >= floor + R["clear"], att.bleu_rel > floor), f"{att.bleu_rel:.1f}% vs {floor:.1f}%")

    ratio = att.replaced_params / teacher_attention
    add("... but it blows up the parameter count",
        f"its students have >= {R['blowup']:.0f}x the parameters of the teacher's attention layers",
        verdict(ratio >= R["blowup"], ratio > 1), f"{ratio:.0f}x ({int(att.replaced_params):,})")

    add("... and fixes the maximum sentence length",
        "a model with any student reads at most MAX_LEN tokens (by construction)",
        verdict(limit == max_len), f"limit {limit} = MAX_LEN {max_len}")

    causal = cell("cross_causal", top)
    gain = causal.bleu_rel - cross.bleu_rel
    add(f"{BOOK_QUESTION} Part of cross-attention's loss is the paper form's train/decode mismatch",
        f"causal form {top} at least {R['clear']:.0f} points above the paper form (mixed: > {R['noise']:.0f} point)",
        verdict(gain >= R["clear"], gain > R["noise"]), f"{gain:+.1f} points")
    return out
