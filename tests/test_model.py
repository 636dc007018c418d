"""The Transformer built from scratch: equal to PyTorch's attention, masks hold, decoding agrees."""
import pytest
import torch

from ffattn.decode import beam_search, greedy
from ffattn.model import BOS, EOS, PAD, MultiHeadAttention, Transformer


def copy_from_torch(mine: MultiHeadAttention, ref: torch.nn.MultiheadAttention):
    with torch.no_grad():
        mine.in_proj.weight.copy_(ref.in_proj_weight)
        mine.in_proj.bias.copy_(ref.in_proj_bias)
        mine.out_proj.load_state_dict(ref.out_proj.state_dict())


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("slow_path", [False, True])
def test_attention_equals_torch_multihead_attention(causal, slow_path):
    torch.manual_seed(0)
    d, h, B, T = 32, 4, 3, 9
    mine = MultiHeadAttention(d, h, causal=causal).eval()
    mine.keep_weights = slow_path  # the explicit softmax path used for attention maps
    ref = torch.nn.MultiheadAttention(d, h, batch_first=True).eval()
    copy_from_torch(mine, ref)
    x = torch.randn(B, T, d)
    pad = torch.zeros(B, T, dtype=torch.bool)
    pad[1, 6:] = True
    mask = torch.ones(T, T).triu(1).bool() if causal else None
    expected, _ = ref(x, x, x, key_padding_mask=pad, attn_mask=mask)
    got = mine(x, pad)
    real = ~pad
    assert torch.allclose(got[real], expected[real], atol=1e-5)


def test_cross_attention_equals_torch():
    torch.manual_seed(1)
    d, h = 16, 2
    mine, ref = MultiHeadAttention(d, h).eval(), torch.nn.MultiheadAttention(d, h, batch_first=True).eval()
    copy_from_torch(mine, ref)
    y, mem = torch.randn(2, 5, d), torch.randn(2, 7, d)
    mem_pad = torch.zeros(2, 7, dtype=torch.bool)
    mem_pad[0, 4:] = True
    expected, _ = ref(y, mem, mem, key_padding_mask=mem_pad)
    got = mine(y, torch.zeros(2, 5, dtype=torch.bool), mem, mem_pad)
    assert torch.allclose(got, expected, atol=1e-5)


def small_model(seed=0):
    torch.manual_seed(seed)
    return Transformer(40, 50, d_model=32, n_heads=4, d_ff=64, n_enc=2, n_dec=2, dropout=0.1).eval()


def random_batch(B=4, S=8, T=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, 40, (B, S), generator=g)
    tgt = torch.randint(4, 50, (B, T), generator=g)
    src[1, 5:] = PAD
    tgt[:, 0] = BOS
    tgt[2, 4:] = PAD
    return src, tgt


def test_padding_does_not_leak():
    model = small_model()
    src, tgt = random_batch()
    out = model(src, tgt)
    # extra padding columns change no real output
    src3 = torch.cat([src, torch.full((4, 3), PAD)], dim=1)
    assert torch.allclose(model(src3, tgt), out, atol=1e-5)


def test_pad_key_values_do_not_matter():
    """Change the embedding of padded source positions directly: real outputs stay put."""
    model = small_model()
    src, tgt = random_batch()
    memory, pad = model.encode(src)
    memory2 = memory.clone()
    memory2[pad] = torch.randn_like(memory2[pad]) * 10
    a = model.decode(tgt, memory, pad)
    b = model.decode(tgt, memory2, pad)
    assert torch.allclose(a, b, atol=1e-5)


def test_future_tokens_do_not_change_earlier_outputs():
    model = small_model()
    src, tgt = random_batch()
    out = model(src, tgt)
    tgt2 = tgt.clone()
    tgt2[:, 4:] = torch.randint(4, 50, tgt2[:, 4:].shape)
    out2 = model(src, tgt2)
    assert torch.allclose(out[:, :4], out2[:, :4], atol=1e-5)
    assert not torch.allclose(out[:, 4:], out2[:, 4:])


def test_incremental_decoding_equals_full_decoding():
    model = small_model()
    src, tgt = random_batch()
    tgt[2, 4:] = 9  # no padding inside the prefix here
    full = model(src, tgt)
    memory, memory_pad = model.encode(src)
    states = [{} for _ in model.decoder.layers]
    steps = [model.decode(tgt[:, t:t + 1], memory, memory_pad, states, offset=t)
             for t in range(tgt.shape[1])]
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)


def test_beam_one_equals_greedy():
    model = small_model(3)
    src, _ = random_batch(B=5, seed=3)
    assert beam_search(model, src, beam=1, max_steps=12) == greedy(model, src, max_steps=12)


def test_beam_search_finds_higher_scoring_translations():
    model = small_model(4)
    src, _ = random_batch(B=6, seed=4)

    def logprob(hyps):
        total = 0.0
        for i, h in enumerate(hyps):
            y = torch.tensor([[BOS] + h + [EOS]])
            lp = model(src[i:i + 1], y[:, :-1])[0]
            total += lp.gather(1, y[0, 1:, None]).sum().item()
        return total

    g = greedy(model, src, max_steps=10)
    b = beam_search(model, src, beam=5, length_penalty=0.0, max_steps=10)
    assert logprob(b) >= logprob(g) - 1e-4


def test_attention_maps_are_distributions():
    model = small_model()
    src, tgt = random_batch()
    with model.attention_maps() as maps:
        model(src, tgt)
    assert set(maps) == {f"encoder.{i}.self" for i in range(2)} | {
        f"decoder.{i}.{k}" for i in range(2) for k in ("self", "cross")}
    w = maps["decoder.0.self"]
    assert w.shape == (4, 4, 6, 6)
    assert torch.allclose(w.sum(-1), torch.ones(4, 4, 6))
    assert (w.triu(1) == 0).all()  # causal
    assert (maps["encoder.0.self"][1, :, :, 5:] == 0).all()  # padded keys get no weight
