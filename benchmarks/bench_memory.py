"""Peak memory of the grid's largest group of students, with and without `distill_memory_gb`.

    OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 benchmarks/bench_memory.py --preset small --memory-gb 0
    OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 benchmarks/bench_memory.py --preset small
    python benchmarks/bench_memory.py --preset small          # one process, as on Colab

Each rank distils the largest group of students that learn from one recording: encoder layer
`rank`'s ALR and ASLR students, XS to L (eight; 4.5 GB at `distill.BYTES_PER_PARAM`), as the grid's two ranks held two such groups at once on 6 Dec. Two epochs
(from the second on, a student also keeps its best weights) on the first `--sentences` training
sentences (the memory does not depend on how many), in a scratch copy of the cache, so the
real cache keeps its students. Every process samples its own
anonymous memory (RssAnon: its own pages, what the limit is about) and reads its peak RSS
(VmHWM: that plus the pages of the memory-mapped recording it touched, which the kernel can
drop); rank 0 prints both summed over the ranks (torchrun's launcher, about 0.15 GB, not
counted). Run it with `--memory-gb 0` (no limit) and without (the preset's limit), one after
the other: the two lines side by side are the comparison; benchmarks/README.md has them. `--heap off`
trains without `train.heap_memory` (glibc's own policy for large buffers), to compare its cost.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench_compile import _scratch_teacher


def _status_kb(field: str) -> int:
    """A field of /proc/self/status in kB (Linux), 0 where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class PeakAnon(threading.Thread):
    """The highest RssAnon of this process, sampled every `every` seconds until `stop()`."""

    def __init__(self, every: float = 0.05):
        super().__init__(daemon=True)
        self.every, self.peak_kb, self._done = every, 0, threading.Event()

    def run(self):
        while not self._done.is_set():
            self.peak_kb = max(self.peak_kb, _status_kb("RssAnon"))
            time.sleep(self.every)

    def stop(self) -> int:
        self._done.set()
        self.join()
        return max(self.peak_kb, _status_kb("RssAnon"))


def group(layer: int) -> list:
    """The eight students of encoder `layer` that read the ALR recording, the grid's largest group
    (the grid's ranks share a group out by cost: on 6 Dec each rank held seven of them)."""
    from ffattn.distill import Student
    return [Student("encoder", layer, scheme, size) for scheme in ("ALR", "ASLR") for size in ("XS", "S", "M", "L")]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small")
    p.add_argument("--memory-gb", type=float, default=None,
                   help="distill_memory_gb for the machine (default: the preset's; 0: no limit)")
    p.add_argument("--sentences", type=int, default=2000, help="training sentences of each epoch (default 2000)")
    p.add_argument("--epochs", type=int, default=2,
                   help="epochs (default 2: from the second on, a student also keeps its best weights)")
    p.add_argument("--heap", default="on", choices=("on", "off"),
                   help="train.heap_memory while the students train (on, the default) or glibc's own policy (off)")
    args = p.parse_args(argv)
    if args.sentences <= 0:
        p.error(f"--sentences {args.sentences}: give a positive number of sentences")
    if args.epochs <= 0:
        p.error(f"--epochs {args.epochs}: give a positive number of epochs")
    if args.memory_gb is not None and args.memory_gb < 0:
        p.error(f"--memory-gb {args.memory_gb}: give 0 (no limit) or more")

    from ffattn import distributed as dd
    from ffattn import experiments, train
    from ffattn.config import get_config
    from ffattn.distill import BYTES_PER_PARAM, memory_share, training_bytes, turns

    train.HEAP_MEMORY = args.heap == "on"
    dd.init()
    over = {"distill_memory_gb": args.memory_gb} if args.memory_gb is not None else {}
    cfg = get_config(args.preset, distill_sentences=args.sentences, distill_epochs=args.epochs, distill_patience=0,
                     **over)
    if dd.world() > cfg.n_enc:
        p.error(f"{dd.world()} ranks: one encoder layer each, and {args.preset} has {cfg.n_enc}")
    with dd.main_first():  # rank 0 trains the teacher and records it if the cache lacks them
        t = experiments.teacher(cfg, progress=dd.is_main())
        experiments.recordings(t, progress=dd.is_main())
    scratch = dd.broadcast_object(tempfile.mkdtemp(prefix="bench-memory-") if dd.is_main() else None)
    if dd.is_main():
        _scratch_teacher(t, Path(scratch))
    dd.barrier()
    os.environ["FFATTN_RUNS"] = scratch
    try:
        tm = experiments.teacher(cfg, progress=False)
        mine = group(dd.rank())
        limit = memory_share(cfg, dd.device())
        plan = turns(mine, [training_bytes(s, cfg) for s in mine], limit)
        peak = PeakAnon()
        before_kb = _status_kb("RssAnon")
        peak.start()
        t0 = time.perf_counter()
        experiments.train_students(tm, mine, progress=dd.is_main())
        seconds = time.perf_counter() - t0
        anon_kb, hwm_kb = peak.stop(), _status_kb("VmHWM")
        summed = dd.sum_floats([anon_kb / 1e6, hwm_kb / 1e6, before_kb / 1e6, seconds])
        dd.barrier()
    finally:
        if dd.is_main():
            shutil.rmtree(scratch, ignore_errors=True)
    if dd.is_main():
        gb = sum(training_bytes(s, cfg) for s in mine) / 1e9
        print(f"{args.preset}, {dd.world()} process(es), heap memory {args.heap}, distill_memory_gb={cfg.distill_memory_gb:g} "
              f"({limit / 1e9:.2f} GB a process; 0 is no limit): rank 0's group of {len(mine)} students "
              f"({gb:.2f} GB at {BYTES_PER_PARAM} bytes a parameter) in {len(plan)} turn(s): "
              + "; ".join(", ".join(f"{s.scheme}-{s.size}" for s in turn) for turn in plan))
        print(f"peak anonymous memory summed over the ranks: {summed[0]:.2f} GB "
              f"(before the students: {summed[2]:.2f} GB); peak RSS summed: {summed[1]:.2f} GB; "
              f"{args.epochs} epoch(s) of {args.sentences} sentences: {summed[3] / dd.world():.0f} s a rank on average")
    dd.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
