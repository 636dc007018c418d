"""Train or load every artifact through one cache keyed by the full config.

The chapters and the CLI call only this room. `teacher(cfg)` returns the teacher of `cfg`:
loaded from `cfg.run_dir()` when it was trained under exactly this config, trained (or its
interrupted training resumed) otherwise.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from . import data as data_mod
from .config import Config, get_config
from .evaluate import evaluate, write_atomic
from .model import Transformer
from .train import check_config, load_checkpoint, train_teacher


@dataclass
class Teacher:
    """A trained teacher with everything needed to use it."""

    cfg: Config
    model: Transformer
    data: "data_mod.Data"
    run_dir: Path
    history: list = field(default_factory=list)

    @property
    def tokenizers(self):
        return self.data.tok

    def translate(self, sentences, beam: int | None = None):
        from .decode import translate
        return translate(self.model, self.tokenizers, sentences, beam=beam or self.cfg.beam,
                         length_penalty=self.cfg.length_penalty)


def teacher(cfg: Config | None = None, progress: bool = True, **overrides) -> Teacher:
    """The teacher of `cfg` (or of `get_config(**overrides)`): loaded if finished, else trained."""
    cfg = cfg.replace(**overrides) if cfg is not None and overrides else cfg or get_config(**overrides)
    run_dir = cfg.run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_config(cfg, run_dir)
    data = data_mod.prepare(cfg)
    path = run_dir / "teacher.pt"
    if path.exists():
        ck = load_checkpoint(path)
        check_config(ck, cfg, path)
        if ck["epoch"] >= cfg.epochs:
            model = Transformer.from_config(cfg, data.tok.src_vocab_size, data.tok.tgt_vocab_size)
            model.load_state_dict(ck["model"])
            return Teacher(cfg, model.eval(), data, run_dir, ck["history"])
    model, history = train_teacher(cfg, data, run_dir, progress=progress)
    return Teacher(cfg, model, data, run_dir, history)


def teacher_metrics(t: Teacher, split: str = "test", beam: int | None = None, progress: bool = True) -> dict:
    """sacreBLEU/chrF of the teacher on a whole split, cached as `<split>-beam<k>.json`."""
    beam = beam or t.cfg.beam
    name = f"{split}-beam{beam}"
    path = t.run_dir / "eval" / f"{name}.json"
    if path.exists():
        m = json.loads(path.read_text())
        m["hypotheses"] = (t.run_dir / "eval" / f"{name}.hyp.txt").read_text().splitlines()
        return m
    if split not in t.data.splits:
        t.data = data_mod.prepare(t.cfg, splits=(*t.data.splits, split))
    src, ref = t.data[split].src, t.data[split].tgt
    return evaluate(t.model, t.tokenizers, src, ref, beam=beam, length_penalty=t.cfg.length_penalty,
                    out_dir=t.run_dir / "eval", name=name, progress=progress)


def _write_config(cfg: Config, run_dir: Path) -> None:
    path = run_dir / "config.json"
    if path.exists():
        old = json.loads(path.read_text())
        mine = cfg.group("data", "model", "train")
        if {k: old.get(k) for k in mine} != mine:
            raise ValueError(f"{run_dir} holds a run of another config; refusing to mix them")
    write_atomic(path, json.dumps(cfg.to_dict(), indent=1))
