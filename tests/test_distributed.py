"""torch.distributed on CPU: two gloo ranks launched by torchrun against one process."""
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from ffattn import distributed as dd
from ffattn import experiments
from ffattn.config import get_config
from ffattn.model import Transformer

MICRO = dict(train_limit=400, valid_limit=40, vocab_size=300, d_model=32, n_heads=2, d_ff=64, n_enc=1, n_dec=1,
             epochs=2, warmup=30, valid_bleu_sentences=0, distill_epochs=1, distill_batch=32, batch_tokens=600)
FLAGS = [f"--{k.replace('_', '-')}={v}" for k, v in MICRO.items()]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def _env(runs):
    return {**os.environ, "FFATTN_RUNS": str(runs), "OMP_NUM_THREADS": "1"}


def _run(cmd, runs):
    out = subprocess.run(cmd, env=_env(runs), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_shares():
    assert [dd.shard(10, r, 3) for r in range(3)] == [slice(0, 4), slice(4, 7), slice(7, 10)]
    assert [dd.shard(1, r, 2) for r in range(2)] == [slice(0, 1), slice(1, 1)]  # a rank may get none
    groups = dd.balanced([100, 1, 1, 1, 50, 50], 2)
    assert sorted(sum(groups, [])) == list(range(6))
    loads = [sum([100, 1, 1, 1, 50, 50][i] for i in g) for g in groups]
    assert max(loads) - min(loads) <= 1  # by cost, not by count: 100+1+1+1 against 50+50
    assert not dd.active() and dd.rank() == 0 and dd.world() == 1  # one process: the plain path


def test_the_grid_is_shared_out_by_cost(monkeypatch):
    cfg = get_config("tiny")
    students = {s for c in experiments.grid(cfg) if c.trained for s in c.students}
    monkeypatch.setattr(dd, "world", lambda: 2)
    shares = []
    for r in (0, 1):
        monkeypatch.setattr(dd, "rank", lambda r=r: r)
        shares.append(experiments._my_share(cfg, students))
    assert set(shares[0]) | set(shares[1]) == students and not set(shares[0]) & set(shares[1])
    from ffattn.replace import count_params
    load = [sum(count_params(s.scheme, s.size, cfg.max_len, cfg.d_model, cfg.n_heads, s.where) for s in share)
            for share in shares]
    assert abs(load[0] - load[1]) / max(load) < 0.05, load  # equal work, not equal counts


def test_two_gloo_ranks_train_the_teacher_one_process_trains(tmp_path):
    """Each rank takes its share of every global batch: the same optimisation as one process."""
    _run([sys.executable, "-m", "ffattn", "teacher", "--preset", "tiny", *FLAGS], tmp_path / "one")
    _run(TORCHRUN + ["-m", "ffattn", "teacher", "--preset", "tiny", *FLAGS], tmp_path / "two")
    cfg = get_config("tiny", **MICRO)
    name = cfg.run_dir().name
    one = torch.load(tmp_path / "one" / name / "teacher.pt", weights_only=True)
    two = torch.load(tmp_path / "two" / name / "teacher.pt", weights_only=True)
    assert one.keys() == two.keys() and one["epoch"] == two["epoch"] == MICRO["epochs"]
    assert one["step"] == two["step"]  # the same global batches
    for a, b in zip(one["history"], two["history"]):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert b["valid_loss"] == pytest.approx(a["valid_loss"], rel=1e-4)
        assert b["tokens"] == a["tokens"]
    # the same function: Adam turns the rounding noise of gradients that are zero in exact
    # arithmetic (the attention's key bias cannot change a softmax) into visible weight noise,
    # so compare what the models compute
    models = []
    for ck in (one, two):
        m = Transformer(ck["model"]["encoder.embed.tok.weight"].shape[0], ck["model"]["generator.weight"].shape[0],
                        d_model=32, n_heads=2, d_ff=64, n_enc=1, n_dec=1, dropout=0.0)
        m.load_state_dict(ck["model"])
        models.append(m.eval())
    g = torch.Generator().manual_seed(0)
    src, tgt = torch.randint(4, 200, (4, 9), generator=g), torch.randint(4, 200, (4, 7), generator=g)
    with torch.no_grad():
        torch.testing.assert_close(models[1](src, tgt), models[0](src, tgt), rtol=1e-3, atol=1e-3)


GRID = textwrap.dedent("""
    import json, sys
    from ffattn import distributed as dd, experiments
    from ffattn.config import get_config
    dd.init()
    assert dd.local_world() == dd.world()  # every rank on this machine: they share its memory
    cfg = get_config("tiny", **json.loads(sys.argv[1]))
    t = experiments.teacher(cfg, progress=False)
    cells = [c for c in experiments.grid(cfg) if c.name in sys.argv[2].split(",")]
    df = experiments.run_grid(t, cells, progress=False)
    if dd.is_main():
        print(json.dumps(df[["group", "scheme", "size", "trained", "bleu", "chrf", "heldout_mse",
                              "replaced_params", "epochs", "steps"]].to_dict("records")))
    dd.close()
""")


def test_the_grid_across_two_ranks_equals_one_process(tmp_path, monkeypatch):
    """Students and cells shared out by cost among two ranks: the same rows as one process, the
    ranks under a memory limit that lets no two students train side by side."""
    cfg = get_config("tiny", **MICRO)
    one, two = tmp_path / "one", tmp_path / "two"
    with monkeypatch.context() as mp:
        mp.setenv("FFATTN_RUNS", str(one))
        experiments.teacher(cfg, progress=False)  # one teacher for both, so only the grid differs
    shutil.copytree(one / cfg.run_dir().name, two / cfg.run_dir().name)
    cells = "encoder-ALR-M,encoder-ASLR-XS,encoder-ELR-S,decoder-ALR-M,encoder-ALR-M-untrained"
    script = tmp_path / "grid.py"
    script.write_text(GRID)
    rows_one = _run([sys.executable, str(script), json.dumps(MICRO), cells], one).stdout
    rows_two = _run(TORCHRUN + [str(script), json.dumps({**MICRO, "distill_memory_gb": 1e-6}), cells], two).stdout
    assert json.loads(rows_one.strip().splitlines()[-1]) == json.loads(rows_two.strip().splitlines()[-1])
    students = sorted(p.name for p in (two / cfg.run_dir().name).rglob("students/*.pt"))
    assert students == ["decoder-0-ALR-M.pt", "encoder-0-ALR-M.pt", "encoder-0-ASLR-XS.pt", "encoder-0-ELR-S.pt"]


def test_not_launched_means_not_distributed(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert dd.init() is False and not dd.active()
    assert Path(dd.__file__).name == "distributed.py"


def test_the_study_command_trains_chapter_8s_points_across_two_ranks_for_the_chapter_to_read(tmp_path, monkeypatch):
    """`torchrun ... study` trains the budget study's points ahead of the book: the chapter's
    own call then reads every student back (none trained again) and gets the tables printed."""
    from ffattn import budget
    cfg = get_config("tiny", **MICRO)
    monkeypatch.setenv("FFATTN_RUNS", str(tmp_path))
    # 5000 is more than the training set: all of it, the same point as 0, trained once
    out = _run(TORCHRUN + ["-m", "ffattn", "study", "--preset", "tiny", *FLAGS, "--sentences", "100,0,5000",
                           "--batches", "64x2"], tmp_path).stdout
    students = sorted((tmp_path / cfg.run_dir().name).rglob("students/*.pt"))
    assert len(students) == 11 * 2 + 4  # 11 cells of one layer at two points; 4 at the other batch
    written = {p: p.stat().st_mtime_ns for p in students}
    t = experiments.teacher(cfg, progress=False)
    points, _ = budget.study(t, [100, 0], progress=False)
    bpoints, _ = budget.batch_study(t, [(64, 2.0)], progress=False)
    assert {p: p.stat().st_mtime_ns for p in students} == written  # read back, nothing trained again
    assert out.count("budget rule:") == 1  # rank 0 prints, rank 1 does not
    assert len(points) == 22 and sorted(set(points.sentences)) == [100, len(t.data["train"])]
    for cell, row in points.pivot_table(index="cell", columns="sentences", values="bleu", sort=False).iterrows():
        assert f"| {cell} | {row.iloc[0]:.1f} | {row.iloc[1]:.1f} |" in out  # the chapter's table, printed
    for row in bpoints.itertuples():
        assert f"| {row.cell} | {row.setting} | {round(row.bleu, 1):g} |" in out
    assert len(bpoints) == 8 and "batch 64, lr x2" in set(bpoints.setting)
