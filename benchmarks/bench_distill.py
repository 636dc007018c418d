"""Student training against the machine's peak: achieved GFLOP/s of whole distillation epochs.

For one student of each scheme at M and L (encoder ALR, ASLR, ALRR, ELR) and the decoder and
both cross-attention forms at L, on the cached teacher of a preset:

- FLOPs: every matmul of a training step (forward and backward) counted by
  `torch.utils.flop_counter`, not assumed. A step's count is linear in the batch's sentences,
  its longest sentence and (cross-attention) its longest source, so it is counted at six
  shapes, fitted, checked at a seventh and summed over the epoch's real batches.
- time: one whole epoch as `distill.train_students` runs it (batches gathered from the
  recording, the steps, the held-out evaluation), in a temporary folder.
- the machine: a square fp32 matmul (n = 2048 and 4096), best of several runs, measured
  before and after the students in the same process; with `--precision bf16` (the students'
  steps under bfloat16 autocast, `distill_precision`) a square bf16 matmul too, so each ratio
  is given against both rates: the issue's target is the fp32 one. `--precision fp32 bf16`
  runs each student's epoch in both, one after the other, and prints the speed ratio; so does
  `--batch 128 512` for batch sizes (an epoch at a larger batch is fewer, taller steps: the same
  sentences, but not the same training; chapter 8 measures what it does to the students), and
  `--width spans full` for the padding: `spans` (the default, `replace.SKIP_PADDING`) skips the
  zeros beyond a batch's longest sentence in the non-causal FF students' products, `full`
  multiplies all max_len positions (the same function, as before). Each row also gives the
  full-width FLOPs over its time: the rate the old, dense step would have needed to match it.
- the allocator: `--heap off on` runs each student's epoch with glibc's own policy for large
  buffers (over 32 MB: mapped fresh from the kernel at every step, page faults and zeroing
  included) and under `train.heap_memory` (the default: kept in the heap and reused), side by side.
- another revision's causal pass: `--against REV` also runs each causal student's epoch with
  `replace._causal_pass` as it stood at git revision REV (loaded from `git show`), right after
  this tree's: the same students, batches and weights, side by side in one run.
- several processes: `--ranks 2` then shares the same students out by their counted FLOPs
  among 2 one-thread processes running at once, as `make edition` and `torchrun` run the grid
  (`OMP_NUM_THREADS=1`), each training its share's epochs one after another, and gives the
  machine's achieved rate: all the FLOPs over the wall time from the common start to the last
  process's end, against the same square matmul (all threads) as the one-process figures.

    python benchmarks/bench_distill.py --preset tiny [--batch 128 512] [--precision fp32 bf16] [--width spans full]
        [--heap off on] [--compile causal] [--students 'encoder ALR-L,decoder ALR-L'] [--against 5223e82] [--ranks 2]
        [--out bench_distill.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from ffattn import experiments, replace, train
from ffattn.config import get_config
from ffattn.distributed import balanced
from ffattn.distill import Student, _adam, epoch_batches, masked_mse, new_student, train_students
from ffattn.estimate import matmul_gflops

STUDENTS = [Student("encoder", 0, sc, sz) for sc in ("ALR", "ASLR", "ALRR", "ELR") for sz in ("M", "L")]
STUDENTS += [Student("decoder", 0, "ALR", "L"), Student("cross", 0, "ALR", "L"), Student("cross_causal", 0, "ALR", "L")]


def step_flops(module, d: int, B: int, T: int, S: int, cross: bool) -> int:
    """Counted FLOPs of one training step (forward, backward) on B random sentences of T tokens."""
    x, pad = torch.randn(B, T, d), torch.zeros(B, T, dtype=torch.bool)
    mem, mpad = (torch.randn(B, S, d), torch.zeros(B, S, dtype=torch.bool)) if cross else (None, None)
    opt = _adam([p for p in module.parameters() if p.requires_grad], 1e-9)
    with FlopCounterMode(display=False) as fc:
        pred = module.distill_forward(x, pad, mem, mpad)
        masked_mse(pred, torch.zeros_like(pred), pad).backward()
    opt.zero_grad(set_to_none=True)
    return fc.get_total_flops()


def epoch_flops(t, s: Student, rec, batch: int, packed: bool = False) -> int:
    """FLOPs of one epoch's training steps, counted: a step costs B (a + b T + c S) + e + f T + g S
    for B sentences whose longest has T tokens (and, for cross-attention, whose longest source has S):
    fitted to counts at six shapes, checked at a seventh, summed over the epoch's real batches.
    `packed` (a causal student under `replace.PACK_CAUSAL`): B T is the batch's real tokens, the
    rows its packed pass multiplies."""
    import numpy as np
    cfg, d = t.cfg, t.cfg.d_model
    module = new_student(t.model, s, cfg.max_len, cfg.seed)
    cross = s.where.startswith("cross")
    shapes = [(B, T, S) for B in (4, 8) for T, S in ((10, 10), (30, 10), (10, 30))]
    terms = lambda B, T, S: [B, B * T, B * S, 1, T, S]  # noqa: E731
    A = np.array([terms(*x) for x in shapes], dtype=float)
    f = np.array([step_flops(module, d, B, T, S, cross) for B, T, S in shapes], dtype=float)
    coef = np.linalg.lstsq(A, f, rcond=None)[0]
    check = step_flops(module, d, 6, 20, 20, cross)
    if abs(np.dot(terms(6, 20, 20), coef) - check) > 1e-6 * check or np.abs(A @ coef - f).max() > 1e-6 * f.max():
        raise RuntimeError(f"{s.name}: FLOPs of a step are not linear in its shape ({f}, {check})")
    lengths = rec.src_len if s.where == "encoder" else rec.tgt_len
    batches = epoch_batches(lengths, batch, cfg.seed, 0)
    def row(i):
        B, T, S = len(i), int(lengths[i].max()), int(rec.src_len[i].max())
        x = terms(B, T, S)
        if packed:
            x[1] = int(lengths[i].sum())
        return x
    return int(sum(np.dot(row(i), coef) for i in batches))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--pair", default="de-en")
    p.add_argument("--batch", type=int, nargs="+", default=None,
                   help="sentences per batch, one or more, side by side (default: the preset's)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--precision", nargs="+", default=None, choices=("fp32", "bf16"),
                   help="distill_precision of the students' steps, one or both, side by side (default: the preset's)")
    p.add_argument("--width", nargs="+", default=None, choices=("spans", "full"),
                   help="the non-causal students' products: padding skipped (spans), at full width, or both side by side "
                        "(default: replace.SKIP_PADDING's)")
    p.add_argument("--heap", nargs="+", default=None, choices=("on", "off"),
                   help="train.heap_memory during training (on: large buffers reused from the heap) or glibc's "
                        "own policy (off), or both side by side (default: train.HEAP_MEMORY's)")
    p.add_argument("--compile", default=None, choices=("off", "causal", "all"),
                   help="distill_compile (default: the preset's)")
    p.add_argument("--students", default=None,
                   help="comma-separated names as printed, e.g. 'encoder ALR-L,decoder ALR-L'")
    p.add_argument("--ranks", type=int, default=None,
                   help="then the same students shared out among this many one-thread processes at once")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # K/R,DIR: one of --ranks' processes
    p.add_argument("--against", default=None, metavar="REV",
                   help="also run the causal students with replace._causal_pass of this git revision")
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    args = p.parse_args(argv)
    against = _causal_pass_at(args.against, p) if args.against else None
    if args.ranks is not None and args.ranks < 2:
        p.error(f"--ranks {args.ranks}: give 2 or more processes (one process is the run without --ranks)")
    if args.ranks and (len(args.batch or []) > 1 or len(args.precision or []) > 1 or len(args.width or []) > 1
                       or len(args.heap or []) > 1 or args.against):
        p.error("--ranks takes one --batch, one --precision, one --width, one --heap and no --against: "
                "the processes run one setting")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = get_config(args.preset, pair=args.pair)
    cfg = cfg.replace(distill_epochs=1, distill_patience=0, **({"distill_compile": args.compile} if args.compile else {}))
    precisions = list(dict.fromkeys(args.precision or [cfg.distill_precision]))  # at most fp32, bf16
    batches = list(dict.fromkeys(args.batch or [cfg.distill_batch]))
    if min(batches) <= 0:
        p.error(f"--batch {min(batches)}: a batch holds at least one sentence")
    widths = list(dict.fromkeys(args.width or ["spans" if replace.SKIP_PADDING else "full"]))
    heaps = list(dict.fromkeys(args.heap or ["on" if train.HEAP_MEMORY else "off"]))
    impls = ["this"] + ([args.against] if args.against else [])
    settings = [(prec, b, w, c, h) for b in batches for w in widths for prec in precisions for c in impls
                for h in heaps]  # one after the other
    wanted = [n.strip() for n in args.students.split(",")] if args.students else [_label(s) for s in STUDENTS]
    unknown = sorted(set(wanted) - {_label(s) for s in STUDENTS})
    if unknown:
        p.error(f"unknown students {unknown}; choose among: {', '.join(_label(s) for s in STUDENTS)}")
    students = [s for s in STUDENTS if _label(s) in wanted]
    t = experiments.teacher(cfg, progress=False)
    rec_train, rec_valid = experiments.recordings(t, progress=False)
    if args.worker:
        with _width(settings[0][2]), _heap(settings[0][4]):  # --ranks: one setting, this tree's code
            return _worker(args.worker, t, students, rec_train, rec_valid, cfg.replace(
                distill_precision=settings[0][0], distill_batch=settings[0][1]))
    peak = {"fp32": matmul_gflops("cpu", sizes=(2048, 4096))}
    if "bf16" in precisions:
        peak["bf16"] = matmul_gflops("cpu", sizes=(2048, 4096), dtype=torch.bfloat16)
    print(f"{args.preset}: {len(rec_train):,} sentences an epoch, batch {', '.join(map(str, batches))}, "
          f"width {', '.join(widths)}, heap memory {', '.join(heaps)}, "
          f"{torch.get_num_threads()} threads, compile {cfg.distill_compile}; square matmul "
          + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peak.items()))
    rows = []
    for s in students:
        counted = {}
        mine = [c for c in impls if c == "this" or _is_causal(s)]  # --against changes the causal students only
        for b in batches:
            for w in {*widths, "full"}:
                for c in mine:
                    with _width(w), _causal(against if c != "this" else None):
                        counted[b, w, c] = epoch_flops(t, s, rec_train, b,
                                                       packed=c == "this" and replace.PACK_CAUSAL and _is_causal(s))
        for prec, batch, width, impl, heap in settings:
            if impl not in mine:
                continue
            # under bf16 autocast every student runs at full width (`replace._skips_padding`)
            flops, full = counted[batch, width if prec == "fp32" else "full", impl], counted[batch, "full", impl]
            with tempfile.TemporaryDirectory() as tmp, _width(width), _causal(against if impl != "this" else None), \
                    _heap(heap):
                t0 = time.perf_counter()
                hist = train_students(t.model, [s], rec_train, rec_valid,
                                      cfg.replace(distill_precision=prec, distill_batch=batch), tmp,
                                      progress=False)[s][0]
                wall = time.perf_counter() - t0
            row = {"student": _label(s), "precision": prec, "batch": batch, "width": width, "code": impl, "heap": heap,
                   "tflop": flops / 1e12, "tflop_full": full / 1e12, "gflops_full_equiv": full / wall / 1e9,
                   "epoch_s": wall,
                   "steps_s": hist["seconds"], "loading_s": hist["loading_seconds"],
                   "heldout_s": hist["heldout_seconds"], "heldout_mse": hist["heldout_mse"],
                   "gflops_epoch": flops / wall / 1e9, "gflops_steps": flops / hist["seconds"] / 1e9}
            row["ratio_epoch"] = row["gflops_epoch"] / peak["fp32"]
            if prec == "bf16":
                row["ratio_epoch_bf16"] = row["gflops_epoch"] / peak["bf16"]
            rows.append(row)
            print(f"  {row['student']:22s} {prec} b{batch:<4d} {width:5s} {_code(impl, args.against)}{_h(heap, heaps)}"
                  f"{row['tflop']:7.2f} TFLOP  epoch {wall:6.1f} s "
                  f"(steps {hist['seconds']:6.1f}, loading {hist['loading_seconds']:4.1f}, "
                  f"held-out {hist['heldout_seconds']:4.1f}; MSE {hist['heldout_mse']:.4g})"
                  f"  {row['gflops_epoch']:5.0f} GFLOP/s = {row['ratio_epoch']:4.0%} of the fp32 matmul rate"
                  + (f", {row['ratio_epoch_bf16']:4.0%} of the bf16 one" if prec == "bf16" else "")
                  + (f"; full width's {row['tflop_full']:.2f} TFLOP in this time: {row['gflops_full_equiv']:.0f} GFLOP/s"
                     if width == "spans" else ""), flush=True)
        n = sum(impl in mine for _, _, _, impl, _ in settings)
        first = rows[-n]
        for r in rows[len(rows) - n + 1:]:
            print(f"  {'':22s} {r['precision']} b{r['batch']} {r['width']} {_code(r['code'], args.against)}"
                  f"{_h(r['heap'], heaps)}against {first['precision']} b{first['batch']} {first['width']} "
                  f"{_code(first['code'], args.against)}{_h(first['heap'], heaps)}: "
                  f"{first['epoch_s'] / r['epoch_s']:.2f}x the speed")
    after = matmul_gflops("cpu", sizes=(2048, 4096))
    best = max(peak["fp32"], after)
    print(f"fp32 square matmul after the students: {after:.0f} GFLOP/s (before: {peak['fp32']:.0f}); "
          f"against the better of the two, {best:.0f} GFLOP/s:")
    for row in rows:
        row["ratio_epoch_best"] = row["gflops_epoch"] / best
        print(f"  {row['student']:22s} {row['precision']} b{row['batch']:<4d} {row['width']:5s} {_code(row['code'], args.against)}"
              f"{_h(row['heap'], heaps)}{row['ratio_epoch_best']:4.0%}"
              + (f" (full-width equivalent {row['gflops_full_equiv'] / best:4.0%})" if row["width"] == "spans" else ""))
    if args.ranks:
        result_ranks = _ranks(args, argv, students, rows, best)
    result = {"preset": args.preset, "batches": batches, "widths": widths, "heaps": heaps, "against": args.against,
              "sentences": len(rec_train),
              "compile": cfg.distill_compile, "threads": torch.get_num_threads(),
              "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
              "matmul_gflops": peak["fp32"], "matmul_gflops_bf16": peak.get("bf16"), "matmul_gflops_after": after,
              "students": rows}
    if args.ranks:
        result["ranks"] = result_ranks
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


def _ranks(args, argv, students, rows, matmul: float) -> dict:
    """The same students' epochs on `args.ranks` one-thread processes at once, shared out by FLOPs."""
    flops = [next(r["tflop"] for r in rows if r["student"] == _label(s)) * 1e12 for s in students]
    shares = [g for g in balanced(flops, args.ranks) if g]
    own = _without(list(argv if argv is not None else sys.argv[1:]), "--ranks", "--students", "--threads", "--out")
    with tempfile.TemporaryDirectory() as sync:
        procs = []
        for k, share in enumerate(shares):
            names = ",".join(_label(students[i]) for i in share)
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            procs.append(subprocess.Popen([sys.executable, __file__, *own,
                                           "--students", names, "--threads", "1",
                                           "--worker", f"{k}/{len(shares)},{sync}"], env=env))
        if any(proc.wait() for proc in procs):
            raise SystemExit("bench_distill: a --ranks process failed (its error is above)")
        done = [json.loads((Path(sync) / f"result.{k}.json").read_text()) for k in range(len(shares))]
    wall = max(d["end"] for d in done) - min(d["start"] for d in done)
    total = sum(flops)
    one = sum(r["epoch_s"] for r in rows)  # one setting: a row a student
    out = {"processes": len(shares), "threads_each": 1, "wall_s": wall, "tflop": total / 1e12,
           "gflops": total / wall / 1e9, "ratio": total / wall / 1e9 / matmul,
           "one_process_s": one, "per_process": done}
    print(f"{len(shares)} one-thread processes at once ({'; '.join(', '.join(r['student'] for r in d['students']) for d in done)}): "
          f"{total / 1e12:.2f} TFLOP in {wall:.1f} s = {out['gflops']:.0f} GFLOP/s = {out['ratio']:.0%} of the "
          f"{matmul:.0f} GFLOP/s square matmul; one process of {torch.get_num_threads()} threads, the same "
          f"epochs one after another: {one:.1f} s = {total / one / 1e9:.0f} GFLOP/s = {total / one / 1e9 / matmul:.0%}, "
          f"so the processes ran at {one / wall:.2f}x its speed")
    for d in done:
        for r in d["students"]:
            print(f"  process {d['process']}: {r['student']:22s} epoch {r['epoch_s']:6.1f} s (MSE {r['heldout_mse']:.4g})")
    return out


def _is_causal(s: Student) -> bool:
    return s.where in ("decoder", "cross_causal")


def _code(impl: str, against: str | None) -> str:
    """The code column of a printed row: blank without --against."""
    return f"{impl[:9]:9s} " if against else ""


def _causal_pass_at(rev: str, p: argparse.ArgumentParser):
    """`_causal_pass` of ffattn/replace.py at git revision `rev`, as a function of this process."""
    import importlib.util
    root = Path(__file__).resolve().parents[1]
    try:
        src = subprocess.run(["git", "-C", str(root), "show", f"{rev}:ffattn/replace.py"],
                             capture_output=True, text=True, check=True).stdout
    except (subprocess.CalledProcessError, FileNotFoundError) as e:
        p.error(f"--against {rev}: git cannot show ffattn/replace.py at that revision "
                f"({(getattr(e, 'stderr', '') or str(e)).strip()[:200]})")
    name = f"ffattn_replace_at_{rev}".replace("-", "_")
    spec = importlib.util.spec_from_loader(name, loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up
    exec(compile(src, f"{rev}:ffattn/replace.py", "exec"), module.__dict__)
    if not hasattr(module, "_causal_pass"):
        p.error(f"--against {rev}: its ffattn/replace.py has no _causal_pass")
    return module._causal_pass


@contextmanager
def _set(module, name: str, value):
    """`module.name` set to `value` for one setting of the benchmark, then put back."""
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


def _causal(fn):
    """`replace._causal_pass` replaced by `fn` (another revision's), or left as it is (None)."""
    return _set(replace, "_causal_pass", fn or replace._causal_pass)


def _heap(heap: str):
    """`train.HEAP_MEMORY` for one setting: large buffers kept in the heap (on) or glibc's policy (off)."""
    return _set(train, "HEAP_MEMORY", heap == "on")


def _width(width: str):
    """`replace.SKIP_PADDING` for one setting: spans (padding skipped) or full width."""
    return _set(replace, "SKIP_PADDING", width == "spans")


def _h(heap: str, heaps: list[str]) -> str:
    """The heap column of a printed row: blank unless --heap gives both."""
    return f"heap {heap:3s} " if len(heaps) > 1 else ""


def _without(argv: list[str], *flags: str) -> list[str]:
    """argv less the given flags and their values."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in flags:
            skip = True
        elif not any(a.startswith(f + "=") for f in flags):
            out.append(a)
    return out


def _worker(spec: str, t, students, rec_train, rec_valid, cfg) -> dict:
    """One of --ranks' processes: wait for the others to be loaded, then its students' epochs in turn."""
    who, sync = spec.split(",", 1)
    k, n = map(int, who.split("/"))
    sync = Path(sync)
    (sync / f"ready.{k}").touch()
    while len(list(sync.glob("ready.*"))) < n:
        time.sleep(0.05)
    start, rows = time.time(), []
    for s in students:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            hist = train_students(t.model, [s], rec_train, rec_valid, cfg, tmp, progress=False)[s][0]
            rows.append({"student": _label(s), "epoch_s": time.perf_counter() - t0, "heldout_mse": hist["heldout_mse"]})
    done = {"process": k, "start": start, "end": time.time(), "threads": torch.get_num_threads(), "students": rows}
    tmp = sync / f".result.{k}.json"
    tmp.write_text(json.dumps(done))
    tmp.replace(sync / f"result.{k}.json")
    return done


def _label(s: Student) -> str:
    return f"{s.where} {s.scheme}-{s.size}"


if __name__ == "__main__":
    main()
