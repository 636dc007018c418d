"""Train or load every artifact through one cache keyed by the full config.

The chapters and the CLI call only this room. `teacher(cfg)` returns the teacher of `cfg`:
loaded from `cfg.run_dir()` when it was trained under exactly this config, trained (or its
interrupted training resumed) otherwise.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from . import data as data_mod
from . import distributed as dd
from .config import Config, check_choice, get_config
from .evaluate import evaluate
from .files import load_checkpoint, lock, write_atomic
from .model import Transformer
from .train import check_config, default_device, train_teacher


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
    """The teacher of `cfg` (or of `get_config(**overrides)`): loaded if finished, else trained.

    Under the teacher's lock: a second process asking for it meanwhile waits, then loads it."""
    cfg = cfg.replace(**overrides) if cfg is not None and overrides else cfg or get_config(**overrides)
    run_dir = cfg.run_dir()
    path = run_dir / "teacher.pt"
    with _job_lock(path, f"the teacher {run_dir.name}"):
        with dd.main_first():  # under torchrun rank 0 writes the config and tokenizers, the others read them
            _write_config(cfg, run_dir)
            data = data_mod.prepare(cfg)
        if path.exists():
            ck = load_checkpoint(path)
            check_config(ck, cfg, path)
            if ck["epoch"] >= cfg.epochs:
                model = Transformer.from_config(cfg, data.tok.src_vocab_size, data.tok.tgt_vocab_size)
                model.load_state_dict(ck["model"])
                return Teacher(cfg, model.to(default_device()).eval(), data, run_dir, ck["history"])
        model, history = train_teacher(cfg, data, run_dir, progress=progress)
        return Teacher(cfg, model, data, run_dir, history)


@contextlib.contextmanager
def _job_lock(path, what):
    """The artifact's lock against other jobs; under torchrun rank 0 holds it for all the ranks
    of this job, which build the artifact together (the teacher's data-parallel training)."""
    if not dd.active():
        with lock(path, what):
            yield
    elif dd.is_main():
        with lock(path, what):
            dd.barrier()
            yield
            dd.barrier()
    else:
        dd.barrier()
        yield
        dd.barrier()


def teacher_metrics(t: Teacher, split: str = "test", beam: int | None = None, progress: bool = True) -> dict:
    """sacreBLEU/chrF of the teacher on a whole split, cached as `<split>-beam<k>.json`."""
    beam = beam or t.cfg.beam
    name = f"{split}-beam{beam}"
    path = t.run_dir / "eval" / f"{name}.json"
    with lock(path, f"the teacher's scores on {split}"):
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
        try:  # a setting added since the folder was made reads as its default, as the key does
            theirs = cfg.replace(**{k: v for k, v in old.items() if k in cfg.to_dict()})
        except ValueError:
            theirs = None
        if theirs is None or theirs.teacher_key() != cfg.teacher_key():
            raise ValueError(f"{run_dir} holds a run of another config; refusing to mix them")
    write_atomic(path, json.dumps(cfg.to_dict(), indent=1))


# ----------------------------------------------------------------------------- students and the grid

@dataclass(frozen=True)
class Cell:
    """One row of the results: a set of replacements installed into the teacher at once."""

    group: str       # encoder, decoder, cross, cross_causal, attentionless, attentionless_causal
    scheme: str
    size: str
    students: tuple  # Student per replaced slot
    trained: bool = True

    @property
    def name(self) -> str:
        return f"{self.group}-{self.scheme}-{self.size}" + ("" if self.trained else "-untrained")


def all_layers(cfg, where, scheme, size):
    """One Student per layer of `where`: a replacement in every layer at once."""
    from .distill import Student
    n = cfg.n_enc if where == "encoder" else cfg.n_dec
    return tuple(Student(where, i, scheme, size) for i in range(n))


def grid(cfg, sizes=("XS", "S", "M", "L"), full_size: str = "L", floor_size: str = "M") -> list[Cell]:
    """The paper's grid for one direction, every attention type replaced in all its layers:
    encoder {ALR, ALRR, ASLR, ELR} x sizes; decoder self-attention ALR x sizes; cross-attention
    ALR x sizes, the paper's form and the causal form; the attentionless Transformer (both
    cross forms) at `full_size`; untrained students at `floor_size` as the floor."""
    from .config import SCHEMES
    cells = [Cell("encoder", sc, sz, all_layers(cfg, "encoder", sc, sz)) for sc in SCHEMES for sz in sizes]
    for where in ("decoder", "cross", "cross_causal"):
        cells += [Cell(where, "ALR", sz, all_layers(cfg, where, "ALR", sz)) for sz in sizes]
    for group, cross in (("attentionless", "cross"), ("attentionless_causal", "cross_causal")):
        parts = sum((all_layers(cfg, w, "ALR", full_size) for w in ("encoder", "decoder", cross)), ())
        cells.append(Cell(group, "ALR", full_size, parts))
    for where in ("encoder", "decoder", "cross"):
        cells.append(Cell(where, "ALR", floor_size, all_layers(cfg, where, "ALR", floor_size), trained=False))
    return cells


def distill_dir(t: Teacher) -> Path:
    return t.run_dir / f"distill-{t.cfg.distill_key()}"


def all_sources(cfg) -> set:
    """Every recording a student of this teacher can learn from (one per layer and kind)."""
    enc = {("encoder", i, sc) for i in range(cfg.n_enc) for sc in ("ALR", "ALRR", "ELR")}
    return enc | {(w, i, "ALR") for i in range(cfg.n_dec) for w in ("decoder", "cross")}


def recordings(t: Teacher, sentences: int | None = None, progress: bool = True):
    """The teacher's recorded activations on the first `sentences` training sentences (default:
    the config's `distill_sentences`, 0 = all) and on the whole validation split, cached.

    A recording depends only on the teacher and the sentences recorded, so it lives in the
    teacher's folder keyed by their count: changing any distillation setting (epochs, learning
    rates, the stopping rule) never records the teacher again. It always holds every source
    (`all_sources`), so asking for other students later never rewrites a recording another run
    may be reading. With `distill_source` "on_the_fly" nothing is recorded: the two returned
    objects run the teacher on each batch instead (`distill.OnTheFly`)."""
    from .distill import OnTheFly, Recording, record
    sources = all_sources(t.cfg)
    train = t.data["train"]
    n = sentences if sentences is not None else t.cfg.distill_sentences
    n = min(n or len(train), len(train))
    if t.cfg.distill_source == "on_the_fly":  # nothing on disk: the teacher runs on every batch
        return OnTheFly(t.model, train.src_ids[:n], train.tgt_ids[:n]), valid_recording(t, progress)
    folder = t.run_dir / "recordings"
    with lock(folder / f"train-{n}", f"the teacher's recording of {n} training sentences"):
        larger = sorted((int(json.loads((f / "meta.json").read_text())["sentences"]), f)
                        for f in folder.glob("train-*") if (f / "meta.json").exists())
        larger = [(k, f) for k, f in larger if k >= n]
        if larger and larger[0][1].name != f"train-{n}":  # the first n sentences of a longer recording
            rec_train = Recording(larger[0][1], limit=n)
        else:
            rec_train = record(t.model, train.src_ids[:n], train.tgt_ids[:n], sources, folder / f"train-{n}",
                               progress=progress)
    return rec_train, valid_recording(t, progress)


def valid_recording(t: Teacher, progress: bool = True):
    """The teacher's recording of the validation split alone, for held-out MSEs: about 4% of
    the training recording at `tiny`, made in seconds (or on the fly, as `recordings`)."""
    from .distill import OnTheFly, record
    valid = t.data["valid"]
    if t.cfg.distill_source == "on_the_fly":
        return OnTheFly(t.model, valid.src_ids, valid.tgt_ids)
    folder = t.run_dir / "recordings" / f"valid-{len(valid)}"
    with lock(folder, "the teacher's recording of the validation split"):
        return record(t.model, valid.src_ids, valid.tgt_ids, all_sources(t.cfg), folder, progress=progress)


def students_dir(t: Teacher) -> Path:
    return distill_dir(t) / "students"


def train_students(t: Teacher, wanted, progress: bool = True) -> dict:
    """Train (or resume) every student of `wanted` not finished in the cache; {Student: history}.

    Holds only one recording's students in memory at a time and returns no weights: the grid
    loads each cell's students when it evaluates that cell."""
    from .distill import finished_history
    from .distill import train_students as train
    wanted = sorted(set(wanted), key=lambda s: s.name)
    done = {s: finished_history(s, t.cfg, students_dir(t)) for s in wanted}
    if all(h is not None for h in done.values()):  # nothing to train: no recording needed (a bundle has none)
        return done
    rec_train, rec_valid = recordings(t, progress=progress)
    return train(t.model, wanted, rec_train, rec_valid, t.cfg, students_dir(t), progress)


def students(t: Teacher, wanted, progress: bool = True) -> dict:
    """Train or load students through the cache: {Student: (module, history)}, all in memory."""
    from .distill import load_student
    train_students(t, wanted, progress)
    return {s: load_student(t.model, s, t.cfg, students_dir(t)) for s in sorted(set(wanted), key=lambda s: s.name)}


def cell_model(t: Teacher, cell: Cell, trained: dict | None = None):
    """The teacher with the cell's replacements installed (trained, or fresh for the floor)."""
    from .distill import new_student
    from .replace import install
    if cell.trained:
        trained = trained or students(t, cell.students, progress=False)
        modules = {s.key: trained[s][0] for s in cell.students}
    else:
        modules = {s.key: new_student(t.model, s, t.cfg.max_len, t.cfg.seed) for s in cell.students}
    return install(t.model, modules).eval()


def evaluate_cell(t: Teacher, cell: Cell, trained: dict | None = None, split: str = "test",
                  progress: bool = True) -> dict:
    """sacreBLEU of the teacher with the cell installed, cached beside the students."""
    return _scored(t, cell.name, lambda: cell_model(t, cell, trained), split, progress)


def _scored(t: Teacher, name: str, model, split: str = "test", progress: bool = True) -> dict:
    """sacreBLEU and chrF of `model()` (built only when not cached) on a split, greedy or
    the config's beam, cached in the distillation folder's eval/ under `name`."""
    beam = t.cfg.beam
    out_dir = distill_dir(t) / "eval"
    path = out_dir / f"{name}.{split}-beam{beam}.json"
    with lock(path, f"the scores of {name}"):
        if path.exists():
            return json.loads(path.read_text())
        if split not in t.data.splits:
            t.data = data_mod.prepare(t.cfg, splits=(*t.data.splits, split))
        src, ref = t.data[split].src, t.data[split].tgt
        m = evaluate(model(), t.tokenizers, src, ref, beam=beam, length_penalty=t.cfg.length_penalty,
                     out_dir=out_dir, name=f"{name}.{split}-beam{beam}", progress=progress)
    m.pop("hypotheses")
    return m


def budget_line(cfg: Config, n_train: int) -> str:
    """The distillation budget of a config, in words: printed next to every results table."""
    n = min(cfg.distill_sentences or n_train, n_train)
    rule = (f"until the held-out MSE improved by less than {cfg.distill_min_delta:.0%} for "
            f"{cfg.distill_patience} epochs (at most {cfg.distill_epochs})" if cfg.distill_patience > 0
            else f"for {cfg.distill_epochs} epochs")
    return (f"each student distilled on {n:,} of {n_train:,} training sentences, batches of "
            f"{cfg.distill_batch}, {rule}; lr {cfg.lr_alr:g} (ALR), {cfg.lr_other:g} (others)")


def grid_progress(cfg: Config, cells: list[Cell] | None = None):
    """Where the grid of `cfg` stands in the cache, read from its checkpoints' histories alone (no
    teacher, no data, no weights: safe beside a grid that is running, even one still training its
    teacher). One row per student: its state ("finished", "started", "waiting", "other settings"
    for a checkpoint of another distillation key, or "damaged"), epochs, optimiser steps, seconds of training
    steps, last held-out MSE and why it stopped; `df.attrs` has the teacher's epochs (None when
    it has none yet), the cells scored on the test split and the folders read. `cells`: a part
    of the grid (the budget study's), by default all of it."""
    import pandas as pd
    run_dir = cfg.run_dir()
    folder = run_dir / f"distill-{cfg.distill_key()}"
    path = run_dir / "teacher.pt"
    teacher_epochs = load_checkpoint(path, mmap=True)["epoch"] if path.exists() else None
    cells = cells if cells is not None else grid(cfg)
    rows = []
    for s in sorted({s for c in cells if c.trained for s in c.students}, key=lambda s: s.name):
        row = {"student": s.name, "where": s.where, "layer": s.layer, "scheme": s.scheme, "size": s.size,
               "state": "waiting", "epochs": 0, "steps": 0, "seconds": 0.0, "heldout_mse": float("nan"),
               "stopped": None}
        ck_path = folder / "students" / f"{s.name}.pt"
        try:
            ck = load_checkpoint(ck_path, mmap=True) if ck_path.exists() else None
        except RuntimeError:  # damaged: a run would stop on it with the same message
            ck, row["state"] = None, "damaged"
        if ck is not None:
            h = ck.get("history", [])
            row.update(epochs=len(h), steps=sum(e["steps"] for e in h), seconds=sum(e["seconds"] for e in h),
                       heldout_mse=h[-1]["heldout_mse"] if h else float("nan"), stopped=ck.get("stopped"),
                       state="other settings" if ck.get("distill_key") != cfg.distill_key() else
                       "finished" if ck.get("finished") else "started")
            del ck
        rows.append(row)
    df = pd.DataFrame(rows, columns=["student", "where", "layer", "scheme", "size", "state", "epochs", "steps",
                                     "seconds", "heldout_mse", "stopped"])
    df.attrs.update(teacher_epochs=teacher_epochs, run_dir=str(run_dir), distill_dir=str(folder),
                    cells=len(cells), cells_scored=sum((folder / "eval" / f"{c.name}.test-beam{cfg.beam}.json").exists()
                                                      for c in cells))
    return df


def run_grid(t: Teacher, cells: list[Cell] | None = None, progress: bool = True):
    """Train or load every student of the grid, evaluate every cell; one row per cell.

    Each row carries its budget: the epochs its students ran (the most over its layers),
    their optimiser steps, sentences seen and seconds; `df.attrs["histories"]` holds every
    student's history. Only one cell's students are in memory at a time."""
    import pandas as pd

    from .distill import budget, heldout_mse, load_student, new_student, stop_reason
    cells = cells or grid(t.cfg)
    started = time.time()
    needed = {s for c in cells if c.trained for s in c.students}
    if dd.active():  # under torchrun: each rank trains its share, then all read every history
        train_students(t, _my_share(t.cfg, needed), progress and dd.is_main())
        dd.barrier()
    histories = train_students(t, needed, progress)
    train_seconds = time.time() - started
    base = teacher_metrics(t, "test", progress=progress)
    if dd.active():  # ... and scores its share of the cells; the rows below then read the scores
        for cell in cells[dd.shard(len(cells))]:
            evaluate_cell(t, cell, progress=False)
        dd.barrier()
    rec_valid = valid_recording(t, progress=False)
    rec_valid.device = next(t.model.parameters()).device  # the floors' students live with the teacher
    n_train = len(t.data["train"])
    n_distill = min(t.cfg.distill_sentences or n_train, n_train)
    rows = []
    for cell in tqdm(cells, desc="evaluating the grid", disable=not progress, leave=False):
        if cell.trained:
            loaded = {s: load_student(t.model, s, t.cfg, students_dir(t)) for s in cell.students}
            mods = [loaded[s][0] for s in cell.students]
            spent = [budget(histories[s], t.cfg.distill_patience) for s in cell.students]
            mse = [b["heldout_mse"] for b in spent]
            at_cap = sum(stop_reason([h["heldout_mse"] for h in histories[s]], t.cfg.distill_patience,
                                     t.cfg.distill_min_delta, t.cfg.distill_epochs) == "cap" for s in cell.students)
        else:
            loaded = None
            mods = [new_student(t.model, s, t.cfg.max_len, t.cfg.seed) for s in cell.students]
            spent, at_cap = [budget([]) for _ in cell.students], 0
            mse = [heldout_mse(mod, rec_valid, s.source) for mod, s in zip(mods, cell.students)]
        m = evaluate_cell(t, cell, loaded, progress=False)
        rows.append({"pair": t.cfg.pair, "group": cell.group, "scheme": cell.scheme, "size": cell.size,
                     "trained": cell.trained, "bleu": m["bleu"], "chrf": m["chrf"],
                     "bleu_rel": round(100 * m["bleu"] / base["bleu"], 1) if base["bleu"] else float("nan"),
                     "heldout_mse": float(np.mean(mse)) if mse else float("nan"),
                     "replaced_params": sum(p.numel() for mod in mods for p in mod.parameters() if p.requires_grad),
                     "students": len(cell.students),
                     "distill_sentences": n_distill if cell.trained else 0,
                     "epochs": max(b["epochs"] for b in spent),
                     "steps": sum(b["steps"] for b in spent),
                     "sentences_seen": max(b["sentences_seen"] for b in spent),
                     "distill_seconds": round(sum(b["seconds"] for b in spent), 1),
                     "students_at_cap": at_cap})
        del loaded, mods
    teacher_row = {"pair": t.cfg.pair, "group": "teacher", "scheme": "-", "size": "-", "trained": True,
                   "bleu": base["bleu"], "chrf": base["chrf"], "bleu_rel": 100.0, "heldout_mse": 0.0,
                   "replaced_params": 0, "students": 0, "distill_sentences": 0, "epochs": 0, "steps": 0,
                   "sentences_seen": 0, "distill_seconds": 0.0, "students_at_cap": 0}
    df = pd.DataFrame([teacher_row] + rows)
    df["budget"] = budget_line(t.cfg, n_train)
    df.attrs["train_seconds"] = train_seconds
    df.attrs["histories"] = histories  # {Student: its epochs}, for who reads the curves (the budget study)
    return df


def finetuned(t: Teacher, group: str = "attentionless_causal", progress: bool = True) -> dict:
    """The attentionless Transformer of `group` at size L, fine-tuned end to end on the
    translation loss (`finetune.finetune`, beyond the paper), trained or loaded through the
    cache; returns {"model", "history", "key"} and the test scores: "bleu", "chrf", and
    "bleu_before" (as distilled), "bleu_teacher", "gap_closed" (the share of the gap between
    them that the fine-tune closed)."""
    from .finetune import LEAK, finetune
    cells = {c.group: c for c in grid(t.cfg) if c.group.startswith("attentionless")}
    check_choice("attentionless group", group, sorted(cells))
    cell, key = cells[group], t.cfg.finetune_key()
    if any(s.where == "cross" for s in cell.students):  # refused before any student is loaded or trained
        raise ValueError(LEAK)
    path = distill_dir(t) / "finetune" / f"{cell.name}-{key}.pt"
    with lock(path, f"the fine-tuned {cell.name}"):
        # from the distilled students, or, when a checkpoint holds the weights, from fresh ones it overwrites
        start = dataclasses.replace(cell, trained=False) if path.exists() else cell
        model = cell_model(t, start)
        history = finetune(model, t.data, path, key, t.cfg.finetune_epochs, t.cfg.finetune_lr,
                           t.cfg.finetune_sentences, t.cfg.label_smoothing, t.cfg.seed,
                           t.cfg.valid_bleu_sentences, t.cfg.precision, progress)
    m = _scored(t, f"{cell.name}-finetuned-{key}", lambda: model, "test", progress)
    before = evaluate_cell(t, cell, progress=progress)["bleu"]
    teacher_bleu = teacher_metrics(t, "test", progress=progress)["bleu"]
    gap = teacher_bleu - before
    return {"model": model, "history": history, "key": key, "bleu": m["bleu"], "chrf": m["chrf"],
            "bleu_before": before, "bleu_teacher": teacher_bleu,
            "gap_closed": (m["bleu"] - before) / gap if gap > 0 else float("nan")}


def _my_share(cfg: Config, students) -> list:
    """This rank's students, balanced by cost: a shallow FF's FLOPs per input vector are twice
    its parameters, so the grid is shared out by parameters (`replace.count_params`), not count."""
    from .replace import count_params
    students = sorted(students, key=lambda s: s.name)
    costs = [count_params(s.scheme, s.size, cfg.max_len, cfg.d_model, cfg.n_heads, s.where) for s in students]
    return [students[i] for i in dd.balanced(costs)[dd.rank()]]


def reproduce(cfg: Config, pairs=("de-en",), progress: bool = True):
    """The whole grid for each pair: train or load teachers and students, evaluate, and write
    results.csv, results.md and figures to runs/results-<corpus>-<preset>-<hash>/.

    Under torchrun the teacher trains data-parallel, the students and cells are shared out
    among the ranks, and rank 0 writes the files: the same results as one process."""
    import pandas as pd

    from .config import PAIRS
    from .report import write_report
    frames = []
    for pair in pairs:  # every pair checked before anything is trained
        check_choice("pair", pair, PAIRS)
    for pair in pairs:
        t = teacher(cfg.replace(pair=pair), progress=progress)
        started = time.time()
        df = run_grid(t, progress=progress)
        df["grid_seconds"] = round(time.time() - started, 1)
        if dd.is_main():
            df.to_csv(distill_dir(t) / "results.csv", index=False)
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    key = cfg.replace(pair="de-en").teacher_key()[:6] + cfg.distill_key()[:6]  # teacher and students both
    folder = cfg.run_dir().parent / f"results-{cfg.corpus}-{cfg.preset}-{key}"
    files = write_report(df, folder) if dd.is_main() else {}  # under torchrun, rank 0 writes
    dd.barrier()
    return df, files
