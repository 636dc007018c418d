"""Every setting of a run in one flat dataclass, the presets, validation and the cache key.

One flat `Config` keeps overrides simple: the same field name works as a keyword
(`get_config(d_model=128)`), a CLI flag (`--d-model 128`) and a papermill parameter.
Each field belongs to a group (data, model, train, decode, distill, finetune); the teacher's
cache key hashes the data, model and train groups, so changing a decoding or distillation
setting never retrains the teacher, and changing anything the teacher depends on never loads
an old one. The students' key hashes the distill group, the fine-tune's its own.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

PAIRS = ("de-en", "en-de", "fr-en", "en-fr")
CORPORA = ("multi30k", "iwslt2017")
PRESETS = ("tiny", "small", "paper")
SCHEMES = ("ALR", "ALRR", "ASLR", "ELR")
DISTILL_SOURCES = ("recorded", "on_the_fly")
PRECISIONS = ("fp32", "tf32", "bf16")
COMPILES = ("off", "causal", "all")
SIZES = ("XS", "S", "M", "L", "XL")  # smallest to largest: the order of every table's columns
# The grid's groups, in the book's order: what each replaces (tables, decisions) and a short
# name (plot labels). Every room words them from here.
GROUP_LABELS = {
    "encoder": "encoder self-attention",
    "decoder": "decoder self-attention",
    "cross": "cross-attention (paper form)",
    "cross_causal": "cross-attention (causal form)",
    "attentionless": "all attention (paper cross form)",
    "attentionless_causal": "all attention (causal cross form)",
}
GROUP_SHORT = {"encoder": "enc", "decoder": "dec", "cross": "cross", "cross_causal": "cross causal",
               "attentionless": "no attention", "attentionless_causal": "no attention, causal"}

# Bump when a change in the code makes old artifacts wrong: it is part of every cache key.
ARTIFACT_VERSION = 1
# Bump when students or their checkpoints change form: part of the students' key only, so the
# teacher and its recordings stay valid (2: ASLR's heads batched, best-epoch students; 3: random batches).
STUDENT_VERSION = 3


def _f(default, group, help):
    return field(default=default, metadata={"group": group, "help": help})


@dataclass(frozen=True)
class Config:
    """All settings of one run. Build it with `get_config`, not by hand."""

    preset: str = _f("tiny", "run", "name of the preset this config started from")
    # data
    corpus: str = _f("multi30k", "data", "parallel corpus: multi30k or iwslt2017")
    pair: str = _f("de-en", "data", "translation direction src-tgt")
    vocab_size: int = _f(5000, "data", "SentencePiece vocabulary per language")
    max_len: int = _f(50, "data", "MAX_LEN: longest training sentence in tokens; FF input width")
    batch_tokens: int = _f(1500, "data", "tokens per batch: batch x max(src, tgt+2) <= this")
    train_limit: int = _f(0, "data", "use only the first N training pairs (0: all)")
    valid_limit: int = _f(0, "data", "use only the first N validation pairs (0: all)")
    # model
    d_model: int = _f(64, "model", "width of the residual stream")
    n_heads: int = _f(4, "model", "attention heads")
    d_ff: int = _f(256, "model", "inner width of the position-wise feed-forward sublayer")
    n_enc: int = _f(2, "model", "encoder layers")
    n_dec: int = _f(2, "model", "decoder layers")
    dropout: float = _f(0.0, "model", "dropout on embeddings, sublayers, attention, FF hidden (paper: 0.1)")
    # train
    epochs: int = _f(5, "train", "teacher training epochs")
    warmup: int = _f(400, "train", "warmup steps of the inverse-square-root schedule")
    lr_factor: float = _f(1.0, "train", "scale of the schedule d^-0.5 * min(s^-0.5, s*w^-1.5)")
    label_smoothing: float = _f(0.1, "train", "label smoothing of the cross-entropy")
    seed: int = _f(0, "train", "seed of weights, dropout and batch order")
    precision: str = _f("fp32", "train", "the teacher's arithmetic on a GPU: fp32; tf32: matmuls in TF32; bf16: "
                        "bfloat16 autocast and TF32 (on the CPU every choice computes in fp32; the students' "
                        "is distill_precision)")
    # decode (evaluation only: not part of the teacher's key)
    beam: int = _f(1, "decode", "beam size (1: greedy, as the paper)")
    length_penalty: float = _f(0.6, "decode", "GNMT length penalty alpha for beam search")
    valid_bleu_sentences: int = _f(200, "decode", "validation sentences decoded per epoch for BLEU (0: none)")
    # distill
    distill_epochs: int = _f(5, "distill", "most epochs of each replacement network (the stopping rule's cap)")
    distill_patience: int = _f(2, "distill", "stop a student after this many epochs without its held-out MSE "
                               "improving by distill_min_delta (0: always run distill_epochs)")
    distill_min_delta: float = _f(0.01, "distill", "relative improvement of the held-out MSE that counts as one")
    distill_batch: int = _f(128, "distill", "sentences per distillation batch")
    distill_sentences: int = _f(0, "distill", "training sentences recorded from the teacher (0: all)")
    distill_source: str = _f("recorded", "distill", "recorded: the teacher's activations saved once as float16 "
                             "memory maps; on_the_fly: the teacher runs on each batch, nothing on disk")
    distill_compile: str = _f("off", "distill", "torch.compile the students' training steps: off, causal "
                              "(decoder and causal cross students: epochs 1.7-1.9x faster at L at small on 2 CPU cores, "
                              "after 15-35 s of compiling each, slower overall at tiny; see benchmarks/README.md) or "
                              "all; a speed setting, outside the key")
    distill_precision: str = _f("fp32", "distill", "arithmetic of the students' training steps: fp32, tf32 (on a "
                                "GPU) or bf16 (bfloat16 autocast, on the CPU too: epochs 1.15-1.9x faster on 2 cores "
                                "with AVX512-BF16, far slower on a CPU without it; see benchmarks/README.md). "
                                "Held-out MSE and BLEU are always computed in fp32")
    distill_memory_gb: float = _f(0.0, "distill", "most memory in GB that the students trained at once may hold on "
                                  "this machine (on a GPU, per device), shared among its torchrun processes: 20 bytes "
                                  "a parameter, as measured (weights, Adam's moments, the best epoch's copy, "
                                  "the allocator's overhead); students of one "
                                  "recording beyond it train in turns, each reading the recording again (on the fly: "
                                  "running the teacher again), and a larger student trains alone. 0: no limit. The "
                                  "same students either way: a memory setting, outside the key")
    lr_alr: float = _f(1e-3, "distill", "constant learning rate of ALR students (paper: 1e-4 over far more steps)")
    lr_other: float = _f(1e-3, "distill", "constant learning rate of ALRR, ASLR, ELR (paper)")
    # fine-tune (beyond the paper; its own key, so the teacher and the students never depend on it)
    finetune_epochs: int = _f(2, "finetune", "epochs of end-to-end training of the attentionless Transformer")
    finetune_lr: float = _f(1e-4, "finetune", "constant Adam learning rate of that fine-tune")
    finetune_sentences: int = _f(0, "finetune", "training sentences it reads (0: all)")

    def __post_init__(self):
        check_choice("preset", self.preset, PRESETS)
        check_choice("corpus", self.corpus, CORPORA)
        check_choice("pair", self.pair, PAIRS)
        check_choice("distill_source", self.distill_source, DISTILL_SOURCES)
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("distill_compile", self.distill_compile, COMPILES)
        check_choice("distill_precision", self.distill_precision, PRECISIONS)
        for f in fields(self):
            value, kind = getattr(self, f.name), type(f.default)
            if kind in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"{f.name}={value!r} must be a number")
        for name in _POSITIVE:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be positive (above 0)")
        for name in _NON_NEGATIVE:
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be 0 or more")
        for name in _FRACTIONS:
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must lie in [0, 1)")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")

    @property
    def src(self) -> str:
        return self.pair.split("-")[0]

    @property
    def tgt(self) -> str:
        return self.pair.split("-")[1]

    def group(self, *groups: str) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata["group"] in groups}

    def teacher_key(self) -> str:
        """Stable hash of everything the tokenizers and the teacher depend on."""
        settings = self.group("data", "model", "train")
        if settings["precision"] == "fp32":  # the keys of runs made before the setting existed stay valid
            del settings["precision"]
        return _hash({"v": ARTIFACT_VERSION, **settings})

    def distill_key(self) -> str:
        """Stable hash of the distillation settings (combined with the teacher's folder).

        `distill_source` and `distill_precision` count only when they are not "recorded" and
        "fp32", so the keys of the runs made before they existed stay valid; `distill_compile`
        never counts: compiled and eager steps compute the same students, up to the order of
        floating-point sums (as thread counts do); nor does `distill_memory_gb`, which only
        decides which students train side by side."""
        settings = self.group("distill")
        del settings["distill_compile"], settings["distill_memory_gb"]
        if settings["distill_source"] == "recorded":
            del settings["distill_source"]
        if settings["distill_precision"] == "fp32":
            del settings["distill_precision"]
        return _hash({"v": ARTIFACT_VERSION, "students": STUDENT_VERSION, **settings})

    def finetune_key(self) -> str:
        """Stable hash of everything a fine-tuned attentionless Transformer depends on."""
        return _hash({"teacher": self.teacher_key(), "distill": self.distill_key(), **self.group("finetune"),
                      "seed": self.seed})

    def run_dir(self) -> Path:
        """runs/<corpus>-<pair>-<preset>-<hash>: the teacher's folder for this config."""
        return runs_root() / f"{self.corpus}-{self.pair}-{self.preset}-{self.teacher_key()}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **overrides) -> "Config":
        _check_fields(overrides)
        return dataclasses.replace(self, **overrides)


# What each numeric setting may be (every field of Config is in exactly one group).
_POSITIVE = ("vocab_size", "max_len", "batch_tokens", "d_model", "n_heads", "d_ff", "n_enc", "n_dec", "epochs",
             "warmup", "lr_factor", "beam", "distill_epochs", "distill_batch", "lr_alr", "lr_other",
             "finetune_epochs", "finetune_lr")
_NON_NEGATIVE = ("train_limit", "valid_limit", "seed", "length_penalty", "valid_bleu_sentences",
                 "distill_patience", "distill_sentences", "finetune_sentences", "distill_memory_gb")
_FRACTIONS = ("dropout", "label_smoothing", "distill_min_delta")

PRESET_VALUES = {
    # CI and workshops: minutes on 2 CPU cores. Five epochs underfit, so no dropout. Students: at
    # most 5 epochs of the whole training set (the grid takes about an hour on 2 cores).
    "tiny": dict(),
    # The CPU edition of the book; benchmarks/README.md has its measured times and scores on 2
    # cores. Its causal students' steps are compiled: epochs at L 1.71x (decoder) and 1.93x (causal cross)
    # faster (benchmarks/bench_compile.py --grid); at tiny compiling was slower overall, so it is off.
    # Its students stay fp32: bf16 steps ran only 1.24-1.34x faster at L here (1.9x at ELR-M),
    # and far slower on a CPU without native bfloat16 (2.6x with AVX-512, 200x with AVX2;
    # benchmarks/README.md).
    # One process trains a layer's eight ALR/ASLR students (4.5 GB) at once; two torchrun ranks
    # take them in turns of at most 2.5 GB each (bench_memory.py's peaks are in benchmarks/README.md).
    "small": dict(vocab_size=5000, d_model=128, n_heads=8, d_ff=512, n_enc=3, n_dec=3,
                  dropout=0.1, epochs=12, warmup=800, lr_factor=1.0, valid_bleu_sentences=300, distill_epochs=12,
                  distill_compile="causal", distill_memory_gb=5.0),
    # The paper's teacher: 6+6 layers, d_model 128, 8 heads, FF 512, MAX_LEN 50, 20 epochs.
    "paper": dict(corpus="iwslt2017", vocab_size=16000, d_model=128, n_heads=8, d_ff=512,
                  n_enc=6, n_dec=6, dropout=0.1, epochs=20, warmup=4000, lr_factor=1.0, distill_epochs=40,
                  distill_batch=2000, lr_alr=1e-4, valid_bleu_sentences=888, distill_source="on_the_fly",
                  precision="bf16", distill_precision="bf16"),
}


def get_config(preset: str | None = None, **overrides) -> Config:
    """The preset's config with any field overridden; None values mean 'keep the preset's'.

    >>> get_config("tiny", pair="fr-en", epochs=1).epochs
    1
    """
    preset = preset or os.environ.get("FFATTN_PRESET", "tiny")
    check_choice("preset", preset, PRESETS)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    _check_fields(overrides)
    values = {**PRESET_VALUES[preset], **overrides, "preset": preset}
    typed = {}
    for f in fields(Config):
        if f.name in values:
            typed[f.name] = _coerce(f, values[f.name])
    return Config(**typed)


def field_help() -> dict[str, str]:
    return {f.name: f.metadata["help"] for f in fields(Config)}


def runs_root() -> Path:
    """Where run folders live: $FFATTN_RUNS, else ~/.cache/ffattn/runs."""
    root = os.environ.get("FFATTN_RUNS")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "ffattn" / "runs"


def _coerce(f, value):
    kind = type(f.default)
    if isinstance(value, str) and kind is not str:
        try:
            return kind(float(value)) if kind is int else kind(value)
        except ValueError:
            raise ValueError(f"{f.name}={value!r} is not a valid {kind.__name__}") from None
    if kind is float and isinstance(value, int):
        return float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _check_fields(overrides: dict) -> None:
    names = {f.name for f in fields(Config)}
    bad = sorted(set(overrides) - names)
    if bad:
        raise ValueError(f"unknown setting(s) {bad}; valid settings: {sorted(names)}")


def check_choice(what: str, value, choices) -> None:
    """A ValueError naming the bad value and every valid choice."""
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose one of: {', '.join(map(str, choices))}")


def _hash(d: dict) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]
