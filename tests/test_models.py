"""Per-event models and their blocks: shapes, gates, grouped layers against loops, padding."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mose.models.mmoe import MMoE
from mose.models.shared_bottom import SharedBottom
from mose.models.single_task import SingleTask
from mose.nn.embeddings import FeatureEmbedding, InputSpec
from mose.nn.encoders import MeanPool
from mose.nn.experts import GroupedLinear, GroupedMLP
from mose.nn.gates import SoftmaxGates, mix
from mose.nn.towers import Towers

SPEC = InputSpec(n_users=10, n_items=20, cat_vocab=(5, 3), n_numeric=2, history_len=4, n_history_labels=2,
                 n_prior_buckets=16)
TASKS = ["click", "like", "watch"]
B = 6


def make_batch(seed: int = 0, b: int = B) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    hist_len = torch.tensor([0, 1, 2, 4, 3, 0])[:b]  # number of real (right-aligned) history items
    slots = torch.arange(SPEC.history_len)[None, :]
    valid = slots >= SPEC.history_len - hist_len[:, None]
    hist_item = torch.where(valid, torch.randint(1, SPEC.n_items, (b, SPEC.history_len), generator=g), 0)
    hist_label = torch.randint(0, 2, (b, SPEC.history_len, SPEC.n_history_labels), generator=g).to(torch.int8)
    hist_label = hist_label * valid[..., None].to(torch.int8)
    return {
        "user": torch.randint(1, SPEC.n_users, (b,), generator=g),
        "item": torch.randint(1, SPEC.n_items, (b,), generator=g),
        "cat": torch.stack([torch.randint(0, n, (b,), generator=g) for n in SPEC.cat_vocab], dim=1),
        "num": torch.randn(b, SPEC.n_numeric, generator=g),
        "prior_bucket": torch.randint(0, SPEC.n_prior_buckets, (b,), generator=g),
        "hist_item": hist_item,
        "hist_label": hist_label,
    }


MODELS = {
    "single_task": lambda: SingleTask(SPEC, TASKS, embed_dim=4, hidden=[8, 4]),
    "shared_bottom": lambda: SharedBottom(SPEC, TASKS, embed_dim=4, bottom=[8], tower=[4]),
    "mmoe": lambda: MMoE(SPEC, TASKS, embed_dim=4, n_experts=3, expert=[8], tower=[4]),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_one_logit_per_task(name):
    torch.manual_seed(0)
    model = MODELS[name]()
    out = model(make_batch())
    assert [k for k in out if k != "aux"] == TASKS
    for t in TASKS:
        assert out[t].shape == (B,) and out[t].dtype == torch.float32
        assert torch.isfinite(out[t]).all()
    # every task gets gradient through the shared parameters
    sum(out[t].sum() for t in TASKS).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_single_task_shares_nothing():
    torch.manual_seed(0)
    model = MODELS["single_task"]()
    model(make_batch())["click"].sum().backward()
    assert all(p.grad is None for p in model.nets["like"].parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.nets["click"].parameters())


def test_mmoe_gates():
    torch.manual_seed(0)
    model = MODELS["mmoe"]()
    gates = model(make_batch())["aux"]["gates"]
    assert gates.shape == (B, len(TASKS), 3)
    assert (gates >= 0).all()
    assert torch.allclose(gates.sum(-1), torch.ones(B, len(TASKS)))


def test_mmoe_logits_are_gate_mix_of_experts():
    torch.manual_seed(0)
    model = MODELS["mmoe"]()
    batch = make_batch()
    out = model(batch)
    x = model.embed(batch)
    experts = model.experts(x)  # (B, E, H)
    gates = out["aux"]["gates"]
    for i, t in enumerate(TASKS):
        mixed = sum(gates[:, i, e, None] * experts[:, e] for e in range(3))  # (B, H)
        tower = model.towers.mlp.layers
        h = torch.relu(mixed @ tower[0].weight[i] + tower[0].bias[i])
        logit = (h @ tower[1].weight[i] + tower[1].bias[i]).squeeze(-1)
        assert torch.allclose(out[t], logit, atol=1e-5)


def test_grouped_linear_equals_separate_linears():
    torch.manual_seed(0)
    g, d_in, d_out = 3, 5, 4
    grouped = GroupedLinear(g, d_in, d_out)
    linears = []
    for k in range(g):
        lin = nn.Linear(d_in, d_out)
        with torch.no_grad():
            lin.weight.copy_(grouped.weight[k].T)
            lin.bias.copy_(grouped.bias[k])
        linears.append(lin)
    x = torch.randn(7, d_in)
    expected = torch.stack([lin(x) for lin in linears], dim=1)
    assert grouped(x).shape == (7, g, d_out)
    assert torch.allclose(grouped(x), expected, atol=1e-6)
    xg = torch.randn(7, g, d_in)  # one input per group
    expected = torch.stack([lin(xg[:, k]) for k, lin in enumerate(linears)], dim=1)
    assert torch.allclose(grouped(xg), expected, atol=1e-6)


def test_grouped_mlp_last_activation():
    torch.manual_seed(0)
    x = torch.randn(9, 6)
    relu_last = GroupedMLP(2, 6, [5, 3])
    assert relu_last(x).shape == (9, 2, 3) and (relu_last(x) >= 0).all()
    linear_last = GroupedMLP(2, 6, [5, 3], last_activation=False)
    linear_last.load_state_dict(relu_last.state_dict())
    assert torch.allclose(torch.relu(linear_last(x)), relu_last(x))
    assert (linear_last(x) < 0).any()


def test_towers_and_mix():
    torch.manual_seed(0)
    towers = Towers(3, 4, [5])
    assert towers(torch.randn(2, 3, 4)).shape == (2, 3)
    experts = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])  # (B=1, E=2, H=2)
    gates = torch.tensor([[[0.25, 0.75], [1.0, 0.0]]])  # (B=1, G=2, E=2)
    assert torch.allclose(mix(experts, gates), torch.tensor([[[2.5, 3.5], [1.0, 2.0]]]))
    sg = SoftmaxGates(4, 2, 5)
    assert torch.allclose(sg(torch.randn(3, 4)).sum(-1), torch.ones(3, 2))


def test_feature_embedding_ignores_padded_history():
    torch.manual_seed(0)
    embed = FeatureEmbedding(SPEC, dim=4)
    batch = make_batch()
    out = embed(batch)
    assert out.shape == (B, embed.out_dim)
    pad = batch["hist_item"] == 0
    assert pad.any() and (~pad).any()
    changed = dict(batch)
    labels = batch["hist_label"]
    changed["hist_label"] = torch.where(pad[..., None], torch.ones_like(labels), labels)
    assert not torch.equal(changed["hist_label"], batch["hist_label"])
    assert torch.allclose(embed(changed), out)
    # a label at a real history slot does change the output (the check above can fail)
    real = dict(batch)
    real["hist_label"] = torch.where(~pad[..., None], 1 - batch["hist_label"], batch["hist_label"])
    rows_with_history = (~pad).any(1)
    assert not torch.allclose(embed(real)[rows_with_history], out[rows_with_history])
    assert torch.allclose(embed(real)[~rows_with_history], out[~rows_with_history])


def test_feature_embedding_empty_history_is_zero_interest():
    torch.manual_seed(0)
    embed = FeatureEmbedding(SPEC, dim=4)
    batch = make_batch()
    empty = batch["hist_item"].eq(0).all(1)  # rows 0 and 5
    assert empty.tolist() == [True, False, False, False, False, True]
    out = embed(batch)
    # layout: user, item, user*item, prior, interest, interest*item, cat..., num
    interest = out[:, 4 * 4: 6 * 4]
    assert torch.equal(interest[empty], torch.zeros(2, 8))
    assert torch.equal(out[:, -SPEC.n_numeric:], batch["num"])


def test_pooled_history_is_the_mean_of_the_history_tokens():
    torch.manual_seed(0)
    embed = FeatureEmbedding(SPEC, dim=4)
    batch = make_batch()
    expected = MeanPool()(*embed.history(batch))  # tokens: item embedding + label projection
    assert torch.allclose(embed.pooled_history(batch, torch.float32), expected, atol=1e-6)
    embed(batch).sum().backward()
    assert torch.equal(embed.item.weight.grad[0], torch.zeros(4))  # padding row: no gradient


def test_history_by_label_tells_which_items_carry_a_label():
    """The plain pool adds the labels' mean to the items' mean: moving a like from one history item to another
    leaves it unchanged. ``history_by_label`` pools the items per label (hand computation) and sees the move."""
    torch.manual_seed(0)
    plain, by_label = FeatureEmbedding(SPEC, dim=4), FeatureEmbedding(SPEC, dim=4, history_by_label=True)
    by_label.load_state_dict(plain.state_dict())
    assert by_label.out_dim == plain.out_dim + 2 * SPEC.n_history_labels * 4
    batch = make_batch()
    batch["hist_item"][3] = torch.tensor([1, 2, 3, 4])
    batch["hist_label"][3] = torch.tensor([[1, 1], [0, 0], [1, 0], [0, 0]], dtype=torch.int8)
    moved = {**batch, "hist_label": batch["hist_label"].clone()}
    moved["hist_label"][3] = torch.tensor([[0, 0], [1, 1], [1, 0], [0, 0]], dtype=torch.int8)
    assert torch.allclose(plain(moved), plain(batch))
    assert not torch.allclose(by_label(moved)[3], by_label(batch)[3])
    items = by_label.item.weight
    expected = torch.stack([(items[1] + items[3]) / 2, items[1]])  # label 0: items 1 and 3; label 1: item 1
    assert torch.allclose(by_label.history_by_label(batch, torch.float32)[3], expected)
    assert torch.equal(by_label.history_by_label(batch, torch.float32)[0], torch.zeros(2, 4))  # empty history
    mmoe = MMoE(SPEC, TASKS, embed_dim=4, n_experts=3, expert=[8], tower=[4], history_by_label=True)
    assert mmoe(batch)["like"].shape == (B,)


def test_id_embeddings_start_small_with_a_zero_padding_row():
    torch.manual_seed(0)
    embed = FeatureEmbedding(InputSpec(n_users=5000, n_items=5000, cat_vocab=(), n_numeric=0, history_len=4,
                                       n_history_labels=0, n_prior_buckets=16), dim=16)
    assert abs(embed.user.weight.std().item() - 0.05) < 0.005
    assert torch.equal(embed.item.weight[0], torch.zeros(16))


def test_mean_pool():
    pool = MeanPool()
    x = torch.tensor([[[1.0, 2.0], [3.0, 5.0], [7.0, 11.0]], [[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]])
    mask = torch.tensor([[False, True, True], [False, False, False]])
    out = pool(x, mask)
    assert torch.allclose(out[0], torch.tensor([5.0, 8.0]))
    assert torch.equal(out[1], torch.zeros(2))  # all-pad history -> 0, not NaN


def test_input_spec_from_manifest(prepared):
    _, manifest = prepared
    spec = InputSpec.from_manifest(manifest)
    assert spec.n_users == manifest["vocab_sizes"]["user_id"]
    assert spec.n_items == manifest["vocab_sizes"]["item_id"]
    assert spec.cat_vocab == (manifest["vocab_sizes"]["device"],)
    assert spec.n_numeric == 1 and spec.history_len == manifest["history_len"]
    assert spec.n_history_labels == 2  # click and like (binary tasks only)
    assert spec.n_prior_buckets == 16
