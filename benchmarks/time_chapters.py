"""How long each chapter takes to run, as a workshop attendee runs it: with a bundle unpacked
into an empty cache, so nothing is trained (the instructor's page schedules from these times).

    python benchmarks/time_chapters.py --bundle runs/ffattn-tiny-multi30k-de-en-161750.tar
    python benchmarks/time_chapters.py --runs ~/.cache/ffattn/runs     # an existing cache instead

Each chapter is executed top to bottom by papermill in a fresh kernel (solutions in place), in
the order of the book, at the preset of the bundle; prints a Markdown table and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", help="a bundle to unpack into an empty runs folder first")
    p.add_argument("--runs", help="use this runs folder as it is (default: a new empty one)")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--chapters", default="", help="comma-separated prefixes, e.g. 05,06 (default: all)")
    p.add_argument("--out", default=None, help="JSON to write (default: print only)")
    args = p.parse_args(argv)

    import papermill

    runs = Path(args.runs) if args.runs else Path(tempfile.mkdtemp(prefix="ffattn-runs-"))
    os.environ["FFATTN_RUNS"] = str(runs)
    os.environ["FFATTN_PRESET"] = args.preset
    unpack = None
    if args.bundle:
        from ffattn.workshop import unbundle
        started = time.perf_counter()
        unbundle(args.bundle, progress=False)
        unpack = time.perf_counter() - started
    wanted = [c.strip() for c in args.chapters.split(",") if c.strip()]
    chapters = [nb for nb in sorted((ROOT / "book").glob("[0-9][0-9]_*.ipynb"))
                if not wanted or nb.name[:2] in wanted]
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for nb in chapters:
            started = time.perf_counter()
            papermill.execute_notebook(str(nb), str(Path(out) / nb.name), cwd=str(ROOT / "book"),
                                       progress_bar=False, log_output=False)
            rows.append({"chapter": nb.stem, "seconds": round(time.perf_counter() - started, 1)})
            print(f"{nb.stem}: {rows[-1]['seconds']:.0f} s", file=sys.stderr, flush=True)
    result = {"preset": args.preset, "bundle": args.bundle, "unpack_seconds": unpack, "rows": rows,
              "machine": {"cpu": platform.processor(), "cores": os.cpu_count(),
                          "threads": os.environ.get("OMP_NUM_THREADS"), "date": time.strftime("%Y-%m-%d")}}
    print("| chapter | seconds |\n|---|---|")
    for r in rows:
        print(f"| {r['chapter']} | {r['seconds']:.0f} |")
    print(f"| all | {sum(r['seconds'] for r in rows):.0f} |")
    if unpack is not None:
        print(f"\nunpacking the bundle: {unpack:.0f} s")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
