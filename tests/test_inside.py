"""What a replacement does inside, on small random Transformers (no data, no cached runs)."""
import numpy as np
import pytest
import torch

from ffattn import inside
from ffattn.model import PAD
from ffattn.replace import build_replacement
from small_models import D, ML, small_teacher, with_slots


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models run faster on one


def test_rank_correlation_with_ties():
    assert inside.rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert inside.rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks [1.5, 1.5, 3, 4] vs [1, 2, 3, 4]: Pearson of the ranks
    a, b = np.array([1.5, 1.5, 3, 4]), np.array([1, 2, 3, 4.0])
    expected = np.corrcoef(a, b)[0, 1]
    assert inside.rank_correlation([5, 5, 7, 9], [1, 2, 3, 4]) == pytest.approx(expected)


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
    got = inside.token_mixing(module, x, minus_input=resid)  # closed form
    assert got.shape == (5, 5)
    torch.testing.assert_close(got, fd, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(got, inside.token_mixing(module, x, minus_input=resid, method="autograd"))


def test_token_mixing_of_ff_ignores_padding_and_refuses_long_sentences():
    teacher = small_teacher()
    module = _randomized(build_replacement(teacher, "encoder", 0, "ALR", "M", ML))
    x = torch.randn(1, 6, D)
    pad = torch.tensor([[False] * 4 + [True] * 2])
    torch.testing.assert_close(inside.token_mixing(module, x, pad), inside.token_mixing(module, x[0, :4]))
    with pytest.raises(ValueError, match="longer than max_len"):
        inside.token_mixing(module, torch.randn(ML + 1, D))


def test_error_growth_is_zero_for_the_teacher_itself():
    teacher = small_teacher()
    src = torch.randint(4, 40, (3, 6))
    src[2, 4:] = PAD
    same = inside.error_growth(teacher, teacher, src)
    assert (same["mse_own_inputs"] == 0).all()
    student = with_slots(teacher, [("encoder", 0, "ALR"), ("encoder", 1, "ALR")])
    grown = inside.error_growth(teacher, student, src)
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
    df = inside.mixing_agreement(teacher, students, src, tgt, layers=[1], batch_size=2)
    assert len(df) == 3 * 2 and set(df.student) == {"ALR", "ELR (layer 1 only)"}
    cols = ["vs_attention", "vs_teacher_mixing", "teacher_mixing_vs_attention", "vs_distance"]
    assert df[cols].abs().max().max() <= 1 + 1e-9
    # a student equal to the teacher's own module mixes exactly like it
    same = inside.mixing_agreement(teacher, {"ELR": ("ELR", teacher)}, src, tgt, layers=[0])
    assert np.allclose(same.vs_teacher_mixing, 1.0)
