"""Distillation on a tiny teacher: students learn the teacher's blocks and beat the floor."""
import warnings

import numpy as np
import pytest
import torch

from ffattn import experiments
from ffattn.decode import translate
from ffattn.distill import Student, budget, heldout_mse, new_student
from ffattn.evaluate import score
from ffattn.replace import TeacherAttention, install


@pytest.fixture(scope="module")
def distilled(overfit_teacher):
    t = overfit_teacher
    t.cfg = t.cfg.replace(distill_epochs=25, distill_patience=0, distill_batch=32, lr_alr=1e-3)
    wanted = [Student("encoder", i, "ALR", "M") for i in range(t.cfg.n_enc)]
    wanted += [Student("encoder", 0, "ASLR", "S"), Student("decoder", 1, "ALR", "M"),
               Student("cross_causal", 0, "ALR", "XS")]
    return t, experiments.students(t, wanted, progress=False)


def test_distillation_lowers_mse_well_below_the_untrained_floor(distilled):
    """On the recorded training sentences of the overfit teacher (it memorised 150 pairs, so
    its held-out sentences are out of its distribution: see the held-out test below)."""
    t, trained = distilled
    rec_train, rec_valid = experiments.recordings(t, progress=False)
    for s, (module, history) in trained.items():
        floor = heldout_mse(new_student(t.model, s, t.cfg.max_len, t.cfg.seed), rec_train, s.source)
        mse = heldout_mse(module, rec_train, s.source)
        assert mse < 0.5 * floor, (s.name, mse, floor)
        assert history[-1]["train_mse"] < history[0]["train_mse"]
        assert np.isfinite(history[-1]["heldout_mse"])


def test_recording_holds_real_tokens_only_in_float16(distilled):
    t, trained = distilled
    rec_train, _ = experiments.recordings(t, progress=False)
    n_src = sum(len(s) for s in t.data["train"].src_ids)
    assert rec_train.arrays["encoder-0-ALR.x"].shape == (n_src, t.cfg.d_model)
    assert rec_train.arrays["encoder-0-ALR.x"].dtype == np.float16
    b = rec_train.batch(("encoder", 0, "ALR"), np.arange(4))
    assert (b["target"][b["x_pad"]] == 0).all()


def test_distilled_encoder_beats_the_untrained_one_in_bleu(distilled):
    t, trained = distilled
    train = t.data["train"]
    cells = {trained_: experiments.Cell("encoder", "ALR", "M",
                                        tuple(Student("encoder", i, "ALR", "M") for i in range(t.cfg.n_enc)),
                                        trained=trained_) for trained_ in (True, False)}
    bleu = {k: score(translate(experiments.cell_model(t, c, trained), t.tokenizers, train.src), train.tgt)["bleu"]
            for k, c in cells.items()}
    assert bleu[True] > bleu[False] + 20, bleu


def test_student_checkpoints_load_back_identically(distilled):
    t, trained = distilled
    again = experiments.students(t, list(trained), progress=False)
    for s in trained:
        for a, b in zip(trained[s][0].state_dict().values(), again[s][0].state_dict().values()):
            assert torch.equal(a, b)


def test_wrapping_the_teachers_own_attention_changes_no_translation(overfit_teacher):
    t = overfit_teacher
    slots = {("encoder", i, "ALR"): t.model.encoder.layers[i].self_attn_block.attn for i in range(t.cfg.n_enc)}
    slots.update({("decoder", i, "ALR"): t.model.decoder.layers[i].self_attn_block.attn for i in range(t.cfg.n_dec)})
    slots.update({("cross", i, "ALR"): t.model.decoder.layers[i].cross_attn_block.attn for i in range(t.cfg.n_dec)})
    wrapped = install(t.model, {k: TeacherAttention(v) for k, v in slots.items()}).eval()
    src = t.data["train"].src[:60]
    assert translate(wrapped, t.tokenizers, src) == translate(t.model, t.tokenizers, src)


def test_distillation_lowers_heldout_mse_well_below_the_untrained_floor(general_teacher):
    """On validation sentences neither the teacher nor the students saw."""
    t = general_teacher
    wanted = [Student("encoder", 0, "ALR", "S"), Student("encoder", 1, "ASLR", "XS"),
              Student("decoder", 1, "ALR", "S")]
    trained = experiments.students(t, wanted, progress=False)
    _, rec_valid = experiments.recordings(t, progress=False)
    assert len(rec_valid) == len(t.data["valid"].src_ids) > 150
    for s, (module, history) in trained.items():
        floor = heldout_mse(new_student(t.model, s, t.cfg.max_len, t.cfg.seed), rec_valid, s.source)
        best = budget(history)["heldout_mse"]  # the student kept is its best epoch's
        assert best == pytest.approx(heldout_mse(module, rec_valid, s.source), rel=1e-4)
        assert best < 0.5 * floor, (s.name, history, floor)
        assert best < history[0]["heldout_mse"], (s.name, history)


def test_a_compiled_step_equals_the_eager_one_and_stays_outside_the_key():
    """`distill_compile` only changes how the step runs: the same loss and gradients (to float
    rounding) for batches of two lengths (dynamic shapes), and the same cache key."""
    from ffattn.config import get_config
    from ffattn.distill import step_loss
    from small_models import ML, small_teacher
    teacher = small_teacher()
    torch.manual_seed(0)
    for where in ("decoder", "cross_causal"):
        s = Student(where, 0, "ALR", "M")
        eager, comp = new_student(teacher, s, ML), new_student(teacher, s, ML)
        comp.load_state_dict(eager.state_dict())
        f_eager, f_comp = step_loss(eager), step_loss(comp, compile=True)
        for B, T in ((6, 5), (4, 8)):
            x, target = torch.randn(B, T, 16), torch.randn(B, T, 16)
            pad = torch.zeros(B, T, dtype=torch.bool)
            pad[0, T - 2:] = True
            mem = torch.randn(B, 3, 16) if where == "cross_causal" else None
            mpad = torch.zeros(B, 3, dtype=torch.bool) if mem is not None else None
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                a, b = f_eager(x, pad, mem, mpad, target), f_comp(x, pad, mem, mpad, target)
            assert not [w for w in caught if "torch.compile failed" in str(w.message)]  # it did compile
            a.backward()
            b.backward()
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
            for p, q in zip(eager.parameters(), comp.parameters()):
                if p.grad is not None:
                    torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6)
            eager.zero_grad()
            comp.zero_grad()
    tiny = get_config("tiny")
    assert get_config("tiny", distill_compile="causal").distill_key() == tiny.distill_key()
    with pytest.raises(ValueError, match="distill_compile.*off, causal, all"):
        get_config("tiny", distill_compile="fast")


def test_every_student_of_a_grid_runs_compiled():
    """All students compile the same step function: past torch's default of 8 variants it
    would run the rest eagerly, without an error (torch only logs it). Twelve students of
    three kinds and four sizes."""
    import logging

    from ffattn.distill import step_loss
    from small_models import ML, small_teacher
    logged = []
    handler = logging.Handler()
    handler.emit = lambda record: logged.append(record.getMessage())
    logging.getLogger("torch._dynamo").addHandler(handler)
    try:
        teacher = small_teacher()
        torch.manual_seed(0)
        for where in ("encoder", "decoder", "cross_causal"):
            for size in ("XS", "S", "M", "L"):
                f = step_loss(new_student(teacher, Student(where, 1, "ALR", size), ML), compile=True)
                for T in (5, 7, 8):
                    mem = torch.randn(3, 4, 16) if where == "cross_causal" else None
                    mpad = torch.zeros(3, 4, dtype=torch.bool) if mem is not None else None
                    f(torch.randn(3, T, 16), torch.zeros(3, T, dtype=torch.bool), mem, mpad, torch.randn(3, T, 16))
    finally:
        logging.getLogger("torch._dynamo").removeHandler(handler)
    assert not [m for m in logged if "recompile_limit" in m], logged


def test_bf16_students_are_keyed_compute_in_bfloat16_and_learn_as_fp32_ones(general_teacher, tmp_path, monkeypatch):
    """`distill_precision` bf16 runs the students' steps under bfloat16 autocast on the CPU (the
    teacher stays fp32 there); it is part of the key (fp32 keeps the old keys), a student
    trained in bf16 reaches the held-out MSE of the same student trained in fp32, and a CPU
    without native bfloat16 gets a warning (there bf16 is slower)."""
    from ffattn import distill
    from ffattn.config import get_config
    from ffattn.distill import train_students
    from ffattn.train import autocast
    tiny = get_config("tiny")
    assert get_config("tiny", distill_precision="fp32").distill_key() == tiny.distill_key()
    assert get_config("tiny", distill_precision="bf16").distill_key() != tiny.distill_key()
    assert get_config("paper").distill_precision == "bf16"
    with pytest.raises(ValueError, match="distill_precision.*fp32, tf32, bf16"):
        get_config("tiny", distill_precision="fp16")
    lin, x = torch.nn.Linear(4, 4), torch.randn(2, 4)
    with autocast("bf16", torch.device("cpu"), cpu_bf16=True):
        assert lin(x).dtype == torch.bfloat16
    with autocast("bf16", torch.device("cpu")):  # the teacher's steps
        assert lin(x).dtype == torch.float32
    assert isinstance(distill.cpu_has_bf16(), bool)
    if not distill.cpu_has_bf16():  # emulated, a bf16 epoch would take far longer than a test may
        pytest.skip("this CPU has no native bfloat16: the training half of the test needs it")

    t = general_teacher
    rec_train, rec_valid = experiments.recordings(t, progress=False)
    s = Student("encoder", 0, "ALR", "S")
    got = {}
    for prec in ("fp32", "bf16"):
        cfg = t.cfg.replace(distill_precision=prec, distill_epochs=2, distill_patience=0)
        monkeypatch.setattr(distill, "cpu_has_bf16", lambda: False)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            history = train_students(t.model, [s], rec_train, rec_valid, cfg, tmp_path / prec, progress=False)[s]
        slow = [w for w in caught if "without native bfloat16" in str(w.message)]
        assert len(slow) == (prec == "bf16"), [str(w.message) for w in caught]
        got[prec] = history[-1]["heldout_mse"]
    floor = heldout_mse(new_student(t.model, s, t.cfg.max_len, t.cfg.seed), rec_valid, s.source)
    assert got["bf16"] != got["fp32"]  # the arithmetic did change ...
    assert got["bf16"] == pytest.approx(got["fp32"], rel=0.1)  # ... and not what the student learned
    assert got["bf16"] < 0.5 * floor


def test_turns_pack_students_under_the_limit_largest_first(monkeypatch):
    from ffattn.config import get_config
    from ffattn import distributed as dd
    from ffattn.distill import BYTES_PER_PARAM, memory_share, training_bytes, turns
    from ffattn.model import Transformer
    assert turns(list("abcd"), [4, 1, 3, 2], 0) == [list("abcd")]  # no limit: one turn
    assert turns([], [], 5) == []
    got = turns(list("abcde"), [4, 1, 3, 2, 9], 5)
    assert got == [["e"], ["a", "b"], ["c", "d"]]  # e alone (above the limit), then first fit, largest first
    assert sorted(x for t in got for x in t) == list("abcde")
    tiny = get_config("tiny")
    teacher = Transformer.from_config(tiny, 100, 100)
    for s in (Student("encoder", 0, "ASLR", "L"), Student("cross_causal", 1, "ALR", "M")):  # the modules' own count
        module = new_student(teacher, s, tiny.max_len)
        trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
        assert training_bytes(s, tiny) == BYTES_PER_PARAM * trainable
    cfg = get_config("small")
    layer = [Student("encoder", 0, sc, sz) for sc in ("ALR", "ASLR") for sz in ("XS", "S", "M", "L")]
    sizes = [training_bytes(s, cfg) for s in layer]
    assert len(turns(layer, sizes, cfg.distill_memory_gb * 1e9)) == 1  # one process at small: one turn
    for t in turns(layer, sizes, cfg.distill_memory_gb * 1e9 / 2):  # two ranks: each turn within its share
        assert sum(training_bytes(s, cfg) for s in t) <= 2.5e9
    assert memory_share(cfg) == 5e9 and memory_share(get_config("tiny")) == 0  # one process; tiny: no limit
    monkeypatch.setattr(dd, "local_world", lambda: 2)
    assert memory_share(cfg, "cpu") == 2.5e9 and memory_share(cfg, "cuda") == 5e9  # shared on a CPU, per GPU


def test_students_trained_in_turns_equal_those_trained_side_by_side(general_teacher, tmp_path, monkeypatch):
    """`distill_memory_gb` decides only which students train at once: outside the key, and the
    students come out the same, weight for weight."""
    from ffattn import distill
    from ffattn.config import get_config
    assert get_config("small", distill_memory_gb=0).distill_key() == get_config("small").distill_key()
    with pytest.raises(ValueError, match="distill_memory_gb=-1.*0 or more"):
        get_config("tiny", distill_memory_gb=-1)
    t = general_teacher
    rec_train, rec_valid = experiments.recordings(t, progress=False)
    pair = [Student("encoder", 0, "ALR", "S"), Student("encoder", 0, "ASLR", "XS")]
    calls = []
    real = distill._train_group
    monkeypatch.setattr(distill, "_train_group", lambda *a: calls.append([s.name for s in a[2]]) or real(*a))
    weights = {}
    for gb in (0, 1e-6):  # no limit; a limit below either student: each alone
        cfg = t.cfg.replace(distill_epochs=2, distill_patience=0, distill_memory_gb=gb)
        distill.train_students(t.model, pair, rec_train, rec_valid, cfg, tmp_path / str(gb), progress=False)
        weights[gb] = {s: distill.load_student(t.model, s, cfg, tmp_path / str(gb))[0].state_dict() for s in pair}
    assert calls[0] == [s.name for s in pair] and sorted(calls[1:]) == [[s.name] for s in pair]
    # a checkpoint of other settings is refused before any turn trains, not when its turn comes
    from ffattn.files import save_atomic
    save_atomic({"distill_key": "another", "finished": False, "history": []}, tmp_path / "stale" / f"{pair[1].name}.pt")
    calls.clear()
    with pytest.raises(ValueError, match=f"{pair[1].name}.pt was trained under other distillation settings"):
        distill.train_students(t.model, pair, rec_train, rec_valid, cfg, tmp_path / "stale", progress=False)
    assert calls == []
    for s in pair:
        for k, v in weights[0][s].items():
            torch.testing.assert_close(weights[1e-6][s][k], v, rtol=0, atol=0)


def test_the_memory_benchmark_takes_one_recordings_largest_group_and_names_bad_flags():
    import subprocess
    import sys
    from pathlib import Path
    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(bench))
    try:
        from bench_memory import group
    finally:
        sys.path.remove(str(bench))
    students = group(1)
    assert len(set(students)) == 8 and {s.source for s in students} == {("encoder", 1, "ALR")}
    for flag, said in (("--sentences=0", "--sentences 0"), ("--memory-gb=-1", "--memory-gb -1.0"),
                       ("--heap=maybe", "'maybe'")):
        out = subprocess.run([sys.executable, str(bench / "bench_memory.py"), flag], capture_output=True, text=True)
        assert out.returncode == 2 and said in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_the_distill_benchmark_hands_its_processes_their_students_and_names_bad_rank_flags():
    import subprocess
    import sys
    from pathlib import Path
    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(bench))
    try:
        from bench_distill import _without
    finally:
        sys.path.remove(str(bench))
    argv = ["--preset", "tiny", "--ranks", "2", "--students", "encoder ALR-L,encoder ELR-L", "--out=x.json", "--batch", "128"]
    assert _without(argv, "--ranks", "--students", "--out") == ["--preset", "tiny", "--batch", "128"]
    for flags, said in ((["--ranks", "1"], "--ranks 1"), (["--ranks", "2", "--batch", "128", "512"], "one --batch"),
                        (["--ranks", "2", "--heap", "off", "on"], "one --heap"), (["--heap", "maybe"], "'maybe'"),
                        (["--against", "no-such-revision"], "--against no-such-revision")):
        out = subprocess.run([sys.executable, str(bench / "bench_distill.py"), *flags], capture_output=True, text=True)
        assert out.returncode == 2 and said in out.stderr and "Traceback" not in out.stderr, out.stderr
