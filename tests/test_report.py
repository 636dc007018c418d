"""The results tables and the paper's claims, checked on made-up grids."""
import pandas as pd
import pytest

from ffattn import report

SIZES = ["XS", "S", "M", "L"]


def grid(enc=None, dec=(25, 28, 31, 32), cross=(5, 8, 12, 14), causal=(6, 9, 15, 18), att=12.0,
         floor=0.5, teacher=33.0, att_params=4_000_000):
    """A whole grid of one direction, BLEU by size; relative BLEU computed from `teacher`."""
    enc = enc or {"ALR": (29, 30, 32, 32.5), "ASLR": (30, 31, 32, 32.2), "ALRR": (20, 25, 30, 31),
                  "ELR": (18, 24, 29, 31)}
    rows = [dict(group="teacher", scheme="-", size="-", trained=True, bleu=teacher, replaced_params=0)]
    rows += [dict(group="encoder", scheme=sc, size=sz, trained=True, bleu=b, replaced_params=1000)
             for sc, v in enc.items() for sz, b in zip(SIZES, v)]
    for g, v in (("decoder", dec), ("cross", cross), ("cross_causal", causal)):
        rows += [dict(group=g, scheme="ALR", size=sz, trained=True, bleu=b, replaced_params=1000) for sz, b in zip(SIZES, v)]
    rows += [dict(group="attentionless", scheme="ALR", size="L", trained=True, bleu=att, replaced_params=att_params),
             dict(group="attentionless_causal", scheme="ALR", size="L", trained=True, bleu=att + 1, replaced_params=att_params),
             dict(group="cross", scheme="ALR", size="M", trained=False, bleu=floor, replaced_params=1000)]
    df = pd.DataFrame(rows)
    df["pair"] = "de-en"
    df["bleu_rel"] = 100 * df.bleu / teacher
    df["chrf"] = df.bleu + 20
    return df


def verdicts(df, **kw):
    return {c["claim"]: c["verdict"] for c in report.check_claims(df, 100_000, 50, 50, **kw)}


def test_the_paper_shaped_grid_supports_the_paper():
    v = verdicts(grid())
    assert set(v.values()) <= {"supported", "mixed"}
    assert v["Encoder self-attention can be replaced with BLEU competitive with the teacher"] == "supported"
    assert v["Cross-attention loses much more than the other replacements: it is the bottleneck"] == "supported"
    assert v["... but it blows up the parameter count"] == "supported"


def test_a_grid_against_the_paper_gets_not_supported():
    v = verdicts(grid(enc={s: (5, 6, 7, 8) for s in ("ALR", "ASLR", "ALRR", "ELR")}, cross=(25, 28, 31, 32),
                      dec=(5, 6, 8, 10), att=0.4, att_params=1000))
    assert v["Encoder self-attention can be replaced with BLEU competitive with the teacher"] == "not supported"
    assert v["Decoder self-attention can be replaced with a modest loss"] == "not supported"
    assert v["Cross-attention loses much more than the other replacements: it is the bottleneck"] == "not supported"
    assert v["An attentionless Transformer still translates"] == "not supported"
    assert v["... but it blows up the parameter count"] == "not supported"


def test_thresholds_decide_the_verdict_and_a_partial_result_is_mixed():
    df = grid(enc={"ALR": (20, 25, 27, 28), "ASLR": (20, 25, 27, 28), "ALRR": (1, 2, 3, 4), "ELR": (1, 2, 3, 4)})
    claim = "Encoder self-attention can be replaced with BLEU competitive with the teacher"  # best 28/33 = 84.8%
    assert verdicts(df)[claim] == "mixed"
    assert verdicts(df, rules={"competitive": 80.0})[claim] == "supported"
    assert verdicts(df, rules={"fair": 90.0})[claim] == "not supported"


def test_a_missing_cell_is_named_in_the_error():
    df = grid()
    df = df[~((df.group == "decoder") & (df["size"] == "L"))]
    with pytest.raises(ValueError, match="decoder ALR L"):
        report.check_claims(df, 100_000, 50, 50)


def test_the_markdown_report_states_the_budget_next_to_the_tables():
    df = grid()
    df["budget"] = "each student distilled on 29,000 of 29,000 training sentences"
    df["epochs"] = 7
    text = report.markdown_report(df)
    assert "29,000 of 29,000" in text.split("## Encoder")[0]
    assert "| de-en | encoder ALRR | 7 | 7 | 7 | 7 |" in text


def test_the_budget_line_counts_the_students_the_cap_stopped():
    df = grid()
    df["budget"] = "each student distilled on all sentences"
    df["students"] = 2
    df["students_at_cap"] = 0
    df.loc[(df.group == "encoder") & (df.scheme == "ALRR"), "students_at_cap"] = 2  # 4 cells x 2 layers
    text = report.budget_lines(df)
    trained_cells = int((df.trained & ~df.group.str.startswith("attentionless") & (df.group != "teacher")).sum())
    assert f"8 of {2 * trained_cells} students stopped at the cap, still improving, the others on a plateau" in text
    df["students_at_cap"] = df["students"]  # all at the cap: no "others"
    assert report.budget_lines(df).endswith(f"{2 * trained_cells} of {2 * trained_cells} students stopped at the cap, "
                                            "still improving")


def test_book_row_lookup():
    """The chapters' one row lookup: the first match, a default, or an error that says what exists."""
    from ffattn.book import row
    df = pd.DataFrame({"group": ["teacher", "encoder", "encoder"], "size": ["-", "M", "L"], "bleu": [30, 20, 25]})
    assert row(df, group="encoder", size="L").bleu == 25
    assert row(df, group="encoder").bleu == 20  # the first of several
    assert row(df, default=None, group="cross") is None
    with pytest.raises(KeyError, match=r"no row with \{'group': 'cross'\}.*group: teacher, encoder"):
        row(df, group="cross")
    with pytest.raises(KeyError, match="no column 'sise'.*group, size, bleu"):
        row(df, sise="L")


def test_progress_reads_the_grid_from_its_checkpoints_alone(tmp_path, monkeypatch, capsys):
    """`python -m ffattn progress`: the states of a grid's students from their checkpoints'
    histories, nothing trained or prepared (no teacher: it says so)."""
    from ffattn import experiments
    from ffattn.__main__ import main
    from ffattn.config import get_config
    from ffattn.files import save_atomic
    monkeypatch.setenv("FFATTN_RUNS", str(tmp_path))
    cfg = get_config("tiny")
    assert main(["progress", "--preset", "tiny"]) == 0
    assert "no teacher yet" in capsys.readouterr().out and not any(tmp_path.iterdir())  # nothing trained

    run = cfg.run_dir()
    folder = run / f"distill-{cfg.distill_key()}"
    save_atomic({"epoch": 5}, run / "teacher.pt")

    def history(n):
        return [{"epoch": i + 1, "steps": 10, "seconds": 2.0, "heldout_mse": 1.0 / (i + 1)} for i in range(n)]
    save_atomic({"distill_key": cfg.distill_key(), "finished": True, "stopped": "plateau", "history": history(3)},
                folder / "students" / "encoder-0-ALR-L.pt")
    save_atomic({"distill_key": cfg.distill_key(), "finished": False, "history": history(2)},
                folder / "students" / "decoder-1-ALR-M.pt")
    save_atomic({"distill_key": "another", "finished": True, "history": history(1)},
                folder / "students" / "cross-0-ALR-S.pt")
    (folder / "students" / "encoder-1-ELR-XS.pt").write_bytes(b"not a checkpoint")
    (folder / "eval").mkdir()
    (folder / "eval" / "encoder-ALR-L.test-beam1.json").write_text("{}")
    df = experiments.grid_progress(cfg)
    state = df.set_index("student").state
    assert (state["encoder-0-ALR-L"], state["decoder-1-ALR-M"], state["cross-0-ALR-S"]) == (
        "finished", "started", "other settings")
    assert len(df) == 56 and (state == "waiting").sum() == 52 and state["encoder-1-ELR-XS"] == "damaged"
    assert df.set_index("student").loc["encoder-0-ALR-L", "heldout_mse"] == pytest.approx(1 / 3)
    text = report.progress_report(df, cfg)
    assert "teacher: 5 of 5 epochs" in text
    assert "1 of 56 students finished (1 on the plateau rule, 0 at the cap of 5 epochs); 6 epochs recorded" in text
    assert "started: 1 (decoder-1-ALR-M after 2); at most 3 epochs left to them, 0.0 h" in text
    assert "waiting: 52 (" in text and "and 44 more)" in text
    assert "other distillation settings or damaged (a run would stop on them; delete them): cross-0-ALR-S, " \
           "encoder-1-ELR-XS" in text
    assert "cells scored on the test split: 1 of 33" in text
    assert "| encoder | 1 | 0 | 30 | 0 | 1 | 32 |" in text  # finished, started, waiting, other settings, damaged, all
    # chapter 8's points: each under its own key, only the study's cells
    from ffattn import budget
    few = cfg.replace(distill_sentences=1000)
    save_atomic({"distill_key": few.distill_key(), "finished": True, "stopped": "cap", "history": history(5)},
                run / f"distill-{few.distill_key()}" / "students" / "encoder-1-ELR-M.pt")
    study = budget.study_progress(cfg).set_index("point")
    assert list(study.index) == ["1,000 sentences", "3,000 sentences", "10,000 sentences", "batch 512, lr x1",
                                 "batch 512, lr x2"]
    assert study.loc["1,000 sentences", ["cells", "students", "finished", "waiting", "epochs"]].tolist() == [11, 22, 1, 21, 5]
    assert study.loc["batch 512, lr x2", ["cells", "students", "finished"]].tolist() == [4, 8, 0]
    assert main(["progress", "--preset", "tiny"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(text) and "| 1,000 sentences | 11 | 22 | 1 | 0 | 21 | 5 | 0.00 | 0 |" in out
