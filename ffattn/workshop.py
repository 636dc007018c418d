"""The workshop kit: exercises with checked, hidden solutions, and the student edition.

An exercise in a chapter is three cells:

- a Markdown cell, ``:::{admonition} Exercise 5.2: <title>`` (the task, visible);
- its solution: a code cell tagged ``solution`` and ``hide-input`` (on the page the code hides
  behind a click) whose metadata ``exercise`` holds ``{"id": "5.2", "stub": "<code>"}``: the
  stub is what a learner starts from, code that runs but does not yet do the task;
- its check: a code cell tagged ``check`` with metadata ``exercise: {"id": "5.2"}``, asserts
  on what the solution defined (against the package's own function, a shape, a threshold).

Each exercise is self-contained: the solution and the check import what they use and build
what they need (small random models, a few sentences), so they run in seconds on a laptop and
can be run alone. nbval runs the chapters with the solutions in place, so CI tests every
solution; `tests/test_workshop.py` runs every check against its stub, which must fail.

`student_edition` turns a chapter into the learners' notebook: each solution replaced by its
stub, every output empty, the checks kept. `write_workshop` writes all of them to `workshop/`
(``make workshop``); the student edition never holds a solution's code.
"""
from __future__ import annotations

import copy
import hashlib
import io
import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

TITLE = re.compile(r"Exercise (\d+\.\d+)")


@dataclass
class Exercise:
    """One exercise of a chapter: its id ("5.2"), the task's text, and the three codes."""

    id: str
    task: str
    solution: str
    stub: str
    check: str


def _source(cell) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _lines(text: str) -> list[str]:
    lines = text.splitlines(keepends=True)
    if lines:
        lines[-1] = lines[-1].rstrip("\n")
    return lines


def _tags(cell) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


def _exercise_id(cell) -> str | None:
    ex = cell.get("metadata", {}).get("exercise")
    return ex.get("id") if isinstance(ex, dict) else None


def read(path) -> dict:
    return json.loads(Path(path).read_text())


def exercises(nb: dict) -> list[Exercise]:
    """Every exercise of a notebook, in order; a ValueError names a half-made one."""
    tasks, solutions, stubs, checks = {}, {}, {}, {}
    for cell in nb["cells"]:
        text = _source(cell)
        if cell["cell_type"] == "markdown":
            for m in TITLE.finditer(text):
                if "{admonition}" in text[:m.start()].rsplit("\n", 1)[-1]:
                    tasks[m.group(1)] = text
            continue
        ex_id = _exercise_id(cell)
        if ex_id is None:
            continue
        if "solution" in _tags(cell):
            solutions[ex_id] = text
            stubs[ex_id] = cell["metadata"]["exercise"].get("stub")
        elif "check" in _tags(cell):
            checks[ex_id] = text
    out = []
    for ex_id in solutions.keys() | checks.keys() | tasks.keys():
        missing = [what for what, d in (("its task", tasks), ("a solution cell", solutions),
                                        ("a check cell", checks)) if ex_id not in d]
        if not missing and not stubs.get(ex_id):
            missing = ["a stub in its solution cell's metadata"]
        if missing:
            raise ValueError(f"exercise {ex_id} lacks {', '.join(missing)}")
        out.append(Exercise(ex_id, tasks[ex_id], solutions[ex_id], stubs[ex_id], checks[ex_id]))
    return sorted(out, key=lambda e: tuple(int(x) for x in e.id.split(".")))


def run(ex: Exercise, answer: str = "solution") -> dict:
    """Run an exercise's solution (or its stub), then its check, in a fresh namespace.

    Raises what the check raises (an AssertionError when the answer is wrong)."""
    code = ex.solution if answer == "solution" else ex.stub
    namespace = {"__name__": f"exercise_{ex.id.replace('.', '_')}"}
    exec(compile(code, f"<exercise {ex.id} {answer}>", "exec"), namespace)
    exec(compile(ex.check, f"<exercise {ex.id} check>", "exec"), namespace)
    return namespace


def student_edition(nb: dict) -> dict:
    """The learners' notebook: every solution replaced by its stub, no outputs, checks kept."""
    nb = copy.deepcopy(nb)
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        cell["outputs"], cell["execution_count"] = [], None
        if "solution" in _tags(cell) and _exercise_id(cell):
            ex = cell["metadata"]["exercise"]
            cell["source"] = _lines(f"# Exercise {ex['id']}: your code here\n" + ex["stub"])
            cell["metadata"]["tags"] = [t for t in _tags(cell) if t not in ("solution", "hide-input")] + ["exercise"]
            cell["metadata"]["exercise"] = {"id": ex["id"]}
    return nb


def write_workshop(book: Path, out: Path) -> list[Path]:
    """The student edition of every chapter in `book` (and its other pages), written to `out`."""
    book, out = Path(book), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sorted(book.iterdir()):
        if path.suffix == ".ipynb":
            nb = student_edition(read(path))
            (out / path.name).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
        elif path.is_file():
            (out / path.name).write_bytes(path.read_bytes())
        else:
            continue
        written.append(out / path.name)
    return written


# ----------------------------------------------------------------------------- the bundle: a cache attendees load

BUNDLE_FORMAT = 1
_SKIP = (".lock", ".part")


def _bundle_files(cfg, study: bool = True) -> list[Path]:
    """The finished artifacts of `cfg`'s run folder the chapters read: config, tokenizers,
    teacher, scores, and for the grid (and, with `study`, the budget study's points and its
    batch-size points) the finished students (weights only), their scores and benchmark, and
    the finished fine-tune of chapter 7; never recordings, locks or unfinished students."""
    from . import budget
    from .files import load_checkpoint
    run = cfg.run_dir()
    teacher = run / "teacher.pt"
    if not teacher.exists() or load_checkpoint(teacher, mmap=True)["epoch"] < cfg.epochs:
        raise RuntimeError(f"no finished teacher in {run}: train it first "
                           f"(python -m ffattn reproduce --preset {cfg.preset} --pair {cfg.pair})")
    files = [p for p in [run / "config.json", teacher, run / "history.json"] if p.exists()]
    files += sorted(p for sub in ("tokenizers", "eval") for p in (run / sub).glob("*") if p.is_file())
    keys = {cfg.distill_key()}
    if study:
        keys |= {cfg.replace(distill_sentences=n).distill_key() for n in budget.SENTENCES}
        keys |= {budget.batch_config(cfg, b, f).distill_key() for b, f in budget.BATCHES}
    for key in sorted(keys):
        folder = run / f"distill-{key}"
        files += [p for p in (folder / "results.csv", folder / "bench.json") if p.exists()]
        files += sorted(p for p in (folder / "eval").glob("*") if p.is_file())
        for p in sorted((folder / "students").glob("*.pt")):
            if load_checkpoint(p, mmap=True).get("finished"):
                files.append(p)
    for p in sorted((run / f"distill-{cfg.distill_key()}" / "finetune").glob(f"*-{cfg.finetune_key()}.pt")):
        if "optimizer" not in load_checkpoint(p, mmap=True):  # finished: the weights alone
            files.append(p)
    return [p for p in files if not p.name.endswith(_SKIP)]


def _sha256(path_or_file) -> str:
    h = hashlib.sha256()
    with (open(path_or_file, "rb") if isinstance(path_or_file, (str, Path)) else path_or_file) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def bundle(cfg, out: Path | None = None, progress: bool = True, study: bool = True) -> Path:
    """Pack `cfg`'s trained teacher, grid and budget study into one tar with a manifest (the
    versions and config it was made with, every file's size and sha256) and `<tar>.sha256`.
    `study=False` leaves the budget study's students out (a third of the size at `tiny`; the
    study's chapter then trains its smaller points and its batch-size points, about 12 minutes a
    setting at `tiny`).

    Returns the archive's path (default `<runs>/ffattn-<preset>-<corpus>-<pair>-<key>.tar`)."""
    from tqdm.auto import tqdm

    from .config import ARTIFACT_VERSION, STUDENT_VERSION, runs_root
    from .files import write_atomic
    files = _bundle_files(cfg, study)
    root = runs_root()
    manifest = {"format": BUNDLE_FORMAT, "artifact_version": ARTIFACT_VERSION, "student_version": STUDENT_VERSION,
                "config": cfg.to_dict(), "teacher_key": cfg.teacher_key(), "distill_key": cfg.distill_key(),
                "files": {}}
    for p in tqdm(files, desc="checksums", disable=not progress, leave=False):
        manifest["files"][p.relative_to(root).as_posix()] = {"bytes": p.stat().st_size, "sha256": _sha256(p)}
    out = Path(out) if out else root / f"ffattn-{cfg.preset}-{cfg.corpus}-{cfg.pair}-{cfg.teacher_key()[:6]}.tar"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    try:
        with tarfile.open(tmp, "w") as tar:
            data = json.dumps(manifest, indent=1).encode()
            info = tarfile.TarInfo("manifest.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            for p in tqdm(files, desc="bundling", disable=not progress, leave=False):
                tar.add(p, arcname=p.relative_to(root).as_posix(), recursive=False)
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    write_atomic(out.with_name(out.name + ".sha256"), f"{_sha256(out)}  {out.name}\n")
    return out


def _fetch(source: str) -> Path:
    """A bundle given as a path, or an http(s) URL downloaded once into the cache (with its
    `.sha256` beside it when the server has one)."""
    if not source.startswith(("http://", "https://")):
        path = Path(source).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"no bundle at {path}")
        return path
    import os
    import shutil
    import tempfile
    import urllib.request

    from .data import cache_dir
    from .files import lock, write_atomic
    if os.environ.get("FFATTN_OFFLINE"):
        raise RuntimeError(f"FFATTN_OFFLINE is set: cannot download the bundle {source}; copy it here and give its path")
    path = cache_dir() / "bundles" / source.rstrip("/").rsplit("/", 1)[-1]
    with lock(path, f"the download of {source}"):
        if path.exists():
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        try:
            with urllib.request.urlopen(source, timeout=60) as r, os.fdopen(fd, "wb") as f:
                shutil.copyfileobj(r, f, 1 << 20)
        except OSError as e:
            Path(tmp).unlink(missing_ok=True)
            raise RuntimeError(f"could not download the bundle {source}: {e}") from e
        try:  # its checksum, when the server has one; the manifest's per-file checksums hold anyway
            with urllib.request.urlopen(source + ".sha256", timeout=60) as r:
                write_atomic(path.with_name(path.name + ".sha256"), r.read())
        except OSError:
            pass
        Path(tmp).replace(path)
    return path


def unbundle(source, force: bool = False, progress: bool = True) -> dict:
    """Unpack a bundle (a path or URL) into the runs folder, where the cache looks.

    Refused with a clear message, nothing written: a damaged archive (its `.sha256` or a
    file's checksum, all checked before anything is written), one made by another version of ffattn, or one whose configs this version
    keys differently. Files already there and identical are kept; a different file already
    there is an error unless `force`. Returns the manifest."""
    from tqdm.auto import tqdm

    from .config import ARTIFACT_VERSION, STUDENT_VERSION, Config, runs_root
    from .files import atomically
    path = _fetch(str(source))
    check = path.with_name(path.name + ".sha256")
    expected = check.read_text().split() if check.exists() else []
    if expected and expected[0] != _sha256(path):
        raise RuntimeError(f"the bundle {path} is damaged: its checksum differs from {check.name}; download it again")
    try:
        tar = tarfile.open(path, "r:*")
    except tarfile.TarError as e:
        raise RuntimeError(f"{path} is not a bundle ({e})") from e
    with tar:
        try:
            manifest = json.loads(tar.extractfile("manifest.json").read())
        except (KeyError, ValueError, AttributeError) as e:
            raise RuntimeError(f"{path} is not a bundle: it has no readable manifest.json") from e
        mine = {"format": BUNDLE_FORMAT, "artifact_version": ARTIFACT_VERSION, "student_version": STUDENT_VERSION}
        theirs = {k: manifest.get(k) for k in mine}
        if theirs != mine:
            raise RuntimeError(f"the bundle {path.name} was made by another version of ffattn ({theirs}; this one: "
                               f"{mine}): its models would not load here. Make a bundle with this version, or train")
        try:
            cfg = Config(**manifest["config"])
        except (TypeError, ValueError) as e:
            raise RuntimeError(f"the bundle's config does not fit this version of ffattn: {e}") from e
        if cfg.teacher_key() != manifest["teacher_key"] or cfg.distill_key() != manifest["distill_key"]:
            raise RuntimeError(f"the bundle {path.name} keys its config differently from this version of ffattn "
                               f"(teacher {manifest['teacher_key']} here {cfg.teacher_key()}): refusing to load it")
        root = runs_root()
        run = cfg.run_dir().relative_to(root).as_posix()
        files = manifest["files"]
        for name in files:
            if not name.startswith(run + "/") or ".." in name.split("/"):
                raise RuntimeError(f"the bundle names a file outside its run folder: {name}")
        clashes = [n for n, meta in files.items() if (root / n).exists() and _sha256(root / n) != meta["sha256"]]
        if clashes and not force:
            raise RuntimeError(f"{len(clashes)} file(s) of the bundle differ from what is already in {root} "
                               f"(e.g. {clashes[0]}): run with --force to replace them")
        todo = [n for n in files if not (root / n).exists() or n in clashes]
        for name in tqdm(todo, desc="checking the bundle", disable=not progress, leave=False):
            try:  # every file checked before any is written: a damaged bundle writes nothing
                ok = _sha256(tar.extractfile(name)) == files[name]["sha256"]
            except (KeyError, AttributeError, tarfile.TarError, OSError):
                ok = False
            if not ok:
                raise RuntimeError(f"the bundle {path.name} is damaged: {name} is missing or fails its checksum; "
                                   "download it again")
        # the teachers last: a bundle cut short leaves no finished teacher without its tokenizers
        todo.sort(key=lambda n: n.endswith("/teacher.pt"))
        for name in tqdm(todo, desc="unbundling", disable=not progress, leave=False):
            member = tar.extractfile(name)
            atomically(root / name, lambda tmp: _copy(member, tmp))
    return manifest


def _copy(member, target) -> None:
    """Stream a tar member to a file (a student of the paper preset is 160 MB: not in memory)."""
    import shutil
    with open(target, "wb") as f:
        shutil.copyfileobj(member, f, 1 << 20)


# ----------------------------------------------------------------------------- Colab: one repository, named in _config.yml

def repository(config: Path) -> str:
    """The book's repository URL, named once: `repository.url` in `_config.yml` (the launch buttons' too)."""
    for line in Path(config).read_text().splitlines():  # a two-level lookup: no YAML parser needed
        if line.strip().startswith("url:") and line.startswith(" "):
            return line.split("url:", 1)[1].strip().strip("'\"")
    raise ValueError(f"{config} names no repository url")


def colab_install(repo: str) -> str:
    """Every chapter's first code cell: on Colab, install ffattn from the book's repository."""
    return ("import sys\n"
            "if \"google.colab\" in sys.modules:  # on Colab, install the book's package; elsewhere it is there already\n"
            f"    !pip install -q \"ffattn @ git+{repo}\"")


def sync_colab(book: Path, config: Path) -> list[Path]:
    """Rewrite every chapter's first code cell from `_config.yml`'s repository; the changed files."""
    cell_text = colab_install(repository(config))
    changed = []
    for path in sorted(Path(book).glob("*.ipynb")):
        nb = read(path)
        first = next(c for c in nb["cells"] if c["cell_type"] == "code")
        if _source(first) != cell_text:
            first["source"] = _lines(cell_text)
            path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
            changed.append(path)
    return changed
