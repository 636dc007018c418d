"""The workshop kit: every exercise's check passes on its solution and fails on its stub, and
the student edition holds no solution."""
import json
from pathlib import Path

import pytest
import torch

from ffattn import workshop

BOOK = Path(__file__).resolve().parents[1] / "book"
CHAPTERS = {int(p.name[:2]): p for p in sorted(BOOK.glob("[0-9][0-9]_*.ipynb"))}
WITH_EXERCISES = (1, 2, 3, 4, 5, 6, 7, 9, 10)
ALL = [(n, ex) for n, p in CHAPTERS.items() for ex in workshop.exercises(workshop.read(p))]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("chapter", WITH_EXERCISES)
def test_every_chapter_has_two_to_four_exercises(chapter):
    found = workshop.exercises(workshop.read(CHAPTERS[chapter]))
    assert 2 <= len(found) <= 4, f"chapter {chapter} has {len(found)} exercises"
    assert all(ex.id.startswith(f"{chapter}.") for ex in found), [ex.id for ex in found]


@pytest.mark.parametrize("chapter,ex", ALL, ids=[ex.id for _, ex in ALL])
def test_check_passes_on_the_solution_and_fails_on_the_stub(chapter, ex):
    workshop.run(ex, "solution")
    exec(compile(ex.stub, "<stub>", "exec"), {})  # the stub runs: a learner starts from working code
    with pytest.raises(Exception):  # ... and the check rejects it
        workshop.run(ex, "stub")


def test_student_edition_hides_every_solution(tmp_path):
    written = workshop.write_workshop(BOOK, tmp_path / "workshop")
    assert {p.name for p in written} >= {p.name for p in CHAPTERS.values()}
    for n, path in CHAPTERS.items():
        student = json.loads((tmp_path / "workshop" / path.name).read_text())
        text = json.dumps(student)
        original = workshop.read(path)
        for ex in workshop.exercises(original):
            assert f"Exercise {ex.id}: your code here" in text
            # a solution line the learner could not see elsewhere (stub, task, other cells) must not be there
            elsewhere = "\n".join("".join(c["source"]) for c in original["cells"]
                                  if c.get("metadata", {}).get("exercise", {}).get("id") != ex.id
                                  or "solution" not in c["metadata"].get("tags", []))
            secret = [line.strip() for line in ex.solution.splitlines()
                      if line.strip() and not line.strip().startswith(("#", "import", "from"))
                      and line.strip() not in ex.stub and line.strip() not in elsewhere]
            assert secret, f"exercise {ex.id}: its solution adds nothing to its stub"
            leaked = [line for line in secret if line in text]
            assert not leaked, f"exercise {ex.id}: the student edition shows {leaked}"
        assert all(c.get("outputs", []) == [] for c in student["cells"] if c["cell_type"] == "code")
        if workshop.exercises(workshop.read(path)):  # the solutions are gone: no exercise is complete
            with pytest.raises(ValueError, match="lacks a solution cell"):
                workshop.exercises(student)


def test_half_made_exercise_is_refused():
    nb = {"cells": [{"cell_type": "code", "source": "x = 1", "metadata": {"tags": ["solution"],
                                                                        "exercise": {"id": "1.9", "stub": "x = 0"}}}]}
    with pytest.raises(ValueError, match="exercise 1.9 lacks its task, a check cell"):
        workshop.exercises(nb)
