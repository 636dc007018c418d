"""A bundle of trained models that attendees unpack instead of training."""
import functools
import os
from pathlib import Path
import http.server
import io
import json
import tarfile
import threading

import pytest
import torch

from ffattn import experiments, workshop
from ffattn.config import get_config

MICRO = dict(train_limit=300, valid_limit=40, vocab_size=300, d_model=32, n_heads=2, d_ff=64, n_enc=1, n_dec=1,
             epochs=2, warmup=30, valid_bleu_sentences=0, distill_epochs=1, distill_batch=32, batch_tokens=600,
             finetune_epochs=1, finetune_sentences=100)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A micro teacher, two students and the fine-tuned attentionless model trained in one runs
    folder, and their bundle."""
    mp = pytest.MonkeyPatch()
    mp.setenv("FFATTN_RUNS", str(tmp_path_factory.mktemp("bundle-source")))
    cfg = get_config("tiny", **MICRO)
    t = experiments.teacher(cfg, progress=False)
    wanted = experiments.all_layers(cfg, "encoder", "ALR", "M") + experiments.all_layers(cfg, "decoder", "ALR", "M")
    got = experiments.students(t, wanted, progress=False)
    tuned = experiments.finetuned(t, progress=False)
    path = workshop.bundle(cfg, tmp_path_factory.mktemp("out") / "micro.tar", progress=False)
    mp.undo()
    return cfg, t, got, path, tuned


@pytest.fixture
def fresh_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("FFATTN_RUNS", str(tmp_path / "runs"))
    return tmp_path / "runs"


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a) and a.keys() == b.keys()


def test_unbundled_models_load_without_training(made, fresh_runs, monkeypatch):
    cfg, t, got, path, tuned = made
    names = json.loads(tarfile.open(path).extractfile("manifest.json").read())["files"]
    assert not any("/recordings/" in n or n.endswith((".lock", ".part")) for n in names)
    manifest = workshop.unbundle(path, progress=False)
    assert manifest["teacher_key"] == cfg.teacher_key()

    def no_training(*a, **k):
        raise AssertionError("trained instead of loading the bundle")
    monkeypatch.setattr(experiments, "train_teacher", no_training)
    monkeypatch.setattr("ffattn.distill._checkpoint", no_training)
    t2 = experiments.teacher(cfg, progress=False)
    assert _same(t.model.state_dict(), t2.model.state_dict())
    got2 = experiments.students(t2, list(got), progress=False)
    assert all(_same(got[s][0].state_dict(), got2[s][0].state_dict()) for s in got)
    assert not (cfg.run_dir() / "recordings").exists()  # finished students need no recording
    # finished students only, weights only: no optimiser state travels
    ck = torch.load(fresh_runs / next(n for n in names if n.endswith("-M.pt")), weights_only=True)
    assert ck["finished"] and "optimizer" not in ck
    monkeypatch.setattr("ffattn.finetune.save_atomic", no_training)
    tuned2 = experiments.finetuned(t2, progress=False)  # chapter 7's fine-tune travels too
    assert _same(tuned["model"].state_dict(), tuned2["model"].state_dict()) and tuned2["bleu"] == tuned["bleu"]
    assert workshop.unbundle(path, progress=False)  # again: everything identical, nothing to do


def test_bundle_over_http(made, fresh_runs, monkeypatch):
    cfg, _, _, path, _ = made
    monkeypatch.delenv("FFATTN_OFFLINE", raising=False)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(path.parent))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    bare = path.parent / "bare"  # a server with the bundle but no .sha256 beside it
    bare.mkdir(exist_ok=True)
    (bare / "nosum.tar").write_bytes(path.read_bytes())
    try:
        workshop.unbundle(f"http://127.0.0.1:{server.server_port}/{path.name}", progress=False)
        assert (cfg.run_dir() / "teacher.pt").exists()
        workshop.unbundle(f"http://127.0.0.1:{server.server_port}/bare/nosum.tar", progress=False)
        assert not (Path(os.environ["FFATTN_CACHE"]) / "bundles" / "nosum.tar.sha256").exists()
        with pytest.raises(RuntimeError, match="could not download the bundle .*missing.tar"):
            workshop.unbundle(f"http://127.0.0.1:{server.server_port}/missing.tar", progress=False)
    finally:
        server.shutdown()


def _rewrite(path, out, manifest_change=None, damage=None):
    """A copy of the bundle with its manifest changed or one file's bytes damaged."""
    with tarfile.open(path) as src, tarfile.open(out, "w") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read()
            if m.name == "manifest.json" and manifest_change:
                data = json.dumps(manifest_change(json.loads(data))).encode()
            if damage and m.name.endswith(damage):
                data = data[:-10] + bytes(10)
            m.size = len(data)
            dst.addfile(m, io.BytesIO(data))
    return out


def test_bundles_that_do_not_fit_are_refused(made, fresh_runs, tmp_path):
    cfg, _, _, path, _ = made
    old = _rewrite(path, tmp_path / "old.tar", lambda m: {**m, "student_version": m["student_version"] - 1})
    with pytest.raises(RuntimeError, match="made by another version of ffattn"):
        workshop.unbundle(old, progress=False)
    other = _rewrite(path, tmp_path / "other.tar", lambda m: {**m, "teacher_key": "0123456789"})
    with pytest.raises(RuntimeError, match="keys its config differently"):
        workshop.unbundle(other, progress=False)
    damaged = _rewrite(path, tmp_path / "damaged.tar", damage="teacher.pt")
    with pytest.raises(RuntimeError, match="damaged: .*teacher.pt"):
        workshop.unbundle(damaged, progress=False)
    assert not (cfg.run_dir() / "config.json").exists()  # checked before anything was written
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one bit flipped in transit
    (tmp_path / "whole.tar").write_bytes(bytes(data))
    (tmp_path / "whole.tar.sha256").write_text(path.with_name(path.name + ".sha256").read_text())
    with pytest.raises(RuntimeError, match="checksum differs"):
        workshop.unbundle(tmp_path / "whole.tar", progress=False)
    with pytest.raises(FileNotFoundError, match="no bundle at"):
        workshop.unbundle(tmp_path / "missing.tar", progress=False)


def test_a_different_cache_file_is_kept_unless_forced(made, fresh_runs):
    cfg, _, _, path, _ = made
    workshop.unbundle(path, progress=False)
    (cfg.run_dir() / "history.json").write_text("[]")
    with pytest.raises(RuntimeError, match="differ from what is already.*--force"):
        workshop.unbundle(path, progress=False)
    workshop.unbundle(path, force=True, progress=False)
    assert (cfg.run_dir() / "history.json").read_text() != "[]"


def test_no_bundle_without_a_trained_teacher(fresh_runs):
    with pytest.raises(RuntimeError, match="no finished teacher.*reproduce --preset tiny"):
        workshop.bundle(get_config("tiny", **MICRO))
