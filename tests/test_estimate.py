"""The cost model of a reproduction (`estimate.estimate`): untrained models only, no data, no cached runs."""
import pytest
import torch

from ffattn import cost, estimate
from ffattn.config import get_config
from ffattn.distill import Student, new_student
from ffattn.model import Transformer
from ffattn.replace import build_replacement, install
from small_models import ML, small_teacher

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models run faster on one

KINDS = [("encoder", "ALR"), ("encoder", "ASLR"), ("encoder", "ALRR"), ("encoder", "ELR"),
         ("decoder", "ALR"), ("cross", "ALR"), ("cross_causal", "ALR")]


@pytest.fixture(scope="module")
def paper():
    """The paper preset's estimate at a given rate, 4,000 sentences of 20 tokens (a multiple of
    the distillation batch of 2,000, so every batch is full)."""
    cfg = get_config("paper")
    return cfg, estimate.estimate(cfg, matmul_gflops=1000, sentences=4000, tokens_per_sentence=20)


# ----------------------------------------------------------------------------- FLOPs

def test_teacher_flops_are_three_forwards_per_sentence_and_epoch(paper):
    cfg, e = paper
    model = Transformer.from_config(cfg, cfg.vocab_size, cfg.vocab_size)  # untrained, the preset's sizes
    fwd = cost.flops(model, 20, 20, "forward")
    assert e["parts"]["teacher"]["flops"] == pytest.approx(3 * fwd * 4000 * cfg.epochs, rel=1e-12)
    # the paper preset distils on the fly: each of the 30 groups of students (6 layers x encoder ALR,
    # ALRR, ELR, decoder, cross) runs the teacher on every batch of every epoch, and on dev2010 once
    assert cfg.distill_source == "on_the_fly" and e["directions"]["de-en"]["recording_bytes"] == 0
    assert e["parts"]["recording"]["flops"] == pytest.approx(fwd * 30 * (4000 * cfg.distill_epochs + 888), rel=1e-12)
    recorded = estimate.estimate(cfg.replace(distill_source="recorded"), matmul_gflops=1000, sentences=4000,
                                 tokens_per_sentence=20)
    assert recorded["parts"]["recording"]["flops"] == pytest.approx(fwd * (4000 + 888), rel=1e-12)  # + dev2010
    assert recorded["directions"]["de-en"]["recording_bytes"] > 0
    # `sentences` given: every direction alike, so all four are four times one
    assert e["all_directions"]["parts"]["teacher"]["flops"] == pytest.approx(4 * e["parts"]["teacher"]["flops"])


def test_students_scale_linearly_with_the_epoch_cap_and_the_sentences(paper):
    cfg, e = paper
    base = e["parts"]["students"]["flops"]
    assert len(e["students"]) == 168  # (4 encoder schemes + decoder + 2 cross forms) x 4 sizes x 6 layers
    assert e["directions"]["de-en"]["student_epochs"] == 168 * cfg.distill_epochs
    twice_epochs = estimate.estimate(cfg.replace(distill_epochs=2 * cfg.distill_epochs), matmul_gflops=1000,
                                 sentences=4000, tokens_per_sentence=20)
    twice_sentences = estimate.estimate(cfg, matmul_gflops=1000, sentences=8000, tokens_per_sentence=20)
    assert twice_epochs["parts"]["students"]["flops"] == pytest.approx(2 * base, rel=1e-12)
    assert twice_sentences["parts"]["students"]["flops"] == pytest.approx(2 * base, rel=1e-12)
    # the students' FLOPs are the sum of their steps: 2 batches an epoch, 40 epochs
    assert base == pytest.approx(sum(s["step"] for s in e["students"]) * 2 * cfg.distill_epochs, rel=1e-12)
    assert e["parts"]["students"]["steps"] == 168 * cfg.distill_epochs * 2


def test_a_doubled_matmul_rate_halves_every_part(paper):
    cfg, e = paper
    fast = estimate.estimate(cfg, matmul_gflops=2000, sentences=4000, tokens_per_sentence=20)
    for k, p in e["parts"].items():
        assert fast["parts"][k]["flops"] == p["flops"]
        assert fast["parts"][k]["seconds"] == pytest.approx(p["seconds"] / 2, rel=1e-12)
    assert fast["all_directions"]["total"]["hours"] == pytest.approx(e["all_directions"]["total"]["hours"] / 2)
    assert fast["assumptions"]["efficiency"] == estimate.DEFAULT_EFFICIENCY  # a given rate: the documented constants


@pytest.mark.parametrize("where,scheme", KINDS)
def test_step_formula_equals_counted_step(where, scheme):
    """`distill_step_flops` (from the FF's shapes) equals what FlopCounterMode counts for one
    step, forward and backward, and for the forward alone."""
    teacher = small_teacher()
    torch.manual_seed(1)
    m = build_replacement(teacher, where, 0, scheme, "M", ML)
    for B, T in ((3, 5), (6, ML)):
        assert estimate.distill_step_flops(m, B, T, S=4) == estimate.count_distill_step(m, B, T, S=4)
        x, pad = torch.randn(B, T, m.d_model), torch.zeros(B, T, dtype=torch.bool)
        mem = torch.randn(B, 4, m.d_model) if where.startswith("cross") else None
        mpad = torch.zeros(B, 4, dtype=torch.bool) if mem is not None else None
        assert estimate.distill_step_flops(m, B, T, backward=False, S=4) == cost.count_flops(m.distill_forward, x, pad,
                                                                                    mem, mpad)


def test_step_formula_on_a_real_student():
    """One student at the tiny preset's shapes (MAX_LEN 50 x d_model 64): formula = count."""
    cfg = get_config("tiny")
    teacher = Transformer.from_config(cfg, 100, 100)
    student = new_student(teacher, Student("decoder", 0, "ALR", "M"), cfg.max_len)
    assert estimate.distill_step_flops(student, 4, cfg.max_len) == estimate.count_distill_step(student, 4, cfg.max_len)


def test_cell_flops_without_the_deep_copy_equal_install():
    teacher = small_teacher()
    mods = {(w, i, "ALR"): build_replacement(teacher, w, i, "ALR", "M", ML)
            for w in ("encoder", "decoder", "cross") for i in range(2)}
    before = cost.flops_breakdown(teacher, 5, 5)
    split = estimate._greedy_split_with(teacher, mods, 5)
    assert split["greedy_flops"] == cost.flops(install(teacher, mods), 5, 5, "greedy")
    assert 0 < split["dense"] < split["greedy_flops"]  # the paper-form cross FFs: dense
    assert cost.flops_breakdown(teacher, 5, 5) == before  # the teacher is left as it was


# ----------------------------------------------------------------------------- against a measured run

def test_tiny_students_within_a_factor_3_of_the_measured_grid():
    """README: the tiny grid's 56 students ran 5 epochs of 28,991 sentences each (all at the cap),
    54 min of training steps on 2 cores with a square fp32 matmul at about 150 GFLOP/s."""
    e = estimate.estimate(get_config("tiny"), matmul_gflops=150)
    d = e["directions"]["de-en"]
    assert len(e["students"]) == 56 and d["student_epochs"] == 56 * 5 and d["distill_sentences"] == 28_991
    ratio = e["parts"]["students"]["seconds"] / (54 * 60)
    assert 1 / 3 < ratio < 3, ratio
    # the recording's size formula at tiny's mean length (the measured recording: 1.24 GB)
    assert d["recording_bytes"] / (28_991 + 1_013) == pytest.approx(1_239_208_576 / 28_991, rel=0.05)


def test_measured_efficiency_path(monkeypatch):
    """Without a rate, the efficiencies are measured too (a small config; the matmul rate stubbed)."""
    monkeypatch.setattr(estimate, "matmul_gflops_fn", lambda: 20.0)
    cfg = get_config("tiny", d_model=16, n_heads=2, d_ff=32, n_enc=1, n_dec=1, max_len=8, vocab_size=60,
                     batch_tokens=100, distill_batch=8)
    e = estimate.estimate(cfg, tokens_per_sentence=6)
    assert e["matmul_measured"] and e["efficiency_measured"]
    assert set(e["efficiency"]) == set(estimate.DEFAULT_EFFICIENCY)
    assert all(v > 0 for v in e["efficiency"].values())
    assert e["per_direction"]["seconds"] > 0


# ----------------------------------------------------------------------------- the command line

def test_cli_prints_the_estimate_without_a_teacher_or_data(capsys, tmp_path, monkeypatch):
    from ffattn.__main__ import main
    monkeypatch.setenv("FFATTN_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("FFATTN_DATA", str(tmp_path / "no-data"))
    rc = main(["bench", "--preset", "paper", "--estimate", "--matmul-gflops", "100000"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "| part |" in out and "**total**" in out and "hours (all four directions)" in out
    assert "Assumptions:" in out and "tokens per sentence: 22" in out and "100,000 GFLOP/s" in out
    assert not (tmp_path / "runs").exists()  # nothing trained, nothing written


def test_on_devices_divides_the_parallel_parts_only():
    e = {"parts": {"teacher": {"hours": 8.0}, "recording": {"hours": 1.0}, "students": {"hours": 16.0}},
         "all_directions": {"parts": {"teacher": {"hours": 32.0}, "recording": {"hours": 4.0},
                                      "students": {"hours": 64.0}}}}
    d = estimate.on_devices(e, 8)
    assert d["per_direction_hours"] == pytest.approx(1.0 + 1.0 + 2.0)
    assert d["all_directions_hours"] == pytest.approx(4.0 + 4.0 + 8.0)
    assert estimate.on_devices(e, 1)["per_direction_hours"] == pytest.approx(25.0)
