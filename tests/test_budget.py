"""The converged budget: the stopping rule, epoch batches, a recording shared by every
training setting, finished students without optimiser state, more sentences -> lower MSE."""
import numpy as np
import pytest
import torch

from ffattn import experiments
from ffattn.distill import (Student, budget, epoch_batches, heldout_mse, load_student, new_student,
                            stop_reason)


# ----------------------------------------------------------------------------- the stopping rule

def test_stopping_rule_stops_on_a_plateau():
    curve = [1.0, 0.6, 0.5, 0.499, 0.4985]
    assert stop_reason(curve[:3], patience=2, min_delta=0.01, cap=30) is None
    assert stop_reason(curve[:4], patience=2, min_delta=0.01, cap=30) is None  # one flat epoch
    assert stop_reason(curve, patience=2, min_delta=0.01, cap=30) == "plateau"  # two flat epochs


def test_stopping_rule_continues_on_a_falling_curve_until_the_cap():
    curve = list(0.9 ** np.arange(12))  # 10% better every epoch
    for n in range(1, 12):
        assert stop_reason(curve[:n], patience=2, min_delta=0.01, cap=12) is None
    assert stop_reason(curve, patience=2, min_delta=0.01, cap=12) == "cap"


def test_stopping_rule_counts_a_rise_as_no_improvement_and_patience_zero_never_stops():
    rising = [0.5, 0.4, 0.45, 0.47]  # overfitting after epoch 2
    assert stop_reason(rising, patience=2, min_delta=0.01, cap=30) == "plateau"
    assert stop_reason(rising, patience=0, min_delta=0.01, cap=30) is None
    assert stop_reason(rising, patience=0, min_delta=0.01, cap=4) == "cap"


def test_budget_reports_the_kept_epoch_and_the_work_done():
    hist = [{"epoch": e + 1, "heldout_mse": m, "steps": 10, "sentences": 100, "seconds": 1.5}
            for e, m in enumerate([0.5, 0.4, 0.45])]
    b = budget(hist)
    assert (b["epochs"], b["kept_epoch"], b["steps"], b["sentences_seen"], b["heldout_mse"]) == (3, 2, 30, 300, 0.4)


def test_epoch_batches_cover_every_sentence_once_and_repeat_and_can_group_lengths():
    lengths = np.random.default_rng(0).integers(1, 50, size=1000)
    plain = epoch_batches(lengths, 16, seed=3, epoch=1)
    assert sorted(np.concatenate(plain).tolist()) == list(range(1000))
    batches = epoch_batches(lengths, 16, seed=3, epoch=1, pool=8)
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    assert all(len(b) <= 16 for b in batches)
    spread = np.mean([np.ptp(lengths[b]) for b in batches])
    random_spread = np.mean([np.ptp(lengths[np.random.default_rng(k).choice(1000, 16)]) for k in range(50)])
    assert spread < 0.5 * random_spread
    again = epoch_batches(lengths, 16, seed=3, epoch=1, pool=8)
    assert all((a == b).all() for a, b in zip(batches, again))
    other = epoch_batches(lengths, 16, seed=3, epoch=2, pool=8)
    assert any(len(a) != len(b) or (a != b).any() for a, b in zip(batches, other))


# ----------------------------------------------------------------------------- recordings and checkpoints

def test_the_recording_is_reused_when_only_training_settings_change(general_teacher, monkeypatch):
    t = general_teacher
    rec, _ = experiments.recordings(t, progress=False)
    calls = []
    import ffattn.distill as distill
    monkeypatch.setattr(distill, "record_io", lambda *a, **k: calls.append(1))
    for change in (dict(distill_epochs=7), dict(lr_alr=3e-4, lr_other=2e-3), dict(distill_patience=5),
                   dict(distill_batch=32), dict(distill_min_delta=0.1)):
        t2 = experiments.Teacher(t.cfg.replace(**change), t.model, t.data, t.run_dir)
        again, _ = experiments.recordings(t2, progress=False)
        assert again.folder == rec.folder
    assert calls == []  # the teacher was never run again


def test_the_recording_of_the_gathered_batch_equals_a_sentence_by_sentence_copy(general_teacher):
    rec, _ = experiments.recordings(general_teacher, progress=False)
    idx = np.array([3, 0, 17, 42])
    b = rec.batch(("cross", 1, "ALR"), idx)
    for k, i in enumerate(idx):
        n, m = rec.tgt_len[i], rec.src_len[i]
        want = rec.arrays["cross-1-ALR.x"][rec.tgt_off[i]:rec.tgt_off[i] + n].astype(np.float32)
        assert np.array_equal(b["x"][k, :n].numpy(), want)
        assert not b["x_pad"][k, :n].any() and b["x_pad"][k, n:].all() and (b["x"][k, n:] == 0).all()
        mem = rec.arrays["memory"][rec.src_off[i]:rec.src_off[i] + m].astype(np.float32)
        assert np.array_equal(b["memory"][k, :m].numpy(), mem)


def test_a_finished_student_holds_no_optimiser_and_loads_back_identically(general_teacher):
    t = general_teacher
    s = Student("encoder", 0, "ALRR", "XS")
    (module, history), = experiments.students(t, [s], progress=False).values()
    ck = torch.load(experiments.students_dir(t) / f"{s.name}.pt", weights_only=True)
    assert ck["finished"] and "optimizer" not in ck and ck["stopped"] in ("plateau", "cap")
    weights = sum(v.numel() * v.element_size() for v in module.state_dict().values())
    assert (experiments.students_dir(t) / f"{s.name}.pt").stat().st_size < 1.2 * weights + 100_000
    again, hist2 = load_student(t.model, s, t.cfg, experiments.students_dir(t))
    rec_train, rec_valid = experiments.recordings(t, progress=False)
    b = rec_valid.batch(s.source, np.arange(8))
    torch.testing.assert_close(again.distill_forward(b["x"], b["x_pad"]), module.distill_forward(b["x"], b["x_pad"]),
                               rtol=0, atol=0)
    assert hist2 == history
    # the weights kept are the best epoch's
    assert heldout_mse(again, rec_valid, s.source) == pytest.approx(budget(history)["heldout_mse"], rel=1e-5)


def test_more_sentences_give_a_lower_heldout_mse(general_teacher):
    """ALRR on all 3000 training sentences against ALRR on a tenth, same rule, held-out sentences."""
    t = general_teacher
    s = Student("encoder", 1, "ALRR", "S")
    mse = {}
    for n in (300, 0):
        tn = experiments.Teacher(t.cfg.replace(distill_sentences=n, distill_epochs=6), t.model, t.data, t.run_dir)
        (_, hist), = experiments.students(tn, [s], progress=False).values()
        mse[n] = budget(hist)["heldout_mse"]
    floor = heldout_mse(new_student(t.model, s, t.cfg.max_len, t.cfg.seed),
                        experiments.recordings(t, progress=False)[1], s.source)
    assert mse[0] < 0.8 * mse[300] < 0.8 * floor, (mse, floor)


def test_a_fixed_number_of_epochs_keeps_the_last_weights():
    hist = [{"epoch": e + 1, "heldout_mse": m, "steps": 1, "sentences": 1, "seconds": 0.1}
            for e, m in enumerate([0.5, 0.4, 0.45])]
    assert budget(hist, patience=0)["kept_epoch"] == 3
    assert budget(hist, patience=2)["kept_epoch"] == 2


def test_fewer_sentences_read_a_prefix_of_the_longer_recording(general_teacher, tmp_path):
    """No second recording for a subset: the first n sentences of the whole recording are the
    recording of the first n sentences."""
    from ffattn.distill import record
    t = general_teacher
    whole, _ = experiments.recordings(t, progress=False)
    part, _ = experiments.recordings(t, 300, progress=False)
    assert len(part) == 300 and part.folder == whole.folder
    train = t.data["train"]
    fresh = record(t.model, train.src_ids[:300], train.tgt_ids[:300], experiments.all_sources(t.cfg), tmp_path,
                   progress=False)
    idx = np.array([0, 5, 299])
    for source in (("encoder", 1, "ELR"), ("cross", 0, "ALR")):
        a, b = part.batch(source, idx), fresh.batch(source, idx)
        for k in ("x", "target", "memory"):
            if a[k] is not None:
                assert torch.equal(a[k], b[k]), (source, k)


def test_an_interrupted_student_resumes_to_the_same_weights(general_teacher, monkeypatch):
    """Killed after its second epoch's checkpoint, a student resumes from it (optimiser and best
    weights included) and ends where an uninterrupted run ends."""
    import ffattn.distill as distill
    t = general_teacher
    s = Student("encoder", 0, "ALR", "XS")
    runs = {}
    for name in ("straight", "interrupted"):
        tn = experiments.Teacher(t.cfg.replace(distill_epochs=4, distill_patience=0, lr_alr=3e-3),
                                 t.model, t.data, t.run_dir / name)
        if name == "interrupted":
            real, calls = distill._checkpoint, []

            def dying(*a, **k):
                real(*a, **k)
                calls.append(1)
                if len(calls) == 2:
                    raise KeyboardInterrupt
            monkeypatch.setattr(distill, "_checkpoint", dying)
            with pytest.raises(KeyboardInterrupt):
                experiments.students(tn, [s], progress=False)
            monkeypatch.setattr(distill, "_checkpoint", real)
        (module, hist), = experiments.students(tn, [s], progress=False).values()
        runs[name] = (module.state_dict(), [h["heldout_mse"] for h in hist])
    assert runs["straight"][1] == runs["interrupted"][1]
    for k, v in runs["straight"][0].items():
        assert torch.equal(v, runs["interrupted"][0][k]), k


def test_sentence_points_parse_and_bad_ones_are_named():
    from ffattn import budget as study
    assert study.parse_sentences("1000, 3000,0") == [1000, 3000, 0]
    assert study.parse_sentences("0,1000,0,") == [0, 1000]  # asked twice: once
    for bad in ("-5", "1e3", "all", "3.5"):
        with pytest.raises(ValueError, match=f"number of sentences '{bad}'.*0 for all of them"):
            study.parse_sentences(f"1000,{bad}")
    with pytest.raises(ValueError, match="no numbers of sentences in ' , '"):
        study.parse_sentences(" , ")


# ----------------------------------------------------------------------------- batch sizes (chapter 8)

def test_batch_settings_parse_and_bad_ones_are_named():
    from ffattn import budget as study
    assert study.parse_batches("512x2, 256") == [(512, 2.0), (256, 1.0)]
    assert study.parse_batches("512X2,512x2,512") == [(512, 2.0), (512, 1.0)]  # asked twice: once
    assert study.parse_batches("") == study.parse_batches("none") == []
    for bad in ("512x", "x2", "0x1", "512x-1", "512xnan", "big", "512x2x3"):
        with pytest.raises(ValueError, match=f"batch setting '{bad}'.*e.g. 512x2"):
            study.parse_batches(f"128,{bad}")


def test_a_batch_setting_scales_both_rates_and_keys_its_students_apart_from_the_grids():
    from ffattn import budget as study
    from ffattn.config import get_config
    cfg = get_config("tiny")
    b = study.batch_config(cfg, 512, 2.0)
    assert (b.distill_batch, b.lr_alr, b.lr_other) == (512, 2 * cfg.lr_alr, 2 * cfg.lr_other)
    assert b.teacher_key() == cfg.teacher_key()  # the same teacher and recording
    assert b.distill_key() != cfg.distill_key() != study.batch_config(cfg, 512, 1.0).distill_key()
    assert study.batch_config(cfg, cfg.distill_batch, 1.0).distill_key() == cfg.distill_key()  # the grid's own


def test_a_batch_study_of_unknown_or_no_cells_is_refused_before_training_anything():
    import types
    from ffattn import budget as study
    from ffattn.config import get_config
    t = types.SimpleNamespace(cfg=get_config("tiny"))  # no model, no data: the check comes first
    with pytest.raises(ValueError, match=r"\('encoder', 'XLR', 'L'\).*valid: .*\('encoder', 'ALR', 'L'\)"):
        study.batch_study(t, cells=[("encoder", "ALR", "L"), ("encoder", "XLR", "L")])
    with pytest.raises(ValueError, match="cells none"):
        study.batch_study(t, cells=[])
