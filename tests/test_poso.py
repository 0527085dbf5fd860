"""POSO: gate range, exact reduction to the base modules, attention padding, past-only personalization codes."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import polars as pl
import pytest
import torch
from conftest import PREP, load

from data_prep.dataset import read_manifest
from data_prep.fit import activity_names
from data_prep.prepare import prepare
from data_prep.schema import EventSpec
from data_prep.sequences import N_PRIOR_BUCKETS
from mose.data.datasets import EventSplit, StreamSplit
from mose.models.mose import MoSE
from mose.models.poso import PosoMMoE
from mose.nn.attention import TargetAttention
from mose.nn.embeddings import InputSpec
from mose.nn.experts import GroupedMLP
from mose.nn.gates import mix
from mose.nn.poso import PersonalizedGate, PosoAttention, PosoGroupedMLP, poso_mix

SPEC = InputSpec(n_users=10, n_items=20, cat_vocab=(5, 3), n_numeric=2, history_len=4, n_history_labels=2,
                 n_prior_buckets=16, pcode_vocab=(16, 2, 5))
TASKS = ["click", "like", "watch"]
B = 6


def make_batch(seed: int = 0, b: int = B, steps: int | None = None) -> dict[str, torch.Tensor]:
    """A per-event batch ``(B,)``, or per-stream steps ``(B, steps)`` when ``steps`` is given."""
    g = torch.Generator().manual_seed(seed)
    lead = (b,) if steps is None else (b, steps)
    hist_len = torch.tensor([0, 1, 2, 4, 3, 0])[:b]
    valid = torch.arange(SPEC.history_len)[None, :] >= SPEC.history_len - hist_len[:, None]
    hist_item = torch.where(valid, torch.randint(1, SPEC.n_items, (b, SPEC.history_len), generator=g), 0)
    hist_label = torch.randint(0, 2, (b, SPEC.history_len, 2), generator=g).to(torch.int8) * valid[..., None]
    return {
        "user": torch.randint(1, SPEC.n_users, lead, generator=g),
        "item": torch.randint(1, SPEC.n_items, lead, generator=g),
        "cat": torch.stack([torch.randint(0, n, lead, generator=g) for n in SPEC.cat_vocab], dim=-1),
        "num": torch.randn(*lead, SPEC.n_numeric, generator=g),
        "prior_bucket": torch.randint(0, 16, lead, generator=g),
        "pcode": torch.stack([torch.randint(0, n, lead, generator=g) for n in SPEC.pcode_vocab], dim=-1),
        "hist_item": hist_item,
        "hist_label": hist_label.to(torch.int8),
        "prev_label": torch.randint(0, 2, (*lead, 2), generator=g).to(torch.int8),
        "valid": torch.ones(lead, dtype=torch.bool),
    }


def zero_gates(module: torch.nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, PersonalizedGate):
            m.zero_last()


# ---------------------------------------------------------------- the gate


def test_gate_lies_in_zero_c():
    torch.manual_seed(0)
    for scale in (2.0, 3.5):
        gate = PersonalizedGate(6, 5, hidden=8, scale=scale)
        with torch.no_grad():
            gate.net[-1].weight.mul_(6.0)  # spread the sigmoid over its range (float32 saturates at ~|17|)
        g = gate(torch.randn(512, 6))
        assert g.shape == (512, 5)
        assert (g > 0).all() and (g < scale).all()
        assert g.min() < 0.2 * scale and g.max() > 0.8 * scale  # the range is used, not a constant


def test_zeroed_gate_is_half_c():
    gate = PersonalizedGate(4, 3, scale=2.0)
    gate.zero_last()
    assert torch.equal(gate(torch.randn(7, 4)), torch.ones(7, 3))


# ---------------------------------------------------------------- each module reduces to its base


def test_mlp_poso_reproduces_grouped_mlp():
    torch.manual_seed(0)
    for last_activation in (True, False):
        poso = PosoGroupedMLP(3, 10, [8, 6, 1], pc_dim=5, last_activation=last_activation)
        zero_gates(poso)
        x, pc = torch.randn(B, 10), torch.randn(B, 5)
        assert torch.allclose(poso(x, pc), poso.base(x))
        assert len(poso.gates) == (3 if last_activation else 2)


def test_mha_poso_reproduces_attention():
    torch.manual_seed(0)
    attn = TargetAttention(12, 4, dim=8, heads=2, n_values=3)
    poso = PosoAttention(attn, pc_dim=5)
    zero_gates(poso)
    q, tokens, mask = torch.randn(B, 12), torch.randn(B, 5, 4), torch.rand(B, 5) > 0.4
    assert torch.allclose(poso(q, tokens, mask, torch.randn(B, 5)), attn(q, tokens, mask))


def test_mmoe_poso_reproduces_mix():
    experts, gates = torch.randn(B, 4, 7), torch.softmax(torch.randn(B, 3, 4), -1)
    ones = torch.ones(B, 4)
    assert torch.allclose(poso_mix(experts, gates, ones), mix(experts, gates))
    scale = torch.rand(B, 4) * 2
    assert torch.allclose(poso_mix(experts, gates, scale), mix(experts * scale[..., None], gates))


@pytest.mark.parametrize("switch", ["mlp_poso", "mha_poso", "mmoe_poso", "all"])
def test_poso_model_reproduces_mmoe_mha(switch):
    """Zeroed gates, C = 2: the POSO model equals the plain MMoE+MHA carrying the same weights."""
    on = dict(mlp_poso=True, mha_poso=True, mmoe_poso=True) if switch == "all" else {switch: True}
    kw = dict(embed_dim=4, n_experts=3, expert=[8, 6], tower=[4], attn_dim=8, n_values=3)
    torch.manual_seed(0)
    poso = PosoMMoE(SPEC, TASKS, **kw, **on)
    zero_gates(poso)
    base = PosoMMoE(SPEC, TASKS, **kw)
    state = {k.replace("attn.attn.", "attn.").replace(".base.", "."): v for k, v in poso.state_dict().items()
             if "gate." not in k and "gates.0.net" not in k and "gates.1.net" not in k and not k.startswith("pc.")}
    base.load_state_dict(state)  # strict: every base weight comes from the POSO model
    batch = make_batch()
    out, ref = poso(batch), base(batch)
    for t in TASKS:
        assert torch.allclose(out[t], ref[t], atol=1e-6), t
    assert out["aux"]["gates"].shape == (B, 3, 3)


def test_mose_poso_reproduces_mose():
    kw = dict(embed_dim=4, bottom_hidden=8, n_experts=3, expert_hidden=6, tower_hidden=4)
    torch.manual_seed(0)
    plain = MoSE(SPEC, TASKS, **kw)
    poso = MoSE(SPEC, TASKS, **kw, poso=True)
    poso.load_state_dict(plain.state_dict(), strict=False)
    zero_gates(poso)
    batch = make_batch(steps=5)
    out, ref = poso(batch), plain(batch)
    for t in TASKS:
        assert torch.allclose(out[t], ref[t], atol=1e-6), t
    assert out["aux"]["poso_gates"].shape == (B, 5, 3)
    assert not torch.allclose(MoSE(SPEC, TASKS, **kw, poso=True)(batch)["aux"]["poso_gates"], torch.ones(B, 5, 3))


def test_poso_gates_change_the_output():
    torch.manual_seed(0)
    model = PosoMMoE(SPEC, TASKS, embed_dim=4, n_experts=3, expert=[16], tower=[16], mlp_poso=True,
                     mha_poso=True, mmoe_poso=True)
    batch = make_batch()
    other = {**batch, "pcode": (batch["pcode"] + 1) % torch.tensor(SPEC.pcode_vocab)}
    out, out2 = model(batch), model(other)
    assert not torch.allclose(torch.stack([out[t] for t in TASKS]), torch.stack([out2[t] for t in TASKS]))


def test_code_controls_shuffle_the_code_or_add_every_feature():
    """model.code=shuffled: the gates read the batch's codes permuted across its events; features: the code's
    embedding and every input embedding."""
    torch.manual_seed(0)
    args = {"embed_dim": 4, "n_experts": 3, "expert": [16], "tower": [16], "mlp_poso": True, "mha_poso": True,
            "mmoe_poso": True}
    base = PosoMMoE(SPEC, TASKS, **args)
    shuffled = PosoMMoE(SPEC, TASKS, code="shuffled", **args)
    shuffled.load_state_dict(base.state_dict())
    batch = make_batch()
    torch.manual_seed(1)
    perm = torch.randperm(B)
    torch.manual_seed(1)
    torch.testing.assert_close(shuffled.personal_code(batch), base.pc(batch["pcode"][perm]))
    features = PosoMMoE(SPEC, TASKS, code="features", **args)
    pc = features.personal_code(batch)
    assert pc.shape == (B, features.pc.out_dim + features.embed.out_dim)
    torch.testing.assert_close(pc[:, features.pc.out_dim:], features.embed(batch))
    assert features(batch)["click"].shape == (B,)
    with pytest.raises(ValueError, match="model.code=users"):
        PosoMMoE(SPEC, TASKS, code="users", **args)


# ---------------------------------------------------------------- attention


def test_attention_ignores_padded_positions():
    torch.manual_seed(0)
    attn = TargetAttention(12, 4, dim=8, heads=2, n_values=2)
    q, tokens = torch.randn(B, 12), torch.randn(B, 5, 4)
    mask = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 0, 0, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0],
                         [0, 1, 0, 1, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    changed = torch.where(mask[..., None], tokens, torch.randn(B, 5, 4) * 100)
    out = attn(q, tokens, mask)
    assert torch.allclose(out, attn(q, changed, mask))
    assert torch.isfinite(out).all()
    assert torch.allclose(out[3], attn.out.bias) and torch.allclose(out[5], attn.out.bias)  # no history
    # real tokens do matter
    assert not torch.allclose(out[0], attn(q, torch.where(mask[..., None], tokens + 1, tokens), mask)[0])


def test_attention_matches_hand_computation():
    torch.manual_seed(0)
    attn = TargetAttention(3, 2, dim=4, heads=1)
    q, tokens, mask = torch.randn(1, 3), torch.randn(1, 3, 2), torch.tensor([[False, True, True]])
    qv, k, v = attn.q(q), attn.k(tokens[0, 1:]), attn.v.weight[0].T @ tokens[0, 1:].T + attn.v.bias[0][:, None]
    w = torch.softmax(qv @ k.T / 2.0, -1)  # sqrt(dim / heads) = 2
    assert torch.allclose(attn(q, tokens, mask), attn.out(w @ v.T), atol=1e-6)


def test_poso_model_ignores_padded_history():
    torch.manual_seed(0)
    model = PosoMMoE(SPEC, TASKS, embed_dim=4, n_experts=3, expert=[8], tower=[4], mha_poso=True, mlp_poso=True)
    batch = make_batch()
    pad = batch["hist_item"] == 0
    other = {**batch, "hist_item": torch.where(pad, torch.randint(1, SPEC.n_items, pad.shape), batch["hist_item"])}
    # padded slots are the ones the dataset masks: change their ids and labels but keep the mask
    emb = model.embed
    tokens, mask = emb.history(batch)
    tokens2, _ = emb.history(other)
    x = emb(batch)
    pc = model.pc(batch["pcode"])
    assert torch.allclose(model.attn(x, tokens, mask, pc), model.attn(x, tokens2, mask, pc))


# ---------------------------------------------------------------- personalization codes and cohorts


def test_personalization_codes_never_count_the_future(events, spec, tmp_path):
    prep = replace(PREP, activity_buckets=(2, 8), personalization=("user_group", "duration"))
    root = prepare(events, spec, tmp_path / "d", prep)
    m = read_manifest(root)
    assert m["pcode"]["names"] == ["prior_bucket", "new", "user_group", "duration"]
    assert m["pcode"]["sizes"] == [N_PRIOR_BUCKETS, 2, 3, N_PRIOR_BUCKETS + 1]
    pcode, n_prior = load(root, "pcode"), load(root, "n_prior")
    user = load(root, "user_key")
    # reference: count of strictly earlier events of the same user, from the raw events
    ts = events.sort(["user_id", "ts"])["ts"].to_numpy()
    expected = np.array([np.sum((user == u) & (ts < t)) for u, t in zip(user, ts)])
    np.testing.assert_array_equal(n_prior, expected)
    np.testing.assert_array_equal(pcode[:, 0], np.clip(np.floor(np.log2(expected + 1)), 0, 15))
    np.testing.assert_array_equal(pcode[:, 1], expected < PREP.new_user_max_prior)
    # appending future events of a user never changes the codes of the existing ones
    last = events["ts"].max()
    future = events.head(50).with_columns(pl.lit(last + 60_000).alias("ts"))
    root2 = prepare(pl.concat([events, future]), spec, tmp_path / "d2", prep)
    pc2 = load(root2, "pcode")
    ts2 = pl.concat([events, future]).sort(["user_id", "ts"])["ts"].to_numpy()  # rows: by user, then time
    np.testing.assert_array_equal(pc2[ts2 <= last][:, :2], pcode[:, :2])
    # activity cohort: bucket of the past-only count
    assert m["cohorts"]["activity"] == activity_names([2, 8]) == ["0-1", "2-7", "8+"]
    codes = load(root, "cohorts")[:, list(m["cohorts"]).index("activity")]
    np.testing.assert_array_equal(codes, (expected >= 2).astype(int) + (expected >= 8))


def test_batches_carry_pcode(prepared):
    root, m = prepared
    batch = EventSplit(root, "train").__getitems__(list(range(8)))
    assert batch["pcode"].shape == (8, len(m["pcode"]["sizes"]))
    steps = StreamSplit(root, "train").__getitems__([0, 1])
    assert steps["pcode"].shape[:2] == steps["user"].shape
    assert InputSpec.from_manifest(m).pcode_vocab == tuple(m["pcode"]["sizes"])
