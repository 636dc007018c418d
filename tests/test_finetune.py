"""Fine-tuning the attentionless Transformer end to end (beyond the paper): it refuses the
paper's leaky cross-attention form, lowers the translation loss, resumes, and is keyed apart."""
import pytest
import torch

from ffattn import experiments, finetune as ft
from ffattn.config import get_config
from ffattn.replace import build_replacement, install
from small_models import small_teacher, with_slots


def causal_model(t, size="XS"):
    """The overfit teacher with fresh (undistilled) causal students in its decoder: a model the
    translation loss can improve a lot, in seconds."""
    torch.manual_seed(3)
    keys = [(w, i, "ALR") for w in ("decoder", "cross_causal") for i in range(t.cfg.n_dec)]
    return install(t.model, {k: build_replacement(t.model, *k, size, t.cfg.max_len) for k in keys})


def test_the_papers_cross_form_is_refused_before_anything_is_written(tmp_path):
    model = with_slots(small_teacher(), [("cross", 0, "ALR")])
    with pytest.raises(ValueError, match="non-causal.*attentionless_causal"):
        ft.finetune(model, data=None, path=tmp_path / "ft.pt", key="k", epochs=1, lr=1e-4)
    assert not (tmp_path / "ft.pt").exists()
    ft.check_causal(with_slots(small_teacher(), [("cross_causal", 0, "ALR"), ("decoder", 1, "ALR")]))  # no error


def test_finetuning_lowers_the_translation_loss(overfit_teacher, tmp_path):
    t = overfit_teacher
    model = causal_model(t)
    h = ft.finetune(model, t.data, tmp_path / "ft.pt", "k", epochs=3, lr=1e-3, progress=False)
    assert [r["epoch"] for r in h] == [0, 1, 2, 3]
    assert h[0]["train_loss"] is None and h[0]["step"] == 0  # the distilled start, before any step
    assert h[3]["train_loss"] < h[1]["train_loss"]
    valid = [r["valid_loss"] for r in h]  # held-out sentences the overfit teacher never saw
    assert all(b < a for a, b in zip(valid, valid[1:])) and valid[3] < 0.9 * valid[0], valid
    assert all(p.requires_grad for p in model.parameters()) and not model.training
    ck = torch.load(tmp_path / "ft.pt", weights_only=True)
    assert "optimizer" not in ck and ck["epoch"] == 3  # finished: the weights alone


def test_an_interrupted_finetune_resumes_to_the_same_weights(overfit_teacher, tmp_path, monkeypatch):
    t = overfit_teacher
    whole = causal_model(t)
    ft.finetune(whole, t.data, tmp_path / "whole.pt", "k", epochs=2, lr=1e-3, sentences=60, progress=False)

    real = ft.token_batches

    def stop_in_epoch_2(*args, epoch=0, **kw):
        if epoch == 1:
            raise KeyboardInterrupt
        return real(*args, epoch=epoch, **kw)

    monkeypatch.setattr(ft, "token_batches", stop_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        ft.finetune(causal_model(t), t.data, tmp_path / "cut.pt", "k", epochs=2, lr=1e-3, sentences=60,
                    progress=False)
    assert "optimizer" in torch.load(tmp_path / "cut.pt", weights_only=True)  # unfinished: resumable
    monkeypatch.setattr(ft, "token_batches", real)
    resumed = causal_model(t)
    h = ft.finetune(resumed, t.data, tmp_path / "cut.pt", "k", epochs=2, lr=1e-3, sentences=60, progress=False)
    assert len(h) == 3 and h[1]["sentences"] == 60
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="other settings"):
        ft.finetune(causal_model(t), t.data, tmp_path / "cut.pt", "another key", epochs=2, lr=1e-3, progress=False)


def test_finetune_settings_have_their_own_key():
    base = get_config("tiny")
    other = get_config("tiny", finetune_epochs=2, finetune_lr=3e-4, finetune_sentences=1000)
    assert other.teacher_key() == base.teacher_key() and other.distill_key() == base.distill_key()
    assert other.finetune_key() != base.finetune_key()
    assert get_config("tiny", distill_epochs=3).finetune_key() != base.finetune_key()


def test_an_unknown_attentionless_group_names_the_choices(overfit_teacher, monkeypatch):
    monkeypatch.setattr(experiments, "cell_model", lambda *a, **k: pytest.fail("loaded or trained students"))
    with pytest.raises(ValueError, match="'encoder'.*attentionless, attentionless_causal"):
        experiments.finetuned(overfit_teacher, group="encoder")
    with pytest.raises(ValueError, match="non-causal.*attentionless_causal"):  # refused before any student trains
        experiments.finetuned(overfit_teacher, group="attentionless")
