"""Does torch.compile help here? Eager against compiled, side by side in one run.

    python benchmarks/bench_compile.py --preset tiny            # fixed shapes
    python benchmarks/bench_compile.py --preset tiny --varied   # students as the trainer runs them
    python benchmarks/bench_compile.py --preset tiny --grid     # the causal students as the grid trains them

Times a training step of the teacher (token batch, label-smoothed loss, backward, Adam) and
distillation steps of students at L (encoder ALR, decoder self-attention, cross-attention in
the causal form: forward, masked MSE, backward, fused Adam), on random inputs at the preset's
sizes, each eager and through `torch.compile` (inductor), best of `--repeats` after warm-up;
the compile time apart, and the loss of both. With `--varied` the students' batches change
length from step to step, as in distillation (a causal student works up to its batch's longest
sentence), and they are compiled as the trainer compiles them (`distill.step_loss`, dynamic
shapes): a first pass over the batches compiles what they need (its extra time is the compile
time), a second pass is timed. That times one student on a handful of random batches; what
the grid pays is another matter (several students taking turns on each batch, every length
of the real batches, compiling each student), so `--grid` settles the setting: the causal
students of layer 0 (decoder self-attention, cross-attention in the causal form; XS to L) are
distilled as the grid distils them, from the teacher's recording, once eager and once compiled,
each into a scratch copy of the cache (the cache gets only the teacher and its recording, when
they are not there yet); `--sentences` and `--epochs` make it shorter. Eager runs first, on a
page cache that may not hold the recording yet: if anything, that favours the compiled run.
The setting `distill_compile` rests on these figures; benchmarks/README.md has them.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
import warnings
from pathlib import Path

import torch

from ffattn.config import get_config
from ffattn.distill import Student, _adam, masked_mse, new_student, step_loss
from ffattn.estimate import _best_seconds
from ffattn.model import Transformer
from ffattn.train import batch_loss


def _compare(name: str, make_loss, params, repeats: int, varied: bool = False) -> dict:
    """make_loss(compiled: bool) -> a function of the step number returning the step's loss; a
    step is that loss, its backward and an Adam update of `params`."""
    out = {"work": name}
    for compiled in (False, True):
        loss_fn = make_loss(compiled)
        opt = _adam(params, 1e-9)
        n = [0]

        def step():
            loss = loss_fn(n[0])
            n[0] += 1
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss
        t0 = time.perf_counter()
        first = step().item()  # compiles, when compiled
        if varied:  # one pass over every length (compiling what it needs), then a timed pass
            for _ in range(repeats - 1):
                step()
            warm = time.perf_counter() - t0
            t0 = time.perf_counter()
            for _ in range(repeats):
                step()
            out["compiled_s" if compiled else "eager_s"] = (time.perf_counter() - t0) / repeats
            out["compile_s" if compiled else "first_eager_s"] = warm - repeats * out["compiled_s" if compiled else "eager_s"]
        else:
            out["compile_s" if compiled else "first_eager_s"] = time.perf_counter() - t0
            out["compiled_s" if compiled else "eager_s"] = _best_seconds(step, torch.device("cpu"), repeats=repeats)
        out["loss_compiled" if compiled else "loss_eager"] = first
    return out


def _scratch_teacher(t, root: Path):
    """A copy of the teacher's run folder under `root` that links the recordings, so students
    trained there leave the real cache as it was."""
    run = root / t.run_dir.name
    run.mkdir(parents=True)
    for f in ("config.json", "history.json", "teacher.pt"):
        shutil.copy(t.run_dir / f, run / f)
    shutil.copytree(t.run_dir / "tokenizers", run / "tokenizers")
    (run / "recordings").mkdir()
    if (t.run_dir / "recordings").exists():  # distilling on the fly (`paper`) records nothing
        for rec in (t.run_dir / "recordings").iterdir():
            if rec.is_dir():
                (run / "recordings" / rec.name).symlink_to(rec)
    return run


def grid_compare(cfg, epochs: int | None, sentences: int | None, sizes=("XS", "S", "M", "L")) -> list[dict]:
    """Each causal group of layer 0, distilled eager then compiled through `experiments.train_students`:
    one row per (group, size) with the seconds of its steps (compiling included), those of its last
    epoch, and the held-out MSE of each run; the wall time of each group beside them."""
    import os
    import tempfile

    from ffattn import experiments
    from ffattn.distill import budget

    over = {k: v for k, v in (("distill_epochs", epochs), ("distill_sentences", sentences)) if v is not None}
    cfg = cfg.replace(**over)
    t = experiments.teacher(cfg)
    experiments.recordings(t)  # recorded in the real cache if it is not there yet, before any clock starts
    rows, old = {}, os.environ.get("FFATTN_RUNS")
    # a compile that fails falls back to eager steps with a warning: here that would be a wrong column
    warnings.filterwarnings("error", message="torch.compile failed")
    try:
        with tempfile.TemporaryDirectory(prefix="bench-compile-") as tmp:
            for mode in ("off", "causal"):
                _scratch_teacher(t, Path(tmp) / mode)
                os.environ["FFATTN_RUNS"] = str(Path(tmp) / mode)
                tm = experiments.teacher(cfg.replace(distill_compile=mode), progress=False)
                for where in ("decoder", "cross_causal"):
                    wanted = [Student(where, 0, "ALR", sz) for sz in sizes]
                    t0 = time.perf_counter()
                    hist = experiments.train_students(tm, wanted, progress=True)
                    wall = time.perf_counter() - t0
                    for s in wanted:
                        b = budget(hist[s], cfg.distill_patience)
                        r = rows.setdefault((where, s.size), {"student": s.name})
                        r[f"{mode}_epochs"] = b["epochs"]
                        r[f"{mode}_s"] = b["seconds"]
                        r[f"{mode}_last_epoch_s"] = hist[s][-1]["seconds"]
                        r[f"{mode}_mse"] = b["heldout_mse"]
                        r[f"{mode}_group_wall_s"] = wall
    finally:
        if old is None:
            os.environ.pop("FFATTN_RUNS", None)
        else:
            os.environ["FFATTN_RUNS"] = old
    return list(rows.values())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--repeats", type=int, default=None, help="timed steps (default 5)")
    p.add_argument("--tokens", type=int, default=None,
                   help="sentence length of the random batches (default 16, as Multi30k's)")
    p.add_argument("--varied", action="store_true", help="students only, batches of varied lengths, dynamic shapes")
    p.add_argument("--grid", action="store_true",
                   help="the causal students of layer 0 distilled as the grid does it, eager then compiled (needs the "
                        "data; trains the teacher if it is not cached)")
    p.add_argument("--epochs", type=int, default=None, help="with --grid: epochs per student (default: the preset's cap)")
    p.add_argument("--sentences", type=int, default=None,
                   help="with --grid: training sentences (default: the preset's, all)")
    args = p.parse_args(argv)
    given = {a for a in ("epochs", "sentences") if getattr(args, a) is not None}
    if given and not args.grid:
        p.error(f"{' and '.join('--' + a for a in sorted(given))}: only with --grid")
    if args.grid and (args.varied or args.tokens is not None or args.repeats is not None):
        p.error("--grid distils whole epochs of the real batches: --varied, --tokens and --repeats do not apply")
    args.repeats, args.tokens = args.repeats or 5, args.tokens or 16
    cfg = get_config(args.preset)
    if args.grid:
        rows = grid_compare(cfg, args.epochs, args.sentences)
        print(f"\npreset {cfg.preset}, {torch.get_num_threads()} threads, torch {torch.__version__}: causal students of "
              f"layer 0 distilled eager, then compiled (seconds of their steps, compiling included)\n")
        print("| student | epochs, eager / compiled | eager s | compiled s | speed-up | last epoch, eager / compiled s "
              "| held-out MSE, eager / compiled |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['student']} | {r['off_epochs']} / {r['causal_epochs']} | {r['off_s']:.1f} | {r['causal_s']:.1f} | "
                  f"{r['off_s'] / r['causal_s']:.2f}x | {r['off_last_epoch_s']:.1f} / {r['causal_last_epoch_s']:.1f} | "
                  f"{r['off_mse']:.5f} / {r['causal_mse']:.5f} |")
        for where in ("decoder", "cross_causal"):
            r = next(r for r in rows if r["student"].startswith(where + "-"))
            print(f"\n{where} group (XS to L together, wall time): eager {r['off_group_wall_s']:.0f} s, compiled "
                  f"{r['causal_group_wall_s']:.0f} s", end="")
        print()
        return 0
    torch.manual_seed(0)
    V, L = cfg.vocab_size, args.tokens
    teacher = Transformer.from_config(cfg, V, V)
    rows = []

    if not args.varied:
        B = max(1, cfg.batch_tokens // (L + 2))
        src, tgt = torch.randint(4, V, (B, L)), torch.randint(4, V, (B, L + 1))
        teacher.train()

        def teacher_loss(compiled):
            net = torch.compile(teacher) if compiled else teacher
            return lambda i: (lambda loss, n: loss / n)(*batch_loss(net, src, tgt, cfg.label_smoothing))
        rows.append(_compare(f"teacher step ({B} sentences of {L} tokens)", teacher_loss,
                             list(teacher.parameters()), args.repeats))

    Bs = min(cfg.distill_batch, 256)
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(L - 2, cfg.max_len + 1, (args.repeats,), generator=g).tolist()
    for where, T in (("encoder", L), ("decoder", cfg.max_len), ("cross_causal", cfg.max_len)):
        s = Student(where, 0, "ALR", "L")
        student = new_student(teacher, s, cfg.max_len, cfg.seed).train()
        Ts = [T if where == "encoder" or not args.varied else t for t in lengths]
        batches = []
        for t in Ts:
            pad = torch.zeros(Bs, t, dtype=torch.bool)
            pad[1:, t - 2:] = True  # shorter sentences beside the longest
            mem = torch.randn(Bs, L, cfg.d_model) if where.startswith("cross") else None
            mpad = torch.zeros(Bs, L, dtype=torch.bool) if mem is not None else None
            batches.append((torch.randn(Bs, t, cfg.d_model), pad, mem, mpad, torch.randn(Bs, t, cfg.d_model)))

        def student_loss(compiled, student=student, batches=batches):
            if args.varied:
                f = step_loss(student, compile=compiled)
                return lambda i: f(*batches[i % len(batches)])

            def loss(i):
                x, pad, mem, mpad, target = batches[0]
                return masked_mse(student.distill_forward(x, pad, mem, mpad), target, pad)
            return torch.compile(loss) if compiled else loss
        shape = f"{Bs} sentences of {min(Ts)}-{max(Ts)} tokens" if args.varied else f"{Bs} sentences of {T} tokens"
        rows.append(_compare(f"{s.name} step ({shape})", student_loss,
                             [q for q in student.parameters() if q.requires_grad], args.repeats, args.varied))

    how = f"mean of {args.repeats} steps of varied lengths" if args.varied else f"best of {args.repeats} steps"
    print(f"preset {cfg.preset}, {torch.get_num_threads()} threads, torch {torch.__version__}, {how} "
          f"after warm-up\n")
    print("| work | eager s/step | compiled s/step | speed-up | compile s | loss eager / compiled |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['work']} | {r['eager_s']:.4f} | {r['compiled_s']:.4f} | {r['eager_s'] / r['compiled_s']:.2f}x "
              f"| {r['compile_s']:.1f} | {r['loss_eager']:.5f} / {r['loss_compiled']:.5f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
