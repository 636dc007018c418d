"""The feed-forward replacements: sizes, padding, causality, the one-pass trick, installing."""
import pytest
import torch
from torch import nn

from ffattn.config import SCHEMES, SIZES
from ffattn.model import PAD, MultiHeadAttention, Transformer
from ffattn.replace import (WHERES, CausalFFCrossAttention, CausalFFSelfAttention,
                            FFCrossAttention, ShallowFF, TeacherAttention, build_replacement,
                            count_params, distill_io, hidden_width, install,
                            per_position_reference, record_io, slot_path)

L, D, H = 6, 8, 2  # max_len, d_model, heads of the small test models
SLOTS = [("encoder", s) for s in SCHEMES] + [(w, "ALR") for w in WHERES[1:]]


def small_teacher(n=2, d=D, heads=H, seed=0):
    torch.manual_seed(seed)
    return Transformer(11, 13, d_model=d, n_heads=heads, d_ff=16, n_enc=n, n_dec=n,
                       dropout=0.1).eval()


def randomize(module, std=0.3):
    """Non-default LayerNorm gains/biases and Linear biases, so every term of the math counts."""
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:  # the teacher's frozen W_O stays as it is
                p.copy_(torch.randn_like(p) * std + (0.5 if p.dim() == 1 else 0.0))
    return module


def batch(B=3, T=5, S=4, d=D, dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, d, generator=g, dtype=dtype)
    mem = torch.randn(B, S, d, generator=g, dtype=dtype)
    x_pad = torch.zeros(B, T, dtype=torch.bool)
    x_pad[1, 3:] = True  # right padding
    x_pad[2, 4:] = True
    mem_pad = torch.zeros(B, S, dtype=torch.bool)
    mem_pad[0, 2:] = True
    return x, x_pad, mem, mem_pad


def memory_for(where, mem, mem_pad):
    return (mem, mem_pad) if where.startswith("cross") else (None, None)


# ----------------------------------------------------------------------------- sizes

@pytest.mark.parametrize("size,paper", [("XS", 0.34), ("S", 0.66), ("M", 10.3), ("L", 41.0)])
def test_alr_counts_match_paper(size, paper):
    n = count_params("ALR", size, 50, 128)
    digits = 2 if paper < 1 else 1  # the paper's printed precision
    assert round(n / 1e6, digits) == paper


def test_hidden_widths():
    W = 50 * 128
    assert [hidden_width("ALR", s, 50, 128) for s in SIZES] == [W // 256, W // 128, W // 8,
                                                              W // 2, 2 * W]
    assert [hidden_width("ASLR", s, 50, 128) for s in SIZES] == [W // 32, W // 16, W // 8,
                                                               W // 4, W // 2]
    assert hidden_width("ALR", "XS", 2, 4) == 1  # at least one unit


def test_real_param_counts_at_paper_size():
    """Every scheme and size, built for real (on the meta device: no memory, no time)."""
    with torch.device("meta"):
        teacher = Transformer(100, 100, d_model=128, n_heads=8, d_ff=512, n_enc=1, n_dec=1)
    for where, scheme in SLOTS:
        for size in SIZES:
            m = build_replacement(teacher, where, 0, scheme, size, 50)
            trainable = sum(p.numel() for p in m.parameters() if p.requires_grad)
            assert trainable == count_params(scheme, size, 50, 128, 8, where), (where, scheme, size)


@pytest.mark.parametrize("where,scheme", SLOTS)
def test_shapes_and_counts_small(where, scheme):
    teacher = small_teacher()
    x, x_pad, mem, mem_pad = batch()
    m, mp = memory_for(where, mem, mem_pad)
    for size in SIZES:
        mod = build_replacement(teacher, where, 1, scheme, size, L)
        trainable = sum(p.numel() for p in mod.parameters() if p.requires_grad)
        assert trainable == count_params(scheme, size, L, D, H, where)
        assert mod(x, x_pad, m, mp).shape == x.shape
        assert mod.distill_forward(x, x_pad, m, mp).shape == x.shape


# ----------------------------------------------------------------------------- padding

@pytest.mark.parametrize("where,scheme", SLOTS)
def test_padding_stays_zero_and_is_ignored(where, scheme):
    teacher = small_teacher()
    mod = randomize(build_replacement(teacher, where, 0, scheme, "S", L))
    x, x_pad, mem, mem_pad = batch()
    m, mp = memory_for(where, mem, mem_pad)
    out = mod(x, x_pad, m, mp)
    assert (out[x_pad] == 0).all()
    assert (mod.distill_forward(x, x_pad, m, mp)[x_pad] == 0).all()
    x2 = torch.where(x_pad[..., None], torch.randn_like(x) * 5, x)
    m2 = None if m is None else torch.where(mp[..., None], torch.randn_like(m) * 5, m)
    torch.testing.assert_close(mod(x2, x_pad, m2, mp), out, rtol=0, atol=0)


def test_alr_applies_teacher_w_o_frozen():
    teacher = small_teacher()
    mod = build_replacement(teacher, "encoder", 0, "ALR", "M", L)
    w_o = teacher.encoder.layers[0].self_attn_block.attn.out_proj
    assert torch.equal(mod.out_proj.weight, w_o.weight) and mod.out_proj is not w_o
    assert not mod.out_proj.weight.requires_grad and w_o.weight.requires_grad
    x, x_pad, _, _ = batch()
    torch.testing.assert_close(mod(x, x_pad)[~x_pad], w_o(mod.forward_heads(x, x_pad))[~x_pad])


# ----------------------------------------------------------------------------- causality

@pytest.mark.parametrize("cls", [CausalFFSelfAttention, CausalFFCrossAttention])
def test_causal(cls):
    torch.manual_seed(0)
    mod = randomize(cls(D, L, 12, nn.Linear(D, D)))
    x, x_pad, mem, mem_pad = batch()
    out = mod(x, x_pad, mem, mem_pad)
    for k in range(1, x.shape[1]):
        x2 = x.clone()
        x2[:, k] += torch.randn_like(x2[:, k])
        out2 = mod(x2, x_pad, mem, mem_pad)
        torch.testing.assert_close(out2[:, :k], out[:, :k], rtol=0, atol=0)
        assert not torch.allclose(out2[0, k], out[0, k])


def test_paper_cross_attention_is_not_causal():
    torch.manual_seed(0)
    mod = randomize(FFCrossAttention(D, L, 12))
    x, x_pad, mem, mem_pad = batch()
    x2 = x.clone()
    x2[:, -1] += 1.0
    assert not torch.allclose(mod(x2, x_pad, mem, mem_pad)[0, 0], mod(x, x_pad, mem, mem_pad)[0, 0])


@pytest.mark.parametrize("cls", [CausalFFSelfAttention, CausalFFCrossAttention])
def test_one_pass_equals_per_position_reference(cls):
    torch.manual_seed(0)
    mod = randomize(cls(D, L, 12).double())
    for T in (L, 4):  # full width, and shorter than max_len
        x, x_pad, mem, mem_pad = batch(T=T, dtype=torch.float64)
        x = x * 2 + 0.7  # a non-zero mean
        mem_arg = (mem, mem_pad) if cls is CausalFFCrossAttention else (None, None)
        fast = mod.forward_heads(x, x_pad, *mem_arg)
        slow = per_position_reference(mod.ff, x, x_pad, *mem_arg)
        torch.testing.assert_close(fast, slow, rtol=0, atol=1e-5)
        assert fast.abs().max() > 0.1


@pytest.mark.parametrize("cls", [CausalFFSelfAttention, CausalFFCrossAttention])
@pytest.mark.parametrize("T", [L, 4, 1])
def test_one_pass_gradients_equal_reference(cls, T):
    """Distillation trains through the one-pass form and its hand-written backward
    (`_PrefixFC1`): every parameter's and input's gradient is the loop's."""
    torch.manual_seed(0)
    mod = randomize(cls(D, L, 12).double())
    x, x_pad, mem, mem_pad = batch(T=T, dtype=torch.float64)
    x = (x * 2 + 0.7).requires_grad_()  # a non-zero mean
    mem = mem.requires_grad_() if cls is CausalFFCrossAttention else None
    mem_pad = mem_pad if mem is not None else None
    target = torch.randn_like(x)
    grads = []
    for fn in (mod.forward_heads, lambda *a: per_position_reference(mod.ff, *a)):
        mod.zero_grad()
        x.grad = None
        if mem is not None:
            mem.grad = None
        ((fn(x, x_pad, mem, mem_pad) - target) ** 2).sum().backward()
        grads.append([p.grad.clone() for p in mod.ff.parameters()] + [x.grad.clone()]
                     + ([mem.grad.clone()] if mem is not None else []))
    for fast, slow in zip(*grads):
        assert slow.abs().max() > 0
        torch.testing.assert_close(fast, slow, rtol=0, atol=1e-8)


def _step_grads(mod, x, x_pad, mem, mem_pad, target):
    """Outputs and every gradient (parameters, x, memory) of one squared-error step."""
    mod.zero_grad()
    x.grad = None
    if mem is not None:
        mem.grad = None
    out = mod.forward_heads(x, x_pad, mem, mem_pad)
    ((out - target) ** 2).sum().backward()
    return [out.detach()] + [p.grad.clone() for p in mod.ff.parameters()] + [x.grad.clone()] \
        + ([mem.grad.clone()] if mem is not None else [])


@pytest.mark.parametrize("cls", [CausalFFSelfAttention, CausalFFCrossAttention])
@pytest.mark.parametrize("T", [L, 4])
def test_packed_pass_equals_dense_pass(cls, T, monkeypatch):
    """`replace.PACK_CAUSAL`: sentences of every length (0 and T included), padded at their
    ends, give the dense pass's outputs and gradients; the packed pass is the one that ran."""
    import ffattn.replace as replace
    torch.manual_seed(0)
    mod = randomize(cls(D, L, 12).double())
    B = 6
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(B, T, D, generator=g, dtype=torch.float64) * 2 + 0.7).requires_grad_()
    lengths = torch.tensor([T - 1, T, 1, 0, T, 2])[:B].clamp(max=T)
    x_pad = torch.arange(T) >= lengths[:, None]
    cross = cls is CausalFFCrossAttention
    mem = torch.randn(B, 4, D, generator=g, dtype=torch.float64).requires_grad_() if cross else None
    mem_pad = (torch.arange(4) >= torch.tensor([4, 2, 3, 1, 4, 4])[:, None]) if cross else None
    target = torch.randn(B, T, D, generator=g, dtype=torch.float64)
    calls = []
    packed_pass = replace._packed_causal_pass
    monkeypatch.setattr(replace, "_packed_causal_pass", lambda *a, **k: calls.append(1) or packed_pass(*a, **k))
    packed = _step_grads(mod, x, x_pad, mem, mem_pad, target)
    assert calls
    monkeypatch.setattr(replace, "PACK_CAUSAL", False)
    dense = _step_grads(mod, x, x_pad, mem, mem_pad, target)
    assert len(calls) == 1
    for a, b in zip(packed, dense):
        assert b.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    assert packed[0][3].abs().max() == 0 and packed[0][2, 1:].abs().max() == 0  # padding stays zero


def test_packed_pass_needs_padding_at_the_end(monkeypatch):
    """A sentence with a gap in its padding mask runs the dense pass, which handles any mask."""
    import ffattn.replace as replace
    torch.manual_seed(0)
    mod = randomize(CausalFFSelfAttention(D, L, 12).double())
    x, x_pad, _, _ = batch(T=5, dtype=torch.float64)
    x_pad[0, 1] = True  # padding before a real token
    calls = []
    monkeypatch.setattr(replace, "_packed_causal_pass", lambda *a, **k: calls.append(1))
    out = mod.forward_heads(x, x_pad)
    assert not calls
    torch.testing.assert_close(out, per_position_reference(mod.ff, x, x_pad), rtol=0, atol=1e-10)
    x_pad[0, 1] = False
    mod.forward_heads(x, x_pad)
    assert calls


@pytest.mark.parametrize("cls", [CausalFFSelfAttention, CausalFFCrossAttention, FFCrossAttention])
def test_incremental_equals_one_pass(cls):
    torch.manual_seed(0)
    mod = randomize(cls(D, L, 12, nn.Linear(D, D)).double())
    x, x_pad, mem, mem_pad = batch(T=L, dtype=torch.float64)
    state = {}
    for t in range(L):
        step = mod(x[:, t:t + 1], x_pad[:, t:t + 1], mem, mem_pad, state=state)
        # the one-pass form on the prefix (for the paper's cross form: zeros beyond step t)
        full = mod(x[:, :t + 1], x_pad[:, :t + 1], mem, mem_pad)
        torch.testing.assert_close(step[:, 0], full[:, t], rtol=0, atol=1e-10)
    if cls is not FFCrossAttention:  # running sums and two weight-only vectors, no growing cache
        assert set(state) == {"proj", "s1", "s2", "pos", "consts"} and state["pos"] == L
        assert [c.shape for c in state["consts"]] == [(12,), (12,)]
    with pytest.raises(ValueError, match=f"{L + 1}.*max_len={L}"):
        mod(x[:, :1], x_pad[:, :1], mem, mem_pad, state=state)


# ----------------------------------------------------------------------------- installing

def all_slots(model):
    keys = [("encoder", i, "ALR") for i in range(len(model.encoder.layers))]
    keys += [(w, i, "ALR") for w in ("decoder", "cross") for i in range(len(model.decoder.layers))]
    return keys


def ids(B=3, S=5, T=6, seed=2):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, 11, (B, S), generator=g)
    tgt = torch.randint(4, 13, (B, T), generator=g)
    src[1, 3:] = PAD
    tgt[2, 4:] = PAD
    return src, tgt


def decode_step_by_step(model, src, tgt):
    memory, memory_pad = model.encode(src)
    states = [{} for _ in model.decoder.layers]
    steps = [model.decode(tgt[:, t:t + 1], memory, memory_pad, states, offset=t)
             for t in range(tgt.shape[1])]
    return torch.cat(steps, 1)


def test_plumbing_teacher_attention_changes_nothing():
    teacher = small_teacher()
    reps = {}
    for where, i, scheme in all_slots(teacher):
        attn = teacher.get_submodule(slot_path(where, i, scheme))
        reps[(where, i, scheme)] = TeacherAttention(attn)
    model = install(teacher, reps)
    assert model.attention_modules() == {}
    src, tgt = ids()
    with torch.no_grad():
        torch.testing.assert_close(model(src, tgt), teacher(src, tgt), rtol=0, atol=0)
        torch.testing.assert_close(decode_step_by_step(model, src, tgt),
                                   decode_step_by_step(teacher, src, tgt), rtol=0, atol=1e-6)


def test_install_copies_and_replaces_everything():
    teacher = small_teacher()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    keys = all_slots(teacher)
    reps = {k: build_replacement(teacher, *k, "XS", L) for k in keys}
    model = install(teacher, reps)
    assert len(teacher.attention_modules()) == 6 and model.attention_modules() == {}
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k])
    for k in keys:
        assert not isinstance(model.get_submodule(slot_path(*k)), MultiHeadAttention)
        assert isinstance(teacher.get_submodule(slot_path(*k)), MultiHeadAttention)
    src, tgt = ids()
    with torch.no_grad():
        out = model(src, tgt)
    assert out.shape == (3, 6, 13) and torch.isfinite(out).all()


def test_attentionless_causal_decoding_matches_teacher_forcing():
    """Causal self- and cross- replacements: step-by-step decoding == one teacher-forced pass."""
    teacher = small_teacher().double()
    keys = [("encoder", 0, "ELR"), ("encoder", 1, "ASLR")]
    keys += [(w, i, "ALR") for w in ("decoder", "cross_causal") for i in range(2)]
    model = install(teacher, {k: randomize(build_replacement(teacher, *k, "S", L), 0.2)
                              for k in keys})
    src, tgt = ids()
    with torch.no_grad():
        full = model(src, tgt)
        steps = decode_step_by_step(model, src, tgt)
    real = tgt != PAD
    torch.testing.assert_close(steps[real], full[real], rtol=0, atol=1e-9)


def test_install_rejects_overlaps_and_bad_layers():
    teacher = small_teacher()
    a = build_replacement(teacher, "encoder", 0, "ALR", "XS", L)
    b = build_replacement(teacher, "encoder", 0, "ELR", "XS", L)
    with pytest.raises(ValueError, match="overlap"):
        install(teacher, {("encoder", 0, "ALR"): a, ("encoder", 0, "ELR"): b})
    with pytest.raises(ValueError, match="overlap"):
        install(teacher, {("cross", 0, "ALR"): a, ("cross_causal", 0, "ALR"): b})
    with pytest.raises(ValueError, match=r"layer 5.*0, 1"):
        build_replacement(teacher, "encoder", 5, "ALR", "XS", L)


def test_slot_paths():
    assert slot_path("encoder", 0, "ALR") == "encoder.layers.0.self_attn_block.attn"
    assert slot_path("encoder", 0, "ASLR") == "encoder.layers.0.self_attn_block.attn"
    assert slot_path("encoder", 3, "ALRR") == "encoder.layers.3.self_attn_block"
    assert slot_path("encoder", 2, "ELR") == "encoder.layers.2"
    assert slot_path("decoder", 1, "ALR") == "decoder.layers.1.self_attn_block.attn"
    assert slot_path("cross", 1, "ALR") == "decoder.layers.1.cross_attn_block.attn"
    assert slot_path("cross_causal", 1, "ALR") == "decoder.layers.1.cross_attn_block.attn"


# ----------------------------------------------------------------------------- errors

def test_bad_choices_raise():
    teacher = small_teacher()
    with pytest.raises(ValueError, match="'BAD'.*ALR, ALRR, ASLR, ELR"):
        slot_path("encoder", 0, "BAD")
    with pytest.raises(ValueError, match="'middle'.*encoder, decoder, cross, cross_causal"):
        build_replacement(teacher, "middle", 0, "ALR", "M", L)
    with pytest.raises(ValueError, match="'XXL'.*XS, S, M, L, XL"):
        build_replacement(teacher, "encoder", 0, "ALR", "XXL", L)
    for where in ("decoder", "cross", "cross_causal"):
        with pytest.raises(ValueError, match=f"'ELR'.*'{where}'.*ALR"):
            build_replacement(teacher, where, 0, "ELR", "M", L)
    x, x_pad, mem, mem_pad = batch(T=L + 2)
    for where, scheme in SLOTS:
        mod = build_replacement(teacher, where, 0, scheme, "XS", L)
        m, mp = memory_for(where, mem, mem_pad)
        with pytest.raises(ValueError, match=f"{L + 2} tokens.*max_len={L}"):
            mod(x, x_pad, m, mp)


# ----------------------------------------------------------------------------- distillation

def test_record_io_gives_inputs_and_targets():
    teacher = small_teacher()
    keys = [("encoder", 0, "ALR"), ("encoder", 1, "ALRR"), ("encoder", 0, "ELR"),
            ("decoder", 1, "ALR"), ("cross", 0, "ALR")]
    src, tgt = ids()
    rec = record_io(teacher, src, tgt, keys, pad_to=L)
    assert not teacher.training
    for key in keys:
        r = rec[key]
        assert r["x"].shape == r["target"].shape == (3, L, D) and r["x_pad"].shape == (3, L)
        assert (r["target"][r["x_pad"]] == 0).all()
        assert (r["memory"] is not None) == (key[0] == "cross")
    assert distill_io("encoder", "ALR", 0).target_path.endswith("attn.out_proj")
    # The teacher's own attention reproduces its ALR targets (pre-W_O) from the recorded input
    for key in [("encoder", 0, "ALR"), ("decoder", 1, "ALR"), ("cross", 0, "ALR")]:
        r = rec[key]
        own = TeacherAttention(teacher.get_submodule(slot_path(*key)))
        with torch.no_grad():
            got = own.distill_forward(r["x"], r["x_pad"], r["memory"], r["memory_pad"])
        real = ~r["x_pad"]
        torch.testing.assert_close(got[real], r["target"][real], rtol=1e-5, atol=1e-6)
    # ALRR / ELR targets are the block's / layer's output, reproduced by the teacher's modules
    r = rec[("encoder", 0, "ELR")]
    with torch.no_grad():
        out = teacher.encoder.layers[0](r["x"], r["x_pad"])
    torch.testing.assert_close(out[~r["x_pad"]], r["target"][~r["x_pad"]], rtol=1e-5, atol=1e-6)
    # a student's distill_forward lines up with the target
    student = build_replacement(teacher, "encoder", 1, "ALRR", "S", L)
    r = rec[("encoder", 1, "ALRR")]
    assert student.distill_forward(r["x"], r["x_pad"]).shape == r["target"].shape


def test_shallow_ff_shape():
    ff = ShallowFF(10, 3, 7)
    assert isinstance(ff.act, nn.LeakyReLU) and ff.act.negative_slope == 0.01
    assert ff(torch.randn(2, 10)).shape == (2, 7)
    assert sum(p.numel() for p in ff.parameters()) == 20 + 33 + 6 + 28


def test_aslr_heads_run_batched_and_equal_one_shallow_ff_per_head():
    """HeadFFs computes, in one bmm per layer, what n separate ShallowFFs compute head by head."""
    teacher = small_teacher()
    mod = randomize(build_replacement(teacher, "encoder", 0, "ASLR", "M", L))
    x, x_pad, _, _ = batch()
    z = torch.cat([x.masked_fill(x_pad[..., None], 0), x.new_zeros(x.shape[0], L - x.shape[1], D)], 1).flatten(1)
    per_head = torch.stack([mod.heads.as_ff(k)(z) for k in range(H)], 1)  # (B, H, L * d_head)
    torch.testing.assert_close(mod.heads(z), per_head)
    want = per_head.view(-1, H, L, D // H).transpose(1, 2).flatten(2)[:, :x.shape[1]].masked_fill(x_pad[..., None], 0)
    torch.testing.assert_close(mod.forward_heads(x, x_pad), want)
    assert sum(p.numel() for p in mod.parameters() if p.requires_grad) == count_params("ASLR", "M", L, D, H)


# ----------------------------------------------------------------------------- padding skipped

@pytest.mark.parametrize("where,scheme", [("encoder", "ALR"), ("encoder", "ALRR"), ("encoder", "ELR"),
                                          ("encoder", "ASLR"), ("cross", "ALR")])
@pytest.mark.parametrize("T,S", [(4, 3), (L, L), (1, L)])
def test_distillation_skipping_padding_is_the_full_width_function(where, scheme, T, S, monkeypatch):
    """`distill_forward` multiplies only the batch's positions (`replace.SKIP_PADDING`), yet its
    outputs and every gradient are those of the FF at full width: the zeros beyond the batch
    still count in the input LayerNorm, through its gain and bias."""
    import ffattn.replace as replace
    student = randomize(build_replacement(small_teacher(), where, 0, scheme, "L", L).double())
    x, x_pad, mem, mem_pad = batch(T=T, S=S, dtype=torch.float64)
    x_pad[0, T - 1:] = T > 1  # a sentence shorter than the batch's longest, too
    mem, mem_pad = memory_for(where, mem, mem_pad)
    target = torch.randn_like(x)
    inputs = {"x": x.requires_grad_()} | ({"memory": mem.requires_grad_()} if mem is not None else {})
    out, grads = [], []
    for skip in (False, True):
        monkeypatch.setattr(replace, "SKIP_PADDING", skip)
        student.zero_grad()
        for t in inputs.values():
            t.grad = None
        y = student.distill_forward(x, x_pad, mem, mem_pad)
        ((y - target) ** 2).sum().backward()
        out.append(y.detach())
        grads.append({n: p.grad.clone() for n, p in student.named_parameters() if p.requires_grad}
                     | {n: t.grad.clone() for n, t in inputs.items()})  # the inputs' too: a stack of them
    torch.testing.assert_close(out[1], out[0], rtol=0, atol=1e-10)
    assert out[0].abs().max() > 0.1 and (out[0][x_pad] == 0).all()
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=0, atol=1e-9, msg=name)
    gain = "heads.ln_in_weight" if scheme == "ASLR" else "ff.ln_in.weight"
    assert grads[0][gain].abs().max() > 1e-3  # the padded slots' LayerNorm terms are tested


def test_distillation_runs_dense_under_autocast_and_inference_keeps_full_width(monkeypatch):
    """bf16 autocast takes the full-width path (the custom products are fp32 only); the
    inference forward is the paper's model whatever the switch."""
    import ffattn.replace as replace
    student = randomize(build_replacement(small_teacher(), "encoder", 0, "ALR", "M", L))
    x, x_pad, _, _ = batch(T=4)
    calls = []
    monkeypatch.setattr(replace, "_ff_on_spans", lambda *a: calls.append(a) or replace.ShallowFF.forward)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        student.distill_forward(x, x_pad)
    student(x, x_pad)
    assert not calls
