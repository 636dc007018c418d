"""Distillation on the fly: nothing on disk, the same students as from a recording."""
import numpy as np
import pytest
import torch

from ffattn import experiments
from ffattn.config import get_config
from ffattn.distill import OnTheFly, heldout_mse

MICRO = dict(train_limit=300, valid_limit=40, vocab_size=300, d_model=32, n_heads=2, d_ff=64, n_enc=1, n_dec=1,
             epochs=2, warmup=30, valid_bleu_sentences=0, distill_epochs=2, distill_batch=32, batch_tokens=600)


def test_on_the_fly_students_equal_recorded_ones(tmp_path, monkeypatch):
    monkeypatch.setenv("FFATTN_RUNS", str(tmp_path))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        live_cfg = get_config("tiny", distill_source="on_the_fly", **MICRO)
        t = experiments.teacher(live_cfg, progress=False)
        wanted = [s for w in ("encoder", "decoder", "cross") for s in experiments.all_layers(live_cfg, w, "ALR", "M")]
        live = experiments.students(t, wanted, progress=False)
        assert not (t.run_dir / "recordings").exists()  # 0 bytes recorded
        rec_cfg = get_config("tiny", **MICRO)
        assert rec_cfg.distill_key() != live_cfg.distill_key()
        t_rec = experiments.Teacher(rec_cfg, t.model, t.data, t.run_dir, t.history)
        recorded = experiments.students(t_rec, wanted, progress=False)
        assert (t.run_dir / "recordings").exists()
    finally:
        torch.set_num_threads(threads)
    valid = experiments.recordings(t_rec, progress=False)[1]
    for s in wanted:
        (a, ha), (b, hb) = live[s], recorded[s]
        assert [h["steps"] for h in ha] == [h["steps"] for h in hb]  # the same batches
        for x, y in zip(ha, hb):
            assert x["heldout_mse"] == pytest.approx(y["heldout_mse"], rel=1e-3), s.name
        ma, mb = heldout_mse(a, valid, s.source), heldout_mse(b, valid, s.source)
        assert ma == pytest.approx(mb, rel=1e-3), s.name


def test_on_the_fly_batches_are_shaped_like_a_recording():
    from ffattn.model import Transformer
    torch.manual_seed(0)
    teacher = Transformer(30, 30, d_model=16, n_heads=2, d_ff=32, n_enc=1, n_dec=1, dropout=0.0).eval()
    src = [[5, 6, 7, 2], [8, 9, 2]]
    tgt = [[1, 5, 6, 2], [1, 7, 8, 9, 2]]
    live = OnTheFly(teacher, src, tgt)
    assert len(live) == 2 and live.nbytes == 0
    b = live.batch(("cross", 0, "ALR"), np.array([0, 1]))
    # target side: BOS and the pieces are real, the EOS fed to the shorter sentence is not
    assert b["x_pad"].tolist() == [[False, False, False, True], [False, False, False, False]]
    assert b["memory_pad"].tolist() == [[False, False, False, False], [False, False, False, True]]
    assert (b["x"][0, 3] == 0).all() and (b["target"][0, 3] == 0).all()
    assert torch.equal(b["x"], b["x"].half().float())  # rounded as a float16 recording is
