"""A chapter rerun with papermill at other parameters runs and changes its results."""
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def outputs_text(nb_path: Path) -> str:
    nb = json.loads(nb_path.read_text())
    parts = []
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            parts += out.get("text", []) + out.get("data", {}).get("text/plain", [])
    return "".join(parts)


def test_papermill_rerun_with_another_pair_changes_the_results(tmp_path):
    papermill = pytest.importorskip("papermill")
    chapter = ROOT / "book" / "01_data.ipynb"
    runs = {}
    for pair in ("de-en", "fr-en"):
        out = tmp_path / f"01_data-{pair}.ipynb"
        papermill.execute_notebook(str(chapter), str(out), parameters={"pair": pair, "preset": "tiny"},
                                   cwd=str(ROOT / "book"), progress_bar=False, kernel_name="python3")
        nb = json.loads(out.read_text())
        assert any("injected-parameters" in c["metadata"].get("tags", []) for c in nb["cells"])
        runs[pair] = outputs_text(out)
    assert runs["de-en"] != runs["fr-en"]
    assert "fr-en" in runs["fr-en"] and "fr-en" not in runs["de-en"]
