"""Every test reads the offline mirror and writes runs and caches into a temporary folder."""
import os
from pathlib import Path

import pytest
import torch

MIRROR = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True, scope="session")
def _offline_env(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("FFATTN_DATA", os.environ.get("FFATTN_DATA", str(MIRROR)))
    mp.setenv("FFATTN_OFFLINE", "1")
    mp.setenv("FFATTN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    mp.setenv("FFATTN_RUNS", str(tmp_path_factory.getbasetemp() / "runs"))
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield
    mp.undo()


# A config small enough to overfit 150 sentence pairs in well under a minute on 2 cores.
OVERFIT = dict(train_limit=150, valid_limit=100, vocab_size=400, d_model=64, n_heads=4, d_ff=128, n_enc=2, n_dec=2,
               dropout=0.0, epochs=60, warmup=60, lr_factor=1.0, label_smoothing=0.0,
               valid_bleu_sentences=0, max_len=50, batch_tokens=600)


@pytest.fixture(scope="session")
def overfit_teacher(_offline_env, tmp_path_factory):
    """A tiny teacher trained to memorise 150 Multi30k pairs (shared by several test files)."""
    from ffattn import experiments
    from ffattn.config import get_config
    mp = pytest.MonkeyPatch()
    mp.setenv("FFATTN_RUNS", str(tmp_path_factory.mktemp("overfit-runs")))
    t = experiments.teacher(get_config("tiny", **OVERFIT), progress=False)
    yield t
    mp.undo()


# A teacher that generalises a little: 3000 pairs, a few epochs (about a minute on 2 cores).
# Its validation sentences are a real held-out set, unlike the overfit teacher's.
GENERAL = dict(train_limit=3000, valid_limit=200, vocab_size=1000, dropout=0.0, epochs=6, warmup=200,
               valid_bleu_sentences=0, distill_sentences=0, distill_epochs=4, distill_batch=64)


@pytest.fixture(scope="session")
def general_teacher(_offline_env, tmp_path_factory):
    """A tiny teacher trained on 3000 Multi30k pairs: held-out checks of distillation use it."""
    from ffattn import experiments
    from ffattn.config import get_config
    mp = pytest.MonkeyPatch()
    mp.setenv("FFATTN_RUNS", str(tmp_path_factory.mktemp("general-runs")))
    try:  # the teacher keeps its run folder; the other tests keep their FFATTN_RUNS
        return experiments.teacher(get_config("tiny", **GENERAL), progress=False)
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny models: a second thread only adds synchronisation, which on a busy
    machine makes every small operation many times slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
