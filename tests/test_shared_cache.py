"""Two processes over one runs/ folder, a killed lock holder, and repeatable runs."""
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from filelock import FileLock

from ffattn import experiments
from ffattn.config import get_config
from ffattn.evaluate import score

# seconds to train on 2 cores; big enough that the second process really waits
MICRO = dict(train_limit=400, valid_limit=40, vocab_size=300, d_model=32, n_heads=2, d_ff=64, n_enc=1, n_dec=1,
             epochs=3, warmup=30, valid_bleu_sentences=0, distill_epochs=2, distill_batch=32, batch_tokens=600)

WORKER = textwrap.dedent("""
    import hashlib, json, os, sys, time
    import torch
    from ffattn import distill, experiments, files
    from ffattn.config import get_config

    calls = {"teacher": 0, "student_epochs": 0}
    train_teacher, checkpoint = experiments.train_teacher, distill._checkpoint

    def counted_teacher(*a, **k):
        calls["teacher"] += 1
        return train_teacher(*a, **k)

    def counted_checkpoint(*a, **k):
        calls["student_epochs"] += 1
        return checkpoint(*a, **k)

    experiments.train_teacher, distill._checkpoint = counted_teacher, counted_checkpoint
    cfg = get_config("tiny", **json.loads(sys.argv[1]))
    print("ready", flush=True)
    while not os.path.exists(sys.argv[2]):  # both processes start asking at the same moment
        time.sleep(0.01)
    started = time.perf_counter()
    t = experiments.teacher(cfg, progress=False)
    got = experiments.students(t, experiments.all_layers(cfg, "encoder", "ALR", "M"), progress=False)

    def digest(state):
        h = hashlib.sha256()
        for k in sorted(state):
            h.update(k.encode() + state[k].detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    print(json.dumps({"calls": calls, "seconds": time.perf_counter() - started, "waits": files.WAITS,
                      "teacher": digest(t.model.state_dict()),
                      "students": {s.name: digest(m.state_dict()) for s, (m, _) in got.items()}}))
""")


def test_two_processes_share_one_cache(tmp_path):
    """Both ask for the same teacher and students at once: one trains, the other waits and
    loads; both end with identical weights and nothing is trained twice."""
    env = {**os.environ, "FFATTN_RUNS": str(tmp_path / "runs"), "OMP_NUM_THREADS": "1"}
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(MICRO), str(go)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        results.append((json.loads(out.strip().splitlines()[-1]), err))
    (a, err_a), (b, err_b) = sorted(results, key=lambda r: r[0]["calls"]["teacher"], reverse=True)
    assert a["calls"]["teacher"] == 1 and b["calls"]["teacher"] == 0, "the teacher was trained twice"
    assert a["calls"]["student_epochs"] > 0 == b["calls"]["student_epochs"], "a student was trained twice"
    assert a["teacher"] == b["teacher"] and a["students"] == b["students"]
    assert b["waits"] and sum(s for _, s in b["waits"]) > 0, "the second process never waited"
    assert "another process is building or reading the teacher" in err_b  # it said why it waited
    print(f"\nthe second process waited {sum(s for _, s in b['waits']):.1f} s instead of training "
          f"(the first trained in {a['seconds']:.1f} s)")


def test_a_killed_lock_holder_blocks_no_one(tmp_path):
    """The locks are the operating system's: they end with their process, however it ends."""
    artifact = tmp_path / "teacher.pt"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from ffattn.files import lock
        with lock({str(artifact)!r}):
            print("held", flush=True)
            time.sleep(600)
    """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(TimeoutError):  # held: a second taker waits
        FileLock(str(artifact) + ".lock").acquire(timeout=0.2)
    holder.kill()
    holder.wait()
    started = time.perf_counter()
    with FileLock(str(artifact) + ".lock", timeout=10):
        pass
    assert time.perf_counter() - started < 5
    assert not artifact.exists()  # nothing half-written where the artifact belongs


def test_same_seed_same_teacher_and_bleu(tmp_path, monkeypatch):
    """On one machine with one thread count, a run repeats bit for bit: same weights, same BLEU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    models, bleus = [], []
    try:
        for k in range(2):
            monkeypatch.setenv("FFATTN_RUNS", str(tmp_path / f"runs{k}"))
            t = experiments.teacher(get_config("tiny", **MICRO), progress=False)
            models.append(t.model.state_dict())
            valid = t.data["valid"]
            hyps = t.translate(valid.src)
            bleus.append((hyps, score(hyps, valid.tgt)["bleu"]))
    finally:
        torch.set_num_threads(threads)
    for name in models[0]:
        assert torch.equal(models[0][name], models[1][name]), name
    assert bleus[0] == bleus[1]  # the same translations, the same BLEU
    assert any(bleus[0][0])  # it translates: not two empty outputs
