"""The mixture-of-experts family: each model's defining behaviour, pinned."""

from __future__ import annotations

import math

import pytest
import torch

from mose.models.deep_moe import DeepMoE
from mose.models.hme import HME
from mose.models.linear_combination import LinearCombination
from mose.models.mmoe import MMoE
from mose.models.omoe import OMoE
from mose.models.ple import PLE
from mose.models.sparse_moe import SparseMoE
from mose.models.youtube import YouTubeRanker
from mose.nn.embeddings import InputSpec
from mose.nn.extraction import ExtractionLayer
from mose.nn.gates import mix
from mose.nn.mixture import competitive_nll, mixture_logits
from mose.nn.topk_gates import NoisyTopKGates, cv_squared
from tests.test_models import SPEC, TASKS, B, make_batch

NAMED = InputSpec(**{**SPEC.__dict__, "cat_names": ("position", "device")})

MODELS = {
    "omoe": lambda: OMoE(SPEC, TASKS, embed_dim=4, n_experts=3, expert=[8], tower=[4]),
    "omoe_cooperative": lambda: OMoE(SPEC, TASKS, embed_dim=4, n_experts=3, expert=[8], mixture="cooperative"),
    "omoe_competitive": lambda: OMoE(SPEC, TASKS, embed_dim=4, n_experts=3, expert=[8], mixture="competitive"),
    "sparse_moe": lambda: SparseMoE(SPEC, TASKS, embed_dim=4, n_experts=6, k=2, expert=[8], tower=[4]),
    "sparse_mmoe": lambda: MMoE(SPEC, TASKS, embed_dim=4, n_experts=6, expert=[8], tower=[4], top_k=2),
    "hme": lambda: HME(SPEC, TASKS, embed_dim=4, n_branches=2, n_experts=3, expert=[8], tower=[4]),
    "deep_moe": lambda: DeepMoE(SPEC, TASKS, embed_dim=4, n_experts=3, layers=[8, 6], tower=[4]),
    "linear_combination": lambda: LinearCombination(SPEC, TASKS, embed_dim=4, n_experts=3, expert=[8], tower=[4]),
    "cgc": lambda: PLE(SPEC, TASKS, embed_dim=4, levels=1, n_specific=2, n_shared=1, expert=[8], tower=[4]),
    "ple": lambda: PLE(SPEC, TASKS, embed_dim=4, levels=3, n_specific=2, n_shared=1, expert=[8], tower=[4]),
    "youtube": lambda: YouTubeRanker(NAMED, TASKS, embed_dim=4, shared=[8], n_experts=3, expert=[8], tower=[4]),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_shapes_gates_and_gradients(name):
    torch.manual_seed(0)
    model = MODELS[name]()
    out = model(make_batch())
    assert [k for k in out if k != "aux"] == TASKS
    for t in TASKS:
        assert out[t].shape == (B,) and torch.isfinite(out[t]).all()
    gates = out["aux"]["gates"]
    assert gates.shape[:2] == (B, len(TASKS)) and (gates >= 0).all()
    assert torch.allclose(gates.sum(-1), torch.ones(B, len(TASKS)), atol=1e-5)
    loss = sum(out[t].sum() for t in TASKS) + out["aux"].get("loss", 0.0)
    if "expert_logits" in out["aux"]:
        loss = loss + out["aux"]["expert_logits"].sum()
    loss.backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert not unused, unused
    model.eval()
    with torch.no_grad():
        again = model(make_batch())
    assert torch.allclose(again["aux"]["gates"].sum(-1), torch.ones(B, len(TASKS)), atol=1e-5)


# --- sparse top-k gates --------------------------------------------------------------------------

@pytest.mark.parametrize("k", [1, 2, 3])
def test_topk_gates_have_exactly_k_nonzero(k):
    torch.manual_seed(0)
    gate = NoisyTopKGates(5, 2, 6, k=k)
    torch.nn.init.normal_(gate.proj.weight)
    x = torch.randn(64, 5)
    for training in (True, False):
        gate.train(training)
        g, loss = gate(x)
        assert g.shape == (64, 2, 6)
        assert ((g > 0).sum(-1) == k).all()
        assert torch.allclose(g.sum(-1), torch.ones(64, 2))
        assert loss.ndim == 0 and loss >= 0
    # the kept experts are the k largest clean logits in eval mode
    gate.eval()
    g, _ = gate(x)
    clean = gate.proj(x).unflatten(-1, (2, 6))
    assert torch.equal((g > 0), torch.zeros_like(g, dtype=torch.bool).scatter(-1, clean.topk(k, -1).indices, True))


def test_sparse_models_route_k_experts_and_return_balance_loss():
    torch.manual_seed(0)
    for model in (MODELS["sparse_moe"](), MODELS["sparse_mmoe"]()):
        out = model(make_batch())
        assert ((out["aux"]["gates"] > 0).sum(-1) == 2).all()
        assert out["aux"]["loss"].requires_grad


def test_balance_loss_matches_hand_computation():
    gate = NoisyTopKGates(3, 1, 4, k=1, noisy=False, w_importance=0.5, w_load=0.0)
    with torch.no_grad():
        gate.proj.weight.copy_(torch.eye(4, 3))
        gate.proj.bias.zero_()
    x = torch.tensor([[5.0, 0.0, 0.0], [4.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    g, loss = gate(x)  # k=1: one-hot on expert 0, 0, 1 -> importance (2, 1, 0, 0)
    imp = torch.tensor([2.0, 1.0, 0.0, 0.0])
    assert torch.allclose(g.sum(0)[0], imp)
    expected = 0.5 * imp.var() / imp.mean() ** 2
    assert torch.allclose(loss, expected)
    assert torch.allclose(cv_squared(torch.ones(4)), torch.tensor(0.0))


def test_load_loss_is_differentiable_wrt_gate_and_noise():
    torch.manual_seed(0)
    gate = NoisyTopKGates(5, 1, 4, k=2, w_importance=0.0, w_load=1.0)
    torch.nn.init.normal_(gate.proj.weight)
    _, loss = gate(torch.randn(32, 5))
    loss.backward()
    assert gate.proj.weight.grad.abs().sum() > 0 and gate.noise.weight.grad.abs().sum() > 0


def test_top_k_must_fit():
    with pytest.raises(ValueError, match="k <= n_experts"):
        NoisyTopKGates(4, 1, 3, k=4)


# --- OMoE and Jacobs et al.'s mixtures -----------------------------------------------------------

def test_omoe_one_gate_for_all_tasks():
    torch.manual_seed(0)
    gates = MODELS["omoe"]()(make_batch())["aux"]["gates"]
    assert torch.equal(gates[:, 0], gates[:, 1]) and torch.equal(gates[:, 0], gates[:, 2])


def test_cooperative_output_is_blend_of_expert_predictions():
    torch.manual_seed(0)
    model = MODELS["omoe_cooperative"]()
    batch = make_batch()
    out = model(batch)
    x = model.embed(batch)
    o = model.heads(model.experts(x))  # (B, E, T)
    p = model.gate(x)[:, 0]  # (B, E)
    for i, t in enumerate(TASKS):
        assert torch.allclose(out[t], (p * o[..., i]).sum(-1), atol=1e-6)


def test_competitive_loss_matches_jacobs_formula():
    o = torch.tensor([[[0.5, -1.0, 2.0]]])  # (B=1, T=1, E=3)
    p = torch.tensor([[[0.2, 0.3, 0.5]]])
    y = torch.tensor([[1.5]])
    expected = -math.log(sum(pi * math.exp(-0.5 * (1.5 - oi) ** 2) for pi, oi in zip([0.2, 0.3, 0.5], [0.5, -1, 2])))
    nll = competitive_nll(o, p, y, torch.tensor([False]))
    assert nll.item() == pytest.approx(expected, rel=1e-6)
    # binary: mixture of Bernoulli likelihoods; the prediction is the mixture's probability
    sig = torch.sigmoid(o)[0, 0]
    nll_b = competitive_nll(o, p, torch.tensor([[1.0]]), torch.tensor([True]))
    assert nll_b.item() == pytest.approx(-math.log(float((p[0, 0] * sig).sum())), rel=1e-6)
    prob = torch.sigmoid(mixture_logits(o, p, torch.tensor([True])))
    assert prob.item() == pytest.approx(float((p[0, 0] * sig).sum()), rel=1e-6)
    assert mixture_logits(o, p, torch.tensor([False])).item() == pytest.approx(float((p * o).sum()), rel=1e-6)


def test_competitive_and_cooperative_gradients_differ():
    """Competitive: an expert far from the target gets (almost) no gradient; cooperative: all do."""
    o = torch.tensor([[[1.0, 9.0]]], requires_grad=True)
    p = torch.tensor([[[0.5, 0.5]]])
    y = torch.tensor([[1.2]])
    competitive_nll(o, p, y, torch.tensor([False])).sum().backward()
    assert abs(o.grad[0, 0, 1]) < 1e-6 < abs(o.grad[0, 0, 0])
    o.grad = None
    ((p * o).sum(-1) - y).pow(2).sum().backward()
    assert abs(o.grad[0, 0, 1]) > 0.1


# --- HME, deep MoE, linear combination -----------------------------------------------------------

def test_hme_leaf_weights_are_path_products():
    torch.manual_seed(0)
    model = MODELS["hme"]()
    batch = make_batch()
    aux = model(batch)["aux"]
    x = model.embed(batch)
    top, lower = model.top(x), model.lower(x).unflatten(1, (len(TASKS), 2))  # (B,T,2), (B,T,2,3)
    assert torch.allclose(lower.sum(-1), torch.ones(B, len(TASKS), 2))
    leaf = aux["gates"].unflatten(-1, (2, 3))
    assert torch.allclose(leaf, top[..., None] * lower)
    assert torch.allclose(leaf.sum(-1), aux["branch_gates"])
    assert aux["expert_logits"].shape == (B, len(TASKS), 6)


HME_TASKS = {"click": {"kind": "binary"}, "like": {"kind": "binary"}, "watch": {"kind": "regression"}}


def hme_module():
    from dataclasses import asdict

    from mose.module import MultiTaskModule

    return MultiTaskModule(model={"_target_": "mose.models.hme.HME", "embed_dim": 4, "n_branches": 2, "n_experts": 3,
                                  "expert": [8], "tower": [4]},
                           input_spec=asdict(SPEC), tasks=HME_TASKS,
                           task_stats={"watch": {"mean": 0.5, "std": 2.0}}).eval()


def leaf_prediction(model: HME, batch: dict, leaf: int, task: int) -> torch.Tensor:
    """Leaf ``leaf``'s own logit for task ``task`` ``(B,)``, by hand from the stacked weights."""
    x = model.embed(batch)
    e = model.experts.layers[0]
    h = torch.relu(x @ e.weight[leaf] + e.bias[leaf])
    g = leaf * len(TASKS) + task  # the (leaf, task) tower
    t1, t2 = model.towers.layers
    return (torch.relu(h @ t1.weight[g] + t1.bias[g]) @ t2.weight[g] + t2.bias[g]).squeeze(-1)


def test_hme_one_hot_tree_reproduces_the_chosen_leaf():
    """A gating tree that picks one leaf per task: each task's prediction is that leaf's own prediction."""
    torch.manual_seed(0)
    module = hme_module()
    model = module.model
    chosen = {0: (1, 2), 1: (0, 0), 2: (1, 0)}  # task -> (branch, expert in the branch)
    with torch.no_grad():
        for gate in (model.top.proj, model.lower.proj):
            gate.weight.zero_()
            gate.bias.zero_()
        for t, (branch, expert) in chosen.items():
            model.top.proj.bias[t * 2 + branch] = 1e3  # exp(-1e3) is exactly 0 in float32
            for b in range(2):
                model.lower.proj.bias[(t * 2 + b) * 3 + expert] = 1e3
    batch = make_batch()
    with torch.no_grad():
        out = model(batch)
        preds = module.predict_step(batch)  # what mose-eval / mose-predict / mose-export serve
    for t, (branch, expert) in chosen.items():
        leaf = branch * 3 + expert
        assert torch.equal(out["aux"]["gates"][:, t], torch.nn.functional.one_hot(torch.tensor(leaf), 6).float()
                           .expand(B, -1))
        with torch.no_grad():
            own = leaf_prediction(model, batch, leaf, t)
        expected = torch.sigmoid(own) if t < 2 else own * 2.0 + 0.5  # probability / target scale
        torch.testing.assert_close(preds[:, t], expected, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(out[TASKS[t]], own, rtol=1e-6, atol=1e-7)


def test_hme_mixes_the_leaves_predictions_and_trains_their_likelihood():
    """Binary tasks: the mixture of the leaves' probabilities; regression: of their means; the training
    loss is the mixture's negative log-likelihood (Jordan & Jacobs)."""
    torch.manual_seed(0)
    module = hme_module()
    batch = make_batch() | {"labels": torch.tensor([[1.0, 0.0, 0.3]] * 3 + [[0.0, 1.0, -0.5]] * 3),
                            "user_key": torch.arange(B), "cohorts": torch.zeros(B, 0, dtype=torch.long)}
    with torch.no_grad():
        aux = module.model(batch)["aux"]
        p, o = aux["gates"], aux["expert_logits"]  # (B, T, E)
        preds = module.predict_step(batch)
        losses, _, _, _ = module._step(batch)
    torch.testing.assert_close(preds[:, :2], (p * torch.sigmoid(o))[:, :2].sum(-1))
    torch.testing.assert_close(preds[:, 2], (p * o)[:, 2].sum(-1) * 2.0 + 0.5)
    y = batch["labels"]
    z = torch.stack([y[:, 0], y[:, 1], (y[:, 2] - 0.5) / 2.0], -1)  # the standardised regression target
    bern = torch.where(z[..., None] > 0.5, torch.sigmoid(o), 1 - torch.sigmoid(o))
    gauss = torch.exp(-0.5 * (z[..., None] - o) ** 2)
    lik = torch.cat([bern[:, :2], gauss[:, 2:]], 1)
    torch.testing.assert_close(losses, -(p * lik).sum(-1).log().mean(0))


def test_deep_moe_stacks_layers():
    torch.manual_seed(0)
    model = MODELS["deep_moe"]()
    aux = model(make_batch())["aux"]
    assert aux["layer_gates"].shape == (B, 1, 3) and len(model.experts) == 2
    # the second layer's experts read the first layer's 8-dim mixed output
    assert model.experts[1].layers[0].weight.shape[1] == 8


def test_linear_combination_weights_do_not_depend_on_input():
    torch.manual_seed(0)
    model = MODELS["linear_combination"]()
    with torch.no_grad():
        model.mix_logits.normal_()
    g = model(make_batch())["aux"]["gates"]
    assert torch.allclose(g, g[:1].expand_as(g))
    assert torch.allclose(g[0], torch.softmax(model.mix_logits, -1))


def test_linear_combination_free_weights_are_unconstrained():
    """mix=free: each task's output is its tower on ``sum_e w_te f_e(x)`` with any real ``w``; training moves ``w``."""
    torch.manual_seed(0)
    model = LinearCombination(SPEC, TASKS, embed_dim=4, n_experts=3, expert=[8], tower=[4], mix="free")
    assert torch.equal(model.mix_logits, torch.full((3, 3), 1 / 3))  # the uniform mix convex starts at too
    w = torch.tensor([[2.0, -1.0, 0.0], [0.5, 0.5, 0.5], [-0.3, 0.0, 1.7]])
    with torch.no_grad():
        model.mix_logits.copy_(w)
    batch = make_batch()
    out = model(batch)
    assert "gates" not in out["aux"] and torch.equal(out["aux"]["mix_weights"], w)
    experts = model.experts(model.embed(batch))  # (B, E, H)
    for i, t in enumerate(TASKS):
        mixed = sum(w[i, e] * experts[:, e] for e in range(3))  # (B, H)
        t1, t2 = model.towers.mlp.layers
        expected = (torch.relu(mixed @ t1.weight[i] + t1.bias[i]) @ t2.weight[i] + t2.bias[i]).squeeze(-1)
        torch.testing.assert_close(out[t], expected)
    sum(out[t].sum() for t in TASKS).backward()
    assert model.mix_logits.grad.abs().min() > 0
    with pytest.raises(ValueError, match="model.mix"):
        LinearCombination(SPEC, TASKS, mix="softmax")


# --- CGC / PLE -----------------------------------------------------------------------------------

def test_ple_task_experts_feed_only_their_own_task_gate():
    torch.manual_seed(0)
    n_tasks, n_spec, n_shared = 3, 2, 1
    layer = ExtractionLayer(n_tasks, 5, [4], n_spec, n_shared, shared_gate=True)
    task_x, shared_x = torch.randn(7, n_tasks, 5), torch.randn(7, 5)
    task_out, shared_out, gates = layer(task_x, shared_x)
    assert gates.shape == (7, n_tasks + 1, n_tasks * n_spec + n_shared)
    for t in range(n_tasks):
        own = set(range(t * n_spec, (t + 1) * n_spec)) | {n_tasks * n_spec}
        others = [e for e in range(gates.shape[-1]) if e not in own]
        assert (gates[:, t, others] == 0).all() and (gates[:, t, sorted(own)] > 0).all()
    assert (gates[:, -1] > 0).all()  # the shared gate sees every expert
    # no gradient flows from task 0's output into task 1's or task 2's experts (through any path)
    task_out[:, 0].sum().backward()
    w = layer.experts.layers[0].weight.grad  # (E, in, out)
    assert w[2:6].abs().sum() == 0 and w[0:2].abs().sum() > 0 and w[6].abs().sum() > 0
    # and task 0's output does not depend on task 1's input
    task_x2 = task_x.clone()
    task_x2[:, 1] += 1.0
    assert torch.allclose(layer(task_x2, shared_x)[0][:, 0], task_out[:, 0].detach())


def test_ple_levels_and_cgc():
    torch.manual_seed(0)
    ple, cgc = MODELS["ple"](), MODELS["cgc"]()
    assert len(ple.levels) == 3 and len(cgc.levels) == 1
    assert [lvl.n_gates for lvl in ple.levels] == [4, 4, 3]  # shared gate on all levels but the last
    out = ple(make_batch())
    g = out["aux"]["gates"]  # (B, T, 3*2+1)
    assert (g[:, 0, 2:6] == 0).all() and (g[:, 1, [0, 1, 4, 5]] == 0).all()


# --- YouTube ranker ------------------------------------------------------------------------------

def youtube_batch(b: int = B, seed: int = 0) -> dict:
    batch = make_batch(seed, min(b, B))
    if b > B:  # a large batch of random rows
        g = torch.Generator().manual_seed(seed)
        batch = {k: v[torch.randint(0, B, (b,), generator=g)] for k, v in batch.items()}
        batch["cat"] = torch.stack([torch.randint(2, n, (b,), generator=g) for n in SPEC.cat_vocab], 1)
    return batch


def bias_by_hand(model: YouTubeRanker, cat: torch.Tensor) -> torch.Tensor:
    """The shallow tower on the (position, device) columns of ``cat (B, 2)``: ``(B, T)``."""
    return model.bias_tower(torch.cat([model.bias_embed[0](cat[:, 0]), model.bias_embed[1](cat[:, 1])], -1))


def test_youtube_serving_sets_only_position_missing():
    """eval(): served logit = main(position missing) + bias tower(position missing, device as given)."""
    torch.manual_seed(0)
    model = MODELS["youtube"]().eval()
    batch = make_batch()
    batch["cat"][:, 0] = torch.tensor([2, 3, 4, 2, 3, 1])  # position (column 0); row 5 unknown
    other_position = {**batch, "cat": batch["cat"].clone()}
    other_position["cat"][:, 0] = torch.tensor([4, 2, 3, 4, 0, 2])
    other_device = {**batch, "cat": batch["cat"].clone()}
    other_device["cat"][:, 1] = (batch["cat"][:, 1] + 1) % SPEC.cat_vocab[1]
    with torch.no_grad():
        serve = model(batch)
        missing = batch["cat"].clone()
        missing[:, 0] = 1  # the OOV index
        shared = model.shared(model.embed({**batch, "cat": missing}))
        main = model.towers(mix(model.experts(shared), model.gates(shared)))
        bias = bias_by_hand(model, missing)
        for i, t in enumerate(TASKS):
            torch.testing.assert_close(serve[t], main[:, i] + bias[:, i])
            assert torch.equal(serve[t], model(other_position)[t])  # position is ignored at serving
            assert not torch.allclose(serve[t], model(other_device)[t])  # device is not
        # the main network sees device (not only the bias tower)
        missing_other_device = other_device["cat"].clone()
        missing_other_device[:, 0] = 1
        assert not torch.allclose(model.shared(model.embed({**batch, "cat": missing_other_device})), shared)


def test_youtube_position_dropout_in_training():
    """Training: a position_dropout share of the rows has position missing in the bias tower, the rest
    the real position; the main network never sees position; training logits = main + bias."""
    torch.manual_seed(0)
    model = YouTubeRanker(NAMED, TASKS, embed_dim=4, shared=[8], n_experts=2, expert=[8], tower=[4],
                          position_dropout=0.3)
    batch = youtube_batch(2000)
    model.train()
    out = model(batch)
    with torch.no_grad():
        missing = batch["cat"].clone()
        missing[:, 0] = 1
        bias_missing, bias_real = bias_by_hand(model, missing), bias_by_hand(model, batch["cat"])
        bias = out["aux"]["bias_logits"]
        dropped = (bias == bias_missing).all(-1)
        kept = (bias == bias_real).all(-1)
        assert (dropped ^ kept).all()  # every row has one or the other
        assert abs(dropped.float().mean().item() - 0.3) < 0.05  # 0.3 +- 5 std of a binomial share of 2000
        model.eval()
        serve = model(batch)
        for i, t in enumerate(TASKS):
            main = out[t] - bias[:, i]
            # main part identical to serving's (the main model's position is always missing)
            torch.testing.assert_close(main, serve[t] - model(batch)["aux"]["bias_logits"][:, i])
            torch.testing.assert_close(out[t][dropped], serve[t][dropped])
    model = YouTubeRanker(NAMED, TASKS, embed_dim=4, shared=[8], n_experts=2, expert=[8], tower=[4],
                          position_dropout=0.0).train()
    with torch.no_grad():
        out = model(batch)
        assert torch.equal(out["aux"]["bias_logits"], bias_by_hand(model, batch["cat"]))  # no dropout: real positions
    with pytest.raises(ValueError, match="position_dropout"):
        YouTubeRanker(NAMED, TASKS, position_dropout=1.5)


def test_youtube_score_is_weighted_product():
    torch.manual_seed(0)
    model = YouTubeRanker(NAMED, TASKS, embed_dim=4, shared=[8], n_experts=2, expert=[8], tower=[4],
                          score_weights={"click": 1.0, "like": 0.5})
    model.eval()
    out = model(make_batch())
    expected = torch.sigmoid(out["click"]) * torch.sigmoid(out["like"]) ** 0.5
    assert torch.allclose(out["aux"]["score"], expected, atol=1e-6)
    with pytest.raises(ValueError, match="unknown tasks"):
        YouTubeRanker(NAMED, TASKS, score_weights={"nope": 1.0})


def test_youtube_without_bias_features_in_data():
    model = YouTubeRanker(SPEC, TASKS, embed_dim=4, shared=[8], n_experts=2, expert=[8], tower=[4])
    assert model.bias_tower is None and model.position_col == -1
    for training in (True, False):
        model.train(training)
        assert "bias_logits" not in model(make_batch())["aux"]


def test_module_trains_competitive_mixture_with_its_likelihood():
    from dataclasses import asdict

    from mose.module import MultiTaskModule

    torch.manual_seed(0)
    tasks = {"click": {"kind": "binary"}, "like": {"kind": "binary"}, "watch": {"kind": "regression"}}
    module = MultiTaskModule(model={"_target_": "mose.models.omoe.OMoE", "embed_dim": 4, "n_experts": 3,
                                    "expert": [8], "mixture": "competitive"},
                             input_spec=asdict(SPEC), tasks=tasks)
    batch = make_batch() | {"labels": torch.tensor([[1.0, 0.0, 0.3]] * 3 + [[0.0, 1.0, -0.5]] * 3),
                            "user_key": torch.arange(B), "cohorts": torch.zeros(B, 0, dtype=torch.long)}
    raw = module.model(batch)
    binary = torch.tensor([True, True, False])
    mixed = mixture_logits(raw["aux"]["expert_logits"], raw["aux"]["gates"], binary)
    out = module(batch)  # serving: the mixture's prediction
    assert torch.allclose(out["click"], mixed[:, 0]) and not torch.allclose(out["click"], raw["click"])
    assert torch.allclose(out["watch"], raw["watch"], atol=1e-6)  # regression: the blend is the mixture mean
    losses, logits, _, _ = module._step(batch)
    nll = competitive_nll(raw["aux"]["expert_logits"], raw["aux"]["gates"], batch["labels"], binary).mean(0)
    assert torch.allclose(losses, nll, atol=1e-6) and torch.allclose(logits, mixed, atol=1e-6)
    # the exported scorer serves the same mixture prediction (it wraps module.model, not the module)
    from mose.export import ScoringModel

    fields = [f for f in batch if f not in ("labels", "user_key", "cohorts")]
    module.eval()
    with torch.no_grad():
        served = ScoringModel(module, fields)(*[batch[f] for f in fields])
        expected = module.predictions(torch.stack([module(batch)[t] for t in tasks], -1))
    assert torch.allclose(served, expected, atol=1e-6)
