"""Training the teacher: it learns, resumes exactly, and refuses what does not match."""
import json

import pytest
import torch

from ffattn import experiments, train
from ffattn.config import get_config
from ffattn.data import prepare
from ffattn.evaluate import score
from ffattn.decode import translate
from ffattn.train import lr_at, train_teacher

from conftest import OVERFIT


def test_tiny_model_overfits_150_pairs(overfit_teacher):
    t = overfit_teacher
    train = t.data["train"]
    hyps = translate(t.model, t.tokenizers, train.src)
    bleu = score(hyps, train.tgt)["bleu"]
    assert len(train) >= 140
    assert bleu > 90, f"BLEU {bleu} on the training pairs"
    losses = [row["train_loss"] for row in t.history]
    assert losses[-1] < losses[0] / 5


def test_loaded_teacher_is_the_trained_one(overfit_teacher):
    t = overfit_teacher
    again = experiments.teacher(t.cfg, progress=False)  # loads, does not retrain
    assert again.history == t.history
    for a, b in zip(again.model.state_dict().values(), t.model.state_dict().values()):
        assert torch.equal(a, b)


def test_resume_after_interruption_gives_the_same_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("FFATTN_RUNS", str(tmp_path))
    cfg = get_config("tiny", **{**OVERFIT, "epochs": 3, "dropout": 0.1})
    data = prepare(cfg)
    straight, _ = train_teacher(cfg, data, tmp_path / "a", progress=False)
    train_teacher(cfg, data, tmp_path / "b", progress=False, stop_after_epoch=1)  # "interrupted"
    assert torch.load(tmp_path / "b" / "teacher.pt", weights_only=True)["epoch"] == 1
    resumed, history = train_teacher(cfg, data, tmp_path / "b", progress=False)
    assert [r["epoch"] for r in history] == [1, 2, 3]
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_checkpoint_of_another_config_is_refused(overfit_teacher, tmp_path):
    t = overfit_teacher
    other = t.cfg.replace(d_model=32)
    target = tmp_path / "teacher.pt"
    target.write_bytes((t.run_dir / "teacher.pt").read_bytes())
    with pytest.raises(ValueError, match="another config.*d_model"):
        train_teacher(other, t.data, tmp_path, progress=False)


def test_corrupt_checkpoint_gives_a_clear_error(overfit_teacher, tmp_path):
    (tmp_path / "teacher.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match=r"(?s)damaged.*delete it"):
        train_teacher(overfit_teacher.cfg, overfit_teacher.data, tmp_path, progress=False)


def test_run_folder_of_another_config_is_not_mixed(overfit_teacher):
    t = overfit_teacher
    config_json = t.run_dir / "config.json"
    saved = config_json.read_text()
    try:
        bad = json.loads(saved)
        bad["d_model"] = 999
        config_json.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match="another config"):
            experiments.teacher(t.cfg, progress=False)
    finally:
        config_json.write_text(saved)


def test_empty_and_single_sentences(overfit_teacher):
    t = overfit_teacher
    out = translate(t.model, t.tokenizers, ["", t.data["train"].src[0], "   "])
    assert out[0] == "" and out[2] == "" and out[1] == translate(t.model, t.tokenizers, [t.data["train"].src[0]])[0]
    assert out[1]
    with pytest.raises(TypeError, match="list of sentences"):
        translate(t.model, t.tokenizers, "ein Satz")


@pytest.mark.parametrize("kwargs, match", [
    (dict(pair="de-xx"), r"unknown pair 'de-xx'; choose one of: de-en, en-de, fr-en, en-fr"),
    (dict(corpus="wmt14"), r"unknown corpus 'wmt14'; choose one of: multi30k, iwslt2017"),
    (dict(d_modle=64), r"unknown setting\(s\) \['d_modle'\]; valid settings: .*d_model"),
    (dict(d_model=60, n_heads=8), r"d_model=60 is not divisible by n_heads=8"),
    (dict(epochs="three"), r"epochs='three' is not a valid int"),
])
def test_bad_settings_name_the_value_and_the_choices(kwargs, match):
    with pytest.raises(ValueError, match=match):
        get_config("tiny", **kwargs)


def test_unknown_preset():
    with pytest.raises(ValueError, match=r"unknown preset 'huge'; choose one of: tiny, small, paper"):
        get_config("huge")


def test_config_key_covers_what_the_teacher_depends_on():
    a = get_config("tiny")
    assert a.teacher_key() == get_config("tiny").teacher_key()
    assert a.teacher_key() != a.replace(epochs=6).teacher_key()
    assert a.teacher_key() != a.replace(pair="fr-en").teacher_key()
    assert a.teacher_key() == a.replace(beam=4, distill_epochs=3).teacher_key()  # eval/distill only
    assert a.distill_key() != a.replace(distill_epochs=7).distill_key()


def test_learning_rate_schedule_warms_up_then_decays():
    lrs = [lr_at(s, 128, 100, 1.0) for s in range(1, 1000)]
    peak = max(range(len(lrs)), key=lrs.__getitem__) + 1
    assert peak == 100
    assert lrs[0] < lrs[50] < lrs[99] and lrs[99] > lrs[500] > lrs[998]


def test_cli_rejects_bad_values(capsys):
    from ffattn.__main__ import main
    with pytest.raises(SystemExit):
        main(["teacher", "--preset", "tiny", "--pair", "xx-yy"])
    assert "unknown pair 'xx-yy'" in capsys.readouterr().err


def test_a_source_longer_than_a_students_width_is_cut_with_a_warning(overfit_teacher):
    from ffattn.replace import build_replacement, install
    t = overfit_teacher
    model = install(t.model, {("encoder", 0, "ALR"): build_replacement(t.model, "encoder", 0, "ALR", "XS", 8)})
    long, short = "ein Hund " * 10, "ein Hund"
    with pytest.warns(UserWarning, match=r"1 of 2 sources are longer than the 8 tokens"):
        out = translate(model, t.tokenizers, [long, short])
    assert len(out) == 2


def test_every_setting_is_validated_and_the_error_names_it():
    """Walk every field of Config with a bad value: a ValueError that names the field."""
    from dataclasses import fields

    from ffattn.config import Config
    bad = {str: "nonsense", int: -1, float: -0.5}
    special = {"dropout": 1.0, "label_smoothing": 1.5, "distill_min_delta": 1.0, "n_enc": 0, "n_dec": 0,
               "lr_alr": 0.0, "lr_other": 0.0, "warmup": 0, "lr_factor": 0.0, "distill_epochs": 0}
    for f in fields(Config):
        value = special.get(f.name, bad[type(f.default)])
        with pytest.raises(ValueError, match=rf"\b{f.name}\b"):
            get_config(value) if f.name == "preset" else get_config("tiny", **{f.name: value})
    with pytest.raises(ValueError, match=r"epochs='three' is not a valid int"):
        get_config("tiny", epochs="three")


def test_precision_is_keyed_and_the_cpu_stays_fp32():
    """bf16/TF32 are for GPUs: on the CPU a forward pass stays fp32 whatever the setting; a
    non-default precision is part of the teacher's key (fp32 keeps the old keys)."""
    import torch

    from ffattn.train import autocast
    tiny = get_config("tiny")
    assert get_config("tiny", precision="fp32").teacher_key() == tiny.teacher_key()
    assert get_config("tiny", precision="bf16").teacher_key() != tiny.teacher_key()
    assert get_config("paper").precision == "bf16"
    with autocast("bf16", torch.device("cpu")):
        y = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert y.dtype == torch.float32
    with pytest.raises(ValueError, match="precision"):
        get_config("tiny", precision="fp8")


def test_a_run_folder_refuses_another_config_but_not_an_older_file(tmp_path):
    import json

    from ffattn.experiments import _write_config
    cfg = get_config("tiny")
    old = cfg.to_dict()
    del old["precision"]  # written before the setting existed: reads as its default
    (tmp_path / "config.json").write_text(json.dumps(old))
    _write_config(cfg, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["precision"] == "fp32"
    (tmp_path / "config.json").write_text(json.dumps({**old, "d_model": 128}))
    with pytest.raises(ValueError, match="holds a run of another config"):
        _write_config(cfg, tmp_path)



def _minor_faults() -> int:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _rss_bytes() -> int:
    import resource
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _fill_and_free(mb: int, n: int = 1) -> None:
    for _ in range(n):  # above glibc's largest mmap threshold (32 MB)
        torch.empty((mb << 20) // 4).fill_(1.0)


@pytest.mark.skipif(train._glibc() is None, reason="heap_memory changes nothing outside glibc")
def test_heap_memory_reuses_large_buffers_and_gives_them_back():
    import resource
    pages = (64 << 20) // resource.getpagesize()
    start = _minor_faults()
    _fill_and_free(64, 8)
    assert _minor_faults() - start > 6 * pages  # glibc's own policy: a fresh mapping each time
    with train.heap_memory():
        with train.heap_memory():  # nested: the inner end keeps the outer block's setting
            pass
        _fill_and_free(64, 16)  # the heap grows to a layout that fits (3 to 8 rounds measured)
        start = _minor_faults()
        _fill_and_free(64, 8)
        assert _minor_faults() - start < pages  # then the same memory again
        _fill_and_free(256)
        held = _rss_bytes()
    assert train._HEAP_DEPTH == [0]
    assert held - _rss_bytes() > 200 << 20  # at the end, the free heap goes back to the system
