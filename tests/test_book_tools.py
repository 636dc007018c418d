"""The book's sources follow the rules that keep it honest, without executing anything.

- notebooks are committed without outputs, with a python3 kernel, a guarded Colab install
  as the first code cell, and a `parameters` cell (papermill, FFATTN_* variables);
- every `{glue:...}` number in a notebook's prose is glued by a code cell of that notebook;
- every `literalinclude` points at a file and a `:pyobject:` / marker that exist, so code
  shown in the prose cannot silently vanish;
- every `{cite}` key is in references.bib, the toc lists only files that exist, and the
  book has exactly one `{bibliography}`.
"""
import ast
import json
import re
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
NOTEBOOKS = sorted(BOOK.glob("*.ipynb"))
PARAMETERS = ("preset", "pair", "corpus", "overrides", "bundle")


def _toc_files():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]

    def walk(entries):
        for e in entries or []:
            if "file" in e:
                files.append(e["file"])
            walk(e.get("sections"))
            for part in e.get("parts", []) or []:
                walk(part.get("chapters"))

    walk(toc.get("chapters"))
    for part in toc.get("parts", []) or []:
        walk(part.get("chapters"))
    return files


def _resolve(stem: str) -> Path | None:
    for ext in ("", ".md", ".ipynb"):
        p = ROOT / f"{stem}{ext}"
        if p.is_file():
            return p
    return None


def _cells(nb_path: Path):
    return json.loads(nb_path.read_text())["cells"]


def _text(cell) -> str:
    src = cell["source"]
    return src if isinstance(src, str) else "".join(src)


def _markdown_sources():
    """(path, markdown text) of every page in the toc: .md files and notebook markdown cells."""
    out = []
    for stem in _toc_files():
        p = _resolve(stem)
        if p is None:
            continue
        if p.suffix == ".md":
            out.append((p, p.read_text()))
        else:
            out.append((p, "\n".join(_text(c) for c in _cells(p) if c["cell_type"] == "markdown")))
    return out


def test_toc_lists_existing_files():
    missing = [f for f in _toc_files() if _resolve(f) is None]
    assert not missing, f"_toc.yml lists files that do not exist: {missing}"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_clean(nb):
    data = json.loads(nb.read_text())
    assert data["metadata"].get("kernelspec", {}).get("name") == "python3", "kernelspec must be python3"
    for i, c in enumerate(data["cells"]):
        if c["cell_type"] == "code":
            assert c.get("outputs") == [], f"cell {i} has outputs: clear them before committing"
            assert c.get("execution_count") is None, f"cell {i} has an execution count"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_setup_cells(nb):
    code = [c for c in _cells(nb) if c["cell_type"] == "code"]
    first = _text(code[0])
    assert '"google.colab" in sys.modules' in first and "pip install" in first, \
        "the first code cell installs ffattn in Colab only"
    tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters' (papermill)"
    assigned = {t.id for node in ast.parse(_text(tagged[0])).body if isinstance(node, ast.Assign)
                for t in node.targets if isinstance(t, ast.Name)}
    assert set(PARAMETERS) <= assigned, f"the parameters cell sets {PARAMETERS}"


GLUE_ROLE = re.compile(r"\{glue(?::\w+)?\}`([^`:]+)(?::[^`]*)?`")
GLUE_DIRECTIVE = re.compile(r"```\{glue(?::\w+)?\}\s+(\S+)")
GLUE_CALL = re.compile(r"""glue\(\s*(?:f?["'])([^"']+)["']""")


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_glued_names_are_defined(nb):
    cells = _cells(nb)
    prose = "\n".join(_text(c) for c in cells if c["cell_type"] == "markdown")
    code = "\n".join(_text(c) for c in cells if c["cell_type"] == "code")
    used = set(GLUE_ROLE.findall(prose)) | set(GLUE_DIRECTIVE.findall(prose))
    glued = set(GLUE_CALL.findall(code))
    # f-string names like glue(f"test_{name}", ...) cover a family: accept their prefix
    prefixes = {g.split("{")[0] for g in glued if "{" in g}
    missing = sorted(u for u in used if u not in glued and not any(u.startswith(p) for p in prefixes))
    assert not missing, f"prose uses glue names no code cell defines: {missing}"


LITERALINCLUDE = re.compile(r"```\{literalinclude\}\s+(\S+)\n((?::[^\n]*\n)*)")


def _python_objects(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            if isinstance(node, ast.ClassDef):
                names |= {f"{node.name}.{m.name}" for m in node.body
                          if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef))}
    return names


def test_literalincludes_resolve():
    problems = []
    for page, text in _markdown_sources():
        for target, opts in LITERALINCLUDE.findall(text):
            path = (page.parent / target).resolve()
            if not path.is_file():
                problems.append(f"{page.name}: {target} does not exist")
                continue
            options = dict(re.findall(r":([\w-]+):\s*(.*)", opts))
            if "pyobject" in options and options["pyobject"].strip() not in _python_objects(path):
                problems.append(f"{page.name}: {target} has no object {options['pyobject']!r}")
            for marker in ("start-at", "start-after", "end-at", "end-before"):
                if marker in options and options[marker].strip() not in path.read_text():
                    problems.append(f"{page.name}: {target} lacks {marker} text {options[marker]!r}")
    assert not problems, "\n".join(problems)


def test_citations_exist_and_one_bibliography():
    bib = (BOOK / "references.bib").read_text()
    keys = set(re.findall(r"@\w+\{([^,\s]+),", bib))
    cited, bibliographies = set(), 0
    for page, text in _markdown_sources():
        for group in re.findall(r"\{cite(?::\w+)?\}`([^`]+)`", text):
            cited |= {k.strip() for k in group.split(",")}
        bibliographies += len(re.findall(r"```\{bibliography\}", text))
    assert cited <= keys, f"cited but not in references.bib: {sorted(cited - keys)}"
    assert bibliographies == 1, f"the book needs exactly one {{bibliography}}, found {bibliographies}"


def test_colab_install_and_launch_buttons_name_one_repository():
    """The launch buttons open notebooks from `repository.url`; the install cell installs from it too."""
    from ffattn import workshop
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    repo = workshop.repository(ROOT / "_config.yml")
    assert repo == config["repository"]["url"]
    for nb in NOTEBOOKS:
        first = next(c for c in _cells(nb) if c["cell_type"] == "code")
        assert _text(first) == workshop.colab_install(repo), \
            f"{nb.name}: its install cell differs from _config.yml's repository (python -m ffattn sync-colab)"
