"""Hidden-layer normalisation (``model.norm``): statistics, per-group affine, every feed-forward model."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from data_prep.paths import CONF_DIR
from mose.nn.experts import GroupedMLP
from mose.nn.mlp import MLP
from mose.nn.norm import FeatureNorm
from mose.nn.poso import PosoGroupedMLP
from tests.test_family import NAMED
from tests.test_models import TASKS, make_batch


def test_batch_norm_normalises_each_group_feature_over_the_batch():
    torch.manual_seed(0)
    norm = FeatureNorm("batch", (3, 4)).train()
    x = torch.randn(64, 3, 4) * torch.arange(1, 13).view(3, 4) + 5.0
    y = norm(x)
    assert y.shape == x.shape
    assert torch.allclose(y.mean(0), torch.zeros(3, 4), atol=1e-5)
    assert torch.allclose(y.var(0, unbiased=False), torch.ones(3, 4), atol=1e-3)


def test_layer_norm_normalises_each_position_with_a_per_group_affine():
    norm = FeatureNorm("layer", (2, 4))
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([[1.0] * 4, [2.0] * 4]))
        norm.bias.copy_(torch.tensor([[0.0] * 4, [1.0] * 4]))
    x = torch.tensor([[[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]]])  # (B=1, G=2, D=4)
    z = (x[0, 0] - 2.5) / torch.sqrt(torch.tensor(1.25) + 1e-5)  # hand-computed LayerNorm of 1..4
    assert torch.allclose(norm(x)[0, 0], z, atol=1e-5)
    assert torch.allclose(norm(x)[0, 1], 2 * z + 1, atol=1e-5)


def test_unknown_norm_is_refused_by_name():
    with pytest.raises(ValueError, match="model.norm must be one of"):
        GroupedMLP(2, 4, [3], norm="group")


def test_norm_sits_before_every_activation_but_not_the_logit_layer():
    towers = GroupedMLP(5, 8, [16, 1], last_activation=False, norm="batch")
    assert len(towers.norms) == 1 and towers.norms[0].shape == (5, 16)
    assert len(GroupedMLP(4, 8, [16, 8], norm="layer").norms) == 2
    assert sum(isinstance(m, FeatureNorm) for m in MLP(8, [16, 8], norm="batch")) == 2


@pytest.mark.parametrize("name", ["shared_bottom", "single_task", "mmoe", "sparse_mmoe", "omoe", "cgc", "ple", "hme",
                                  "deep_moe", "linear_combination", "sparse_moe", "youtube"])
def test_every_feed_forward_model_config_takes_the_norm_key(name):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={name}", "model.norm=batch"])
    model = instantiate(cfg.model, _partial_=True, _convert_="all")(input_spec=NAMED, tasks=TASKS).train()
    norms = [m for m in model.modules() if isinstance(m, FeatureNorm)]
    assert norms
    out = model(make_batch())
    sum(out[t].sum() for t in TASKS).backward()
    assert all(n.bn.weight.grad is not None for n in norms)


def test_poso_gated_layers_are_normalised_too():
    torch.manual_seed(0)
    mlp = PosoGroupedMLP(3, 6, [8, 4], pc_dim=5, norm="layer")
    assert len(mlp.base.norms) == 2
    out = mlp(torch.randn(7, 6), torch.randn(7, 5))
    assert out.shape == (7, 3, 4) and torch.isfinite(out).all()
