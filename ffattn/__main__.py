"""The command line: a thin layer over the functions the chapters call.

    python -m ffattn teacher   --preset tiny --pair de-en
    python -m ffattn evaluate  --preset tiny --split test --beam 4
    python -m ffattn translate --preset tiny "Ein Hund rennt." "Zwei Männer lachen."
    python -m ffattn finetune  --preset tiny            # beyond the paper: fine-tune the attentionless model
    echo "Ein Hund rennt." | python -m ffattn translate --preset tiny
    torchrun --nproc_per_node 4 -m ffattn reproduce --preset paper   # several GPUs (or CPU processes)
    torchrun --nproc_per_node 2 -m ffattn study --preset small       # chapter 8's points, ahead of the book
    python -m ffattn progress --preset small                         # how far that grid has got

Every config field is also a flag: --d-model 128, --epochs 3, --max-len 40, ...
Under torchrun the teacher trains data-parallel and the students of the grid (and of the budget
study) are shared out among the processes; rank 0 writes the files and prints.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields

from .config import PRESETS, Config, field_help, get_config


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=PRESETS, default=None,
                   help="tiny (CI, workshops), small (CPU book), paper (GPU); default $FFATTN_PRESET or tiny")
    helps = field_help()
    for f in fields(Config):
        if f.name == "preset":
            continue
        kind = type(f.default)
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=kind, default=None,
                       help=f"{helps[f.name]} (preset value if omitted)")


def _config(args) -> Config:
    overrides = {f.name: getattr(args, f.name, None) for f in fields(Config) if f.name != "preset"}
    return get_config(args.preset, **overrides)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ffattn", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="on an error, show the Python traceback too")
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {
        "teacher": "train the teacher of a config (or load it) and print its history",
        "evaluate": "sacreBLEU and chrF of the teacher on a whole split",
        "translate": "translate sentences given as arguments or on stdin",
    }
    extra = _extra_commands()
    commands.update({k: v[0] for k, v in extra.items()})
    subs = {}
    for name, help in commands.items():
        subs[name] = sp = sub.add_parser(name, help=help, description=help)
        _add_config_flags(sp)
    subs["evaluate"].add_argument("--split", default="test", help="split to score (default test)")
    subs["translate"].add_argument("sentences", nargs="*", help="source sentences (default: stdin)")
    for name, (_, add_args, _) in extra.items():
        add_args(subs[name])
    args = parser.parse_args(argv)
    try:
        cfg = _config(args)
    except ValueError as e:
        parser.error(str(e))

    try:
        from . import distributed
        distributed.init()  # under torchrun: join the job's process group; alone: nothing
        try:
            return _run(args, cfg, extra)
        finally:
            distributed.close()
    except KeyboardInterrupt:
        print("ffattn: interrupted; every finished epoch is saved and the next run resumes from it", file=sys.stderr)
        return 130
    except (ValueError, TypeError) as e:  # a bad value: ffattn's messages name it and the valid choices
        if args.debug:
            raise
        print(f"ffattn: error: {e}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError) as e:  # missing data, a damaged checkpoint, a failed download
        if args.debug:
            raise
        print(f"ffattn: error: {e}", file=sys.stderr)
        return 1


def _run(args, cfg, extra) -> int:
    from . import distributed, experiments
    if distributed.active() and args.command not in ("teacher", "reproduce", "study"):
        raise ValueError(f"{args.command} runs in one process (it measures or writes files alone); "
                         "torchrun is for teacher, reproduce and study")
    if args.command in extra:
        return extra[args.command][2](cfg, args) or 0
    t = experiments.teacher(cfg)
    from .distributed import is_main
    if not is_main():  # under torchrun, rank 0 prints
        return 0
    if args.command == "teacher":
        print(f"teacher: {t.run_dir}")
        for row in t.history:
            print(json.dumps(row))
    elif args.command == "evaluate":
        m = experiments.teacher_metrics(t, args.split, cfg.beam)
        m.pop("hypotheses")
        print(json.dumps(m, indent=1))
    elif args.command == "translate":
        sentences = args.sentences or [line.rstrip("\n") for line in sys.stdin]
        for line in t.translate(sentences):
            print(line)
    return 0


# ----------------------------------------------------------------------------- the later rooms' commands

def _reproduce_args(p):
    p.add_argument("--pairs", default="de-en", help="comma-separated directions, e.g. de-en,en-de,fr-en,en-fr")


def _reproduce(cfg, args):
    from .experiments import reproduce
    from .report import markdown_report
    from .distributed import is_main
    pairs = [p.strip() for p in args.pairs.split(",") if p.strip()]
    df, files = reproduce(cfg, pairs)
    if not is_main():
        return
    print(markdown_report(df))
    for name, path in files.items():
        print(f"{name}: {path}")


def _bench_args(p):
    p.add_argument("--repeats", type=int, default=None,
                   help="timed runs per measurement, medians reported (default: 3 at tiny, 5 small, 10 paper)")
    p.add_argument("--cells", default=None,
                   help="comma-separated grid cells, e.g. encoder-ALR-M,decoder-ALR-L "
                        "(default: a representative subset)")
    p.add_argument("--out", default=None, help="where to write the JSON (default: the run's distillation folder)")
    p.add_argument("--estimate", action="store_true",
                   help="instead of measuring: estimate the hours `reproduce` takes at this preset (FLOPs of the "
                        "teacher, the recording, every student, the evaluation over a matmul rate); needs no "
                        "teacher and no data")
    p.add_argument("--matmul-gflops", type=float, default=None,
                   help="with --estimate: the device's matmul rate in GFLOP/s (default: measured here, and the "
                        "efficiencies with it)")
    p.add_argument("--efficiency", type=float, default=None,
                   help="with --estimate: achieved over matmul rate for every part (default: measured with the "
                        "rate, else documented constants)")
    p.add_argument("--sentences", type=int, default=None,
                   help="with --estimate: training sentences per direction (default: the corpus's)")
    p.add_argument("--tokens-per-sentence", type=float, default=None,
                   help="with --estimate: mean sentence length in tokens (default: the corpus's, assumed for IWSLT)")


def _bench(cfg, args):
    from . import cost, experiments
    from .report import to_markdown
    if getattr(args, "estimate", False):  # untrained models only: no teacher, no data
        from .estimate import estimate, estimate_markdown
        e = estimate(cfg, matmul_gflops=args.matmul_gflops, sentences=args.sentences,
                     tokens_per_sentence=args.tokens_per_sentence, efficiency=args.efficiency)
        print(estimate_markdown(e))
        return
    cells = [c.strip() for c in args.cells.split(",") if c.strip()] if args.cells else None
    result = cost.bench(cfg, cells=cells, repeats=args.repeats, out=args.out, progress=True)
    df = cost.tradeoff(result)
    cols = ["name", "bleu", "params_total", "flops_per_sentence"] + \
        [c for c in df.columns if c.startswith("latency_") and not c.endswith("_x")] + \
        ["out_tokens", "max_out_tokens", "peak_mem_mb"]
    print(to_markdown(df[cols], floatfmt=".3g"))
    print("\nlatency in ms: the median of the runs, with _min and _max beside it; steps_b<B>: encoding the "
          f"batch and {result['settings']['fixed_steps']} greedy steps, the same work for every model\n")
    for line in cost.decision_table(result)["decision"]:
        print("-", line)
    m = result["machine"]
    print(f"\nmeasured in {result['seconds']:.0f} s on {m['cpu']} ({m['threads']} threads, torch {m['torch']})")
    print("written to", args.out or cost.bench_path(experiments.teacher(cfg, progress=False)))


def _finetune(cfg, args):
    from . import experiments
    r = experiments.finetuned(experiments.teacher(cfg))
    for row in r["history"]:
        print(json.dumps(row))
    print(f"test BLEU: teacher {r['bleu_teacher']:.2f}, attentionless (distilled) {r['bleu_before']:.2f}, after "
          f"{cfg.finetune_epochs} epoch(s) of fine-tuning {r['bleu']:.2f}: {r['gap_closed']:.0%} of the gap closed")


# the chapter's defaults (budget.SENTENCES, budget.BATCHES; a test keeps them equal), written out so that
# building the parser imports nothing heavy
STUDY_SENTENCES, STUDY_BATCHES = "1000,3000,10000,0", "512x1,512x2"


def _study_args(p):
    p.add_argument("--sentences", default=None,
                   help=f"training sentences per point, comma-separated, 0 for all (default: the chapter's, "
                        f"{STUDY_SENTENCES})")
    p.add_argument("--batches", default=None,
                   help=f"other batch sizes, each with a factor on the learning rates (default: the chapter's, "
                        f"{STUDY_BATCHES}; none: skip that section)")


def _study(cfg, args):
    """The chapter's two studies, trained (or loaded) and printed as the chapter tabulates them."""
    from . import budget, experiments
    from .distributed import is_main
    from .report import to_markdown
    # every value checked before anything trains; an empty value means the default, as in the chapter
    sentences = budget.parse_sentences(args.sentences or STUDY_SENTENCES)
    batches = budget.parse_batches(args.batches or STUDY_BATCHES)
    t = experiments.teacher(cfg, progress=is_main())
    print_ = print if is_main() else (lambda *a, **k: None)
    print_("budget rule:", experiments.budget_line(cfg, len(t.data["train"])))
    points, _ = budget.study(t, sentences, progress=is_main())
    print_("\nBLEU by training sentences distilled on:\n")
    print_(to_markdown(points.pivot_table(index="cell", columns="sentences", values="bleu", aggfunc="first",
                                          sort=False), floatfmt=".1f"))
    print_("\nthe fewest sentences within 1 BLEU of each cell's best:\n")
    print_(to_markdown(budget.enough(points, 1.0), floatfmt=".1f"))
    if batches:
        bpoints, _ = budget.batch_study(t, batches, progress=is_main())
        print_("\nbatch sizes (BLEU, held-out MSE, epochs, seconds of training steps):\n")
        shown = bpoints[["cell", "setting", "bleu", "heldout_mse", "epochs", "distill_seconds"]]
        print_(to_markdown(shown.round({"bleu": 1, "heldout_mse": 4, "distill_seconds": 0}), floatfmt="g"))


def _progress(cfg, args):
    from .budget import study_progress
    from .experiments import grid_progress
    from .report import progress_report, to_markdown
    df = grid_progress(cfg)
    print(progress_report(df, cfg))
    if df.attrs["teacher_epochs"] is not None:
        print("\nchapter 8's points (`study`; the whole split's and the grid's own setting are the grid's cells):\n")
        print(to_markdown(study_progress(cfg), floatfmt=".2f"))


def _bundle_args(p):
    p.add_argument("--out", default=None, help="the archive to write (default: <runs>/ffattn-<preset>-...tar)")
    p.add_argument("--no-study", action="store_true",
                   help="leave the budget study's students out (chapter 8 then trains its smaller points "
                        "and its batch-size points)")


def _bundle(cfg, args):
    from pathlib import Path

    from .workshop import bundle
    out = bundle(cfg, args.out, study=not args.no_study)
    print(f"{out} ({Path(out).stat().st_size / 2 ** 20:,.0f} MiB) and its checksum {out}.sha256")


def _unbundle_args(p):
    p.add_argument("bundle", help="a bundle made by `python -m ffattn bundle`: a path or an http(s) URL")
    p.add_argument("--force", action="store_true", help="replace files of the cache that differ from the bundle's")


def _unbundle(cfg, args):
    from .config import runs_root
    from .workshop import unbundle
    m = unbundle(args.bundle, force=args.force)
    print(f"unpacked {len(m['files'])} files into {runs_root()}: the {m['config']['preset']} "
          f"{m['config']['corpus']} {m['config']['pair']} teacher and its students load instead of training")


def _workshop_args(p):
    p.add_argument("--out", default="workshop", help="where to write the student edition (default: workshop/)")
    p.add_argument("--book", default="book", help="the chapters (default: book/)")


def _workshop(cfg, args):
    from pathlib import Path

    from .workshop import exercises, read, write_workshop
    written = write_workshop(args.book, args.out)
    n = sum(len(exercises(read(p))) for p in sorted(Path(args.book).glob("*.ipynb")))
    print(f"the student edition: {len(written)} files in {args.out}/, {n} exercises with their solutions "
          "replaced by stubs (the checks kept)")


def _sync_colab(cfg, args):
    from .workshop import sync_colab
    changed = sync_colab("book", "_config.yml")
    print(f"{len(changed)} chapter(s) now install from _config.yml's repository" if changed else
          "every chapter already installs from _config.yml's repository")


def _extra_commands() -> dict:
    """{name: (help, add_arguments, run)} of the commands beyond the teacher's."""
    return {"reproduce": ("train or load the whole grid of replacements and write the results tables",
                          _reproduce_args, _reproduce),
            "bench": ("measure parameters, FLOPs, CPU latency and memory of the teacher and grid cells; "
                      "write bench.json and print the tables", _bench_args, _bench),
            "finetune": ("beyond the paper: fine-tune the attentionless Transformer (students at L) end to end "
                         "on the translation loss, and score it", lambda p: None, _finetune),
            "study": ("chapter 8's budget study: distil its cells on fewer training sentences and at other "
                      "batch sizes (under torchrun shared out among the ranks), print its tables; the chapter "
                      "then reads every point from the cache", _study_args, _study),
            "progress": ("how far the grid of a config has got in the cache (safe beside a run, even a "
                         "running one): students finished, started and waiting, epochs and hours recorded, and "
                         "the same for chapter 8's points",
                         lambda p: None, _progress),
            "bundle": ("pack the trained teacher, grid and budget study of a config into one archive "
                       "(weights only) for a workshop", _bundle_args, _bundle),
            "unbundle": ("unpack a bundle where the cache looks, so nothing is trained", _unbundle_args, _unbundle),
            "workshop": ("write the student edition of the book: exercises without their solutions",
                         _workshop_args, _workshop),
            "sync-colab": ("rewrite every chapter's Colab install cell from _config.yml's repository (run in the "
                           "repository's root)", lambda p: None, _sync_colab)}


if __name__ == "__main__":
    sys.exit(main())
