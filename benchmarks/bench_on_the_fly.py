"""Distillation from a recording against distillation on the fly: disk and time per epoch.

    python benchmarks/bench_on_the_fly.py --preset tiny
    python benchmarks/bench_on_the_fly.py --preset small --students encoder-0-ALR-M

For each student (one at a time, so the two ways are measured side by side in one process),
one epoch over all training sentences both ways, plus the held-out evaluation: wall seconds,
of which the student's own steps. "recorded" reads the float16 memory maps (recorded first if
missing, and that time is reported apart); "on_the_fly" runs the teacher on every batch and
writes nothing.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from ffattn import experiments
from ffattn.config import get_config
from ffattn.distill import OnTheFly, Student, train_students


def _student(name: str) -> Student:
    where, layer, scheme, size = name.rsplit("-", 3)
    return Student(where, int(layer), scheme, size)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--students", default="encoder-0-ALR-M,encoder-0-ALR-L,decoder-0-ALR-L,cross-0-ALR-L")
    args = p.parse_args(argv)
    cfg = get_config(args.preset, distill_epochs=1, distill_patience=0, distill_source="recorded")
    t = experiments.teacher(cfg, progress=False)
    started = time.perf_counter()
    recorded = experiments.recordings(t, progress=False)
    record_seconds = time.perf_counter() - started
    train, valid = t.data["train"], t.data["valid"]
    live = (OnTheFly(t.model, train.src_ids, train.tgt_ids), OnTheFly(t.model, valid.src_ids, valid.tgt_ids))
    print(f"preset {cfg.preset}, {len(train):,} training sentences, batch {cfg.distill_batch}, "
          f"{torch.get_num_threads()} threads")
    print(f"recording on disk: {recorded[0].nbytes / 2**30:.2f} GiB (train) + {recorded[1].nbytes / 2**30:.2f} GiB "
          f"(valid), {record_seconds:.0f} s to record or open; on the fly: 0 bytes\n")
    print("| student | recorded: epoch s | of which steps | on the fly: epoch s | of which steps | ratio |")
    print("|---|---|---|---|---|---|")
    for name in [n.strip() for n in args.students.split(",") if n.strip()]:
        s = _student(name)
        row = {}
        for way, (tr, va) in (("recorded", recorded), ("on_the_fly", live)):
            with tempfile.TemporaryDirectory() as folder:
                t0 = time.perf_counter()
                h = train_students(t.model, [s], tr, va, cfg, Path(folder), progress=False)[s][0]
                row[way] = (time.perf_counter() - t0, h["seconds"])
        (a, a_steps), (b, b_steps) = row["recorded"], row["on_the_fly"]
        print(f"| {name} | {a:.1f} | {a_steps:.1f} | {b:.1f} | {b_steps:.1f} | {b / a:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
