"""What a model costs, on small random Transformers (no data, no cached runs)."""
import json

import numpy as np
import pytest
import torch

from ffattn import cost
from ffattn.model import PAD
from small_models import D, ML, small_teacher, with_slots


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models run faster on one


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
    tasks = {"encoder_b1", "encoder_b4", "translate_b1", "translate_b4", "steps_b4"}
    assert set(rows["teacher"]["latency_ms"]) == set(rows["teacher"]["latency_spread_ms"]) == tasks
    assert all(v > 0 for m in rows.values() for v in m["latency_ms"].values())
    for m in rows.values():  # the spread brackets the median
        for k, spread in m["latency_spread_ms"].items():
            assert spread["min"] <= m["latency_ms"][k] == spread["median"] <= spread["max"]
    assert result["settings"]["fixed_steps"] == 5  # T: equal work for every model
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
    # the decision uses the equal-work latency and keeps the end-to-end one beside it
    assert table["decision"].str.contains("encode \\+ 5 greedy steps, batch 4").all()
    assert table["decision"].str.contains("end to end").all()
    assert cost.model_latency(result) == "latency_steps_b4"
    old = json.loads(json.dumps(result))  # a bench JSON from before the equal-work latency
    for m in old["models"]:
        del m["latency_ms"]["steps_b4"]
    assert cost.model_latency(old) == "latency_translate_b4"


def test_decode_steps_does_the_same_work_whatever_the_outputs():
    """Equal work: exactly `steps` steps even when every sentence ends at once."""
    teacher = small_teacher()
    src = torch.randint(4, 40, (3, 5), generator=torch.Generator().manual_seed(0))
    assert cost.decode_steps(teacher, src, 7).shape == (3, 8)  # BOS + 7 tokens


def test_pareto_front():
    cost_, bleu = [1, 2, 3, 4, 2], [10, 20, 15, 30, 20]
    assert cost.pareto_front(cost_, bleu).tolist() == [True, True, False, True, True]
    assert cost.pareto_front([1, np.nan], [1, 5]).tolist() == [True, False]
