"""Cost and interpretability on small random Transformers (no data, no cached runs)."""
import json

import numpy as np
import pytest
import torch

from ffattn import cost
from ffattn.model import PAD, Transformer
from ffattn.replace import build_replacement, install

D, H, ML = 16, 2, 8  # d_model, heads, max_len of the small models


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are tiny: a second thread only adds synchronisation, which on a busy
    machine makes every small operation many times slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def small_teacher(seed=0):
    torch.manual_seed(seed)
    return Transformer(40, 45, d_model=D, n_heads=H, d_ff=32, n_enc=2, n_dec=2, dropout=0.0).eval()


def with_slots(teacher, keys, size="M"):
    torch.manual_seed(1)
    return install(teacher, {k: build_replacement(teacher, k[0], k[1], k[2], size, ML) for k in keys}).eval()


SETS = {
    "teacher": [],
    "encoder ALR+ASLR": [("encoder", 0, "ALR"), ("encoder", 1, "ASLR")],
    "encoder ALRR+ELR": [("encoder", 0, "ALRR"), ("encoder", 1, "ELR")],
    "decoder causal FF": [("decoder", 0, "ALR"), ("decoder", 1, "ALR")],
    "cross both forms": [("cross", 0, "ALR"), ("cross_causal", 1, "ALR")],
}


# ----------------------------------------------------------------------------- FLOPs and parameters

@pytest.mark.parametrize("name", SETS)
def test_flop_formula_equals_counted_forward_and_greedy(name):
    """Matrix-product FLOPs (Linear, einsum, attention scores and weighted sums): the formula
    equals what FlopCounterMode counts, for a teacher-forced forward and for T greedy steps."""
    model = with_slots(small_teacher(), SETS[name])
    S, T = 7, 5
    src = torch.randint(4, 40, (1, S))
    tgt = torch.randint(4, 45, (1, T))
    assert cost.flops(model, S, T, "forward") == cost.count_flops(model, src, tgt)
    assert cost.flops(model, S, T, "greedy") == cost.count_flops(cost.decode_steps, model, src, T)


def test_ff_encoder_cost_does_not_depend_on_length_but_attention_does():
    teacher = small_teacher()
    ff = with_slots(teacher, [("encoder", 0, "ALRR"), ("encoder", 1, "ELR")])
    enc = {n: (cost.flops(teacher, n, 1, part="encoder"), cost.flops(ff, n, 1, part="encoder")) for n in (2, 8)}
    assert enc[8][0] > 4 * enc[2][0]  # the teacher: linear plus quadratic terms in S
    # ALRR keeps the position-wise FF sublayer (linear in S); ELR is constant
    assert enc[8][1] - enc[2][1] == 2 * (8 - 2) * 2 * D * 32


def test_param_counts_split_replaced_from_total():
    teacher = small_teacher()
    p0 = cost.param_counts(teacher)
    assert p0["replaced"] == 0 and p0["total"] == sum(p.numel() for p in teacher.parameters())
    model = with_slots(teacher, [("encoder", 0, "ALR"), ("encoder", 1, "ALR")])
    p = cost.param_counts(model)
    ffs = [model.encoder.layers[i].self_attn_block.attn for i in range(2)]
    assert p["replaced"] == sum(p.numel() for m in ffs for p in m.ff.parameters())  # W_O copy excluded
    attn = 4 * D * D + 4 * D  # in_proj (3d^2 + 3d) + W_O kept
    assert p["total"] == p0["total"] + p["replaced"] - 2 * (3 * D * D + 3 * D)
    assert p["attention"] == p0["attention"] - 2 * attn


# ----------------------------------------------------------------------------- the benchmark

def test_run_bench_writes_the_documented_schema(tmp_path):
    teacher = small_teacher()
    entries = [{"name": "teacher", "model": teacher, "group": "teacher", "bleu": 30.0}]
    for name, keys, group in (("encoder-ALR-M", SETS["encoder ALR+ASLR"][:1], "encoder"),
                              ("decoder-ALR-M", SETS["decoder causal FF"], "decoder")):
        entries.append({"name": name, "model": with_slots(teacher, keys), "group": group,
                        "scheme": "ALR", "size": "M", "bleu": 25.0})
    g = torch.Generator().manual_seed(0)
    src = torch.randint(4, 40, (4, 6), generator=g)
    src[1, 4:] = PAD
    curve = {"models": {"teacher": teacher, "decoder-ALR-M": entries[2]["model"]}, "src": src,
             "steps": {"teacher": 2 * ML, "decoder-ALR-M": ML}}
    result = cost.run_bench(entries, src[:1], src, S=6, T=5, repeats=1, warmup=0, max_steps=4,
                            curve=curve, lengths=[1, ML, 2 * ML], extra={"preset": "test", "pair": "de-en"})
    result = json.loads(json.dumps(result))  # what the JSON file holds
    cost.check_schema(result)
    rows = {m["name"]: m for m in result["models"]}
    assert set(rows["teacher"]["latency_ms"]) == {"encoder_b1", "encoder_b4", "translate_b1", "translate_b4"}
    assert all(v > 0 for m in rows.values() for v in m["latency_ms"].values())
    assert rows["encoder-ALR-M"]["params_replaced"] > 0 == rows["teacher"]["params_replaced"]
    dc = result["decode_curve"]["models"]
    assert len(dc["teacher"]["ms"]) == 2 * ML and len(dc["decoder-ALR-M"]["ms"]) == ML
    # analytic per-step FLOPs (step 1 also projects the memory for cross-attention): the
    # cache makes the teacher's steps grow; the causal FF's stay flat
    assert dc["teacher"]["flops"][-1] > dc["teacher"]["flops"][1]
    assert len(set(dc["decoder-ALR-M"]["flops"][1:])) == 1
    fc = result["flops_curve"]["models"]["encoder-ALR-M"]["encoder"]
    assert fc[-1] is None and fc[0] is not None  # no FLOPs beyond MAX_LEN
    with pytest.raises(ValueError, match="lacks"):
        cost.check_schema({k: v for k, v in result.items() if k != "machine"})

    table = cost.decision_table(result)
    assert len(table) == 2 and table["decision"].str.contains("83% of the teacher's BLEU").all()


def test_pareto_front():
    cost_, bleu = [1, 2, 3, 4, 2], [10, 20, 15, 30, 20]
    assert cost.pareto_front(cost_, bleu).tolist() == [True, True, False, True, True]
    assert cost.pareto_front([1, np.nan], [1, 5]).tolist() == [True, False]


def test_rank_correlation_with_ties():
    assert cost.rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert cost.rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks [1.5, 1.5, 3, 4] vs [1, 2, 3, 4]: Pearson of the ranks
    a, b = np.array([1.5, 1.5, 3, 4]), np.array([1, 2, 3, 4.0])
    expected = np.corrcoef(a, b)[0, 1]
    assert cost.rank_correlation([5, 5, 7, 9], [1, 2, 3, 4]) == pytest.approx(expected)


# ----------------------------------------------------------------------------- token mixing

def _randomized(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3 + (0.5 if p.dim() == 1 else 0.0))
    return module


def _finite_difference_mixing(module, x, minus_input=False, eps=1e-6):
    T, d = x.shape
    pad = torch.zeros(1, T, dtype=torch.bool)
    f = lambda z: module(z[None], pad)[0] - (z if minus_input else 0)
    J = torch.zeros(T, d, T, d, dtype=x.dtype)
    for j in range(T):
        for k in range(d):
            e = torch.zeros_like(x)
            e[j, k] = eps
            J[:, :, j, k] = (f(x + e) - f(x - e)) / (2 * eps)
    return J.square().sum((1, 3)).sqrt()


@pytest.mark.parametrize("scheme", ["ALR", "ASLR", "ALRR", "ELR", "teacher attention", "teacher block",
                                    "teacher layer", "ALR in a layer"])
def test_token_mixing_matches_finite_differences(scheme):
    teacher = _randomized(small_teacher().double())  # non-trivial LayerNorm gains and biases
    layer = teacher.encoder.layers[0]
    module = {"teacher attention": layer.self_attn_block.attn, "teacher block": layer.self_attn_block,
              "teacher layer": layer}.get(scheme)
    if scheme == "ALR in a layer":
        module = with_slots(teacher, [("encoder", 0, "ALR")]).encoder.layers[0]
        _randomized(module.self_attn_block.attn)
    elif module is None:
        module = _randomized(build_replacement(teacher, "encoder", 0, scheme, "M", ML).double())
    x = torch.randn(5, D, dtype=torch.double, generator=torch.Generator().manual_seed(2))
    resid = scheme in ("ALRR", "ELR", "teacher block", "teacher layer", "ALR in a layer")
    fd = _finite_difference_mixing(module, x, resid)
    got = cost.token_mixing(module, x, minus_input=resid)  # closed form
    assert got.shape == (5, 5)
    torch.testing.assert_close(got, fd, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(got, cost.token_mixing(module, x, minus_input=resid, method="autograd"))


def test_token_mixing_of_ff_ignores_padding_and_refuses_long_sentences():
    teacher = small_teacher()
    module = _randomized(build_replacement(teacher, "encoder", 0, "ALR", "M", ML))
    x = torch.randn(1, 6, D)
    pad = torch.tensor([[False] * 4 + [True] * 2])
    torch.testing.assert_close(cost.token_mixing(module, x, pad), cost.token_mixing(module, x[0, :4]))
    with pytest.raises(ValueError, match="longer than max_len"):
        cost.token_mixing(module, torch.randn(ML + 1, D))


def test_error_growth_is_zero_for_the_teacher_itself():
    teacher = small_teacher()
    src = torch.randint(4, 40, (3, 6))
    src[2, 4:] = PAD
    same = cost.error_growth(teacher, teacher, src)
    assert (same["mse_own_inputs"] == 0).all()
    student = with_slots(teacher, [("encoder", 0, "ALR"), ("encoder", 1, "ALR")])
    grown = cost.error_growth(teacher, student, src)
    # layer 1 sees the teacher's input either way
    assert grown["mse_teacher_inputs"].iloc[0] == pytest.approx(grown["mse_own_inputs"].iloc[0])
    assert (grown["mse_own_inputs"] > 0).all()


def test_mixing_agreement_rows():
    teacher = small_teacher()
    students = {"ALR": with_slots(teacher, [("encoder", 0, "ALR"), ("encoder", 1, "ALR")]),
                "ELR (layer 1 only)": ("ELR", with_slots(teacher, [("encoder", 1, "ELR")]))}
    g = torch.Generator().manual_seed(3)
    src = [torch.randint(4, 40, (n,), generator=g).tolist() + [2] for n in (3, 6, 5)]
    tgt = [[1] + torch.randint(4, 45, (n,), generator=g).tolist() + [2] for n in (4, 2, 5)]
    df = cost.mixing_agreement(teacher, students, src, tgt, layers=[1], batch_size=2)
    assert len(df) == 3 * 2 and set(df.student) == {"ALR", "ELR (layer 1 only)"}
    cols = ["vs_attention", "vs_teacher_mixing", "teacher_mixing_vs_attention", "vs_distance"]
    assert df[cols].abs().max().max() <= 1 + 1e-9
    # a student equal to the teacher's own module mixes exactly like it
    same = cost.mixing_agreement(teacher, {"ELR": ("ELR", teacher)}, src, tgt, layers=[0])
    assert np.allclose(same.vs_teacher_mixing, 1.0)
