"""The command line turns ffattn's errors into one message and an exit status, no traceback."""
import pytest

from ffattn.__main__ import main


def run(argv) -> int:
    """main's exit status, whether it returns it or argparse exits with it."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


@pytest.mark.parametrize("argv, status, message", [
    (["teacher", "--preset", "huge"], 2, "invalid choice: 'huge'"),
    (["teacher", "--pair", "de-xx"], 2, "unknown pair 'de-xx'; choose one of: de-en, en-de, fr-en, en-fr"),
    (["teacher", "--epochs", "-3"], 2, "epochs=-3 must be positive"),
    (["teacher", "--dropout", "1.5"], 2, "dropout=1.5 must lie in [0, 1)"),
    (["reproduce", "--pairs", "de-en,xx-yy"], 2, "unknown pair 'xx-yy'"),
    (["bench", "--cells", "encoder-XYZ-M"], 2, "unknown cell(s) ['encoder-XYZ-M']; choose from: encoder-ALR-XS"),
    (["teacher", "--distill-source", "disk"], 2, "unknown distill_source 'disk'; choose one of: recorded, on_the_fly"),
    (["study", "--sentences", "1000,x"], 2, "number of sentences 'x': write whole numbers"),
    (["study", "--batches", "512y2"], 2, "batch setting '512y2': write BATCHxFACTOR"),
    (["unbundle", "/nowhere/bundle.tar"], 1, "ffattn: error: no bundle at /nowhere/bundle.tar"),
])
def test_bad_values_are_one_message_and_status_2(argv, status, message, capsys):
    assert run(argv) == status
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_missing_data_offline_is_a_run_time_error_with_status_1(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("FFATTN_DATA", str(tmp_path / "nowhere"))
    monkeypatch.setenv("FFATTN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FFATTN_RUNS", str(tmp_path / "runs"))
    assert main(["teacher", "--preset", "tiny", "--corpus", "iwslt2017"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ffattn: error:") and "Traceback" not in err and "FFATTN" in err


def test_a_damaged_checkpoint_is_a_run_time_error(capsys, monkeypatch, tmp_path):
    from ffattn.config import get_config
    monkeypatch.setenv("FFATTN_RUNS", str(tmp_path / "runs"))
    flags = ["--train-limit", "200", "--valid-limit", "20", "--vocab-size", "200"]
    cfg = get_config("tiny", train_limit=200, valid_limit=20, vocab_size=200)
    cfg.run_dir().mkdir(parents=True)
    (cfg.run_dir() / "teacher.pt").write_bytes(b"not a checkpoint")
    assert run(["teacher", "--preset", "tiny", *flags]) == 1
    err = capsys.readouterr().err
    assert "teacher.pt is damaged or not a checkpoint" in err and "delete it to retrain" in err
    assert "Traceback" not in err


def test_the_study_commands_defaults_are_the_chapters():
    """The parser writes them out (building it imports nothing heavy); they must not drift."""
    from ffattn import budget
    from ffattn.__main__ import STUDY_BATCHES, STUDY_SENTENCES
    assert budget.parse_sentences(STUDY_SENTENCES) == list(budget.SENTENCES)
    assert budget.parse_batches(STUDY_BATCHES) == list(budget.BATCHES)


def test_make_edition_trains_the_grid_and_the_study_on_several_processes_before_the_book():
    import shutil
    import subprocess
    from pathlib import Path
    if shutil.which("make") is None:
        pytest.skip("no make")
    root = Path(__file__).resolve().parents[1]
    plan = subprocess.run(["make", "-n", "edition", "PRESET=small", "STUDY=1000,0", "NPROC=3"], cwd=root,
                          capture_output=True, text=True, check=True).stdout
    steps = [plan.index("--nproc_per_node 3 -m ffattn reproduce --preset small"),
             plan.index("--nproc_per_node 3 -m ffattn study --preset small"), plan.index("jupyter-book build")]
    assert steps == sorted(steps)  # the long parts first, shared out; the book reads them back
    assert "--sentences '1000,0'" in plan and "FFATTN_STUDY_SENTENCES='1000,0'" in plan
    refused = subprocess.run(["make", "-n", "edition", "OVERRIDES={\"epochs\": 3}"], cwd=root, capture_output=True,
                             text=True)
    assert refused.returncode != 0 and "make edition takes no OVERRIDES" in refused.stdout + refused.stderr
