"""Sequential task dependencies (``data.tasks.<task>.after``) and the models built on them: ESMM, AITM, PEPNet."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict

import polars as pl
import pytest
import torch
import torch.nn.functional as F
from conftest import compose_with_output
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from data_prep.build import dataset_config, event_spec
from data_prep.schema import EventSpec, SchemaError, TaskSpec
from data_prep.sources import synthetic
from mose.models.aitm import AITM
from mose.models.esmm import ESMM
from mose.models.mmoe import MMoE
from mose.models.pepnet import PEPNet
from mose.nn.embeddings import InputSpec
from mose.nn.task_chain import TaskChain
from mose.nn.transfer import InformationTransfer
from tests.test_models import SPEC, B, make_batch

TASKS = ["click", "like", "watch", "convert"]
AFTER = {"convert": "click"}
PC_SPEC = InputSpec(**{**SPEC.__dict__, "pcode_vocab": (16, 3), "cat_names": ("position", "device")})


def pc_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return make_batch(seed) | {"pcode": torch.stack([torch.randint(0, n, (B,), generator=g) for n in (16, 3)], 1)}


MODELS = {
    "esmm": lambda: ESMM(SPEC, TASKS, AFTER, embed_dim=4, tower=[8, 4]),
    "aitm": lambda: AITM(SPEC, TASKS, AFTER, embed_dim=4, tower=[8, 6]),
    "aitm_chain": lambda: AITM(SPEC, [*TASKS, "buy"], {**AFTER, "buy": "convert"}, embed_dim=4, tower=[8]),
    "pepnet": lambda: PEPNet(PC_SPEC, TASKS, embed_dim=4, tower=[8, 4], domain_features=["device"], gate_hidden=8),
}


# --- the dependency in the data config -----------------------------------------------------------

def test_after_is_validated_naming_the_key():
    tasks = {"click": {}, "convert": {"after": "click"}, "watch": {"kind": "regression"}}
    assert EventSpec.from_config(tasks).after == {"convert": "click"}
    bad = [({"convert": {"after": "clik"}}, "data.tasks.convert.after=clik: no task 'clik'"),
           ({"convert": {"after": "convert"}}, "data.tasks.convert.after=convert: the dependencies form a cycle"),
           ({"click": {"after": "convert"}, "convert": {"after": "click"}}, "form a cycle"),
           ({"convert": {"after": "watch"}}, "data.tasks.convert.after=watch: both tasks must be binary"),
           ({"watch": {"kind": "regression", "after": "click"}}, "but 'watch' is regression")]
    for change, message in bad:
        with pytest.raises(SchemaError, match=message.replace("(", r"\(")):
            EventSpec.from_config({**tasks, **change})
    with pytest.raises(SchemaError, match="a task has kind, weight, transform, after"):
        event_spec({"tasks": {"click": {"befor": "x"}}})


def test_after_changes_no_prepared_array():
    """``after`` is not part of the dataset's config hash (nor written where it is unset)."""
    data = {"source": {"_target_": "x"}, "tasks": {"click": {}, "convert": {}}}
    with_after = {**data, "tasks": {"click": {}, "convert": {"after": "click"}}}
    assert dataset_config(data) == dataset_config(with_after)
    assert dataset_config(data) != dataset_config({**data, "tasks": {"click": {}, "buy": {}}})
    assert "after" not in event_spec(data).to_dict()["tasks"]["convert"]
    assert event_spec(with_after).to_dict()["tasks"]["convert"]["after"] == "click"


def test_synthetic_convert_follows_a_click_without_position_effect():
    df = synthetic.generate(n_events=30_000, n_users=500, n_items=300, return_scores=True)
    assert df.filter(pl.col("click") == 0)["convert"].sum() == 0
    clicked = df.filter(pl.col("click") == 1)
    rate = clicked.group_by(pl.col("position") < 5).agg(pl.col("convert").mean())["convert"]
    assert abs(rate[0] - rate[1]) < 0.03  # P(convert | click) does not depend on the position ...
    ctr = df.group_by(pl.col("position") < 5).agg(pl.col("click").mean()).sort("position")["click"]
    assert ctr[1] > ctr[0] + 0.05  # ... the click does
    assert 0.15 < clicked["convert"].mean() < 0.35


def test_kuairand_example_declares_long_view_after_click(tmp_path):
    cfg = compose_with_output("train", ["experiment=moe_family_kuairand"], tmp_path)
    GlobalHydra.instance().clear()
    assert event_spec(OmegaConf.to_container(cfg.data, resolve=False)).after == {"long_view": "is_click"}


# --- the probability chain -----------------------------------------------------------------------

def test_task_chain_joint_labels_and_logits_match_hand_computation():
    chain = TaskChain(["click", "convert", "buy", "watch"], {"convert": "click", "buy": "convert"})
    assert chain.depth == 2 and chain.parent.tolist() == [0, 0, 1, 3]
    labels = torch.tensor([[1.0, 1.0, 1.0, 0.3], [0.0, 1.0, 1.0, 2.0], [1.0, 0.0, 1.0, 0.0]])
    assert torch.equal(chain.joint_labels(labels), torch.tensor([[1.0, 1.0, 1.0, 0.3], [0.0, 0.0, 0.0, 2.0],
                                                                  [1.0, 0.0, 0.0, 0.0]]))
    c = torch.tensor([[0.5, -1.0, 2.0, 1.5], [-3.0, 4.0, 0.0, -0.7]])
    p = torch.sigmoid(c.double())
    joint = torch.stack([p[:, 0], p[:, 0] * p[:, 1], p[:, 0] * p[:, 1] * p[:, 2]], -1)
    out = chain.joint_logits(c)
    assert torch.allclose(out[:, :3].double(), torch.logit(joint), atol=1e-5)
    assert torch.equal(out[:, 3], c[:, 3])  # a root (and a regression task) is unchanged
    # confident towers: finite logits and finite gradients (a NaN gradient here once stopped ESMM on KuaiRand)
    c = torch.tensor([[200.0, 200.0, -200.0, 0.0], [-200.0, 90.0, 90.0, 0.0], [20.0, 20.0, 20.0, 0.0],
                      [17.0, 17.0, 17.0, 0.0], [0.1, 0.3, 0.2, 0.0]], requires_grad=True)
    extreme = chain.joint_logits(c)
    F.binary_cross_entropy_with_logits(extreme, torch.tensor([[1.0, 0.0, 1.0, 0.0]] * 5)).backward()
    assert torch.isfinite(extreme).all() and torch.isfinite(c.grad).all()
    assert 16.0 < extreme[0, 1] < 16.2 and extreme[1, 2] < -190  # P(joint) capped at 1 - 1e-7


def test_calibration_loss_is_the_mean_excess_over_the_parent():
    chain = TaskChain(["click", "convert"], {"convert": "click"})
    logits = torch.logit(torch.tensor([[0.2, 0.5], [0.6, 0.1], [0.3, 0.45]]))
    assert torch.allclose(chain.calibration_loss(logits), torch.tensor((0.3 + 0.0 + 0.15) / 3), atol=1e-6)


# --- the models ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(MODELS))
def test_shapes_and_every_parameter_trains(name):
    torch.manual_seed(0)
    model = MODELS[name]()
    out = model(pc_batch())
    tasks = model.tasks
    assert [k for k in out if k != "aux"] == tasks
    for t in tasks:
        assert out[t].shape == (B,) and torch.isfinite(out[t]).all()
    (sum(out[t].sum() for t in tasks) + out["aux"].get("loss", 0.0)).backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None]


def test_esmm_outputs_pctcvr_and_the_module_trains_it_on_all_exposures():
    from mose.module import MultiTaskModule

    torch.manual_seed(0)
    tasks = {"click": {"kind": "binary"}, "convert": {"kind": "binary", "after": "click"}}
    module = MultiTaskModule(model={"_target_": "mose.models.esmm.ESMM", "embed_dim": 4, "tower": [8]},
                             input_spec=asdict(SPEC), tasks=tasks)
    labels = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    batch = make_batch() | {"labels": labels, "user_key": torch.arange(B), "cohorts": torch.zeros(B, 0, dtype=torch.long)}
    out = module.model(batch)
    ctr, cvr = torch.sigmoid(out["aux"]["conditional_logits"]).unbind(-1)
    assert torch.allclose(torch.sigmoid(out["convert"]), ctr * cvr, atol=1e-6)  # pCTCVR = pCTR x pCVR
    assert torch.allclose(out["click"], out["aux"]["conditional_logits"][:, 0])
    losses, _, _, _ = module._step(batch)
    joint = labels[:, 0] * labels[:, 1]  # row 3 converts without a click: a negative of click AND convert
    want = torch.stack([F.binary_cross_entropy(ctr, labels[:, 0]), F.binary_cross_entropy(ctr * cvr, joint)])
    assert torch.allclose(losses, want, atol=1e-5)
    # the CVR tower learns on unclicked exposures too (through the product), never on clicked ones alone
    module.zero_grad()
    F.binary_cross_entropy_with_logits(module.model(batch)["convert"][2], torch.tensor(0.0)).backward()
    assert module.model.towers.mlp.layers[-1].weight.grad[1].abs().sum() > 0
    # eval reads the joint: p_convert is P(click, convert)
    module.eval()
    assert torch.allclose(module.predict_step(batch)[:, 1], ctr * cvr, atol=1e-5)


def test_positives_without_their_parent_are_counted_and_reported(caplog):
    from mose.module import MultiTaskModule

    tasks = {"click": {"kind": "binary"}, "convert": {"kind": "binary", "after": "click"}}
    module = MultiTaskModule(model={"_target_": "mose.models.esmm.ESMM", "embed_dim": 4, "tower": [8]},
                             input_spec=asdict(SPEC), tasks=tasks)
    labels = torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 1.0], [0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    batch = make_batch() | {"labels": labels}
    for _ in range(2):
        module.training_step(batch, 0)
    assert module._orphans.tolist() == [0, 6]  # 3 a batch: convert = 1 with click = 0
    with caplog.at_level(logging.WARNING, logger="mose.module"):
        module.on_train_epoch_end()
    assert "task 'convert' is declared after 'click', but 6 of its positive training labels" in caplog.text


def test_a_model_without_the_chain_trains_the_joint_label_too():
    from mose.module import MultiTaskModule

    tasks = {"click": {"kind": "binary"}, "convert": {"kind": "binary", "after": "click"}}
    module = MultiTaskModule(model={"_target_": "mose.models.mmoe.MMoE", "embed_dim": 4, "expert": [8]},
                             input_spec=asdict(SPEC), tasks=tasks)
    assert isinstance(module.model, MMoE)
    labels = torch.tensor([[0.0, 1.0]] * 3 + [[1.0, 1.0]] * 3)
    assert torch.equal(module.transformed(labels)[:, 1], torch.tensor([0.0] * 3 + [1.0] * 3))


def test_esmm_and_aitm_refuse_a_task_set_without_dependency(tmp_path):
    with pytest.raises(ValueError, match=r"declare data.tasks.<task>.after=<parent>, e.g. '\+data.tasks.convert="):
        ESMM(SPEC, TASKS, {})
    from mose.config_checks import ConfigError, check_config

    for model in ("esmm", "aitm"):
        cfg = compose_with_output("train", [f"model={model}"], tmp_path)
        with pytest.raises(ConfigError, match="needs a task dependency"):
            check_config(cfg)
    GlobalHydra.instance().clear()


def test_information_transfer_matches_hand_computation():
    torch.manual_seed(0)
    ait = InformationTransfer(2, 3)
    p, q = torch.randn(4, 2, 3), torch.randn(4, 2, 3)
    out, weights = ait(p, q)
    w, b = ait.proj.weight, ait.proj.bias  # (G, H, 3H), (G, 3H)
    for g in range(2):
        hp, hq = p[:, g] @ w[g] + b[g], q[:, g] @ w[g] + b[g]  # (4, 3H): value, query, key
        score = torch.stack([(h[:, 3:6] * h[:, 6:]).sum(-1) for h in (hp, hq)], -1) / 3 ** 0.5
        a = torch.softmax(score, -1)
        assert torch.allclose(weights[:, g], a, atol=1e-6)
        assert torch.allclose(out[:, g], a[:, :1] * hp[:, :3] + a[:, 1:] * hq[:, :3], atol=1e-6)


def test_aitm_transfers_from_parent_to_child_only():
    torch.manual_seed(0)
    model = MODELS["aitm"]()
    out = model(make_batch())
    assert out["aux"]["transfer_weights"].shape == (B, 1, 2)
    assert torch.allclose(out["aux"]["transfer_weights"].sum(-1), torch.ones(B, 1))
    # the click logit does not depend on the transfer and AIT parameters; convert's does
    grads = torch.autograd.grad(out["click"].sum(), [model.transfer.layers[0].weight, model.ait.proj.weight],
                                allow_unused=True, retain_graph=True)
    assert all(g is None or not g.any() for g in grads)
    grads = torch.autograd.grad(out["convert"].sum(), [model.transfer.layers[0].weight, model.ait.proj.weight],
                                retain_graph=True)
    assert all(g.abs().sum() > 0 for g in grads)
    p = torch.sigmoid(torch.stack([out["click"], out["convert"]], -1))
    assert torch.allclose(out["aux"]["loss"], 0.6 * torch.relu(p[:, 1] - p[:, 0]).mean(), atol=1e-6)


def test_pepnet_with_zeroed_gates_is_its_base_network():
    torch.manual_seed(0)
    model = MODELS["pepnet"]()
    model.zero_gates()
    batch = pc_batch()
    out = model(batch)
    base = model.towers.base(model.embed(batch)).squeeze(-1)  # embed -> a plain tower per task
    for i, t in enumerate(TASKS):
        assert torch.allclose(out[t], base[:, i], atol=1e-6)
    assert torch.allclose(out["aux"]["epnet_gates"], torch.ones_like(out["aux"]["epnet_gates"]))


def test_pepnet_gates_read_a_stopped_gradient_copy_of_what_they_gate():
    torch.manual_seed(0)
    model = MODELS["pepnet"]()
    batch = pc_batch()
    e, pc = model.embed(batch), model.pc(batch["pcode"])
    domain = model.domain_input(batch, e, pc)
    assert torch.equal(domain[:, -e.shape[1]:], e)  # the EPNet gate sees the embedding ...
    user_grad, device_grad = torch.autograd.grad(domain.sum(), [model.embed.user.weight, model.embed.cat[1].weight],
                                                 allow_unused=True)
    assert user_grad is None and device_grad.abs().sum() > 0  # ... sends it no gradient, but trains E(F_d)
    gate = model.epnet(domain)
    o_ep = gate * e
    prior = model.prior_input(batch, o_ep, pc)
    assert torch.equal(prior[:, -e.shape[1]:], o_ep)  # the PPNet gates see O_ep ...
    assert all(g is None for g in torch.autograd.grad(prior.sum(), list(model.epnet.parameters()), allow_unused=True))
    out = model(batch)  # ... and forward is built from exactly these
    assert torch.allclose(out["aux"]["epnet_gates"], gate)
    assert torch.allclose(torch.stack([out[t] for t in TASKS], -1), model.towers(o_ep, prior).squeeze(-1))


# --- learning, through the real config and Lightning ----------------------------------------------

@pytest.fixture(scope="module")
def synthetic_data(tmp_path_factory):
    return tmp_path_factory.mktemp("deps_data")


@pytest.mark.parametrize("model", ["esmm", "aitm", "pepnet"])
def test_model_learns_the_synthetic_conversion(model, synthetic_data, tmp_path, caplog):
    from mose.train import train

    cfg = compose_with_output("train", [
        f"model={model}", "model.embed_dim=8", "model.tower=[32,16]", f"paths.data_dir={synthetic_data}",
        "data.source.n_events=20000", "data.source.n_users=300", "data.source.n_items=200",
        "+data.tasks.convert={kind: binary, after: click}", "data.batch_size=256", "data.prep.min_count=1",
        "trainer.max_epochs=2", "trainer.enable_progress_bar=false", "optim.lr=0.01", "seed=0",
    ], tmp_path)
    with caplog.at_level(logging.WARNING):
        test = train(cfg)
    GlobalHydra.instance().clear()
    # chance: 0.5 (2,000 test events: an AUC's standard error ~0.013); seed 0 gives 0.60-0.62 / 0.64-0.67
    assert test["click/auc"] > 0.57 and test["convert/auc"] > 0.58, test
    assert json.loads((tmp_path / "metrics.json").read_text())["test"]["convert/auc"] == test["convert/auc"]
    assert "positive training labels have" not in caplog.text  # synthetic conversions all follow a click
